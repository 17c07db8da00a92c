//! One loaded plugin: its instance, its calls, its failures.

use crate::capability::Grants;
use crate::engine::Runtime;
use crate::error::{LoadError, PluginError};
use crate::host::{truncate, HostServices, PluginIdentity, PluginState};
use crate::limits::Limits;
use crate::metrics::PluginMetrics;
use edr_event::wire::{EncodedBatch, WireEvent};
use edr_event::{Event, EventKind, Finding, PackRef, PluginConfig, PluginInfo};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Func, InstancePre, TypedFunc};
use wasmtime::{Store, Trap};

/// Everything needed to load one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Name used in logs, metrics and alerts (`edr.plugin`).
    pub name: String,
    /// The component's bytes.
    pub wasm: Vec<u8>,
    /// Settings and data files passed to `init`.
    pub config: PluginConfig,
    pub limits: Limits,
    pub grants: Grants,
    /// The pack the plugin came from, if any.
    pub pack: Option<PackRef>,
}

impl PluginSpec {
    /// A spec with default limits, the default detection grants and no config.
    pub fn new(name: impl Into<String>, wasm: Vec<u8>) -> Self {
        Self { name: name.into(), wasm, config: PluginConfig::default(), limits: Limits::default(), grants: Grants::detection_default(), pack: None }
    }
}

/// Whether a plugin is being called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Active,
    /// Too many failures in the strike window; no longer called until an
    /// operator re-enables it or a new version replaces it.
    Quarantined {
        reason: String,
        strikes: usize,
    },
}

/// The result of one batch.
#[derive(Debug, Default)]
pub struct CallOutcome {
    pub findings: Vec<Finding>,
    /// Set when the call failed (the findings are then empty).
    pub error: Option<PluginError>,
}

struct Live {
    store: Store<PluginState>,
    on_events: Func,
}

/// A loaded plugin. Calls are synchronous and bounded by the plugin's
/// deadline; a failed call leaves the plugin ready for the next one.
pub struct Plugin {
    runtime: Runtime,
    pre: InstancePre<PluginState>,
    identity: Arc<PluginIdentity>,
    services: Arc<dyn HostServices>,
    config: PluginConfig,
    limits: Limits,
    info: PluginInfo,
    subscriptions: u32,
    live: Option<Live>,
    metrics: Arc<PluginMetrics>,
    strikes: VecDeque<Instant>,
    health: Health,
}

/// Failures of instantiate + init.
enum StartError {
    Instantiate(String),
    Rejected(String),
    Failed(PluginError),
}

impl Plugin {
    pub(crate) fn start(
        runtime: Runtime,
        pre: InstancePre<PluginState>,
        identity: Arc<PluginIdentity>,
        services: Arc<dyn HostServices>,
        spec: PluginSpec,
    ) -> Result<Self, LoadError> {
        let mut plugin = Plugin {
            runtime,
            pre,
            identity,
            services,
            config: spec.config,
            limits: spec.limits,
            info: PluginInfo::default(),
            subscriptions: 0,
            live: None,
            metrics: Arc::new(PluginMetrics::default()),
            strikes: VecDeque::new(),
            health: Health::Active,
        };
        let name = spec.name;
        let info = plugin.instantiate().map_err(|e| match e {
            StartError::Instantiate(reason) => LoadError::Instantiate { plugin: name.clone(), reason },
            StartError::Rejected(reason) => LoadError::InitRejected { plugin: name.clone(), reason },
            StartError::Failed(source) => LoadError::InitFailed { plugin: name.clone(), source },
        })?;
        plugin.subscriptions = info.subscriptions.iter().fold(0, |m, k| m | kind_bit(*k));
        if plugin.subscriptions == 0 {
            return Err(LoadError::NoSubscriptions { plugin: name });
        }
        plugin.info = info;
        Ok(plugin)
    }

    /// Name of the plugin as loaded (not necessarily what it calls itself).
    pub fn name(&self) -> &str {
        &self.identity.plugin
    }

    /// What the plugin said about itself at init.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The pack the plugin came from.
    pub fn pack(&self) -> Option<&PackRef> {
        self.identity.pack.as_ref()
    }

