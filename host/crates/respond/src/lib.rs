//! `edr-respond`: the response engine of the edr agent.
//!
//! It carries out response actions, each with its undo, under a policy, and
//! audits every request:
//!
//! | action | undo | module |
//! |---|---|---|
//! | kill a process (optionally its tree; pid-reuse check) | none | [`process`] |
//! | suspend a process (SIGSTOP) | resume (SIGCONT) | [`process`] |
//! | quarantine a file | restore (byte-exact, owner, mode, times) | [`quarantine`] |
//! | delete a file (sha256 and metadata recorded first) | none | [`delete`] |
//! | isolate the host (nftables table `inet edr_isolation`) | release | [`isolate`] |
//! | block execution by path or sha256 (fanotify) | unblock | [`block`] |
//! | fetch a file into the evidence store | none needed | [`fetch`] |
//!
//! # Policy
//!
//! See [`policy`]: the operator may do everything (in
//! [`ResponseConfig::operator_mode`]); a pack only what its [`PackGrant`]
//! lists, in the grant's mode ([`Mode::Simulate`] records what would happen
//! and changes nothing). Undo actions are operator-only. Protected processes
//! (pid 1, the agent and its ancestors, kernel threads, configured names
//! that match a verified system executable: see [`protect`]) are never
//! killed or suspended, whoever asks; critical executables are never
//! blocked, quarantined or deleted. Protected paths (the agent's data dir,
//! config, trust keys and binary, the loader and libc, account files, the
//! system shells, `protected_paths`) are refused by quarantine and delete in
//! both modes; only the operator may override that, explicitly
//! ([`ResponseAction::OverrideProtection`]), and the audit record says so.
//!
//! # Threads
//!
//! * [`Responder::request`] decides and carries out the action on the
//!   caller's thread and returns the audit record (the operator API).
//! * [`Responder::submit`] decides on the caller's thread (policy and cheap
//!   safety checks: a grant lookup and a read of `/proc/<pid>/stat`) and
//!   returns the [`Decision`] at once; the action runs on the worker thread
//!   `edr-respond` (one, so actions run in request order), which emits the
//!   audit record when done. This is what the plugin `respond` import
//!   should call: a kill waits up to 2 s for the process to die and a
//!   quarantine hashes the file, which must not count against a plugin's
//!   deadline. The worker re-checks everything when it runs, so the audit
//!   record can say `refused` although `submit` said `enforced` (e.g. the
//!   pid was reused in between).
//! * Exec blocking runs its own threads while at least one block exists
//!   (see [`block`]); they stop when the last block is removed and when the
//!   [`Responder`] is dropped.
//!
//! # Where state lives
//!
//! * Quarantine: `quarantine_dir` (blobs + JSON sidecars), survives restarts.
//! * Evidence: `evidence_dir`, likewise.
//! * Isolation: in the kernel (the nftables table); read back, never cached.
//!   It survives an agent restart (and a crash): the host stays isolated
//!   until released.
//! * Blocks: in memory, and in `blocklist_file` when set (reloaded and
//!   re-enforced by [`Responder::new`]).
//! * Audit records: handed to the sinks ([`Responder::audit_sink`]) and
//!   logged through `tracing`; this crate keeps none.

#![deny(missing_docs)]

pub mod audit;
pub mod block;
pub mod delete;
mod error;
pub mod fetch;
mod fsutil;
pub mod isolate;
pub mod policy;
pub mod process;
pub mod protect;
pub mod quarantine;

pub use audit::{AuditCounts, AuditJournal, AuditRecord, AuditTotals, Outcome};
pub use block::{BlockEntry, BlockFailMode, BlockSettings, BlockStats, BlockTarget};
pub use edr_event::Decision;
pub use error::RespondError;
pub use fetch::EvidenceEntry;
pub use fsutil::FileMeta;
pub use isolate::{Endpoint, IsolationState, TamperEvent};
pub use policy::{ActionKind, Mode, PackGrant, Requester};
pub use process::ProcessIdentity;
pub use quarantine::QuarantineEntry;

