//! The events a plugin sees: borrowed views into the batch the agent sent.
//!
//! The agent sends a batch's strings once (see `on-events` in the contract);
//! these types resolve them without copying. A `&str` field borrows the
//! batch's text, and a [`Strs`] (argv, ancestry) is a list of such strings.
//! Views live as long as the batch: copy out (`.to_string()`) what a
//! detector keeps between batches.

use crate::bindings::edr::plugin::types as wit;
use crate::matchers::basename;
use std::fmt;

pub use wit::{
    Action, Config, DataFile, Decision, EventKind, FileOp, Finding, KillTarget, LogLevel, NetworkOp, PluginInfo, ProcessExit, ProcessInfo, Severity, Transport,
};

/// A list of strings of the batch (argv, ancestry). Cheap to copy.
#[derive(Clone, Copy)]
pub struct Strs<'a> {
    text: &'a str,
    /// (offset, len) pairs into `text`.
    refs: &'a [[u32; 2]],
}

fn resolve(text: &str, r: wit::StrRef) -> &str {
    slice(text, r.offset, r.len)
}

fn slice(text: &str, offset: u32, len: u32) -> &str {
    text.get(offset as usize..offset as usize + len as usize).unwrap_or("")
}

impl<'a> Strs<'a> {
    fn new(text: &'a str, lists: &'a [[u32; 2]], l: wit::StrList) -> Self {
        let refs = lists.get(l.first as usize..l.first as usize + l.count as usize).unwrap_or(&[]);
        Strs { text, refs }
    }

    /// An empty list.
    pub const fn empty() -> Strs<'static> {
        Strs { text: "", refs: &[] }
    }

    /// Number of strings.
    pub fn len(&self) -> usize {
        self.refs.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }

    /// The string at `i`.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        self.refs.get(i).map(|[o, l]| slice(self.text, *o, *l))
    }

    /// The first string.
    pub fn first(&self) -> Option<&'a str> {
        self.get(0)
    }

    /// The last string.
    pub fn last(&self) -> Option<&'a str> {
        self.refs.last().map(|[o, l]| slice(self.text, *o, *l))
    }

    /// The strings, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &'a str> + DoubleEndedIterator + 'a {
        let text = self.text;
        self.refs.iter().map(move |[o, l]| slice(text, *o, *l))
    }

    /// True when one of the strings equals `s`.
    pub fn contains(&self, s: &str) -> bool {
        self.iter().any(|x| x == s)
    }

    /// The strings joined by `sep` (argv joined by spaces is the command line).
    pub fn join(&self, sep: &str) -> String {
        let mut out = String::new();
        for (i, s) in self.iter().enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            out.push_str(s);
        }
        out
    }

    /// The strings as a vector.
    pub fn to_vec(&self) -> Vec<&'a str> {
        self.iter().collect()
    }
}

impl<'a> IntoIterator for Strs<'a> {
    type Item = &'a str;
    type IntoIter = Box<dyn ExactSizeIterator<Item = &'a str> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.refs.iter().map(move |[o, l]| slice(self.text, *o, *l)))
    }
}

impl fmt::Debug for Strs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq<[&str]> for Strs<'_> {
    fn eq(&self, other: &[&str]) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a == *b)
    }
}

/// A program started (execve).
#[derive(Debug, Clone, Copy)]
pub struct ProcessExec<'a> {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Stable identity (survives pid reuse).
    pub entity_id: u64,
    /// The parent's entity id, 0 when unknown.
    pub parent_entity_id: u64,
    /// Absolute path of the executable.
    pub exe: &'a str,
    /// Arguments, `argv[0]` first.
    pub argv: Strs<'a>,
    /// Working directory.
    pub cwd: &'a str,
    /// Real user id.
    pub uid: u32,
    /// User name, empty when unresolved.
    pub user: &'a str,
    /// Start time, ns since the epoch.
    pub start_time: u64,
    /// The parent's executable path.
    pub parent_exe: &'a str,
    /// The parent's arguments.
    pub parent_argv: Strs<'a>,
    /// Executable paths of the ancestors, parent first.
    pub ancestry: Strs<'a>,
}

