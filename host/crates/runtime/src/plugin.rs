//! One loaded plugin: its instance, its calls, its failures.

use crate::capability::Grants;
use crate::engine::Runtime;
use crate::error::{LoadError, PluginError};
use crate::host::{truncate, HostServices, PluginIdentity, PluginState};
use crate::limits::Limits;
use crate::metrics::PluginMetrics;
use edr_event::contract::{v0_1, v0_2};
use edr_event::wire::{EncodedBatch, WireEvent};
use edr_event::{Event, EventKind, Finding, PackRef, PluginConfig, PluginInfo};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::{Func, Instance, InstancePre, TypedFunc};
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
    /// Deadlines, memory cap, output caps and strike policy for this plugin
    /// (default: [`Limits::default`]).
    pub limits: Limits,
    /// The host imports (capabilities) the plugin may use; a component that
    /// imports anything else fails to load with [`LoadError::NotGranted`]
    /// (default: [`Grants::detection_default`], everything but `respond`).
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
    /// Receives its batches. Failures may have dropped its instance (the next
    /// call rebuilds it), but fewer than [`Limits::max_strikes`] fell within
    /// the strike window.
    Active,
    /// Too many failures in the strike window; no longer called until an
    /// operator re-enables it ([`Plugin::reenable`], `edr plugin reenable`) or
    /// a new version replaces it. Its events are counted as skipped.
    Quarantined {
        /// The failure that tipped it over, as text (e.g. `exceeded its
        /// deadline of 100 ms`).
        reason: String,
        /// Failures within the strike window at that moment.
        strikes: usize,
    },
}

/// The result of one batch.
#[derive(Debug, Default)]
pub struct CallOutcome {
    /// What the plugin reported for this batch, already cut to the output
    /// limits (findings per batch, string lengths, evidence pairs).
    pub findings: Vec<Finding>,
    /// Set when the call failed (the findings are then empty).
    pub error: Option<PluginError>,
}

struct Live {
    store: Store<PluginState>,
    exports: Exports,
}

/// The contract version a plugin was built against, read from its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contract {
    /// `edr:plugin@0.2.0`: exports the `detect` interface.
    V0_2,
    /// `edr:plugin@0.1.0`: exports `init` and `on-events` at the world level.
    V0_1,
}

impl Contract {
    /// The version string (`0.2.0`).
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_2 => v0_2::VERSION,
            Contract::V0_1 => v0_1::VERSION,
        }
    }
}

/// A live instance's entry points.
enum Exports {
    /// The current version. `on-events` is called through a `TypedFunc` over
    /// `&[&WireEvent]` (the generated record, borrowed) so each plugin gets its
    /// subset of the shared batch without copying events; its type was checked
    /// against the generated bindings when the instance was built.
    Current(Func),
    /// 0.1.0: events are converted from the current wire form per call.
    V0_1(v0_1::Detector),
}

