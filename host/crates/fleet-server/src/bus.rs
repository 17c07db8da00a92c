//! The server's side of NATS: streams, the server-event log, and the
//! durable consumers that feed the index.

use crate::error::FleetError;
use crate::fleet::StreamSettings;
use crate::index::{Index, TokenState};
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use edr_fleet_proto::msg::{self, AlertMessage, Change, Heartbeat, ServerEvent};
use edr_fleet_proto::subjects;
use std::sync::Arc;
use std::time::Duration;

/// The server's connection and JetStream context.
#[derive(Debug, Clone)]
pub struct Bus {
    /// The NATS client.
    pub client: async_nats::Client,
    /// JetStream.
    pub js: jetstream::Context,
}

const DAY: Duration = Duration::from_secs(86_400);

/// The fleet's streams, with the retention and replicas of `[streams]`.
fn stream_configs(settings: &StreamSettings) -> [stream::Config; 4] {
    let days = |n: u64| DAY * n as u32;
    let [mut alerts, heartbeats, server, mut events] = base_stream_configs();
    alerts.max_age = days(settings.alerts_max_age_days);
    events.max_age = days(settings.events_max_age_days);
    events.max_bytes = if settings.events_max_gib == 0 { -1 } else { (settings.events_max_gib << 30) as i64 };
    let mut all = [alerts, heartbeats, server, events];
    for c in &mut all {
        c.num_replicas = settings.replicas;
        if c.max_bytes == 0 {
            c.max_bytes = -1; // no limit, as the server reports it (0 in a config means the same)
        }
    }
    all
}

fn base_stream_configs() -> [stream::Config; 4] {
    [
        stream::Config {
            name: subjects::STREAM_ALERTS.into(),
            subjects: vec![subjects::ALERTS_FILTER.into()],
            duplicate_window: Duration::from_secs(subjects::ALERT_DUPLICATE_WINDOW_SECS),
            ..Default::default()
        },
        stream::Config {
            name: subjects::STREAM_HEARTBEATS.into(),
            subjects: vec![subjects::HEARTBEATS_FILTER.into()],
            max_messages_per_subject: 1,
            ..Default::default()
        },
        stream::Config { name: subjects::STREAM_SERVER.into(), subjects: vec![subjects::SERVER_FILTER.into()], ..Default::default() },
        // The central record: what a host sent can be neither deleted nor purged through the API.
        stream::Config {
            name: subjects::STREAM_EVENTS.into(),
            subjects: vec![subjects::EVENTS_FILTER.into()],
            deny_delete: true,
            deny_purge: true,
            duplicate_window: Duration::from_secs(subjects::ALERT_DUPLICATE_WINDOW_SECS),
            ..Default::default()
        },
    ]
}

/// Makes stream `cfg.name`, or brings an existing one's retention and
/// replicas to `cfg` (logged; the stream keeps its messages).
async fn ensure_stream(js: &jetstream::Context, cfg: stream::Config) -> Result<(), FleetError> {
    let name = cfg.name.clone();
    let mut stream = js.get_or_create_stream(cfg.clone()).await.map_err(|e| FleetError::nats(format!("stream {name}"), e))?;
    let now = &stream.info().await.map_err(|e| FleetError::nats(format!("stream {name}"), e))?.config;
    if (now.max_age, now.max_bytes, now.num_replicas) == (cfg.max_age, cfg.max_bytes, cfg.num_replicas) {
        return Ok(());
    }
    let update = stream::Config { max_age: cfg.max_age, max_bytes: cfg.max_bytes, num_replicas: cfg.num_replicas, ..now.clone() };
    let applied =
        js.update_stream(&update).await.map_err(|e| FleetError::nats(format!("stream {name}: applying [streams] (max age, size, replicas)"), e))?.config;
    if (applied.max_age, applied.max_bytes) != (cfg.max_age, cfg.max_bytes) {
        return Err(FleetError::Nats(format!(
            "stream {name}: nats-server kept max age {} s and max bytes {} instead of [streams]' {} s and {}",
            applied.max_age.as_secs(),
            applied.max_bytes,
            cfg.max_age.as_secs(),
            cfg.max_bytes
        )));
    }
    tracing::info!(stream = %name, max_age_secs = cfg.max_age.as_secs(), max_bytes = cfg.max_bytes, "stream retention from [streams]");
    if applied.num_replicas != cfg.num_replicas {
        // The server did not take the replica count (a cluster with fewer JetStream nodes).
        tracing::warn!(stream = %name, asked = cfg.num_replicas, kept = applied.num_replicas, "[streams] replicas not honoured: more than one replica needs a JetStream cluster with that many nodes");
    }
    Ok(())
}

