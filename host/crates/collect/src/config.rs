//! What to collect and how. Every `Default` is the production default.
//!
//! Each collector has a mode: `Auto` picks the best facility the host allows
//! and degrades (reporting why in [`crate::CollectorStatus::mode`]); a
//! specific mode is used as asked or [`crate::Collectors::start`] fails;
//! `Off` disables the collector.

use std::path::PathBuf;
use std::time::Duration;

macro_rules! mode_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $s:literal ),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// The name used in configuration files.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(format!(
                        "unknown {} `{}`; expected one of: {}",
                        stringify!($name), s, [$($s),+].join(", ")
                    )),
                }
            }
        }
    };
}

mode_enum! {
    /// How process events are collected.
    pub enum ProcessMode {
        /// eBPF hooks when they load, else the netlink process connector,
        /// else polling (`EDR_PROCESS_EBPF=0` in the environment skips eBPF).
        #[default]
        Auto = "auto",
        /// eBPF hooks on `sched_process_fork/exec/exit` (root or CAP_BPF +
        /// CAP_PERFMON, kernel BTF): every exec with the argv read from the
        /// new image in the kernel, however short-lived.
        Ebpf = "ebpf",
        /// The netlink process connector (needs root / CAP_NET_ADMIN).
        Netlink = "netlink",
        /// Polling the process table with `sysinfo`: misses processes that
        /// live shorter than the interval, and has no exit codes.
        Poll = "poll",
        /// No process events (the process tree stays empty).
        Off = "off",
    }
}

mode_enum! {
    /// How file events are collected.
    pub enum FileMode {
        /// fanotify when allowed, else inotify.
        #[default]
        Auto = "auto",
        /// fanotify filesystem marks (needs root / CAP_SYS_ADMIN, kernel >= 5.9).
        Fanotify = "fanotify",
        /// inotify through the `notify` crate: no pid or exe attribution.
        Inotify = "inotify",
        /// No file events.
        Off = "off",
    }
}

mode_enum! {
    /// How network events are collected.
    pub enum NetworkMode {
        /// eBPF for TCP (UDP polled) when the kernel allows it, else polling
        /// `/proc/net`. `EDR_NETWORK_EBPF=0` in the environment skips eBPF.
        #[default]
        Auto = "auto",
        /// TCP from the eBPF hook `inet_sock_set_state` (every connection,
        /// however short, with its pid; needs root / CAP_BPF and kernel BTF);
        /// UDP from polling `/proc/net/{udp,udp6}`.
        Ebpf = "ebpf",
        /// Polling `/proc/net/{tcp,tcp6,udp,udp6}`.
        Procfs = "procfs",
        /// No network events.
        Off = "off",
    }
}

mode_enum! {
    /// How login events are collected.
    pub enum LoginMode {
        /// Tail whichever of the configured logs exist.
        #[default]
        Auto = "auto",
        /// Tail the logs; fail to start when none of them exists.
        Tail = "tail",
        /// No login events.
        Off = "off",
    }
}

/// Process collector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Which facility to use.
    pub mode: ProcessMode,
    /// Polling interval of the degraded (`poll`) mode.
    pub poll_interval: Duration,
    /// Socket receive buffer asked for the netlink socket (set with
    /// SO_RCVBUFFORCE as root): how large a burst of process events the
    /// kernel can queue before it drops messages.
    pub netlink_rcvbuf: usize,
    /// How long an exited process stays in the tree for lineage lookups.
    pub retain_exited: Duration,
    /// At most this many exited processes are kept (oldest evicted first).
    pub max_exited: usize,
    /// In `netlink` mode, learn the executable of processes that exit
    /// before `/proc/<pid>/exe` can be read from fanotify `FAN_OPEN_EXEC`
    /// (a group with a mark on every local filesystem; needs root /
    /// CAP_SYS_ADMIN, skipped with the reason in the mode otherwise).
    pub exec_paths: bool,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            mode: ProcessMode::Auto,
            poll_interval: Duration::from_millis(100),
            netlink_rcvbuf: 16 << 20,
            retain_exited: Duration::from_secs(600),
            max_exited: 100_000,
            exec_paths: true,
        }
    }
}

/// File collector settings.
///
/// Paths are patterns: a `*` or `?` matches within one path component, and
/// a pattern matches the path it names and everything below it. A path is
/// reported when it matches an include pattern and no exclude pattern
/// (including [`CollectConfig::exclude_paths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileConfig {
    /// Which facility to use.
    pub mode: FileMode,
    /// What to watch. Patterns whose fixed prefix does not exist are skipped
    /// (debug log) for marking, but still filter events of marked filesystems.
    pub include: Vec<String>,
    /// Noise not to report.
    pub exclude: Vec<String>,
    /// Files whose reads are reported as [`edr_event::FileOp::Read`] (who
    /// opened `/etc/shadow`); not subject to `include`.
    pub sensitive_reads: Vec<PathBuf>,
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            mode: FileMode::Auto,
            include: DEFAULT_INCLUDE.iter().map(|s| s.to_string()).collect(),
            exclude: DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect(),
            sensitive_reads: DEFAULT_SENSITIVE.iter().map(PathBuf::from).collect(),
        }
    }
}

