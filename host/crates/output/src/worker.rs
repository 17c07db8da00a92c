//! The part the webhook and NATS outputs share: `send` appends to the
//! spool, and a delivery thread takes batches from it, in order, hands them
//! to a [`Transport`], commits what the receiver acknowledged, and backs off
//! and retries what it did not.

use crate::spool::{Record, Spool};
use crate::util::{one_line, Backoff, Control, Worker};
use crate::{OutgoingAlert, OutputError, OutputStatus, SharedCounters};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How long `shutdown` waits, past its deadline, for a delivery in flight.
const JOIN_GRACE: Duration = Duration::from_secs(1);

/// What a transport did with a batch.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// How many records, from the start of the batch, the receiver
    /// acknowledged: they are committed.
    pub delivered: usize,
    /// What to do about the rest.
    pub next: Next,
}

/// What to do with the records after the acknowledged ones.
#[derive(Debug)]
pub(crate) enum Next {
    /// All delivered.
    Done,
    /// Try again after a backoff (at least `after`, if the receiver said so).
    Retry { error: String, after: Option<Duration> },
    /// The receiver refused the first unacknowledged record for good: move
    /// it to the rejected file and go on.
    Reject { error: String },
}

impl Outcome {
    pub(crate) fn all(n: usize) -> Self {
        Outcome { delivered: n, next: Next::Done }
    }
    pub(crate) fn retry(delivered: usize, error: String, after: Option<Duration>) -> Self {
        Outcome { delivered, next: Next::Retry { error, after } }
    }
    pub(crate) fn reject(delivered: usize, error: String) -> Self {
        Outcome { delivered, next: Next::Reject { error } }
    }
}

/// Delivers batches of records to one receiver. Runs on the delivery thread.
pub(crate) trait Transport: Send + 'static {
    /// Called once when the thread starts, e.g. to connect early so that a
    /// wrong address shows in the status before the first alert.
    fn warm_up(&mut self) -> Result<(), String> {
        Ok(())
    }

    /// Delivers `batch` (never empty), in order.
    fn deliver(&mut self, batch: &[Record]) -> Outcome;
}

/// Fixed settings of a spooled output.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    pub name: String,
    pub kind: &'static str,
    pub target: String,
    pub batch_max: usize,
    pub batch_bytes: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// A spool plus its delivery thread.
#[derive(Debug)]
pub(crate) struct Spooled {
    p: Params,
    /// Released at shutdown (with its directory lock).
    spool: Option<Arc<Spool>>,
    /// Queue depth when the spool was released.
    final_queued: (u64, u64),
    control: Arc<Control>,
    counters: SharedCounters,
    worker: Option<Worker>,
    closed: bool,
    /// Alerts refused since the last accepted one (one log line per run).
    dropping: u64,
}

impl Spooled {
    /// Starts the delivery thread.
    pub(crate) fn start(p: Params, spool: Spool, transport: impl Transport) -> Result<Self, OutputError> {
        let spool = Arc::new(spool);
        let control = Arc::new(Control::default());
        let counters = SharedCounters::default();
        let queued = spool.queued();
        if queued > 0 {
            tracing::info!(output = %p.name, "{}: {queued} undelivered alerts in the spool {}; delivering them first", p.name, spool.dir().display());
        }
        let worker = {
            let (p2, spool, control, counters, c2) = (p.clone(), spool.clone(), control.clone(), counters.clone(), counters.clone());
            Worker::spawn(
                &format!("edr-out-{}", p.name),
                move || run(transport, &p2, &spool, &control, &counters),
                move |e| {
                    tracing::error!("{e}");
                    c2.error(e);
                },
            )
            .map_err(|e| OutputError::Start { output: p.name.clone(), message: format!("cannot start the delivery thread: {e}") })?
        };
        Ok(Self { p, spool: Some(spool), final_queued: (0, 0), control, counters, worker: Some(worker), closed: false, dropping: 0 })
    }

    pub(crate) fn name(&self) -> &str {
        &self.p.name
    }

    pub(crate) fn send(&mut self, alert: &OutgoingAlert<'_>) -> Result<(), OutputError> {
        let result = match &self.spool {
            Some(spool) if !self.closed => spool.append(alert.id, &one_line(alert.json)),
            _ => Err(OutputError::ShutDown { output: self.p.name.clone(), id: alert.id }),
        };
        match result {
            Ok(()) => {
                self.control.notify();
                if self.dropping > 0 {
                    tracing::warn!(output = %self.p.name, "{}: spool accepts alerts again; {} alerts were dropped before this one", self.p.name, self.dropping);
                    self.dropping = 0;
                }
                Ok(())
            }
            Err(e) => {
                {
                    let mut c = self.counters.lock();
                    c.dropped += 1;
                    c.last_error = Some((SystemTime::now(), e.to_string()));
                }
                if self.dropping == 0 {
                    tracing::error!(output = %self.p.name, "{e}; further drops are counted (status `dropped`) and summed up in the log once alerts are accepted again");
                }
                self.dropping += 1;
                Err(e)
            }
        }
    }

