//! Alert outputs: standard output and a JSONL file, one ECS document a line,
//! and the outputs that leave the host (syslog, webhook, NATS: `edr-output`),
//! which spool or queue and never block this thread.

use anyhow::Context;
use edr_event::ecs::{alert_to_ecs, EcsContext};
use edr_event::Alert;
use edr_output::{AlertOutput, OutgoingAlert};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Writes alerts to the configured outputs.
pub struct AlertWriter {
    ctx: EcsContext,
    stdout: bool,
    file: Option<BufWriter<File>>,
    store: Option<edr_store::StoreWriter>,
    remote: RemoteOutputs,
    written: u64,
    /// Groups alerts into incidents (`None`: every alert to every output).
    incidents: Option<crate::incidents::IncidentTagger>,
}

/// The running remote outputs, shared with status.
#[derive(Clone, Default)]
pub struct RemoteOutputs(Arc<Mutex<Vec<Box<dyn AlertOutput>>>>);

impl RemoteOutputs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<dyn AlertOutput>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What each output did, for `edr status` and metrics.
    pub fn status(&self) -> Vec<edr_output::OutputStatus> {
        self.lock().iter().map(|o| o.status()).collect()
    }

    /// Stops every output (spooled alerts stay for the next start).
    fn shutdown(&self, deadline: Duration) {
        for o in self.lock().iter_mut() {
            o.shutdown(deadline);
        }
    }
}

/// How long stopping (or reloading) waits for the remote outputs to deliver.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(2);

impl AlertWriter {
    /// Outputs: stdout when `stdout`, and the JSONL file at `file` (appended).
    pub fn new(stdout: bool, file: Option<&Path>) -> anyhow::Result<Self> {
        Ok(Self {
            ctx: EcsContext { hostname: hostname() },
            stdout,
            file: open_alerts_file(file)?,
            store: None,
            remote: RemoteOutputs::default(),
            written: 0,
            incidents: None,
        })
    }

    /// Starts the remote outputs `cfg` names (`[output.syslog]`, ...).
    pub fn with_remote(self, cfg: &edr_output::OutputsConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let outputs = edr_output::build(cfg, data_dir, self.ctx.hostname.as_deref().unwrap_or("localhost")).context("starting the alert outputs")?;
        *self.remote.lock() = outputs;
        Ok(self)
    }

    /// The remote outputs, for status.
    pub fn remote(&self) -> RemoteOutputs {
        self.remote.clone()
    }

