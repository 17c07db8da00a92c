//! Alert outputs that leave the host: syslog (RFC 5424), an HTTP webhook,
//! and NATS JetStream.
//!
//! The agent's pipeline hands every alert, already serialized as one ECS
//! JSON document, to each configured output through
//! [`AlertOutput::send`], which never waits for the network:
//!
//! * [`syslog::Syslog`] formats an RFC 5424 message and queues it in memory
//!   for its own thread (UDP, TCP with octet counting, or a Unix socket such
//!   as `/dev/log`). Best effort: what the receiver does not take while the
//!   queue is full, or at shutdown, is counted as dropped.
//! * [`webhook::Webhook`] and [`nats::Nats`] append the alert to a durable
//!   disk [`spool::Spool`] (synced before `send` returns) and deliver from
//!   it on their own thread, in order, with retries and exponential backoff,
//!   across receiver outages and agent restarts. Delivery is at least once;
//!   both give the receiver what it needs to drop the one duplicate that can
//!   remain (see their module docs).
//!
//! [`build`] turns an [`OutputsConfig`] (the `[outputs]`-style section of the
//! agent's config) into running outputs; [`AlertOutput::status`] reports
//! what each one did, for `edr status` and metrics.
//!
//! ```toml
//! [syslog]                      # or [[syslog]] for several
//! address = "udp://127.0.0.1:514"
//!
//! [webhook]
//! url = "https://siem.example/edr"
//! headers = { Authorization = "Bearer ..." }
//!
//! [nats]
//! url = "nats://127.0.0.1:4222"
//! stream = "EDR_ALERTS"
//! ```

#![deny(missing_docs)]

mod error;
pub mod nats;
pub mod spool;
pub mod syslog;
mod util;
pub mod webhook;
mod worker;

pub use error::OutputError;
pub use nats::{Nats, NatsConfig};
pub use syslog::{Facility, Syslog, SyslogConfig};
pub use util::one_or_many;
pub use webhook::{Webhook, WebhookConfig};

use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// One alert as the outputs see it.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingAlert<'a> {
    /// Unique per agent and increasing, also across agent restarts.
    pub id: u64,
    /// The ECS JSON document, on one line.
    pub json: &'a str,
    /// ECS `event.severity`, 0 to 100 (Elastic's buckets: 21 low, 47 medium,
    /// 73 high, 99 critical). Values above 100 are read as 100.
    pub severity: u8,
    /// The detection rule that fired, e.g. `edr.revshell.dev-tcp`.
    pub rule_id: &'a str,
    /// This host's name: the syslog HOSTNAME. (The webhook and NATS outputs
    /// build their dedupe keys from the name given to [`build`], which must
    /// stay the same across restarts.)
    pub hostname: &'a str,
}

/// A destination for alerts.
///
/// `send` is called on the pipeline thread and never blocks on the network;
/// delivery happens on the output's own thread.
pub trait AlertOutput: Send {
    /// The output's name (unique among the configured outputs).
    fn name(&self) -> &str;

    /// Takes one alert. `Ok` means the output owns it now: queued in memory
    /// (syslog) or durably spooled (webhook, NATS). An error means the alert
    /// is dropped by this output (also counted in [`OutputStatus::dropped`]).
    fn send(&mut self, alert: &OutgoingAlert<'_>) -> Result<(), OutputError>;

    /// Counters and the last error, for `edr status` and metrics.
    fn status(&self) -> OutputStatus;

    /// Stops taking alerts, delivers what it can within `deadline`, and stops
    /// the delivery thread. A spooled output keeps what is left for its next
    /// start and releases its spool directory (a new output may open it);
    /// syslog counts what is left as dropped. Further `send`s fail. Waits at
    /// most `deadline` plus one second (a request in flight is then left to
    /// finish on its own). Dropping an output without calling this stops it
    /// with a deadline of zero.
    fn shutdown(&mut self, deadline: Duration);
}

/// What an output did since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputStatus {
    /// The output's name.
    pub name: String,
    /// `syslog`, `webhook` or `nats`.
    pub kind: String,
    /// Where it delivers (no credentials): `udp://10.0.0.5:514`,
    /// `https://siem.example/edr`, `nats://127.0.0.1:4222 edr.alerts`.
    pub target: String,
    /// Alerts accepted and not yet delivered: the spool depth, or the
    /// in-memory queue for syslog.
    pub queued: u64,
    /// Bytes of the spool holding the queued alerts (0 for syslog).
    pub queued_bytes: u64,
    /// Alerts the receiver took (acknowledged for webhook and NATS).
    pub delivered: u64,
    /// Failed delivery or connection attempts that will be retried.
    pub retries: u64,
    /// Alerts given up after an error, not retried (syslog over UDP).
    pub failed: u64,
    /// Alerts refused by `send` (spool or queue full, disk error, shutdown)
    /// or, for syslog, still queued at shutdown.
    pub dropped: u64,
    /// Alerts the receiver refused for good, moved to the spool's
    /// `rejected.ndjson` (webhook 4xx, NATS message too large).
    pub rejected: u64,
    /// Syslog messages cut to `max_datagram_bytes`.
    pub truncated: u64,
    /// The last error, if any, prefixed with its time.
    pub last_error: Option<String>,
    /// When the last alert was delivered (RFC 3339, UTC).
    pub last_delivery: Option<String>,
}

