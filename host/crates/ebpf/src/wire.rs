//! The ring-buffer record layout (`struct head` and `struct exec_event` in
//! bpf/edr.bpf.c) and its parser. Fork and exit records are the head alone
//! ([`HEAD_LEN`] bytes); exec records are [`EXEC_LEN`].

/// Bytes of argv the hook copies at most (`ARGV_MAX`).
pub const ARGV_MAX: usize = 1024;
/// Bytes of the exec'd filename the hook copies at most.
pub const FILENAME_MAX: usize = 256;
/// Bytes of a path's names the hook writes at most (a name starts below
/// `PATH_MAX` = 512 and may take `NAME_MAX` = 256).
pub const PATH_BUF: usize = 512 + 256;
/// Bytes before `comm`: the fixed-size fields.
const FIXED_LEN: usize = 80;
/// Size of a fork or exit record.
pub const HEAD_LEN: usize = FIXED_LEN + 16;
/// Size of an exec record.
pub const EXEC_LEN: usize = HEAD_LEN + FILENAME_MAX + ARGV_MAX + 2 * PATH_BUF;

const F_ARGV_TRUNC: u32 = 1;
const F_ARGV_FAULT: u32 = 2;
const F_EXE_CUT: u32 = 4;
const F_EXE_DELETED: u32 = 8;
const F_CWD_CUT: u32 = 16;

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
    /// Effective gid, like `euid`.
    pub egid: u32,
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
    /// Exec only: the executable's path as `/proc/<pid>/exe` names it (in
    /// the process's mount namespace, ` (deleted)` appended for a deleted
    /// file or a memfd), walked from the exec'd file's dentry in the hook;
    /// `None` when deeper or longer than the hook copies.
    pub exe: Option<String>,
    /// Exec only: the working directory, walked in the hook like `exe`.
    pub cwd: Option<String>,
    /// Exit only: the kernel exit code (`status << 8 | signal`).
    pub exit_code: i32,
}

/// Why a record could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its kind's size.
    #[error("record of {got} bytes, a {kind:?} record has {want}")]
    Short {
        /// The record's kind.
        kind: Kind,
        /// Bytes received.
        got: usize,
        /// Bytes a record of this kind has.
        want: usize,
    },
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

/// A path from the hook's leaf-first names (`"true\0bin\0usr\0"` is
/// `/usr/bin/true`); `/` for none (the namespace root).
pub fn join_path(b: &[u8]) -> String {
    let mut names: Vec<String> = split_argv(b);
    names.reverse();
    format!("/{}", names.join("/"))
}

/// Parses one ring-buffer record.
pub fn parse(b: &[u8]) -> Result<ProcEvent, WireError> {
    let short = |kind, want| Err(WireError::Short { kind, got: b.len(), want });
    if b.len() < 4 {
        return short(Kind::Fork, HEAD_LEN);
    }
    let kind = match u32_at(b, 0) {
        1 => Kind::Fork,
        2 => Kind::Exec,
        3 => Kind::Exit,
        k => return Err(WireError::Kind(k)),
    };
    let want = if kind == Kind::Exec { EXEC_LEN } else { HEAD_LEN };
    if b.len() < want {
        return short(kind, want);
    }
    let flags = u32_at(b, 52);
    let mut e = ProcEvent {
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
        egid: u32_at(b, 72),
        comm: cstr(&b[FIXED_LEN..HEAD_LEN]),
        filename: String::new(),
        argv: Vec::new(),
        argv_truncated: flags & F_ARGV_TRUNC != 0,
        argv_fault: flags & F_ARGV_FAULT != 0,
        exe: None,
        cwd: None,
    };
    if kind == Kind::Exec {
        let argv_off = HEAD_LEN + FILENAME_MAX;
        let exe_off = argv_off + ARGV_MAX;
        let cwd_off = exe_off + PATH_BUF;
        let argv_len = (u32_at(b, 48) as usize).min(ARGV_MAX);
        let exe_len = (u32_at(b, 64) as usize).min(PATH_BUF);
        let cwd_len = (u32_at(b, 68) as usize).min(PATH_BUF);
        e.filename = cstr(&b[HEAD_LEN..argv_off]);
        e.argv = split_argv(&b[argv_off..argv_off + argv_len]);
        e.exe = (flags & F_EXE_CUT == 0 && exe_len > 0).then(|| {
            let p = join_path(&b[exe_off..exe_off + exe_len]);
            if flags & F_EXE_DELETED != 0 {
                format!("{p} (deleted)")
            } else {
                p
            }
        });
        e.cwd = (flags & F_CWD_CUT == 0).then(|| join_path(&b[cwd_off..cwd_off + cwd_len]));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_records_are_refused_not_panicking() {
        assert_eq!(parse(&[]), Err(WireError::Short { kind: Kind::Fork, got: 0, want: HEAD_LEN }));
        let mut b = vec![0u8; EXEC_LEN];
        b[0] = 9;
        assert_eq!(parse(&b), Err(WireError::Kind(9)));
        // An exec record cut to a head's size.
        b[0] = 2;
        assert_eq!(parse(&b[..HEAD_LEN]), Err(WireError::Short { kind: Kind::Exec, got: HEAD_LEN, want: EXEC_LEN }));
        // Lengths larger than their buffers are clamped, no NULs anywhere.
        let mut b = vec![b'A'; EXEC_LEN];
        b[..4].copy_from_slice(&2u32.to_ne_bytes());
        b[48..52].copy_from_slice(&u32::MAX.to_ne_bytes());
        b[52..56].copy_from_slice(&0u32.to_ne_bytes());
        b[64..72].copy_from_slice(&[0xff; 8]);
        let e = parse(&b).unwrap();
        assert_eq!(e.argv, vec!["A".repeat(ARGV_MAX)]);
        assert_eq!(e.comm, "A".repeat(16));
        assert_eq!(e.exe, Some(format!("/{}", "A".repeat(PATH_BUF))));
        // A fork record is the head alone.
        let mut b = vec![0u8; HEAD_LEN];
        b[0] = 1;
        assert_eq!(parse(&b).unwrap().kind, Kind::Fork);
    }

    #[test]
    fn paths_are_joined_root_first_and_cut_ones_are_unknown() {
        assert_eq!(join_path(b"true\0bin\0usr\0"), "/usr/bin/true");
        assert_eq!(join_path(b""), "/");
        let mut b = vec![0u8; EXEC_LEN];
        b[0] = 2;
        let exe_off = HEAD_LEN + FILENAME_MAX + ARGV_MAX;
        b[exe_off..exe_off + 14].copy_from_slice(b"memfd:payload\0");
        b[64..68].copy_from_slice(&14u32.to_ne_bytes());
        b[52..56].copy_from_slice(&F_EXE_DELETED.to_ne_bytes());
        let e = parse(&b).unwrap();
        assert_eq!(e.exe.as_deref(), Some("/memfd:payload (deleted)"));
        assert_eq!(e.cwd.as_deref(), Some("/"));
        b[52..56].copy_from_slice(&(F_EXE_CUT | F_CWD_CUT).to_ne_bytes());
        let e = parse(&b).unwrap();
        assert_eq!((e.exe, e.cwd), (None, None));
    }

    #[test]
    fn argv_split_keeps_empty_args_and_cut_tail() {
        assert_eq!(split_argv(b"sh\0-c\0\0x\0"), vec!["sh", "-c", "", "x"]);
        assert_eq!(split_argv(b"env\0tru"), vec!["env", "tru"]);
        assert!(split_argv(b"").is_empty());
    }
}
