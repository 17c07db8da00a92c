//! `edr-fleet-server`: the management server of an `edr` fleet.
//!
//! * [`fleet`]: `edr server init` creates the fleet: an operator (identity
//!   and signing key), the fleet's account (identity and signing key), a
//!   system account, the nats-server configuration that preloads them
//!   (`resolver: MEMORY`), the server's own NATS user and the first admin
//!   API token.
//! * Enrollment ([`api`], `POST /api/v1/enroll`): a host sends a one-time
//!   token's secret and the public half of an nkey it generated; the server
//!   signs a user JWT for it with the account signing key, confined to the
//!   host's own subjects ([`jwt::host_permissions`]). nats-server verifies
//!   that JWT against the preloaded account: enrolling a host changes
//!   nothing on the NATS side and needs no reload, so an external NATS
//!   cluster running the generated configuration works the same.
//! * [`bus`]: the streams and three durable consumers (server events,
//!   heartbeats, alerts) feeding the [`index`]; server processes sharing an
//!   index share the consumers.
//! * [`api`]: the operators' JSON API with roles; [`client`]: what `edr fleet ...` uses.

#![deny(missing_docs)]

pub mod api;
pub mod api_auth;
pub mod api_session;
pub mod bus;
pub mod central;
pub mod client;
pub mod error;
pub mod evidence;
pub mod fleet;
pub mod hunts;
pub mod index;
pub mod jwt;
pub mod natsd;
pub mod notify;
pub mod pack_client;
mod packs;
mod pull;
pub mod queue;
pub mod saved_queries;

pub use error::FleetError;
pub use fleet::{Fleet, InitOptions};

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// A running management server; dropping it stops its tasks (and the local NATS child).
#[derive(Debug)]
pub struct Running {
    /// Where the API listens.
    pub http_addr: SocketAddr,
    /// The shared state (index, bus, fleet).
    pub state: Arc<api::AppState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The local NATS child, when started. Dropped last.
    pub nats: Option<natsd::LocalNats>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.state.notifier.shutdown(std::time::Duration::from_secs(2));
    }
}

/// Starts the server for `fleet`: the local NATS child when configured, the
/// streams, the consumers and the API. A new (or `rebuild`) index is filled
/// from the streams' start.
///
/// # Errors
/// When NATS cannot be started or reached, or the API cannot listen.
pub async fn start(fleet: Fleet, rebuild: bool) -> Result<Running, FleetError> {
    start_with(fleet, rebuild, |_, api| api).await
}

/// [`start`], with `extend` given the shared state and the API's router and
/// returning the router to serve (the web console merges its pages and
/// wraps the API in its session and CSRF checks).
///
/// # Errors
/// As [`start`].
pub async fn start_with(mut fleet: Fleet, rebuild: bool, extend: impl FnOnce(Arc<api::AppState>, axum::Router) -> axum::Router) -> Result<Running, FleetError> {
    let nats = if fleet.config.nats.start_local {
        let log = fleet.dir.join("nats").join("nats-server.log");
        let (program, conf, listen) = (fleet.config.nats.program.clone(), fleet.nats_config_path(), fleet.config.nats.listen.clone());
        Some(
            tokio::task::spawn_blocking(move || natsd::LocalNats::start(&program, &conf, &listen, &log))
                .await
                .map_err(|e| FleetError::Nats(e.to_string()))??,
        )
    } else {
        None
    };
    let tls_ca = fleet.config.nats.tls.as_ref().map(|t| t.ca_file.clone());
    fleet.config.streams.check().map_err(|problem| FleetError::File { path: fleet.dir.join("fleet.toml"), problem })?;
    let bus = bus::Bus::connect(&fleet.config.nats.url, &fleet.server_creds()?, tls_ca.as_deref(), &fleet.config.streams).await?;
    let index_path = fleet.index_path();
    let fresh = rebuild || !index_path.exists();
    if rebuild {
        let _ = std::fs::remove_file(&index_path);
    }
    let index = Arc::new(index::Index::open(&index_path)?);
    let prefix = fleet.config.consumer_prefix.clone();
    if fresh {
        bus.reset_consumers(&prefix).await;
    }
    let mut tasks = bus.consume(index.clone(), &prefix).await?;
    let central = Arc::new(central::Central::open(&fleet.dir.join("central"), fresh, fleet.config.streams.events_max_age())?);
    tasks.push(central::start(bus.js.clone(), central.clone(), &prefix, fresh).await?);
    let notifier = Arc::new(notify::Notifier::start(&fleet.config.notify, fleet.dir.path(), &fleet.config.name)?);
    if !notifier.is_empty() {
        tasks.push(notify::run(bus.js.clone(), notifier.clone(), index.clone(), &prefix).await?);
    }
    let listener = tokio::net::TcpListener::bind(&fleet.config.http.listen)
        .await
        .map_err(|e| FleetError::Io { what: format!("cannot listen on {} (http.listen in fleet.toml)", fleet.config.http.listen), source: e })?;
    let http_addr = listener.local_addr().map_err(|e| FleetError::Io { what: "listen address".into(), source: e })?;
    if fleet.config.http.listen.ends_with(":0") {
        fleet.config.http.public_url = format!("http://{http_addr}");
    }
    let state = Arc::new(api::AppState { fleet, index, bus, notifier, central, sessions: std::sync::OnceLock::new() });
    tasks.push(queue::spawn(state.clone()));
    tasks.push(packs::serve_chunks(state.clone()));
    let app = extend(state.clone(), api::router(state.clone()));
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await {
            tracing::error!("the API stopped: {e}");
        }
    }));
    tracing::info!(%http_addr, "management server running");
    Ok(Running { http_addr, state, tasks, nats })
}

/// `edr server run`: starts the server in `dir` and serves until SIGINT or SIGTERM.
///
/// # Errors
/// As [`start`].
pub fn run_blocking(dir: &Path, rebuild: bool) -> Result<(), FleetError> {
    run_blocking_with(dir, rebuild, |_, api| api)
}

/// [`run_blocking`] with [`start_with`]'s `extend`.
///
/// # Errors
/// As [`start`].
pub fn run_blocking_with(dir: &Path, rebuild: bool, extend: impl FnOnce(Arc<api::AppState>, axum::Router) -> axum::Router) -> Result<(), FleetError> {
    let fleet = Fleet::open(dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| FleetError::Io { what: "cannot start the runtime".into(), source: e })?;
    rt.block_on(async move {
        let running = start_with(fleet, rebuild, extend).await?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| FleetError::Io { what: "SIGTERM handler".into(), source: e })?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        drop(running);
        Ok(())
    })
}
