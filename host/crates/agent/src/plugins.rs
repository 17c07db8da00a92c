//! Plugins loaded outside packs (`plugins.dir`, `edr replay --plugin`), and
//! the runtime settings every plugin shares. The built-in plugins come as
//! the signed built-in pack (see `packs`).

use crate::config::AgentConfig;
use anyhow::Context;
use edr_event::PluginConfig;
use edr_runtime::{HostServices, Limits, Plugin, PluginSpec, Runtime, RuntimeConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The runtime configured from `[runtime]`.
pub fn runtime(cfg: &AgentConfig) -> anyhow::Result<Runtime> {
    let user_cache = || -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("edr").join("compiled"))
    };
    let cache_dir = if cfg.runtime.compile_cache {
        Some(cfg.data_dir.join("cache"))
    } else if cfg.runtime.user_cache {
        user_cache()
    } else {
        None
    };
    let largest = cfg.plugins.limits.values().filter_map(|l| l.memory_mb).chain([cfg.runtime.memory_mb]).max().unwrap_or(64);
    let max_memory_bytes = (largest << 20).max(RuntimeConfig::default().max_memory_bytes);
    Runtime::new(RuntimeConfig { cache_dir, max_memory_bytes, ..RuntimeConfig::default() })
}

/// The limits one plugin runs under: `[runtime]`, then `[plugins.limits.<name>]`.
pub fn limits(cfg: &AgentConfig, plugin: &str) -> Limits {
    let r = &cfg.runtime;
    let o = cfg.plugins.limits.get(plugin).cloned().unwrap_or_default();
    Limits {
        call_deadline: Duration::from_millis(o.call_deadline_ms.unwrap_or(r.call_deadline_ms)),
        init_deadline: Duration::from_millis(o.init_deadline_ms.unwrap_or(r.init_deadline_ms)),
        memory_bytes: o.memory_mb.unwrap_or(r.memory_mb) << 20,
        max_findings_per_batch: o.max_findings_per_batch.unwrap_or(r.max_findings_per_batch),
        max_strikes: r.max_strikes,
        strike_window: Duration::from_secs(r.strike_window_secs),
        ..Limits::default()
    }
}

/// A plugin to load: its name and component bytes.
pub struct Source {
    /// The plugin's name.
    pub name: String,
    /// The component.
    pub wasm: Vec<u8>,
    /// Where it came from, for logs.
    pub origin: String,
}

/// The `*.wasm` files of `plugins.dir`.
pub fn sources(cfg: &AgentConfig) -> anyhow::Result<Vec<Source>> {
    let mut out = Vec::new();
    if let Some(dir) = &cfg.plugins.dir {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read plugins.dir {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
            .collect();
        files.sort();
        for path in files {
            let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let wasm = std::fs::read(&path).with_context(|| format!("cannot read plugin {}", path.display()))?;
            out.push(Source { name, wasm, origin: path.display().to_string() });
        }
    }
    out.retain(|s| !cfg.plugins.disable.contains(&s.name));
    Ok(out)
}

/// Loads every source. A plugin that fails to load is reported and skipped:
/// one broken plugin must not take detection down with it.
pub fn load_all(rt: &Runtime, cfg: &AgentConfig, sources: Vec<Source>, services: Arc<dyn HostServices>) -> (Vec<Plugin>, Vec<String>) {
    let mut loaded = Vec::new();
    let mut failures = Vec::new();
    for s in sources {
        let files = match data_files(cfg, &s.name) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(plugin = %s.name, "{e:#}");
                failures.push(format!("{e:#}"));
                continue;
            }
        };
        let spec = PluginSpec {
            config: PluginConfig { settings: cfg.plugin_settings(&s.name), files },
            limits: limits(cfg, &s.name),
            grants: cfg.plugin_grants(&s.name),
            ..PluginSpec::new(s.name.clone(), s.wasm)
        };
        match rt.load(spec, services.clone()) {
            Ok(p) => {
                tracing::info!(plugin = %s.name, version = %p.info().version, origin = %s.origin, subscriptions = ?p.info().subscriptions, "plugin loaded");
                loaded.push(p);
            }
            Err(e) => {
                tracing::error!(origin = %s.origin, "{e}");
                failures.push(e.to_string());
            }
        }
    }
    (loaded, failures)
}

/// The operator's data files for a plugin (`plugins.data.<plugin>`): every
/// file under each listed path, named by its path relative to that root.
/// Limits: 10,000 files and 256 MiB in all.
pub fn data_files(cfg: &AgentConfig, plugin: &str) -> anyhow::Result<Vec<edr_event::DataFile>> {
    const MAX_FILES: usize = 10_000;
    const MAX_BYTES: u64 = 256 << 20;
    let mut out = Vec::new();
    let mut total = 0u64;
    for root in cfg.plugins.data.get(plugin).into_iter().flatten() {
        let mut stack = vec![root.clone()];
        while let Some(p) = stack.pop() {
            let meta = std::fs::metadata(&p).with_context(|| format!("plugins.data.{plugin}: cannot read {}", p.display()))?;
            if meta.is_dir() {
                let mut entries: Vec<PathBuf> = std::fs::read_dir(&p)?.flatten().map(|e| e.path()).collect();
                entries.sort();
                stack.extend(entries.into_iter().rev());
            } else if meta.is_file() {
                total += meta.len();
                anyhow::ensure!(out.len() < MAX_FILES && total <= MAX_BYTES, "plugins.data.{plugin}: more than {MAX_FILES} files or {} MiB", MAX_BYTES >> 20);
                let name = p.strip_prefix(root).ok().filter(|r| !r.as_os_str().is_empty()).unwrap_or(&p).to_string_lossy().into_owned();
                let content = std::fs::read(&p).with_context(|| format!("plugins.data.{plugin}: cannot read {}", p.display()))?;
                out.push(edr_event::DataFile { name, content });
            }
        }
    }
    Ok(out)
}
