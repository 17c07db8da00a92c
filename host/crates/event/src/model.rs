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
///
/// Variants added after the frozen 0.1.0 are listed last in an enum, in an
/// `@since_0_2 { ... }` group: every version but 0.1.0 has them, and the
/// 0.1.0 bridge (`bridge_enums!(wit, frozen_0_1)`) leaves them out.
#[doc(hidden)]
#[macro_export]
macro_rules! __contract_enums {
    ([$($callback:tt)*] $($arg:tt)*) => {
        $($callback)*! { [$($arg)*]
            /// The kinds of endpoint event; plugins subscribe to a subset.
            EventKind {
                /// A program started.
                ProcessExec = "process-exec",
                /// A process ended.
                ProcessExit = "process-exit",
                /// A file changed or was read.
                File = "file",
                /// A connection or listener.
                Network = "network",
                /// A login attempt.
                Login = "login",
            }
            /// What happened to a file.
            FileOp {
                /// Created.
                Create = "create",
                /// Written to.
                Modify = "modify",
                /// Removed.
                Delete = "delete",
                /// Renamed (or moved).
                Rename = "rename",
                /// Its mode changed.
                Chmod = "chmod",
                /// Its other attributes changed (owner, times, extended attributes).
                Attrib = "attrib",
                /// Opened for reading.
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
                @since_0_2 {
                    /// An established TCP connection ended, with its byte counts.
                    Close = "close",
                }
            }
            /// Transport protocol.
            Transport {
                /// TCP.
                Tcp = "tcp",
                /// UDP.
                Udp = "udp",
            }
            /// Severity of a finding (the Sigma levels).
            Severity {
                /// For the record, no action needed.
                Informational = "informational",
                /// Worth a look.
                Low = "low",
                /// Suspicious.
                Medium = "medium",
                /// Likely malicious.
                High = "high",
                /// Malicious, act now.
                Critical = "critical",
            }
            /// Level of a plugin's log line.
            LogLevel {
                /// Finest detail.
                Trace = "trace",
                /// For debugging.
                Debug = "debug",
                /// Normal operation.
                Info = "info",
                /// Something is off.
                Warn = "warn",
                /// Something failed.
                Error = "error",
            }
            /// What the response policy decided about an action request.
            Decision {
                /// The action was carried out.
                Enforced = "enforced",
                /// The policy is in simulate mode: recorded, not carried out.
                Simulated = "simulated",
                /// The policy refused it.
                Refused = "refused",
            }
        }
    };
}

