//! NATS JetStream: each alert is published to a subject and acknowledged by
//! the stream that stores it, from a durable disk spool, in order.
//!
//! # Publishing
//!
//! The payload is the ECS JSON document; the header `Nats-Msg-Id` is
//! `<hostname>-<alert id>`, so JetStream drops a copy of an alert it stored
//! within the stream's duplicate window (2 minutes unless the stream says
//! otherwise): a publish retried after a lost ack, or the batch resent after
//! a crash between the ack and the spool commit, is stored once. Alerts are
//! published one at a time, each waiting for its ack (`timeout_ms`), which
//! keeps them in order in the stream; alerts are rare, and a backlog drains
//! at one round trip per alert.
//!
//! While the server is unreachable (or answers with no stream for the
//! subject), alerts wait in the spool, with retries as for the webhook
//! (`retry_initial_ms` doubling up to `retry_max_ms`, with jitter); the
//! client reconnects on its own with the same delays. A message larger than
//! the server's `max_payload` (or the stream's maximum message size) can
//! never be stored: it goes to the spool's `rejected.ndjson` and is counted
//! in `rejected`.
//!
//! # Stream
//!
//! With `stream` unset the output publishes to whatever stream captures the
//! subject; none yields "no responders", retried (and shown in the status)
//! until one exists. With `stream = "NAME"`, a missing stream is created on
//! the first connection: `subjects = [subject]`, file storage, limits
//! retention, and the server's defaults otherwise (no size or age limit: set
//! them with `nats stream edit` or create the stream yourself for
//! production). An existing stream is used as it is; a warning is logged if
//! it does not list the subject.
//!
//! # Runtime
//!
//! `async-nats` needs tokio; the output creates its own runtime with one
//! worker thread (the connection's reader, writer and pings) and its
//! delivery thread waits on it. Nothing else in the agent runs on it.
//! TLS (`tls://` URLs, or a server that requires it) uses rustls with the
//! `ring` provider and the system's root certificates, plus `ca_file`.

use crate::spool::{Record, Spool, SpoolOptions};
use crate::util::token_safe;
use crate::worker::{Outcome, Params, Spooled, Transport};
use crate::{check_ms, spool_dir, OutputError};
use async_nats::jetstream::{self, context::PublishErrorKind, ErrorCode};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Spooled alerts read per batch (published one by one).
const BATCH: usize = 64;

/// `[nats]`: publish alerts to NATS JetStream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Names this output in status and logs, and its default spool
    /// directory; needed only to tell several NATS outputs apart. Default
    /// `nats`.
    pub name: Option<String>,
    /// The server: `nats://host:port`, or `tls://host:port` for TLS. Default
    /// `nats://127.0.0.1:4222`.
    pub url: String,
    /// Subject to publish to; `{host}` is replaced with this host's name
    /// (characters other than letters, digits, `-` and `_` become `_`, so a
    /// dotted name stays one token). Default `edr.alerts`.
    pub subject: String,
    /// JetStream stream to create, capturing `subject`, if it does not exist
    /// (see the module documentation). Default: none (a stream must exist).
    pub stream: Option<String>,
    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// Authentication token (mutually exclusive with `credentials_file`).
    pub token: Option<String>,
    /// PEM file of CA certificates to trust for TLS, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Limit for connecting and for one publish acknowledgement, in
    /// milliseconds. Default 5000.
    pub timeout_ms: u64,
    /// Where undelivered alerts are kept (relative paths are under the
    /// agent's data directory). Default `<data_dir>/spool/<name>`.
    pub spool_dir: Option<PathBuf>,
    /// Most undelivered alerts kept on disk, in MiB; beyond, new alerts are
    /// refused for this output and counted as `dropped`. Default 256.
    pub max_spool_mb: u64,
    /// First retry delay, in milliseconds; doubles (with jitter) up to
    /// `retry_max_ms`. Also paces the client's reconnects. Default 500.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds. Default 30000.
    pub retry_max_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            name: None,
            url: "nats://127.0.0.1:4222".into(),
            subject: "edr.alerts".into(),
            stream: None,
            credentials_file: None,
            token: None,
            ca_file: None,
            timeout_ms: 5_000,
            spool_dir: None,
            max_spool_mb: 256,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
        }
    }
}

