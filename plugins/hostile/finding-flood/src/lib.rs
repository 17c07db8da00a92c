//! Hostile fixture: 200,000 findings from every batch. The agent keeps the
//! per-batch cap and counts the rest as cut.
use edr_sdk::prelude::*;

/// Floods findings.
pub struct FindingFlood;

const RULE: Rule = Rule { id: "hostile.flood", title: "flood", severity: Severity::Low, techniques: &["T0000"], author: "hostile", description: "" };

impl Detector for FindingFlood {
    const NAME: &'static str = "hostile-finding-flood";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(FindingFlood)
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}

    fn on_events(&mut self, events: &[Event<'_>], findings: &mut Findings) {
        let Some(first) = events.first() else { return };
        for _ in 0..200_000 {
            findings.report(&RULE, first, "x");
        }
    }
}

edr_sdk::export_detector!(FindingFlood);
