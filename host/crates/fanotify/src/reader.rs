//! Reading a fanotify group: one decoder of the kernel's event buffer, an
//! iterator of typed events that own their fds, and the permission
//! response.
//!
//! Layers, from the bytes up:
//!
//! * [`decode`] walks a byte buffer and yields [`Record`]s (the metadata of
//!   one event and its info records, the fd as a plain number). It is pure
//!   and safe: it reads nothing outside the buffer, copes with any buffer
//!   alignment, and answers a malformed buffer with a [`DecodeError`].
//! * [`read_events`] reads the group into a caller's buffer (`EINTR`
//!   retried, `EAGAIN` is `Ok(None)`) and returns [`Events`], which yields
//!   [`FanotifyEvent`]s owning their fds; the fds of events not taken are
//!   closed when [`Events`] is dropped. It allocates nothing, so the
//!   exec-permission watchdog process can use it after `fork`.
//! * [`FanotifyReader`] owns a group and a heap buffer, for the collectors.
//!
//! A buffer is malformed when an event is cut short, its `event_len` is
//! below the metadata size, runs past the bytes read, or is not a multiple
//! of 4 (the kernel pads every event), when its `metadata_len` does not fit
//! it, or when the metadata version is not [`libc::FANOTIFY_METADATA_VERSION`].
//! Past such an event nothing can be trusted: the iterator yields the
//! error and ends. An info record that does not fit its event is an error
//! of that event's [`InfoRecords`] only (the event, its fd and the events
//! after it are sound), so a permission event is still answered.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Size of `struct fanotify_event_metadata` (`FAN_EVENT_METADATA_LEN`).
pub const METADATA_LEN: usize = std::mem::size_of::<libc::fanotify_event_metadata>();

/// Alignment of events and info records in the kernel's buffer (`FANOTIFY_EVENT_ALIGN`).
const EVENT_ALIGN: usize = 4;

/// Size of `struct fanotify_event_info_header`.
const INFO_HEADER_LEN: usize = 4;

/// `fanotify_init` flag: `event->fd` carries `-errno` when the kernel
/// could not open the file (Linux 6.13; not in the `libc` crate yet).
pub const FAN_REPORT_FD_ERROR: libc::c_uint = 0x0000_2000;

/// Why a buffer of fanotify events could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes are left than one event's metadata.
    #[error("fanotify buffer: {left} trailing bytes at offset {offset}, less than an event's {METADATA_LEN}-byte metadata")]
    Truncated {
        /// Where the event starts in the buffer.
        offset: usize,
        /// The bytes left from there.
        left: usize,
    },
    /// `event_len` is below the metadata size, runs past the buffer, or is unaligned.
    #[error("fanotify buffer: event at offset {offset} claims {event_len} bytes ({left} left, at least {METADATA_LEN}, a multiple of 4)")]
    BadLength {
        /// Where the event starts in the buffer.
        offset: usize,
        /// The length the event claims.
        event_len: usize,
        /// The bytes left from `offset`.
        left: usize,
    },
    /// `metadata_len` is below the metadata size or past `event_len`.
    #[error("fanotify buffer: event at offset {offset} has metadata_len {metadata_len} (event_len {event_len})")]
    BadMetadataLen {
        /// Where the event starts in the buffer.
        offset: usize,
        /// The metadata length the event claims.
        metadata_len: usize,
        /// The event's length.
        event_len: usize,
    },
    /// The kernel speaks another metadata version than the one this code knows.
    #[error("fanotify metadata version {found}, expected {}: the kernel's event layout is unknown", libc::FANOTIFY_METADATA_VERSION)]
    Version {
        /// The version the event carries.
        found: u8,
    },
    /// An info record is shorter than its header or runs past its event.
    #[error("fanotify buffer: info record at offset {offset} of the event at {event} claims {len} bytes ({left} left)")]
    BadInfoRecord {
        /// Where the event starts in the buffer.
        event: usize,
        /// Where the record starts in the event.
        offset: usize,
        /// The length the record claims.
        len: usize,
        /// The bytes left in the event from `offset`.
        left: usize,
    },
}

fn rd<const N: usize>(b: &[u8], o: usize) -> Option<[u8; N]> {
    b.get(o..o.checked_add(N)?)?.try_into().ok()
}