impl NatsConfig {
    /// The output's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("nats")
    }

    /// The spool directory this config resolves to.
    pub fn spool_dir(&self, data_dir: &Path) -> PathBuf {
        spool_dir(self.spool_dir.as_deref(), data_dir, self.name())
    }

    /// The subject for `hostname`.
    pub fn subject_for(&self, hostname: &str) -> String {
        let host: String = hostname.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
        self.subject.replace("{host}", if host.is_empty() { "unknown-host" } else { &host })
    }

    /// Checks every value; `key` is this table's key (`nats`).
    pub fn validate(&self, key: &str) -> Result<(), OutputError> {
        let k = |f: &str| format!("{key}.{f}");
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://")) {
            return Err(OutputError::config(k("url"), format!("{:?}: use nats://host:port or tls://host:port", self.url)));
        }
        self.url.parse::<async_nats::ServerAddr>().map_err(|e| OutputError::config(k("url"), format!("{:?} is not a NATS server address: {e}", self.url)))?;
        let subject = self.subject_for("host");
        if subject.contains(['{', '}']) {
            return Err(OutputError::config(k("subject"), format!("{:?}: the only placeholder is {{host}}", self.subject)));
        }
        if subject.is_empty() || subject.split('.').any(|t| t.is_empty() || t.contains(['*', '>']) || t.chars().any(char::is_whitespace)) {
            return Err(OutputError::config(
                k("subject"),
                format!("{:?} is not a publish subject: dot-separated non-empty tokens, no spaces, no wildcards (* >)", self.subject),
            ));
        }
        if let Some(s) = &self.stream {
            if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')) {
                return Err(OutputError::config(k("stream"), format!("{s:?} is not a stream name: no spaces, '.', '*', '>', '/' or '\\'")));
            }
        }
        if self.credentials_file.is_some() && self.token.is_some() {
            return Err(OutputError::config(k("token"), "set either credentials_file or token, not both"));
        }
        if self.token.as_deref() == Some("") {
            return Err(OutputError::config(k("token"), "is empty"));
        }
        check_ms(key, "timeout_ms", self.timeout_ms, 100, 300_000)?;
        check_ms(key, "retry_initial_ms", self.retry_initial_ms, 1, 3_600_000)?;
        check_ms(key, "retry_max_ms", self.retry_max_ms, self.retry_initial_ms, 86_400_000)?;
        if !(1..=1_048_576).contains(&self.max_spool_mb) {
            return Err(OutputError::config(k("max_spool_mb"), format!("{} is out of range: use 1 to 1048576", self.max_spool_mb)));
        }
        Ok(())
    }
}

/// The server address without credentials, for status and logs.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => url.to_string(),
    }
}

/// The NATS JetStream output. See the module documentation.
#[derive(Debug)]
pub struct Nats {
    inner: Spooled,
}

impl Nats {
    /// Validates `cfg`, opens (and repairs) the spool, creates the runtime
    /// and starts the delivery thread, which connects in the background.
    /// `hostname` goes into message ids and the `{host}` placeholder.
    pub fn start(cfg: &NatsConfig, data_dir: &Path, hostname: &str) -> Result<Self, OutputError> {
        cfg.validate("nats")?;
        for (field, path) in [("credentials_file", &cfg.credentials_file), ("ca_file", &cfg.ca_file)] {
            if let Some(p) = path {
                std::fs::metadata(p).map_err(|e| OutputError::config(format!("nats.{field}"), format!("{}: {e}", p.display())))?;
            }
        }
        let name = cfg.name().to_string();
        let subject = cfg.subject_for(hostname);
        let spool = Spool::open(&cfg.spool_dir(data_dir), &format!("{name} spool"), SpoolOptions::with_max_bytes(cfg.max_spool_mb << 20))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name(format!("edr-{name}-rt"))
            .enable_all()
            .build()
            .map_err(|e| OutputError::Start { output: name.clone(), message: format!("cannot start the NATS runtime: {e}") })?;
        let target = format!("{} {subject}", redact(&cfg.url));
        let transport = NatsTransport {
            rt: Some(rt),
            cfg: cfg.clone(),
            client_name: format!("edr {}", token_safe(hostname)),
            subject,
            msg_id_prefix: hostname.to_string(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            conn: None,
            stream_ready: cfg.stream.is_none(),
            target: target.clone(),
        };
        let params = Params {
            name,
            kind: "nats",
            target,
            batch_max: BATCH,
            batch_bytes: 4 << 20,
            retry_initial: Duration::from_millis(cfg.retry_initial_ms),
            retry_max: Duration::from_millis(cfg.retry_max_ms),
        };
        Ok(Self { inner: Spooled::start(params, spool, transport)? })
    }
}

crate::worker::spooled_output!(Nats);

/// The NATS side, on the delivery thread.
struct NatsTransport {
    /// Taken in `drop`, to shut it down with a time limit.
    rt: Option<tokio::runtime::Runtime>,
    cfg: NatsConfig,
    client_name: String,
    subject: String,
    msg_id_prefix: String,
    timeout: Duration,
    conn: Option<(async_nats::Client, jetstream::Context)>,
    stream_ready: bool,
    target: String,
}

impl Drop for NatsTransport {
    fn drop(&mut self) {
        self.conn = None;
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

impl NatsTransport {
    fn block_on<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        self.rt.as_ref().map(|rt| rt.block_on(f))
    }

    /// Connects once; afterwards the client reconnects by itself.
    fn connect(&mut self) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        let (initial, max) = (Duration::from_millis(self.cfg.retry_initial_ms), Duration::from_millis(self.cfg.retry_max_ms));
        let target = self.target.clone();
        let mut opts = async_nats::ConnectOptions::new()
            .name(&self.client_name)
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempts| {
                let exp = u32::try_from(attempts.saturating_sub(1)).unwrap_or(u32::MAX).min(20);
                initial.saturating_mul(1u32 << exp).min(max)
            })
            .event_callback(move |event| {
                let target = target.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("nats {target}: connected"),
                        async_nats::Event::Disconnected => tracing::warn!("nats {target}: disconnected; reconnecting, alerts wait in the spool"),
                        other => tracing::warn!("nats {target}: {other}"),
                    }
                }
            });
        if let Some(t) = &self.cfg.token {
            opts = opts.token(t.clone());
        }
        if let Some(ca) = &self.cfg.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let Some(creds) = self.cfg.credentials_file.clone() {
            opts =
                self.block_on(opts.credentials_file(&creds)).ok_or("runtime gone")?.map_err(|e| format!("nats.credentials_file {}: {e}", creds.display()))?;
        }
        let url = self.cfg.url.clone();
        let timeout = self.timeout;
        let conn = self
            .block_on(async move {
                let client = tokio::time::timeout(timeout * 2, opts.connect(url)).await.map_err(|_| None)?.map_err(Some)?;
                // The context spawns its acker task: inside the runtime.
                let mut js = jetstream::new(client.clone());
                js.set_timeout(timeout);
                Ok::<_, Option<async_nats::ConnectError>>((client, js))
            })
            .ok_or("runtime gone")?
            .map_err(|e| match e {
                None => format!("cannot connect to {}: timed out", self.target),
                Some(e) => format!("cannot connect to {}: {e}", self.target),
            })?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Creates the configured stream if it is missing (once per connection).
    fn ensure_stream(&mut self) -> Result<(), String> {
        let (Some(name), Some((_, js))) = (self.cfg.stream.clone(), self.conn.as_ref()) else { return Ok(()) };
        if self.stream_ready {
            return Ok(());
        }
        let js = js.clone();
        let config = jetstream::stream::Config { name: name.clone(), subjects: vec![self.subject.clone()], ..Default::default() };
        let timeout = self.timeout;
        let stream = self
            .block_on(async move { tokio::time::timeout(timeout * 2, js.get_or_create_stream(config)).await })
            .ok_or("runtime gone")?
            .map_err(|_| format!("stream {name}: timed out"))?
            .map_err(|e| format!("cannot find or create stream {name}: {e}"))?;
        let subjects = &stream.cached_info().config.subjects;
        if !subjects.contains(&self.subject) {
            tracing::warn!(
                "nats {}: stream {name} exists and lists subjects {subjects:?}, not {:?}; alerts go to whichever stream captures the subject",
                self.target,
                self.subject
            );
        }
        self.stream_ready = true;
        Ok(())
    }
}

