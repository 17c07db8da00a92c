//! The host side of the contract: what plugins import, and the services the
//! embedding agent supplies behind those imports.

use crate::limits::Limits;
use crate::metrics::PluginMetrics;
use edr_event::{Action, Decision, LogLevel, PackRef, ProcessInfo};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::ResourceLimiter;

/// Who is calling: a plugin and the pack it came from. State is keyed by
/// pack id and plugin name (not version), so it survives updates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginIdentity {
    /// The plugin's name as loaded ([`PluginSpec::name`](crate::PluginSpec::name)),
    /// as it appears in logs, metrics and alerts.
    pub plugin: String,
    /// The pack the plugin came from; `None` for plugins loaded on their own
    /// (built-ins, files in the plugin directory, `edr replay --plugin`). With
    /// a pack, state is namespaced `pack-id/plugin` (see
    /// [`PluginIdentity::state_namespace`]).
    pub pack: Option<PackRef>,
}

impl PluginIdentity {
    /// `pack-id/plugin`, or the plugin name for plugins loaded without a pack.
    pub fn state_namespace(&self) -> String {
        match &self.pack {
            Some(p) => format!("{}/{}", p.id, self.plugin),
            None => self.plugin.clone(),
        }
    }
}

/// What the agent supplies behind the host imports. Implementations must be
/// quick: they run inside a plugin's call and count against its deadline.
pub trait HostServices: Send + Sync + 'static {
    /// The process and its ancestors, parent first.
    fn ancestry(&self, entity_id: u64) -> Vec<ProcessInfo>;
    /// Reads persistent state.
    fn state_get(&self, who: &PluginIdentity, key: &str) -> Option<Vec<u8>>;
    /// Writes persistent state; `Err` (e.g. over quota) is returned to the plugin.
    fn state_set(&self, who: &PluginIdentity, key: &str, value: Vec<u8>) -> Result<(), String>;
    /// Deletes persistent state.
    fn state_delete(&self, who: &PluginIdentity, key: &str);
    /// Decides on (and queues) a response action; must audit the request.
    fn request_action(&self, who: &PluginIdentity, action: Action, reason: String) -> Decision;
}

/// In-memory services for replay, tests and benchmarks: a process table fed
/// by [`MemoryServices::remember_exec`], state in a map with a quota, and a
/// response policy that refuses everything (and records the requests).
#[derive(Debug, Default)]
pub struct MemoryServices {
    processes: Mutex<HashMap<u64, (ProcessInfo, u64)>>,
    state: Mutex<HashMap<String, HashMap<String, Vec<u8>>>>,
    requests: Mutex<Vec<(PluginIdentity, Action, String)>>,
}

/// State quota per plugin for [`MemoryServices`], bytes.
pub const MEMORY_STATE_QUOTA: usize = 1 << 20;

impl MemoryServices {
    /// Records a process so later ancestry lookups find it.
    pub fn remember_exec(&self, e: &edr_event::ProcessExec) {
        let info = ProcessInfo { pid: e.pid, entity_id: e.entity_id, exe: e.exe.clone(), argv: e.argv.clone(), uid: e.uid, start_time: e.start_time };
        self.processes.lock().unwrap_or_else(|p| p.into_inner()).insert(e.entity_id, (info, e.parent_entity_id));
    }

    /// Action requests seen so far.
    pub fn requests(&self) -> Vec<(PluginIdentity, Action, String)> {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl HostServices for MemoryServices {
    fn ancestry(&self, entity_id: u64) -> Vec<ProcessInfo> {
        let table = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        edr_ancestry::walk(entity_id, |id| table.get(&id).map(|(info, parent)| (info.clone(), *parent)))
    }

    fn state_get(&self, who: &PluginIdentity, key: &str) -> Option<Vec<u8>> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.get(&who.state_namespace())?.get(key).cloned()
    }

    fn state_set(&self, who: &PluginIdentity, key: &str, value: Vec<u8>) -> Result<(), String> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ns = state.entry(who.state_namespace()).or_default();
        let used: usize = ns.iter().filter(|(k, _)| k.as_str() != key).map(|(k, v)| k.len() + v.len()).sum();
        if used + key.len() + value.len() > MEMORY_STATE_QUOTA {
            return Err(format!("state quota of {MEMORY_STATE_QUOTA} bytes exceeded"));
        }
        ns.insert(key.to_string(), value);
        Ok(())
    }

