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
    /// Effective group id, 0 when unknown.
    pub gid: u32,
    /// cgroup v2 id, 0 when unknown.
    pub cgroup_id: u64,
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

/// A network connection, listener, or the close of a TCP connection.
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
    /// Network namespace (inode), where known: tells a container's connections from the host's.
    pub netns: Option<u64>,
    /// [`NetworkOp::Close`] only: TCP sequence space sent and acknowledged
    /// (the payload, plus 1 for the SYN of an outbound connection and 1 for
    /// our FIN once acknowledged).
    pub bytes_sent: Option<u64>,
    /// [`NetworkOp::Close`] only: TCP sequence space received (the payload,
    /// plus 1 for the peer's FIN when it came before the close).
    pub bytes_received: Option<u64>,
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

/// Resolves a batch in wire form into views. Every generated record is
/// destructured exhaustively: a field added to the WIT fails to compile here
/// until the view carries it.
pub(crate) fn decode<'a>(text: &'a str, lists: &'a [u32], events: &'a [wit::Event]) -> Vec<Event<'a>> {
    let (lists, _) = lists.as_chunks::<2>();
    let s = |r: wit::StrRef| resolve(text, r);
    let l = |x: wit::StrList| Strs::new(text, lists, x);
    events
        .iter()
        .map(|&wit::Event { id, time, partial, body }| Event {
            id,
            time,
            partial,
            body: match body {
                wit::EventBody::ProcessExec(wit::ProcessExec {
                    pid,
                    ppid,
                    entity_id,
                    parent_entity_id,
                    exe,
                    argv,
                    cwd,
                    uid,
                    gid,
                    cgroup_id,
                    user,
                    start_time,
                    parent_exe,
                    parent_argv,
                    ancestry,
                }) => EventBody::ProcessExec(ProcessExec {
                    pid,
                    ppid,
                    entity_id,
                    parent_entity_id,
                    exe: s(exe),
                    argv: l(argv),
                    cwd: s(cwd),
                    uid,
                    gid,
                    cgroup_id,
                    user: s(user),
                    start_time,
                    parent_exe: s(parent_exe),
                    parent_argv: l(parent_argv),
                    ancestry: l(ancestry),
                }),
                wit::EventBody::ProcessExit(x) => EventBody::ProcessExit(x),
                wit::EventBody::File(wit::FileEvent { op, path, old_path, mode, pid, entity_id, exe, uid }) => {
                    EventBody::File(FileEvent { op, path: s(path), old_path: old_path.map(s), mode, pid, entity_id, exe: exe.map(s), uid })
                }
                wit::EventBody::Network(wit::NetworkEvent {
                    op,
                    transport,
                    local_ip,
                    local_port,
                    remote_ip,
                    remote_port,
                    pid,
                    entity_id,
                    exe,
                    uid,
                    netns,
                    bytes_sent,
                    bytes_received,
                }) => EventBody::Network(NetworkEvent {
                    op,
                    transport,
                    local_ip: s(local_ip),
                    local_port,
                    remote_ip: s(remote_ip),
                    remote_port,
                    pid,
                    entity_id,
                    exe: exe.map(s),
                    uid,
                    netns,
                    bytes_sent,
                    bytes_received,
                }),
                wit::EventBody::Login(wit::LoginEvent { user, source_ip, service, method, success, pid }) => {
                    EventBody::Login(LoginEvent { user: s(user), source_ip: source_ip.map(s), service: s(service), method: s(method), success, pid })
                }
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
    //! The agent's batch encoder, expanded against the SDK's generated types:
    //! the harness packs test events exactly as the agent does, into what a
    //! plugin receives, with no converter between the two.
    use super::wit;

    edr_event::bridge_enums!(wit);
    edr_event::wire_encoder!(wit);

    /// A batch in wire form, in the SDK's generated types.
    pub type EncodedBatch = edr_event::wire::Batch<wit::Event>;

    /// Decodes a batch natively into views (for the harness).
    pub fn with_views<R>(b: &EncodedBatch, f: impl FnOnce(&[super::Event<'_>]) -> R) -> R {
        let views = super::decode(&b.text, &b.lists, &b.events);
        f(&views)
    }

    #[cfg(test)]
    mod tests {
        use super::wit;

        /// The SDK's name tables (which must exist in Wasm, without
        /// edr-event) agree with the agent's.
        #[test]
        fn names_agree_with_the_agent() {
            for k in edr_event::EventKind::ALL {
                assert_eq!(wit::EventKind::from(*k).as_str(), k.as_str());
            }
            for s in edr_event::Severity::ALL {
                assert_eq!(wit::Severity::from(*s).as_str(), s.as_str());
            }
        }
    }
}
