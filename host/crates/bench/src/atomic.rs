//! `edr-bench atomic`: coverage of the Atomic Red Team Linux tests (root only).
//!
//! Starts `edr agent` on its built-in defaults in a temporary data dir, runs
//! every runnable Linux test of the corpus (`../shared/corpora/
//! atomic-red-team-linux`, resolved from the repository root) one at a time
//! in a throw-away working directory under /home (also its `HOME`) with a timeout, runs
//! its cleanup, then a benign workload the same way, and attributes the
//! agent's alerts (`edr query` over the `alert` view) to the test whose
//! process tree raised them, or, for alerts without a process, whose time
//! window holds them. Writes `docs/COVERAGE.md` and `docs/coverage.json`.
//!
//! Tests that need the network, a desktop, a container runtime, the corpus's
//! `src/`/`bin/` payloads, a missing binary, or that would damage a shared
//! build machine are skipped, each with its reason.

use regex::Regex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    edr: PathBuf,
    corpus: Option<PathBuf>,
    out: PathBuf,
    timeout: u64,
    only: Option<String>,
}

fn parse(mut it: impl Iterator<Item = String>) -> anyhow::Result<Args> {
    let mut a = Args { edr: PathBuf::from("target/release/edr"), corpus: None, out: PathBuf::from("docs"), timeout: 10, only: None };
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--edr" => a.edr = PathBuf::from(value()?),
            "--corpus" => a.corpus = Some(PathBuf::from(value()?)),
            "--out" => a.out = PathBuf::from(value()?),
            "--timeout" => a.timeout = value()?.parse()?,
            "--only" => a.only = Some(value()?),
            other => anyhow::bail!("unknown argument {other} (edr-bench atomic [--edr PATH] [--corpus DIR] [--out DIR] [--timeout SECS] [--only T1234])"),
        }
    }
    Ok(a)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// One test of the corpus, its command lines with defaults substituted.
struct Test {
    technique: String,
    technique_name: String,
    number: usize,
    name: String,
    guid: String,
    executor: String,
    command: String,
    cleanup: String,
    prereqs: Vec<(String, String)>,
    uses_atomics_folder: bool,
}

/// What became of one test (or one benign workload item).
#[derive(Default)]
struct Outcome {
    skipped: Option<String>,
    exit: Option<i32>,
    timed_out: bool,
    rules: BTreeMap<String, usize>,
    secs: f64,
}

fn substitute(text: &str, args: &HashMap<String, String>) -> String {
    let mut s = text.to_string();
    for (k, v) in args {
        s = s.replace(&format!("#{{{k}}}"), v);
    }
    s
}

fn load_corpus(dir: &Path) -> anyhow::Result<Vec<Test>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("atomics"))?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    let mut tests = Vec::new();
    for d in files {
        let Some(t) = d.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        let Ok(text) = std::fs::read_to_string(d.join(format!("{t}.yaml"))) else { continue };
        let doc: Value = yaml_serde::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
        let technique_name = doc["display_name"].as_str().unwrap_or("").to_string();
        for (i, at) in doc["atomic_tests"].as_array().into_iter().flatten().enumerate() {
            let linux = at["supported_platforms"].as_array().is_some_and(|p| p.iter().any(|p| p == "linux"));
            if !linux {
                continue;
            }
            let args: HashMap<String, String> = at["input_arguments"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v["default"].as_str().map(str::to_string).unwrap_or_else(|| v["default"].to_string())))
                .collect();
            let field = |v: &Value| substitute(v.as_str().unwrap_or(""), &args);
            let prereqs = at["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| (d["description"].as_str().unwrap_or("").trim().to_string(), field(&d["prereq_command"])))
                .collect();
            let raw = format!("{}\n{}", at["executor"]["command"].as_str().unwrap_or(""), at["executor"]["cleanup_command"].as_str().unwrap_or(""));
            tests.push(Test {
                technique: t.clone(),
                technique_name: technique_name.clone(),
                number: i + 1,
                name: at["name"].as_str().unwrap_or("").to_string(),
                guid: at["auto_generated_guid"].as_str().unwrap_or("").to_string(),
                executor: at["executor"]["name"].as_str().unwrap_or("").to_string(),
                command: field(&at["executor"]["command"]),
                cleanup: field(&at["executor"]["cleanup_command"]),
                prereqs,
                uses_atomics_folder: raw.contains("PathToAtomicsFolder") || args.values().any(|v| v.contains("PathToAtomicsFolder")),
            });
        }
    }
    Ok(tests)
}