/// A change to (or a read of) a file.
#[derive(Debug, Clone, Copy)]
pub struct FileEvent<'a> {
    /// What happened.
    pub op: FileOp,
    /// Absolute path of the file.
    pub path: &'a str,
    /// The previous path of a renamed file.
    pub old_path: Option<&'a str>,
    /// `st_mode` after the change, where known.
    pub mode: Option<u32>,
    /// Process id.
    pub pid: Option<u32>,
    /// Entity id of the acting process, where known.
    pub entity_id: Option<u64>,
    /// Executable path of the acting process, where known.
    pub exe: Option<&'a str>,
    /// Real user id.
    pub uid: Option<u32>,
}

/// A network connection or listener.
#[derive(Debug, Clone, Copy)]
pub struct NetworkEvent<'a> {
    /// What happened.
    pub op: NetworkOp,
    /// TCP or UDP.
    pub transport: Transport,
    /// Local address.
    pub local_ip: &'a str,
    /// Local port.
    pub local_port: u16,
    /// Remote address (empty for listeners).
    pub remote_ip: &'a str,
    /// Remote port (0 for listeners).
    pub remote_port: u16,
    /// Process id.
    pub pid: Option<u32>,
    /// Entity id of the acting process, where known.
    pub entity_id: Option<u64>,
    /// Executable path of the acting process, where known.
    pub exe: Option<&'a str>,
    /// Real user id.
    pub uid: Option<u32>,
}

/// A login attempt.
#[derive(Debug, Clone, Copy)]
pub struct LoginEvent<'a> {
    /// User name.
    pub user: &'a str,
    /// Remote address of a network login.
    pub source_ip: Option<&'a str>,
    /// The service that handled it, e.g. `sshd`.
    pub service: &'a str,
    /// e.g. `password`, `publickey`.
    pub method: &'a str,
    /// Whether the login succeeded.
    pub success: bool,
    /// Process id.
    pub pid: Option<u32>,
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, Copy)]
pub enum EventBody<'a> {
    /// A program started.
    ProcessExec(ProcessExec<'a>),
    /// A process ended.
    ProcessExit(ProcessExit),
    /// A file changed (or was read).
    File(FileEvent<'a>),
    /// A connection or listener.
    Network(NetworkEvent<'a>),
    /// A login attempt.
    Login(LoginEvent<'a>),
}

/// One endpoint event.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Unique id; findings refer to it.
    pub id: u64,
    /// Nanoseconds since the Unix epoch.
    pub time: u64,
    /// The collector could not gather every field.
    pub partial: bool,
    /// The kind-specific part.
    pub body: EventBody<'a>,
}

/// Resolves a batch in wire form into views.
pub(crate) fn decode<'a>(text: &'a str, lists: &'a [u32], events: &'a [wit::Event]) -> Vec<Event<'a>> {
    let (lists, _) = lists.as_chunks::<2>();
    let s = |r: wit::StrRef| resolve(text, r);
    let l = |x: wit::StrList| Strs::new(text, lists, x);
    events
        .iter()
        .map(|e| Event {
            id: e.id,
            time: e.time,
            partial: e.partial,
            body: match &e.body {
                wit::EventBody::ProcessExec(x) => EventBody::ProcessExec(ProcessExec {
                    pid: x.pid,
                    ppid: x.ppid,
                    entity_id: x.entity_id,
                    parent_entity_id: x.parent_entity_id,
                    exe: s(x.exe),
                    argv: l(x.argv),
                    cwd: s(x.cwd),
                    uid: x.uid,
                    user: s(x.user),
                    start_time: x.start_time,
                    parent_exe: s(x.parent_exe),
                    parent_argv: l(x.parent_argv),
                    ancestry: l(x.ancestry),
                }),
                wit::EventBody::ProcessExit(x) => EventBody::ProcessExit(*x),
                wit::EventBody::File(f) => EventBody::File(FileEvent {
                    op: f.op,
                    path: s(f.path),
                    old_path: f.old_path.map(s),
                    mode: f.mode,
                    pid: f.pid,
                    entity_id: f.entity_id,
                    exe: f.exe.map(s),
                    uid: f.uid,
                }),
                wit::EventBody::Network(n) => EventBody::Network(NetworkEvent {
                    op: n.op,
                    transport: n.transport,
                    local_ip: s(n.local_ip),
                    local_port: n.local_port,
                    remote_ip: s(n.remote_ip),
                    remote_port: n.remote_port,
                    pid: n.pid,
                    entity_id: n.entity_id,
                    exe: n.exe.map(s),
                    uid: n.uid,
                }),
                wit::EventBody::Login(x) => EventBody::Login(LoginEvent {
                    user: s(x.user),
                    source_ip: x.source_ip.map(s),
                    service: s(x.service),
                    method: s(x.method),
                    success: x.success,
                    pid: x.pid,
                }),
            },
        })
        .collect()
}

