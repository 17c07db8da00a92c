//! The netlink process connector (`NETLINK_CONNECTOR`, `CN_IDX_PROC`).
//!
//! Message layout (all native-endian): `nlmsghdr` (16 bytes), `cn_msg`
//! (20: idx, val, seq, ack, len, flags), then `proc_event` (what, cpu,
//! timestamp_ns, then the per-event data). `cn_msg.seq` counts the events
//! each CPU sent; a gap on a CPU is the number of messages the kernel dropped
//! for us.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::exec_paths::ExecPaths;
use super::ExecImage;
use crate::procfs::Snapshot;
use crate::sink::Sink;
use crate::Ctx;

const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;

const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
const EVENT_HDR_LEN: usize = 16;

/// One process-connector event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProcEvent {
    /// A clone; a thread when `child_pid != child_tgid`.
    Fork { parent_tgid: u32, child_pid: u32, child_tgid: u32 },
    /// An execve.
    Exec { pid: u32, tgid: u32 },
    /// An exit; a thread's when `pid != tgid`. `exit_code` is the raw wait status.
    Exit { pid: u32, tgid: u32, exit_code: u32 },
    /// The acknowledgement of our subscription (`err` 0 on success).
    Ack { err: u32 },
    /// uid/gid/sid/comm/ptrace/coredump changes: not used.
    Other(u32),
}

/// One connector message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CnMsg {
    pub cpu: u32,
    pub seq: u32,
    pub ts_ns: u64,
    pub event: ProcEvent,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8).map(|s| u64::from_ne_bytes(s.try_into().unwrap()))
}

/// Parses the netlink messages of one datagram; skips anything malformed or
/// not from the process connector.
pub(crate) fn parse_messages(buf: &[u8]) -> Vec<CnMsg> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let Some(len) = u32_at(buf, off).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let msg = &buf[off..off + len];
        let ty = u16::from_ne_bytes([msg[4], msg[5]]);
        if ty == libc::NLMSG_DONE as u16 {
            if let Some(m) = parse_cn(&msg[NLMSG_HDRLEN..]) {
                out.push(m);
            }
        }
        off += (len + 3) & !3;
    }
    out
}

fn parse_cn(b: &[u8]) -> Option<CnMsg> {
    if u32_at(b, 0)? != CN_IDX_PROC || u32_at(b, 4)? != CN_VAL_PROC {
        return None;
    }
    let seq = u32_at(b, 8)?;
    let data_len = u16::from_ne_bytes([*b.get(16)?, *b.get(17)?]) as usize;
    let ev = b.get(CN_MSG_LEN..CN_MSG_LEN + data_len)?;
    let what = u32_at(ev, 0)?;
    let cpu = u32_at(ev, 4)?;
    let ts_ns = u64_at(ev, 8)?;
    let d = EVENT_HDR_LEN;
    let event = match what {
        PROC_EVENT_NONE => ProcEvent::Ack { err: u32_at(ev, d)? },
        PROC_EVENT_FORK => ProcEvent::Fork { parent_tgid: u32_at(ev, d + 4)?, child_pid: u32_at(ev, d + 8)?, child_tgid: u32_at(ev, d + 12)? },
        PROC_EVENT_EXEC => ProcEvent::Exec { pid: u32_at(ev, d)?, tgid: u32_at(ev, d + 4)? },
        PROC_EVENT_EXIT => ProcEvent::Exit { pid: u32_at(ev, d)?, tgid: u32_at(ev, d + 4)?, exit_code: u32_at(ev, d + 8)? },
        other => ProcEvent::Other(other),
    };
    Some(CnMsg { cpu, seq, ts_ns, event })
}

/// Counts messages the kernel dropped from gaps in each CPU's sequence.
#[derive(Debug, Default)]
pub(crate) struct SeqTracker {
    next: HashMap<u32, u32>,
}

impl SeqTracker {
    /// Records a message; returns how many were skipped before it on its CPU.
    pub fn observe(&mut self, cpu: u32, seq: u32) -> u64 {
        let gap = match self.next.get(&cpu) {
            Some(&expected) => {
                let d = seq.wrapping_sub(expected);
                // A huge "gap" is a reordering or a wrap we cannot judge: ignore.
                if d < (1 << 24) {
                    u64::from(d)
                } else {
                    0
                }
            }
            None => 0,
        };
        self.next.insert(cpu, seq.wrapping_add(1));
        gap
    }
}

/// A subscribed process-connector socket.
pub(crate) struct CnProc {
    fd: OwnedFd,
}

