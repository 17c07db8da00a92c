//! Hostile fixture: unbounded recursion; the Wasm stack limit must trap it.
use edr_sdk::prelude::*;

/// Recurses forever.
pub struct DeepRecursion;

// Endless on purpose: the fixture exists to hit the stack limit.
#[allow(unconditional_recursion)]
#[inline(never)]
fn descend(depth: u64, pad: [u64; 16]) -> u64 {
    let next = std::hint::black_box([pad[0].wrapping_add(depth); 16]);
    descend(depth + 1, next).wrapping_add(next[3])
}

impl Detector for DeepRecursion {
    const NAME: &'static str = "hostile-deep-recursion";
    const VERSION: &'static str = "0.0.0";
    const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec, EventKind::File];

    fn init(_: &Config) -> Result<Self, String> {
        Ok(DeepRecursion)
    }

    fn on_event(&mut self, event: &Event<'_>, _: &mut Findings) {
        std::hint::black_box(descend(event.id, [0; 16]));
    }
}

edr_sdk::export_detector!(DeepRecursion);