use crossbeam_channel::{bounded, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Key/value facts about what was done (or would be done), kept in the audit record.
pub type Detail = BTreeMap<String, String>;

/// Names protected by default: killing or stopping them would lock the
/// operator out or blind the host.
pub const DEFAULT_PROTECTED_NAMES: &[&str] =
    &["sshd", "systemd", "systemd-journald", "systemd-logind", "systemd-udevd", "dbus-daemon", "dbus-broker", "auditd"];

fn default_true() -> bool {
    true
}
fn default_operator_mode() -> Mode {
    Mode::Enforce
}
fn default_fetch_max() -> u64 {
    1 << 30
}
fn default_block_deadline_ms() -> u64 {
    block::DEFAULT_BLOCK_DEADLINE_MS
}
fn default_queue() -> usize {
    256
}
fn default_protected_names() -> Vec<String> {
    DEFAULT_PROTECTED_NAMES.iter().map(|s| s.to_string()).collect()
}

/// Configuration of the response engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    /// The quarantine store (created 0700, root-owned). May be left out of a
    /// configuration file (empty): the agent puts it under its data dir
    /// ([`ResponseConfig::under_data_dir`]).
    #[serde(default)]
    pub quarantine_dir: PathBuf,
    /// The evidence store for fetched files (created 0700, root-owned); the
    /// agent's default is under its data dir, as for `quarantine_dir`.
    #[serde(default)]
    pub evidence_dir: PathBuf,
    /// Endpoints that stay reachable while isolated (the console, its relays).
    /// Isolation is refused while this is empty.
    #[serde(default)]
    pub management: Vec<Endpoint>,
    /// DNS resolvers allowed while isolated (when `allow_dns`); empty means
    /// the non-loopback nameservers of `/etc/resolv.conf`.
    #[serde(default)]
    pub dns_servers: Vec<IpAddr>,
    /// Let DNS (TCP/UDP 53) to the resolvers through while isolated.
    #[serde(default)]
    pub allow_dns: bool,
    /// Let DHCP (v4 and v6) through while isolated so the lease is renewed (default true).
    #[serde(default = "default_true")]
    pub allow_dhcp: bool,
    /// Executables whose processes are never killed or suspended (key kept
    /// as `protected_names` for compatibility). An entry is an executable
    /// file name (`sshd`), an absolute executable path (`/usr/sbin/sshd`) or
    /// a system service (`ssh.service`), and it protects a process only when
    /// the process's executable is verified (a root-owned file in a system
    /// location no one else can write, see [`protect`]) and the process runs
    /// as root or in a system service. Process names (`comm`) are never
    /// trusted. The agent's own executable name is always added.
    #[serde(default = "default_protected_names")]
    pub protected_names: Vec<String>,
    /// More files or directories (with everything in them) that quarantine
    /// and delete refuse, and block refuses when they are files, on top of
    /// the built-in ones (see [`protect`]).
    #[serde(default)]
    pub protected_paths: Vec<PathBuf>,
    /// The agent's data dir: protected with everything in it. Set by the
    /// agent, not read from the configuration.
    #[serde(skip)]
    pub data_dir: Option<PathBuf>,
    /// The agent's configuration file: protected. Set by the agent.
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// The agent's trust key files: protected. Set by the agent.
    #[serde(skip)]
    pub trust_keys: Vec<PathBuf>,
    /// The agent's executable: protected (`/proc/self/exe` always is). Set by the agent.
    #[serde(skip)]
    pub agent_binary: Option<PathBuf>,
    /// Grants per pack id.
    #[serde(default)]
    pub packs: BTreeMap<String, PackGrant>,
    /// Mode of operator requests (default enforce).
    #[serde(default = "default_operator_mode")]
    pub operator_mode: Mode,
    /// Network namespace to isolate (a path such as `/run/netns/NAME`);
    /// `None` isolates the agent's own namespace, i.e. the host.
    #[serde(default)]
    pub isolation_netns: Option<PathBuf>,
    /// Where active execution blocks are saved, so they survive a restart.
    #[serde(default)]
    pub blocklist_file: Option<PathBuf>,
    /// Where the engine notes that the host is isolated (written on
    /// isolate, removed on release), so that isolation survives a reboot:
    /// at start, [`Responder::restore_isolation`] re-applies it when the
    /// note is there and the kernel has no isolation table.
    #[serde(default)]
    pub isolation_marker: Option<PathBuf>,
    /// Largest file `fetch` copies (default 1 GiB).
    #[serde(default = "default_fetch_max")]
    pub fetch_max_bytes: u64,
    /// Tuning of exec blocking.
    #[serde(default)]
    pub block: BlockSettings,
    /// How long an exec may wait for the agent's verdict while a block is
    /// active, ms (10-10000, default 250); then the watchdog process answers
    /// it with `block_fail_mode` and counts it (a stopped agent must not
    /// freeze the host).
    #[serde(default = "default_block_deadline_ms", deserialize_with = "block::deserialize_deadline_ms")]
    pub block_deadline_ms: u64,
    /// The answer when `block_deadline_ms` passes: `allow` (default) or `deny`.
    #[serde(default)]
    pub block_fail_mode: BlockFailMode,
    /// Requests `submit` may queue before refusing more (default 256).
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
}

impl ResponseConfig {
    /// A configuration with the two store directories and every other
    /// setting at its default (no management endpoints, no pack grants,
    /// operator enforce, the default protected names).
    pub fn new(quarantine_dir: impl Into<PathBuf>, evidence_dir: impl Into<PathBuf>) -> ResponseConfig {
        ResponseConfig {
            quarantine_dir: quarantine_dir.into(),
            evidence_dir: evidence_dir.into(),
            management: Vec::new(),
            dns_servers: Vec::new(),
            allow_dns: false,
            allow_dhcp: true,
            protected_names: default_protected_names(),
            protected_paths: Vec::new(),
            data_dir: None,
            config_file: None,
            trust_keys: Vec::new(),
            agent_binary: None,
            packs: BTreeMap::new(),
            operator_mode: Mode::Enforce,
            isolation_netns: None,
            blocklist_file: None,
            isolation_marker: None,
            fetch_max_bytes: default_fetch_max(),
            block: BlockSettings::default(),
            block_deadline_ms: default_block_deadline_ms(),
            block_fail_mode: BlockFailMode::Allow,
            queue_capacity: default_queue(),
        }
    }
}

impl ResponseConfig {
    /// Fills what a configuration file left out with the agent's defaults
    /// under `data_dir`: `quarantine/`, `evidence/`, `blocklist.json` and `isolation.json`.
    pub fn under_data_dir(mut self, data_dir: &Path) -> ResponseConfig {
        if self.quarantine_dir.as_os_str().is_empty() {
            self.quarantine_dir = data_dir.join("quarantine");
        }
        if self.evidence_dir.as_os_str().is_empty() {
            self.evidence_dir = data_dir.join("evidence");
        }
        if self.blocklist_file.is_none() {
            self.blocklist_file = Some(data_dir.join("blocklist.json"));
        }
        if self.isolation_marker.is_none() {
            self.isolation_marker = Some(data_dir.join("isolation.json"));
        }
        self
    }
}

