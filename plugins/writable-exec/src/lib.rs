//! Execution from world-writable or hidden places.
//!
//! Droppers download payloads to /tmp, /var/tmp or /dev/shm (writable by
//! everyone, often tmpfs, cleaned on reboot) and run them from there; rootkits
//! and miners hide in dot-directories. Legitimate software is installed under
//! /usr, /opt or a home's bin directory and runs from there.
//!
//! * `edr.writable.exec-world-writable`: the executable is under /tmp,
//!   /var/tmp or /dev/shm (ATT&CK T1059, T1105; /dev/shm: T1620 adjacent).
//! * `edr.writable.exec-hidden-dir`: the executable is inside a hidden
//!   directory anywhere (T1564.001).
//!
//! Execution from memory or from a deleted file (fileless execution),
//! checked first (one finding per exec):
//!
//! * `edr.writable.exec-memfd` (high; T1620, T1027.011): the executable is
//!   a memfd (`/memfd:NAME (deleted)`, as the kernel names it:
//!   `memfd_create`, the program written into it, `execve` of
//!   `/proc/self/fd/N` or `fexecve`), or a `/proc/*/fd/N` or `/dev/fd/N`
//!   path (how other sensors report an exec through a descriptor).
//! * `edr.writable.exec-deleted` (high; T1070.004, T1620): the executable
//!   was deleted (`PATH (deleted)`): opened, unlinked, then run through its
//!   fd, or removed right after it started, so that nothing is left on
//!   disk to find.
//! * `edr.writable.exec-deleted-system` (low; T1070.004): the same under
//!   /usr, /bin, /sbin, /lib*, /opt or /snap, which only root can write:
//!   a package upgrade replacing a program at the moment it starts shows
//!   the same, so this one is kept low rather than dropped.
//! * `edr.writable.script-from-fd` (medium; T1059, T1027.011): a shell or
//!   script interpreter runs a script from `/dev/fd/N` or `/proc/*/fd/N`:
//!   a script in a memfd (the kernel passes that path to the `#!`
//!   interpreter), or a pipe: `bash <(curl -s URL)`.
//!
//! False positives: runc before 1.2 re-executes itself from a memfd named
//! `runc_cloned:/proc/self/exe` at every container start; it is not
//! excluded by default, since the memfd name is the caller's choice: hosts
//! running such a runc add `/memfd:runc_cloned:**` to `allow` (knowing that
//! a payload may name its memfd so too). Installers piped through process
//! substitution (`bash <(curl ...)`) raise the medium rule, on purpose.
//!
//! Settings:
//! * `allow`: comma-separated path globs that never alert (e.g. `/tmp/build-*/**`).
//! * `extra_dirs`: comma-separated directories to treat like /tmp.

use edr_sdk::prelude::*;

const AUTHOR: &str = "edr project";

const WORLD_WRITABLE: Rule = Rule {
    id: "edr.writable.exec-world-writable",
    title: "Program executed from a world-writable directory",
    severity: Severity::High,
    techniques: &["T1059", "T1105"],
    author: AUTHOR,
    description: "A program ran from /tmp, /var/tmp or /dev/shm, where droppers put downloaded payloads.",
};

const HIDDEN_DIR: Rule = Rule {
    id: "edr.writable.exec-hidden-dir",
    title: "Program executed from a hidden directory",
    severity: Severity::Medium,
    techniques: &["T1564.001", "T1059"],
    author: AUTHOR,
    description: "A program ran from inside a directory whose name starts with a dot, a common hiding place for implants and miners.",
};

const MEMFD: Rule = Rule {
    id: "edr.writable.exec-memfd",
    title: "Program executed from memory (memfd or file descriptor)",
    severity: Severity::High,
    techniques: &["T1620", "T1027.011"],
    author: AUTHOR,
    description: "A program ran from an anonymous memory file (memfd_create, then execve of /proc/self/fd/N or fexecve): no file on disk to scan or recover, the way in-memory loaders run their payloads.",
};

const DELETED: Rule = Rule {
    id: "edr.writable.exec-deleted",
    title: "Program executed from a deleted file",
    severity: Severity::High,
    techniques: &["T1070.004", "T1620"],
    author: AUTHOR,
    description: "A program ran from a file that was deleted (run through an open descriptor after the unlink, or removed right after it started): nothing is left on disk to find.",
};