impl Transport for NatsTransport {
    fn warm_up(&mut self) -> Result<(), String> {
        self.connect()?;
        self.ensure_stream()
    }

    fn deliver(&mut self, batch: &[Record]) -> Outcome {
        if let Err(e) = self.connect().and_then(|_| self.ensure_stream()) {
            return Outcome::retry(0, e, None);
        }
        let Some((client, js)) = self.conn.clone() else { return Outcome::retry(0, "not connected".into(), None) };
        for (i, rec) in batch.iter().enumerate() {
            if client.connection_state() != async_nats::connection::State::Connected {
                // Publishing now would only fill the client's buffer.
                return Outcome::retry(i, format!("not connected to {} (reconnecting)", self.target), None);
            }
            let publish = jetstream::message::PublishMessage::build()
                .payload(bytes::Bytes::from(rec.json.clone()))
                .message_id(format!("{}-{}", self.msg_id_prefix, rec.id));
            let (js, subject, timeout) = (js.clone(), self.subject.clone(), self.timeout);
            let result = self.block_on(async move {
                tokio::time::timeout(timeout * 2, async move {
                    let ack = js.send_publish(subject, publish).await?;
                    ack.await
                })
                .await
            });
            match result {
                Some(Ok(Ok(ack))) => {
                    if ack.duplicate {
                        tracing::debug!("nats {}: alert {} was already in stream {} (duplicate dropped by JetStream)", self.target, rec.id, ack.stream);
                    }
                }
                Some(Ok(Err(e))) => {
                    let what = format!("publish of alert {} to {}: {e}", rec.id, self.target);
                    return match e.kind() {
                        PublishErrorKind::MaxPayloadExceeded => Outcome::reject(i, what),
                        PublishErrorKind::StreamNotFound => {
                            Outcome::retry(i, format!("{what} (no JetStream stream captures subject {:?}: create one, or set nats.stream)", self.subject), None)
                        }
                        _ if jetstream_code(&e) == Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => Outcome::reject(i, what),
                        _ => Outcome::retry(i, what, None),
                    };
                }
                Some(Err(_)) => {
                    return Outcome::retry(i, format!("publish of alert {} to {}: no acknowledgement within {:?}", rec.id, self.target, timeout * 2), None)
                }
                None => return Outcome::retry(i, "runtime gone".into(), None),
            }
        }
        Outcome::all(batch.len())
    }
}

/// The JetStream error code behind a publish error, if the server sent one.
fn jetstream_code(e: &jetstream::context::PublishError) -> Option<ErrorCode> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<jetstream::Error>()).map(|j| j.error_code())
}