impl Default for ResponseConfig {
    /// Every setting at its default, the two stores not set yet (see
    /// [`ResponseConfig::under_data_dir`]).
    fn default() -> Self {
        ResponseConfig::new(PathBuf::new(), PathBuf::new())
    }
}

/// A response action, as requested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", content = "target", rename_all = "kebab-case")]
pub enum ResponseAction {
    /// SIGKILL a process, or its whole tree (leaves first). With `expect`,
    /// refused when the pid now belongs to another process.
    Kill {
        /// The process.
        pid: u32,
        /// Kill its descendants too.
        tree: bool,
        /// The process the request means (start time or entity id).
        #[serde(default)]
        expect: Option<ProcessIdentity>,
    },
    /// SIGSTOP a process.
    Suspend(u32),
    /// SIGCONT a process.
    Resume(u32),
    /// Move a file into the quarantine store.
    Quarantine(PathBuf),
    /// Put a quarantined file back; `force` replaces whatever is at the path now.
    Restore {
        /// The quarantine id.
        id: String,
        /// Replace an existing file at the original path.
        #[serde(default)]
        force: bool,
    },
    /// Delete a file (its sha256 and metadata go into the audit record).
    Delete(PathBuf),
    /// Isolate the host.
    Isolate,
    /// Release the host from isolation.
    Release,
    /// Block execution.
    BlockExec(BlockTarget),
    /// Remove an execution block.
    Unblock(BlockTarget),
    /// Copy a file into the evidence store.
    Fetch(PathBuf),
    /// The wrapped quarantine or delete, carried out even though its target
    /// is a protected path (the operator's explicit override; the audit
    /// record says protection was overridden and why the path was
    /// protected). A pack can never override; the agent's own stores, its
    /// block list and kernel pseudo-filesystems stay refused.
    OverrideProtection(Box<ResponseAction>),
}

impl ResponseAction {
    /// The policy kind of this action.
    pub fn kind(&self) -> ActionKind {
        match self {
            ResponseAction::Kill { .. } => ActionKind::KillProcess,
            ResponseAction::Suspend(_) => ActionKind::SuspendProcess,
            ResponseAction::Resume(_) => ActionKind::ResumeProcess,
            ResponseAction::Quarantine(_) => ActionKind::QuarantineFile,
            ResponseAction::Restore { .. } => ActionKind::RestoreFile,
            ResponseAction::Delete(_) => ActionKind::DeleteFile,
            ResponseAction::Isolate => ActionKind::IsolateHost,
            ResponseAction::Release => ActionKind::ReleaseHost,
            ResponseAction::BlockExec(_) => ActionKind::BlockExec,
            ResponseAction::Unblock(_) => ActionKind::UnblockExec,
            ResponseAction::Fetch(_) => ActionKind::FetchFile,
            ResponseAction::OverrideProtection(a) => a.kind(),
        }
    }

    /// The target in words, for the audit record.
    pub fn target(&self) -> String {
        match self {
            ResponseAction::Kill { pid, tree: true, .. } => format!("pid {pid} and its descendants"),
            ResponseAction::Kill { pid, .. } | ResponseAction::Suspend(pid) | ResponseAction::Resume(pid) => format!("pid {pid}"),
            ResponseAction::Quarantine(p) | ResponseAction::Delete(p) | ResponseAction::Fetch(p) => p.display().to_string(),
            ResponseAction::Restore { id, .. } => format!("quarantine entry {id}"),
            ResponseAction::Isolate | ResponseAction::Release => "host".to_string(),
            ResponseAction::BlockExec(t) | ResponseAction::Unblock(t) => t.to_string(),
            ResponseAction::OverrideProtection(a) => a.target(),
        }
    }
}

/// What plugins can request (the contract's `action`). Undo actions other
/// than resume are not in the contract: they are operator-only.
impl From<edr_event::Action> for ResponseAction {
    fn from(a: edr_event::Action) -> ResponseAction {
        use edr_event::Action as A;
        match a {
            A::KillProcess(k) => ResponseAction::Kill {
                pid: k.pid,
                tree: k.tree,
                // Entity id 0 means "unknown" in the event model.
                expect: k.entity_id.filter(|e| *e != 0).map(ProcessIdentity::EntityId),
            },
            A::SuspendProcess(pid) => ResponseAction::Suspend(pid),
            A::ResumeProcess(pid) => ResponseAction::Resume(pid),
            A::QuarantineFile(p) => ResponseAction::Quarantine(PathBuf::from(p)),
            A::DeleteFile(p) => ResponseAction::Delete(PathBuf::from(p)),
            A::FetchFile(p) => ResponseAction::Fetch(PathBuf::from(p)),
            A::BlockExec(t) => ResponseAction::BlockExec(BlockTarget::parse(&t)),
            A::IsolateHost => ResponseAction::Isolate,
        }
    }
}

/// The outcome of the policy and the action, before it becomes a record.
enum Verdict {
    Refused(RespondError),
    Simulated(Result<Detail, RespondError>),
    Enforced(Result<Detail, RespondError>),
}

struct Inner {
    cfg: ResponseConfig,
    protection: process::Protection,
    paths: protect::PathGuard,
    quarantine: quarantine::QuarantineStore,
    evidence: fetch::EvidenceStore,
    isolator: isolate::Isolator,
    blocker: block::Blocker,
    audit: audit::AuditLog,
    shutting_down: AtomicBool,
    queued: AtomicUsize,
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into())
}

