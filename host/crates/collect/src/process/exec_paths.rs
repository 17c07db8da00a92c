//! The executables of processes too short-lived for `/proc`: a fanotify
//! group that reports `FAN_OPEN_EXEC` on every local filesystem.
//!
//! A process that execs and exits within microseconds is gone before its
//! connector message is handled: `/proc/<pid>/exe` no longer resolves. The
//! kernel, however, reports the open of every executed file
//! (`FAN_OPEN_EXEC`, a notification, never a permission check) with the
//! pid of the process doing the exec, and hands the reader an open fd on
//! that file even after the process is gone; `readlink(/proc/self/fd/N)`
//! is the exact path (` (deleted)` appended when it was unlinked, as
//! `/proc/<pid>/exe` shows it).
//!
//! Why a group of its own rather than the file collector's: that group
//! reports directory handles and names (`FAN_REPORT_DFID_NAME`), whose
//! paths need `open_by_handle_at` and lose the file's format; it marks only
//! the filesystems of the include paths, and it may be off or degraded
//! while the process collector runs. This group is fd-mode
//! (`FAN_CLASS_NOTIF`, no fid flags): an fd per event, no handle
//! resolution, and the first bytes of the file are read through it to
//! tell a program (`PT_INTERP`: which loader follows) from a script (which
//! interpreter follows); see [`super::exec_match`]. It belongs to the
//! process collector's thread, which reads it right after each connector
//! exec message: the kernel queues an exec's `FAN_OPEN_EXEC` events before
//! it sends that message, so one drain after reading the message holds all
//! of the exec's records, and no exec ever waits for them.
//!
//! Marks: `FAN_MARK_FILESYSTEM` on every filesystem in the agent's mount
//! table, except pseudo filesystems nothing is executed from and network
//! and FUSE filesystems (marking one looks its mount point up, which can
//! hang on an unresponsive server or daemon). The mount table is watched
//! (`POLLPRI` on `/proc/self/mountinfo`) and new mounts are marked. Not
//! seen: execs from filesystems mounted only in other mount namespaces
//! (a container's private tmpfs), from `memfd`s (an internal mount, which
//! refuses filesystem marks with `EINVAL`), from network and FUSE
//! filesystems. Of such an exec of a dynamically linked program only its
//! loader is reported, which never stands for the exe (see
//! [`super::exec_match`]): while the process lives, `/proc/<pid>/exe`
//! names it (`/memfd:NAME (deleted)` for a memfd). `noexec` mounts are not marked, and
//! records of files on them (a filesystem also mounted elsewhere without
//! `noexec`) are dropped at once: such an exec fails after the open.
//!
//! An exec from overlayfs (a container's image) is reported twice: first
//! the layer's file, opened by overlayfs (its path is inside overlayfs's
//! private layer mount, e.g. `/usr/bin/x` relative to the layer), then the
//! overlay file the process named; the second replaces the first.
//!
//! Each read opens one fd per event in the reader; the read buffer is kept
//! small (at most ~170 events) so the agent's fd limit is not strained, and
//! on kernels with `FAN_REPORT_FD_ERROR` (6.13) a file that could not be
//! opened comes as an error instead of a silently dropped event.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::elf;
use super::exec_match::{Chain, ExecMatcher, Kind};
use crate::sink::Counters;

use edr_fanotify::{FanotifyReader, FAN_REPORT_FD_ERROR};

/// Events per read at most: the buffer is this many bytes (24 per event).
const READ_BUF: usize = 4096;

/// CLOCK_MONOTONIC in ns: the clock of the connector's timestamps.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The format of an executed file, from its first bytes.
pub(crate) fn classify(f: &File) -> Kind {
    let mut head = [0u8; 1024];
    let n = read_full_at(f, &mut head, 0);
    let head = &head[..n];
    if let Some(line) = head.strip_prefix(b"#!") {
        // As binfmt_script: blanks, then the path up to a blank or the end
        // of the line.
        let line = &line[..line.len().min(254)];
        let line = line.split(|c| *c == b'\n').next().unwrap_or(line);
        let interp = line.split(|c| *c == b' ' || *c == b'\t' || *c == 0).find(|w| !w.is_empty());
        return match interp {
            Some(i) => Kind::Script { interp: String::from_utf8_lossy(i).into_owned() },
            None => Kind::Other,
        };
    }
    if head.starts_with(b"\x7fELF") {
        return Kind::Elf { interp: elf_interp(f, head) };
    }
    Kind::Other
}

fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}

/// Reads `len` bytes at `off`, from `head` when it holds them.
fn bytes_at(f: &File, head: &[u8], off: u64, len: usize) -> Option<Vec<u8>> {
    let end = off.checked_add(len as u64)?;
    if end <= head.len() as u64 {
        return Some(head[off as usize..end as usize].to_vec());
    }
    let mut v = vec![0u8; len];
    (read_full_at(f, &mut v, off) == len).then_some(v)
}

/// The `PT_INTERP` of an ELF image (both classes, both byte orders), as the
/// kernel finds it: the first such program header.
fn elf_interp(f: &File, head: &[u8]) -> Option<String> {
    let h = elf::Header::parse(head).ok()?;
    let (phoff, size) = h.table().ok()?;
    let table = bytes_at(f, head, phoff, size)?;
    let (off, len) = h.interp(&table).ok()??;
    Some(elf::interp_path(&bytes_at(f, head, off, len)?))
}

/// Whether the fd is on an overlayfs.
fn on_overlayfs(fd: RawFd) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    // SAFETY: zeroed statfs is valid for fstatfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    unsafe { libc::fstatfs(fd, &mut st) == 0 && st.f_type as i64 == OVERLAYFS_SUPER_MAGIC }
}

/// One decoded event: mask, pid and the file's fd.
type Record = Result<(u64, i32, Option<OwnedFd>), edr_fanotify::DecodeError>;

/// The fanotify group, its marks, and the records not yet claimed.
pub(crate) struct ExecPaths {
    fan: FanotifyReader,
    mountinfo: File,
    /// Mount ids present at the last scan.
    seen_mounts: HashSet<u32>,
    /// The mount table as last read.
    mounts: Vec<edr_fanotify::Mount>,
    /// Filesystems (st_dev) marked, of the mounts present.
    filesystems: HashSet<(u32, u32)>,
    /// Network and FUSE mounts left unmarked.
    skipped: usize,
    fd_errors: bool,
    exclude: HashSet<u32>,
    /// Events a drain reads at most: the kernel queue's capacity and then
    /// some, so that it always reads everything queued when it started.
    drain_max: usize,
    /// When the last drain started (CLOCK_MONOTONIC ns).
    drained_at: u64,
    rescan_at: Option<Instant>,
    /// A mount change came within a second of the last rescan.
    rescan_wanted: bool,
    pub(crate) matcher: ExecMatcher,
}

