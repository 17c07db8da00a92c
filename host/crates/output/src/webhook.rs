//! HTTP webhook: alerts are POSTed to a URL, from a durable disk spool, in
//! order, with retries.
//!
//! # Request
//!
//! * `batch_max = 1` (the default): one alert per POST, body = the ECS JSON
//!   document, `Content-Type: application/json`; what any JSON webhook
//!   receiver expects.
//! * `batch_max > 1`: up to that many alerts per POST (and about 1 MiB),
//!   as NDJSON, one document per line with a trailing newline,
//!   `Content-Type: application/x-ndjson`, even when the batch holds one
//!   alert, so that a receiver sees one format per configuration. Batches
//!   only form when alerts queue up (a receiver outage); alerts are sent as
//!   soon as they arrive otherwise.
//!
//! Every POST carries `X-Edr-Alert-Ids: 17,18,19` (the ids in the body, in
//! order) and `Idempotency-Key: <host>-<first id>-<last id>`, plus the
//! configured `headers` and `User-Agent: edr/<version>`.
//!
//! # Responses
//!
//! * 2xx: delivered; the spool's committed position moves past the batch.
//! * Connection errors, timeouts, 5xx, 429, 408, 425 and 3xx (redirects are
//!   not followed: fix the URL), and 401, 403, 404, 405, 407 and 421, which
//!   say the *endpoint* or its credentials are wrong rather than the alert:
//!   retried with exponential backoff and jitter (`retry_initial_ms` doubling
//!   up to `retry_max_ms`), honouring a `Retry-After` in seconds (capped at
//!   `retry_max_ms`). Alerts wait in the spool, in order, until the receiver
//!   or its configuration is fixed.
//! * Any other 4xx (400, 413, 415, 422, ...): the receiver refuses the
//!   content. A batch of several alerts is then sent again one alert per
//!   POST to find the refused one(s); a refused alert is appended to the
//!   spool's `rejected.ndjson` with the status and the start of the response
//!   body, counted in `rejected`, logged, and delivery goes on.
//!
//! # Duplicates
//!
//! One window remains where an alert can reach the receiver twice: the
//! agent (or the machine) stops after the receiver answered 2xx and before
//! the new committed position is on disk (a few milliseconds: one file
//! rename and two syncs). The next start sends that batch again, with the
//! same alert ids. Receivers that must not see duplicates drop alert ids
//! they already have (`X-Edr-Alert-Ids`, or `event.id`-like fields in the
//! documents). The `Idempotency-Key` is the same for a retried batch as long
//! as the batch is the same; after a restart a batch may be cut differently,
//! so per-alert ids are the reliable key.
//!
//! The HTTP client is `ureq` (rustls with the Mozilla roots from
//! `webpki-roots`); it honours the `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`
//! environment variables.

use crate::spool::{Record, Spool, SpoolOptions};
use crate::util::{clip, token_safe};
use crate::worker::{Outcome, Params, Spooled, Transport};
use crate::{check_ms, spool_dir, OutputError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use ureq::http::{HeaderName, HeaderValue, Uri};

/// Most JSON bytes in one POST (a batch stops before it, but holds at least
/// one alert).
const BATCH_BYTES: usize = 1 << 20;
/// Headers the output sets itself.
const RESERVED_HEADERS: &[&str] = &["content-type", "content-length", "transfer-encoding", "host", "connection", "idempotency-key", "x-edr-alert-ids"];

/// `[webhook]`: POST alerts to an HTTP(S) URL.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Names this output in status and logs, and its default spool
    /// directory; needed only to tell several webhooks apart. Default
    /// `webhook`.
    pub name: Option<String>,
    /// The receiver, `http://` or `https://` (required). Redirects are not
    /// followed.
    pub url: String,
    /// Extra request headers, e.g. `{ Authorization = "Bearer ..." }`.
    /// `Content-Type`, `Idempotency-Key` and `X-Edr-Alert-Ids` are set by the
    /// output and cannot be overridden. Values are never logged.
    pub headers: BTreeMap<String, String>,
    /// Limit for one POST, from connecting to reading the response, in
    /// milliseconds. Default 10000.
    pub timeout_ms: u64,
    /// Where undelivered alerts are kept (relative paths are under the
    /// agent's data directory). Default `<data_dir>/spool/<name>`.
    pub spool_dir: Option<PathBuf>,
    /// Most undelivered alerts kept on disk, in MiB. When full, new alerts
    /// are refused for this output and counted as `dropped` (logged once
    /// per episode). Default 256 (on the order of 100 000 alerts).
    pub max_spool_mb: u64,
    /// First retry delay after a failed POST, in milliseconds; doubles per
    /// failure (with jitter) up to `retry_max_ms`. Default 1000.
    pub retry_initial_ms: u64,
    /// Longest retry delay, in milliseconds. Default 60000.
    pub retry_max_ms: u64,
    /// Alerts per POST: 1 sends each alert as one JSON document
    /// (`application/json`); more sends NDJSON (`application/x-ndjson`),
    /// batching what queued up during an outage. 1 to 1000; default 1.
    pub batch_max: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            headers: BTreeMap::new(),
            timeout_ms: 10_000,
            spool_dir: None,
            max_spool_mb: 256,
            retry_initial_ms: 1_000,
            retry_max_ms: 60_000,
            batch_max: 1,
        }
    }
}