const DELETED_SYSTEM: Rule = Rule {
    id: "edr.writable.exec-deleted-system",
    title: "System program executed from a deleted file",
    severity: Severity::Low,
    techniques: &["T1070.004"],
    author: AUTHOR,
    description: "A program under a root-owned system directory ran from a file deleted at that moment: usually a package upgrade replacing it as it started.",
};

const FD_SCRIPT: Rule = Rule {
    id: "edr.writable.script-from-fd",
    title: "Script run from a file descriptor",
    severity: Severity::Medium,
    techniques: &["T1059", "T1027.011"],
    author: AUTHOR,
    description:
        "A shell or script interpreter ran a script from /dev/fd/N or /proc/*/fd/N: a script in a memfd, or piped in (bash <(curl ...)), with nothing on disk.",
};

/// Root-owned system trees: a deleted program there is most often an upgrade.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/snap"];

/// Script interpreters besides the shells (`python3.12`, `perl5.36` too).
const INTERPRETERS: &[&str] = &["python", "perl", "ruby", "php", "node", "nodejs", "lua", "luajit", "tclsh", "pwsh"];

const DELETED_SUFFIX: &str = " (deleted)";

const WRITABLE_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run/shm", "/var/crash", "/dev/mqueue"];

/// Hidden directories that legitimately hold executables.
const KNOWN_HIDDEN: &[&str] = &[
    "/.cargo/",
    "/.rustup/",
    "/.local/",
    "/.npm/",
    "/.nvm/",
    "/.pyenv/",
    "/.rbenv/",
    "/.sdkman/",
    "/.vscode-server/",
    "/.cache/",
    "/.config/",
    "/.git/",
    "/.venv/",
    "/.deno/",
    "/.bun/",
    "/.dotnet/",
    "/.gradle/",
    "/.m2/",
];

/// Execution-from-writable-places detector.
pub struct WritableExec {
    allow: Vec<String>,
    dirs: Vec<String>,
}

impl Detector for WritableExec {
    const NAME: &'static str = "writable-exec";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Programs executed from /tmp, /var/tmp, /dev/shm or hidden directories";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(config: &Config) -> Result<Self, String> {
        let mut dirs: Vec<String> = WRITABLE_DIRS.iter().map(|d| d.to_string()).collect();
        for d in config.get_list("extra_dirs") {
            if !d.starts_with('/') {
                return Err(format!("setting `extra_dirs`: `{d}` is not an absolute path"));
            }
            dirs.push(d.trim_end_matches('/').to_string());
        }
        Ok(Self { allow: config.get_list("allow"), dirs })
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        let Some(exec) = event.exec() else { return };
        let exe = exec.exe;
        if !exe.starts_with('/') || self.allow.iter().any(|g| glob(g, exe)) {
            return;
        }
        if let Some((rule, message)) = fileless(exec) {
            findings.report(rule, event, message).evidence.extend([
                ("exe".into(), exe.to_string()),
                ("parent".into(), exec.parent_exe.to_string()),
                ("command_line".into(), exec.command_line()),
            ]);
            return;
        }
        if let Some(dir) = self.dirs.iter().find(|d| is_under(exe, d)) {
            findings.report(&WORLD_WRITABLE, event, format!("{exe} executed from {dir}")).evidence.extend([
                ("exe".into(), exe.to_string()),
                ("parent".into(), exec.parent_exe.to_string()),
                ("command_line".into(), exec.command_line()),
            ]);
            return;
        }
        if in_hidden_dir(exe) && !KNOWN_HIDDEN.iter().any(|k| exe.contains(k)) {
            findings
                .report(&HIDDEN_DIR, event, format!("{exe} executed from a hidden directory"))
                .evidence
                .extend([("exe".into(), exe.to_string()), ("parent".into(), exec.parent_exe.to_string())]);
        }
    }
}

/// Execution from memory, from a deleted file, or of a script read from a
/// file descriptor: the rule and the message.
fn fileless(exec: &ProcessExec<'_>) -> Option<(&'static Rule, String)> {
    let exe = exec.exe;
    if exe.starts_with("/memfd:") {
        let name = exe.strip_suffix(DELETED_SUFFIX).unwrap_or(exe).trim_start_matches('/');
        return Some((&MEMFD, format!("{exe} executed from memory ({name}: no file on disk)")));
    }
    if is_fd_path(exe) {
        return Some((&MEMFD, format!("{exe} executed through a file descriptor (a memfd or a deleted file)")));
    }
    if let Some(path) = exe.strip_suffix(DELETED_SUFFIX) {
        if SYSTEM_DIRS.iter().any(|d| is_under(path, d)) {
            return Some((&DELETED_SYSTEM, format!("{path} executed while deleted (replaced by an upgrade?)")));
        }
        return Some((&DELETED, format!("{path} executed from a deleted file")));
    }
    if !is_interpreter(basename(exe)) {
        return None;
    }
    // The script: the first argument that is not an option (`sh -e FILE`).
    let script = exec.argv.iter().skip(1).find(|a| !a.starts_with('-'))?;
    is_fd_path(script).then(|| (&FD_SCRIPT, format!("{exe} ran a script from {script} (a memfd or a pipe: nothing on disk)")))
}