/// The subject a server change goes to: a token's creation and its use share
/// one subject, so "use once" is an expected-last-sequence publish.
fn change_subject(change: &Change) -> String {
    match change {
        Change::TokenCreated { secret_sha256, .. } | Change::Enrolled { secret_sha256, .. } => subjects::server(&format!("token.{secret_sha256}")),
        Change::Triage { .. } => subjects::server("triage"),
        Change::Command { .. } => subjects::server("command"),
        Change::Login { .. } => subjects::server("login"),
        Change::PackPublished { .. } | Change::PackHost { .. } | Change::PackHalted { .. } => subjects::server("pack"),
        Change::SavedQuery { .. } => subjects::server("saved_query"),
    }
}

impl Bus {
    /// Connects with `creds` to `url` and makes sure the streams exist.
    ///
    /// # Errors
    /// When NATS cannot be reached or refuses the streams.
    pub async fn connect(url: &str, creds: &str, tls_ca: Option<&std::path::Path>, streams: &StreamSettings) -> Result<Bus, FleetError> {
        let mut opts = async_nats::ConnectOptions::with_credentials(creds)
            .map_err(|e| FleetError::nats("server.creds", e))?
            .name("edr-server")
            .custom_inbox_prefix("_INBOX_edr_server")
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5));
        if let Some(ca) = tls_ca {
            opts = opts.add_root_certificates(ca.to_path_buf()).require_tls(true);
        }
        let client = opts.connect(url).await.map_err(|e| FleetError::nats(format!("cannot connect to {url}"), e))?;
        let js = jetstream::new(client.clone());
        for cfg in stream_configs(streams) {
            ensure_stream(&js, cfg).await?;
        }
        Ok(Bus { client, js })
    }

    /// The JetStream object store bucket `name`, made (with `description`) when it does not exist yet.
    ///
    /// # Errors
    /// Why it can be neither found nor made.
    pub(crate) async fn object_bucket(&self, name: &str, description: &str) -> Result<jetstream::object_store::ObjectStore, String> {
        if let Ok(store) = self.js.get_object_store(name).await {
            return Ok(store);
        }
        let cfg = jetstream::object_store::Config { bucket: name.into(), description: Some(description.into()), ..Default::default() };
        self.js.create_object_store(cfg).await.map_err(|e| format!("cannot create the object store bucket {name}: {e}"))
    }

    /// The JetStream key-value bucket `name` (one revision per key), made (with `description`) when it does not exist yet.
    ///
    /// The bucket's stream is made here with the key-value conventions
    /// (`KV_<name>` on `$KV.<name>.>`, the client's own settings for a
    /// bucket) rather than by `create_key_value`, which first asks for the
    /// account's info in a shape older nats-servers (2.9) do not answer.
    ///
    /// # Errors
    /// Why it can be neither found nor made.
    pub(crate) async fn kv_bucket(&self, name: &str, description: &str) -> Result<jetstream::kv::Store, String> {
        if let Ok(store) = self.js.get_key_value(name).await {
            return Ok(store);
        }
        let cfg = stream::Config {
            name: format!("KV_{name}"),
            description: Some(description.into()),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        };
        self.js.get_or_create_stream(cfg).await.map_err(|e| format!("cannot create the key-value bucket {name}: {e}"))?;
        self.js.get_key_value(name).await.map_err(|e| format!("cannot open the key-value bucket {name}: {e}"))
    }

    /// Publishes a server event (acknowledged by the stream) and applies it to the index.
    ///
    /// # Errors
    /// When the stream does not acknowledge it.
    pub async fn record(&self, index: &Index, actor: &str, change: Change) -> Result<ServerEvent, FleetError> {
        self.record_expecting(index, actor, change, None).await
    }

    async fn record_expecting(&self, index: &Index, actor: &str, change: Change, expect: Option<u64>) -> Result<ServerEvent, FleetError> {
        let ev = ServerEvent {
            v: edr_fleet_proto::PROTO_VERSION,
            id: edr_fleet_proto::random_hex(16).map_err(|e| FleetError::nats("event id", e))?,
            time: edr_fleet_proto::now_secs(),
            actor: actor.to_string(),
            change,
        };
        let mut publish = jetstream::message::PublishMessage::build().payload(serde_json::to_vec(&ev).unwrap_or_default().into()).message_id(&ev.id);
        if let Some(seq) = expect {
            publish = publish.expected_last_subject_sequence(seq);
        }
        let ack = self.js.send_publish(change_subject(&ev.change), publish).await.map_err(|e| FleetError::nats("publishing a server event", e))?;
        ack.await.map_err(|e| match e.kind() {
            PublishErrorKind::WrongLastSequence => FleetError::Nats("conflict: someone else changed it first".into()),
            _ => FleetError::nats("server event not acknowledged", e),
        })?;
        index.apply(&ev)?;
        Ok(ev)
    }

    /// Where enrollment token `secret_sha256` stands, read from the stream
    /// (not the index: another server process may have used it a moment ago),
    /// with the stream sequence to expect when using it.
    ///
    /// # Errors
    /// When the stream cannot be read.
    pub async fn token_state(&self, secret_sha256: &str, now: u64) -> Result<(TokenState, u64), FleetError> {
        let stream = self.js.get_stream(subjects::STREAM_SERVER).await.map_err(|e| FleetError::nats("stream EDR_SERVER", e))?;
        let subject = change_subject(&Change::TokenCreated { secret_sha256: secret_sha256.into(), expires_at: 0 });
        let last = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => return Ok((TokenState::Unknown, 0)),
            Err(e) => return Err(FleetError::nats("reading the token", e)),
        };
        let ev: ServerEvent = msg::decode(&last.payload).map_err(|e| FleetError::nats("token record", e))?;
        let state = match ev.change {
            Change::TokenCreated { expires_at, .. } if now >= expires_at => TokenState::Expired(expires_at),
            Change::TokenCreated { expires_at, .. } => TokenState::Valid(expires_at),
            Change::Enrolled { host_id, .. } => TokenState::Used(host_id),
            _ => TokenState::Unknown,
        };
        Ok((state, last.sequence))
    }

    /// Records an enrollment that uses up the token last seen at `token_seq`;
    /// fails with a conflict when another enrollment used it in between.
    ///
    /// # Errors
    /// On a conflict or when the stream does not acknowledge it.
    pub async fn record_enrollment(&self, index: &Index, change: Change, token_seq: u64) -> Result<ServerEvent, FleetError> {
        self.record_expecting(index, "enrollment", change, Some(token_seq)).await
    }

    /// Deletes the durable consumers so that they are made again from the
    /// streams' start (rebuilding a new index).
    pub async fn reset_consumers(&self, prefix: &str) {
        for (stream_name, kind) in CONSUMERS {
            if let Ok(s) = self.js.get_stream(stream_name).await {
                if s.delete_consumer(&format!("{prefix}-{kind}")).await.is_ok() {
                    tracing::info!(stream = stream_name, "consumer reset: the index is rebuilt from the stream");
                }
            }
        }
    }

    /// Runs the three durable consumers until the connection ends.
    ///
    /// # Errors
    /// When a consumer cannot be made.
    pub async fn consume(&self, index: Arc<Index>, prefix: &str) -> Result<Vec<tokio::task::JoinHandle<()>>, FleetError> {
        let mut tasks = Vec::new();
        for (stream_name, kind) in CONSUMERS {
            let stream = self.js.get_stream(stream_name).await.map_err(|e| FleetError::nats(format!("stream {stream_name}"), e))?;
            let consumer = crate::pull::durable(&stream, &format!("{prefix}-{kind}"), false).await?;
            let index = index.clone();
            tasks.push(tokio::spawn(crate::pull::run(consumer, kind, move |m| {
                let seen = m.info().map(|i| i.published.unix_timestamp().max(0) as u64).unwrap_or_else(|_| edr_fleet_proto::now_secs());
                let handled = match apply(kind, &m.subject, &m.payload, seen, &index) {
                    Ok(()) => crate::pull::Handled::Done,
                    Err(Apply::Refused(why)) => crate::pull::Handled::Dropped(why),
                    Err(Apply::Retry(e)) => crate::pull::Handled::Retry(e.to_string()),
                };
                std::future::ready(handled)
            })));
        }
        Ok(tasks)
    }
}