impl WebhookConfig {
    /// The output's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("webhook")
    }

    /// The spool directory this config resolves to.
    pub fn spool_dir(&self, data_dir: &Path) -> PathBuf {
        spool_dir(self.spool_dir.as_deref(), data_dir, self.name())
    }

    /// Checks every value; `key` is this table's key (`webhook`).
    pub fn validate(&self, key: &str) -> Result<(), OutputError> {
        parse_url(&self.url).map_err(|m| OutputError::config(format!("{key}.url"), m))?;
        for (name, value) in &self.headers {
            let k = format!("{key}.headers.{name}");
            let parsed = HeaderName::from_bytes(name.as_bytes()).map_err(|_| OutputError::config(&k, "not a valid HTTP header name"))?;
            if RESERVED_HEADERS.contains(&parsed.as_str()) {
                return Err(OutputError::config(&k, "set by the webhook output itself; remove it"));
            }
            HeaderValue::from_str(value)
                .map_err(|_| OutputError::config(&k, "the value has characters an HTTP header cannot carry (control characters or line breaks)"))?;
        }
        check_ms(key, "timeout_ms", self.timeout_ms, 100, 300_000)?;
        check_ms(key, "retry_initial_ms", self.retry_initial_ms, 1, 3_600_000)?;
        check_ms(key, "retry_max_ms", self.retry_max_ms, self.retry_initial_ms, 86_400_000)?;
        if !(1..=1_048_576).contains(&self.max_spool_mb) {
            return Err(OutputError::config(format!("{key}.max_spool_mb"), format!("{} is out of range: use 1 to 1048576", self.max_spool_mb)));
        }
        if !(1..=1000).contains(&self.batch_max) {
            return Err(OutputError::config(format!("{key}.batch_max"), format!("{} is out of range: use 1 to 1000", self.batch_max)));
        }
        Ok(())
    }
}

/// Checks that `url` is an absolute http(s) URL with a host.
fn parse_url(url: &str) -> Result<Uri, String> {
    if url.is_empty() {
        return Err("missing: set the receiver's http:// or https:// URL".into());
    }
    if !url.contains("://") {
        return Err(format!("{url:?} is not an absolute URL; use http://host/path or https://host/path"));
    }
    let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("{url:?}: scheme {other:?} is not supported; use http:// or https://")),
        None => return Err(format!("{url:?} is not an absolute URL; use http://host/path or https://host/path")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(uri)
}

/// `url` without user info and query string (they may hold credentials),
/// for status and logs.
pub(crate) fn redact_url(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(u) => {
            let scheme = u.scheme_str().unwrap_or("http");
            let host = u.host().unwrap_or("");
            let port = u.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://{host}{port}{}", u.path())
        }
        Err(_) => "<invalid url>".into(),
    }
}

/// The webhook output. See the module documentation.
#[derive(Debug)]
pub struct Webhook {
    inner: Spooled,
}

