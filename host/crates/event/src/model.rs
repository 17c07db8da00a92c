//! The event model: what collectors produce, the store keeps and ECS renders.
//!
//! Events hold owned strings here. They cross into plugins through
//! [`crate::wire`], which packs a batch's strings into one buffer. The other
//! contract types (findings, config, plugin info, actions, ...) are converted
//! to and from the types generated from `wit/edr-plugin.wit` (with the
//! `wasmtime` feature, in `crate::contract`): the conversions are exhaustive,
//! so a field or variant added to the WIT fails to compile until it is handled.
//!
//! The contract's enums are listed once, in [`__contract_enums!`](crate::__contract_enums):
//! that list defines the enums here and the `From` impls (both ways) against
//! every generated copy (the host's, one per contract version, and the SDK's).

use serde::{Deserialize, Serialize};

/// Nanoseconds since the Unix epoch, UTC.
pub type Timestamp = u64;

macro_rules! wit_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $wit:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[repr(u8)]
        #[serde(rename_all = "kebab-case")]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in contract order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used in the WIT contract, configs and manifests.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wit),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($wit => Ok($name::$variant),)+
                    _ => Err(crate::UnknownName {
                        kind: stringify!($name),
                        given: s.to_string(),
                        expected: &[$($wit),+],
                    }),
                }
            }
        }
    };
}

/// The contract's enums, listed once. `$callback! { [$($arg)*] <the list> }`
/// is expanded: in this module the callback defines the enums; in
/// [`bridge_enums!`](crate::bridge_enums) it writes the `From` impls (both
/// ways, exhaustive) against a module of types generated from the WIT.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_enums {
    ([$($callback:tt)*] $($arg:tt)*) => {
        $($callback)*! { [$($arg)*]
            /// The kinds of endpoint event; plugins subscribe to a subset.
            EventKind {
                ProcessExec = "process-exec",
                ProcessExit = "process-exit",
                File = "file",
                Network = "network",
                Login = "login",
            }
            /// What happened to a file.
            FileOp {
                Create = "create",
                Modify = "modify",
                Delete = "delete",
                Rename = "rename",
                Chmod = "chmod",
                Attrib = "attrib",
                Read = "read",
            }
            /// Direction of a network event.
            NetworkOp {
                /// An outbound connection.
                Connect = "connect",
                /// An inbound connection was accepted.
                Accept = "accept",
                /// A socket started listening.
                Listen = "listen",
            }
            /// Transport protocol.
            Transport {
                Tcp = "tcp",
                Udp = "udp",
            }
            /// Severity of a finding (the Sigma levels).
            Severity {
                Informational = "informational",
                Low = "low",
                Medium = "medium",
                High = "high",
                Critical = "critical",
            }
            /// Level of a plugin's log line.
            LogLevel {
                Trace = "trace",
                Debug = "debug",
                Info = "info",
                Warn = "warn",
                Error = "error",
            }
            /// What the response policy decided about an action request.
            Decision {
                Enforced = "enforced",
                Simulated = "simulated",
                Refused = "refused",
            }
        }
    };
}

