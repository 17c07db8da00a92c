//! Per-plugin counters and call-time percentiles.

use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Number of recent call times kept for percentiles.
const WINDOW: usize = 4096;

/// Live counters of one plugin, shared between the thread that calls the
/// plugin and whoever reports status. Cheap to update: atomics, plus one
/// uncontended lock per call for the latency window.
///
/// Each [`Plugin`](crate::Plugin) has its own, from zero at load; instance
/// rebuilds keep them. Every field is a count that only increases, except the
/// two memory figures (bytes; the current one goes up and down). Read them
/// with [`PluginMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct PluginMetrics {
    /// Calls of `on-events` made, successful or not; one per non-empty batch
    /// delivered. `init` and batches skipped while quarantined are not calls.
    pub calls: AtomicU64,
    /// Events delivered in those calls, including calls that then failed.
    /// Added once the call returns, after its findings are counted.
    pub events: AtomicU64,
    /// Findings returned by the plugin and kept (after the per-batch cap).
    pub findings: AtomicU64,
    /// Failed calls and failed re-instantiations: every strike. The sum of
    /// [`timeouts`](Self::timeouts), [`out_of_memory`](Self::out_of_memory)
    /// and [`traps`](Self::traps).
    pub errors: AtomicU64,
    /// Failures that were a deadline overrun (a call, or `init` while an
    /// instance was rebuilt).
    pub timeouts: AtomicU64,
    /// Failures where the plugin hit its memory cap.
    pub out_of_memory: AtomicU64,
    /// All other failures: traps of the plugin's code, and re-instantiations
    /// that failed without a trap ([`PluginError::Reinstantiate`](crate::PluginError::Reinstantiate)).
    pub traps: AtomicU64,
    /// Times a call found the instance dropped by an earlier failure and
    /// built a fresh one (counted whether or not that succeeded). The first
    /// instance, built at load, is not counted.
    pub reinstantiations: AtomicU64,
    /// Events not delivered because the plugin was quarantined, or because
    /// the instance could not be rebuilt for their batch.
    pub skipped_events: AtomicU64,
    /// Findings dropped by the per-batch cap
    /// ([`Limits::max_findings_per_batch`](crate::Limits::max_findings_per_batch)).
    pub findings_cut: AtomicU64,
    /// Strings shortened to their length cap (finding fields, techniques,
    /// evidence keys and values, log lines), plus one for each list of a
    /// finding cut short (techniques, evidence, event ids).
    pub strings_cut: AtomicU64,
    /// Log lines the plugin wrote through the `log` import and the rate limit
    /// let through (they go to `tracing`, target `edr::plugin`).
    pub log_lines: AtomicU64,
    /// Log lines dropped by the rate limit.
    pub logs_dropped: AtomicU64,
    /// Current linear memory of the live instance, bytes: updated as it grows
    /// and after each successful call; left at its last value when the
    /// instance is dropped.
    pub memory_bytes: AtomicU64,
    /// Highest linear memory seen, bytes.
    pub peak_memory_bytes: AtomicU64,
    recent_us: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    values: Vec<u32>,
    next: usize,
}

/// A point-in-time copy of [`PluginMetrics`], for status output.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricsSnapshot {
    /// `on-events` calls made, see [`PluginMetrics::calls`].
    pub calls: u64,
    /// Events delivered, see [`PluginMetrics::events`].
    pub events: u64,
    /// Findings kept, see [`PluginMetrics::findings`].
    pub findings: u64,
    /// Failures (strikes) of any kind, see [`PluginMetrics::errors`].
    pub errors: u64,
    /// Failures that were deadline overruns, see [`PluginMetrics::timeouts`].
    pub timeouts: u64,
    /// Failures at the memory cap, see [`PluginMetrics::out_of_memory`].
    pub out_of_memory: u64,
    /// Traps and failed rebuilds, see [`PluginMetrics::traps`].
    pub traps: u64,
    /// Instances rebuilt after a failure, see [`PluginMetrics::reinstantiations`].
    pub reinstantiations: u64,
    /// Events not delivered, see [`PluginMetrics::skipped_events`].
    pub skipped_events: u64,
    /// Findings dropped by the per-batch cap, see [`PluginMetrics::findings_cut`].
    pub findings_cut: u64,
    /// Strings and lists cut to their caps, see [`PluginMetrics::strings_cut`].
    pub strings_cut: u64,
    /// Plugin log lines written, see [`PluginMetrics::log_lines`].
    pub log_lines: u64,
    /// Plugin log lines dropped by the rate limit, see [`PluginMetrics::logs_dropped`].
    pub logs_dropped: u64,
    /// Linear memory of the live instance (or the last one), bytes.
    pub memory_bytes: u64,
    /// Highest linear memory seen since load, bytes.
    pub peak_memory_bytes: u64,
    /// Median call time over the last calls, microseconds.
    pub p50_us: u64,
    /// 99th percentile call time over the last calls, microseconds.
    pub p99_us: u64,
}

impl PluginMetrics {
    /// Records one call's duration.
    pub fn record_call_time(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        let mut r = self.recent_us.lock().unwrap_or_else(|p| p.into_inner());
        if r.values.len() < WINDOW {
            r.values.push(us);
        } else {
            let i = r.next;
            r.values[i] = us;
        }
        r.next = (r.next + 1) % WINDOW;
    }

    /// Sets the current memory figure and raises the peak.
    pub fn set_memory(&self, bytes: usize) {
        self.memory_bytes.store(bytes as u64, Relaxed);
        self.peak_memory_bytes.fetch_max(bytes as u64, Relaxed);
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let (p50_us, p99_us) = {
            let r = self.recent_us.lock().unwrap_or_else(|p| p.into_inner());
            let mut v = r.values.clone();
            v.sort_unstable();
            (percentile(&v, 50), percentile(&v, 99))
        };
        MetricsSnapshot {
            calls: self.calls.load(Relaxed),
            // Acquire, pairing with the call's Release: the findings read
            // next include those of every event counted here.
            events: self.events.load(Acquire),
            findings: self.findings.load(Relaxed),
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            out_of_memory: self.out_of_memory.load(Relaxed),
            traps: self.traps.load(Relaxed),
            reinstantiations: self.reinstantiations.load(Relaxed),
            skipped_events: self.skipped_events.load(Relaxed),
            findings_cut: self.findings_cut.load(Relaxed),
            strings_cut: self.strings_cut.load(Relaxed),
            log_lines: self.log_lines.load(Relaxed),
            logs_dropped: self.logs_dropped.load(Relaxed),
            memory_bytes: self.memory_bytes.load(Relaxed),
            peak_memory_bytes: self.peak_memory_bytes.load(Relaxed),
            p50_us,
            p99_us,
        }
    }
}

fn percentile(sorted: &[u32], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() * p).div_ceil(100)).saturating_sub(1).min(sorted.len() - 1);
    sorted[idx] as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_window() {
        let m = PluginMetrics::default();
        for us in 1..=100u64 {
            m.record_call_time(Duration::from_micros(us));
        }
        let s = m.snapshot();
        assert_eq!(s.p50_us, 50);
        assert_eq!(s.p99_us, 99);
    }

    #[test]
    fn window_wraps() {
        let m = PluginMetrics::default();
        for _ in 0..WINDOW {
            m.record_call_time(Duration::from_micros(1));
        }
        for _ in 0..WINDOW {
            m.record_call_time(Duration::from_micros(7));
        }
        assert_eq!(m.snapshot().p99_us, 7);
        assert_eq!(m.snapshot().p50_us, 7);
    }
}
