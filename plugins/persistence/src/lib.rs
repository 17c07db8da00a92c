//! Writes to the places attackers use to persist or escalate.
//!
//! | place | rule | ATT&CK |
//! |---|---|---|
//! | cron: /etc/crontab, /etc/cron.*, /var/spool/cron | `edr.persistence.cron` | T1053.003 |
//! | systemd units and timers (system and user) | `edr.persistence.systemd` | T1543.002 |
//! | `~/.ssh/authorized_keys` | `edr.persistence.authorized-keys` | T1098.004 |
//! | /etc/ld.so.preload | `edr.persistence.ld-preload` | T1574.006 |
//! | shell start-up files (/etc/profile*, ~/.bashrc, ...) | `edr.persistence.shell-rc` | T1546.004 |
//! | /etc/passwd, /etc/shadow, /etc/group | `edr.persistence.account-files` | T1136.001, T1098 |
//! | /etc/sudoers, /etc/sudoers.d | `edr.persistence.sudoers` | T1548.003 |
//!
//! A write is a create, modify, rename onto the path, or chmod/attribute
//! change. Package managers installing files are not reported (setting
//! `ignore_writers`, default: dpkg, apt, rpm, dnf, yum and friends); an
//! administrator's `crontab -e` or `useradd` still is: that *is* persistence,
//! and the alert tells the operator who did it.

use edr_sdk::prelude::*;

const AUTHOR: &str = "edr project";

macro_rules! rule {
    ($name:ident, $id:literal, $title:literal, $sev:ident, [$($t:literal),+], $desc:literal) => {
        const $name: Rule = Rule { id: $id, title: $title, severity: Severity::$sev, techniques: &[$($t),+], author: AUTHOR, description: $desc };
    };
}

rule!(CRON, "edr.persistence.cron", "Cron schedule written", Medium, ["T1053.003"], "A crontab or cron directory entry was created or changed.");
rule!(SYSTEMD, "edr.persistence.systemd", "systemd unit written", Medium, ["T1543.002"], "A systemd service or timer unit was created or changed.");
rule!(
    AUTHORIZED_KEYS,
    "edr.persistence.authorized-keys",
    "SSH authorized_keys changed",
    High,
    ["T1098.004"],
    "A key was added to (or the file replaced in) an account's authorized_keys: whoever holds the key can log in."
);
rule!(
    LD_PRELOAD,
    "edr.persistence.ld-preload",
    "/etc/ld.so.preload written",
    Critical,
    ["T1574.006"],
    "Libraries listed in /etc/ld.so.preload are loaded into every dynamically linked program: a classic userland rootkit."
);
rule!(
    SHELL_RC,
    "edr.persistence.shell-rc",
    "Shell start-up file written",
    Medium,
    ["T1546.004"],
    "A shell profile or rc file runs at every login or shell start."
);
rule!(
    ACCOUNTS,
    "edr.persistence.account-files",
    "Account database written",
    High,
    ["T1136.001", "T1098"],
    "/etc/passwd, /etc/shadow or /etc/group changed: accounts or privileges were added or altered."
);
rule!(SUDOERS, "edr.persistence.sudoers", "sudoers changed", High, ["T1548.003"], "The sudo policy changed: someone may have granted themselves root.");