/// A loaded plugin. Calls are synchronous and bounded by the plugin's
/// deadline; a failed call leaves the plugin ready for the next one.
pub struct Plugin {
    runtime: Runtime,
    pre: InstancePre<PluginState>,
    contract: Contract,
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
        contract: Contract,
        identity: Arc<PluginIdentity>,
        services: Arc<dyn HostServices>,
        spec: PluginSpec,
    ) -> Result<Self, LoadError> {
        let mut plugin = Plugin {
            runtime,
            pre,
            contract,
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

    /// The contract version the plugin was built against (`0.1.0`, `0.2.0`).
    pub fn contract_version(&self) -> &'static str {
        self.contract.version()
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
        let (exports, init) = self.bind(&mut store, &instance).map_err(StartError::Instantiate)?;
        let info = match init {
            Ok(Ok(info)) => info,
            Ok(Err(reason)) => return Err(StartError::Rejected(reason)),
            Err(e) => {
                let hit_cap = store.data().limiter.hit_cap;
                return Err(StartError::Failed(self.classify(&e, hit_cap, self.limits.init_deadline)));
            }
        };
        self.metrics.set_memory(store.data().limiter.current);
        self.live = Some(Live { store, exports });
        Ok(info)
    }

    /// Checks the instance's exports against the generated bindings of its
    /// contract version and runs `init`.
    fn bind(&self, store: &mut Store<PluginState>, instance: &Instance) -> Result<(Exports, wasmtime::Result<Result<PluginInfo, String>>), String> {
        let wrong = |e: wasmtime::Error| format!("its exports do not match edr:plugin@{}: {e:#}", self.contract.version());
        match self.contract {
            Contract::V0_2 => {
                let bindings = v0_2::Detector::new(&mut *store, instance).map_err(wrong)?;
                let iface = instance
                    .get_export_index(&mut *store, None, &format!("edr:plugin/detect@{}", v0_2::VERSION))
                    .ok_or_else(|| "no `detect` export".to_string())?;
                let on_events = instance
                    .get_export_index(&mut *store, Some(&iface), "on-events")
                    .and_then(|i| instance.get_func(&mut *store, i))
                    .ok_or_else(|| "no `on-events` export".to_string())?;
                // Check the borrowed-events signature once; calls then use the unchecked typed func.
                on_events.typed::<OnEventsParams, OnEventsResults>(&*store).map_err(|e| format!("`on-events` has the wrong type: {e:#}"))?;
                let init = bindings.edr_plugin_detect().call_init(&mut *store, &(&self.config).into()).map(|r| r.map(Into::into));
                Ok((Exports::Current(on_events), init))
            }
            Contract::V0_1 => {
                let bindings = v0_1::Detector::new(&mut *store, instance).map_err(wrong)?;
                let init = bindings.call_init(&mut *store, &(&self.config).into()).map(|r| r.map(Into::into));
                Ok((Exports::V0_1(bindings), init))
            }
        }
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
    /// encoded batch is shared by many plugins without copying. A plugin
    /// built against 0.1.0 is not given the events 0.1.0 cannot express (a
    /// network `close`): they are neither delivered nor counted for it, and
    /// the others keep their ids.
    pub fn call(&mut self, batch: &EncodedBatch, events: &[&WireEvent]) -> CallOutcome {
        // Each event is converted once for a 0.1.0 plugin; what 0.1.0 cannot express is left out here.
        let (count, old_events): (usize, Vec<v0_1::types::Event>) = match self.contract {
            Contract::V0_2 => (events.len(), Vec::new()),
            Contract::V0_1 => {
                let old: Vec<_> = events.iter().filter_map(|e| (*e).try_into().ok()).collect();
                (old.len(), old)
            }
        };
        if let Health::Quarantined { reason, strikes } = &self.health {
            self.metrics.skipped_events.fetch_add(count as u64, Relaxed);
            return CallOutcome { findings: Vec::new(), error: Some(PluginError::Quarantined { strikes: *strikes, reason: reason.clone() }) };
        }
        if count == 0 {
            return CallOutcome::default();
        }
        if self.live.is_none() {
            self.metrics.reinstantiations.fetch_add(1, Relaxed);
            if let Err(e) = self.instantiate() {
                let err = match e {
                    StartError::Failed(err) => err,
                    StartError::Instantiate(m) | StartError::Rejected(m) => PluginError::Reinstantiate { message: m },
                };
                self.metrics.skipped_events.fetch_add(count as u64, Relaxed);
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
        let start = Instant::now();
        let result: wasmtime::Result<Vec<Finding>> = match &live.exports {
            Exports::Current(on_events) => {
                // SAFETY: the signature was checked with `typed` when the instance was built.
                let func = unsafe { TypedFunc::<OnEventsParams, OnEventsResults>::new_unchecked(*on_events) };
                func.call(&mut live.store, (batch.text.as_str(), batch.lists.as_slice(), events)).map(|(f,)| f.into_iter().map(Into::into).collect())
            }
            Exports::V0_1(bindings) => {
                bindings.call_on_events(&mut live.store, &batch.text, &batch.lists, &old_events).map(|f| f.into_iter().map(Into::into).collect())
            }
        };
        self.metrics.record_call_time(start.elapsed());
        self.metrics.calls.fetch_add(1, Relaxed);
        let outcome = match result {
            Ok(mut findings) => {
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
        self.metrics.events.fetch_add(count as u64, Release);
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

/// `on-events(text, lists, events)` of the current version, events borrowed.
type OnEventsParams<'a> = (&'a str, &'a [u32], &'a [&'a WireEvent]);
/// Its result, in the generated type.
type OnEventsResults = (Vec<v0_2::types::Finding>,);

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