/// One event as the kernel laid it out; the fd is a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The event bits (`FAN_*`).
    pub mask: u64,
    /// `event->fd`: an fd the kernel opened for the reader, [`libc::FAN_NOFD`]
    /// (fid mode, queue overflow), or `-errno` with [`FAN_REPORT_FD_ERROR`].
    pub fd: RawFd,
    /// The pid (or tid) of the process that caused the event.
    pub pid: i32,
    /// The info records that follow the metadata (empty in fd mode).
    pub info: InfoRecords<'a>,
}

impl Record<'_> {
    /// Whether this is the kernel's queue overflow event (`FAN_Q_OVERFLOW`).
    pub fn is_overflow(&self) -> bool {
        self.mask & libc::FAN_Q_OVERFLOW != 0
    }
}

/// Decodes a buffer of fanotify events (see the module doc for what is malformed).
pub fn decode(buf: &[u8]) -> Decoder<'_> {
    Decoder { buf, off: 0, done: false }
}

/// The iterator of [`decode`].
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    off: usize,
    done: bool,
}

impl<'a> Decoder<'a> {
    fn frame(&self) -> Result<(Record<'a>, usize), DecodeError> {
        let offset = self.off;
        let ev = &self.buf[offset.min(self.buf.len())..];
        let left = ev.len();
        let truncated = DecodeError::Truncated { offset, left };
        if left < METADATA_LEN {
            return Err(truncated);
        }
        let event_len = rd::<4>(ev, 0).map(u32::from_ne_bytes).ok_or(truncated)? as usize;
        if event_len < METADATA_LEN || event_len > left || !event_len.is_multiple_of(EVENT_ALIGN) {
            return Err(DecodeError::BadLength { offset, event_len, left });
        }
        let vers = ev[4];
        if vers != libc::FANOTIFY_METADATA_VERSION {
            return Err(DecodeError::Version { found: vers });
        }
        let metadata_len = rd::<2>(ev, 6).map(u16::from_ne_bytes).ok_or(truncated)? as usize;
        if metadata_len < METADATA_LEN || metadata_len > event_len {
            return Err(DecodeError::BadMetadataLen { offset, metadata_len, event_len });
        }
        let mask = rd::<8>(ev, 8).map(u64::from_ne_bytes).ok_or(truncated)?;
        let fd = rd::<4>(ev, 16).map(i32::from_ne_bytes).ok_or(truncated)?;
        let pid = rd::<4>(ev, 20).map(i32::from_ne_bytes).ok_or(truncated)?;
        let info = InfoRecords { buf: &ev[metadata_len..event_len], event: offset, base: metadata_len };
        Ok((Record { mask, fd, pid, info }, event_len))
    }
}

impl<'a> Iterator for Decoder<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.off >= self.buf.len() {
            return None;
        }
        match self.frame() {
            Ok((rec, len)) => {
                self.off += len;
                Some(Ok(rec))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// The info records of one event; a record that does not fit is an error
/// (and the last item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRecords<'a> {
    buf: &'a [u8],
    /// Where the event starts in the read buffer (for errors).
    event: usize,
    /// Where `buf` starts in the event (for errors).
    base: usize,
}

impl<'a> Iterator for InfoRecords<'a> {
    type Item = Result<InfoRecord<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let left = self.buf.len();
        let len = rd::<2>(self.buf, 2).map(u16::from_ne_bytes).map_or(0, usize::from);
        if left < INFO_HEADER_LEN || len < INFO_HEADER_LEN || len > left {
            let e = DecodeError::BadInfoRecord { event: self.event, offset: self.base, len, left };
            self.buf = &[];
            return Some(Err(e));
        }
        let rec = InfoRecord { kind: self.buf[0], body: &self.buf[INFO_HEADER_LEN..len] };
        self.buf = &self.buf[len..];
        self.base += len;
        Some(Ok(rec))
    }
}

/// One info record: its type (`FAN_EVENT_INFO_TYPE_*`) and what follows its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRecord<'a> {
    /// `info_type`.
    pub kind: u8,
    /// The bytes after the 4-byte header.
    pub body: &'a [u8],
}