/// `/dev/fd/N`, `/proc/self/fd/N`, `/proc/thread-self/fd/N`, `/proc/PID/fd/N`.
fn is_fd_path(path: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(n) = path.strip_prefix("/dev/fd/") {
        return digits(n);
    }
    let Some(rest) = path.strip_prefix("/proc/") else { return false };
    let Some((who, n)) = rest.split_once("/fd/") else { return false };
    (who == "self" || who == "thread-self" || digits(who)) && digits(n)
}

/// A shell, or a script interpreter by name, with or without its version.
fn is_interpreter(name: &str) -> bool {
    is_shell(name) || INTERPRETERS.iter().any(|i| name.strip_prefix(i).is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'.')))
}

edr_sdk::export_detector!(WritableExec);

#[cfg(test)]
mod tests {
    use super::*;
    use edr_sdk::testing::{exec, Harness};

    fn hits(h: &mut Harness<WritableExec>, exe: &str) -> Vec<String> {
        h.run(&[exec(exe, &[basename(exe)]).parent("/bin/bash", &["bash"]).build()]).into_iter().map(|f| f.rule_id).collect()
    }

    #[test]
    fn writable_and_hidden() {
        let mut h = Harness::<WritableExec>::new().unwrap();
        assert_eq!(hits(&mut h, "/tmp/x"), vec![WORLD_WRITABLE.id]);
        assert_eq!(hits(&mut h, "/var/tmp/.ICE-unix/kworker"), vec![WORLD_WRITABLE.id]);
        assert_eq!(hits(&mut h, "/dev/shm/miner"), vec![WORLD_WRITABLE.id]);
        assert_eq!(hits(&mut h, "/home/bob/.x/payload"), vec![HIDDEN_DIR.id]);
        assert_eq!(hits(&mut h, "/usr/lib/.hidden/rk"), vec![HIDDEN_DIR.id]);
    }

    #[test]
    fn ordinary_places_are_quiet() {
        let mut h = Harness::<WritableExec>::new().unwrap();
        for exe in ["/usr/bin/ls", "/opt/app/bin/app", "/home/bob/.cargo/bin/rg", "/home/bob/.local/bin/tool", "/tmpfoo/x", "/home/bob/.bashrc-not-dir"] {
            assert!(hits(&mut h, exe).is_empty(), "{exe}");
        }
    }

    #[test]
    fn settings() {
        let mut h = Harness::<WritableExec>::with_settings(&[("allow", "/tmp/build-*/**"), ("extra_dirs", "/srv/upload/")]).unwrap();
        assert!(hits(&mut h, "/tmp/build-42/out/bin/tool").is_empty());
        assert_eq!(hits(&mut h, "/tmp/other"), vec![WORLD_WRITABLE.id]);
        assert_eq!(hits(&mut h, "/srv/upload/a.out"), vec![WORLD_WRITABLE.id]);
        assert!(Harness::<WritableExec>::with_settings(&[("extra_dirs", "relative")]).is_err());
    }

    fn hits_argv(h: &mut Harness<WritableExec>, exe: &str, argv: &[&str]) -> Vec<(String, Severity)> {
        h.run(&[exec(exe, argv).parent("/bin/bash", &["bash"]).build()]).into_iter().map(|f| (f.rule_id, f.severity)).collect()
    }