impl CnProc {
    /// Opens, sizes, binds and subscribes (PROC_CN_MCAST_LISTEN).
    pub fn open(rcvbuf: usize) -> io::Result<CnProc> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, libc::NETLINK_CONNECTOR) };
        if raw < 0 {
            return Err(ctx_err("socket(AF_NETLINK, NETLINK_CONNECTOR)"));
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let size = rcvbuf.min(i32::MAX as usize) as libc::c_int;
        if setsockopt_int(&fd, libc::SO_RCVBUFFORCE, size).is_err() {
            // Not privileged enough to exceed rmem_max: take what we may.
            let _ = setsockopt_int(&fd, libc::SO_RCVBUF, size);
        }
        // SAFETY: zeroed sockaddr_nl is valid; we set the fields we need.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), &addr as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_nl>() as u32) };
        if rc < 0 {
            return Err(ctx_err("bind(CN_IDX_PROC)"));
        }
        let sock = CnProc { fd };
        sock.control(PROC_CN_MCAST_LISTEN).map_err(|e| io::Error::new(e.kind(), format!("subscribe (PROC_CN_MCAST_LISTEN): {e}")))?;
        Ok(sock)
    }

    fn control(&self, op: u32) -> io::Result<()> {
        let total = NLMSG_HDRLEN + CN_MSG_LEN + 4;
        let mut m = Vec::with_capacity(total);
        m.extend_from_slice(&(total as u32).to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&std::process::id().to_ne_bytes());
        m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // ack
        m.extend_from_slice(&4u16.to_ne_bytes()); // len
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&op.to_ne_bytes());
        // SAFETY: m is a valid buffer of m.len() bytes.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram; `Ok(None)` when it did not come from the kernel.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: zeroed sockaddr_nl is valid for recvfrom to fill.
        let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: buf and from are valid for the sizes passed.
        let n = unsafe { libc::recvfrom(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0, &mut from as *mut _ as *mut libc::sockaddr, &mut len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // Only the kernel (port id 0) may speak for the process connector.
        Ok(if from.nl_pid == 0 { Some(n as usize) } else { None })
    }
}

impl Drop for CnProc {
    fn drop(&mut self) {
        // Lets the kernel stop generating events when nobody listens.
        let _ = self.control(PROC_CN_MCAST_IGNORE);
    }
}

fn setsockopt_int(fd: &OwnedFd, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: v lives for the call and its size is passed.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, &v as *const _ as *const libc::c_void, std::mem::size_of::<libc::c_int>() as u32) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ctx_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Waits up to `ms` for the fd to be readable.
pub(crate) fn wait_readable(fd: libc::c_int, ms: i32) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Reads a subscribed socket and keeps the loss accounting.
pub(crate) struct Reader {
    sock: CnProc,
    seqs: SeqTracker,
    buf: Vec<u8>,
    /// Exec paths from fanotify, when available.
    paths: Option<ExecPaths>,
}

impl Reader {
    pub fn new(sock: CnProc) -> Reader {
        Reader { sock, seqs: SeqTracker::default(), buf: vec![0u8; 64 * 1024], paths: None }
    }

