//! The running link: one runtime thread with the NATS connection, the
//! heartbeat timer and the alert forwarder.

use crate::commands::{self, BuiltIn, CommandExecutor, HostGate, NonceStore};
use crate::fallback::IsolationWatch;
use crate::heartbeat::{self, LinkFacts};
use crate::identity::{self, Identity};
use crate::policy::CommandPolicy;
use crate::{AlertSource, LinkError, StatusProvider};
use async_nats::jetstream;
use edr_datadir::DataDir;
use edr_fleet_proto::subjects;
use futures_util::StreamExt;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the link runs.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The agent's version (in heartbeats when the status does not say).
    pub agent_version: String,
    /// How often the record is checked for new alerts. Default 1 s.
    pub alert_poll: Duration,
    /// Longest wait for one publish acknowledgement. Default 5 s.
    pub ack_timeout: Duration,
    /// Overrides the heartbeat interval the server gave at enrollment.
    pub heartbeat: Option<Duration>,
    /// The classes of command this host refuses (`[fleet] refuse`).
    pub policy: CommandPolicy,
    /// Isolated and without the fleet this long, the host releases itself
    /// ([`crate::fallback`]); `None`: never. Default 600 s.
    pub isolation_fallback: Option<Duration>,
    /// Forward the record's events to the central record ([`crate::central`]). Default on.
    pub forward_events: bool,
    /// The counters the link keeps (give a clone to show them elsewhere, e.g. in
    /// `edr status`; a fresh set by default).
    pub stats: Arc<LinkStats>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            agent_version: "unknown".into(),
            alert_poll: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(5),
            heartbeat: None,
            policy: CommandPolicy::allow_all(),
            isolation_fallback: Some(Duration::from_secs(crate::DEFAULT_ISOLATION_FALLBACK_SECS)),
            forward_events: true,
            stats: Arc::default(),
        }
    }
}

/// The link's counters (for the agent's status).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Alerts acknowledged by the fleet since start.
    pub forwarded: AtomicU64,
    /// The highest alert id acknowledged (persisted).
    pub cursor: AtomicU64,
    /// Heartbeats sent since start.
    pub heartbeats: AtomicU64,
    /// Connected to NATS now.
    pub connected: AtomicBool,
    /// The last error, if any.
    pub last_error: Mutex<Option<String>>,
    /// Events acknowledged by the central record since start.
    pub events_forwarded: AtomicU64,
    /// The central record's cursor: the highest event id acknowledged.
    pub events_cursor: AtomicU64,
    /// The last time this host released itself from isolation, and why
    /// (seconds since the epoch, reason): sent in every heartbeat after it.
    pub self_release: Mutex<Option<(u64, String)>>,
}

/// What the link has done, as `edr status` shows it ([`LinkStats::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    /// This host's fleet id.
    pub host_id: String,
    /// Connected to NATS now.
    pub connected: bool,
    /// Alerts acknowledged by the fleet since start.
    pub alerts_forwarded: u64,
    /// The highest alert id the fleet acknowledged (persisted).
    pub alert_cursor: u64,
    /// Events the central record acknowledged since start.
    pub events_forwarded: u64,
    /// The highest event id the central record acknowledged (persisted).
    pub events_cursor: u64,
    /// Heartbeats sent since start.
    pub heartbeats: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// The last time this host released itself from isolation (seconds
    /// since the epoch) and why.
    pub self_release: Option<(u64, String)>,
}

