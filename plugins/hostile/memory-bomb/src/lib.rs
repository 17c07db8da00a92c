//! Hostile fixture: allocates 1 MiB blocks (touching them) until allocation
//! fails. The agent's per-plugin cap must stop it; the agent must survive.
use edr_sdk::prelude::*;

/// Eats memory.
pub struct MemoryBomb;

impl Detector for MemoryBomb {
    const NAME: &'static str = "hostile-memory-bomb";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(MemoryBomb)
    }

    fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}

    fn on_events(&mut self, _: &[Event<'_>], _: &mut Findings) {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xAB; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

edr_sdk::export_detector!(MemoryBomb);