/// `From` impls, both ways and exhaustive, between the contract enums of this
/// crate and those of a module generated from the WIT (by wasmtime's
/// `bindgen!` or by `wit-bindgen`), named by `$wit` at the call site: a
/// variant added to the WIT fails to compile until it is added here.
#[macro_export]
macro_rules! bridge_enums {
    ($wit:ident) => {
        $crate::__contract_enums! { [$crate::__bridge_enums] $wit }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __bridge_enums {
    ([$wit:ident] $( $(#[$meta:meta])* $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $str:literal ),+ $(,)? } )+) => {
        $(
            impl ::core::convert::From<$wit::$name> for $crate::$name {
                fn from(v: $wit::$name) -> Self {
                    match v { $( $wit::$name::$variant => $crate::$name::$variant ),+ }
                }
            }
            impl ::core::convert::From<$crate::$name> for $wit::$name {
                fn from(v: $crate::$name) -> Self {
                    match v { $( $crate::$name::$variant => $wit::$name::$variant ),+ }
                }
            }
        )+
    };
}

macro_rules! wit_enums {
    ([] $( $(#[$meta:meta])* $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $wit:literal ),+ $(,)? } )+) => {
        $( wit_enum! { $(#[$meta])* pub enum $name { $( $(#[$vmeta])* $variant = $wit ),+ } } )+
    };
}

crate::__contract_enums! { [wit_enums] }

impl Severity {
    /// The numeric ECS `event.severity` used by Elastic detection rules.
    pub fn ecs_score(self) -> u8 {
        match self {
            Severity::Informational => 1,
            Severity::Low => 21,
            Severity::Medium => 47,
            Severity::High => 73,
            Severity::Critical => 99,
        }
    }
}

/// A program started (execve).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExec {
    pub pid: u32,
    pub ppid: u32,
    /// Stable identity: unique on the host even when the kernel reuses the pid.
    pub entity_id: u64,
    /// Entity id of the parent, 0 when unknown.
    pub parent_entity_id: u64,
    /// The executable as `/proc/<pid>/exe` names it: a deleted file keeps
    /// its path with ` (deleted)` appended, and a program run from memory
    /// (`memfd_create`, then `execve("/proc/self/fd/N")` or `fexecve`) is
    /// `/memfd:NAME (deleted)`. Empty when unknown (never the dynamic
    /// loader standing in for a program whose file was not seen).
    pub exe: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub user: String,
    pub start_time: Timestamp,
    pub parent_exe: String,
    pub parent_argv: Vec<String>,
    /// Executable paths of the ancestors, parent first, up to the root.
    pub ancestry: Vec<String>,
}

/// A process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExit {
    pub pid: u32,
    pub entity_id: u64,
    pub exit_code: i32,
}

/// A change to (or a read of) a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEvent {
    pub op: FileOp,
    pub path: String,
    /// The previous path of a renamed file.
    pub old_path: Option<String>,
    /// `st_mode` after the change, where known.
    pub mode: Option<u32>,
    pub pid: Option<u32>,
    pub entity_id: Option<u64>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
}

/// A network connection or listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEvent {
    pub op: NetworkOp,
    pub transport: Transport,
    pub local_ip: String,
    pub local_port: u16,
    pub remote_ip: String,
    pub remote_port: u16,
    pub pid: Option<u32>,
    pub entity_id: Option<u64>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
}

/// A login attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginEvent {
    pub user: String,
    pub source_ip: Option<String>,
    pub service: String,
    pub method: String,
    pub success: bool,
    pub pid: Option<u32>,
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "kebab-case")]
pub enum EventBody {
    ProcessExec(ProcessExec),
    ProcessExit(ProcessExit),
    File(FileEvent),
    Network(NetworkEvent),
    Login(LoginEvent),
}

/// One endpoint event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id within this agent's record.
    pub id: u64,
    pub time: Timestamp,
    /// The collector could not gather every field.
    pub partial: bool,
    pub body: EventBody,
}

impl Event {
    /// The kind of this event, for subscription filtering.
    pub fn kind(&self) -> EventKind {
        match self.body {
            EventBody::ProcessExec(_) => EventKind::ProcessExec,
            EventBody::ProcessExit(_) => EventKind::ProcessExit,
            EventBody::File(_) => EventKind::File,
            EventBody::Network(_) => EventKind::Network,
            EventBody::Login(_) => EventKind::Login,
        }
    }

    /// The pid the event is attributed to, where known.
    pub fn pid(&self) -> Option<u32> {
        match &self.body {
            EventBody::ProcessExec(e) => Some(e.pid),
            EventBody::ProcessExit(e) => Some(e.pid),
            EventBody::File(e) => e.pid,
            EventBody::Network(e) => e.pid,
            EventBody::Login(e) => e.pid,
        }
    }

    /// The entity id of the process the event is attributed to, where known.
    pub fn entity_id(&self) -> Option<u64> {
        match &self.body {
            EventBody::ProcessExec(e) => Some(e.entity_id),
            EventBody::ProcessExit(e) => Some(e.entity_id),
            EventBody::File(e) => e.entity_id,
            EventBody::Network(e) => e.entity_id,
            EventBody::Login(_) => None,
        }
    }
}

/// What a plugin reports when a detection fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule_id: String,
    pub title: String,
    pub severity: Severity,
    /// MITRE ATT&CK technique ids.
    pub techniques: Vec<String>,
    pub message: String,
    pub author: String,
    pub event_ids: Vec<u64>,
    pub evidence: Vec<(String, String)>,
}

/// A file shipped with a plugin's pack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    pub name: String,
    pub content: Vec<u8>,
}

/// A plugin's configuration: settings and data files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginConfig {
    pub settings: Vec<(String, String)>,
    pub files: Vec<DataFile>,
}

/// What a plugin says about itself at init.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub subscriptions: Vec<EventKind>,
}

/// A process as the agent's process tree knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub entity_id: u64,
    pub exe: String,
    pub argv: Vec<String>,
    pub uid: u32,
    pub start_time: Timestamp,
}

/// Target of a kill request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillTarget {
    pub pid: u32,
    /// When set, only kill if `pid` still is this process.
    pub entity_id: Option<u64>,
    pub tree: bool,
}

/// A response action a plugin may request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "target", rename_all = "kebab-case")]
pub enum Action {
    KillProcess(KillTarget),
    SuspendProcess(u32),
    ResumeProcess(u32),
    QuarantineFile(String),
    DeleteFile(String),
    FetchFile(String),
    BlockExec(String),
    IsolateHost,
}

impl Action {
    /// The action's name as used in policies and manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Action::KillProcess(_) => "kill-process",
            Action::SuspendProcess(_) => "suspend-process",
            Action::ResumeProcess(_) => "resume-process",
            Action::QuarantineFile(_) => "quarantine-file",
            Action::DeleteFile(_) => "delete-file",
            Action::FetchFile(_) => "fetch-file",
            Action::BlockExec(_) => "block-exec",
            Action::IsolateHost => "isolate-host",
        }
    }
}