impl Inner {
    /// Decides, runs (or simulates) and audits one request.
    fn handle(&self, who: &Requester, action: &ResponseAction, reason: &str) -> AuditRecord {
        let time = edr_event::time::now();
        let verdict = catch_unwind(AssertUnwindSafe(|| self.run(who, action, reason)))
            .unwrap_or_else(|p| Verdict::Enforced(Err(RespondError::Panicked(panic_message(p)))));
        let rec = self.record(time, who, action, reason, verdict);
        self.audit.emit(&rec);
        rec
    }

    fn record(&self, time: u64, who: &Requester, action: &ResponseAction, reason: &str, verdict: Verdict) -> AuditRecord {
        let (decision, outcome, refusal, detail) = match verdict {
            Verdict::Refused(e) => (Decision::Refused, Outcome::NotRun, Some(e.to_string()), Detail::new()),
            Verdict::Simulated(Ok(d)) => (Decision::Simulated, Outcome::NotRun, None, d),
            Verdict::Simulated(Err(e)) => (Decision::Simulated, Outcome::Error(format!("would fail: {e}")), None, Detail::new()),
            Verdict::Enforced(Ok(d)) => (Decision::Enforced, Outcome::Ok, None, d),
            Verdict::Enforced(Err(e)) => (Decision::Enforced, Outcome::Error(e.to_string()), None, Detail::new()),
        };
        AuditRecord {
            id: fsutil::random_hex(16),
            time,
            finished: edr_event::time::now(),
            requester: who.clone(),
            action: action.kind(),
            target: action.target(),
            request: action.clone(),
            decision,
            outcome,
            reason: reason.to_string(),
            refusal,
            detail,
        }
    }

    fn run(&self, who: &Requester, action: &ResponseAction, reason: &str) -> Verdict {
        let mode = match self.decide(who, action) {
            Ok(m) => m,
            Err(e) => return Verdict::Refused(e),
        };
        let (action, overriding) = match unwrap_override(who, action) {
            Ok(a) => a,
            Err(e) => return Verdict::Refused(e),
        };
        match mode {
            Mode::Simulate => match self.simulate(action, overriding) {
                Err(e) if e.is_refusal() => Verdict::Refused(e),
                r => Verdict::Simulated(r),
            },
            Mode::Enforce => match self.enforce(who, action, reason, overriding) {
                Err(e) if e.is_refusal() => Verdict::Refused(e),
                r => Verdict::Enforced(r),
            },
        }
    }

    /// Policy, then the cheap safety checks of the target. Only refusals
    /// come out of here; other failures are left for the action to report.
    fn decide(&self, who: &Requester, action: &ResponseAction) -> Result<Mode, RespondError> {
        let (inner, overriding) = unwrap_override(who, action)?;
        let mode = policy::decide(&self.cfg.packs, self.cfg.operator_mode, who, action.kind())?;
        let action = inner;
        let check = match action {
            ResponseAction::Kill { pid, expect, .. } => process::check(*pid, *expect, &self.protection),
            ResponseAction::Suspend(pid) => process::check(*pid, None, &self.protection),
            ResponseAction::Quarantine(p) | ResponseAction::Delete(p) => self.check_file_target(p, overriding).map(|_| ()),
            ResponseAction::Fetch(p) => self.check_store_paths(p),
            ResponseAction::Isolate if self.cfg.management.is_empty() => {
                Err(RespondError::Config("no management endpoints are configured; isolating would cut the agent off from its console, so it is refused".into()))
            }
            ResponseAction::BlockExec(t) => self.blocker.check(t, &self.protected_executables()).map(|_| ()),
            _ => Ok(()),
        };
        match check {
            Err(e) if e.is_refusal() => Err(e),
            _ => Ok(mode),
        }
    }

    fn protected_executables(&self) -> Vec<(PathBuf, String)> {
        let mut v = block::critical_executables();
        v.extend(self.paths.executables());
        v.extend(process::protected_executables(&self.protection));
        v
    }

    /// Refuses paths inside the agent's own stores.
    fn check_store_paths(&self, path: &Path) -> Result<(), RespondError> {
        fsutil::check_absolute(path)?;
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        for (dir, what) in [(&self.cfg.quarantine_dir, "the quarantine store"), (&self.cfg.evidence_dir, "the evidence store")] {
            let d = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            if canon.starts_with(&d) || path.starts_with(dir) {
                return Err(RespondError::ProtectedFile { path: path.to_path_buf(), why: format!("inside {what}") });
            }
        }
        if let Some(b) = &self.cfg.blocklist_file {
            if canon == *b || path == b {
                return Err(RespondError::ProtectedFile { path: path.to_path_buf(), why: "the agent's block list".into() });
            }
        }
        Ok(())
    }