    pub(crate) fn status(&self) -> OutputStatus {
        let spool = self.spool.as_ref();
        let final_queued = self.final_queued;
        self.counters.status(&self.p.name, self.p.kind, &self.p.target, || spool.map_or(final_queued, |s| (s.queued(), s.queued_bytes())))
    }

    pub(crate) fn shutdown(&mut self, deadline: Duration) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.control.stop(Instant::now() + deadline);
        if let Some(mut w) = self.worker.take() {
            if !w.join_within(deadline + JOIN_GRACE) {
                tracing::warn!(output = %self.p.name, "{}: the delivery thread is still waiting for the receiver; left to finish on its own", self.p.name);
            }
        }
        if let Some(spool) = self.spool.take() {
            self.final_queued = (spool.queued(), spool.queued_bytes());
            let left = self.final_queued.0;
            if left > 0 {
                tracing::info!(output = %self.p.name, "{}: {left} undelivered alerts stay in the spool {} for the next start", self.p.name, spool.dir().display());
            }
        }
    }
}

/// Implements [`AlertOutput`] for a newtype whose `inner` field is a
/// [`Spooled`] (the webhook and NATS outputs).
macro_rules! spooled_output {
    ($t:ty) => {
        impl $crate::AlertOutput for $t {
            fn name(&self) -> &str {
                self.inner.name()
            }
            fn send(&mut self, alert: &$crate::OutgoingAlert<'_>) -> Result<(), $crate::OutputError> {
                self.inner.send(alert)
            }
            fn status(&self) -> $crate::OutputStatus {
                self.inner.status()
            }
            fn shutdown(&mut self, deadline: std::time::Duration) {
                self.inner.shutdown(deadline)
            }
        }
    };
}
pub(crate) use spooled_output;

impl Drop for Spooled {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}

/// The delivery thread.
fn run(mut transport: impl Transport, p: &Params, spool: &Spool, control: &Control, counters: &SharedCounters) {
    if let Err(e) = transport.warm_up() {
        tracing::warn!(output = %p.name, "{}: {e} (will retry)", p.name);
        counters.error(e);
    }
    let mut backoff = Backoff::new(p.retry_initial, p.retry_max);
    let mut failures = 0u64;
    loop {
        if control.must_exit() {
            break;
        }
        let batch = match spool.read(p.batch_max, p.batch_bytes) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(output = %p.name, "{e}");
                counters.error(e.to_string());
                control.sleep(backoff.next_delay());
                continue;
            }
        };
        if batch.is_empty() {
            if control.stop_at().is_some() {
                break;
            }
            control.wait(Duration::from_secs(5));
            continue;
        }
        let outcome = transport.deliver(&batch);
        let n = outcome.delivered.min(batch.len());
        if n > 0 {
            // Commit and count under the counters' lock (see `status`).
            let mut c = counters.lock();
            if let Err(e) = spool.commit(&batch[..n]) {
                // They were delivered; they will be sent again (duplicates
                // the receiver can drop by alert id) once the disk recovers.
                c.last_error = Some((SystemTime::now(), e.to_string()));
                drop(c);
                tracing::error!(output = %p.name, "{e}: {n} delivered alerts will be sent again");
                control.sleep(backoff.next_delay());
                continue;
            }
            c.delivered += n as u64;
            c.last_delivery = Some(SystemTime::now());
            drop(c);
            backoff.reset();
            if failures > 0 {
                tracing::info!(output = %p.name, "{}: delivering again after {failures} failed attempts", p.name);
                failures = 0;
            }
        }
        match outcome.next {
            Next::Done => {}
            Next::Retry { error, after } => {
                failures += 1;
                counters.lock().retries += 1;
                counters.error(error.clone());
                let mut delay = backoff.next_delay();
                if let Some(after) = after {
                    delay = delay.max(after.min(backoff.max()));
                }
                if failures == 1 {
                    tracing::warn!(output = %p.name, "{}: {error}; {} alerts wait in the spool, retrying with backoff", p.name, spool.queued());
                } else {
                    tracing::debug!(output = %p.name, "{}: attempt {failures} failed: {error}; next in {delay:?}", p.name);
                }
                control.sleep(delay);
            }
            Next::Reject { error } => {
                let Some(rec) = batch.get(n) else { continue };
                let mut c = counters.lock();
                match spool.reject(rec, &error) {
                    Ok(()) => {
                        c.rejected += 1;
                        c.last_error = Some((SystemTime::now(), format!("alert {} rejected: {error}", rec.id)));
                        drop(c);
                        tracing::error!(output = %p.name, "{}: alert {} rejected for good: {error}; moved to {}", p.name, rec.id, spool.rejected_path().display());
                    }
                    Err(e) => {
                        c.last_error = Some((SystemTime::now(), e.to_string()));
                        drop(c);
                        tracing::error!(output = %p.name, "{e}: alert {} stays in the spool", rec.id);
                        control.sleep(backoff.next_delay());
                    }
                }
            }
        }
    }
}
