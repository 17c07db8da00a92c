//! eBPF process and TCP hooks for the edr agent.
//!
//! A BPF program in C (bpf/edr.bpf.c, CO-RE, compiled by clang in build.rs)
//! attaches to `tp_btf/sched_process_fork`, `sched_process_exec` and
//! `sched_process_exit` and writes one record per event into a 4 MiB ring
//! buffer; a record the ring buffer cannot take is counted in a per-CPU
//! array ([`Hooks::lost`]). The exec hook reads argv from the new image's
//! memory and walks the paths of the executable and the working directory
//! from their dentries (across mounts, up to the mount namespace's root),
//! so every image of `sh -c 'exec env true'` is seen with its own exe, argv
//! and cwd, however short-lived, without reading `/proc`. User space is pure Rust ([aya]): no C library
//! is needed to build or run.
//!
//! A second object (bpf/net.bpf.c, [`net`]) follows every TCP connection
//! through `tp_btf/inet_sock_set_state`: [`NetHooks`].
#![deny(missing_docs)]

pub mod net;
mod ring;
pub mod wire;

use std::time::Duration;

use aya::programs::{BtfTracePoint, ProgramError};
use aya::{Btf, Ebpf};

pub use net::{net_built, Family, NetEvent, NetHooks, NetKind, NetWireError, PidFrom};
pub use wire::{Kind, ProcEvent, WireError};

/// The compiled BPF object, empty when build.rs found no clang.
static OBJECT: &[u8] = include_bytes!(env!("EDR_EBPF_OBJECT"));
/// Why there is no object (empty when there is one).
const MISSING: &str = env!("EDR_EBPF_MISSING");

/// Why the hooks could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// The crate was built without the BPF object.
    #[error("{0}")]
    NotBuilt(&'static str),
    /// No kernel BTF (/sys/kernel/btf/vmlinux): `tp_btf` cannot attach.
    #[error("no kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
    /// The kernel refused the object (EPERM without CAP_BPF, lockdown, ...).
    #[error("loading the BPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program failed to load or attach.
    #[error("{hook}: {source}")]
    Program {
        /// The tracepoint.
        hook: &'static str,
        /// The kernel's answer.
        source: aya::programs::ProgramError,
    },
    /// A map is missing or of the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What was wrong.
        source: aya::maps::MapError,
    },
    /// poll(2) on the ring buffer failed.
    #[error("poll: {0}")]
    Poll(std::io::Error),
}

/// Whether the BPF object was built into this binary (`Err` says why not).
pub fn built() -> Result<(), &'static str> {
    if OBJECT.is_empty() {
        Err(MISSING)
    } else {
        Ok(())
    }
}

/// The loaded and attached hooks. Dropping it detaches them.
pub struct Hooks {
    ring: ring::Ring<ProcEvent, ProcParser>,
    _ebpf: Ebpf,
}

/// Loads a program with every signal blocked on the loading thread, and
/// again when the kernel still answers `EAGAIN`.
///
/// The verifier gives up with `EAGAIN` whenever a signal is pending on the
/// loading thread, which says nothing about the program. A process that
/// spawns children gets such signals all the time: while glibc's
/// `posix_spawn` runs with every signal blocked on the spawning thread, a
/// `SIGCHLD` that would otherwise be discarded is queued and handed to
/// another thread, the loading one included (seen in the hook tests, 4 loads
/// in 25 runs failed with 5 plain retries). Blocked on this thread, such a
/// signal goes to another thread or waits until the load is over. libbpf
/// retries 5 times; aya does not retry at all.
pub(crate) fn load_retrying(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    const ATTEMPTS: u32 = 10;
    let _blocked = SignalsBlocked::on_this_thread();
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. }) if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS => {
                tracing::debug!(attempt, "BPF_PROG_LOAD returned EAGAIN (a signal was pending); loading again");
                std::thread::sleep(Duration::from_millis(u64::from(attempt) * 5));
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Every blockable signal blocked on the current thread until dropped, when
/// the thread's previous mask comes back.
struct SignalsBlocked {
    previous: libc::sigset_t,
}

impl SignalsBlocked {
    fn on_this_thread() -> Self {
        // SAFETY: both sets are plain values initialised by sigfillset /
        // pthread_sigmask before use; SIGKILL and SIGSTOP stay deliverable.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut previous: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
            Self { previous }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `on_this_thread`; the guard is
        // private and lives on the stack of `load_retrying`, so it is dropped
        // on the thread that made it.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

/// The process records' parser.
type ProcParser = fn(&[u8]) -> Result<ProcEvent, WireError>;

const HOOKS: [(&str, &str); 3] = [("edr_fork", "sched_process_fork"), ("edr_exec", "sched_process_exec"), ("edr_exit", "sched_process_exit")];

impl Hooks {
    /// Loads the object and attaches the three process hooks.
    pub fn load() -> Result<Self, EbpfError> {
        built().map_err(EbpfError::NotBuilt)?;
        let btf = Btf::from_sys_fs()?;
        let mut ebpf = Ebpf::load(OBJECT)?;
        for (name, tp) in HOOKS {
            let failed = |source| EbpfError::Program { hook: tp, source };
            let prog = ebpf.program_mut(name).ok_or(EbpfError::NotBuilt("BPF object lacks a program"))?;
            let prog: &mut BtfTracePoint = prog.try_into().map_err(failed)?;
            load_retrying(|| prog.load(tp, &btf)).map_err(failed)?;
            prog.attach().map_err(failed)?;
        }
        let ring = ring::Ring::take(&mut ebpf, "EVENTS", "LOST", wire::parse as ProcParser, "process")?;
        drop(btf);
        release_freed_memory();
        Ok(Self { ring, _ebpf: ebpf })
    }

    /// Hands every record now in the ring buffer to `f`, waiting up to
    /// `timeout` for the first. Returns how many were handed over.
    pub fn poll(&mut self, timeout: Duration, f: impl FnMut(ProcEvent)) -> Result<usize, EbpfError> {
        self.ring.poll(timeout, f)
    }

    /// Records the ring buffer could not take, per CPU (index = CPU).
    pub fn lost_per_cpu(&self) -> Vec<u64> {
        self.ring.lost_per_cpu()
    }

    /// Records the ring buffer could not take, all CPUs.
    pub fn lost(&self) -> u64 {
        self.lost_per_cpu().iter().sum()
    }

    /// Records that could not be parsed (never expected; counted, not silent).
    pub fn unparsable(&self) -> u64 {
        self.ring.unparsable()
    }
}

/// Hands memory freed after a load back to the kernel: parsing the
/// kernel's BTF (several MB) would otherwise stay in the agent's resident
/// set for good (glibc keeps freed heap).
pub(crate) fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str, conv: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>) -> Result<T, EbpfError> {
    let m = ebpf.take_map(name).ok_or(EbpfError::Map { name, source: aya::maps::MapError::InvalidName { name: name.into() } })?;
    conv(m).map_err(|source| EbpfError::Map { name, source })
}