const CONSUMERS: [(&str, &str); 3] = [(subjects::STREAM_SERVER, "index"), (subjects::STREAM_HEARTBEATS, "heartbeats"), (subjects::STREAM_ALERTS, "alerts")];

enum Apply {
    Refused(String),
    Retry(FleetError),
}

use subjects::host_of as subject_host;

fn apply(kind: &str, subject: &str, payload: &[u8], seen: u64, index: &Index) -> Result<(), Apply> {
    match kind {
        "index" => {
            let ev: ServerEvent = msg::decode(payload).map_err(|e| Apply::Refused(e.to_string()))?;
            index.apply(&ev).map(|_| ()).map_err(Apply::Retry)
        }
        "heartbeats" => {
            let hb: Heartbeat = msg::decode(payload).map_err(|e| Apply::Refused(e.to_string()))?;
            // NATS confines each host to its own subjects; the body must agree with the subject.
            if subject_host(subject) != Some(hb.host_id.as_str()) {
                return Err(Apply::Refused(format!("heartbeat names host {:?} but came on {subject}", hb.host_id)));
            }
            index.heartbeat(&hb, seen).map_err(Apply::Retry)
        }
        _ => {
            let a: AlertMessage = msg::decode(payload).map_err(|e| Apply::Refused(e.to_string()))?;
            if subject_host(subject) != Some(a.host_id.as_str()) {
                return Err(Apply::Refused(format!("alert names host {:?} but came on {subject}", a.host_id)));
            }
            index.alert(&a, seen).map(|_| ()).map_err(Apply::Retry)
        }
    }
}
