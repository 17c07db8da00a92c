//! The signal that stops a running agent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Asks a running agent (and its extensions) to stop: cloneable, and safe
/// to trigger from a signal handler through [`Shutdown::flag`]
/// (`signal_hook::flag::register(SIGTERM, shutdown.flag())`).
///
/// The agent checks it between two batches (at least once a second), stops
/// reading events, finishes what is queued, flushes and returns from
/// [`crate::Agent::run`].
#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A signal not triggered yet.
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Asks for the stop.
    pub fn trigger(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether the stop was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// The flag itself, for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }

    /// Sleeps until the stop is asked for or `timeout` passes (checking
    /// every 50 ms); returns whether it was asked for. What an extension's
    /// loop waits on between two rounds of work.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while !self.is_triggered() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        true
    }
}