    /// `memfd_create` + `execve("/proc/self/fd/N")` as the collector records
    /// it, a program run from a deleted file, and a memfd script.
    #[test]
    fn execution_from_memory_or_a_deleted_file() {
        let mut h = Harness::<WritableExec>::new().unwrap();
        let memfd =
            h.run(&[exec("/memfd:payload (deleted)", &["kworker/0:1", "-c", "10.0.0.1"]).parent("/usr/bin/python3", &["python3", "loader.py"]).build()]);
        assert_eq!(memfd.len(), 1, "{memfd:?}");
        assert_eq!((memfd[0].rule_id.as_str(), memfd[0].severity), (MEMFD.id, Severity::High));
        assert!(memfd[0].message.contains("memfd:payload"), "{}", memfd[0].message);
        assert!(memfd[0].evidence.iter().any(|(k, v)| k == "command_line" && v.contains("kworker/0:1")), "{:?}", memfd[0].evidence);
        // An unnamed memfd, a memfd that was never "deleted" in the text, a descriptor path.
        for exe in ["/memfd: (deleted)", "/memfd:x", "/proc/self/fd/3", "/dev/fd/4", "/proc/4242/fd/7", "/proc/thread-self/fd/9"] {
            assert_eq!(hits_argv(&mut h, exe, &["x"]), vec![(MEMFD.id.to_string(), Severity::High)], "{exe}");
        }
        // Deleted files: high, except under the system trees (upgrades): low.
        assert_eq!(hits_argv(&mut h, "/home/bob/bin/implant (deleted)", &["implant"]), vec![(DELETED.id.to_string(), Severity::High)]);
        assert_eq!(hits_argv(&mut h, "/tmp/x/s (deleted)", &["s", "30"]), vec![(DELETED.id.to_string(), Severity::High)], "one finding, the fileless one");
        assert_eq!(hits_argv(&mut h, "/usr/sbin/sshd (deleted)", &["sshd", "-D"]), vec![(DELETED_SYSTEM.id.to_string(), Severity::Low)]);
        assert_eq!(hits_argv(&mut h, "/opt/app/bin/app (deleted)", &["app"]), vec![(DELETED_SYSTEM.id.to_string(), Severity::Low)]);
        assert_eq!(hits_argv(&mut h, "/usrx/bin/a (deleted)", &["a"]), vec![(DELETED.id.to_string(), Severity::High)], "not under /usr");
        // A memfd script: the kernel hands its fd path to the interpreter.
        let scripts: &[&[&str]] =
            &[&["/bin/sh", "/proc/self/fd/5", "arg"], &["bash", "/dev/fd/63"], &["sh", "-e", "/dev/fd/3"], &["python3.12", "/proc/self/fd/4"]];
        for &argv in scripts {
            let exe = if argv[0].starts_with('/') { argv[0].to_string() } else { format!("/usr/bin/{}", argv[0]) };
            assert_eq!(hits_argv(&mut h, &exe, argv), vec![(FD_SCRIPT.id.to_string(), Severity::Medium)], "{argv:?}");
        }
    }

    #[test]
    fn descriptor_paths_elsewhere_and_look_alikes_are_quiet() {
        let mut h = Harness::<WritableExec>::new().unwrap();
        let quiet: &[(&str, &[&str])] = &[
            // diff <(a) <(b), cat /dev/fd/0: not interpreters.
            ("/usr/bin/diff", &["diff", "/dev/fd/63", "/dev/fd/62"]),
            ("/usr/bin/cat", &["cat", "/dev/fd/0"]),
            // An interpreter with a script on disk, or a command string.
            ("/usr/bin/bash", &["bash", "/usr/local/bin/backup.sh"]),
            ("/usr/bin/sh", &["sh", "-c", "cat /dev/fd/3"]),
            ("/usr/bin/python3", &["python3", "-m", "http.server"]),
            // Not descriptor paths, not memfds, not deleted.
            ("/usr/bin/bash", &["bash", "/dev/fd/x"]),
            ("/usr/bin/perlx", &["perlx", "/dev/fd/3"]),
            ("/usr/bin/memfd:tool", &["memfd:tool"]),
            ("/usr/bin/deleted", &["deleted"]),
            ("/proc/self/fdinfo/3", &["x"]),
        ];
        for &(exe, argv) in quiet {
            assert!(hits_argv(&mut h, exe, argv).is_empty(), "{exe} {argv:?}");
        }
        // `allow` covers them too (runc's self-clone, where an operator wants it).
        let mut h = Harness::<WritableExec>::with_settings(&[("allow", "/memfd:runc_cloned:**")]).unwrap();
        assert!(hits_argv(&mut h, "/memfd:runc_cloned:/proc/self/exe (deleted)", &["runc", "init"]).is_empty());
        assert_eq!(hits_argv(&mut h, "/memfd:payload (deleted)", &["x"]).len(), 1);
    }

    #[test]
    fn fixtures() {
        let mut h = Harness::<WritableExec>::new().unwrap();
        assert_eq!(h.run_fixture("tests/fixtures/positive.jsonl").len(), 5);
        assert!(h.run_fixture("tests/fixtures/negative.jsonl").is_empty());
    }
}