/// A file id record (`FAN_EVENT_INFO_TYPE_FID`, `DFID`, `DFID_NAME`, `OLD_`/`NEW_DFID_NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FidRecord<'a> {
    /// `info_type`.
    pub kind: u8,
    /// The filesystem id (as `fstatfs` reports it).
    pub fsid: [i32; 2],
    /// `file_handle.handle_type`.
    pub handle_type: i32,
    /// `file_handle.f_handle`.
    pub handle: &'a [u8],
    /// The entry name of the `*_DFID_NAME` records, up to its NUL.
    pub name: Option<&'a [u8]>,
}

impl<'a> InfoRecord<'a> {
    /// The record as a file id record; `None` for other kinds or when the
    /// handle does not fit the record.
    pub fn fid(&self) -> Option<FidRecord<'a>> {
        use libc::{
            FAN_EVENT_INFO_TYPE_DFID, FAN_EVENT_INFO_TYPE_DFID_NAME, FAN_EVENT_INFO_TYPE_FID, FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
            FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
        };
        let has_name = matches!(self.kind, FAN_EVENT_INFO_TYPE_DFID_NAME | FAN_EVENT_INFO_TYPE_OLD_DFID_NAME | FAN_EVENT_INFO_TYPE_NEW_DFID_NAME);
        if !has_name && !matches!(self.kind, FAN_EVENT_INFO_TYPE_FID | FAN_EVENT_INFO_TYPE_DFID) {
            return None;
        }
        let b = self.body;
        let fsid = [i32::from_ne_bytes(rd(b, 0)?), i32::from_ne_bytes(rd(b, 4)?)];
        let hbytes = u32::from_ne_bytes(rd(b, 8)?) as usize;
        let handle_type = i32::from_ne_bytes(rd(b, 12)?);
        let end = 16usize.checked_add(hbytes)?;
        let handle = b.get(16..end)?;
        let name = if has_name {
            let rest = b.get(end..)?;
            Some(&rest[..rest.iter().position(|c| *c == 0).unwrap_or(rest.len())])
        } else {
            None
        };
        Some(FidRecord { kind: self.kind, fsid, handle_type, handle, name })
    }
}

/// One event read from a group, owning the fd the kernel opened for it.
#[derive(Debug)]
pub struct FanotifyEvent<'a> {
    /// The event bits (`FAN_*`).
    pub mask: u64,
    /// The pid (or tid) of the process that caused the event.
    pub pid: i32,
    /// The file, in fd mode; `None` for [`libc::FAN_NOFD`] (fid mode, queue
    /// overflow) and for a file the kernel could not open.
    pub fd: Option<OwnedFd>,
    /// `-fd` when the kernel could not open the file (`errno`, with
    /// [`FAN_REPORT_FD_ERROR`]); `None` otherwise. (`-EPERM` is
    /// indistinguishable from `FAN_NOFD`.)
    pub fd_error: Option<i32>,
    /// The info records (fid mode).
    pub info: InfoRecords<'a>,
}

impl FanotifyEvent<'_> {
    /// Whether this is the kernel's queue overflow event (`FAN_Q_OVERFLOW`).
    pub fn is_overflow(&self) -> bool {
        self.mask & libc::FAN_Q_OVERFLOW != 0
    }
}

/// The events of one `read(2)`; dropping it closes the fds of the events not taken.
#[derive(Debug)]
pub struct Events<'a> {
    inner: Decoder<'a>,
    bytes: usize,
}

impl<'a> Events<'a> {
    /// The events in `buf`, owning their fds.
    ///
    /// # Safety
    /// `buf` must be what a `read(2)` of a fanotify group just returned to
    /// this process, and read only once: each non-negative fd in it is an
    /// open descriptor nobody else owns.
    pub unsafe fn from_kernel(buf: &'a [u8]) -> Events<'a> {
        Events { inner: decode(buf), bytes: buf.len() }
    }

    /// How many bytes the read returned.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Takes ownership of an event's fd.
fn own(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: `Events::from_kernel`'s contract: a non-negative fd in the
    // buffer is ours, and the decoder yields each event once.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<FanotifyEvent<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.inner.next()?.map(|r| {
            let fd_error = (r.fd < libc::FAN_NOFD).then(|| r.fd.saturating_neg());
            FanotifyEvent { mask: r.mask, pid: r.pid, fd: own(r.fd), fd_error, info: r.info }
        }))
    }
}

impl Drop for Events<'_> {
    fn drop(&mut self) {
        for ev in self.by_ref() {
            drop(ev);
        }
    }
}

