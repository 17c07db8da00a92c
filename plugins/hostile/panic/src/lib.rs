//! Hostile fixture: panics on every batch. In Wasm a panic aborts, which is a
//! trap: the agent must drop the instance, count a strike and keep going.
use edr_sdk::prelude::*;

/// Panics when called.
pub struct Panic;

impl Detector for Panic {
    const NAME: &'static str = "hostile-panic";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(Panic)
    }

    fn on_event(&mut self, event: &Event<'_>, _: &mut Findings) {
        panic!("hostile plugin panics on event {}", event.id);
    }
}

edr_sdk::export_detector!(Panic);