    /// The plugin's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the plugin subscribed to this kind of event.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.subscriptions & kind_bit(kind) != 0
    }

    /// Live metrics, shareable with a status reporter.
    pub fn metrics(&self) -> Arc<PluginMetrics> {
        self.metrics.clone()
    }

    /// Whether the plugin is being called.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Lifts a quarantine (operator decision): strikes are forgotten and the
    /// next call builds a fresh instance.
    pub fn reenable(&mut self) {
        self.strikes.clear();
        self.health = Health::Active;
    }

    fn ticks(&self, d: Duration) -> u64 {
        let tick = self.runtime.epoch_tick().as_nanos().max(1);
        (d.as_nanos().div_ceil(tick) as u64).max(1)
    }

    /// Builds a fresh store and instance and runs `init` under the init deadline.
    fn instantiate(&mut self) -> Result<PluginInfo, StartError> {
        self.live = None;
        let state = PluginState::new(self.identity.clone(), self.services.clone(), self.metrics.clone(), &self.limits);
        let runtime = self.runtime.clone();
        let _ticking = runtime.ticking();
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(self.ticks(self.limits.init_deadline));
        let instance = match self.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => {
                let hit_cap = store.data().limiter.hit_cap;
                return Err(match e.downcast_ref::<Trap>() {
                    Some(_) => StartError::Failed(self.classify(&e, hit_cap, self.limits.init_deadline)),
                    None => StartError::Instantiate(format!("{e:#}")),
                });
            }
        };
        let init = instance
            .get_typed_func::<(&PluginConfig,), (Result<PluginInfo, String>,)>(&mut store, "init")
            .map_err(|e| StartError::Instantiate(format!("`init` is missing or has the wrong type: {e:#}")))?;
        let on_events = instance.get_func(&mut store, "on-events").ok_or_else(|| StartError::Instantiate("no `on-events` export".into()))?;
        // Check the signature once; calls then use the unchecked typed func.
        on_events.typed::<OnEventsParams, (Vec<Finding>,)>(&store).map_err(|e| StartError::Instantiate(format!("`on-events` has the wrong type: {e:#}")))?;
        let info = match init.call(&mut store, (&self.config,)) {
            Ok((Ok(info),)) => info,
            Ok((Err(reason),)) => return Err(StartError::Rejected(reason)),
            Err(e) => {
                let hit_cap = store.data().limiter.hit_cap;
                return Err(StartError::Failed(self.classify(&e, hit_cap, self.limits.init_deadline)));
            }
        };
        self.metrics.set_memory(store.data().limiter.current);
        self.live = Some(Live { store, on_events });
        Ok(info)
    }

    fn classify(&self, e: &wasmtime::Error, hit_cap: bool, deadline: Duration) -> PluginError {
        match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => PluginError::Timeout { deadline_ms: deadline.as_millis() as u64 },
            _ if hit_cap => PluginError::OutOfMemory { cap_bytes: self.limits.memory_bytes },
            Some(Trap::StackOverflow) => PluginError::Trap { message: "stack overflow (recursion too deep)".into() },
            _ => PluginError::Trap { message: first_line(&format!("{e:#}")) },
        }
    }

    /// Encodes `events`, keeps the kinds the plugin wants, and calls it. For
    /// one plugin at a time (tests, tools); the agent encodes each batch once
    /// and uses [`Plugin::call`] for every plugin.
    pub fn run(&mut self, events: &[Event]) -> CallOutcome {
        let batch = EncodedBatch::encode(events);
        let selection: Vec<&WireEvent> = batch.events.iter().filter(|e| self.wants(e.kind())).collect();
        self.call(&batch, &selection)
    }

    /// Runs one batch: `events` is the subset of `batch.events` of kinds the
    /// plugin wants (see [`Plugin::wants`]). The caller filters, so one
    /// encoded batch is shared by many plugins without copying.
    pub fn call(&mut self, batch: &EncodedBatch, events: &[&WireEvent]) -> CallOutcome {
        if let Health::Quarantined { reason, strikes } = &self.health {
            self.metrics.skipped_events.fetch_add(events.len() as u64, Relaxed);
            return CallOutcome { findings: Vec::new(), error: Some(PluginError::Quarantined { strikes: *strikes, reason: reason.clone() }) };
        }
        if events.is_empty() {
            return CallOutcome::default();
        }
        if self.live.is_none() {
            self.metrics.reinstantiations.fetch_add(1, Relaxed);
            if let Err(e) = self.instantiate() {
                let err = match e {
                    StartError::Failed(err) => err,
                    StartError::Instantiate(m) | StartError::Rejected(m) => PluginError::Reinstantiate { message: m },
                };
                self.metrics.skipped_events.fetch_add(events.len() as u64, Relaxed);
                self.fail(&err);
                return CallOutcome { findings: Vec::new(), error: Some(err) };
            }
        }
        let ticks = self.ticks(self.limits.call_deadline);
        let runtime = self.runtime.clone();
        let _ticking = runtime.ticking();
        let live = self.live.as_mut().expect("instantiated above");
        live.store.set_epoch_deadline(ticks);
        live.store.data_mut().limiter.hit_cap = false;
        // SAFETY: the signature was checked with `typed` when the instance was built.
        let func = unsafe { TypedFunc::<OnEventsParams, (Vec<Finding>,)>::new_unchecked(live.on_events) };
        let start = Instant::now();
        let result = func.call(&mut live.store, (batch.text.as_str(), batch.lists.as_slice(), events));
        self.metrics.record_call_time(start.elapsed());
        self.metrics.calls.fetch_add(1, Relaxed);
        let outcome = match result {
            Ok((mut findings,)) => {
                self.metrics.set_memory(live.store.data().limiter.current);
                self.bound(&mut findings);
                self.metrics.findings.fetch_add(findings.len() as u64, Relaxed);
                CallOutcome { findings, error: None }
            }
            Err(e) => {
                let hit_cap = live.store.data().limiter.hit_cap;
                let err = self.classify(&e, hit_cap, self.limits.call_deadline);
                // A trapped store refuses further calls: drop it; the next call rebuilds.
                self.live = None;
                self.fail(&err);
                CallOutcome { findings: Vec::new(), error: Some(err) }
            }
        };
        // Counted last (Release; `Metrics::snapshot` loads it with Acquire
        // before the findings), so a reader who sees the events also sees their findings.
        self.metrics.events.fetch_add(events.len() as u64, Release);
        outcome
    }

    /// Counts a failure, logs it, and quarantines after too many strikes.
    fn fail(&mut self, err: &PluginError) {
        self.metrics.errors.fetch_add(1, Relaxed);
        match err {
            PluginError::Timeout { .. } => self.metrics.timeouts.fetch_add(1, Relaxed),
            PluginError::OutOfMemory { .. } => self.metrics.out_of_memory.fetch_add(1, Relaxed),
            _ => self.metrics.traps.fetch_add(1, Relaxed),
        };
        let now = Instant::now();
        self.strikes.push_back(now);
        while self.strikes.front().is_some_and(|t| now.duration_since(*t) > self.limits.strike_window) {
            self.strikes.pop_front();
        }
        let strikes = self.strikes.len();
        if strikes >= self.limits.max_strikes {
            tracing::error!(plugin = %self.identity.plugin, strikes, "plugin {err}; quarantined after {strikes} failures within {:?}", self.limits.strike_window);
            self.health = Health::Quarantined { reason: err.to_string(), strikes };
        } else {
            tracing::warn!(plugin = %self.identity.plugin, strikes, "plugin {err}; instance dropped, it will be rebuilt for the next batch");
        }
    }

    /// Applies the output bounds: findings per batch, string lengths, evidence.
    fn bound(&self, findings: &mut Vec<Finding>) {
        let l = &self.limits;
        if findings.len() > l.max_findings_per_batch {
            self.metrics.findings_cut.fetch_add((findings.len() - l.max_findings_per_batch) as u64, Relaxed);
            findings.truncate(l.max_findings_per_batch);
        }
        let mut cut = 0u64;
        for f in findings.iter_mut() {
            for s in [&mut f.rule_id, &mut f.title, &mut f.message, &mut f.author] {
                cut += truncate(s, l.max_string_bytes) as u64;
            }
            if f.techniques.len() > 32 {
                f.techniques.truncate(32);
                cut += 1;
            }
            for t in f.techniques.iter_mut() {
                cut += truncate(t, 64) as u64;
            }
            if f.evidence.len() > l.max_evidence {
                f.evidence.truncate(l.max_evidence);
                cut += 1;
            }
            for (k, v) in f.evidence.iter_mut() {
                cut += truncate(k, 256) as u64 + truncate(v, l.max_string_bytes) as u64;
            }
            if f.event_ids.len() > 1024 {
                f.event_ids.truncate(1024);
                cut += 1;
            }
        }
        if cut > 0 {
            self.metrics.strings_cut.fetch_add(cut, Relaxed);
        }
    }
}

/// `on-events(text, lists, events)`.
type OnEventsParams<'a> = (&'a str, &'a [u32], &'a [&'a WireEvent]);

fn kind_bit(k: EventKind) -> u32 {
    1 << (k as u32)
}

fn first_line(s: &str) -> String {
    // Wasm backtraces follow the message; keep the message, and the first frame.
    let mut lines = s.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("").to_string();
    match lines.find(|l| l.trim_start().starts_with("0:")) {
        Some(frame) => format!("{first} (at {})", frame.trim()),
        None => first,
    }
}
