//! The ring-buffer record layout (`struct event` in bpf/edr.bpf.c) and its parser.

/// Bytes of argv the hook copies at most (`ARGV_MAX`).
pub const ARGV_MAX: usize = 1024;
/// Bytes of the exec'd filename the hook copies at most.
pub const FILENAME_MAX: usize = 256;
/// Size of one record.
pub const RECORD_LEN: usize = HEADER_LEN + 16 + FILENAME_MAX + ARGV_MAX;
/// Bytes before `comm`: the fixed-size fields.
const HEADER_LEN: usize = 64;

const F_ARGV_TRUNC: u32 = 1;
const F_ARGV_FAULT: u32 = 2;

/// What the hook saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sched_process_fork`: a new task (pid/tgid of the child, ppid = the parent's tgid).
    Fork,
    /// `sched_process_exec`: a new image, argv read from its memory.
    Exec,
    /// `sched_process_exit` of a thread-group leader.
    Exit,
}

/// One process event from the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEvent {
    /// Fork, exec or exit.
    pub kind: Kind,
    /// Kernel task id (thread id).
    pub pid: u32,
    /// Thread-group id (the user-space process id).
    pub tgid: u32,
    /// The parent's thread-group id.
    pub ppid: u32,
    /// Real uid of the current task.
    pub uid: u32,
    /// Real gid of the current task.
    pub gid: u32,
    /// cgroup v2 id of the current task.
    pub cgroup_id: u64,
    /// CLOCK_BOOTTIME nanoseconds at the hook.
    pub boot_ns: u64,
    /// The task's `start_boottime` (CLOCK_BOOTTIME ns): what `/proc/<pid>/stat`
    /// field 22 (`starttime`) is made of, so the two identify the same process.
    pub start_ns: u64,
    /// Effective uid of the task the event is about (after exec: the new image's).
    pub euid: u32,
    /// `comm` of the current task.
    pub comm: String,
    /// Exec only: the file the kernel executed last (`bprm->interp`): the
    /// filename passed to execve, or a script's interpreter after `#!`.
    pub filename: String,
    /// Exec only: argv read from the new image (bounded to [`ARGV_MAX`] bytes).
    pub argv: Vec<String>,
    /// Exec only: argv was longer than [`ARGV_MAX`] bytes and is cut.
    pub argv_truncated: bool,
    /// Exec only: argv could not be read (page not present); `argv` is empty.
    pub argv_fault: bool,
    /// Exit only: the kernel exit code (`status << 8 | signal`).
    pub exit_code: i32,
}

/// Why a record could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than [`RECORD_LEN`].
    #[error("record of {0} bytes, expected {RECORD_LEN}")]
    Short(usize),
    /// Unknown `kind`.
    #[error("unknown record kind {0}")]
    Kind(u32),
}

pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_ne_bytes(a)
}

pub(crate) fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Splits a NUL-separated argv block; a final argument without its NUL (cut) is kept.
pub fn split_argv(b: &[u8]) -> Vec<String> {
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    if b.is_empty() {
        return Vec::new();
    }
    b.split(|&c| c == 0).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Parses one ring-buffer record.
pub fn parse(b: &[u8]) -> Result<ProcEvent, WireError> {
    if b.len() < RECORD_LEN {
        return Err(WireError::Short(b.len()));
    }
    let kind = match u32_at(b, 0) {
        1 => Kind::Fork,
        2 => Kind::Exec,
        3 => Kind::Exit,
        k => return Err(WireError::Kind(k)),
    };
    let flags = u32_at(b, 52);
    let argv_len = (u32_at(b, 48) as usize).min(ARGV_MAX);
    let comm_off = HEADER_LEN;
    let filename_off = comm_off + 16;
    let argv_off = filename_off + FILENAME_MAX;
    Ok(ProcEvent {
        kind,
        pid: u32_at(b, 4),
        tgid: u32_at(b, 8),
        ppid: u32_at(b, 12),
        uid: u32_at(b, 16),
        gid: u32_at(b, 20),
        cgroup_id: u64_at(b, 24),
        boot_ns: u64_at(b, 32),
        start_ns: u64_at(b, 40),
        exit_code: u32_at(b, 56) as i32,
        euid: u32_at(b, 60),
        comm: cstr(&b[comm_off..filename_off]),
        filename: cstr(&b[filename_off..argv_off]),
        argv: split_argv(&b[argv_off..argv_off + argv_len]),
        argv_truncated: flags & F_ARGV_TRUNC != 0,
        argv_fault: flags & F_ARGV_FAULT != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_records_are_refused_not_panicking() {
        assert_eq!(parse(&[]), Err(WireError::Short(0)));
        let mut b = vec![0u8; RECORD_LEN];
        b[0] = 9;
        assert_eq!(parse(&b), Err(WireError::Kind(9)));
        // argv_len larger than the buffer is clamped, no NULs anywhere.
        let mut b = vec![b'A'; RECORD_LEN];
        b[..4].copy_from_slice(&2u32.to_ne_bytes());
        b[48..52].copy_from_slice(&u32::MAX.to_ne_bytes());
        let e = parse(&b).unwrap();
        assert_eq!(e.argv, vec!["A".repeat(ARGV_MAX)]);
        assert_eq!(e.comm, "A".repeat(16));
    }

    #[test]
    fn argv_split_keeps_empty_args_and_cut_tail() {
        assert_eq!(split_argv(b"sh\0-c\0\0x\0"), vec!["sh", "-c", "", "x"]);
        assert_eq!(split_argv(b"env\0tru"), vec!["env", "tru"]);
        assert!(split_argv(b"").is_empty());
    }
}
