//! The shared wasmtime engine: configuration, epoch ticker, compile cache.

use crate::capability::{Capability, Grants, ImportName};
use crate::error::LoadError;
use crate::host::{add_to_linker, HostServices, PluginIdentity, PluginState};
use crate::plugin::{Contract, Plugin, PluginSpec};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Granularity of call deadlines: the epoch ticker's period.
    pub epoch_tick: Duration,
    /// Most plugin instances alive at once (pooling allocator slots).
    pub max_instances: u32,
    /// Upper bound on any plugin's memory cap, bytes.
    pub max_memory_bytes: usize,
    /// Where compiled plugins are cached (`None`: compile every time). Only
    /// artifacts this host wrote there are ever loaded.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        // 10 ms ticks: deadlines land within 10 ms, at 100 wakeups a second.
        Self { epoch_tick: Duration::from_millis(10), max_instances: 128, max_memory_bytes: 1 << 30, cache_dir: None }
    }
}

/// The plugin runtime. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    linker: Linker<PluginState>,
    config: RuntimeConfig,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
    ticker: Arc<Ticker>,
}

/// The epoch ticker: advances the engine's epoch every tick while at least
/// one plugin call is running, and sleeps otherwise (an idle agent should
/// not wake a hundred times a second for deadlines nobody is waiting on).
pub(crate) struct Ticker {
    in_flight: std::sync::atomic::AtomicUsize,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

/// Held for the duration of a plugin call.
pub(crate) struct Ticking<'a>(&'a Ticker);

impl Ticker {
    pub(crate) fn enter(&self) -> Ticking<'_> {
        if self.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
        Ticking(self)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Runtime {
    /// Builds the engine and starts the epoch ticker thread.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 8)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .max_memory_size(config.max_memory_bytes)
            .max_memories_per_component(2)
            .max_core_instances_per_component(16);
        let mut wcfg = Config::new();
        wcfg.epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(512 << 10)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wcfg).map_err(|e| anyhow::anyhow!("cannot create the wasmtime engine: {e}"))?;
        let mut linker = Linker::<PluginState>::new(&engine);
        add_to_linker(&mut linker).map_err(|e| anyhow::anyhow!("cannot link the host imports: {e}"))?;
        let ticker = Arc::new(Ticker { in_flight: std::sync::atomic::AtomicUsize::new(0), thread: std::sync::OnceLock::new() });
        spawn_epoch_ticker(&engine, config.epoch_tick, ticker.clone());
        if let Some(dir) = &config.cache_dir {
            create_private_dir(dir).map_err(|e| anyhow::anyhow!("cannot create compile cache {}: {e}", dir.display()))?;
        }
        Ok(Self { inner: Arc::new(Inner { engine, linker, config, compiled: Mutex::new(HashMap::new()), ticker }) })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The epoch tick (deadline granularity).
    pub fn epoch_tick(&self) -> Duration {
        self.inner.config.epoch_tick
    }