/// The default include set: where persistence, credential access and
/// dropped payloads show up (what the built-in detections look at).
pub const DEFAULT_INCLUDE: &[&str] = &[
    "/etc",
    "/root",
    "/home/*/.ssh",
    "/home/*/.bashrc",
    "/home/*/.bash_profile",
    "/home/*/.bash_login",
    "/home/*/.bash_logout",
    "/home/*/.profile",
    "/home/*/.zshrc",
    "/home/*/.zprofile",
    "/home/*/.config/autostart",
    "/home/*/.config/systemd",
    "/var/spool/cron",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
    "/etc/systemd",
    "/tmp",
    "/var/tmp",
    "/dev/shm",
    "/usr/bin",
    "/usr/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/boot",
];

/// The default exclusions: high-volume paths that carry no detection value.
///
/// * X11/ICE/font sockets and locks in `/tmp`;
/// * systemd's per-service private temp dirs (`PrivateTmp=`), whose content
///   belongs to sandboxed services and churns constantly;
/// * the journal, in case someone includes `/var/log` or `/run/log`;
/// * `/root/.cache` (pip, cargo, compilers).
///
/// `/etc/ld.so.cache`, `/etc/resolv.conf` and similar rewrites stay: they are
/// rare and `/etc/ld.so.*` is a persistence target.
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "/tmp/.X11-unix",
    "/tmp/.ICE-unix",
    "/tmp/.font-unix",
    "/tmp/.XIM-unix",
    "/tmp/.X*-lock",
    "/tmp/systemd-private-*",
    "/var/tmp/systemd-private-*",
    "/var/log/journal",
    "/run/log/journal",
    "/root/.cache",
];

/// Files whose reads are reported by default.
pub const DEFAULT_SENSITIVE: &[&str] = &["/etc/shadow", "/etc/gshadow", "/etc/sudoers"];

/// Network collector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Which facility to use.
    pub mode: NetworkMode,
    /// How often `/proc/net` is read. Connections that open and close
    /// within one interval are not seen.
    pub interval: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig { mode: NetworkMode::Auto, interval: Duration::from_millis(250) }
    }
}

/// Login collector settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    /// Which facility to use.
    pub mode: LoginMode,
    /// Authentication logs to tail; the first that exists is used (the
    /// collector keeps looking while none does).
    pub auth_logs: Vec<PathBuf>,
    /// utmp-format log of successful logins (`USER_PROCESS` records).
    pub wtmp: Option<PathBuf>,
    /// utmp-format log of failed logins.
    pub btmp: Option<PathBuf>,
    /// How often the logs are checked for new data.
    pub interval: Duration,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            mode: LoginMode::Auto,
            auth_logs: vec![PathBuf::from("/var/log/auth.log"), PathBuf::from("/var/log/secure")],
            wtmp: Some(PathBuf::from("/var/log/wtmp")),
            btmp: Some(PathBuf::from("/var/log/btmp")),
            interval: Duration::from_millis(500),
        }
    }
}

/// Settings of every collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectConfig {
    /// Process exec/exit and lineage.
    pub process: ProcessConfig,
    /// File changes and sensitive reads.
    pub file: FileConfig,
    /// Connections and listeners.
    pub network: NetworkConfig,
    /// Logins.
    pub login: LoginConfig,
    /// Processes whose own activity is not reported (file and network events
    /// they cause, their own exec/exit). Defaults to this process: the agent.
    pub exclude_pids: Vec<u32>,
    /// Paths whose file events are never reported, in addition to
    /// [`FileConfig::exclude`]: put the agent's data dir here.
    pub exclude_paths: Vec<PathBuf>,
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            process: ProcessConfig::default(),
            file: FileConfig::default(),
            network: NetworkConfig::default(),
            login: LoginConfig::default(),
            exclude_pids: vec![std::process::id()],
            exclude_paths: Vec::new(),
        }
    }
}

impl CollectConfig {
    /// Every collector off; a starting point for enabling just one.
    pub fn all_off() -> Self {
        let mut c = CollectConfig::default();
        c.process.mode = ProcessMode::Off;
        c.file.mode = FileMode::Off;
        c.network.mode = NetworkMode::Off;
        c.login.mode = LoginMode::Off;
        c
    }
}
