//! Event sources: the live collectors, ECS JSONL on stdin or in a file, or
//! a channel a caller feeds (tests, embedding). Every source produces
//! [`edr_event::Event`]s for the pipeline.

pub mod jsonl;

use crate::config::{AgentConfig, EventSource};
use anyhow::Context;
use crossbeam_channel::Receiver;
use edr_event::Event;
use jsonl::{JsonlReader, Line};
use std::io::BufRead;

/// A started source.
pub struct Source {
    /// The events; closed when the source ends (never, for `live`).
    pub events: Receiver<Event>,
    /// The collectors, when the source is `live`.
    pub collectors: Option<edr_collect::Collectors>,
}

impl Source {
    /// Starts what `[collect]` asks for: the collectors, or a thread reading
    /// stdin or the file.
    pub fn start(cfg: &AgentConfig) -> anyhow::Result<Source> {
        let (tx, rx) = crossbeam_channel::bounded(cfg.collect.queue);
        let input = match &cfg.collect.source {
            EventSource::Live => {
                let collectors = edr_collect::Collectors::start(cfg.collect.collect_config(&cfg.data_dir), tx).context("starting the collectors")?;
                for s in collectors.status() {
                    tracing::info!(collector = s.name, mode = %s.mode, "collector started");
                }
                return Ok(Source { events: rx, collectors: Some(collectors) });
            }
            EventSource::Stdin => None,
            EventSource::File(path) => Some(path.clone()),
        };
        let name = cfg.collect.source.to_string();
        std::thread::Builder::new().name("edr-source".into()).spawn(move || {
            let input: Box<dyn BufRead> = match &input {
                None => Box::new(std::io::stdin().lock()),
                Some(path) => match std::fs::File::open(path) {
                    Ok(f) => Box::new(std::io::BufReader::new(f)),
                    Err(e) => {
                        tracing::error!("cannot open event source {}: {e}", path.display());
                        return;
                    }
                },
            };
            for line in JsonlReader::new(input) {
                match line {
                    Ok(Line::Event(e)) => {
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                    Ok(Line::Malformed { line, error }) => tracing::warn!(source = %name, "line {line}: skipped: {error}"),
                    Err(e) => {
                        tracing::error!(source = %name, "read error: {e}");
                        return;
                    }
                }
            }
        })?;
        Ok(Source { events: rx, collectors: None })
    }

    /// A source fed by the caller through the other end of `events`.
    pub fn channel(events: Receiver<Event>) -> Source {
        Source { events, collectors: None }
    }

    /// Ancestry lookups from the collectors' process tree, when they run.
    pub fn ancestry(&self) -> Option<crate::services::AncestrySource> {
        let tree = self.collectors.as_ref()?.process_tree();
        Some(std::sync::Arc::new(move |entity| tree.ancestry(entity)))
    }
}