/// (glob, rule). The first matching glob wins.
const PLACES: &[(&str, &Rule)] = &[
    ("/etc/crontab", &CRON),
    ("/etc/cron.d/*", &CRON),
    ("/etc/cron.hourly/*", &CRON),
    ("/etc/cron.daily/*", &CRON),
    ("/etc/cron.weekly/*", &CRON),
    ("/etc/cron.monthly/*", &CRON),
    ("/etc/anacrontab", &CRON),
    ("/var/spool/cron/**", &CRON),
    ("/etc/systemd/system/**", &SYSTEMD),
    ("/etc/systemd/user/**", &SYSTEMD),
    ("/usr/lib/systemd/system/**", &SYSTEMD),
    ("/lib/systemd/system/**", &SYSTEMD),
    ("/usr/local/lib/systemd/system/**", &SYSTEMD),
    ("/run/systemd/system/**", &SYSTEMD),
    ("/home/*/.config/systemd/user/**", &SYSTEMD),
    ("/root/.config/systemd/user/**", &SYSTEMD),
    ("/root/.ssh/authorized_keys", &AUTHORIZED_KEYS),
    ("/root/.ssh/authorized_keys2", &AUTHORIZED_KEYS),
    ("/home/*/.ssh/authorized_keys", &AUTHORIZED_KEYS),
    ("/home/*/.ssh/authorized_keys2", &AUTHORIZED_KEYS),
    ("/etc/ssh/authorized_keys/*", &AUTHORIZED_KEYS),
    ("/etc/ld.so.preload", &LD_PRELOAD),
    ("/etc/profile", &SHELL_RC),
    ("/etc/profile.d/*", &SHELL_RC),
    ("/etc/bash.bashrc", &SHELL_RC),
    ("/etc/bashrc", &SHELL_RC),
    ("/etc/zsh/*", &SHELL_RC),
    ("/etc/zshrc", &SHELL_RC),
    ("/etc/environment", &SHELL_RC),
    ("/root/.bashrc", &SHELL_RC),
    ("/root/.bash_profile", &SHELL_RC),
    ("/root/.bash_login", &SHELL_RC),
    ("/root/.bash_logout", &SHELL_RC),
    ("/root/.profile", &SHELL_RC),
    ("/root/.zshrc", &SHELL_RC),
    ("/root/.zprofile", &SHELL_RC),
    ("/home/*/.bashrc", &SHELL_RC),
    ("/home/*/.bash_profile", &SHELL_RC),
    ("/home/*/.bash_login", &SHELL_RC),
    ("/home/*/.bash_logout", &SHELL_RC),
    ("/home/*/.profile", &SHELL_RC),
    ("/home/*/.zshrc", &SHELL_RC),
    ("/home/*/.zprofile", &SHELL_RC),
    ("/etc/passwd", &ACCOUNTS),
    ("/etc/shadow", &ACCOUNTS),
    ("/etc/group", &ACCOUNTS),
    ("/etc/gshadow", &ACCOUNTS),
    ("/etc/sudoers", &SUDOERS),
    ("/etc/sudoers.d/*", &SUDOERS),
];

const PACKAGE_MANAGERS: &[&str] =
    &["dpkg", "apt", "apt-get", "aptitude", "unattended-upgr", "unattended-upgrade", "rpm", "dnf", "yum", "microdnf", "zypper", "pacman", "apk"];

/// Persistence-write detector.
pub struct Persistence {
    ignore_writers: Vec<String>,
}

/// Every glob in [`PLACES`] starts with one of these: most paths (logs, /tmp,
/// caches) are dismissed with a few prefix checks instead of ~50 globs.
const ROOTS: &[&str] = &["/etc/", "/var/spool/cron/", "/home/", "/root/", "/usr/lib/systemd/", "/lib/systemd/", "/usr/local/lib/systemd/", "/run/systemd/"];

impl Persistence {
    fn place(path: &str) -> Option<&'static Rule> {
        if !ROOTS.iter().any(|r| path.starts_with(r)) {
            return None;
        }
        PLACES.iter().find(|(g, _)| glob(g, path)).map(|(_, r)| *r)
    }
}

impl Detector for Persistence {
    const NAME: &'static str = "persistence";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Writes to cron, systemd, authorized_keys, ld.so.preload, shell rc files, account files and sudoers";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::File];

    fn init(config: &Config) -> Result<Self, String> {
        let ignore_writers = match config.get("ignore_writers") {
            Some(_) => config.get_list("ignore_writers"),
            None => PACKAGE_MANAGERS.iter().map(|s| s.to_string()).collect(),
        };
        Ok(Self { ignore_writers })
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        let Some(f) = event.file() else { return };
        if matches!(f.op, FileOp::Delete | FileOp::Read) {
            return;
        }
        let Some(rule) = Self::place(f.path) else { return };
        if let Some(writer) = f.process_name() {
            if self.ignore_writers.iter().any(|w| w == writer) {
                return;
            }
        }
        let who = match (f.exe, f.pid) {
            (Some(exe), Some(pid)) => format!("{exe} (pid {pid})"),
            (Some(exe), None) => exe.to_string(),
            (None, Some(pid)) => format!("pid {pid}"),
            (None, None) => "an unknown process".to_string(),
        };
        let finding = findings.report(rule, event, format!("{} {:?} by {who}", f.path, f.op).replace('"', ""));
        finding.evidence.push(("path".into(), f.path.to_string()));
        finding.evidence.push(("op".into(), op_name(f.op).into()));
        if let Some(old) = f.old_path {
            finding.evidence.push(("renamed_from".into(), old.to_string()));
        }
        if let Some(exe) = f.exe {
            finding.evidence.push(("writer".into(), exe.to_string()));
        }
    }
}

