//! The exec-permission watchdog: a small child process that is the only
//! reader of the fanotify permission group and answers every event within
//! a deadline, whatever happens to the agent.
//!
//! Why a process: `SIGSTOP` (a debugger, a crash dumper, a mistyped `kill`)
//! stops every thread of the agent, and the kernel holds every `execve` on
//! the host until a permission event is answered. A thread cannot answer
//! while its process is stopped; a process of its own can. fanotify has no
//! kernel-side timeout for permission events (checked on Linux 6.18:
//! `fanotify_get_response` waits (killable, freezable) with no deadline; the
//! `fs.fanotify` sysctls only cap queue, marks and groups), so the deadline
//! is ours to keep.
//!
//! How: the agent forks the child when exec blocking starts. The child
//! reads the events (their fds land in its fd table, so the kernel matches
//! a response to the child's fd number), gives each an id, and sends
//! `(id, pid)` with a dup of the event's fd (`SCM_RIGHTS`) to the agent
//! over a `SOCK_SEQPACKET` socketpair. The agent decides (path, sha256) and
//! sends `(id, verdict)` back; the child writes the response and closes the
//! fd. Only the child ever writes a response, ids are never reused, so each
//! event is answered exactly once and a late verdict cannot answer a newer
//! event that got the same fd number. An event the agent has not answered
//! within `deadline` (or within `extend`, once the agent said it is hashing
//! the file) is answered with the fail mode and counted. When the agent
//! says stop, or its end of the socket closes (the agent died), the child
//! allows everything it holds and exits; the group closes with it.
//!
//! The child runs after `fork` in a multi-threaded process, so it only
//! makes raw system calls on stack memory: no allocation, no locks, no
//! logging. Its counters live in a shared anonymous mapping the agent reads.

use crate::RespondError;
use edr_fanotify::Response;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counters written by the child, read by the agent (a shared mapping).
#[repr(C)]
#[derive(Default)]
pub(crate) struct DogCounters {
    /// Permission events the child read.
    pub events: AtomicU64,
    /// Answered with the fail mode because the agent did not answer in time.
    pub deadline_answers: AtomicU64,
    /// Answered with the agent's verdict.
    pub agent_answers: AtomicU64,
    /// Verdicts that came after the deadline had answered the event.
    pub late_verdicts: AtomicU64,
    /// Events the child could not hand to the agent (socket full): left to the deadline.
    pub undelivered: AtomicU64,
    /// Failed response writes and other errors in the child.
    pub errors: AtomicU64,
}

/// The shared mapping holding [`DogCounters`].
struct SharedPage(*mut DogCounters);

// SAFETY: the page holds only atomics, valid for the mapping's lifetime.
unsafe impl Send for SharedPage {}
// SAFETY: as above.
unsafe impl Sync for SharedPage {}

impl SharedPage {
    fn new() -> Result<SharedPage, RespondError> {
        let len = std::mem::size_of::<DogCounters>();
        // SAFETY: a fresh anonymous shared mapping; zeroed memory is a valid DogCounters.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(RespondError::sys("mmap of the exec watchdog's counters"));
        }
        Ok(SharedPage(p.cast()))
    }
    fn get(&self) -> &DogCounters {
        // SAFETY: mapped and zero-initialised in `new`, unmapped only in Drop.
        unsafe { &*self.0 }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        // SAFETY: unmaps what `new` mapped.
        unsafe { libc::munmap(self.0.cast(), std::mem::size_of::<DogCounters>()) };
    }
}

/// Agent to child: the verdict or a request.
const VERB_DENY: u32 = 0;
const VERB_ALLOW: u32 = 1;
/// The agent hashes the file: the event gets `extend` instead of `deadline`.
const VERB_EXTEND: u32 = 2;
/// Allow everything held and exit.
const VERB_STOP: u32 = 3;

/// Events the child holds at once; more wait in the kernel queue (unread).
const SLOTS: usize = 1024;

/// One event handed to the agent.
pub(crate) struct Request {
    /// The child's id for the event.
    pub id: u64,
    /// The process that execs.
    pub pid: i32,
    /// A dup of the event's fd (the file being executed).
    pub fd: OwnedFd,
}

/// The agent's handle on the watchdog process.
pub(crate) struct Watchdog {
    pid: libc::pid_t,
    sock: OwnedFd,
    page: SharedPage,
    reaped: std::sync::atomic::AtomicBool,
}

fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime into a stack struct (async-signal-safe).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Watchdog {
    /// Forks the watchdog process for the group `fan`. `deadline`: how long
    /// an event may wait for the agent; `extend`: how long once the agent
    /// said it is hashing; `fail_allow`: the answer when time is up.
    pub(crate) fn spawn(fan: RawFd, deadline: Duration, extend: Duration, fail_allow: bool) -> Result<Watchdog, RespondError> {
        let page = SharedPage::new()?;
        let mut sv = [-1; 2];
        // SAFETY: socketpair into a 2-int array.
        if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) } != 0 {
            return Err(RespondError::sys("socketpair for the exec watchdog"));
        }
        // SAFETY: fresh fds owned by nobody else.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        let (deadline_ns, extend_ns) = (deadline.as_nanos() as u64, extend.as_nanos() as u64);
        let counters = page.0;
        // SAFETY: the child only makes raw system calls on stack memory (see the module doc) and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(RespondError::sys("fork of the exec watchdog process"));
        }
        if pid == 0 {
            // SAFETY: in the child; see child_main.
            unsafe { child_main(fan, theirs.as_raw_fd(), ours.as_raw_fd(), counters, deadline_ns, extend_ns, fail_allow) }
        }
        drop(theirs);
        Ok(Watchdog { pid, sock: ours, page, reaped: std::sync::atomic::AtomicBool::new(false) })
    }

    /// The watchdog's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Its counters.
    pub(crate) fn counters(&self) -> &DogCounters {
        self.page.get()
    }

    /// The socket to poll for [`Watchdog::recv`].
    pub(crate) fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// One event from the child: Ok(None) when none is waiting; an error
    /// `UnexpectedEof` when the child is gone.
    pub(crate) fn recv(&self) -> io::Result<Option<Request>> {
        let mut data = [0u8; 16];
        let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
        let mut cbuf = [0u64; 8];
        // SAFETY: a zeroed msghdr is valid; fields set below point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: recvmsg into the buffers above.
        let n = unsafe { libc::recvmsg(self.sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the exec watchdog process is gone"));
        }
        // SAFETY: walks the control messages recvmsg filled in.
        let fd = unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS {
                -1
            } else {
                std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>())
            }
        };
        if fd < 0 || n != 16 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "malformed message from the exec watchdog process"));
        }
        let id = u64::from_ne_bytes(data[..8].try_into().unwrap_or_default());
        let pid = i32::from_ne_bytes(data[8..12].try_into().unwrap_or_default());
        // SAFETY: the fd came with the message and is ours now.
        Ok(Some(Request { id, pid, fd: unsafe { OwnedFd::from_raw_fd(fd) } }))
    }

    fn send(&self, id: u64, verb: u32) -> bool {
        let mut m = [0u8; 12];
        m[..8].copy_from_slice(&id.to_ne_bytes());
        m[8..].copy_from_slice(&verb.to_ne_bytes());
        // SAFETY: sends 12 bytes from a stack buffer; never blocks, never raises SIGPIPE.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), m.as_ptr().cast(), m.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        n == m.len() as isize
    }

    /// The agent's verdict on event `id`; false when it could not be sent
    /// (the deadline will answer the event).
    pub(crate) fn answer(&self, id: u64, allow: bool) -> bool {
        self.send(id, if allow { VERB_ALLOW } else { VERB_DENY })
    }

    /// Tells the child the agent is hashing event `id` (it gets `extend`).
    pub(crate) fn extend(&self, id: u64) {
        let _ = self.send(id, VERB_EXTEND);
    }

    /// Whether the child is stopped (state `T`): an agent thread then sends
    /// it SIGCONT, since a stopped watchdog would freeze exec like a stopped agent.
    pub(crate) fn resume_if_stopped(&self) -> bool {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        let state = s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next()).unwrap_or("");
        if state == "T" || state == "t" {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(self.pid, libc::SIGCONT) };
            return true;
        }
        false
    }

    /// Asks the child to allow what it holds and exit; kills it if it has not within 2 s.
    pub(crate) fn stop(&self) {
        if self.reaped.swap(true, Relaxed) {
            return;
        }
        let _ = self.send(0, VERB_STOP);
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            // SAFETY: waitpid on our own child.
            let r = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) };
            if r != 0 {
                return;
            }
            if Instant::now() >= until {
                tracing::warn!(pid = self.pid, "the exec watchdog process did not exit; killing it");
                // SAFETY: kill and reap our own child.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, std::ptr::null_mut(), 0);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One event the child holds.
#[derive(Clone, Copy)]
struct Slot {
    id: u64,
    fd: i32,
    deadline: u64,
}

const FREE: Slot = Slot { id: 0, fd: -1, deadline: 0 };

/// Writes a permission response (async-signal-safe: no allocation).
fn write_response(fan: RawFd, fd: RawFd, allow: bool, c: &DogCounters) {
    // SAFETY: `fan` is the group's fd, open for the child's whole life.
    let fan = unsafe { BorrowedFd::borrow_raw(fan) };
    let answer = if allow { Response::Allow } else { Response::Deny };
    if edr_fanotify::respond(fan, fd, answer).is_err() {
        c.errors.fetch_add(1, Relaxed);
    }
}

/// Answers and frees a slot.
fn settle(fan: RawFd, s: &mut Slot, allow: bool, c: &DogCounters) {
    write_response(fan, s.fd, allow, c);
    // SAFETY: the child's own event fd, closed once.
    unsafe { libc::close(s.fd) };
    *s = FREE;
}

/// Sends `(id, pid)` with the event's fd to the agent; false if it could not.
fn hand_over(sock: RawFd, id: u64, pid: i32, fd: RawFd) -> bool {
    let mut data = [0u8; 16];
    data[..8].copy_from_slice(&id.to_ne_bytes());
    data[8..12].copy_from_slice(&pid.to_ne_bytes());
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    let mut cbuf = [0u64; 4];
    // SAFETY: a zeroed msghdr is valid; it points at stack buffers; the
    // control message is built in `cbuf` (large enough for one fd).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd);
        libc::sendmsg(sock, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) == data.len() as isize
    }
}

