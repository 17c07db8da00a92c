//! Hostile fixture: keeps a ledger in its instance memory and traps in the
//! middle of updating it when it sees `/poison`. If the agent reused the
//! trapped instance, the next batch would find the ledger half-updated and
//! report `hostile.corrupt-state-seen`. A fresh instance reports
//! `hostile.ledger-ok` for every event instead.
use edr_sdk::prelude::*;

/// The fixture's state: two counters that must always be equal.
pub struct CorruptAfterTrap {
    debits: u64,
    credits: u64,
}

const OK: Rule =
    Rule { id: "hostile.ledger-ok", title: "ledger consistent", severity: Severity::Informational, techniques: &["T0000"], author: "hostile", description: "" };

const CORRUPT: Rule = Rule {
    id: "hostile.corrupt-state-seen",
    title: "ledger corrupt",
    severity: Severity::Critical,
    techniques: &["T0000"],
    author: "hostile",
    description: "",
};

impl Detector for CorruptAfterTrap {
    const NAME: &'static str = "hostile-corrupt-after-trap";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(CorruptAfterTrap { debits: 0, credits: 0 })
    }

    fn on_event(&mut self, event: &Event<'_>, findings: &mut Findings) {
        let Some(exec) = event.exec() else { return };
        if self.debits != self.credits {
            findings.report(&CORRUPT, event, format!("debits {} != credits {}", self.debits, self.credits));
            return;
        }
        self.debits += 1;
        if exec.exe == "/poison" {
            panic!("trap between the two halves of an update");
        }
        self.credits += 1;
        findings.report(&OK, event, format!("ledger at {}", self.credits));
    }
}

edr_sdk::export_detector!(CorruptAfterTrap);
