//! Hostile fixture: each batch busy-waits 150 ms by the host clock, just past
//! the default 100 ms deadline; the epoch deadline must cut it off.
use edr_sdk::prelude::*;

/// Overruns its deadline by half.
pub struct Overrun;

impl Detector for Overrun {
    const NAME: &'static str = "hostile-deadline-overrun";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(Overrun)
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}

    fn on_events(&mut self, _: &[Event<'_>], _: &mut Findings) {
        let until = host::now() + 150_000_000;
        while host::now() < until {
            std::hint::spin_loop();
        }
    }
}

edr_sdk::export_detector!(Overrun);
