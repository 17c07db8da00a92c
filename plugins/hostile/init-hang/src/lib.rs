//! Hostile fixture: never returns from init. Loading must fail at the init
//! deadline with a clear error, without stalling the agent.
use edr_sdk::prelude::*;

/// Hangs in init.
pub struct InitHang;

impl Detector for InitHang {
    const NAME: &'static str = "hostile-init-hang";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];

    fn init(_: &Config) -> Result<Self, String> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}
}

edr_sdk::export_detector!(InitHang);