    fn state_delete(&self, who: &PluginIdentity, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ns) = state.get_mut(&who.state_namespace()) {
            ns.remove(key);
        }
    }

    fn request_action(&self, who: &PluginIdentity, action: Action, reason: String) -> Decision {
        self.requests.lock().unwrap_or_else(|p| p.into_inner()).push((who.clone(), action, reason));
        Decision::Refused
    }
}

/// Per-store data: everything a host import needs.
pub(crate) struct PluginState {
    pub identity: Arc<PluginIdentity>,
    pub services: Arc<dyn HostServices>,
    pub metrics: Arc<PluginMetrics>,
    pub limiter: MemoryLimiter,
    pub log_bucket: TokenBucket,
    pub max_log_line_bytes: usize,
}

impl PluginState {
    pub fn new(identity: Arc<PluginIdentity>, services: Arc<dyn HostServices>, metrics: Arc<PluginMetrics>, limits: &Limits) -> Self {
        Self {
            identity,
            services,
            limiter: MemoryLimiter { cap: limits.memory_bytes, current: 0, hit_cap: false, metrics: metrics.clone() },
            metrics,
            log_bucket: TokenBucket::new(limits.log_lines_per_sec, limits.log_burst),
            max_log_line_bytes: limits.max_log_line_bytes,
        }
    }
}

/// Caps one instance's linear memory and reports its size.
pub(crate) struct MemoryLimiter {
    pub cap: usize,
    pub current: usize,
    /// Set when a growth was refused, so a following trap reads as out-of-memory.
    pub hit_cap: bool,
    metrics: Arc<PluginMetrics>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit_cap = true;
            return Ok(false);
        }
        self.current = desired;
        self.metrics.set_memory(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Token bucket for plugin log lines.
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self { rate: rate as f64, burst: burst.max(1) as f64, tokens: burst.max(1) as f64, last: Instant::now() }
    }

    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Cuts a string to at most `max` bytes on a character boundary; true if cut.
pub(crate) fn truncate(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
    true
}

/// The host imports of one contract version, as the `Host` traits
/// `bindgen!` generated for it. Every version's imports have the same
/// meaning; they differ only in the generated types, converted exhaustively.
macro_rules! host_imports {
    ($v:ident) => {
        mod $v {
            use super::PluginState;
            use edr_event::contract::$v::edr::plugin::{clock, log, process, respond, state, types};

            impl types::Host for PluginState {}

            impl log::Host for PluginState {
                fn log(&mut self, level: types::LogLevel, message: String) {
                    self.write_log(level.into(), message);
                }
            }

            impl clock::Host for PluginState {
                fn now(&mut self) -> types::Timestamp {
                    edr_event::time::now()
                }
            }

            impl state::Host for PluginState {
                fn get(&mut self, key: String) -> Option<Vec<u8>> {
                    self.services.state_get(&self.identity, &key)
                }

                fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
                    self.services.state_set(&self.identity, &key, value)
                }

                fn delete(&mut self, key: String) {
                    self.services.state_delete(&self.identity, &key);
                }
            }

            impl process::Host for PluginState {
                fn ancestry(&mut self, entity_id: u64) -> Vec<types::ProcessInfo> {
                    self.services.ancestry(entity_id).into_iter().map(Into::into).collect()
                }
            }

            impl respond::Host for PluginState {
                fn request(&mut self, action: types::Action, reason: String) -> types::Decision {
                    self.services.request_action(&self.identity, action.into(), reason).into()
                }
            }
        }
    };
}

host_imports!(v0_2);
host_imports!(v0_1);

/// Registers the host imports of every contract version this host links
/// (every capability; a plugin's grant is enforced before linking, by
/// checking its imports).
pub(crate) fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    use edr_event::contract::{v0_1, v0_2};
    v0_2::Detector::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)?;
    v0_1::Detector::add_to_linker::<PluginState, HasSelf<PluginState>>(linker, |s| s)?;
    Ok(())
}

impl PluginState {
    /// The `log` import: rate-limited, length-capped, into `tracing`.
    fn write_log(&mut self, level: LogLevel, mut message: String) {
        if !self.log_bucket.take() {
            self.metrics.logs_dropped.fetch_add(1, Relaxed);
            return;
        }
        self.metrics.log_lines.fetch_add(1, Relaxed);
        if truncate(&mut message, self.max_log_line_bytes) {
            self.metrics.strings_cut.fetch_add(1, Relaxed);
        }
        let plugin = self.identity.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(target: "edr::plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "edr::plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "edr::plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "edr::plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "edr::plugin", plugin, "{message}"),
        }
    }
}