/// The outputs section of the agent's config: any number of each kind.
/// Each kind accepts a table (`[webhook]`) or an array of tables
/// (`[[webhook]]`); several of a kind need distinct `name`s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputsConfig {
    /// Syslog receivers (RFC 5424).
    #[serde(deserialize_with = "util::one_or_many")]
    pub syslog: Vec<SyslogConfig>,
    /// HTTP webhooks (POST, disk spool, retries).
    #[serde(deserialize_with = "util::one_or_many")]
    pub webhook: Vec<WebhookConfig>,
    /// NATS JetStream subjects (publish-ack, disk spool, retries).
    #[serde(deserialize_with = "util::one_or_many")]
    pub nats: Vec<NatsConfig>,
}

impl OutputsConfig {
    /// True when no output is configured.
    pub fn is_empty(&self) -> bool {
        self.syslog.is_empty() && self.webhook.is_empty() && self.nats.is_empty()
    }

    /// Checks every value without starting anything (no network, no files):
    /// for `edr config check`. `data_dir` resolves the default and relative
    /// spool directories, which must differ between outputs.
    pub fn validate(&self, data_dir: &Path) -> Result<(), OutputError> {
        let mut names = HashSet::new();
        let mut spools: Vec<(PathBuf, String)> = Vec::new();
        for (i, c) in self.syslog.iter().enumerate() {
            let key = key_of("syslog", i, self.syslog.len());
            c.validate(&key)?;
            unique_name(&mut names, c.name.as_deref().unwrap_or("syslog"), &key)?;
        }
        for (i, c) in self.webhook.iter().enumerate() {
            let key = key_of("webhook", i, self.webhook.len());
            c.validate(&key)?;
            let name = c.name.as_deref().unwrap_or("webhook");
            unique_name(&mut names, name, &key)?;
            unique_spool(&mut spools, c.spool_dir(data_dir), &key)?;
        }
        for (i, c) in self.nats.iter().enumerate() {
            let key = key_of("nats", i, self.nats.len());
            c.validate(&key)?;
            let name = c.name.as_deref().unwrap_or("nats");
            unique_name(&mut names, name, &key)?;
            unique_spool(&mut spools, c.spool_dir(data_dir), &key)?;
        }
        Ok(())
    }

    /// Outputs described for people, e.g. `webhook https://siem.example/edr`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.syslog.iter().map(|c| format!("syslog {}", c.address)));
        out.extend(self.webhook.iter().map(|c| format!("webhook {}", webhook::redact_url(&c.url))));
        out.extend(self.nats.iter().map(|c| format!("nats {} {}", c.url, c.subject)));
        out
    }
}

/// `webhook` for the only one, `webhook[2]` when there are several.
fn key_of(kind: &str, i: usize, n: usize) -> String {
    if n == 1 {
        kind.to_string()
    } else {
        format!("{kind}[{i}]")
    }
}

