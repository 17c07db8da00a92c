//! Hostile fixture: hammers the host imports (log, state, ancestry) until the
//! deadline stops it. Log lines must be rate-limited and counted as dropped,
//! state writes bounded by the quota, and the call cut at the deadline.
use edr_sdk::prelude::*;

/// Calls imports in a tight loop.
pub struct ImportStorm;

impl Detector for ImportStorm {
    const NAME: &'static str = "hostile-import-storm";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(ImportStorm)
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}

    fn on_events(&mut self, events: &[Event<'_>], _: &mut Findings) {
        let entity = events.first().and_then(|e| e.exec()).map(|x| x.entity_id).unwrap_or(1);
        let mut i = 0u64;
        loop {
            host::log(LogLevel::Warn, "storm");
            let _ = host::state::set(&format!("k{}", i % 100_000), &[0u8; 64]);
            std::hint::black_box(host::ancestry(entity));
            i += 1;
        }
    }
}

edr_sdk::export_detector!(ImportStorm);