    /// Refuses files that quarantine or delete must not touch: kernel
    /// pseudo-filesystems and the agent's stores (always), protected paths
    /// and critical or protected executables (unless `overriding`: then the
    /// detail for the audit record says what protection was overridden).
    fn check_file_target(&self, path: &Path, overriding: bool) -> Result<Detail, RespondError> {
        self.check_store_paths(path)?;
        let canon = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let pseudo = canon.starts_with("/proc") || canon.starts_with("/sys") || (canon.starts_with("/dev") && !canon.starts_with("/dev/shm"));
        if pseudo {
            return Err(RespondError::ProtectedFile { path: path.to_path_buf(), why: "on a kernel pseudo-filesystem".into() });
        }
        let why = self.paths.why(path).or_else(|| {
            self.protected_executables().into_iter().find_map(|(p, why)| {
                let pc = std::fs::canonicalize(&p).unwrap_or(p);
                (pc == canon).then_some(why)
            })
        });
        match why {
            None => Ok(Detail::new()),
            Some(why) if overriding => {
                tracing::warn!(path = %path.display(), protected_because = %why, "operator overrides path protection");
                Ok(Detail::from([("protection_overridden".into(), "true".into()), ("protected_because".into(), why)]))
            }
            Some(why) => {
                Err(RespondError::ProtectedFile { path: path.to_path_buf(), why: format!("{why}; an operator may override with --override-protection") })
            }
        }
    }

    fn isolation_spec(&self) -> isolate::IsolationSpec {
        let dns = if !self.cfg.allow_dns {
            Vec::new()
        } else if self.cfg.dns_servers.is_empty() {
            isolate::system_resolvers()
        } else {
            self.cfg.dns_servers.clone()
        };
        isolate::IsolationSpec { management: self.cfg.management.clone(), dns, allow_dhcp: self.cfg.allow_dhcp }
    }

    /// What the action would do, changing nothing.
    fn simulate(&self, action: &ResponseAction, overriding: bool) -> Result<Detail, RespondError> {
        match action {
            ResponseAction::Kill { pid, tree, expect } => process::plan_kill(*pid, *tree, *expect, &self.protection),
            ResponseAction::Suspend(pid) => process::plan_suspend(*pid, &self.protection),
            ResponseAction::Resume(pid) => process::plan_resume(*pid),
            ResponseAction::Quarantine(p) => {
                let mut d = self.check_file_target(p, overriding)?;
                d.extend(self.quarantine.preview(p)?);
                Ok(d)
            }
            ResponseAction::Restore { id, force } => self.quarantine.plan_restore(id, *force),
            ResponseAction::Delete(p) => {
                let mut d = self.check_file_target(p, overriding)?;
                d.extend(delete::plan_delete(p)?);
                Ok(d)
            }
            ResponseAction::Isolate => self.isolator.plan(&self.isolation_spec()),
            ResponseAction::Release => {
                let st = self.isolator.read_state()?;
                Ok(Detail::from([("would_release".into(), st.isolated.to_string())]))
            }
            ResponseAction::BlockExec(t) => {
                let t = self.blocker.check(t, &self.protected_executables())?;
                Ok(Detail::from([("would_block".into(), t.to_string())]))
            }
            ResponseAction::Unblock(t) => self.blocker.plan_unblock(t),
            ResponseAction::Fetch(p) => {
                self.check_store_paths(p)?;
                self.evidence.preview(p)
            }
            ResponseAction::OverrideProtection(_) => Err(nested_override(action)),
        }
    }

    /// Carries the action out.
    fn enforce(&self, who: &Requester, action: &ResponseAction, reason: &str, overriding: bool) -> Result<Detail, RespondError> {
        let by = who.to_string();
        match action {
            ResponseAction::Kill { pid, tree, expect } => process::kill(*pid, *tree, *expect, &self.protection),
            ResponseAction::Suspend(pid) => process::suspend(*pid, &self.protection),
            ResponseAction::Resume(pid) => process::resume(*pid),
            ResponseAction::Quarantine(p) => {
                let mut d = self.check_file_target(p, overriding)?;
                let e = self.quarantine.quarantine(p, reason, &by)?;
                d.extend([
                    ("quarantine_id".into(), e.id),
                    ("sha256".into(), e.sha256),
                    ("size".into(), e.size.to_string()),
                    ("owner".into(), format!("{}:{}", e.meta.uid, e.meta.gid)),
                    ("mode".into(), format!("{:04o}", e.meta.mode)),
                    ("stored_path".into(), e.stored_path.display().to_string()),
                    ("copied_across_filesystems".into(), e.copied_across_filesystems.to_string()),
                ]);
                Ok(d)
            }
            ResponseAction::Restore { id, force } => {
                let e = self.quarantine.restore(id, *force)?;
                Ok(Detail::from([("path".into(), e.original_path.display().to_string()), ("sha256".into(), e.sha256)]))
            }
            ResponseAction::Delete(p) => {
                let mut d = self.check_file_target(p, overriding)?;
                d.extend(delete::delete(p)?);
                Ok(d)
            }
            ResponseAction::Isolate => {
                let spec = self.isolation_spec();
                let (st, mut d) = self.isolator.isolate(&spec)?;
                let persisted = isolate::write_marker(self.cfg.isolation_marker.as_deref(), st.since, reason, &by);
                d.insert("survives_reboot".into(), persisted.map_or_else(|e| format!("no: {e}"), |_| "yes".into()));
                Ok(d)
            }
            ResponseAction::Release => {
                let was = self.isolator.release()?;
                isolate::remove_marker(self.cfg.isolation_marker.as_deref());
                Ok(Detail::from([("was_isolated".into(), was.to_string())]))
            }
            ResponseAction::BlockExec(t) => self.blocker.block(t, reason, &by, &self.protected_executables()),
            ResponseAction::Unblock(t) => self.blocker.unblock(t),
            ResponseAction::Fetch(p) => {
                self.check_store_paths(p)?;
                let e = self.evidence.fetch(p, reason, &by)?;
                Ok(Detail::from([
                    ("evidence_id".into(), e.id),
                    ("sha256".into(), e.sha256),
                    ("size".into(), e.size.to_string()),
                    ("stored_path".into(), e.stored_path.display().to_string()),
                ]))
            }
            ResponseAction::OverrideProtection(_) => Err(nested_override(action)),
        }
    }
}

