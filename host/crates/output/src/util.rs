//! Small pieces shared by the outputs: time stamps, backoff, the stop/wake
//! signal of a delivery thread, config helpers.

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::marker::PhantomData;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// `2024-05-01T12:00:00.123456Z`: RFC 3339 in UTC with microseconds (RFC
/// 5424 allows at most six fraction digits).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z", dt.year(), u8::from(dt.month()), dt.day(), dt.hour(), dt.minute(), dt.second(), dt.microsecond())
}

/// Exponential backoff with "equal jitter": the n-th delay is uniformly
/// drawn from `[d/2, d]` where `d = min(initial * 2^n, max)`, so that many
/// agents that lost the same receiver do not come back in lockstep.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), current: None }
    }

    /// The next delay.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let d = match self.current {
            None => self.initial,
            Some(c) => (c * 2).min(self.max),
        };
        self.current = Some(d);
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=nanos))
    }

    /// After a success.
    pub(crate) fn reset(&mut self) {
        self.current = None;
    }

    /// The ceiling, used to cap a receiver's `Retry-After`.
    pub(crate) fn max(&self) -> Duration {
        self.max
    }
}

/// Wakes a delivery thread (new data) and tells it to stop.
#[derive(Debug, Default)]
pub(crate) struct Control {
    state: Mutex<Ctl>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct Ctl {
    wake: bool,
    /// Set by `stop`: deliver what can be delivered until then, then exit.
    stop_at: Option<Instant>,
}

impl Control {
    fn lock(&self) -> MutexGuard<'_, Ctl> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New data.
    pub(crate) fn notify(&self) {
        self.lock().wake = true;
        self.cv.notify_all();
    }

    /// Asks the thread to stop at `deadline` (or earlier, when it has nothing
    /// left to do).
    pub(crate) fn stop(&self, deadline: Instant) {
        let mut c = self.lock();
        c.stop_at = Some(c.stop_at.map_or(deadline, |d| d.min(deadline)));
        self.cv.notify_all();
    }

    /// The stop deadline, once `stop` was called.
    pub(crate) fn stop_at(&self) -> Option<Instant> {
        self.lock().stop_at
    }

    /// True once stopping and the deadline has passed.
    pub(crate) fn must_exit(&self) -> bool {
        self.stop_at().is_some_and(|d| Instant::now() >= d)
    }

    /// Waits for new data, a stop, or `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        let mut c = self.lock();
        while !c.wake && c.stop_at.is_none() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            c = self.cv.wait_timeout(c, until - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        c.wake = false;
    }

    /// Sleeps `d` (a backoff); a stop cuts it short to the stop deadline.
    pub(crate) fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut c = self.lock();
        loop {
            let end = c.stop_at.map_or(until, |s| s.min(until));
            let now = Instant::now();
            if now >= end {
                return;
            }
            c = self.cv.wait_timeout(c, end - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// A delivery thread that can be waited for with a time limit.
#[derive(Debug)]
pub(crate) struct Worker {
    handle: Option<std::thread::JoinHandle<()>>,
    done: crossbeam_channel::Receiver<()>,
}

impl Worker {
    /// Spawns `f` on a thread named `name`; a panic in `f` is reported to
    /// `on_panic` (the output's last error) instead of vanishing.
    pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static, on_panic: impl FnOnce(String) + Send + 'static) -> std::io::Result<Self> {
        let (tx, done) = crossbeam_channel::bounded::<()>(0);
        let thread = name.to_string();
        let handle = std::thread::Builder::new().name(name.to_string()).spawn(move || {
            // Dropped when `f` returns or unwinds: tells `join_within`.
            let _done = tx;
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let msg = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                on_panic(format!("delivery thread {thread} stopped by a bug (panic: {msg}); restart the agent"));
            }
        })?;
        Ok(Self { handle: Some(handle), done })
    }

    /// Waits up to `limit` for the thread to end; false when it did not (the
    /// thread is then left to finish on its own).
    pub(crate) fn join_within(&mut self, limit: Duration) -> bool {
        let Some(handle) = self.handle.take() else { return true };
        match self.done.recv_timeout(limit) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => false,
            _ => {
                let _ = handle.join();
                true
            }
        }
    }
}

/// A TOML table or an array of tables, as a list: lets operators write
/// `[webhook]` for one output and `[[webhook]]` for several.
/// Deserializes a table or an array of tables as a list (`[x]` or `[[x]]`).
pub fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a table or an array of tables")
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
            T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(|t| vec![t])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(t) = seq.next_element()? {
                out.push(t);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V(PhantomData))
}

/// `host`, with every character outside `[A-Za-z0-9._-]` replaced by `_`:
/// safe in an HTTP header value, a NATS message id, a file name.
pub(crate) fn token_safe(host: &str) -> String {
    let s: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if s.is_empty() {
        "unknown-host".into()
    } else {
        s
    }
}

/// First `max` characters of `s`, for error messages.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// JSON, without raw line breaks: pretty-printed JSON has them only as
/// whitespace between tokens (inside strings they are escaped), so replacing
/// them with spaces keeps the document and makes it one NDJSON line.
pub(crate) fn one_line(json: &str) -> std::borrow::Cow<'_, str> {
    if json.contains(['\n', '\r']) {
        std::borrow::Cow::Owned(json.replace(['\n', '\r'], " "))
    } else {
        std::borrow::Cow::Borrowed(json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_has_six_fraction_digits() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn backoff_grows_to_max_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(50) && d <= Duration::from_millis(100));
        for _ in 0..10 {
            b.next_delay();
        }
        let d = b.next_delay();
        assert!(d >= Duration::from_millis(500) && d <= Duration::from_millis(1000), "{d:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
