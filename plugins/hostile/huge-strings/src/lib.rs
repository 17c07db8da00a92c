//! Hostile fixture: a finding whose message is 16 MiB and whose evidence has
//! 10,000 pairs. The agent cuts both to its caps and counts what it cut.
use edr_sdk::prelude::*;

/// Returns oversized strings.
pub struct HugeStrings;

const RULE: Rule = Rule { id: "hostile.huge", title: "huge", severity: Severity::Low, techniques: &["T0000"], author: "hostile", description: "" };

impl Detector for HugeStrings {
    const NAME: &'static str = "hostile-huge-strings";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(HugeStrings)
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}

    fn on_events(&mut self, events: &[Event<'_>], findings: &mut Findings) {
        let Some(first) = events.first() else { return };
        let f = findings.report(&RULE, first, "M".repeat(16 << 20));
        for i in 0..10_000 {
            f.evidence.push((format!("k{i}"), "v".repeat(100)));
        }
    }
}

edr_sdk::export_detector!(HugeStrings);