/// `run` unwraps the override before acting, so a wrapper here was nested.
fn nested_override(action: &ResponseAction) -> RespondError {
    RespondError::invalid(action.target(), "a protection override cannot wrap another override")
}

/// The action an [`ResponseAction::OverrideProtection`] wraps (or the action
/// itself) and whether it overrides path protection. Refuses an override a
/// pack asks for, and one around anything but a quarantine or delete.
fn unwrap_override<'a>(who: &Requester, action: &'a ResponseAction) -> Result<(&'a ResponseAction, bool), RespondError> {
    let ResponseAction::OverrideProtection(inner) = action else { return Ok((action, false)) };
    if !matches!(who, Requester::Operator { .. }) {
        return Err(RespondError::OverrideRefused { requester: who.to_string() });
    }
    match inner.as_ref() {
        a @ (ResponseAction::Quarantine(_) | ResponseAction::Delete(_)) => Ok((a, true)),
        nested @ ResponseAction::OverrideProtection(_) => Err(nested_override(nested)),
        other => Err(RespondError::invalid(other.target(), format!("protection can be overridden only for quarantine and delete, not for `{}`", other.kind()))),
    }
}

/// A request waiting for the worker.
struct Job {
    who: Requester,
    action: ResponseAction,
    reason: String,
}

/// The response engine. Thread-safe (`Send + Sync`): share it in an `Arc`.
pub struct Responder {
    inner: Arc<Inner>,
    queue: Option<Sender<Job>>,
    worker: Option<JoinHandle<()>>,
}

impl Responder {
    /// Checks the configuration, creates the stores, reloads persisted
    /// blocks and starts the worker thread.
    pub fn new(cfg: ResponseConfig) -> Result<Responder, RespondError> {
        policy::validate(&cfg.packs)?;
        if cfg.quarantine_dir.as_os_str().is_empty() || cfg.evidence_dir.as_os_str().is_empty() {
            return Err(RespondError::Config("quarantine_dir and evidence_dir must be set".into()));
        }
        if cfg.quarantine_dir == cfg.evidence_dir {
            return Err(RespondError::Config("quarantine_dir and evidence_dir must differ".into()));
        }
        if cfg.queue_capacity == 0 {
            return Err(RespondError::Config("queue_capacity must be at least 1".into()));
        }
        if !block::BLOCK_DEADLINE_MS_RANGE.contains(&cfg.block_deadline_ms) {
            let r = block::BLOCK_DEADLINE_MS_RANGE;
            return Err(RespondError::Config(format!("block_deadline_ms = {} is out of range {}..={}", cfg.block_deadline_ms, r.start(), r.end())));
        }
        if let Some(ns) = &cfg.isolation_netns {
            std::fs::metadata(ns).map_err(|e| RespondError::io("isolation_netns: cannot find the network namespace", ns, e))?;
        }
        let quarantine = quarantine::QuarantineStore::open(&cfg.quarantine_dir)?;
        let evidence = fetch::EvidenceStore::open(&cfg.evidence_dir, cfg.fetch_max_bytes)?;
        let block_settings = BlockSettings { deadline_ms: cfg.block_deadline_ms, fail_mode: cfg.block_fail_mode, ..cfg.block.clone() };
        let blocker = block::Blocker::new(block_settings, cfg.blocklist_file.clone())?;
        let inner = Arc::new(Inner {
            protection: process::Protection::new(&cfg.protected_names),
            paths: protect::PathGuard::new(&cfg),
            isolator: isolate::Isolator::new(cfg.isolation_netns.clone()),
            quarantine,
            evidence,
            blocker,
            audit: audit::AuditLog::default(),
            shutting_down: AtomicBool::new(false),
            queued: AtomicUsize::new(0),
            cfg,
        });
        // An isolation left from before this start stays guarded.
        inner.isolator.adopt(&inner.isolation_spec());
        let (tx, rx) = bounded::<Job>(inner.cfg.queue_capacity);
        let w = inner.clone();
        let worker = std::thread::Builder::new()
            .name("edr-respond".into())
            .spawn(move || {
                for job in rx.iter() {
                    if w.shutting_down.load(Ordering::Relaxed) {
                        let rec = w.record(edr_event::time::now(), &job.who, &job.action, &job.reason, Verdict::Refused(RespondError::ShuttingDown));
                        w.audit.emit(&rec);
                    } else {
                        w.handle(&job.who, &job.action, &job.reason);
                    }
                    w.queued.fetch_sub(1, Ordering::AcqRel);
                }
            })
            .map_err(|e| RespondError::Sys { what: "cannot start the response worker thread".into(), source: e })?;
        Ok(Responder { inner, queue: Some(tx), worker: Some(worker) })
    }

    /// Decides, carries out (or simulates) and audits an action on the
    /// calling thread. Never panics: failures are in the record's outcome.
    pub fn request(&self, who: Requester, action: ResponseAction, reason: &str) -> AuditRecord {
        self.inner.handle(&who, &action, reason)
    }