fn unique_name(names: &mut HashSet<String>, name: &str, key: &str) -> Result<(), OutputError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(OutputError::config(format!("{key}.name"), format!("{name:?} is not a valid name: use letters, digits, '-', '_' and '.'")));
    }
    if !names.insert(name.to_string()) {
        return Err(OutputError::config(
            format!("{key}.name"),
            format!("{name:?} is already the name of another output: give each output its own `name` (it also names the default spool directory)"),
        ));
    }
    Ok(())
}

fn unique_spool(spools: &mut Vec<(PathBuf, String)>, dir: PathBuf, key: &str) -> Result<(), OutputError> {
    if let Some((_, other)) = spools.iter().find(|(d, _)| *d == dir) {
        return Err(OutputError::config(format!("{key}.spool_dir"), format!("{} is also the spool of {other}: each output needs its own", dir.display())));
    }
    spools.push((dir, key.to_string()));
    Ok(())
}

/// Validates `cfg` and starts every output it names. `data_dir` is the
/// agent's data directory (default spools live under `data_dir/spool/`);
/// `hostname` names this host in syslog headers, NATS message ids and
/// webhook idempotency keys. Nothing here waits for the network: receivers
/// that are down are retried by the outputs' threads.
pub fn build(cfg: &OutputsConfig, data_dir: &Path, hostname: &str) -> Result<Vec<Box<dyn AlertOutput>>, OutputError> {
    cfg.validate(data_dir)?;
    let mut out: Vec<Box<dyn AlertOutput>> = Vec::new();
    for c in &cfg.syslog {
        out.push(Box::new(Syslog::start(c, hostname)?));
    }
    for c in &cfg.webhook {
        out.push(Box::new(Webhook::start(c, data_dir, hostname)?));
    }
    for c in &cfg.nats {
        out.push(Box::new(Nats::start(c, data_dir, hostname)?));
    }
    Ok(out)
}

/// Counters shared between an output and its delivery thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: u64,
    pub retries: u64,
    pub failed: u64,
    pub dropped: u64,
    pub rejected: u64,
    pub truncated: u64,
    pub last_error: Option<(SystemTime, String)>,
    pub last_delivery: Option<SystemTime>,
}

/// [`Counters`] behind a lock.
#[derive(Debug, Default, Clone)]
pub(crate) struct SharedCounters(Arc<Mutex<Counters>>);

impl SharedCounters {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Counters> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `error` as the last error.
    pub(crate) fn error(&self, error: impl Into<String>) {
        self.lock().last_error = Some((SystemTime::now(), error.into()));
    }

    /// A status with these counters. `queue` gives the queue depth and
    /// bytes; it is read under the counters' lock, which the delivery
    /// thread holds from a commit to the counting of what it committed, so
    /// the status never shows an alert as neither queued nor delivered.
    pub(crate) fn status(&self, name: &str, kind: &str, target: &str, queue: impl FnOnce() -> (u64, u64)) -> OutputStatus {
        let c = self.lock();
        let (queued, queued_bytes) = queue();
        OutputStatus {
            name: name.to_string(),
            kind: kind.to_string(),
            target: target.to_string(),
            queued,
            queued_bytes,
            delivered: c.delivered,
            retries: c.retries,
            failed: c.failed,
            dropped: c.dropped,
            rejected: c.rejected,
            truncated: c.truncated,
            last_error: c.last_error.as_ref().map(|(t, e)| format!("{} {e}", util::rfc3339(*t))),
            last_delivery: c.last_delivery.map(util::rfc3339),
        }
    }
}

/// Resolves an output's spool directory: `configured` (relative to
/// `data_dir`), else `data_dir/spool/<name>`.
pub(crate) fn spool_dir(configured: Option<&Path>, data_dir: &Path, name: &str) -> PathBuf {
    match configured {
        Some(p) if p.is_absolute() => p.to_path_buf(),
        Some(p) => data_dir.join(p),
        None => data_dir.join("spool").join(name),
    }
}

/// Checks a `*_ms` duration.
pub(crate) fn check_ms(key: &str, field: &str, v: u64, min: u64, max: u64) -> Result<(), OutputError> {
    if v < min || v > max {
        return Err(OutputError::config(format!("{key}.{field}"), format!("{v} is out of range: use {min} to {max} (milliseconds)")));
    }
    Ok(())
}
