//! The one normalising path: every collector hands finished
//! [`edr_event::Event`]s to a [`Sink`], which stamps them, sends them into the
//! agent's bounded channel without ever blocking, and counts what it did.

use crossbeam_channel::{Sender, TrySendError};
use edr_event::{Event, EventBody};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// What one collector is doing and what it has lost, as shown by `edr status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CollectorStatus {
    /// `process`, `file`, `network` or `login`.
    pub name: &'static str,
    /// The facility in use, e.g. `ebpf (tp_btf sched_process_fork/exec/exit,
    /// 4 MiB ring buffer)`, `netlink + fanotify exec paths on 4 filesystems
    /// [eBPF unavailable: <why>]`, `netlink (no exec paths from fanotify: <why>; ...)`,
    /// `fanotify`, `poll 100ms (degraded: <why>)`,
    /// `inotify (degraded: <why>)`, `off`.
    pub mode: String,
    /// Events sent into the channel.
    pub events: u64,
    /// Events produced with some fields missing (`partial = true`), sent or not.
    pub partial: u64,
    /// Events dropped because the channel was full (or closed).
    pub dropped: u64,
    /// What the kernel reported lost: for `process` on eBPF, records the
    /// ring buffer could not take (per CPU in the agent's log); on netlink, messages (from
    /// gaps in the connector's per-CPU sequence numbers after ENOBUFS,
    /// counted when that CPU next reports an event; at least `overflows`),
    /// plus one per overflow of the exec-path fanotify queue or exec-path
    /// record the kernel could not hand over; for `file`, queue-overflow
    /// notifications (fanotify/inotify do not say how many events each cost).
    pub lost: u64,
    /// Kernel overflow notifications (ENOBUFS, FAN_Q_OVERFLOW, IN_Q_OVERFLOW;
    /// for `process`, of the connector and of the exec-path fanotify group).
    pub overflows: u64,
    /// Kernel events that could not be turned into an event (e.g. a file
    /// event whose directory was gone before its path could be resolved).
    pub unresolved: u64,
    /// `process` only: exec events whose process was gone before `/proc`
    /// could be read, and whose executable was recovered from fanotify
    /// `FAN_OPEN_EXEC` (they stay `partial` when argv or cwd are unknown).
    /// Counted when emitted (sent or dropped), as `partial` is.
    pub exe_recovered: u64,
    /// `process` only: exec events emitted without an executable.
    pub exe_missing: u64,
    /// Events per second since the previous `status()` call (at least one
    /// second apart; the first call measures since start).
    pub events_per_sec: f64,
}

/// Per-collector counters, shared between the collector's threads and
/// [`crate::Collectors::status`].
#[derive(Debug)]
pub(crate) struct Counters {
    pub name: &'static str,
    mode: Mutex<String>,
    pub events: AtomicU64,
    pub partial: AtomicU64,
    pub dropped: AtomicU64,
    pub lost: AtomicU64,
    pub overflows: AtomicU64,
    pub unresolved: AtomicU64,
    pub exe_recovered: AtomicU64,
    pub exe_missing: AtomicU64,
    rate: Mutex<Rate>,
}

#[derive(Debug)]
struct Rate {
    at: Instant,
    events: u64,
    eps: f64,
}

impl Counters {
    pub fn new(name: &'static str, mode: impl Into<String>) -> Arc<Counters> {
        Arc::new(Counters {
            name,
            mode: Mutex::new(mode.into()),
            events: AtomicU64::new(0),
            partial: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            overflows: AtomicU64::new(0),
            unresolved: AtomicU64::new(0),
            exe_recovered: AtomicU64::new(0),
            exe_missing: AtomicU64::new(0),
            rate: Mutex::new(Rate { at: Instant::now(), events: 0, eps: 0.0 }),
        })
    }

    pub fn set_mode(&self, mode: impl Into<String>) {
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode.into();
    }

    pub fn mode(&self) -> String {
        self.mode.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn status(&self) -> CollectorStatus {
        let events = self.events.load(Ordering::Relaxed);
        let eps = {
            let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
            let elapsed = r.at.elapsed().as_secs_f64();
            if elapsed >= 1.0 || (r.events == 0 && r.eps == 0.0 && elapsed > 0.0) {
                r.eps = events.saturating_sub(r.events) as f64 / elapsed;
                if elapsed >= 1.0 {
                    r.at = Instant::now();
                    r.events = events;
                }
            }
            r.eps
        };
        CollectorStatus {
            name: self.name,
            mode: self.mode(),
            events,
            partial: self.partial.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            // Each overflow lost at least one message, even before a gap
            // could be measured.
            lost: self.lost.load(Ordering::Relaxed).max(self.overflows.load(Ordering::Relaxed)),
            overflows: self.overflows.load(Ordering::Relaxed),
            unresolved: self.unresolved.load(Ordering::Relaxed),
            exe_recovered: self.exe_recovered.load(Ordering::Relaxed),
            exe_missing: self.exe_missing.load(Ordering::Relaxed),
            events_per_sec: eps,
        }
    }
}

/// A collector's way out: never blocks, counts everything.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    tx: Sender<Event>,
    pub counters: Arc<Counters>,
}

impl Sink {
    pub fn new(tx: Sender<Event>, counters: Arc<Counters>) -> Sink {
        Sink { tx, counters }
    }

    /// Sends one event (id 0, time now). Returns whether it was queued.
    pub fn emit(&self, body: EventBody, partial: bool) -> bool {
        self.emit_at(edr_event::time::now(), body, partial)
    }

    /// [`Sink::emit`] for an event observed at `time` (ns since the epoch)
    /// and emitted later, e.g. after waiting for its process to be known.
    pub fn emit_at(&self, time: u64, body: EventBody, partial: bool) -> bool {
        if partial {
            self.counters.partial.fetch_add(1, Ordering::Relaxed);
        }
        let event = Event { id: 0, time, partial, body };
        match self.tx.try_send(event) {
            Ok(()) => {
                self.counters.events.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Full(_)) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(collector = self.counters.name, dropped = n + 1, "event channel full: dropping events (counted)");
                }
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if n == 0 {
                    tracing::warn!(collector = self.counters.name, "event channel closed: dropping events (counted)");
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_event::ProcessExit;

    fn exit() -> EventBody {
        EventBody::ProcessExit(ProcessExit { pid: 1, entity_id: 2, exit_code: 0 })
    }

    #[test]
    fn full_channel_drops_and_counts_without_blocking() {
        let (tx, rx) = crossbeam_channel::bounded(2);
        let sink = Sink::new(tx, Counters::new("process", "test"));
        assert!(sink.emit(exit(), false));
        assert!(sink.emit(exit(), true));
        assert!(!sink.emit(exit(), true));
        let st = sink.counters.status();
        assert_eq!((st.events, st.partial, st.dropped), (2, 2, 1));
        let e = rx.recv().unwrap();
        assert_eq!(e.id, 0);
        assert!(e.time > 1_600_000_000_000_000_000);
        assert!(!e.partial);
        assert!(rx.recv().unwrap().partial);
        drop(rx);
        assert!(!sink.emit(exit(), false));
        assert_eq!(sink.counters.status().dropped, 2);
    }
}
