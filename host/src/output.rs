//! Alert outputs: standard output and a JSONL file, one ECS document a line.

use anyhow::Context;
use edr_event::ecs::{alert_to_ecs, EcsContext};
use edr_event::Alert;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

/// Writes alerts to the configured outputs.
pub struct AlertWriter {
    ctx: EcsContext,
    stdout: bool,
    file: Option<BufWriter<File>>,
    store: Option<edr_store::StoreWriter>,
    written: u64,
}

impl AlertWriter {
    /// Outputs: stdout when `stdout`, and the JSONL file at `file` (appended).
    pub fn new(stdout: bool, file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self { ctx: EcsContext { hostname: hostname() }, stdout, file: open_alerts_file(file)?, store: None, written: 0 })
    }

    /// Replaces the outputs (a config reload): the alert thread calls this
    /// between two alerts, with outputs opened beforehand by [`OutputSet::open`].
    pub fn install(&mut self, set: OutputSet) {
        if let Some(old) = &mut self.file {
            let _ = old.flush();
        }
        self.stdout = set.stdout;
        self.file = set.file;
    }

    /// Flushes every output; called once when the agent stops.
    pub fn shutdown(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
    }

    /// Also records every alert in the store.
    pub fn with_store(mut self, store: edr_store::StoreWriter) -> Self {
        self.store = Some(store);
        self
    }

    /// Writes one alert to every output. The file is flushed per alert:
    /// alerts are rare and must survive a crash.
    pub fn write(&mut self, alert: &Alert) -> std::io::Result<()> {
        let mut line = serde_json::to_string(&alert_to_ecs(alert, &self.ctx)).expect("JSON values always serialize");
        line.push('\n');
        if self.stdout {
            let mut out = std::io::stdout().lock();
            out.write_all(line.as_bytes())?;
            out.flush()?;
        }
        if let Some(f) = &mut self.file {
            f.write_all(line.as_bytes())?;
            f.flush()?;
        }
        if let Some(s) = &self.store {
            if let Err(e) = s.append_alert(alert) {
                tracing::error!("alert {} not recorded in the store: {e}", alert.id);
            }
        }
        self.written += 1;
        Ok(())
    }

    /// Alerts written so far.
    pub fn written(&self) -> u64 {
        self.written
    }
}

/// Outputs opened from a configuration, ready to be installed in the
/// running [`AlertWriter`]; opening fails before anything is replaced.
pub struct OutputSet {
    stdout: bool,
    file: Option<BufWriter<File>>,
}

impl OutputSet {
    /// Opens the outputs `cfg` asks for.
    pub fn open(cfg: &crate::config::AgentConfig) -> anyhow::Result<OutputSet> {
        Ok(OutputSet { stdout: cfg.output.stdout, file: open_alerts_file(cfg.data_path(&cfg.output.alerts_file).as_deref())? })
    }
}

/// Opens (appends to) the JSONL alerts file, creating its directory.
fn open_alerts_file(file: Option<&Path>) -> anyhow::Result<Option<BufWriter<File>>> {
    let Some(path) = file else { return Ok(None) };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let f = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open alerts file {}", path.display()))?;
    Ok(Some(BufWriter::new(f)))
}

/// Appends every event of every batch to a JSONL file (ECS documents).
pub fn events_file_tap(path: &Path) -> anyhow::Result<Box<dyn FnMut(&std::sync::Arc<crate::dispatch::Batch>) + Send>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let f = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("cannot open events file {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 16, f);
    let ctx = EcsContext { hostname: hostname() };
    let path = path.to_path_buf();
    Ok(Box::new(move |batch| {
        let mut result = Ok(());
        for e in batch.events.iter() {
            result = serde_json::to_writer(&mut out, &edr_event::ecs::event_to_ecs(e, &ctx)).map_err(std::io::Error::from).and_then(|_| out.write_all(b"\n"));
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result.and_then(|_| out.flush()) {
            tracing::error!(path = %path.display(), "cannot write events: {e}");
        }
    }))
}

/// This host's name, for `host.hostname`.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