    /// Decides now and carries the action out on the worker thread (the
    /// path for plugins). Refusals are audited at once; the record of an
    /// accepted request is emitted when the worker has run it.
    pub fn submit(&self, who: Requester, action: ResponseAction, reason: &str) -> Decision {
        let time = edr_event::time::now();
        let refuse = |e: RespondError| {
            let rec = self.inner.record(time, &who, &action, reason, Verdict::Refused(e));
            self.inner.audit.emit(&rec);
            Decision::Refused
        };
        let mode = match catch_unwind(AssertUnwindSafe(|| self.inner.decide(&who, &action))) {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => return refuse(e),
            Err(p) => return refuse(RespondError::Panicked(panic_message(p))),
        };
        let Some(tx) = &self.queue else { return refuse(RespondError::ShuttingDown) };
        self.inner.queued.fetch_add(1, Ordering::AcqRel);
        let job = Job { who: who.clone(), action: action.clone(), reason: reason.to_string() };
        match tx.try_send(job) {
            Ok(()) => match mode {
                Mode::Enforce => Decision::Enforced,
                Mode::Simulate => Decision::Simulated,
            },
            Err(TrySendError::Full(_)) => {
                self.inner.queued.fetch_sub(1, Ordering::AcqRel);
                refuse(RespondError::QueueFull(self.inner.cfg.queue_capacity))
            }
            Err(TrySendError::Disconnected(_)) => {
                self.inner.queued.fetch_sub(1, Ordering::AcqRel);
                refuse(RespondError::ShuttingDown)
            }
        }
    }

    /// [`Responder::submit`] for a plugin of a pack, which may only ask for
    /// what its pack's manifest declares: when `declared` is false the
    /// request is refused (and audited) before the policy sees it.
    pub fn submit_declared(&self, who: Requester, action: ResponseAction, reason: &str, declared: bool) -> Decision {
        if declared {
            return self.submit(who, action, reason);
        }
        let error = RespondError::NotDeclared { action: action.kind().as_str() };
        let rec = self.inner.record(edr_event::time::now(), &who, &action, reason, Verdict::Refused(error));
        self.inner.audit.emit(&rec);
        Decision::Refused
    }

    /// Waits until every submitted request has been carried out (or the
    /// timeout passes); returns whether the queue is empty.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while self.inner.queued.load(Ordering::Acquire) > 0 {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// The files in quarantine, oldest first (read from the store's sidecars).
    pub fn quarantined(&self) -> Vec<QuarantineEntry> {
        self.inner.quarantine.list()
    }

    /// The fetched files, oldest first.
    pub fn evidence(&self) -> Vec<EvidenceEntry> {
        self.inner.evidence.list()
    }

    /// The active execution blocks.
    pub fn blocks(&self) -> Vec<BlockEntry> {
        self.inner.blocker.entries()
    }

    /// Counters of the exec-permission engine and whether it runs.
    pub fn block_stats(&self) -> BlockStats {
        self.inner.blocker.stats()
    }

    /// Whether the host (or the configured namespace) is isolated, read back
    /// from the kernel with `nft -j`.
    pub fn isolation_state(&self) -> IsolationState {
        self.inner.isolator.state()
    }

    /// Re-applies an isolation that was in force before the host restarted:
    /// when the isolation note ([`ResponseConfig::isolation_marker`]) is
    /// there and the kernel has no isolation table (a reboot flushed it),
    /// the host is isolated again through the normal path (policy, audit),
    /// as the operator who isolated it, with a reason that says so. Call it
    /// once the audit sinks are registered. `None` when nothing was to do.
    pub fn restore_isolation(&self) -> Option<AuditRecord> {
        let marker = isolate::read_marker(self.inner.cfg.isolation_marker.as_deref())?;
        if self.isolation_state().isolated {
            return None;
        }
        let reason = format!(
            "re-applied at agent start: the host was isolated ({}, by {}) and the isolation table was gone (a reboot or a flushed ruleset); release it to end the isolation",
            marker.reason, marker.by
        );
        tracing::warn!("{reason}");
        Some(self.request(Requester::Operator { uid: 0 }, ResponseAction::Isolate, &reason))
    }

    /// Registers the function called when the isolation table is found
    /// removed or altered while isolated (it has been re-applied, or that
    /// failed: see the event). Runs on the guard thread; keep it quick.
    pub fn on_isolation_tamper(&self, f: impl Fn(&TamperEvent) + Send + Sync + 'static) {
        self.inner.isolator.on_tamper(Arc::new(f));
    }

    /// Registers a consumer of audit records (the agent's store). Sinks run
    /// on the thread that completed the request; keep them quick.
    pub fn audit_sink(&mut self, f: impl Fn(&AuditRecord) + Send + Sync + 'static) {
        self.inner.audit.add(Arc::new(f));
    }

    /// The configuration in use.
    pub fn config(&self) -> &ResponseConfig {
        &self.inner.cfg
    }
}

