//! The isolation fallback: a host isolated from everything but its fleet
//! must not stay cut off when the fleet cannot be reached (the NATS
//! endpoint moved, the allowlist was wrong, the management side is down).
//! The link watches, at each heartbeat tick, whether it is connected to
//! NATS and whether the host is isolated; after `[fleet]
//! isolation_fallback_secs` isolated without a connection it asks the
//! agent to release the host, with the reason, and reports it in its next
//! heartbeats ([`edr_fleet_proto::msg::Heartbeat::self_release`]).
//!
//! The time counts from the later of: the last moment the link was
//! connected, the moment the host was seen isolated first, and the link's
//! start (an agent that restarts isolated and never reaches the fleet
//! releases itself after the same time). A release that fails is tried
//! again once a minute.

use std::time::{Duration, Instant};

/// How often a failed self-release is tried again.
const RETRY: Duration = Duration::from_secs(60);

/// Decides when an isolated host without its fleet releases itself.
#[derive(Debug)]
pub struct IsolationWatch {
    fallback: Option<Duration>,
    last_contact: Instant,
    last_attempt: Option<Instant>,
}

impl IsolationWatch {
    /// A watch releasing after `fallback` (none: never), counting from `now`.
    pub fn new(fallback: Option<Duration>, now: Instant) -> IsolationWatch {
        IsolationWatch { fallback, last_contact: now, last_attempt: None }
    }

    /// One observation; the reason to release now, when the fallback is due.
    pub fn observe(&mut self, now: Instant, connected: bool, isolated: bool) -> Option<String> {
        if connected || !isolated {
            self.last_contact = now;
            self.last_attempt = None;
            return None;
        }
        let fallback = self.fallback?;
        let away = now.saturating_duration_since(self.last_contact);
        if away < fallback || self.last_attempt.is_some_and(|t| now.saturating_duration_since(t) < RETRY) {
            return None;
        }
        self.last_attempt = Some(now);
        Some(format!(
            "isolation fallback: the fleet has been unreachable for {} s while this host was isolated ([fleet] isolation_fallback_secs = {}); released so the host is not stranded",
            away.as_secs(),
            fallback.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_only_after_the_fallback_isolated_and_unreachable() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = IsolationWatch::new(Some(Duration::from_secs(10)), t0);
        assert_eq!(w.observe(s(5), true, true), None, "connected: isolation keeps the fleet");
        assert_eq!(w.observe(s(14), false, true), None, "9 s without the fleet");
        let why = w.observe(s(15), false, true).expect("10 s: released");
        assert!(why.contains("unreachable for 10 s") && why.contains("isolation_fallback_secs = 10"), "{why}");
        assert_eq!(w.observe(s(16), false, true), None, "no second attempt within a minute");
        assert!(w.observe(s(76), false, true).is_some(), "the release failed: tried again after a minute");
        assert_eq!(w.observe(s(77), false, false), None, "released");
        assert_eq!(w.observe(s(80), false, true), None, "isolated again at 80 s: the time counts from there");
        assert!(w.observe(s(87), false, true).is_some());
    }

    #[test]
    fn a_host_not_isolated_or_without_a_fallback_is_never_released() {
        let t0 = Instant::now();
        let mut off = IsolationWatch::new(None, t0);
        assert_eq!(off.observe(t0 + Duration::from_secs(100_000), false, true), None);
        let mut w = IsolationWatch::new(Some(Duration::from_secs(1)), t0);
        assert_eq!(w.observe(t0 + Duration::from_secs(100), false, false), None);
    }
}
