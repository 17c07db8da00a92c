//! Test plugin: keeps a counter in the agent's persistent key-value state and
//! reports `count N` for every exec of `/usr/bin/stateful-probe`. A count that
//! carries on across a plugin update and an agent restart shows that plugin
//! state survives both.
use edr_sdk::prelude::*;

const COUNT: Rule = Rule {
    id: "test.stateful.count",
    title: "stateful probe",
    severity: Severity::Informational,
    techniques: &["T0000"],
    author: "edr tests",
    description: "Reports the running count of probe execs.",
};

/// The counting detector.
pub struct Stateful;

impl Detector for Stateful {
    const NAME: &'static str = "stateful";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(Stateful)
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        let Some(exec) = event.exec() else { return };
        if exec.exe != "/usr/bin/stateful-probe" {
            return;
        }
        let n = host::state::get("count").and_then(|b| String::from_utf8(b).ok()).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) + 1;
        if let Err(e) = host::state::set("count", n.to_string().as_bytes()) {
            host::log(LogLevel::Error, &format!("cannot store the count: {e}"));
        }
        findings.report(&COUNT, event, format!("count {n}"));
    }
}

edr_sdk::export_detector!(Stateful);

#[cfg(test)]
mod tests {
    use super::*;
    use edr_sdk::testing::{exec, Harness};

    #[test]
    fn counts_across_batches() {
        let mut h = Harness::<Stateful>::new().unwrap();
        let probe = || exec("/usr/bin/stateful-probe", &["p"]).build();
        assert_eq!(h.run(&[probe(), probe()]).iter().map(|f| f.message.clone()).collect::<Vec<_>>(), vec!["count 1", "count 2"]);
        assert_eq!(h.run(&[probe(), exec("/bin/ls", &["ls"]).build()])[0].message, "count 3");
    }
}