impl Drop for Responder {
    /// Stops the worker (queued requests are audited as refused: shutting
    /// down), the exec-blocking threads and the isolation guard. Isolation
    /// stays in place.
    fn drop(&mut self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        self.inner.isolator.stop_guard();
        drop(self.queue.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn responder_is_thread_safe() {
        assert_send_sync::<Responder>();
    }

    #[test]
    fn plugin_actions_convert() {
        use edr_event::{Action, KillTarget};
        let a: ResponseAction = Action::KillProcess(KillTarget { pid: 7, entity_id: Some(99), tree: true }).into();
        assert_eq!(a, ResponseAction::Kill { pid: 7, tree: true, expect: Some(ProcessIdentity::EntityId(99)) });
        let a: ResponseAction = Action::KillProcess(KillTarget { pid: 7, entity_id: Some(0), tree: false }).into();
        assert_eq!(a, ResponseAction::Kill { pid: 7, tree: false, expect: None });
        let h = "ab".repeat(32);
        assert_eq!(ResponseAction::from(Action::BlockExec(h.clone())), ResponseAction::BlockExec(BlockTarget::Sha256(h)));
        assert_eq!(ResponseAction::from(Action::BlockExec("/tmp/x".into())), ResponseAction::BlockExec(BlockTarget::Path("/tmp/x".into())));
        assert_eq!(ResponseAction::from(Action::QuarantineFile("/tmp/q".into())), ResponseAction::Quarantine("/tmp/q".into()));
        assert_eq!(ResponseAction::from(Action::IsolateHost).kind(), ActionKind::IsolateHost);
        assert_eq!(ResponseAction::from(Action::ResumeProcess(3)), ResponseAction::Resume(3));
        for a in [
            Action::SuspendProcess(1),
            Action::DeleteFile("/x".into()),
            Action::FetchFile("/x".into()),
            Action::QuarantineFile("/x".into()),
            Action::IsolateHost,
        ] {
            let name = a.name();
            assert_eq!(ResponseAction::from(a).kind().as_str(), name);
        }
    }

    #[test]
    fn config_reads_from_json_with_defaults() {
        let cfg: ResponseConfig = serde_json::from_str(
            r#"{"quarantine_dir":"/var/lib/edr/q","evidence_dir":"/var/lib/edr/e",
                "management":["10.0.0.5:8443"],"packs":{"acme":{"actions":["kill-process"],"mode":"enforce"}}}"#,
        )
        .unwrap();
        assert_eq!(cfg.operator_mode, Mode::Enforce);
        assert!(cfg.allow_dhcp);
        assert!(cfg.protected_names.iter().any(|n| n == "sshd"));
        assert_eq!(cfg.management[0].port, Some(8443));
        assert_eq!(cfg.packs["acme"].mode, Mode::Enforce);
        assert!(serde_json::from_str::<ResponseConfig>(r#"{"quarantine_dir":"/q","evidence_dir":"/e","bogus":1}"#).is_err());
    }

    #[test]
    fn block_deadline_is_range_checked_when_read() {
        let cfg: ResponseConfig = serde_json::from_str(r#"{"quarantine_dir":"/q","evidence_dir":"/e"}"#).unwrap();
        assert_eq!((cfg.block_deadline_ms, cfg.block_fail_mode), (250, BlockFailMode::Allow));
        let cfg: ResponseConfig =
            serde_json::from_str(r#"{"quarantine_dir":"/q","evidence_dir":"/e","block_deadline_ms":40,"block_fail_mode":"deny"}"#).unwrap();
        assert_eq!((cfg.block_deadline_ms, cfg.block_fail_mode), (40, BlockFailMode::Deny));
        for bad in [0u64, 9, 10_001, u64::MAX] {
            let e = serde_json::from_str::<ResponseConfig>(&format!(r#"{{"quarantine_dir":"/q","evidence_dir":"/e","block_deadline_ms":{bad}}}"#)).unwrap_err();
            assert!(e.to_string().contains("out of range 10..=10000"), "{bad}: {e}");
        }
        let mut cfg = ResponseConfig::new("/tmp/q-never-made", "/tmp/e-never-made");
        cfg.block_deadline_ms = 0;
        let err = Responder::new(cfg).err().expect("refused");
        assert!(err.to_string().contains("block_deadline_ms = 0 is out of range"), "{err}");
    }

    #[test]
    fn action_json_shape() {
        let a = ResponseAction::Kill { pid: 5, tree: false, expect: Some(ProcessIdentity::StartTime(9)) };
        let j = serde_json::to_value(&a).unwrap();
        assert_eq!(j["action"], "kill");
        assert_eq!(j["target"]["expect"]["start-time"], 9);
        assert_eq!(serde_json::from_value::<ResponseAction>(j).unwrap(), a);
        let u = serde_json::to_value(ResponseAction::Unblock(BlockTarget::Sha256("ab".into()))).unwrap();
        assert_eq!(u["target"]["sha256"], "ab");
    }

    #[test]
    fn override_json_shape_is_what_the_cli_sends() {
        let j = serde_json::json!({"action": "override-protection", "target": {"action": "delete", "target": "/tmp/x"}});
        let a: ResponseAction = serde_json::from_value(j).unwrap();
        assert_eq!(a, ResponseAction::OverrideProtection(Box::new(ResponseAction::Delete("/tmp/x".into()))));
        assert_eq!(a.kind(), ActionKind::DeleteFile, "policy sees the wrapped action");
        assert_eq!(a.target(), "/tmp/x");
    }

    #[test]
    fn the_agents_own_paths_are_not_configurable_keys() {
        let cfg: ResponseConfig = serde_json::from_str(r#"{"quarantine_dir":"/q","evidence_dir":"/e","protected_paths":["/srv/keep"]}"#).unwrap();
        assert_eq!(cfg.protected_paths, vec![PathBuf::from("/srv/keep")]);
        assert!(cfg.data_dir.is_none() && cfg.config_file.is_none() && cfg.trust_keys.is_empty());
        for key in ["data_dir", "config_file", "trust_keys", "agent_binary"] {
            let j = format!(r#"{{"quarantine_dir":"/q","evidence_dir":"/e","{key}":"/x"}}"#);
            assert!(serde_json::from_str::<ResponseConfig>(&j).is_err(), "`{key}` is set by the agent, not by the config");
        }
    }
}
