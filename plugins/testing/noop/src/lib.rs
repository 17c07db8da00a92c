//! Does nothing with every event: the baseline for measuring dispatch cost.
use edr_sdk::prelude::*;

/// The no-op detector.
pub struct Noop;

impl Detector for Noop {
    const NAME: &'static str = "noop";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::ProcessExit, EventKind::File, EventKind::Network, EventKind::Login];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(Noop)
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}

    fn on_events(&mut self, events: &[Event<'_>], _: &mut Findings) {
        std::hint::black_box(events);
    }
}

edr_sdk::export_detector!(Noop);