impl Webhook {
    /// Validates `cfg`, opens (and repairs) the spool and starts the delivery
    /// thread. `data_dir` resolves the spool directory; `hostname` goes into
    /// idempotency keys.
    pub fn start(cfg: &WebhookConfig, data_dir: &Path, hostname: &str) -> Result<Self, OutputError> {
        cfg.validate("webhook")?;
        let name = cfg.name().to_string();
        let dir = cfg.spool_dir(data_dir);
        let spool = Spool::open(&dir, &format!("{name} spool"), SpoolOptions::with_max_bytes(cfg.max_spool_mb << 20))?;
        let target = redact_url(&cfg.url);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(cfg.timeout_ms)))
            .http_status_as_error(false)
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(format!("edr/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let transport = Http {
            agent,
            url: cfg.url.clone(),
            headers: cfg.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            host: token_safe(hostname),
            ndjson: cfg.batch_max > 1,
            target: target.clone(),
        };
        let params = Params {
            name,
            kind: "webhook",
            target,
            batch_max: cfg.batch_max,
            batch_bytes: BATCH_BYTES,
            retry_initial: Duration::from_millis(cfg.retry_initial_ms),
            retry_max: Duration::from_millis(cfg.retry_max_ms),
        };
        Ok(Self { inner: Spooled::start(params, spool, transport)? })
    }
}

crate::worker::spooled_output!(Webhook);

/// The HTTP side, on the delivery thread.
struct Http {
    agent: ureq::Agent,
    url: String,
    headers: Vec<(String, String)>,
    host: String,
    ndjson: bool,
    target: String,
}

/// How one POST went.
enum Posted {
    Ok,
    Retry(String, Option<Duration>),
    Refused(String),
}

impl Transport for Http {
    fn deliver(&mut self, batch: &[Record]) -> Outcome {
        match self.post(batch) {
            Posted::Ok => Outcome::all(batch.len()),
            Posted::Retry(e, after) => Outcome::retry(0, e, after),
            Posted::Refused(e) if batch.len() == 1 => Outcome::reject(0, e),
            Posted::Refused(e) => {
                tracing::warn!("{}: batch of {} alerts refused ({e}); sending them one by one to find the refused ones", self.target, batch.len());
                for (i, rec) in batch.iter().enumerate() {
                    match self.post(std::slice::from_ref(rec)) {
                        Posted::Ok => {}
                        Posted::Retry(e, after) => return Outcome::retry(i, e, after),
                        Posted::Refused(e) => return Outcome::reject(i, e),
                    }
                }
                Outcome::all(batch.len())
            }
        }
    }
}

impl Http {
    fn post(&self, batch: &[Record]) -> Posted {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else { return Posted::Ok };
        let (content_type, body) = if self.ndjson {
            let mut body = Vec::with_capacity(batch.iter().map(|r| r.json.len() + 1).sum());
            for r in batch {
                body.extend_from_slice(r.json.as_bytes());
                body.push(b'\n');
            }
            ("application/x-ndjson", body)
        } else {
            ("application/json", first.json.as_bytes().to_vec())
        };
        let ids = batch.iter().map(|r| r.id.to_string()).collect::<Vec<_>>().join(",");
        let mut req = self
            .agent
            .post(&self.url)
            .header("Content-Type", content_type)
            .header("Idempotency-Key", format!("{}-{}-{}", self.host, first.id, last.id))
            .header("X-Edr-Alert-Ids", ids);
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let mut resp = match req.send(&body[..]) {
            Ok(r) => r,
            Err(e) => return Posted::Retry(format!("POST {}: {e}", self.target), None),
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            // Read (a bounded part of) the body so the connection is reused.
            let _ = resp.body_mut().with_config().limit(64 << 10).read_to_vec();
            return Posted::Ok;
        }
        let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = resp.body_mut().with_config().limit(64 << 10).read_to_string().unwrap_or_default();
        let detail = clip(text.trim(), 200);
        let what = format!("POST {}: HTTP {status}{}{detail}", self.target, if detail.is_empty() { "" } else { ": " });
        match status {
            300..=399 => Posted::Retry(
                format!("{what} (redirect to {}; redirects are not followed: set the final URL)", location.as_deref().unwrap_or("?")),
                retry_after,
            ),
            401 | 403 | 407 => Posted::Retry(format!("{what} (check the credentials in webhook.headers)"), retry_after),
            404 | 405 | 421 => Posted::Retry(format!("{what} (check webhook.url)"), retry_after),
            408 | 425 | 429 => Posted::Retry(what, retry_after),
            400..=499 => Posted::Refused(what),
            _ => Posted::Retry(what, retry_after),
        }
    }
}