/// Reads what the group has queued into `buf`: `Ok(None)` when nothing is
/// (`EAGAIN`, on a `FAN_NONBLOCK` group); `EINTR` is retried. An error is
/// the read's (`EINVAL`: `buf` too small for the next event; `EMFILE` and
/// the like: the kernel could not open an event's file and dropped it).
/// Allocates nothing (safe after `fork`).
pub fn read_events<'b>(fan: BorrowedFd<'_>, buf: &'b mut [u8]) -> io::Result<Option<Events<'b>>> {
    loop {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(fan.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            let got = &buf[..(n as usize).min(buf.len())];
            // SAFETY: the kernel just wrote these events for us.
            return Ok(Some(unsafe { Events::from_kernel(got) }));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// The answer to a permission event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// `FAN_ALLOW`.
    Allow,
    /// `FAN_DENY`.
    Deny,
}

/// Answers the permission event whose fd (in this process) is `event_fd`;
/// `EINTR` is retried. Allocates nothing (safe after `fork`).
pub fn respond(fan: BorrowedFd<'_>, event_fd: RawFd, answer: Response) -> io::Result<()> {
    let response = match answer {
        Response::Allow => libc::FAN_ALLOW,
        Response::Deny => libc::FAN_DENY,
    };
    let r = libc::fanotify_response { fd: event_fd, response };
    let len = std::mem::size_of::<libc::fanotify_response>();
    loop {
        // SAFETY: writes `len` bytes from a live struct.
        let n = unsafe { libc::write(fan.as_raw_fd(), (&r as *const libc::fanotify_response).cast(), len) };
        if n == len as isize {
            return Ok(());
        }
        // (No allocation: an OS error or a bare kind.)
        let e = if n < 0 { io::Error::last_os_error() } else { io::Error::from(io::ErrorKind::WriteZero) };
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `fanotify_init(flags, event_f_flags)`: a new group. The error is the
/// kernel's, unchanged, so callers can retry without a flag on `EINVAL`.
pub fn init(flags: libc::c_uint, event_f_flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is a new fd or -1.
    let fd = unsafe { libc::fanotify_init(flags, event_f_flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A fanotify group and the buffer it is read into.
#[derive(Debug)]
pub struct FanotifyReader {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl FanotifyReader {
    /// Reads `fd` (a fanotify group) with a buffer of `buf_len` bytes (at
    /// least one event's metadata).
    pub fn new(fd: OwnedFd, buf_len: usize) -> FanotifyReader {
        FanotifyReader { fd, buf: vec![0u8; buf_len.max(METADATA_LEN)] }
    }

    /// [`init`], then [`FanotifyReader::new`].
    pub fn init(flags: libc::c_uint, event_f_flags: libc::c_uint, buf_len: usize) -> io::Result<FanotifyReader> {
        Ok(FanotifyReader::new(init(flags, event_f_flags)?, buf_len))
    }

    /// The buffer's size: a read returning less than this minus one event
    /// found the queue empty (for fd-mode groups, whose events are all
    /// [`METADATA_LEN`] bytes).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// One read; see [`read_events`].
    pub fn read(&mut self) -> io::Result<Option<Events<'_>>> {
        read_events(self.fd.as_fd(), &mut self.buf)
    }
}

impl AsFd for FanotifyReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for FanotifyReader {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event's bytes: metadata (with `vers`, `fd`) and info records.
    fn event(vers: u8, mask: u64, fd: i32, pid: i32, info: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&((METADATA_LEN + info.len()) as u32).to_ne_bytes());
        e.push(vers);
        e.push(0);
        e.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        e.extend_from_slice(&mask.to_ne_bytes());
        e.extend_from_slice(&fd.to_ne_bytes());
        e.extend_from_slice(&pid.to_ne_bytes());
        e.extend_from_slice(info);
        e
    }

    fn ok(mask: u64, pid: i32) -> Vec<u8> {
        event(libc::FANOTIFY_METADATA_VERSION, mask, libc::FAN_NOFD, pid, &[])
    }

    fn fid_record(kind: u8, handle: &[u8], name: &str) -> Vec<u8> {
        let mut r = vec![kind, 0, 0, 0];
        r.extend_from_slice(&7i32.to_ne_bytes());
        r.extend_from_slice(&9i32.to_ne_bytes());
        r.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        r.extend_from_slice(&1i32.to_ne_bytes());
        r.extend_from_slice(handle);
        r.extend_from_slice(name.as_bytes());
        r.push(0);
        while r.len() % 4 != 0 {
            r.push(0);
        }
        let len = r.len() as u16;
        r[2..4].copy_from_slice(&len.to_ne_bytes());
        r
    }

    fn all(buf: &[u8]) -> Vec<Result<Record<'_>, DecodeError>> {
        decode(buf).collect()
    }

    #[test]
    fn decodes_events_and_fid_records() {
        let mut buf = ok(libc::FAN_OPEN_EXEC, 42);
        buf.extend(event(
            libc::FANOTIFY_METADATA_VERSION,
            libc::FAN_CREATE,
            libc::FAN_NOFD,
            43,
            &fid_record(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, &[5; 8], "x.sh"),
        ));
        let evs = all(&buf);
        assert_eq!(evs.len(), 2);
        let a = evs[0].as_ref().unwrap();
        assert_eq!((a.mask, a.pid, a.fd, a.info.count()), (libc::FAN_OPEN_EXEC, 42, libc::FAN_NOFD, 0));
        let b = evs[1].as_ref().unwrap();
        let recs: Vec<_> = b.info.map(|r| r.unwrap()).collect();
        assert_eq!(recs.len(), 1);
        let fid = recs[0].fid().unwrap();
        assert_eq!((fid.fsid, fid.handle_type, fid.handle, fid.name), ([7, 9], 1, &[5u8; 8][..], Some(&b"x.sh"[..])));
        assert!(all(&[]).is_empty(), "an empty read holds no event");
    }

    #[test]
    fn any_alignment_of_the_buffer() {
        let mut storage = vec![0u8];
        storage.extend(ok(libc::FAN_OPEN, 7));
        let evs = all(&storage[1..]);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].as_ref().unwrap().pid, 7);
    }

    #[test]
    fn a_truncated_event_is_an_error_after_the_whole_ones() {
        let mut buf = ok(libc::FAN_OPEN, 1);
        buf.extend(ok(libc::FAN_OPEN, 2));
        for cut in 1..METADATA_LEN {
            let evs = all(&buf[..buf.len() - cut]);
            assert_eq!(evs.len(), 2, "cut {cut}");
            assert!(evs[0].is_ok());
            assert_eq!(evs[1], Err(DecodeError::Truncated { offset: METADATA_LEN, left: METADATA_LEN - cut }));
        }
        assert_eq!(all(&buf[..5]), vec![Err(DecodeError::Truncated { offset: 0, left: 5 })]);
    }

    #[test]
    fn event_len_below_the_metadata_size_stops_decoding() {
        for bad in [0u32, 8, 20] {
            let mut buf = ok(libc::FAN_OPEN, 1);
            buf[0..4].copy_from_slice(&bad.to_ne_bytes());
            buf.extend(ok(libc::FAN_OPEN, 2));
            let evs = all(&buf);
            assert_eq!(evs, vec![Err(DecodeError::BadLength { offset: 0, event_len: bad as usize, left: 2 * METADATA_LEN })], "event_len {bad}");
        }
    }

    #[test]
    fn event_len_overrunning_the_buffer_or_unaligned_stops_decoding() {
        let mut buf = ok(libc::FAN_OPEN, 1);
        buf.extend(ok(libc::FAN_OPEN, 2));
        buf[METADATA_LEN..METADATA_LEN + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        let evs = all(&buf);
        assert!(evs[0].is_ok());
        assert_eq!(evs[1], Err(DecodeError::BadLength { offset: METADATA_LEN, event_len: u32::MAX as usize, left: METADATA_LEN }));
        assert_eq!(evs.len(), 2);
        // 26 bytes: past the metadata, within the buffer, but not padded as the kernel pads.
        let mut buf = event(libc::FANOTIFY_METADATA_VERSION, libc::FAN_OPEN, -1, 1, &[0; 8]);
        buf[0..4].copy_from_slice(&26u32.to_ne_bytes());
        assert_eq!(all(&buf), vec![Err(DecodeError::BadLength { offset: 0, event_len: 26, left: 32 })]);
    }

    #[test]
    fn a_wrong_version_stops_decoding() {
        let mut buf = event(2, libc::FAN_OPEN, libc::FAN_NOFD, 1, &[]);
        buf.extend(ok(libc::FAN_OPEN, 2));
        assert_eq!(all(&buf), vec![Err(DecodeError::Version { found: 2 })]);
    }

    #[test]
    fn a_bad_metadata_len_stops_decoding() {
        for bad in [0u16, 23, 28] {
            let mut buf = ok(libc::FAN_OPEN, 1);
            buf[6..8].copy_from_slice(&bad.to_ne_bytes());
            assert_eq!(all(&buf), vec![Err(DecodeError::BadMetadataLen { offset: 0, metadata_len: bad as usize, event_len: METADATA_LEN })]);
        }
    }

    #[test]
    fn a_bad_info_record_spoils_only_its_event() {
        let good = fid_record(libc::FAN_EVENT_INFO_TYPE_DFID, &[1; 8], "");
        let mut rec = good.clone();
        rec[2..4].copy_from_slice(&200u16.to_ne_bytes()); // past its event
        let mut buf = event(libc::FANOTIFY_METADATA_VERSION, libc::FAN_ATTRIB, libc::FAN_NOFD, 1, &rec);
        let mut two = good.clone();
        two.extend_from_slice(&[0, 0, 2, 0]); // a good record, then one of 2 bytes (< its header)
        buf.extend(event(libc::FANOTIFY_METADATA_VERSION, libc::FAN_ATTRIB, libc::FAN_NOFD, 2, &two));
        buf.extend(ok(libc::FAN_OPEN, 3));
        let evs: Vec<Record<'_>> = decode(&buf).map(|e| e.unwrap()).collect();
        assert_eq!(evs.iter().map(|e| e.pid).collect::<Vec<_>>(), vec![1, 2, 3], "the framing is sound");
        let first: Vec<_> = evs[0].info.collect();
        assert_eq!(first, vec![Err(DecodeError::BadInfoRecord { event: 0, offset: METADATA_LEN, len: 200, left: good.len() })]);
        let second: Vec<_> = evs[1].info.collect();
        assert_eq!(second.len(), 2);
        assert!(second[0].is_ok());
        assert_eq!(second[1], Err(DecodeError::BadInfoRecord { event: METADATA_LEN + rec.len(), offset: METADATA_LEN + good.len(), len: 2, left: 4 }));
    }

    #[test]
    fn fid_records_with_a_handle_past_the_record_are_refused() {
        let mut rec = fid_record(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, &[1; 8], "n");
        rec[12..16].copy_from_slice(&1000u32.to_ne_bytes());
        let r = InfoRecord { kind: rec[0], body: &rec[4..] };
        assert_eq!(r.fid(), None);
        assert_eq!(InfoRecord { kind: 99, body: &rec[4..] }.fid(), None, "not a fid kind");
        assert_eq!(InfoRecord { kind: libc::FAN_EVENT_INFO_TYPE_FID, body: &rec[4..10] }.fid(), None, "short");
    }

    #[test]
    fn overflow_and_fd_errors() {
        let buf = ok(libc::FAN_Q_OVERFLOW, 0);
        assert!(all(&buf)[0].as_ref().unwrap().is_overflow());
        let mut buf = event(libc::FANOTIFY_METADATA_VERSION, libc::FAN_OPEN_EXEC, -libc::EMFILE, 5, &[]);
        buf.extend(ok(libc::FAN_Q_OVERFLOW, 0));
        // SAFETY: no fd in the buffer is non-negative.
        let evs: Vec<_> = unsafe { Events::from_kernel(&buf) }.map(|e| e.unwrap()).collect();
        assert_eq!((evs[0].fd.is_none(), evs[0].fd_error, evs[0].is_overflow()), (true, Some(libc::EMFILE), false));
        assert_eq!((evs[1].fd.is_none(), evs[1].fd_error, evs[1].is_overflow()), (true, None, true));
    }

    /// Whether `fd` is open in this process.
    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD on any number is harmless.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    fn dup_devnull() -> RawFd {
        use std::os::fd::IntoRawFd;
        std::fs::File::open("/dev/null").unwrap().into_raw_fd()
    }

    #[test]
    fn events_not_taken_are_closed() {
        let (a, b, c) = (dup_devnull(), dup_devnull(), dup_devnull());
        let v = libc::FANOTIFY_METADATA_VERSION;
        let mut buf = event(v, libc::FAN_OPEN, a, 1, &[]);
        buf.extend(event(v, libc::FAN_OPEN, b, 2, &[0, 0, 1, 0])); // a bad record: the event and its fd are still sound
        buf.extend(event(v, libc::FAN_OPEN, c, 3, &[]));
        // SAFETY: a, b, c are ours and appear once.
        let mut evs = unsafe { Events::from_kernel(&buf) };
        let first = evs.next().unwrap().unwrap();
        assert_eq!(first.fd.as_ref().map(|f| f.as_raw_fd()), Some(a));
        let second = evs.next().unwrap().unwrap();
        assert!(second.info.clone().any(|r| r.is_err()));
        assert_eq!(second.fd.as_ref().map(|f| f.as_raw_fd()), Some(b), "a bad record leaves the fd to answer with");
        drop(second);
        assert!(!is_open(b), "a dropped event closes its fd");
        drop(evs);
        assert!(!is_open(c), "the fd of an event not taken is closed");
        assert!(is_open(a), "the taken one is the caller's");
        drop(first);
        assert!(!is_open(a));
    }

    #[test]
    fn not_a_fanotify_group() {
        let f = std::fs::File::open("/dev/null").unwrap();
        let mut buf = [0u8; 64];
        // /dev/null reads 0 bytes: no event.
        assert_eq!(read_events(f.as_fd(), &mut buf).unwrap().map(|e| e.count()), Some(0));
        // A read-only fd refuses the response write with the OS error.
        let e = respond(f.as_fd(), 0, Response::Allow).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}");
    }

    /// On the real kernel: a notification group reports an open, with an fd on the file.
    #[test]
    fn reads_a_real_group() {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
        let mut r = match FanotifyReader::init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32, 4096) {
            Ok(r) => r,
            Err(e) => {
                edr_testkit::skip(format!("fanotify_init: {e} (needs root)"));
                return;
            }
        };
        assert!(r.read().unwrap().is_none(), "nothing queued yet");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        crate::mark(r.as_fd(), libc::FAN_MARK_INODE, libc::FAN_OPEN, &file).unwrap();
        drop(std::fs::File::open(&file).unwrap());
        let me = std::process::id() as i32;
        let evs: Vec<_> = r.read().unwrap().expect("an event").collect::<Result<_, _>>().unwrap();
        assert_eq!(evs.len(), 1);
        assert_eq!((evs[0].mask & libc::FAN_OPEN, evs[0].pid), (libc::FAN_OPEN, me));
        let fd = evs[0].fd.as_ref().expect("fd mode");
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(path, std::fs::canonicalize(&file).unwrap());
        assert!(r.read().unwrap().is_none(), "read once");
    }

    /// On the real kernel: a permission group holds an open until answered.
    #[test]
    fn answers_a_real_permission_event() {
        let flags = libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK;
        let fan = match init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as u32) {
            Ok(f) => f,
            Err(e) => {
                edr_testkit::skip(format!("fanotify_init(FAN_CLASS_CONTENT): {e} (needs root)"));
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        crate::mark(fan.as_fd(), libc::FAN_MARK_INODE, libc::FAN_OPEN_PERM, &file).unwrap();
        let (f2, f3) = (file.clone(), file.clone());
        let opener = std::thread::spawn(move || std::fs::File::open(&f2).map(drop));
        let mut buf = vec![0u8; 1024];
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let answered = loop {
            if let Some(evs) = read_events(fan.as_fd(), &mut buf).unwrap() {
                let evs: Vec<_> = evs.collect::<Result<_, _>>().unwrap();
                if let Some(ev) = evs.into_iter().find(|e| e.mask & libc::FAN_OPEN_PERM != 0) {
                    let fd = ev.fd.expect("fd mode");
                    respond(fan.as_fd(), fd.as_raw_fd(), Response::Deny).unwrap();
                    break true;
                }
            }
            assert!(std::time::Instant::now() < until, "no permission event in 5 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert!(answered);
        let e = opener.join().unwrap().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "FAN_DENY refuses the open: {e}");
        drop(fan);
        assert!(std::fs::File::open(&f3).is_ok(), "the group is gone: opens pass");
    }
}