impl ExecPaths {
    /// Creates the group and marks every local filesystem. Fails without
    /// CAP_SYS_ADMIN, or when not even one filesystem could be marked.
    pub fn open(exclude: &HashSet<u32>) -> io::Result<ExecPaths> {
        let base = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
        let f_flags = (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32;
        let mut fd_errors = true;
        let mut fan = FanotifyReader::init(base | FAN_REPORT_FD_ERROR, f_flags, READ_BUF);
        if fan.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EINVAL)) {
            fd_errors = false;
            fan = FanotifyReader::init(base, f_flags, READ_BUF);
        }
        let fan = fan.map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EPERM) => " (needs root / CAP_SYS_ADMIN)",
                Some(libc::ENOSYS) => " (kernel built without CONFIG_FANOTIFY)",
                _ => "",
            };
            io::Error::new(e.kind(), format!("fanotify_init: {e}{hint}"))
        })?;
        let mountinfo = File::open("/proc/self/mountinfo")?;
        let queue = std::fs::read_to_string("/proc/sys/fs/fanotify/max_queued_events").ok().and_then(|s| s.trim().parse::<usize>().ok()).unwrap_or(16_384);
        let mut me = ExecPaths {
            fan,
            mountinfo,
            seen_mounts: HashSet::new(),
            mounts: Vec::new(),
            filesystems: HashSet::new(),
            skipped: 0,
            fd_errors,
            exclude: exclude.clone(),
            drain_max: queue + 1024,
            drained_at: 0,
            rescan_at: None,
            rescan_wanted: false,
            matcher: ExecMatcher::default(),
        };
        me.mark_mounts()?;
        if me.filesystems.is_empty() {
            return Err(io::Error::other("no filesystem could be marked for FAN_OPEN_EXEC"));
        }
        Ok(me)
    }

    /// The mount table, to poll for `POLLPRI` (a mount came or went).
    pub fn mountinfo_fd(&self) -> RawFd {
        self.mountinfo.as_raw_fd()
    }

    /// For the collector's mode string.
    pub fn describe(&self) -> String {
        let mut s = format!("fanotify exec paths on {} filesystems", self.filesystems.len());
        if self.skipped > 0 {
            s.push_str(&format!("; {} network/FUSE mounts unwatched", self.skipped));
        }
        s
    }

    /// Marks the mounts not seen before. Errors only on EPERM (no
    /// privilege); a filesystem refusing a mark is logged and skipped.
    /// `noexec` mounts are not marked (a filesystem mounted elsewhere
    /// without `noexec` is marked there).
    fn mark_mounts(&mut self) -> io::Result<()> {
        let mut text = String::new();
        self.mountinfo.rewind()?;
        self.mountinfo.read_to_string(&mut text)?;
        self.mounts = edr_fanotify::parse_mountinfo(&text);
        // A filesystem stays marked while a mount of it seen marked before
        // is still there (a superblock outlives none of its mounts); a
        // device number seen again only on new mounts may be a new
        // filesystem (anonymous device numbers are reused) and is marked.
        let mut marked: HashSet<(u32, u32)> =
            self.mounts.iter().filter(|m| self.seen_mounts.contains(&m.id) && self.filesystems.contains(&m.dev)).map(|m| m.dev).collect();
        let mut seen = HashSet::with_capacity(self.mounts.len());
        let mut skipped = 0;
        for m in &self.mounts {
            seen.insert(m.id);
            if m.noexec || edr_fanotify::is_pseudo(&m.fstype) {
                continue;
            }
            if edr_fanotify::is_remote_or_fuse(&m.fstype) {
                if !self.seen_mounts.contains(&m.id) {
                    tracing::info!(mount = %m.mount_point, fstype = %m.fstype, "exec paths: network/FUSE mount not marked; execs from it may lack their exe");
                }
                skipped += 1;
                continue;
            }
            // (A mount remounted without `noexec`, or a filesystem that
            // refused a mark, is tried again.)
            if marked.contains(&m.dev) {
                continue;
            }
            match self.mark(&m.mount_point) {
                Ok(()) => {
                    marked.insert(m.dev);
                }
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    return Err(io::Error::new(e.kind(), format!("fanotify filesystem mark on {}: {e} (needs CAP_SYS_ADMIN)", m.mount_point)));
                }
                Err(e) => {
                    tracing::debug!(mount = %m.mount_point, fstype = %m.fstype, "exec paths: filesystem refused a FAN_OPEN_EXEC mark: {e}");
                }
            }
        }
        self.seen_mounts = seen;
        self.filesystems = marked;
        self.skipped = skipped;
        Ok(())
    }

    fn mark(&self, path: &str) -> io::Result<()> {
        edr_fanotify::mark(self.fan.as_fd(), libc::FAN_MARK_FILESYSTEM, libc::FAN_OPEN_EXEC, std::path::Path::new(path))
    }

    /// The mount table changed (`poll` reported it, which re-arms the
    /// notification): marks new mounts, at most once a second (a change
    /// within that second is picked up by [`ExecPaths::housekeeping`]).
    /// Returns whether the marked filesystems changed.
    pub fn mounts_changed(&mut self) -> bool {
        let now = Instant::now();
        if self.rescan_at.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.rescan_wanted = true;
            return false;
        }
        self.rescan(now)
    }

    fn rescan(&mut self, now: Instant) -> bool {
        self.rescan_at = Some(now);
        self.rescan_wanted = false;
        let before = (self.filesystems.len(), self.skipped);
        if let Err(e) = self.mark_mounts() {
            tracing::warn!("exec paths: cannot mark new mounts: {e}");
        }
        before != (self.filesystems.len(), self.skipped)
    }

    /// Reads every queued record into the matcher (bounded by the queue's
    /// capacity, so it returns even while execs keep coming). A queue
    /// overflow or a failed read is counted in `overflows`/`lost` and
    /// recorded as a gap, stamped after the read that showed it (later
    /// than the loss: an exec in between is only denied later records).
    pub fn drain(&mut self, counters: &Counters) {
        let started = monotonic_ns();
        let mut events = 0;
        while events < self.drain_max {
            // Owned (mask, pid, fd): the matcher is updated after the buffer is released.
            let read = self.fan.read().map(|b| b.map(|b| (b.bytes(), b.map(|r| r.map(|e| (e.mask, e.pid, e.fd))).collect::<Vec<Record>>())));
            let read_ns = monotonic_ns();
            let (n, evs) = match read {
                Ok(None) => break,
                Ok(Some(batch)) => batch,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINVAL | libc::EFAULT | libc::EBADF) => {
                        tracing::error!("exec paths: fanotify read failed: {e}");
                        self.matcher.gap(read_ns);
                        break;
                    }
                    // The kernel could not open the file for us (EMFILE,
                    // ENFILE, ENOMEM, an LSM's EACCES...): that one event is
                    // gone (kernels without FAN_REPORT_FD_ERROR).
                    _ => {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                        self.matcher.gap(read_ns);
                        tracing::warn!("exec paths: an FAN_OPEN_EXEC event was lost: {e} (counted)");
                        events += 1;
                        continue;
                    }
                },
            };
            events += self.handle(evs, read_ns, counters);
            // Events are META bytes each: a read that left room for one
            // more found the queue empty.
            if n + edr_fanotify::METADATA_LEN <= self.fan.capacity() {
                break;
            }
        }
        self.drained_at = started;
    }

    /// Handles the events of one read; returns how many there were.
    fn handle(&mut self, events: Vec<Record>, read_ns: u64, counters: &Counters) -> usize {
        let mut count = 0;
        for ev in events {
            let (mask, pid, fd) = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    // A malformed buffer: what it held is lost.
                    counters.lost.fetch_add(1, Ordering::Relaxed);
                    self.matcher.gap(read_ns);
                    tracing::warn!("exec paths: {e} (counted as lost)");
                    continue;
                }
            };
            count += 1;
            // The fd is owned: every path below closes it.
            let file = fd.map(File::from);
            if mask & libc::FAN_Q_OVERFLOW != 0 {
                let k = counters.overflows.fetch_add(1, Ordering::Relaxed) + 1;
                counters.lost.fetch_add(1, Ordering::Relaxed);
                self.matcher.gap(read_ns);
                tracing::warn!(
                    overflows = k,
                    "exec paths: fanotify queue overflowed, FAN_OPEN_EXEC events were lost (counted); execs before it may lack their exe"
                );
                continue;
            }
            let pid = pid.max(0) as u32;
            if mask & libc::FAN_OPEN_EXEC == 0 || self.exclude.contains(&pid) {
                continue;
            }
            let Some(file) = file else {
                // FAN_REPORT_FD_ERROR: the exec happened, its file is unknown.
                if self.fd_errors {
                    self.matcher.push(pid, String::new(), Kind::Unknown, read_ns);
                }
                continue;
            };
            let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
            if !path.is_empty() && edr_fanotify::is_noexec(&self.mounts, &path) {
                continue;
            }
            // An exec from overlayfs opens the layer's file first (reported
            // with a path inside overlayfs's private layer mount), then the
            // overlay file: keep the one the process named.
            if !path.is_empty() && self.matcher.last_has_name_of(pid, &path) && on_overlayfs(file.as_raw_fd()) {
                self.matcher.replace_last(pid, path, read_ns);
                continue;
            }
            let kind = if path.is_empty() {
                Kind::Unknown
            } else if self.matcher.expects_loader(pid, &path) {
                // Its format is not needed (a loader ends the chain).
                Kind::Elf { interp: None }
            } else {
                classify(&file)
            };
            self.matcher.push(pid, path, kind, read_ns);
        }
        count
    }

    /// The records of the exec of `pid` stamped `exec_ns` (connector
    /// time). Drains first unless a drain started after the exec: then its
    /// records, queued before the connector message, are in hand already.
    pub fn take(&mut self, pid: u32, exec_ns: u64, counters: &Counters) -> Option<Chain> {
        if self.drained_at <= exec_ns {
            self.drain(counters);
        }
        self.matcher.take(pid, exec_ns)
    }

    /// `pid` was forked at `fork_ns`.
    pub fn forked(&mut self, pid: u32, fork_ns: u64) {
        self.matcher.forked(pid, fork_ns);
    }

    /// `pid` exited at `exit_ns`: its execs were all handled (the kernel
    /// sent their messages first), so records of it still in hand once
    /// everything queued before the exit is read are of failed execs, and
    /// must not reach a later process with the same pid. (A later process
    /// whose records were already read too loses them: its exec is
    /// reported from `/proc` only.)
    pub fn exited(&mut self, pid: u32, exit_ns: u64, counters: &Counters) {
        if self.drained_at <= exit_ns {
            self.drain(counters);
        }
        self.matcher.forget(pid);
    }

    /// Connector messages were lost: the records in hand may belong to the
    /// lost execs, so none of them is trusted.
    pub fn messages_lost(&mut self, counters: &Counters) {
        self.drain(counters);
        self.matcher.clear();
    }

    /// Periodic (every second): reads the queue (records of failed execs
    /// come without a connector message to trigger that), drops unclaimed
    /// records past their time, and rescans the mount table when a change
    /// was rate-limited. Returns whether the marked filesystems changed.
    pub fn housekeeping(&mut self, counters: &Counters) -> bool {
        self.drain(counters);
        let n = self.matcher.expire(monotonic_ns());
        if n > 0 {
            tracing::debug!(expired = n, held = self.matcher.len(), "exec paths: unclaimed FAN_OPEN_EXEC records expired (failed execs)");
        }
        match self.rescan_at {
            Some(t) if self.rescan_wanted && t.elapsed() >= Duration::from_secs(1) => self.rescan(Instant::now()),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::Write;
    use std::os::fd::FromRawFd;

    /// The exec-path watcher, or `None` with the skip recorded (no root, no fanotify).
    fn open_or_skip(excluded: &HashSet<u32>) -> Option<ExecPaths> {
        ExecPaths::open(excluded).map_err(|e| edr_testkit::skip(format!("{e}"))).ok()
    }

    fn file_with(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(bytes).unwrap();
        let f = File::open(t.path()).unwrap();
        (t, f)
    }

    #[test]
    fn scripts_and_other_formats() {
        let (_t, f) = file_with(b"#!  /usr/bin/env  python3 -u\nprint()\n");
        assert_eq!(classify(&f), Kind::Script { interp: "/usr/bin/env".into() });
        let (_t, f) = file_with(b"#!/bin/sh\n");
        assert_eq!(classify(&f), Kind::Script { interp: "/bin/sh".into() });
        let (_t, f) = file_with(b"#!\n");
        assert_eq!(classify(&f), Kind::Other);
        let (_t, f) = file_with(b"MZ\x90\x00");
        assert_eq!(classify(&f), Kind::Other);
        let (_t, f) = file_with(b"");
        assert_eq!(classify(&f), Kind::Other);
        let (_t, f) = file_with(b"\x7fELF\x02\x01");
        assert_eq!(classify(&f), Kind::Elf { interp: None }, "truncated ELF");
    }

    /// A minimal big-endian 32-bit ELF whose program headers and interpreter
    /// lie past the first KiB (read with extra preads).
    #[test]
    fn elf32_big_endian_with_far_program_headers() {
        let mut b = vec![0u8; 3000];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1; // ELFCLASS32
        b[5] = 2; // big-endian
        let phoff = 2000u32;
        b[0x1c..0x20].copy_from_slice(&phoff.to_be_bytes());
        b[0x2a..0x2c].copy_from_slice(&32u16.to_be_bytes());
        b[0x2c..0x2e].copy_from_slice(&2u16.to_be_bytes());
        // PT_LOAD, then PT_INTERP at 2800.
        let p = phoff as usize;
        b[p..p + 4].copy_from_slice(&1u32.to_be_bytes());
        let q = p + 32;
        b[q..q + 4].copy_from_slice(&3u32.to_be_bytes());
        b[q + 4..q + 8].copy_from_slice(&2800u32.to_be_bytes());
        let interp = b"/lib/ld.so.1\0";
        b[q + 0x10..q + 0x14].copy_from_slice(&(interp.len() as u32).to_be_bytes());
        b[2800..2800 + interp.len()].copy_from_slice(interp);
        let (_t, f) = file_with(&b);
        assert_eq!(classify(&f), Kind::Elf { interp: Some("/lib/ld.so.1".into()) });
        // Without PT_INTERP: static.
        b[q..q + 4].copy_from_slice(&1u32.to_be_bytes());
        let (_t, f) = file_with(&b);
        assert_eq!(classify(&f), Kind::Elf { interp: None });
    }

    #[test]
    fn system_binaries() {
        let f = File::open("/bin/true").unwrap();
        let Kind::Elf { interp: Some(ld) } = classify(&f) else {
            edr_testkit::skip("/bin/true is not a dynamically linked ELF here");
            return;
        };
        assert!(ld.contains("ld"), "{ld}");
        assert!(std::path::Path::new(&ld).exists(), "{ld}");
        // The loader itself has no interpreter.
        let f = File::open(&ld).unwrap();
        assert_eq!(classify(&f), Kind::Elf { interp: None });
    }

    /// Execs of excluded pids (the agent's) leave no record.
    #[test]
    fn excluded_pids_leave_no_records() {
        use std::io::Write as _;
        let c = crate::sink::Counters::new("process", "test");
        let spawn = || std::process::Command::new("/bin/sh").arg("-c").arg("read x; exec /bin/true").stdin(std::process::Stdio::piped()).spawn().unwrap();
        let (mut excluded, mut other) = (spawn(), spawn());
        let Some(mut paths) = open_or_skip(&HashSet::from([excluded.id()])) else { return };
        let t0 = monotonic_ns();
        for ch in [&mut excluded, &mut other] {
            ch.stdin.take().unwrap().write_all(b"\n").unwrap();
            assert!(ch.wait().unwrap().success());
        }
        let chain = paths.take(other.id(), t0, &c).expect("records of the other exec");
        assert_eq!(chain.exe(), std::fs::canonicalize("/bin/true").unwrap().to_str());
        assert_eq!(paths.matcher.take(excluded.id(), t0), None);
    }

    /// Runs a freshly written file. Another test thread forking while it
    /// was open for writing leaves the child holding that fd until it
    /// execs: `ETXTBSY` for a moment.
    fn run(path: &std::path::Path) -> u32 {
        for _ in 0..100 {
            match std::process::Command::new(path).spawn() {
                Ok(mut child) => {
                    assert!(child.wait().unwrap().success());
                    return child.id();
                }
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
        panic!("{}: text file busy for a second", path.display());
    }

    /// Unmounts on drop (also when an assertion fails).
    struct Unmount(CString);

    impl Drop for Unmount {
        fn drop(&mut self) {
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }

    fn mount(fstype: &str, target: &std::path::Path, opts: &str) -> io::Result<Unmount> {
        let t = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
        let f = CString::new(fstype).unwrap();
        let o = CString::new(opts).unwrap();
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe { libc::mount(f.as_ptr(), t.as_ptr(), f.as_ptr(), 0, o.as_ptr().cast()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Unmount(t))
    }

    /// A filesystem mounted after the start is marked once the mount table
    /// says it changed.
    #[test]
    fn a_filesystem_mounted_later_is_marked() {
        let c = crate::sink::Counters::new("process", "test");
        let Some(mut paths) = open_or_skip(&HashSet::new()) else { return };
        let before = paths.describe();
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        let _unmount = match mount("tmpfs", &d, "size=8m") {
            Ok(u) => u,
            Err(e) => {
                edr_testkit::skip(format!("cannot mount a tmpfs here: {e}"));
                return;
            }
        };
        let mut p = libc::pollfd { fd: paths.mountinfo_fd(), events: libc::POLLPRI, revents: 0 };
        // SAFETY: one valid pollfd.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 1000) }, 1, "mountinfo reports the change");
        assert!(paths.mounts_changed(), "one more filesystem");
        assert_ne!(paths.describe(), before);
        let bin = d.join("dropper");
        std::fs::copy("/bin/true", &bin).unwrap();
        let t0 = monotonic_ns();
        let pid = run(&bin);
        let chain = paths.take(pid, t0, &c).expect("records of the exec");
        assert_eq!(chain.exe(), bin.to_str());
    }

    /// On the real kernel: an exec from an overlayfs mount yields the
    /// overlay path, not the layer's file.
    #[test]
    fn overlay_exec_names_the_overlay_file() {
        let c = crate::sink::Counters::new("process", "test");
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let d = std::fs::canonicalize(dir.path()).unwrap();
        for sub in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(d.join(sub)).unwrap();
        }
        std::fs::copy("/bin/true", d.join("lower/t")).unwrap();
        let merged = d.join("merged");
        let opts = format!("lowerdir={},upperdir={},workdir={}", d.join("lower").display(), d.join("upper").display(), d.join("work").display());
        let _unmount = match mount("overlay", &merged, &opts) {
            Ok(u) => u,
            Err(e) => {
                edr_testkit::skip(format!("cannot mount an overlay here: {e}"));
                return;
            }
        };
        // Opened after the mount: the overlay is marked too.
        let Some(mut paths) = open_or_skip(&HashSet::new()) else { return };
        let t0 = monotonic_ns();
        let pid = run(&merged.join("t"));
        let chain = paths.take(pid, t0, &c).expect("records of the exec");
        assert_eq!(chain.exe(), merged.join("t").to_str(), "{chain:?}");
        assert_eq!(chain.files.len(), 1, "{chain:?}");
        assert_eq!(paths.matcher.take(pid, t0), None, "nothing left over: {:?}", paths.matcher);
    }

    /// A memfd holding a copy of `src`, inherited by children (no
    /// `MFD_CLOEXEC`), so they can exec it as `/proc/self/fd/N`.
    pub(crate) fn memfd_copy(name: &str, src: &str) -> OwnedFd {
        let n = CString::new(name).unwrap();
        // SAFETY: valid NUL-terminated name; the fd is owned right away.
        let fd = unsafe { libc::memfd_create(n.as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = File::from(fd.try_clone().unwrap());
        std::io::copy(&mut File::open(src).unwrap(), &mut f).unwrap();
        fd
    }

    /// On the real kernel: exec'ing a memfd (`execve("/proc/self/fd/N")`)
    /// reports only the loader of the program in it: the memfd's own
    /// filesystem cannot be marked. The chain names no exe (the old
    /// behaviour reported the loader as the exe and, as the exe differed
    /// from `/proc/<pid>/exe`, dropped the memfd's exe and argv).
    #[test]
    fn a_memfd_exec_reports_only_its_loader() {
        let c = crate::sink::Counters::new("process", "test");
        let Some(mut paths) = open_or_skip(&HashSet::new()) else { return };
        let fd = memfd_copy("edr-test-payload", "/bin/true");
        // SAFETY: plain syscall on valid fds; a refusal is the expected answer.
        let probe = unsafe {
            libc::fanotify_mark(paths.fan.as_raw_fd(), libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM, libc::FAN_OPEN_EXEC, fd.as_raw_fd(), std::ptr::null())
        };
        if probe == 0 {
            eprintln!("note: this kernel lets a memfd's filesystem be marked");
        }
        let t0 = monotonic_ns();
        let mut child = std::process::Command::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).spawn().unwrap();
        assert!(child.wait().unwrap().success());
        let chain = paths.take(child.id(), t0, &c).expect("a record of the exec");
        if probe == 0 {
            assert_eq!(chain.exe(), Some("/memfd:edr-test-payload (deleted)"), "{chain:?}");
            return;
        }
        let Kind::Elf { interp: Some(ld) } = classify(&File::open("/bin/true").unwrap()) else {
            edr_testkit::skip("/bin/true is static here");
            return;
        };
        assert_eq!(chain.exe(), None, "the loader is not the exe: {chain:?}");
        let ld = std::fs::canonicalize(ld).unwrap();
        assert_eq!(chain.only_loader(), ld.to_str(), "{chain:?}");
    }

    /// On the real kernel: the records of a script run by a short-lived
    /// process come as script, interpreter, loader, and make one chain
    /// whose exe is the interpreter.
    #[test]
    fn kernel_reports_program_interpreter_and_loader_in_order() {
        let c = crate::sink::Counters::new("process", "test");
        let Some(mut paths) = open_or_skip(&HashSet::new()) else { return };
        assert!(!paths.describe().is_empty());
        let dir = tempfile::tempdir_in("/tmp").unwrap();
        let script = dir.path().join("s.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let script = std::fs::canonicalize(&script).unwrap();
        let t0 = monotonic_ns();
        let pid = run(&script);
        // As the collector does: the drain after the connector message.
        let chain = paths.take(pid, t0, &c).expect("records of the script");
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(chain.exe(), Some(sh.to_str().unwrap()), "{chain:?}");
        assert_eq!(chain.argv(), vec![sh.to_string_lossy().into_owned(), script.to_string_lossy().into_owned()]);
        assert_eq!(paths.matcher.take(pid, t0), None, "the loader went with it");
        assert_eq!(c.status().lost, 0);
    }
}