impl LinkStats {
    /// The counters now, for host `host_id`.
    pub fn snapshot(&self, host_id: &str) -> LinkStatus {
        fn lock<T: Clone>(m: &Mutex<T>) -> T {
            m.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
        LinkStatus {
            host_id: host_id.to_string(),
            connected: self.connected.load(Ordering::Relaxed),
            alerts_forwarded: self.forwarded.load(Ordering::Relaxed),
            alert_cursor: self.cursor.load(Ordering::Relaxed),
            events_forwarded: self.events_forwarded.load(Ordering::Relaxed),
            events_cursor: self.events_cursor.load(Ordering::Relaxed),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            last_error: lock(&self.last_error),
            self_release: lock(&self.self_release),
        }
    }

    fn error(&self, e: String) {
        tracing::warn!("fleet link: {e}");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }
}

/// The running link; [`FleetLink::stop`] (or drop) ends it.
#[derive(Debug)]
pub struct FleetLink {
    stop: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<LinkStats>,
    identity: Identity,
}

struct Ctx {
    exec: Arc<dyn CommandExecutor>,
    pinned: Vec<ed25519_dalek::VerifyingKey>,
    nonces: Arc<Mutex<NonceStore>>,
    id: Identity,
    dir: DataDir,
    opts: LinkOptions,
    source: Arc<dyn AlertSource>,
    status: Arc<dyn StatusProvider>,
    stats: Arc<LinkStats>,
}

impl FleetLink {
    /// Starts the link for the host enrolled in `data_dir`. Returns at once:
    /// the connection is made (and remade) in the background.
    ///
    /// # Errors
    /// [`LinkError::NotEnrolled`], unreadable state, or no runtime.
    pub fn start(data_dir: &Path, opts: LinkOptions, source: Arc<dyn AlertSource>, status: Arc<dyn StatusProvider>) -> Result<FleetLink, LinkError> {
        let exec = Arc::new(BuiltIn(status.clone()));
        Self::start_with(data_dir, opts, source, status, exec)
    }

    /// [`FleetLink::start`] with the agent's own command executor.
    ///
    /// # Errors
    /// As [`FleetLink::start`].
    pub fn start_with(
        data_dir: &Path,
        opts: LinkOptions,
        source: Arc<dyn AlertSource>,
        status: Arc<dyn StatusProvider>,
        exec: Arc<dyn CommandExecutor>,
    ) -> Result<FleetLink, LinkError> {
        let dir = identity::state_dir(data_dir)?;
        let id = Identity::load(&dir)?.ok_or(LinkError::NotEnrolled)?;
        let kp = Arc::new(Identity::key_pair(&dir)?);
        let stats = opts.stats.clone();
        stats.cursor.store(identity::load_cursor(&dir)?, Ordering::Relaxed);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("edr-fleet-rt")
            .enable_all()
            .build()
            .map_err(|e| LinkError::Start(e.to_string()))?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let pinned = id
            .command_keys
            .iter()
            .filter_map(|k| edr_fleet_proto::command::parse_key(k).map_err(|e| tracing::error!("fleet: pinned command key {k:?} ignored: {e}")).ok())
            .collect();
        let nonces = Arc::new(Mutex::new(NonceStore::load(identity::state_dir(data_dir)?)));
        let ctx = Ctx { exec, pinned, nonces, id: id.clone(), dir, opts, source, status, stats: stats.clone() };
        let thread = std::thread::Builder::new()
            .name("edr-fleet".into())
            .spawn(move || {
                rt.block_on(run(ctx, kp, stop_rx));
                rt.shutdown_timeout(Duration::from_millis(500));
            })
            .map_err(|e| LinkError::Start(e.to_string()))?;
        tracing::info!(host_id = %id.host_id, nats = ?id.nats_urls, "fleet link started");
        Ok(FleetLink { stop, thread: Some(thread), stats, identity: id })
    }

    /// The counters.
    pub fn stats(&self) -> &LinkStats {
        &self.stats
    }

