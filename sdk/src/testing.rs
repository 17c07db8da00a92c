//! Native test harness: run a [`Detector`] on events or ECS JSONL fixtures
//! with `cargo test`, no Wasm needed.
//!
//! Fixtures are read by the agent's own ECS parser and events are packed by
//! the agent's own batch encoder, so a fixture means the same here as in
//! `edr replay`. The harness does what the agent does around a plugin: it
//! numbers events, passes only subscribed kinds, and answers host calls
//! (`log`, `state`, `ancestry`, `request`) from memory.
//!
//! Test events are the agent's owned model ([`model::Event`]); build them
//! with [`exec`], [`file`] and [`connect`], or read them from ECS JSONL.
//!
//! ```
//! use edr_sdk::testing::{exec, Harness};
//! # use edr_sdk::prelude::*;
//! # #[derive(Default)] struct D;
//! # impl Detector for D {
//! #   const NAME: &'static str = "d"; const VERSION: &'static str = "0";
//! #   const SUBSCRIPTIONS: &'static [EventKind] = &[EventKind::ProcessExec];
//! #   fn init(_: &Config) -> Result<Self, String> { Ok(D) }
//! #   fn on_event(&mut self, _: &Event<'_>, _: &mut Findings) {}
//! # }
//! let mut h = Harness::<D>::new().unwrap();
//! let findings = h.run_jsonl(r#"{"process":{"executable":"/bin/true","args":["true"]}}"#);
//! assert!(findings.is_empty());
//! ```

use crate::detector::{Detector, Findings};
use crate::host::native;
use crate::types::{native as wire, Action, Config, Decision, Finding, LogLevel, ProcessInfo};
use std::path::Path;

/// The agent's event model, used for test input.
pub use edr_event as model;
use model::{Event, EventBody, FileEvent, FileOp, NetworkEvent, NetworkOp, ProcessExec, Transport};

/// Runs a detector natively the way the agent would.
pub struct Harness<D: Detector> {
    detector: D,
    next_id: u64,
}

impl<D: Detector> Harness<D> {
    /// A harness with an empty configuration.
    pub fn new() -> Result<Self, String> {
        Self::with_config(Config { settings: Vec::new(), files: Vec::new() })
    }

    /// A harness with the given settings.
    pub fn with_settings(settings: &[(&str, &str)]) -> Result<Self, String> {
        Self::with_config(Config { settings: settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), files: Vec::new() })
    }

    /// A harness with a full configuration (settings and data files).
    pub fn with_config(config: Config) -> Result<Self, String> {
        native::with(|h| *h = native::MockHost::default());
        let detector = D::init(&config)?;
        Ok(Self { detector, next_id: 1 })
    }

    /// Runs events through the detector. Events with id 0 are numbered; kinds
    /// the detector did not subscribe to are skipped, as in the agent.
    pub fn run(&mut self, events: &[Event]) -> Vec<Finding> {
        let mut batch = Vec::with_capacity(events.len());
        for e in events {
            let mut e = e.clone();
            if e.id == 0 {
                e.id = self.next_id;
            }
            self.next_id = self.next_id.max(e.id) + 1;
            if let EventBody::ProcessExec(x) = &e.body {
                remember_process(x);
            }
            if D::SUBSCRIPTIONS.iter().any(|k| k.as_str() == e.kind().as_str()) {
                batch.push(e);
            }
        }
        let mut findings = Findings::new();
        if !batch.is_empty() {
            let encoded = EncodedBatch::encode(&batch);
            wire::with_views(&encoded, |views| self.detector.on_events(views, &mut findings));
        }
        findings.into_vec()
    }

    /// Runs ECS JSONL text (one event per line; blank lines and lines starting
    /// with `#` are skipped). Panics naming the line on a malformed line.
    pub fn run_jsonl(&mut self, jsonl: &str) -> Vec<Finding> {
        let events = events_from_jsonl(jsonl).unwrap_or_else(|e| panic!("{e}"));
        self.run(&events)
    }

    /// Runs an ECS JSONL fixture file (path relative to the crate root).
    pub fn run_fixture(&mut self, path: impl AsRef<Path>) -> Vec<Finding> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
        let events = events_from_jsonl(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        self.run(&events)
    }

    /// The detector, for assertions on its state.
    pub fn detector(&self) -> &D {
        &self.detector
    }

    /// Lines the plugin logged so far.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        native::with(|h| h.logs.clone())
    }

    /// Actions the plugin requested so far, with their reasons.
    pub fn actions(&self) -> Vec<(Action, String)> {
        native::with(|h| h.actions.clone())
    }

    /// Sets what the stand-in policy answers to action requests (default: simulated).
    pub fn set_decision(&mut self, decision: Decision) {
        native::with(|h| h.decision = decision);
    }

    /// Sets the clock the plugin sees (nanoseconds since the epoch).
    pub fn set_now(&mut self, now: u64) {
        native::with(|h| h.now = now);
    }
}

fn remember_process(x: &ProcessExec) {
    native::with(|h| {
        let info = ProcessInfo { pid: x.pid, entity_id: x.entity_id, exe: x.exe.clone(), argv: x.argv.clone(), uid: x.uid, start_time: x.start_time };
        h.processes.insert(x.entity_id, (info, x.parent_entity_id));
    });
}

/// Parses ECS JSONL into events. Blank lines and `#` comments are skipped;
/// an error names the 1-based line number.
pub fn events_from_jsonl(text: &str) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let e = edr_event::ecs::event_from_json(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(e);
    }
    Ok(out)
}