    /// Replaces the outputs (a config reload): the alert thread calls this
    /// between two alerts, with outputs opened beforehand by [`OutputSet::open`].
    pub fn install(&mut self, set: OutputSet) {
        if let Some(old) = &mut self.file {
            let _ = old.flush();
        }
        self.stdout = set.stdout;
        self.file = set.file;
        // The old remote outputs stop first: the new ones reopen their spools.
        self.remote.shutdown(SHUTDOWN_DEADLINE);
        let host = self.ctx.hostname.clone().unwrap_or_else(|| "localhost".into());
        let outputs = match edr_output::build(&set.remote, &set.data_dir, &host) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(
                    "alert outputs not restarted after the reload: {e}; alerts still go to stdout/the alerts file as configured, and spooled ones wait on disk"
                );
                Vec::new()
            }
        };
        *self.remote.lock() = outputs;
    }

    /// Flushes every output; called once when the agent stops.
    pub fn shutdown(&mut self) {
        if let Some(f) = &mut self.file {
            let _ = f.flush();
        }
        self.remote.shutdown(SHUTDOWN_DEADLINE);
    }

    /// Groups alerts into incidents (`[incidents]`), looking each alert's
    /// process lineage up in `lineage`: outputs get `edr.incident.*`, and
    /// repeats (same rule, same process) go to the record only.
    pub fn with_incidents(mut self, cfg: edr_incident::IncidentConfig, lineage: crate::incidents::LineageSource) -> Self {
        let host = self.ctx.hostname.clone().unwrap_or_else(|| "localhost".into());
        self.incidents = Some(crate::incidents::IncidentTagger::new(cfg, lineage, host));
        self
    }

    /// Repeats not sent to outputs so far (0 without grouping).
    pub fn suppressed(&self) -> u64 {
        self.incidents.as_ref().map_or(0, |t| t.suppressed())
    }

    /// Also records every alert in the store.
    pub fn with_store(mut self, store: edr_store::StoreWriter) -> Self {
        self.store = Some(store);
        self
    }

    /// Writes one alert to every output and the record. The file is flushed
    /// per alert: alerts are rare and must survive a crash.
    /// With grouping, a repeat goes to the record only.
    pub fn write(&mut self, alert: &Alert) -> std::io::Result<()> {
        let tagged = self.incidents.as_mut().map(|t| t.tag(alert));
        let mut doc = alert_to_ecs(alert, &self.ctx);
        if let Some(t) = &tagged {
            crate::incidents::add_ecs_fields(&mut doc, t);
        }
        let result = if tagged.as_ref().is_some_and(|t| t.verdict.suppressed) { Ok(()) } else { self.send(alert, &doc) };
        if let Some(s) = &self.store {
            let queued = match tagged {
                Some(t) => s.append_alert_in(alert, t.record),
                None => s.append_alert(alert),
            };
            if let Err(e) = queued {
                tracing::error!("alert {} not recorded in the store: {e}", alert.id);
            }
        }
        self.written += 1;
        result
    }

    /// Sends one alert's document to stdout, the file and the remote outputs.
    fn send(&mut self, alert: &Alert, doc: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_string(doc).expect("JSON values always serialize");
        line.push('\n');
        if self.stdout {
            let mut out = std::io::stdout().lock();
            match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
                // The reader of stdout went away (`edr agent | head`): stdout
                // output ends, the file, the record and remote outputs go on.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    tracing::warn!(
                        "stdout is a closed pipe: alerts are no longer printed there (the alerts file, the record and remote outputs still get them)"
                    );
                    self.stdout = false;
                }
                r => r?,
            }
        }
        if let Some(f) = &mut self.file {
            f.write_all(line.as_bytes())?;
            f.flush()?;
        }
        {
            let mut remote = self.remote.lock();
            if !remote.is_empty() {
                let out = OutgoingAlert {
                    id: alert.id,
                    json: line.trim_end(),
                    severity: alert.finding.severity.ecs_score(),
                    rule_id: &alert.finding.rule_id,
                    hostname: self.ctx.hostname.as_deref().unwrap_or("localhost"),
                };
                for o in remote.iter_mut() {
                    // Refusals are counted by the output (status shows them).
                    if let Err(e) = o.send(&out) {
                        tracing::warn!(output = o.name(), "alert {} not taken: {e}", alert.id);
                    }
                }
            }
        }
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
    /// Started by [`AlertWriter::install`], after the old ones stop.
    remote: edr_output::OutputsConfig,
    data_dir: std::path::PathBuf,
}

impl OutputSet {
    /// Opens the outputs `cfg` asks for.
    pub fn open(cfg: &crate::config::AgentConfig) -> anyhow::Result<OutputSet> {
        Ok(OutputSet {
            stdout: cfg.output.stdout,
            file: open_alerts_file(cfg.data_path(&cfg.output.alerts_file).as_deref())?,
            remote: cfg.output.remote(),
            data_dir: cfg.data_dir.clone(),
        })
    }
}

/// Opens (appends to) the JSONL alerts file, creating its directory.
fn open_alerts_file(file: Option<&Path>) -> anyhow::Result<Option<BufWriter<File>>> {
    let Some(path) = file else { return Ok(None) };
    // Never through a link, created 0600 (issue 14, items 2 and 8).
    let f = edr_datadir::open_append_path(path).context("cannot open the alerts file")?;
    Ok(Some(BufWriter::new(f)))
}

/// Appends every event of every batch to a JSONL file (ECS documents).
pub fn events_file_tap(path: &Path) -> anyhow::Result<crate::dispatch::BatchTap> {
    let f = edr_datadir::open_append_path(path).context("cannot open the events file")?;
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
