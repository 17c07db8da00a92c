//! Hostile fixture: never returns. Only the agent's epoch deadline stops it.
use edr_sdk::prelude::*;

/// Loops forever when called.
pub struct InfiniteLoop;

impl Detector for InfiniteLoop {
    const NAME: &'static str = "hostile-infinite-loop";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(InfiniteLoop)
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

edr_sdk::export_detector!(InfiniteLoop);