/// Builds an exec event: `exec("/usr/bin/bash", &["bash", "-i"]).parent("/usr/sbin/nginx", &["nginx"]).build()`.
pub fn exec(exe: &str, argv: &[&str]) -> ExecBuilder {
    ExecBuilder(ProcessExec {
        pid: 4242,
        ppid: 4200,
        entity_id: 0x4242,
        parent_entity_id: 0x4200,
        exe: exe.to_string(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        cwd: "/".to_string(),
        uid: 1000,
        gid: 1000,
        user: "user".to_string(),
        start_time: 1_700_000_000_000_000_000,
        ..Default::default()
    })
}

/// Builder for exec events in tests.
pub struct ExecBuilder(ProcessExec);

impl ExecBuilder {
    /// Sets the parent; the parent's exe also becomes the first ancestor.
    pub fn parent(mut self, exe: &str, argv: &[&str]) -> Self {
        self.0.parent_exe = exe.to_string();
        self.0.parent_argv = argv.iter().map(|s| s.to_string()).collect();
        if self.0.ancestry.is_empty() {
            self.0.ancestry.push(exe.to_string());
        } else {
            self.0.ancestry[0] = exe.to_string();
        }
        self
    }

    /// Sets the ancestry (parent first); the parent exe follows the first entry.
    pub fn ancestry(mut self, exes: &[&str]) -> Self {
        self.0.ancestry = exes.iter().map(|s| s.to_string()).collect();
        if let Some(first) = exes.first() {
            self.0.parent_exe = first.to_string();
        }
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, cwd: &str) -> Self {
        self.0.cwd = cwd.to_string();
        self
    }

    /// Sets uid and user name.
    pub fn user(mut self, uid: u32, name: &str) -> Self {
        self.0.uid = uid;
        self.0.user = name.to_string();
        self
    }

    /// Sets pid and ppid.
    pub fn pid(mut self, pid: u32, ppid: u32) -> Self {
        self.0.pid = pid;
        self.0.ppid = ppid;
        self
    }

    /// The event (id 0: the harness numbers it).
    pub fn build(self) -> Event {
        Event { id: 0, time: self.0.start_time, partial: false, body: EventBody::ProcessExec(self.0) }
    }
}

/// Builds a file event: `file(FileOp::Modify, "/etc/passwd").by(77, "/usr/bin/vi").build()`.
pub fn file(op: FileOp, path: &str) -> FileBuilder {
    FileBuilder(FileEvent { op, path: path.to_string(), old_path: None, mode: None, pid: None, entity_id: None, exe: None, uid: None })
}

/// Builder for file events in tests.
pub struct FileBuilder(FileEvent);

impl FileBuilder {
    /// Attributes the event to a process.
    pub fn by(mut self, pid: u32, exe: &str) -> Self {
        self.0.pid = Some(pid);
        self.0.exe = Some(exe.to_string());
        self
    }

    /// Sets the mode bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.0.mode = Some(mode);
        self
    }

    /// Sets the old path of a rename.
    pub fn renamed_from(mut self, old: &str) -> Self {
        self.0.old_path = Some(old.to_string());
        self
    }

    /// The event.
    pub fn build(self) -> Event {
        Event { id: 0, time: 1_700_000_000_000_000_000, partial: false, body: EventBody::File(self.0) }
    }
}

/// Builds an outbound TCP connection event from `exe` to `remote_ip:port`.
pub fn connect(exe: &str, remote_ip: &str, remote_port: u16) -> Event {
    Event {
        id: 0,
        time: 1_700_000_000_000_000_000,
        partial: false,
        body: EventBody::Network(NetworkEvent {
            op: NetworkOp::Connect,
            transport: Transport::Tcp,
            local_ip: "10.0.0.2".to_string(),
            local_port: 40000,
            remote_ip: remote_ip.to_string(),
            remote_port,
            pid: Some(4242),
            entity_id: Some(0x4242),
            exe: Some(exe.to_string()),
            uid: Some(1000),
            netns: None,
            bytes_sent: None,
            bytes_received: None,
        }),
    }
}

/// Builds the close of an outbound TCP connection from `exe` to
/// `remote_ip:port` that sent and received these byte counts (TCP sequence
/// space, as the eBPF collector reports them).
pub fn close(exe: &str, remote_ip: &str, remote_port: u16, bytes_sent: u64, bytes_received: u64) -> Event {
    let mut e = connect(exe, remote_ip, remote_port);
    if let EventBody::Network(n) = &mut e.body {
        n.op = NetworkOp::Close;
        n.bytes_sent = Some(bytes_sent);
        n.bytes_received = Some(bytes_received);
    }
    e
}

/// A batch in wire form, in the SDK's generated types (what a plugin
/// receives in `on-events`), packed by the agent's own encoder:
/// `EncodedBatch::encode(&events)`.
pub use crate::types::native::EncodedBatch;

/// The three arguments of `on-events` for a batch. For benchmarks that call
/// detectors natively.
pub fn wire_batch(b: &EncodedBatch) -> (String, Vec<u32>, Vec<crate::bindings::edr::plugin::types::Event>) {
    (b.text.clone(), b.lists.clone(), b.events.clone())
}

/// Views over a batch in wire form (what the export glue hands a detector).
pub fn decode<'a>(text: &'a str, lists: &'a [u32], events: &'a [crate::bindings::edr::plugin::types::Event]) -> Vec<crate::Event<'a>> {
    crate::types::decode(text, lists, events)
}