/// Reasons a test is not run, checked on its command and cleanup text.
fn skip_rules() -> Vec<(Regex, &'static str)> {
    let r = |p: &str| Regex::new(p).unwrap();
    vec![
        (
            r(r"\b(shutdown|reboot|halt|poweroff)\b|\binit\s+[06]\b|systemctl\s+(reboot|poweroff|halt|kexec)"),
            "destructive on a shared build machine (shutdown/reboot)",
        ),
        (
            r(
                r"\bmkfs|\bwipefs\b|\bshred\b|\bfdisk\b|\bparted\b|\bdd\b[^\n]*of=/dev/(sd|vd|nvme|xvd|hd|mapper)|/dev/(sd|vd|nvme|xvd)[a-z0-9]*\s*$|\brm\s+-[a-z]*r[a-z]*f?\s+/(\s|\*|$)",
            ),
            "destructive on a shared build machine (disk wipe)",
        ),
        (r(r"\b(insmod|modprobe|rmmod|kmod)\b"), "destructive on a shared build machine (kernel module load)"),
        (r(r"sysrq"), "destructive on a shared build machine (magic SysRq: kills every process or reboots)"),
        (r(r"\bdd\b[^\n]*\bof=|\bshred\b|\bsrm\b"), "destructive on a shared build machine (overwrites files with dd)"),
        (r(r"\b(iptables|ip6tables|nft|ufw|firewall-cmd)\b"), "destructive on a shared build machine (firewall change)"),
        (
            r(r"(chpasswd|\bpasswd\b)[^\n]*\broot\b|\broot:[^\n]*chpasswd|\busermod\b[^\n]*\broot\b"),
            "destructive on a shared build machine (root's password or account)",
        ),
        (
            r(r"\bswapoff\b|\bsysctl\s+-w|>\s*/proc/sys/|\bsetenforce\b|\bauditctl\b|\baa-(disable|teardown)|apparmor"),
            "destructive on a shared build machine (kernel or audit settings)",
        ),
        (
            r(r"systemctl\s+(stop|disable|mask|kill)|\bservice\s+\S+\s+stop|\bkill\s+-9\s+-1|\bpkill\b|\bkillall\b|:\(\)\s*\{"),
            "destructive on a shared build machine (stops services or processes)",
        ),
        (
            r(r"\b(apt|apt-get|yum|dnf|zypper|apk)\s+(-y\s+)?(remove|purge|erase|autoremove)|\bdpkg\s+(-r|-P|--remove|--purge)|\brpm\s+-e"),
            "destructive on a shared build machine (removes packages)",
        ),
        (
            r(
                r"/var/log/[^\n]*(rm\b|truncate|shred|>)|(\brm\b|\btruncate\b|\bshred\b|>)\s*[^\n]*/var/log/|journalctl\s+--(vacuum|rotate)|\bunlink\b[^\n]*/var/log",
            ),
            "destructive on a shared build machine (deletes system logs)",
        ),
        (
            r(r"/etc/(pam\.d|sudoers|hosts\b|resolv\.conf|ssh/sshd_config|security/|fstab|selinux)|\bvisudo\b"),
            "destructive on a shared build machine (edits pam/sudo/network/ssh configuration)",
        ),
        (r(r"\b(hostnamectl|timedatectl)\b|\bdate\s+-s\b|\bhwclock\b"), "destructive on a shared build machine (host name or clock)"),
        (r(r"\bfallocate\b|\bdd\b[^\n]*bs=\d+[MG][^\n]*count=\d{3,}"), "destructive on a shared build machine (fills the disk)"),
        (r(r"\b(mount|umount)\b"), "destructive on a shared build machine (mounts)"),
        (r(r"\b(docker|kubectl|podman|crictl|ctr|lxc)\b"), "needs a container runtime (docker is not usable here)"),
        (r(r"\b(DISPLAY|xdotool|xclip|xsel|gsettings|dconf|xwd|xinput|gnome|xterm|zenity|osascript|scrot|x11vnc|xhost)\b|import\s+-window"), "needs a desktop"),
        (
            r(
                r"https?://|\b(curl|wget|nc|ncat|netcat|socat|telnet|ftp|tftp|nmap|ping|dig|nslookup|host|scp|sftp|rsync|ssh|aws|gcloud|az)\s|/dev/(tcp|udp)/|git\s+clone|\b(pip3?|npm|gem|go)\s+(install|get)|\b(apt|apt-get|yum|dnf|zypper|apk)\s+(-y\s+)?(install|update)",
            ),
            "needs network access",
        ),
    ]
}