    /// The identity the link runs as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Stops the link and waits for its thread (an alert being published
    /// finishes or times out; the cursor is never ahead of the fleet).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FleetLink {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The pinned NATS CA, written from the identity for async-nats to read.
const NATS_CA_FILE: &str = "nats-ca.pem";

async fn connect(ctx: &Ctx, kp: Arc<nkeys::KeyPair>) -> Result<async_nats::Client, String> {
    let addrs: Vec<async_nats::ServerAddr> =
        ctx.id.nats_urls.iter().map(|u| u.parse().map_err(|e| format!("NATS URL {u:?}: {e}"))).collect::<Result<_, String>>()?;
    let stats = ctx.stats.clone();
    let mut opts = async_nats::ConnectOptions::with_jwt(ctx.id.user_jwt.clone(), move |nonce| {
        let kp = kp.clone();
        async move { kp.sign(&nonce).map_err(async_nats::AuthError::new) }
    })
    .name(format!("edr-agent {}", ctx.id.host_id))
    .custom_inbox_prefix(subjects::inbox_prefix(&ctx.id.host_id))
    .retry_on_initial_connect()
    .max_reconnects(None)
    // A dead path is noticed after two unanswered pings, so the isolation fallback sees it.
    .ping_interval(ping_interval(ctx))
    .reconnect_delay_callback(|attempts| Duration::from_millis(250u64.saturating_mul(1 << attempts.min(7))).min(Duration::from_secs(30)))
    .event_callback(move |event| {
        let stats = stats.clone();
        async move {
            match event {
                async_nats::Event::Connected => {
                    stats.connected.store(true, Ordering::Relaxed);
                    tracing::info!("fleet link: connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    stats.connected.store(false, Ordering::Relaxed);
                    tracing::warn!("fleet link: disconnected from NATS; reconnecting (alerts wait in the record)");
                }
                other => stats.error(format!("NATS: {other}")),
            }
        }
    });
    if let Some(pem) = &ctx.id.nats_ca_pem {
        // async-nats reads root certificates from a file.
        ctx.dir.write_atomically(NATS_CA_FILE, pem.as_bytes()).map_err(|e| format!("cannot write the NATS CA: {e}"))?;
        opts = opts.add_root_certificates(ctx.dir.join(NATS_CA_FILE)).require_tls(true);
    }
    opts.connect(addrs.as_slice()).await.map_err(|e| format!("cannot connect to {:?}: {e}", ctx.id.nats_urls))
}

/// The heartbeat interval (the server's, or the override).
fn heartbeat_interval(ctx: &Ctx) -> Duration {
    ctx.opts.heartbeat.unwrap_or(Duration::from_secs(ctx.id.heartbeat_secs.max(1)))
}

/// Pings as often as heartbeats, between 1 s and 30 s.
fn ping_interval(ctx: &Ctx) -> Duration {
    heartbeat_interval(ctx).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

async fn run(ctx: Ctx, kp: Arc<nkeys::KeyPair>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let client = match connect(&ctx, kp).await {
        Ok(c) => c,
        Err(e) => {
            ctx.stats.error(e);
            return watch_without_link(&ctx, &mut stop).await;
        }
    };
    let js = jetstream::new(client.clone());
    let mut cmds = match client.subscribe(subjects::command(&ctx.id.host_id)).await {
        Ok(s) => s,
        Err(e) => return ctx.stats.error(format!("cannot subscribe to commands: {e}")),
    };
    let ctx = Arc::new(ctx);
    let interval = heartbeat_interval(&ctx);
    let mut beat = tokio::time::interval(interval);
    let mut watch = IsolationWatch::new(ctx.opts.isolation_fallback, std::time::Instant::now());
    let mut poll = tokio::time::interval(ctx.opts.alert_poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = beat.tick() => {
                let isolated = send_heartbeat(&ctx, &client, interval).await;
                let connected = client.connection_state() == async_nats::connection::State::Connected;
                guard_isolation(&ctx, &mut watch, connected, isolated).await;
            }
            // Each command on its own task: a pack install (fetch, stage, canary) must not hold up heartbeats and alerts.
            Some(msg) = cmds.next() => drop(tokio::spawn(answer_command(ctx.clone(), client.clone(), msg))),
            _ = poll.tick() => {
                if client.connection_state() == async_nats::connection::State::Connected {
                    forward_alerts(&ctx, &js, &mut stop).await;
                    if ctx.opts.forward_events {
                        forward_events(&ctx, &js, &mut stop).await;
                    }
                }
            }
        }
    }
    let _ = client.flush().await;
}

/// No connection can be made at all (a bad URL, an unwritable CA file):
/// the link only watches that an isolated host is not stranded.
async fn watch_without_link(ctx: &Ctx, stop: &mut tokio::sync::watch::Receiver<bool>) {
    let mut watch = IsolationWatch::new(ctx.opts.isolation_fallback, std::time::Instant::now());
    let mut beat = tokio::time::interval(heartbeat_interval(ctx));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = beat.tick() => {
                let status = ctx.status.clone();
                let isolated = tokio::task::spawn_blocking(move || status.status()).await.ok().and_then(Result::ok).map(|s| heartbeat::isolated(&s));
                guard_isolation(ctx, &mut watch, false, isolated).await;
            }
        }
    }
}

/// Feeds the watch; when its fallback is due, has the agent release the host.
/// `isolated` is `None` when the agent's status did not say.
async fn guard_isolation(ctx: &Ctx, watch: &mut IsolationWatch, connected: bool, isolated: Option<bool>) {
    let Some(isolated) = isolated else { return };
    let Some(reason) = watch.observe(std::time::Instant::now(), connected, isolated) else { return };
    tracing::error!("fleet link: {reason}");
    let exec = ctx.exec.clone();
    let why = reason.clone();
    match tokio::task::spawn_blocking(move || exec.release_stranded(&why)).await.unwrap_or_else(|e| Err(e.to_string())) {
        Ok(_) => *ctx.stats.self_release.lock().unwrap_or_else(|p| p.into_inner()) = Some((edr_fleet_proto::now_secs(), reason)),
        Err(e) => ctx.stats.error(format!("isolation fallback: the release failed: {e}; trying again in a minute")),
    }
}

async fn answer_command(ctx: Arc<Ctx>, client: async_nats::Client, msg: async_nats::Message) {
    let c = ctx.clone();
    let payload = msg.payload.to_vec();
    let fetch = crate::packs::NatsFetcher { client: client.clone(), host_id: ctx.id.host_id.clone(), rt: tokio::runtime::Handle::current() };
    let result = tokio::task::spawn_blocking(move || {
        let mut nonces = c.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let gate = HostGate { host_id: &c.id.host_id, pinned: &c.pinned, policy: &c.opts.policy };
        commands::handle(&payload, &gate, &mut nonces, c.exec.as_ref(), &fetch, edr_fleet_proto::now_secs())
    })
    .await;
    let (Ok(result), Some(reply)) = (result, msg.reply) else { return };
    if let Err(e) = client.publish(reply, serde_json::to_vec(&result).unwrap_or_default().into()).await {
        ctx.stats.error(format!("cannot answer command {}: {e}", result.command_id));
    }
}

/// Sends one heartbeat; returns whether the host is isolated (`None` when the agent's status did not say).
async fn send_heartbeat(ctx: &Ctx, client: &async_nats::Client, interval: Duration) -> Option<bool> {
    let status = ctx.status.clone();
    let snapshot = tokio::task::spawn_blocking(move || status.status()).await.unwrap_or_else(|e| Err(e.to_string()));
    let facts = LinkFacts {
        host_id: ctx.id.host_id.clone(),
        interval_secs: interval.as_secs().max(1),
        agent_version: ctx.opts.agent_version.clone(),
        alerts_forwarded: ctx.stats.forwarded.load(Ordering::Relaxed),
        alert_cursor: ctx.stats.cursor.load(Ordering::Relaxed),
        events_forwarded: ctx.stats.events_forwarded.load(Ordering::Relaxed),
        events_cursor: ctx.stats.events_cursor.load(Ordering::Relaxed),
        self_release: ctx.stats.self_release.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    let hb = heartbeat::build(&facts, snapshot, edr_fleet_proto::now_secs());
    match client.publish(subjects::heartbeat(&ctx.id.host_id), serde_json::to_vec(&hb).unwrap_or_default().into()).await {
        Ok(()) => {
            ctx.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => ctx.stats.error(format!("heartbeat not sent: {e}")),
    }
    hb.status_error.is_none().then_some(hb.isolated)
}

/// Publishes every alert after the cursor, one at a time, advancing the
/// cursor (durably) after each acknowledgement. Stops at the first failure:
/// the next poll starts again from the cursor.
async fn forward_alerts(ctx: &Ctx, js: &jetstream::Context, stop: &mut tokio::sync::watch::Receiver<bool>) {
    const BATCH: usize = 256;
    loop {
        let after = ctx.stats.cursor.load(Ordering::Relaxed);
        let (source, host) = (ctx.source.clone(), ctx.id.host_id.clone());
        let batch = match tokio::task::spawn_blocking(move || source.alerts_after(&host, after, BATCH)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return ctx.stats.error(e),
            Err(e) => return ctx.stats.error(e.to_string()),
        };
        let full = batch.len() == BATCH;
        for alert in batch {
            if *stop.borrow() {
                return;
            }
            let id = alert.alert_id;
            let payload = serde_json::to_vec(&alert).unwrap_or_default();
            match publish_acked(js, subjects::alert(&ctx.id.host_id), subjects::alert_msg_id(&ctx.id.host_id, id), payload, ctx.opts.ack_timeout).await {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(alert = id, "alert already in the fleet stream (duplicate dropped)");
                    }
                    if let Err(e) = identity::save_cursor(&ctx.dir, id) {
                        return ctx.stats.error(format!("cannot store the alert cursor (alert {id} may be sent again, and dropped as a duplicate): {e}"));
                    }
                    ctx.stats.cursor.store(id, Ordering::Relaxed);
                    ctx.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return ctx.stats.error(format!("alert {id}: {e}; retrying from the cursor")),
            }
        }
        if !full {
            return;
        }
    }
}

/// Publishes `payload` to the stream on `subject` with `msg_id` (a resend is
/// a duplicate there) and waits up to `timeout` for JetStream's acknowledgement.
async fn publish_acked(
    js: &jetstream::Context,
    subject: String,
    msg_id: String,
    payload: Vec<u8>,
    timeout: Duration,
) -> Result<jetstream::publish::PublishAck, String> {
    let publish = jetstream::message::PublishMessage::build().payload(payload.into()).message_id(msg_id);
    match tokio::time::timeout(timeout, async { js.send_publish(subject, publish).await?.await }).await {
        Ok(Ok(ack)) => Ok(ack),
        Ok(Err(e)) => Err(format!("not acknowledged: {e}")),
        Err(_) => Err(format!("no acknowledgement within {timeout:?}")),
    }
}

/// Publishes the record's events after the central cursor, batch by batch
/// (at most 16 a poll), advancing the cursor durably after each
/// acknowledgement. Stops at the first failure: the next poll resends the
/// same batch (same sequence, same hash), which the stream drops if it had it.
async fn forward_events(ctx: &Ctx, js: &jetstream::Context, stop: &mut tokio::sync::watch::Receiver<bool>) {
    use edr_fleet_proto::central;
    let mut cursor = match crate::central::load_cursor(&ctx.dir) {
        Ok(c) => c,
        Err(e) => return ctx.stats.error(format!("central record: {e}")),
    };
    for _ in 0..16 {
        if *stop.borrow() {
            return;
        }
        let (source, after) = (ctx.source.clone(), cursor.last_id);
        let events = match tokio::task::spawn_blocking(move || source.events_after(after, central::BATCH_EVENTS)).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => return ctx.stats.error(e),
            Err(e) => return ctx.stats.error(e.to_string()),
        };
        let batch = match central::next_batch(&ctx.id.host_id, (cursor.seq, &cursor.hash), &events) {
            Ok(Some(b)) => b,
            Ok(None) => return,
            Err(e) => return ctx.stats.error(format!("central record: {e}")),
        };
        let payload = serde_json::to_vec(&batch).unwrap_or_default();
        match publish_acked(js, subjects::events(&ctx.id.host_id), batch.msg_id(), payload, ctx.opts.ack_timeout).await {
            Ok(_) => {
                cursor = crate::central::CentralCursor { seq: batch.seq, hash: batch.hash.clone(), last_id: batch.last_id };
                if let Err(e) = crate::central::save_cursor(&ctx.dir, &cursor) {
                    return ctx
                        .stats
                        .error(format!("cannot store the central cursor (batch {} may be sent again, and dropped as a duplicate): {e}", batch.seq));
                }
                ctx.stats.events_forwarded.fetch_add(u64::from(batch.count), Ordering::Relaxed);
                ctx.stats.events_cursor.store(batch.last_id, Ordering::Relaxed);
            }
            Err(e) => return ctx.stats.error(format!("event batch {}: {e}; retrying from the cursor", batch.seq)),
        }
        if events.len() < central::BATCH_EVENTS {
            return;
        }
    }
}