/// Closes every fd but 0-2, `a` and `b` (close_range, Linux 5.9+).
fn close_all_but(a: RawFd, b: RawFd) {
    let (lo, hi) = (a.min(b) as u32, a.max(b) as u32);
    let close = |from: u32, to: u32| {
        if from <= to {
            // SAFETY: closes fds in the child only.
            unsafe { libc::syscall(libc::SYS_close_range, from, to, 0) };
        }
    };
    if lo >= 3 {
        close(3, lo - 1);
    }
    close(lo + 1, hi - 1);
    close(hi + 1, u32::MAX);
}

/// The child: reads events, hands them over, applies verdicts and deadlines.
///
/// # Safety
/// Called once, in the child right after `fork`; `counters` points at the
/// shared mapping. Never returns.
#[allow(clippy::too_many_arguments)]
unsafe fn child_main(fan: RawFd, sock: RawFd, agent_end: RawFd, counters: *mut DogCounters, deadline_ns: u64, extend_ns: u64, fail_allow: bool) -> ! {
    libc::close(agent_end);
    close_all_but(fan, sock);
    // Nothing to say: stdio to /dev/null, so the child holds no pipe of the agent's open.
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
    if null >= 0 {
        for std_fd in 0..3 {
            libc::dup2(null, std_fd);
        }
        if null > 2 {
            libc::close(null);
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGPIPE, libc::SIGQUIT] {
        libc::signal(sig, libc::SIG_IGN);
    }
    // A name an operator recognises in ps (15 bytes at most).
    libc::prctl(libc::PR_SET_NAME, c"edr-exec-dog".as_ptr() as libc::c_ulong, 0, 0, 0);
    let c = &*counters;
    let mut slots = [FREE; SLOTS];
    let mut used = 0usize;
    let mut next_id = 1u64;
    let meta = edr_fanotify::METADATA_LEN;
    let mut buf = [0u8; 128 * 24];
    let fan_fd = BorrowedFd::borrow_raw(fan);
    loop {
        let now = mono_ns();
        let mut earliest = u64::MAX;
        for s in slots.iter_mut().filter(|s| s.fd >= 0) {
            if s.deadline <= now {
                settle(fan, s, fail_allow, c);
                used -= 1;
                c.deadline_answers.fetch_add(1, Relaxed);
            } else {
                earliest = earliest.min(s.deadline);
            }
        }
        let timeout = if earliest == u64::MAX { 1000 } else { ((earliest - now) / 1_000_000 + 1).min(1000) as i32 };
        let mut fds = [
            libc::pollfd { fd: fan, events: if used < SLOTS { libc::POLLIN } else { 0 }, revents: 0 },
            libc::pollfd { fd: sock, events: libc::POLLIN, revents: 0 },
        ];
        if libc::poll(fds.as_mut_ptr(), 2, timeout) <= 0 {
            continue;
        }
        if fds[1].revents != 0 && !read_verdicts(fan, sock, &mut slots, &mut used, extend_ns, c) {
            for s in slots.iter_mut().filter(|s| s.fd >= 0) {
                settle(fan, s, true, c);
            }
            drain_allowing(fan, &mut buf, c);
            libc::_exit(0);
        }
        if fds[0].revents & libc::POLLIN == 0 {
            continue;
        }
        let room = ((SLOTS - used) * meta).min(buf.len());
        let Ok(Some(events)) = edr_fanotify::read_events(fan_fd, &mut buf[..room]) else {
            continue;
        };
        let now = mono_ns();
        for ev in events {
            let Ok(ev) = ev else {
                c.errors.fetch_add(1, Relaxed);
                continue;
            };
            let Some(fd) = ev.fd else {
                continue;
            };
            c.events.fetch_add(1, Relaxed);
            let Some(slot) = slots.iter_mut().find(|s| s.fd < 0) else {
                // Cannot happen: reads are sized to the free slots.
                write_response(fan, fd.as_raw_fd(), fail_allow, c);
                continue;
            };
            // The slot owns the fd from here (closed by `settle`).
            let fd = fd.into_raw_fd();
            *slot = Slot { id: next_id, fd, deadline: now + deadline_ns };
            used += 1;
            if !hand_over(sock, next_id, ev.pid, fd) {
                c.undelivered.fetch_add(1, Relaxed);
            }
            next_id += 1;
        }
    }
}

/// Allows every event still queued in the group, then exits the loop.
///
/// The agent flushes the marks before it stops the child, so no new event
/// can arrive; but an exec queued before the flush and not yet read would
/// wait for ever if the group outlived us, and it can: a process forked
/// by the agent (or any thread of it) while the group was open holds a copy
/// of the group's fd until its own exec, which is the very event waiting.
/// Two rounds, a moment apart, catch an event queued while the flush ran.
fn drain_allowing(fan: RawFd, buf: &mut [u8], c: &DogCounters) {
    // SAFETY: `fan` is the group's fd, open for the child's whole life.
    let fan_fd = unsafe { BorrowedFd::borrow_raw(fan) };
    for round in 0..2 {
        if round > 0 {
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 20_000_000 };
            // SAFETY: sleeps on a stack timespec.
            unsafe { libc::nanosleep(&pause, std::ptr::null_mut()) };
        }
        // The group is non-blocking: `None` once the queue is empty.
        while let Ok(Some(events)) = edr_fanotify::read_events(fan_fd, buf) {
            if events.bytes() == 0 {
                break;
            }
            // Each event's fd is closed when its event is dropped.
            for fd in events.filter_map(|ev| ev.ok()?.fd) {
                write_response(fan, fd.as_raw_fd(), true, c);
            }
        }
    }
}