    /// Keeps the epoch ticking while the returned guard lives (one per call).
    pub(crate) fn ticking(&self) -> Ticking<'_> {
        self.inner.ticker.enter()
    }

    /// Compiles a component, once per distinct content: from memory, then
    /// from this host's own disk cache, then with cranelift.
    pub fn compile(&self, plugin: &str, wasm: &[u8]) -> Result<Component, LoadError> {
        let digest: [u8; 32] = Sha256::digest(wasm).into();
        if let Some(c) = self.inner.compiled.lock().unwrap_or_else(|p| p.into_inner()).get(&digest) {
            return Ok(c.clone());
        }
        let cache_path = self.inner.config.cache_dir.as_ref().map(|d| d.join(format!("{}-{:016x}.cwasm", hex::encode(digest), self.compat_hash())));
        let mut component = None;
        if let Some(path) = &cache_path {
            if path.exists() {
                // SAFETY: deserialize trusts its input. Only files this
                // process's engine serialized are in the cache directory
                // (created 0700, named by content hash and engine hash).
                match unsafe { Component::deserialize_file(&self.inner.engine, path) } {
                    Ok(c) => component = Some(c),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "discarding unusable compile cache entry: {e}");
                        let _ = std::fs::remove_file(path);
                    }
                }
            }
        }
        let component = match component {
            Some(c) => c,
            None => {
                let c = Component::new(&self.inner.engine, wasm).map_err(|e| LoadError::Compile { plugin: plugin.to_string(), reason: format!("{e:#}") })?;
                if let Some(path) = &cache_path {
                    if let Err(e) = write_cache(path, &c) {
                        tracing::warn!(path = %path.display(), "cannot write compile cache: {e}");
                    }
                }
                c
            }
        };
        self.inner.compiled.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, component.clone());
        Ok(component)
    }

    fn compat_hash(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner.engine.precompile_compatibility_hash().hash(&mut h);
        h.finish()
    }

    /// The names of everything a component imports (e.g. `edr:plugin/log@0.1.0`).
    pub fn imports(&self, component: &Component) -> Vec<String> {
        component.component_type().imports(&self.inner.engine).map(|(name, _)| name.to_string()).collect()
    }

    /// Checks a component's imports against the contract and its grants.
    pub fn check_imports(&self, plugin: &str, component: &Component, grants: &Grants) -> Result<(), LoadError> {
        let ty = component.component_type();
        for (name, _) in ty.imports(&self.inner.engine) {
            let parsed = ImportName::parse(name);
            if parsed.package != "edr:plugin" {
                return Err(LoadError::ForeignImport { plugin: plugin.to_string(), import: name.to_string() });
            }
            if let Some(v) = parsed.version {
                if !version_supported(v) {
                    return Err(LoadError::UnsupportedContract {
                        plugin: plugin.to_string(),
                        import: name.to_string(),
                        supported: edr_event::contract::VERSIONS.join(", edr:plugin@"),
                    });
                }
            }
            if parsed.interface == "types" {
                continue;
            }
            let cap = Capability::parse(parsed.interface).ok_or_else(|| LoadError::ForeignImport { plugin: plugin.to_string(), import: name.to_string() })?;
            if !grants.allows(cap) {
                return Err(LoadError::NotGranted {
                    plugin: plugin.to_string(),
                    import: name.to_string(),
                    capability: cap.to_string(),
                    granted: grants.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Compiles, checks, links, instantiates and initialises a plugin.
    pub fn load(&self, spec: PluginSpec, services: Arc<dyn HostServices>) -> Result<Plugin, LoadError> {
        let component = self.compile(&spec.name, &spec.wasm)?;
        self.check_imports(&spec.name, &component, &spec.grants)?;
        let link_err = |e: wasmtime::Error| LoadError::Link { plugin: spec.name.clone(), reason: format!("{e:#}") };
        let contract = self.contract_of(&spec.name, &component)?;
        let pre = self.inner.linker.instantiate_pre(&component).map_err(link_err)?;
        let identity = Arc::new(PluginIdentity { plugin: spec.name.clone(), pack: spec.pack.clone() });
        Plugin::start(self.clone(), pre, contract, identity, services, spec)
    }

    /// The contract version a component was built against, from its exports:
    /// `edr:plugin/detect@0.2.0` for 0.2.0, world-level `on-events` for 0.1.0.
    fn contract_of(&self, plugin: &str, component: &Component) -> Result<Contract, LoadError> {
        let ty = component.component_type();
        let names: Vec<&str> = ty.exports(&self.inner.engine).map(|(name, _)| name).collect();
        let current = format!("edr:plugin/detect@{}", edr_event::contract::v0_2::VERSION);
        if names.contains(&current.as_str()) {
            return Ok(Contract::V0_2);
        }
        if let Some(other) = names.iter().find(|n| n.starts_with("edr:plugin/detect@")) {
            return Err(LoadError::UnsupportedContract {
                plugin: plugin.to_string(),
                import: other.to_string(),
                supported: edr_event::contract::VERSIONS.join(", edr:plugin@"),
            });
        }
        if names.contains(&"on-events") {
            return Ok(Contract::V0_1);
        }
        Err(LoadError::Link {
            plugin: plugin.to_string(),
            reason: format!(
                "it exports neither `{current}` (edr:plugin@{}) nor `on-events` (edr:plugin@{}); exports: {names:?}",
                edr_event::contract::v0_2::VERSION,
                edr_event::contract::v0_1::VERSION
            ),
        })
    }
}

/// Whether a contract version named in an import is one this host links:
/// the same major and minor as a linked version while the major is 0 (0.x
/// minors are breaking), the same major and a minor not newer from 1.0 on.
fn version_supported(v: &str) -> bool {
    let parse = |s: &str| -> Option<(u64, u64)> {
        let mut it = s.split('.');
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    let Some((maj, min)) = parse(v) else {
        return false;
    };
    edr_event::contract::VERSIONS.iter().filter_map(|ours| parse(ours)).any(|(our_maj, our_min)| {
        if our_maj == 0 {
            maj == 0 && min == our_min
        } else {
            maj == our_maj && min <= our_min
        }
    })
}

/// One thread per engine advances the epoch while calls run; it stops once
/// the engine is gone.
fn spawn_epoch_ticker(engine: &Engine, tick: Duration, ticker: Arc<Ticker>) {
    let weak = engine.weak();
    let slot = ticker.clone();
    let handle = std::thread::Builder::new()
        .name("edr-epoch".into())
        .spawn(move || loop {
            if ticker.in_flight.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                // Woken by the next call; the timeout notices a dropped engine.
                std::thread::park_timeout(Duration::from_secs(1));
                if weak.upgrade().is_none() {
                    break;
                }
                continue;
            }
            std::thread::sleep(tick);
            match weak.upgrade() {
                Some(engine) => engine.increment_epoch(),
                None => break,
            }
        })
        .expect("spawning the epoch ticker thread");
    // Set before the runtime is returned, so no call can miss the wake-up.
    let _ = slot.thread.set(handle.thread().clone());
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn write_cache(path: &std::path::Path, component: &Component) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(|e| anyhow::anyhow!("{e}"))?;
    let tmp = path.with_extension("tmp");
    // 0600 like everything in the data dir (issue 14, item 8).
    let _ = std::fs::remove_file(&tmp);
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, &bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn contract_versions() {
        assert!(super::version_supported("0.1.0"));
        assert!(super::version_supported("0.1.7"));
        assert!(super::version_supported("0.2.0"));
        assert!(!super::version_supported("0.3.0"));
        assert!(!super::version_supported("1.0.0"));
        assert!(!super::version_supported("x"));
    }
}