impl<'a> Event<'a> {
    /// The kind of this event.
    pub fn kind(&self) -> EventKind {
        match self.body {
            EventBody::ProcessExec(_) => EventKind::ProcessExec,
            EventBody::ProcessExit(_) => EventKind::ProcessExit,
            EventBody::File(_) => EventKind::File,
            EventBody::Network(_) => EventKind::Network,
            EventBody::Login(_) => EventKind::Login,
        }
    }

    /// The exec record, if this is a process exec.
    pub fn exec(&self) -> Option<&ProcessExec<'a>> {
        match &self.body {
            EventBody::ProcessExec(e) => Some(e),
            _ => None,
        }
    }

    /// The exit record, if this is a process exit.
    pub fn exit(&self) -> Option<&ProcessExit> {
        match &self.body {
            EventBody::ProcessExit(e) => Some(e),
            _ => None,
        }
    }

    /// The file record, if this is a file event.
    pub fn file(&self) -> Option<&FileEvent<'a>> {
        match &self.body {
            EventBody::File(e) => Some(e),
            _ => None,
        }
    }

    /// The network record, if this is a network event.
    pub fn network(&self) -> Option<&NetworkEvent<'a>> {
        match &self.body {
            EventBody::Network(e) => Some(e),
            _ => None,
        }
    }

    /// The login record, if this is a login event.
    pub fn login(&self) -> Option<&LoginEvent<'a>> {
        match &self.body {
            EventBody::Login(e) => Some(e),
            _ => None,
        }
    }
}

impl<'a> ProcessExec<'a> {
    /// File name of the executable (`bash` for `/usr/bin/bash`).
    pub fn name(&self) -> &'a str {
        basename(self.exe)
    }

    /// File name of the parent's executable.
    pub fn parent_name(&self) -> &'a str {
        basename(self.parent_exe)
    }

    /// The arguments joined by spaces, as ECS `process.command_line`.
    pub fn command_line(&self) -> String {
        self.argv.join(" ")
    }

    /// The parent's arguments joined by spaces.
    pub fn parent_command_line(&self) -> String {
        self.parent_argv.join(" ")
    }

    /// The argument after the first occurrence of `flag` (e.g. the code after `-c`).
    pub fn arg_after(&self, flag: &str) -> Option<&'a str> {
        let pos = self.argv.iter().skip(1).position(|a| a == flag)?;
        self.argv.get(pos + 2)
    }

    /// True when any ancestor's executable file name satisfies `pred`.
    pub fn any_ancestor(&self, mut pred: impl FnMut(&str) -> bool) -> bool {
        self.ancestry.iter().any(|exe| pred(basename(exe)))
    }
}

impl<'a> FileEvent<'a> {
    /// File name of the path.
    pub fn name(&self) -> &'a str {
        basename(self.path)
    }

    /// File name of the writing process's executable, if known.
    pub fn process_name(&self) -> Option<&'a str> {
        self.exe.map(basename)
    }
}

impl<'a> NetworkEvent<'a> {
    /// File name of the process's executable, if known.
    pub fn process_name(&self) -> Option<&'a str> {
        self.exe.map(basename)
    }

    /// True when the remote address is loopback or unspecified.
    pub fn remote_is_local(&self) -> bool {
        let ip = self.remote_ip;
        ip.is_empty() || ip.starts_with("127.") || ip == "::1" || ip == "0.0.0.0" || ip == "::" || ip.starts_with("::ffff:127.")
    }
}

impl Config {
    /// The value of a setting.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A boolean setting (`true`/`false`/`1`/`0`/`yes`/`no`), or `default`.
    pub fn get_bool(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                other => Err(format!("setting `{key}`: `{other}` is not a boolean")),
            },
        }
    }

    /// A comma-separated list setting, trimmed, empty items dropped.
    pub fn get_list(&self, key: &str) -> Vec<String> {
        self.get(key).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default()
    }

    /// The content of a data file shipped with the pack.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|f| f.name == name).map(|f| f.content.as_slice())
    }
}

impl Finding {
    /// Adds a piece of evidence.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.evidence.push((key.into(), value.into()));
        self
    }
}