fn op_name(op: FileOp) -> &'static str {
    match op {
        FileOp::Create => "create",
        FileOp::Modify => "modify",
        FileOp::Delete => "delete",
        FileOp::Rename => "rename",
        FileOp::Chmod => "chmod",
        FileOp::Attrib => "attrib",
        FileOp::Read => "read",
    }
}

edr_sdk::export_detector!(Persistence);

#[cfg(test)]
mod tests {
    use super::*;
    use edr_sdk::testing::{file, model::FileOp, Harness};

    fn rule_for(h: &mut Harness<Persistence>, op: FileOp, path: &str, exe: &str) -> Option<String> {
        let hits = h.run(&[file(op, path).by(100, exe).build()]);
        assert!(hits.len() <= 1);
        hits.into_iter().next().map(|f| f.rule_id)
    }

    #[test]
    fn every_place_is_covered() {
        let mut h = Harness::<Persistence>::new().unwrap();
        let cases = [
            ("/etc/cron.d/backdoor", CRON.id),
            ("/var/spool/cron/crontabs/root", CRON.id),
            ("/etc/systemd/system/evil.service", SYSTEMD.id),
            ("/etc/systemd/system/multi-user.target.wants/evil.service", SYSTEMD.id),
            ("/home/bob/.config/systemd/user/x.timer", SYSTEMD.id),
            ("/home/alice/.ssh/authorized_keys", AUTHORIZED_KEYS.id),
            ("/root/.ssh/authorized_keys", AUTHORIZED_KEYS.id),
            ("/etc/ld.so.preload", LD_PRELOAD.id),
            ("/etc/profile.d/zz.sh", SHELL_RC.id),
            ("/home/bob/.bashrc", SHELL_RC.id),
            ("/etc/passwd", ACCOUNTS.id),
            ("/etc/sudoers.d/99-me", SUDOERS.id),
        ];
        for (path, id) in cases {
            assert_eq!(rule_for(&mut h, FileOp::Modify, path, "/usr/bin/bash").as_deref(), Some(id), "{path}");
        }
    }

    #[test]
    fn every_place_is_under_a_root() {
        for (g, _) in PLACES {
            assert!(ROOTS.iter().any(|r| g.starts_with(r)), "{g} is not under ROOTS: the prefix gate would hide it");
        }
    }

    #[test]
    fn renames_onto_a_place_count_and_evidence_says_from_where() {
        let mut h = Harness::<Persistence>::new().unwrap();
        let hits = h.run(&[file(FileOp::Rename, "/etc/cron.d/job").renamed_from("/tmp/job").by(5, "/usr/bin/mv").build()]);
        assert_eq!(hits.len(), 1);
        assert!(hits[0].evidence.contains(&("renamed_from".into(), "/tmp/job".into())));
        assert!(hits[0].message.contains("/usr/bin/mv (pid 5)"), "{}", hits[0].message);
    }

    #[test]
    fn quiet_cases() {
        let mut h = Harness::<Persistence>::new().unwrap();
        assert_eq!(rule_for(&mut h, FileOp::Modify, "/etc/passwd", "/usr/bin/dpkg"), None);
        assert_eq!(rule_for(&mut h, FileOp::Delete, "/etc/cron.d/old", "/usr/bin/rm"), None);
        assert_eq!(rule_for(&mut h, FileOp::Read, "/etc/passwd", "/usr/bin/cat"), None);
        assert_eq!(rule_for(&mut h, FileOp::Modify, "/etc/hosts", "/usr/bin/vim"), None);
        assert_eq!(rule_for(&mut h, FileOp::Modify, "/home/bob/.ssh/known_hosts", "/usr/bin/ssh"), None);
        assert_eq!(rule_for(&mut h, FileOp::Modify, "/home/bob/notes/.bashrc", "/usr/bin/vim"), None);
    }

    #[test]
    fn ignore_writers_setting_replaces_the_default() {
        let mut h = Harness::<Persistence>::with_settings(&[("ignore_writers", "ansible")]).unwrap();
        assert_eq!(rule_for(&mut h, FileOp::Modify, "/etc/sudoers", "/usr/bin/ansible"), None);
        assert_eq!(rule_for(&mut h, FileOp::Modify, "/etc/sudoers", "/usr/bin/dpkg").as_deref(), Some(SUDOERS.id));
    }

    #[test]
    fn fixtures() {
        let mut h = Harness::<Persistence>::new().unwrap();
        assert_eq!(h.run_fixture("tests/fixtures/positive.jsonl").len(), 3);
        assert!(h.run_fixture("tests/fixtures/negative.jsonl").is_empty());
    }
}
