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

const WRITABLE_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/run/shm", "/var/crash", "/dev/mqueue"];

/// Hidden directories that legitimately hold executables.
const KNOWN_HIDDEN: &[&str] = &[
    "/.cargo/", "/.rustup/", "/.local/", "/.npm/", "/.nvm/", "/.pyenv/", "/.rbenv/", "/.sdkman/", "/.vscode-server/",
    "/.cache/", "/.config/", "/.git/", "/.venv/", "/.deno/", "/.bun/", "/.dotnet/", "/.gradle/", "/.m2/",
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
        if let Some(dir) = self.dirs.iter().find(|d| is_under(exe, d)) {
            findings
                .report(&WORLD_WRITABLE, event, format!("{exe} executed from {dir}"))
                .evidence
                .extend([("exe".into(), exe.to_string()), ("parent".into(), exec.parent_exe.to_string()), ("command_line".into(), exec.command_line())]);
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

    #[test]
    fn fixtures() {
        let mut h = Harness::<WritableExec>::new().unwrap();
        assert_eq!(h.run_fixture("tests/fixtures/positive.jsonl").len(), 2);
        assert!(h.run_fixture("tests/fixtures/negative.jsonl").is_empty());
    }
}