    /// Handles what is queued; returns when the socket is empty, or after
    /// a bounded number of messages so that the caller can check for stop.
    pub fn drain(&mut self, ctx: &Ctx, sink: &Sink) {
        let c = &sink.counters;
        for _ in 0..4096 {
            match self.sock.recv(&mut self.buf) {
                Ok(Some(n)) => {
                    for m in parse_messages(&self.buf[..n]) {
                        // Acks too: the kernel numbers them like events.
                        let gap = self.seqs.observe(m.cpu, m.seq);
                        if gap > 0 {
                            c.lost.fetch_add(gap, Ordering::Relaxed);
                            tracing::warn!(cpu = m.cpu, lost = gap, "process connector: kernel dropped messages (counted as lost)");
                            if let Some(p) = self.paths.as_mut() {
                                p.messages_lost(c);
                            }
                        }
                        handle(ctx, sink, m, self.paths.as_mut());
                    }
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    let n = c.overflows.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!(
                        overflows = n,
                        "process connector: receive buffer overflowed (ENOBUFS), the kernel dropped events; counted, lineage may be incomplete"
                    );
                    if let Some(p) = self.paths.as_mut() {
                        p.messages_lost(c);
                    }
                }
                Err(e) => {
                    tracing::error!("process connector: recv failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    return;
                }
            }
        }
    }
}

/// The collector loop: read, handle, repeat until stopped. With exec
/// paths, the mount table is watched too (new mounts get marked). The
/// fanotify group is not polled: its records are read when an exec or exit
/// message needs them (and every second), which keeps its queue short
/// without waking this thread a second time for every exec.
pub(crate) fn run(sock: CnProc, paths: Option<ExecPaths>, note: Option<String>, ctx: &Ctx, sink: &Sink) {
    let fd = sock.fd.as_raw_fd();
    let mut reader = Reader::new(sock);
    reader.paths = paths;
    let mut last_evict = Instant::now();
    let mut last_sweep = Instant::now();
    let pollfd = |fd, events| libc::pollfd { fd, events, revents: 0 };
    while !ctx.stopping() {
        let mut fds = [pollfd(fd, libc::POLLIN), pollfd(-1, libc::POLLPRI)];
        let mut nfds = 1;
        if let Some(p) = &reader.paths {
            fds[1].fd = p.mountinfo_fd();
            nfds = 2;
        }
        // SAFETY: fds holds at least nfds valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), nfds, 200) } > 0;
        if ready {
            if let Some(p) = reader.paths.as_mut() {
                if fds[1].revents != 0 && p.mounts_changed() {
                    sink.counters.set_mode(super::netlink_mode(Ok(p.describe()), note.as_deref()));
                }
            }
            if fds[0].revents != 0 {
                reader.drain(ctx, sink);
            }
        }
        let now = Instant::now();
        if now.duration_since(last_evict) >= Duration::from_secs(1) {
            ctx.tree.evict(now);
            last_evict = now;
            if let Some(p) = reader.paths.as_mut() {
                if p.housekeeping(&sink.counters) {
                    sink.counters.set_mode(super::netlink_mode(Ok(p.describe()), note.as_deref()));
                }
            }
        }
        if now.duration_since(last_sweep) >= Duration::from_secs(30) {
            let n = super::sweep(ctx);
            if n > 0 {
                tracing::debug!(retired = n, "process tree: retired processes whose exit was not reported");
            }
            last_sweep = now;
        }
    }
}

fn handle(ctx: &Ctx, sink: &Sink, m: CnMsg, paths: Option<&mut ExecPaths>) {
    match m.event {
        ProcEvent::Fork { parent_tgid, child_pid, child_tgid } if child_pid == child_tgid => {
            super::on_fork(ctx, parent_tgid, child_pid, m.ts_ns);
            if let Some(p) = paths {
                p.forked(child_pid, m.ts_ns);
            }
        }
        ProcEvent::Exec { tgid, .. } => {
            // /proc first: the process may be exiting right now.
            let mut snap = Snapshot::read(tgid);
            // The records are claimed either way, so that they cannot stand
            // in for a later exec of the pid; used when /proc was too late.
            let chain = paths.and_then(|p| p.take(tgid, m.ts_ns, &sink.counters));
            if let Some(then) = chain.as_ref().and_then(|c| c.exe()) {
                if snap.forget_later_image(then) {
                    tracing::debug!(pid = tgid, exe = then, "exec superseded by a later exec before /proc was read; its image comes from fanotify");
                }
            }
            let image = chain.filter(|_| snap.exe.is_none()).and_then(|c| ExecImage::recovered(&c));
            super::on_exec(ctx, sink, tgid, snap, Some(m.ts_ns), image);
        }
        ProcEvent::Exit { pid, tgid, exit_code } if pid == tgid => {
            super::on_exit(ctx, sink, tgid, Some(exit_code));
            if let Some(p) = paths {
                p.exited(tgid, m.ts_ns, &sink.counters);
            }
        }
        ProcEvent::Ack { err } if err != 0 => {
            tracing::warn!("process connector refused the subscription: errno {err}");
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(what: u32, cpu: u32, seq: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&cpu.to_ne_bytes());
        ev.extend_from_slice(&123_456_789u64.to_ne_bytes());
        for d in data {
            ev.extend_from_slice(&d.to_ne_bytes());
        }
        let total = NLMSG_HDRLEN + CN_MSG_LEN + ev.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(total as u32).to_ne_bytes());
        m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&ev);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    #[test]
    fn parses_fork_exec_exit() {
        let mut buf = msg(PROC_EVENT_FORK, 1, 7, &[100, 100, 200, 200]);
        buf.extend(msg(PROC_EVENT_EXEC, 1, 8, &[200, 200]));
        buf.extend(msg(PROC_EVENT_EXIT, 0, 3, &[200, 200, 3 << 8, 17, 100, 100]));
        buf.extend(msg(0x200, 0, 4, &[1, 1, 0, 0, 0, 0])); // comm
        let ms = parse_messages(&buf);
        assert_eq!(ms.len(), 4);
        assert_eq!(ms[0].event, ProcEvent::Fork { parent_tgid: 100, child_pid: 200, child_tgid: 200 });
        assert_eq!((ms[0].cpu, ms[0].seq, ms[0].ts_ns), (1, 7, 123_456_789));
        assert_eq!(ms[1].event, ProcEvent::Exec { pid: 200, tgid: 200 });
        assert_eq!(ms[2].event, ProcEvent::Exit { pid: 200, tgid: 200, exit_code: 3 << 8 });
        assert_eq!(ms[3].event, ProcEvent::Other(0x200));
        // Truncated and foreign messages are skipped, not misread.
        assert!(parse_messages(&buf[..10]).is_empty());
        let mut foreign = msg(PROC_EVENT_EXEC, 0, 0, &[1, 1]);
        foreign[16] = 9; // another connector index
        assert!(parse_messages(&foreign).is_empty());
    }

    /// A subscribed socket nobody reads overflows: the reader must report the
    /// overflow (ENOBUFS) and count the lost messages from sequence gaps.
    #[test]
    fn overflow_is_counted_as_lost() {
        // The kernel's minimum buffer: a message or two.
        let sock = match CnProc::open(1) {
            Ok(s) => s,
            Err(e) => {
                edr_testkit::skip(format!("the process connector is unavailable here: {e}"));
                return;
            }
        };
        let spawn = |n: usize| {
            for _ in 0..n {
                std::process::Command::new("/bin/true").status().unwrap();
            }
        };
        let ctx = crate::Ctx::new(
            crate::procfs::BootInfo::read().unwrap(),
            std::sync::Arc::new(crate::ProcessTree::new(crate::tree::Retention { max_age: Duration::from_secs(60), max_exited: 1000 })),
            Default::default(),
        );
        let (tx, rx) = crossbeam_channel::bounded(100_000);
        let sink = Sink::new(tx, crate::sink::Counters::new("process", "netlink"));
        let mut reader = Reader::new(sock);
        // A CPU's sequence is known (and its losses show) once that CPU
        // reports an event: run a few processes pinned to each CPU.
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
        let visit_every_cpu = |reader: &mut Reader| {
            for cpu in 0..cpus {
                for _ in 0..3 {
                    let mut cmd = std::process::Command::new("/bin/true");
                    // SAFETY: only async-signal-safe calls between fork and exec.
                    unsafe {
                        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                            let mut set: libc::cpu_set_t = std::mem::zeroed();
                            libc::CPU_SET(cpu, &mut set);
                            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                            Ok(())
                        });
                    }
                    cmd.status().unwrap();
                    reader.drain(&ctx, &sink);
                }
            }
        };
        // Baselines of the per-CPU sequences, read as they come (a CPU not
        // seen before the burst could not count what it lost in it).
        visit_every_cpu(&mut reader);
        let before = sink.counters.status();
        // 300 processes (900 messages) while nobody reads.
        spawn(300);
        reader.drain(&ctx, &sink);
        visit_every_cpu(&mut reader);
        let st = sink.counters.status();
        eprintln!("overflow test: overflows {} lost {} (before the burst: {}) events {}", st.overflows, st.lost, before.lost, rx.len());
        assert!(st.overflows > before.overflows, "{st:?}");
        assert!(st.lost - before.lost >= 600, "300 unread processes are 900+ messages: {st:?}");
    }

    #[test]
    fn sequence_gaps_count_lost_messages_per_cpu() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0, 10), 0);
        assert_eq!(t.observe(1, 500), 0);
        assert_eq!(t.observe(0, 11), 0);
        assert_eq!(t.observe(0, 15), 3);
        assert_eq!(t.observe(1, 501), 0);
        assert_eq!(t.observe(1, u32::MAX), 0, "implausible jump ignored");
        assert_eq!(t.observe(1, 1), 1, "wraps");
    }

    #[test]
    fn a_lost_sequence_range_counts_every_message_in_it() {
        // Issue 14: after a flood while the agent was stopped, the kernel
        // dropped the messages between seq N and M on a CPU: M - N - 1 of
        // them, not one per overflow.
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(3, 100), 0);
        assert_eq!(t.observe(3, 11_811), 11_710);
        assert_eq!(t.observe(3, 11_812), 0);
        // The other CPUs' sequences are their own.
        assert_eq!(t.observe(0, 5), 0);
        assert_eq!(t.observe(0, 9), 3);
        assert_eq!(t.observe(3, 11_815), 2);
        // Across the u32 wrap too.
        assert_eq!(t.observe(1, u32::MAX - 1), 0);
        assert_eq!(t.observe(1, 4), 5);
    }
}