impl EventKind {
    /// The name used in the contract and in manifests (`process-exec`, `file`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ProcessExec => "process-exec",
            EventKind::ProcessExit => "process-exit",
            EventKind::File => "file",
            EventKind::Network => "network",
            EventKind::Login => "login",
        }
    }
}

impl Severity {
    /// The Sigma level name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod native {
    //! The agent's wire form (edr-event) as the SDK's generated types, for the harness.
    use super::wit;
    use edr_event::wire as w;

    fn r(x: w::StrRef) -> wit::StrRef {
        wit::StrRef { offset: x.offset, len: x.len }
    }

    fn l(x: w::StrList) -> wit::StrList {
        wit::StrList { first: x.first, count: x.count }
    }

    fn file_op(op: edr_event::FileOp) -> wit::FileOp {
        use edr_event::FileOp as F;
        match op {
            F::Create => wit::FileOp::Create,
            F::Modify => wit::FileOp::Modify,
            F::Delete => wit::FileOp::Delete,
            F::Rename => wit::FileOp::Rename,
            F::Chmod => wit::FileOp::Chmod,
            F::Attrib => wit::FileOp::Attrib,
            F::Read => wit::FileOp::Read,
        }
    }

    /// `(text, lists, events)` in the SDK's generated types.
    pub fn batch(b: &w::EncodedBatch) -> (String, Vec<u32>, Vec<wit::Event>) {
        let events = b
            .events
            .iter()
            .map(|e| wit::Event {
                id: e.id,
                time: e.time,
                partial: e.partial,
                body: match &e.body {
                    w::WireBody::ProcessExec(x) => wit::EventBody::ProcessExec(wit::ProcessExec {
                        pid: x.pid,
                        ppid: x.ppid,
                        entity_id: x.entity_id,
                        parent_entity_id: x.parent_entity_id,
                        exe: r(x.exe),
                        argv: l(x.argv),
                        cwd: r(x.cwd),
                        uid: x.uid,
                        user: r(x.user),
                        start_time: x.start_time,
                        parent_exe: r(x.parent_exe),
                        parent_argv: l(x.parent_argv),
                        ancestry: l(x.ancestry),
                    }),
                    w::WireBody::ProcessExit(x) => wit::EventBody::ProcessExit(wit::ProcessExit { pid: x.pid, entity_id: x.entity_id, exit_code: x.exit_code }),
                    w::WireBody::File(f) => wit::EventBody::File(wit::FileEvent {
                        op: file_op(f.op),
                        path: r(f.path),
                        old_path: f.old_path.map(r),
                        mode: f.mode,
                        pid: f.pid,
                        entity_id: f.entity_id,
                        exe: f.exe.map(r),
                        uid: f.uid,
                    }),
                    w::WireBody::Network(n) => wit::EventBody::Network(wit::NetworkEvent {
                        op: match n.op {
                            edr_event::NetworkOp::Connect => wit::NetworkOp::Connect,
                            edr_event::NetworkOp::Accept => wit::NetworkOp::Accept,
                            edr_event::NetworkOp::Listen => wit::NetworkOp::Listen,
                        },
                        transport: match n.transport {
                            edr_event::Transport::Tcp => wit::Transport::Tcp,
                            edr_event::Transport::Udp => wit::Transport::Udp,
                        },
                        local_ip: r(n.local_ip),
                        local_port: n.local_port,
                        remote_ip: r(n.remote_ip),
                        remote_port: n.remote_port,
                        pid: n.pid,
                        entity_id: n.entity_id,
                        exe: n.exe.map(r),
                        uid: n.uid,
                    }),
                    w::WireBody::Login(x) => wit::EventBody::Login(wit::LoginEvent {
                        user: r(x.user),
                        source_ip: x.source_ip.map(r),
                        service: r(x.service),
                        method: r(x.method),
                        success: x.success,
                        pid: x.pid,
                    }),
                },
            })
            .collect();
        (b.text.clone(), b.lists.clone(), events)
    }

    /// Decodes a batch natively into views (for benchmarks and the harness).
    pub fn with_views<R>(b: &w::EncodedBatch, f: impl FnOnce(&[super::Event<'_>]) -> R) -> R {
        let (text, lists, events) = batch(b);
        let views = super::decode(&text, &lists, &events);
        f(&views)
    }
}