/// Applies the agent's messages. Returns false when the child must stop
/// (asked to, or the agent's end closed).
fn read_verdicts(fan: RawFd, sock: RawFd, slots: &mut [Slot; SLOTS], used: &mut usize, extend_ns: u64, c: &DogCounters) -> bool {
    loop {
        let mut m = [0u8; 12];
        // SAFETY: receives at most 12 bytes into a stack buffer.
        let n = unsafe { libc::recv(sock, m.as_mut_ptr().cast(), m.len(), libc::MSG_DONTWAIT) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            // SAFETY: reads errno.
            let e = unsafe { *libc::__errno_location() };
            return e == libc::EAGAIN || e == libc::EINTR;
        }
        if n != 12 {
            c.errors.fetch_add(1, Relaxed);
            continue;
        }
        let id = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7]]);
        let verb = u32::from_ne_bytes([m[8], m[9], m[10], m[11]]);
        if verb == VERB_STOP {
            return false;
        }
        let Some(s) = slots.iter_mut().find(|s| s.fd >= 0 && s.id == id) else {
            if verb != VERB_EXTEND {
                c.late_verdicts.fetch_add(1, Relaxed);
            }
            continue;
        };
        if verb == VERB_EXTEND {
            s.deadline = mono_ns() + extend_ns;
            continue;
        }
        settle(fan, s, verb == VERB_ALLOW, c);
        *used -= 1;
        c.agent_answers.fetch_add(1, Relaxed);
    }
}