/// `From` impls, both ways and exhaustive, between the contract enums of this
/// crate and those of a module generated from the WIT (by wasmtime's
/// `bindgen!` or by `wit-bindgen`), named by `$wit` at the call site: a
/// variant added to the WIT fails to compile until it is added here.
///
/// `bridge_enums!(wit, frozen_0_1)` is the bridge to the frozen 0.1.0 types,
/// which lack the `@since_0_2` variants: for an enum that has some, `From`
/// goes from the 0.1.0 enum only, and the other way is a `TryFrom` that
/// gives back a value 0.1.0 cannot express.
#[macro_export]
macro_rules! bridge_enums {
    ($wit:ident) => {
        $crate::__contract_enums! { [$crate::__bridge_enums] $wit all }
    };
    ($wit:ident, frozen_0_1) => {
        $crate::__contract_enums! { [$crate::__bridge_enums] $wit frozen_0_1 }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __bridge_enums {
    ([$wit:ident all] $( $(#[$meta:meta])* $name:ident {
        $( $(#[$vmeta:meta])* $variant:ident = $str:literal ),+ $(,)?
        $( @since_0_2 { $( $(#[$nmeta:meta])* $nvariant:ident = $nstr:literal ),+ $(,)? } )?
    } )+) => {
        $( $crate::__bridge_enum! { $wit $name [ $($variant)+ $($($nvariant)+)? ] [] } )+
    };
    ([$wit:ident frozen_0_1] $( $(#[$meta:meta])* $name:ident {
        $( $(#[$vmeta:meta])* $variant:ident = $str:literal ),+ $(,)?
        $( @since_0_2 { $( $(#[$nmeta:meta])* $nvariant:ident = $nstr:literal ),+ $(,)? } )?
    } )+) => {
        $( $crate::__bridge_enum! { $wit $name [ $($variant)+ ] [ $($($nvariant)+)? ] } )+
    };
}

/// One enum's bridge: `[shared variants] [variants the generated enum lacks]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __bridge_enum {
    ($wit:ident $name:ident [ $($v:ident)+ ] []) => {
        impl ::core::convert::From<$wit::$name> for $crate::$name {
            fn from(v: $wit::$name) -> Self {
                match v { $( $wit::$name::$v => $crate::$name::$v ),+ }
            }
        }
        impl ::core::convert::From<$crate::$name> for $wit::$name {
            fn from(v: $crate::$name) -> Self {
                match v { $( $crate::$name::$v => $wit::$name::$v ),+ }
            }
        }
    };
    ($wit:ident $name:ident [ $($v:ident)+ ] [ $($n:ident)+ ]) => {
        impl ::core::convert::From<$wit::$name> for $crate::$name {
            fn from(v: $wit::$name) -> Self {
                match v { $( $wit::$name::$v => $crate::$name::$v ),+ }
            }
        }
        impl ::core::convert::TryFrom<$crate::$name> for $wit::$name {
            /// The value, which this version of the contract does not have.
            type Error = $crate::$name;
            fn try_from(v: $crate::$name) -> Result<Self, Self::Error> {
                match v {
                    $( $crate::$name::$v => Ok($wit::$name::$v), )+
                    $( $crate::$name::$n => Err($crate::$name::$n), )+
                }
            }
        }
    };
}

macro_rules! wit_enums {
    ([] $( $(#[$meta:meta])* $name:ident {
        $( $(#[$vmeta:meta])* $variant:ident = $wit:literal ),+ $(,)?
        $( @since_0_2 { $( $(#[$nmeta:meta])* $nvariant:ident = $nwit:literal ),+ $(,)? } )?
    } )+) => {
        $( wit_enum! { $(#[$meta])* pub enum $name { $( $(#[$vmeta])* $variant = $wit ),+ $($(, $(#[$nmeta])* $nvariant = $nwit )+)? } } )+
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
    /// Process id.
    pub pid: u32,
    /// Parent process id.
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
    /// Command line, argv[0] first.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Real user id.
    pub uid: u32,
    /// Effective group id, 0 when unknown.
    pub gid: u32,
    /// cgroup v2 id (the inode of the process's cgroup directory), 0 when unknown.
    pub cgroup_id: u64,
    /// User name for `uid`, empty when it could not be resolved.
    pub user: String,
    /// When the process started.
    pub start_time: Timestamp,
    /// Executable of the parent.
    pub parent_exe: String,
    /// Command line of the parent.
    pub parent_argv: Vec<String>,
    /// Executable paths of the ancestors, parent first, up to the root.
    pub ancestry: Vec<String>,
}

/// A process ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessExit {
    /// Process id.
    pub pid: u32,
    /// Entity id of the process (stable across pid reuse).
    pub entity_id: u64,
    /// Exit status (the signal number, negated, when it was killed by one).
    pub exit_code: i32,
}

/// A change to (or a read of) a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEvent {
    /// What happened.
    pub op: FileOp,
    /// Absolute path.
    pub path: String,
    /// The previous path of a renamed file.
    pub old_path: Option<String>,
    /// `st_mode` after the change, where known.
    pub mode: Option<u32>,
    /// Process id.
    pub pid: Option<u32>,
    /// Entity id of the process (stable across pid reuse).
    pub entity_id: Option<u64>,
    /// Executable of the process, where known.
    pub exe: Option<String>,
    /// Real user id.
    pub uid: Option<u32>,
}

/// A network connection or listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkEvent {
    /// What happened.
    pub op: NetworkOp,
    /// TCP or UDP.
    pub transport: Transport,
    /// Local address.
    pub local_ip: String,
    /// Local port.
    pub local_port: u16,
    /// Remote address.
    pub remote_ip: String,
    /// Remote port.
    pub remote_port: u16,
    /// Process id.
    pub pid: Option<u32>,
    /// Entity id of the process (stable across pid reuse).
    pub entity_id: Option<u64>,
    /// Executable of the process, where known.
    pub exe: Option<String>,
    /// Real user id.
    pub uid: Option<u32>,
    /// Network namespace (the inode of its `/proc/<pid>/ns/net`), where known.
    pub netns: Option<u64>,
    /// [`NetworkOp::Close`] only: TCP sequence space sent and acknowledged
    /// by the peer (`tcp_sock.bytes_acked`): the payload, plus 1 for the SYN
    /// of an outbound connection and 1 for our FIN once acknowledged.
    pub bytes_sent: Option<u64>,
    /// [`NetworkOp::Close`] only: TCP sequence space received
    /// (`tcp_sock.bytes_received`): the payload, plus 1 for the peer's FIN
    /// when it came before the close.
    pub bytes_received: Option<u64>,
}

/// A login attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginEvent {
    /// User name for `uid`, empty when it could not be resolved.
    pub user: String,
    /// Address the login came from, where remote.
    pub source_ip: Option<String>,
    /// The service that handled it (`sshd`, `login`, `sudo`, ...).
    pub service: String,
    /// How the user authenticated (`password`, `publickey`, ...).
    pub method: String,
    /// Whether it succeeded.
    pub success: bool,
    /// Process id.
    pub pid: Option<u32>,
}

/// The kind-specific part of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "kebab-case")]
pub enum EventBody {
    /// A program started.
    ProcessExec(ProcessExec),
    /// A process ended.
    ProcessExit(ProcessExit),
    /// A file changed or was read.
    File(FileEvent),
    /// A connection or listener.
    Network(NetworkEvent),
    /// A login attempt.
    Login(LoginEvent),
}

/// One endpoint event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique id within this agent's record.
    pub id: u64,
    /// When it happened.
    pub time: Timestamp,
    /// The collector could not gather every field.
    pub partial: bool,
    /// The kind-specific part.
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
    /// Stable rule id (`vendor.plugin.rule`).
    pub rule_id: String,
    /// Short title.
    pub title: String,
    /// How bad it is.
    pub severity: Severity,
    /// MITRE ATT&CK technique ids.
    pub techniques: Vec<String>,
    /// What happened, for a person.
    pub message: String,
    /// Who wrote the rule.
    pub author: String,
    /// Ids of the events the finding concerns.
    pub event_ids: Vec<u64>,
    /// Key-value evidence.
    pub evidence: Vec<(String, String)>,
}

/// A file shipped with a plugin's pack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Name.
    pub name: String,
    /// Its bytes.
    pub content: Vec<u8>,
}

/// A plugin's configuration: settings and data files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginConfig {
    /// Key-value settings from the manifest and the config.
    pub settings: Vec<(String, String)>,
    /// Data files shipped with the pack.
    pub files: Vec<DataFile>,
}

/// What a plugin says about itself at init.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// The event kinds it wants.
    pub subscriptions: Vec<EventKind>,
}

/// A process as the agent's process tree knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Entity id of the process (stable across pid reuse).
    pub entity_id: u64,
    /// Executable of the process, where known.
    pub exe: String,
    /// Command line, argv[0] first.
    pub argv: Vec<String>,
    /// Real user id.
    pub uid: u32,
    /// When the process started.
    pub start_time: Timestamp,
}

/// Target of a kill request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillTarget {
    /// Process id.
    pub pid: u32,
    /// When set, only kill if `pid` still is this process.
    pub entity_id: Option<u64>,
    /// Kill its descendants too.
    pub tree: bool,
}

/// A response action a plugin may request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "target", rename_all = "kebab-case")]
pub enum Action {
    /// Kill a process (or its tree).
    KillProcess(KillTarget),
    /// Stop a process (SIGSTOP).
    SuspendProcess(u32),
    /// Continue a stopped process.
    ResumeProcess(u32),
    /// Move a file to the quarantine store.
    QuarantineFile(String),
    /// Delete a file (kept in the quarantine store for restore).
    DeleteFile(String),
    /// Copy a file into the evidence store.
    FetchFile(String),
    /// Refuse execution of a file.
    BlockExec(String),
    /// Cut the host off the network except the management path.
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
