//! `edr config check [FILE]`: validates a configuration the way the agent
//! will read it, and warns about what is valid but will not work as meant.

use edr_agent::config::{AgentConfig, ConfigError, EventSource};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Where the service reads its configuration (see `edr service install`).
pub const SERVICE_CONFIG: &str = "/etc/edr/edr.toml";

/// `edr config ...`
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a config file: syntax, unknown keys, values (errors name the
    /// line and key), then what is valid but will not work as meant.
    Check(CheckArgs),
    /// Print the documented example configuration (every key, with defaults).
    Example,
}

/// Arguments of `edr config check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The file to check (default: /etc/edr/edr.toml).
    pub file: Option<PathBuf>,
    /// One JSON object: {"ok", "file", "error", "warnings", "summary"}.
    #[arg(long)]
    pub json: bool,
}

/// Runs `edr config ...`; `Ok(false)` when the file is invalid.
pub fn run(c: ConfigCommand) -> anyhow::Result<bool> {
    match c {
        ConfigCommand::Check(a) => check(a),
        ConfigCommand::Example => {
            print!("{}", include_str!("../../../examples/edr.toml"));
            Ok(true)
        }
    }
}

fn check(a: CheckArgs) -> anyhow::Result<bool> {
    let file = a.file.unwrap_or_else(|| PathBuf::from(SERVICE_CONFIG));
    match AgentConfig::load(&file) {
        Err(e) => {
            if a.json {
                let (line, key) = match &e {
                    ConfigError::Invalid { line, key, .. } => (*line, Some(key.clone())),
                    ConfigError::Parse { line, .. } => (*line, None),
                    ConfigError::Read { .. } => (None, None),
                };
                println!("{}", json!({"ok": false, "file": file, "error": {"message": e.to_string(), "line": line, "key": key}, "warnings": []}));
            } else {
                eprintln!("edr: {e}");
            }
            Ok(false)
        }
        Ok(cfg) => {
            let warnings = warnings(&cfg);
            let summary = summary(&cfg);
            if a.json {
                println!("{}", json!({"ok": true, "file": file, "error": null, "warnings": warnings, "summary": summary}));
            } else {
                println!("{}: ok", file.display());
                for (k, v) in &summary {
                    println!("  {k:<10} {v}");
                }
                if !warnings.is_empty() {
                    println!("warnings:");
                    for w in &warnings {
                        println!("  - {w}");
                    }
                }
            }
            Ok(true)
        }
    }
}

/// What the agent will do with this configuration, one line per area.
fn summary(cfg: &AgentConfig) -> Vec<(&'static str, String)> {
    let c = &cfg.collect;
    let source = match &c.source {
        EventSource::Live => format!("live (process {}, file {}, network {}, login {})", c.process, c.file, c.network, c.login),
        other => other.to_string(),
    };
    let mut outputs = Vec::new();
    if cfg.output.stdout {
        outputs.push("stdout".to_string());
    }
    if let Some(p) = cfg.data_path(&cfg.output.alerts_file) {
        outputs.push(format!("alerts file {}", p.display()));
    }
    if let Some(p) = cfg.data_path(&cfg.output.events_file) {
        outputs.push(format!("events file {}", p.display()));
    }
    outputs.extend(cfg.output.extra_outputs());
    let packs = format!(
        "drop-in {}; update URL {}; {} trusted key(s){}",
        cfg.data_path(&cfg.packs.dir).map(|p| p.display().to_string()).unwrap_or_else(|| "-".into()),
        cfg.packs.update_url.as_deref().unwrap_or("-"),
        cfg.trust.keys.len(),
        if cfg.packs.trust_builtin_key { " + the built-in development key" } else { "" }
    );
    let rc = &cfg.respond;
    let respond = format!(
        "{} pack grant(s); management endpoints: {}",
        rc.packs.len(),
        if rc.management.is_empty() { "none".to_string() } else { rc.management.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", ") }
    );
    vec![
        ("data dir", cfg.data_dir.display().to_string()),
        ("source", source),
        (
            "plugins",
            format!(
                "built-in pack {}; extra dir {}; disabled: {}",
                if cfg.plugins.builtin { "on" } else { "off" },
                cfg.plugins.dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "-".into()),
                if cfg.plugins.disable.is_empty() { "-".into() } else { cfg.plugins.disable.join(", ") }
            ),
        ),
        ("packs", packs),
        ("outputs", outputs.join(", ")),
        (
            "store",
            if cfg.store.enabled {
                format!("{} (max {} days, {} MiB)", cfg.store_config().path.display(), cfg.store.max_age_days, cfg.store.max_size_mb)
            } else {
                "off".into()
            },
        ),
        ("respond", respond),
        ("metrics", cfg.metrics.listen.as_ref().map(|l| format!("http://{l}/metrics")).unwrap_or_else(|| "off".into())),
    ]
}

/// Valid settings that will not do what the operator probably meant.
fn warnings(cfg: &AgentConfig) -> Vec<String> {
    let mut w = Vec::new();
    for k in &cfg.trust.keys {
        if let Some(f) = &k.public_key_file {
            match std::fs::read_to_string(f) {
                Err(e) => w.push(format!("trust key `{}`: cannot read {}: {e}; packs signed with it will be refused", k.name, f.display())),
                Ok(text) => {
                    if let Err(e) = edr_pack::PublicKey::from_minisign_text(&text, &f.display().to_string()) {
                        w.push(format!("trust key `{}`: {}: {e}", k.name, f.display()));
                    }
                }
            }
        }
    }
    w.extend(cfg.exposure_warnings());
    if cfg.packs.update_url.is_some() && cfg.trust.keys.is_empty() {
        w.push("packs.update_url is set but [[trust.keys]] is empty: only packs signed with the built-in development key can be activated".into());
    }
    if let Some(dir) = &cfg.plugins.dir {
        if !dir.is_dir() {
            w.push(format!("plugins.dir {} is not a directory: no extra plugins will load", dir.display()));
        }
    }
    if !writable_dir(&cfg.data_dir) {
        w.push(format!("data_dir {} cannot be created or written by this user", cfg.data_dir.display()));
    }
    if let EventSource::File(path) = &cfg.collect.source {
        if !path.exists() {
            w.push(format!("collect.source {} does not exist", path.display()));
        }
    }
    for (pack, g) in &cfg.respond.packs {
        if g.mode == edr_respond::Mode::Enforce && !g.actions.is_empty() {
            w.push(format!("respond: pack `{pack}` may act on its own (enforce): {}", g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")));
        }
    }
    w
}

/// Whether `dir` exists and is writable, or could be created.
fn writable_dir(dir: &Path) -> bool {
    let mut d = dir.to_path_buf();
    loop {
        if d.exists() {
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: access(2) on a NUL-terminated path.
            return unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
        }
        if !d.pop() || d.as_os_str().is_empty() {
            return true; // relative and nothing exists yet: created under the cwd
        }
    }
}