fn skip_reason(t: &Test, rules: &[(Regex, &'static str)]) -> Option<String> {
    if t.executor != "sh" && t.executor != "bash" {
        return Some(format!("executor {} (only sh and bash are run)", t.executor));
    }
    if t.uses_atomics_folder {
        return Some("needs the corpus's src/ or bin/ payloads (not in the corpus copy)".into());
    }
    let text = format!("{}\n{}", t.command, t.cleanup);
    if let Some((_, why)) = rules.iter().find(|(re, _)| re.is_match(&text)) {
        return Some((*why).to_string());
    }
    let etc_write = Regex::new(r"(>>?|\btee\b(\s+-a)?|\bcp\b[^\n]*|\bmv\b[^\n]*|\bsed\s+-i[^\n]*)\s*/etc/").unwrap();
    if t.cleanup.trim().is_empty() && etc_write.is_match(&t.command) {
        return Some("destructive on a shared build machine (changes /etc without a cleanup)".into());
    }
    None
}

/// A throw-away place: working directory and `HOME` of one test.
struct Sandbox {
    dir: tempfile::TempDir,
    path_var: String,
}

impl Sandbox {
    fn new(shims: &Path) -> anyhow::Result<Sandbox> {
        // Under /home (where a user's HOME is, and what the collectors and rules
        // watch for .bashrc, .ssh and history files), else the temporary dir.
        let base = if Path::new("/home").is_dir() { PathBuf::from("/home") } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("edr-atomic-").tempdir_in(base)?;
        let path_var = format!("{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", shims.display());
        Ok(Sandbox { dir, path_var })
    }

    /// Runs `script` with `shell`; kills its process group at the timeout.
    fn run(&self, shell: &str, script: &str, timeout: Duration) -> anyhow::Result<(Option<i32>, bool, String, u32)> {
        use std::os::unix::process::CommandExt;
        let err_path = self.dir.path().join(".edr-atomic-stderr");
        let mut child = Command::new(shell)
            .arg("-c")
            .arg(script)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", &self.path_var)
            .env("HOME", self.dir.path())
            .env("USER", "root")
            .env("SHELL", format!("/bin/{shell}"))
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path)?)
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        let start = Instant::now();
        let (exit, timed_out) = loop {
            if let Some(s) = child.try_wait()? {
                break (s.code(), false);
            }
            if start.elapsed() > timeout {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                let _ = child.wait();
                break (None, true);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Stragglers the script left in its group (background jobs).
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&err_path);
        Ok((exit, timed_out, stderr, pid))
    }
}

/// A binary the script's shell could not find, from its stderr.
fn missing_binary(stderr: &str) -> Option<String> {
    let re = Regex::new(r"(?m)(?:^|: )([A-Za-z0-9_.+-]+): (?:command )?not found").unwrap();
    re.captures(stderr).map(|c| c[1].to_string())
}

/// Writes `sudo` (we are root: it runs its command) into `dir`.
fn write_shims(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let sudo = dir.join("sudo");
    std::fs::write(&sudo, "#!/bin/sh\n# edr-bench atomic: already root, run the command as sudo would.\nwhile [ $# -gt 0 ]; do case \"$1\" in -u|-g) shift 2;; -*) shift;; *) break;; esac; done\n[ $# -eq 0 ] && exit 0\nexec \"$@\"\n")?;
    std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One shell run: prerequisites, command, cleanup; the window it used.
struct Ran {
    outcome: Outcome,
    pids: Vec<u32>,
    window: (u64, u64),
}

fn run_one(shell: &str, command: &str, cleanup: &str, prereqs: &[(String, String)], shims: &Path, timeout: u64) -> anyhow::Result<Ran> {
    let sb = Sandbox::new(shims)?;
    let t0 = Instant::now();
    for (desc, check) in prereqs {
        if check.trim().is_empty() {
            continue;
        }
        let (exit, _, _, _) = sb.run(shell, check, Duration::from_secs(10))?;
        if exit != Some(0) {
            let first = desc.lines().next().unwrap_or("a prerequisite").trim().to_string();
            let outcome = Outcome { skipped: Some(format!("prerequisite not met: {first}")), ..Outcome::default() };
            return Ok(Ran { outcome, pids: vec![], window: (0, 0) });
        }
    }
    let start = now_ns();
    let (exit, timed_out, stderr, pid) = sb.run(shell, command, Duration::from_secs(timeout))?;
    let mut pids = vec![pid];
    if !cleanup.trim().is_empty() {
        pids.push(sb.run(shell, cleanup, Duration::from_secs(timeout))?.3);
    }
    let end = now_ns();
    let skipped = missing_binary(&stderr).map(|b| format!("needs {b} (not installed; the test could not finish)"));
    Ok(Ran { outcome: Outcome { skipped, exit, timed_out, rules: BTreeMap::new(), secs: t0.elapsed().as_secs_f64() }, pids, window: (start, end) })
}

/// Rows of `edr query --json` (one JSON object a line).
fn query(edr: &Path, data: &Path, sql: &str) -> anyhow::Result<Vec<Value>> {
    let out = Command::new(edr).args(["query", "--json", "--data-dir", data.to_str().unwrap(), sql]).output()?;
    anyhow::ensure!(out.status.success(), "edr query failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout.split(|b| *b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_slice(l).ok()).collect())
}

/// The agent's record, read once at the end: alerts and the process tree.
struct Record {
    alerts: Vec<(u64, Option<i64>, String)>,
    parent: HashMap<i64, i64>,
    /// (pid, exec time, entity) of every exec.
    execs: Vec<(u32, u64, i64)>,
}

fn read_record(edr: &Path, data: &Path) -> anyhow::Result<Record> {
    let alerts = query(edr, data, "SELECT time, entity, rule_id, rule_name FROM alert ORDER BY time")?
        .into_iter()
        .map(|r| {
            (
                r["time"].as_u64().unwrap_or(0),
                r["entity"].as_i64(),
                format!("{} ({})", r["rule_name"].as_str().unwrap_or(""), r["rule_id"].as_str().unwrap_or("")),
            )
        })
        .collect();
    let mut parent = HashMap::new();
    let mut execs = Vec::new();
    for r in query(edr, data, "SELECT pid, time, entity, parent_entity FROM process WHERE action = 'exec'")? {
        let Some(e) = r["entity"].as_i64() else { continue };
        if let Some(p) = r["parent_entity"].as_i64() {
            parent.insert(e, p);
        }
        execs.push((r["pid"].as_u64().unwrap_or(0) as u32, r["time"].as_u64().unwrap_or(0), e));
    }
    Ok(Record { alerts, parent, execs })
}

impl Record {
    /// Alerts of the process trees of `pids` started in `window`, and
    /// alerts without a process inside the window.
    fn attribute(&self, pids: &[u32], window: (u64, u64), grace: u64) -> BTreeMap<String, usize> {
        let roots: HashSet<i64> =
            self.execs.iter().filter(|(p, t, _)| pids.contains(p) && *t + 500_000_000 >= window.0 && *t <= window.1 + grace).map(|(_, _, e)| *e).collect();
        let in_tree = |mut e: i64| {
            for _ in 0..64 {
                if roots.contains(&e) {
                    return true;
                }
                match self.parent.get(&e) {
                    Some(p) if *p != e => e = *p,
                    _ => return false,
                }
            }
            false
        };
        let mut rules = BTreeMap::new();
        for (t, entity, rule) in &self.alerts {
            let inside = *t + 500_000_000 >= window.0 && *t <= window.1 + grace;
            let ours = match entity {
                Some(e) => in_tree(*e) && *t + 500_000_000 >= window.0,
                None => inside,
            };
            if ours {
                *rules.entry(rule.clone()).or_insert(0) += 1;
            }
        }
        rules
    }
}

/// The benign workload: what a build machine does all day.
fn benign() -> Vec<(&'static str, &'static str)> {
    vec![
        ("git init, commit, log", "git init -q repo && cd repo && echo hello > README && git add README && git -c user.name=dev -c user.email=dev@example.org commit -q -m init && git log --oneline && git status --short && git diff HEAD"),
        ("C compile and run", "printf '#include <stdio.h>\\nint main(void){puts(\"ok\");return 0;}\\n' > a.c && cc -O2 -o a a.c && ./a"),
        ("make", "printf 'all: hello\\nhello: hello.c\\n\\tcc -o hello hello.c\\n' > Makefile && printf 'int main(void){return 0;}\\n' > hello.c && make -s && ./hello"),
        ("rustc compile and run", "command -v rustc >/dev/null || exit 0; printf 'fn main() { println!(\"ok\"); }\\n' > m.rs && rustc -O m.rs -o m && ./m"),
        ("cargo offline build", "command -v cargo >/dev/null || exit 0; cargo new -q --vcs none demo && cd demo && cargo build -q --offline --release && ./target/release/demo"),
        ("tar and compression", "mkdir d && seq 1 20000 > d/numbers && tar czf d.tgz d && tar cJf d.txz d && tar cjf d.tbz d && mkdir x && tar xzf d.tgz -C x && gzip -k d/numbers && xz -k d/numbers && bzip2 -k d/numbers && zip -qr d.zip d && unzip -qo d.zip -d out && sha256sum d.tgz d.txz"),
        ("python script", "printf 'import json, os, subprocess\\nprint(json.dumps({\"cwd\": os.getcwd()}))\\nsubprocess.run([\"ls\", \"-la\"], check=True)\\n' > s.py && python3 s.py && python3 -m json.tool <<< '{\"a\": 1}' && python3 -c 'import sys; print(sys.version)'"),
        ("python venv", "python3 -m venv --without-pip v && ./v/bin/python -c 'print(1)'"),
        ("shell script", "printf '#!/bin/sh\\nset -e\\nfor f in a b c; do echo $f > $f.txt; done\\nwc -l *.txt\\n' > build.sh && chmod +x build.sh && ./build.sh && sh -c 'echo inline'"),
        ("perl one-liner", "seq 1 10 > n && perl -ne 'print if /5/' n && perl -e 'print 1+1, qq(\\n)'"),
        ("package queries", "dpkg -l | head -n 5; dpkg -S /bin/ls; apt-cache policy bash | head -n 3; apt-get -s -qq install --no-download bash >/dev/null 2>&1; true"),
        ("cron listing", "command -v crontab >/dev/null && crontab -l; ls /etc/cron.d /etc/cron.daily 2>/dev/null; true"),
        ("ssh-keygen", "ssh-keygen -q -t ed25519 -N '' -f ./id_test && ssh-keygen -l -f ./id_test.pub"),
        ("systemctl status", "systemctl status --no-pager >/dev/null 2>&1; systemctl list-timers --no-pager >/dev/null 2>&1; systemctl is-active systemd-journald; true"),
        ("systemd transient service", "command -v systemd-run >/dev/null || exit 0; systemd-run --quiet --wait --collect /bin/true; true"),
        ("journal and logs read", "journalctl -n 5 --no-pager >/dev/null 2>&1; tail -n 3 /var/log/dpkg.log 2>/dev/null; true"),
        ("text processing", "seq 1 500 | awk '{s+=$1} END {print s}' && printf 'a\\nb\\n' | sed 's/a/x/' | sort | uniq -c && grep -rn root /etc/os-release; find . -maxdepth 1 -type f | xargs -r ls -l"),
        ("base64 data (not code)", "echo 'some data' | base64 > d.b64 && base64 -d d.b64 > d.txt && cat d.txt && openssl rand -hex 8 && openssl dgst -sha256 d.txt"),
        ("copy, permissions, timestamps", "cp /etc/os-release . && chmod 600 os-release && chmod 755 . && touch new && ln -s new link && mv new renamed && rm -f renamed link"),
        ("system information", "uname -a; df -h . ; id; hostname; uptime; true"),
        ("getent and id", "getent passwd root >/dev/null; getent group root >/dev/null; id -u; true"),
    ]
}

/// The corpus: `--corpus`, else `../shared/corpora/atomic-red-team-linux`
/// from the repository root (where `Cargo.toml` and `.git` are).
fn corpus_dir(a: &Args) -> Option<PathBuf> {
    if let Some(c) = &a.corpus {
        return Some(c.clone());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let dir = root.join("../shared/corpora/atomic-red-team-linux");
    dir.join("atomics").is_dir().then(|| dir.canonicalize().unwrap_or(dir))
}

fn git(args: &[&str]) -> String {
    Command::new("git").args(args).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

pub fn run(args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let a = parse(args)?;
    anyhow::ensure!(unsafe { libc::geteuid() } == 0, "the atomic evaluation needs root (live collectors; the tests run as root)");
    let Some(corpus) = corpus_dir(&a) else {
        println!("skipped: the Atomic Red Team corpus is not at ../shared/corpora/atomic-red-team-linux (or give --corpus DIR)");
        return Ok(());
    };
    let mut tests = load_corpus(&corpus)?;
    if let Some(only) = &a.only {
        tests.retain(|t| t.technique.starts_with(only.as_str()));
    }
    let rules = skip_rules();
    let revision = (git(&["rev-parse", "--short", "HEAD"]), !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty());
    let work = tempfile::Builder::new().prefix("edr-atomic-run-").tempdir()?;
    let (shims, data) = (work.path().join("shims"), work.path().join("data"));
    std::fs::create_dir_all(&shims)?;
    write_shims(&shims)?;
    let agent = crate::agent::Agent::start(&a.edr, &data, "default")?.0;
    eprintln!("agent up ({}); settling", a.edr.display());
    std::thread::sleep(Duration::from_secs(3));
    let begin = Instant::now();
    let mut results: Vec<(usize, Ran)> = Vec::new();
    for (i, t) in tests.iter().enumerate() {
        if let Some(why) = skip_reason(t, &rules) {
            results.push((i, Ran { outcome: Outcome { skipped: Some(why), ..Outcome::default() }, pids: vec![], window: (0, 0) }));
            continue;
        }
        let shell = if t.executor == "bash" { "bash" } else { "sh" };
        let ran = run_one(shell, &t.command, &t.cleanup, &t.prereqs, &shims, a.timeout)?;
        eprintln!("{} #{} {}: {}", t.technique, t.number, t.name, ran.outcome.skipped.as_deref().unwrap_or("ran"));
        results.push((i, ran));
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut benign_runs = Vec::new();
    for (name, script) in benign() {
        let ran = run_one("bash", script, "", &[], &shims, 120)?;
        eprintln!("benign {name}: exit {:?}", ran.outcome.exit);
        benign_runs.push((name, ran));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Let the last alerts reach the record (it commits every second).
    std::thread::sleep(Duration::from_secs(3));
    let record = read_record(&a.edr, &agent.data)?;
    drop(agent);
    let grace = 1_500_000_000;
    for (_, r) in results.iter_mut().filter(|(_, r)| !r.pids.is_empty()) {
        r.outcome.rules = record.attribute(&r.pids, r.window, grace);
    }
    for (_, r) in benign_runs.iter_mut() {
        r.outcome.rules = record.attribute(&r.pids, r.window, grace);
    }
    let report =
        Report { revision, tests: &tests, results: &results, benign: &benign_runs, total_alerts: record.alerts.len(), secs: begin.elapsed().as_secs_f64() };
    std::fs::create_dir_all(&a.out)?;
    let json = report.json();
    std::fs::write(a.out.join("coverage.json"), serde_json::to_string_pretty(&json)? + "\n")?;
    std::fs::write(a.out.join("COVERAGE.md"), report.markdown(&json))?;
    println!("{}", json["totals"]);
    Ok(())
}

struct Report<'a> {
    /// Commit and whether the tree had changes, when the run started.
    revision: (String, bool),
    tests: &'a [Test],
    results: &'a [(usize, Ran)],
    benign: &'a [(&'static str, Ran)],
    total_alerts: usize,
    secs: f64,
}

fn status(o: &Outcome) -> &'static str {
    match (&o.skipped, o.rules.is_empty()) {
        (Some(_), _) => "skipped",
        (None, false) => "detected",
        (None, true) => "missed",
    }
}

impl Report<'_> {
    fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .results
            .iter()
            .map(|(i, r)| {
                let t = &self.tests[*i];
                json!({"technique": t.technique, "technique_name": t.technique_name, "test": t.number, "name": t.name, "guid": t.guid,
                       "executor": t.executor, "status": status(&r.outcome), "skip_reason": r.outcome.skipped, "exit_code": r.outcome.exit,
                       "timed_out": r.outcome.timed_out, "rules": r.outcome.rules, "secs": (r.outcome.secs * 10.0).round() / 10.0})
            })
            .collect();
        let count = |s: &str| rows.iter().filter(|r| r["status"] == s).count();
        let (detected, missed, skipped) = (count("detected"), count("missed"), count("skipped"));
        let ran = detected + missed;
        let benign: Vec<Value> = self
            .benign
            .iter()
            .map(|(n, r)| json!({"name": n, "exit_code": r.outcome.exit, "timed_out": r.outcome.timed_out, "false_positives": r.outcome.rules}))
            .collect();
        let fps: usize = self.benign.iter().map(|(_, r)| r.outcome.rules.values().sum::<usize>()).sum();
        json!({"generated": edr_event::time::to_rfc3339(now_ns()),
               "commit": self.revision.0, "dirty": self.revision.1,
               "totals": {"tests": rows.len(), "ran": ran, "detected": detected, "missed": missed, "skipped": skipped,
                          "detection_rate": if ran == 0 { 0.0 } else { (detected as f64 * 1000.0 / ran as f64).round() / 10.0 },
                          "benign_items": benign.len(), "benign_false_positives": fps, "all_alerts": self.total_alerts, "seconds": self.secs.round()},
               "tests": rows, "benign": benign})
    }

    fn markdown(&self, j: &Value) -> String {
        use std::fmt::Write;
        let t = &j["totals"];
        let mut s = String::new();
        let _ = writeln!(s, "# Coverage: Atomic Red Team Linux tests\n\nGenerated by `edr-bench atomic` (host/crates/bench/src/atomic.rs; run as root: `sudo target/release/edr-bench atomic`) on {} at commit {}{}. Machine-readable: `coverage.json`.\n", j["generated"].as_str().unwrap_or(""), j["commit"].as_str().unwrap_or(""), if j["dirty"] == true { " (with uncommitted changes)" } else { "" });
        let _ = writeln!(s, "A live `edr agent` on its built-in defaults; each test runs alone in a throw-away directory (also its HOME) with its cleanup, a {}-test corpus from `../shared/corpora/atomic-red-team-linux`. An alert counts for a test when its process descends from the test's shell (or, without a process, falls in its time window). `sudo` is a shim that runs its command (the harness is root).\n", t["tests"]);
        let _ = writeln!(
            s,
            "| tests | ran | detected | missed | skipped | detection rate (of ran) | benign workload false positives |\n|---:|---:|---:|---:|---:|---:|---:|"
        );
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {}% | {} |\n",
            t["tests"], t["ran"], t["detected"], t["missed"], t["skipped"], t["detection_rate"], t["benign_false_positives"]
        );
        let _ = writeln!(s, "## Benign workload\n\nEvery alert here is a false positive.\n\n| item | exit | false positives |\n|---|---:|---|");
        for b in j["benign"].as_array().into_iter().flatten() {
            let _ = writeln!(s, "| {} | {} | {} |", b["name"].as_str().unwrap_or(""), b["exit_code"], rules_cell(&b["false_positives"], "none"));
        }
        let _ = writeln!(s, "\n## Per technique\n\n| technique | tests | ran | detected |\n|---|---:|---:|---:|");
        let mut by_t: BTreeMap<String, (String, usize, usize, usize)> = BTreeMap::new();
        for r in j["tests"].as_array().into_iter().flatten() {
            let e = by_t.entry(r["technique"].as_str().unwrap_or("").to_string()).or_insert((r["technique_name"].as_str().unwrap_or("").to_string(), 0, 0, 0));
            e.1 += 1;
            e.2 += (r["status"] != "skipped") as usize;
            e.3 += (r["status"] == "detected") as usize;
        }
        for (k, (name, n, ran, det)) in &by_t {
            let _ = writeln!(s, "| {k} {name} | {n} | {ran} | {det} |");
        }
        let _ = writeln!(s, "\n## Per test\n\n| technique | # | test | result | rules / reason |\n|---|---:|---|---|---|");
        for r in j["tests"].as_array().into_iter().flatten() {
            let detail = match r["status"].as_str() {
                Some("skipped") => r["skip_reason"].as_str().unwrap_or("").to_string(),
                Some("detected") => rules_cell(&r["rules"], ""),
                _ => format!("exit {}{}", r["exit_code"], if r["timed_out"] == true { ", timed out" } else { "" }),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r["technique"].as_str().unwrap_or(""),
                r["test"],
                r["name"].as_str().unwrap_or("").replace('|', "\\|"),
                r["status"].as_str().unwrap_or(""),
                detail.replace('|', "\\|")
            );
        }
        s
    }
}

fn rules_cell(v: &Value, empty: &str) -> String {
    let parts: Vec<String> = v.as_object().into_iter().flatten().map(|(k, n)| format!("{k} ×{n}")).collect();
    if parts.is_empty() {
        empty.to_string()
    } else {
        parts.join("; ")
    }
}
