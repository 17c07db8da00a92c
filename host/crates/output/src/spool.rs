//! A durable, disk-backed FIFO of alerts, shared by the webhook and NATS
//! outputs.
//!
//! # Layout of a spool directory (mode 0700)
//!
//! * `00000000000000000001.seg`, `...2.seg`: append-only segment files
//!   (0600). A record is a 16-byte header, `len: u32 LE`, `crc: u32 LE`
//!   (CRC-32 of the id bytes and the payload), `id: u64 LE`, followed by
//!   `len` bytes of UTF-8 JSON. The last segment is the one being appended
//!   to; a new one starts when it reaches the segment size (the spool limit
//!   / 16, between 64 KiB and 8 MiB).
//! * `committed`: `v1 <segment> <offset>\n`, the position up to which every
//!   record was delivered. Replaced atomically (write, fsync, rename, fsync
//!   of the directory) after each delivered batch.
//! * `rejected.ndjson`: alerts the receiver refused for good, one JSON line
//!   each with the time, the reason and the alert, so nothing is lost
//!   silently.
//! * `corrupt-<segment>-<offset>.bin`: bytes that failed their checksum in
//!   the middle of a segment (disk corruption), kept for inspection.
//! * `lock`: held (flock) by the one [`Spool`] that owns the directory.
//!
//! # Durability
//!
//! [`Spool::append`] returns once the record is on disk (`fdatasync`); a new
//! segment also syncs the directory. Alerts are rare, so paying one sync
//! per alert buys the simple guarantee that an accepted alert survives a
//! crash or power loss. A crash in the middle of an append leaves a torn
//! record at the end of the last segment: [`Spool::open`] finds it by its
//! length and checksum and truncates it with a warning. That record was
//! never acknowledged to the caller, so nothing acknowledged is lost.
//!
//! Delivery is at least once: a crash after the receiver acknowledged a
//! batch and before `committed` was replaced sends that batch again on the
//! next start. The outputs give receivers what they need to drop that
//! duplicate (the alert ids).
//!
//! # Concurrency
//!
//! Any number of threads may [`append`](Spool::append); one consumer thread
//! calls [`read`](Spool::read), [`commit`](Spool::commit) and
//! [`reject`](Spool::reject). Two processes (or two outputs) never share a
//! directory: the lock is taken in [`Spool::open`].

use crate::error::OutputError;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Bytes of a record header: length, checksum, alert id.
pub const RECORD_HEADER: usize = 16;
/// The largest payload one record may hold (16 MiB): anything larger is
/// not an alert, and a corrupt length field must not make us allocate
/// gigabytes.
pub const MAX_RECORD: usize = 16 << 20;
/// How long [`Spool::open`] waits for the directory's lock, in case a
/// previous owner (an output being replaced) is still finishing.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Size limits of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Undelivered bytes (headers included) beyond which appends are refused.
    pub max_bytes: u64,
    /// A segment file is closed and a new one started once it reaches this
    /// size. Delivered segments are deleted, so the disk holds at most
    /// `max_bytes` plus one segment.
    pub segment_bytes: u64,
}

impl SpoolOptions {
    /// `max_bytes`, with segments of a sixteenth of it (64 KiB to 8 MiB).
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self { max_bytes, segment_bytes: (max_bytes / 16).clamp(64 << 10, 8 << 20) }
    }
}

/// A position in the spool: a segment number and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Segment number (its file name).
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// One spooled alert, as [`Spool::read`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The alert id.
    pub id: u64,
    /// The alert's JSON document.
    pub json: String,
    /// Where the record starts.
    pub start: Pos,
    /// Where the next record starts.
    pub end: Pos,
}

/// A durable FIFO of alerts in one directory. See the module documentation.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    label: String,
    opts: SpoolOptions,
    state: Mutex<State>,
    /// Holds the directory's flock for the spool's lifetime.
    _lock: File,
}

#[derive(Debug)]
struct State {
    /// Live segments and their valid (durable) length; the last one is the
    /// segment being appended to.
    segments: BTreeMap<u64, u64>,
    /// Append handle of the last segment; `None` forces a new segment.
    active: Option<File>,
    /// Everything before this position was delivered.
    committed: Pos,
    /// Undelivered records.
    records: u64,
}

impl State {
    /// Undelivered bytes.
    fn queued_bytes(&self) -> u64 {
        self.segments.range(self.committed.segment..).map(|(_, len)| len).sum::<u64>().saturating_sub(self.committed.offset)
    }
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`. `label` names it in
    /// errors and logs (`webhook spool`). Takes the directory's lock (waiting
    /// up to 5 s for a previous owner), deletes delivered segments, and
    /// checks every undelivered record: a torn record at the end of the last
    /// segment (a crash during an append) is truncated with a warning; bad
    /// bytes elsewhere are moved to a `corrupt-*.bin` file with an error.
    pub fn open(dir: &Path, label: &str, opts: SpoolOptions) -> Result<Spool, OutputError> {
        let io_err = |path: &Path, action: &str, e: io::Error| OutputError::io(label, path, action, e);
        if opts.max_bytes == 0 || opts.segment_bytes == 0 {
            return Err(OutputError::Start { output: label.to_string(), message: "spool limits must be above 0 bytes".into() });
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io_err(dir, "cannot create", e))?;
        let lock = lock_dir(dir, label)?;

        let mut segments = BTreeMap::new();
        let entries = fs::read_dir(dir).map_err(|e| io_err(dir, "cannot list", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir, "cannot list", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == "committed.tmp" {
                let _ = fs::remove_file(entry.path());
            } else if let Some(n) = name.strip_suffix(".seg").and_then(|n| n.parse::<u64>().ok()) {
                let len = entry.metadata().map_err(|e| io_err(&entry.path(), "cannot stat", e))?.len();
                segments.insert(n, len);
            }
        }

        let committed_path = dir.join("committed");
        let first = segments.keys().next().copied().unwrap_or(1);
        let mut committed = match fs::read_to_string(&committed_path) {
            Ok(text) => match parse_committed(&text) {
                Some(pos) => pos,
                None => {
                    tracing::warn!(spool = %dir.display(), "{label}: {} is unreadable ({:?}); delivering again from the oldest segment (the receiver may see duplicates)", committed_path.display(), text.chars().take(64).collect::<String>());
                    Pos { segment: first, offset: 0 }
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Pos { segment: first, offset: 0 },
            Err(e) => return Err(io_err(&committed_path, "cannot read", e)),
        };
        if !segments.contains_key(&committed.segment) {
            // Its segment was deleted after the commit: resume at the next
            // one, or after it when there is none (everything was delivered).
            committed = match segments.range(committed.segment..).next() {
                Some((&next, _)) => Pos { segment: next, offset: 0 },
                None if committed.offset > 0 => Pos { segment: committed.segment + 1, offset: 0 },
                None => committed,
            };
        }

        let spool = Spool {
            dir: dir.to_path_buf(),
            label: label.to_string(),
            opts,
            state: Mutex::new(State { segments, active: None, committed, records: 0 }),
            _lock: lock,
        };
        spool.recover()?;
        Ok(spool)
    }

    /// Checks the undelivered segments (see [`Spool::open`]), counts their
    /// records and deletes the delivered ones.
    fn recover(&self) -> Result<(), OutputError> {
        let mut st = self.lock_state();
        let seg_numbers: Vec<u64> = st.segments.keys().copied().collect();
        let last = seg_numbers.last().copied();
        let mut records = 0u64;
        for n in seg_numbers {
            if n < st.committed.segment {
                continue;
            }
            let path = self.segment_path(n);
            let file = File::open(&path).map_err(|e| self.io_err(&path, "cannot open", e))?;
            let file_len = st.segments[&n];
            let in_committed = n == st.committed.segment;
            let c = st.committed.offset;
            let mut off = 0u64;
            let mut count = 0u64;
            // Start of the last record that starts before `c`, and whether a
            // record boundary falls exactly on `c`.
            let mut last_before_c = 0u64;
            let mut on_boundary = c == 0;
            let bad = loop {
                if off == c {
                    on_boundary = true;
                }
                if off >= file_len {
                    break None;
                }
                match read_record(&file, off, file_len).map_err(|e| self.io_err(&path, "cannot read", e))? {
                    Some((_, _, next)) => {
                        if in_committed && off < c {
                            last_before_c = off;
                        } else {
                            count += 1;
                        }
                        off = next;
                    }
                    None => break Some(off),
                }
            };
            if in_committed && !on_boundary {
                // A committed offset past the valid data means all of it was
                // delivered; one inside a record resumes at that record (a
                // duplicate beats a loss).
                let resume = if c > off { off } else { last_before_c };
                if c <= off {
                    count += 1;
                }
                tracing::warn!(spool = %self.dir.display(), "{}: committed offset {c} of segment {n} is not a record boundary; resuming at {resume}", self.label);
                st.committed.offset = resume;
            }
            if let Some(bad_at) = bad {
                let dropped = file_len - bad_at;
                if Some(n) == last && torn_tail(&file, bad_at, file_len).map_err(|e| self.io_err(&path, "cannot read", e))? {
                    tracing::warn!(spool = %self.dir.display(), "{}: segment {n} ends with {dropped} bytes of an incomplete record (the agent stopped during an append); truncated. No acknowledged alert is lost.", self.label);
                } else {
                    self.save_corrupt(&file, n, bad_at, file_len)?;
                }
                let f = OpenOptions::new().write(true).open(&path).map_err(|e| self.io_err(&path, "cannot open", e))?;
                f.set_len(bad_at).map_err(|e| self.io_err(&path, "cannot truncate", e))?;
                f.sync_all().map_err(|e| self.io_err(&path, "cannot sync", e))?;
                st.segments.insert(n, bad_at);
            }
            records += count;
        }
        st.records = records;
        if let Some(last) = last {
            let path = self.segment_path(last);
            let f = OpenOptions::new().write(true).open(&path).map_err(|e| self.io_err(&path, "cannot open", e))?;
            st.active = Some(f);
        }
        self.normalize(&mut st);
        Ok(())
    }

    /// Copies the bytes `[from, to)` of segment `n` to a `corrupt-*.bin`
    /// file, with an error in the log.
    fn save_corrupt(&self, file: &File, n: u64, from: u64, to: u64) -> Result<(), OutputError> {
        let path = self.dir.join(format!("corrupt-{n}-{from}.bin"));
        let len = usize::try_from(to - from).unwrap_or(usize::MAX).min(64 << 20);
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, from).map_err(|e| self.io_err(&self.segment_path(n), "cannot read", e))?;
        let mut out = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&path).map_err(|e| self.io_err(&path, "cannot create", e))?;
        out.write_all(&buf).and_then(|_| out.sync_all()).map_err(|e| self.io_err(&path, "cannot write", e))?;
        tracing::error!(spool = %self.dir.display(), "{}: segment {n} has {} bytes that fail their checksum at offset {from} (disk corruption?); moved to {} and skipped: alerts in them are not delivered", self.label, to - from, path.display());
        Ok(())
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The limits the spool was opened with.
    pub fn options(&self) -> SpoolOptions {
        self.opts
    }

    /// Undelivered records.
    pub fn queued(&self) -> u64 {
        self.lock_state().records
    }

    /// Undelivered bytes (headers included).
    pub fn queued_bytes(&self) -> u64 {
        self.lock_state().queued_bytes()
    }

    /// Appends one alert; returns once it is on disk. Refuses it with
    /// [`OutputError::SpoolFull`] when the undelivered bytes would exceed
    /// `max_bytes`, and with [`OutputError::TooLarge`] beyond [`MAX_RECORD`].
    /// A failed write is undone, so the segment never holds a partial record
    /// followed by good ones.
    pub fn append(&self, id: u64, json: &str) -> Result<(), OutputError> {
        if json.len() > MAX_RECORD {
            return Err(OutputError::TooLarge { output: self.label.clone(), id, size: json.len(), max: MAX_RECORD });
        }
        let size = (RECORD_HEADER + json.len()) as u64;
        let mut st = self.lock_state();
        let queued = st.queued_bytes();
        if queued + size > self.opts.max_bytes {
            return Err(OutputError::SpoolFull { output: self.label.clone(), id, queued_bytes: queued, max_bytes: self.opts.max_bytes });
        }
        let need_segment = match st.segments.last_key_value() {
            Some((_, &len)) => st.active.is_none() || len >= self.opts.segment_bytes,
            None => true,
        };
        if need_segment {
            self.start_segment(&mut st)?;
        }
        let Some((last, len)) = st.segments.last_key_value().map(|(&n, &len)| (n, len)) else {
            return Err(OutputError::Start { output: self.label.clone(), message: "no segment after creating one".into() });
        };
        let path = self.segment_path(last);
        let buf = encode_record(id, json);
        let file = st.active.as_ref().ok_or_else(|| OutputError::Start { output: self.label.clone(), message: "no open segment".into() })?;
        let written = file.write_all_at(&buf, len).and_then(|_| file.sync_data());
        if let Err(e) = written {
            // Undo the partial record; if even that fails, never append to
            // this segment again (recovery will deal with its tail).
            if file.set_len(len).and_then(|_| file.sync_data()).is_err() {
                st.active = None;
            }
            return Err(self.io_err(&path, "cannot append", e));
        }
        st.segments.insert(last, len + size);
        st.records += 1;
        Ok(())
    }

    /// Creates the next segment file and makes it the active one.
    fn start_segment(&self, st: &mut State) -> Result<(), OutputError> {
        let n = st.segments.keys().next_back().map(|n| n + 1).unwrap_or(1).max(st.committed.segment);
        let path = self.segment_path(n);
        let file = OpenOptions::new().create_new(true).read(true).write(true).mode(0o600).open(&path).map_err(|e| self.io_err(&path, "cannot create", e))?;
        sync_dir(&self.dir).map_err(|e| self.io_err(&self.dir, "cannot sync", e))?;
        st.segments.insert(n, 0);
        st.active = Some(file);
        if st.committed.segment < n && st.queued_bytes() == 0 {
            // Nothing undelivered before the new segment.
            st.committed = Pos { segment: n, offset: 0 };
        }
        Ok(())
    }

    /// Up to `max_records` undelivered records, oldest first, stopping before
    /// `max_bytes` of JSON (but always returning at least one record when
    /// there is one). Reading does not consume: [`Spool::commit`] does.
    pub fn read(&self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, OutputError> {
        let (committed, segments) = {
            let st = self.lock_state();
            let segs: Vec<(u64, u64)> = st.segments.range(st.committed.segment..).map(|(&n, &l)| (n, l)).collect();
            (st.committed, segs)
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (n, len) in segments {
            let mut off = if n == committed.segment { committed.offset } else { 0 };
            if off >= len {
                continue;
            }
            let path = self.segment_path(n);
            let file = File::open(&path).map_err(|e| self.io_err(&path, "cannot open", e))?;
            while off < len {
                if out.len() >= max_records || (!out.is_empty() && bytes >= max_bytes) {
                    return Ok(out);
                }
                match read_record(&file, off, len).map_err(|e| self.io_err(&path, "cannot read", e))? {
                    Some((id, json, next)) => {
                        if !out.is_empty() && bytes + json.len() > max_bytes {
                            return Ok(out);
                        }
                        bytes += json.len();
                        out.push(Record { id, json, start: Pos { segment: n, offset: off }, end: Pos { segment: n, offset: next } });
                        off = next;
                    }
                    None => {
                        // Verified at open or written by us: the disk changed
                        // under us. Set the bad bytes aside and go on.
                        self.quarantine(n, off, &file)?;
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Moves the bytes from `off` to the end of segment `n` aside after a
    /// checksum failure while reading.
    fn quarantine(&self, n: u64, off: u64, file: &File) -> Result<(), OutputError> {
        let mut st = self.lock_state();
        let Some(&len) = st.segments.get(&n) else { return Ok(()) };
        self.save_corrupt(file, n, off, len)?;
        let path = self.segment_path(n);
        let f = OpenOptions::new().write(true).open(&path).map_err(|e| self.io_err(&path, "cannot open", e))?;
        f.set_len(off).and_then(|_| f.sync_all()).map_err(|e| self.io_err(&path, "cannot truncate", e))?;
        st.segments.insert(n, off);
        if st.segments.last_key_value().map(|(&k, _)| k) == Some(n) {
            // Appends go to a fresh segment from now on.
            st.active = None;
        }
        // Recount: the skipped bytes held an unknown number of records.
        st.records = self.count_records(&st)?;
        Ok(())
    }

    /// Number of readable undelivered records.
    fn count_records(&self, st: &State) -> Result<u64, OutputError> {
        let mut count = 0;
        for (&n, &len) in st.segments.range(st.committed.segment..) {
            let path = self.segment_path(n);
            let file = File::open(&path).map_err(|e| self.io_err(&path, "cannot open", e))?;
            let mut off = if n == st.committed.segment { st.committed.offset } else { 0 };
            while off < len {
                match read_record(&file, off, len).map_err(|e| self.io_err(&path, "cannot read", e))? {
                    Some((_, _, next)) => {
                        count += 1;
                        off = next;
                    }
                    None => break,
                }
            }
        }
        Ok(count)
    }

    /// Marks `delivered` (the next records, in order, as [`Spool::read`]
    /// returned them) as delivered: persists the new position, then deletes
    /// the segments left behind.
    pub fn commit(&self, delivered: &[Record]) -> Result<(), OutputError> {
        let (Some(first), Some(last)) = (delivered.first(), delivered.last()) else { return Ok(()) };
        let mut st = self.lock_state();
        let start = first.start;
        if start != st.committed
            && !(start.offset == 0
                && st.committed.offset == st.segments.get(&st.committed.segment).copied().unwrap_or(0)
                && start.segment > st.committed.segment)
        {
            return Err(OutputError::Start {
                output: self.label.clone(),
                message: format!("commit of records starting at {start:?} while the spool is at {:?}", st.committed),
            });
        }
        self.write_committed(last.end)?;
        st.committed = last.end;
        st.records = st.records.saturating_sub(delivered.len() as u64);
        self.normalize(&mut st);
        Ok(())
    }

    /// Moves the committed position past fully delivered, closed segments
    /// and deletes every segment before it.
    fn normalize(&self, st: &mut State) {
        let last = st.segments.keys().next_back().copied();
        loop {
            let c = st.committed;
            let Some(&len) = st.segments.get(&c.segment) else { break };
            if c.offset < len || Some(c.segment) == last {
                break;
            }
            match st.segments.range(c.segment + 1..).next() {
                Some((&next, _)) => st.committed = Pos { segment: next, offset: 0 },
                None => break,
            }
        }
        let old: Vec<u64> = st.segments.range(..st.committed.segment).map(|(&n, _)| n).collect();
        for n in old {
            let path = self.segment_path(n);
            match fs::remove_file(&path) {
                Ok(()) => {
                    st.segments.remove(&n);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    st.segments.remove(&n);
                }
                Err(e) => tracing::warn!(spool = %self.dir.display(), "{}: cannot delete delivered segment {}: {e}", self.label, path.display()),
            }
        }
    }

    /// Replaces `committed` atomically.
    fn write_committed(&self, pos: Pos) -> Result<(), OutputError> {
        let tmp = self.dir.join("committed.tmp");
        let path = self.dir.join("committed");
        let text = format!("v1 {} {}\n", pos.segment, pos.offset);
        let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(|e| self.io_err(&tmp, "cannot create", e))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_data()).map_err(|e| self.io_err(&tmp, "cannot write", e))?;
        fs::rename(&tmp, &path).map_err(|e| self.io_err(&path, "cannot replace", e))?;
        sync_dir(&self.dir).map_err(|e| self.io_err(&self.dir, "cannot sync", e))
    }

    /// Gives up on `record` (the next undelivered one): appends it to
    /// `rejected.ndjson` with `reason` (synced), then commits past it.
    pub fn reject(&self, record: &Record, reason: &str) -> Result<(), OutputError> {
        let path = self.rejected_path();
        let alert = if serde_json::from_str::<serde::de::IgnoredAny>(&record.json).is_ok() {
            record.json.clone()
        } else {
            serde_json::Value::String(record.json.clone()).to_string()
        };
        let line = format!(
            "{{\"rejected_at\":{},\"alert_id\":{},\"reason\":{},\"alert\":{}}}\n",
            serde_json::Value::String(crate::util::rfc3339(SystemTime::now())),
            record.id,
            serde_json::Value::String(reason.to_string()),
            alert
        );
        let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(|e| self.io_err(&path, "cannot open", e))?;
        f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).map_err(|e| self.io_err(&path, "cannot append", e))?;
        self.commit(std::slice::from_ref(record))
    }

    /// The file refused alerts are moved to.
    pub fn rejected_path(&self) -> PathBuf {
        self.dir.join("rejected.ndjson")
    }

    /// Path of segment `n`.
    pub fn segment_path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:020}.seg"))
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // update is a single assignment after the I/O succeeded).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io_err(&self, path: &Path, action: &str, e: io::Error) -> OutputError {
        OutputError::io(&self.label, path, action, e)
    }
}

/// Takes `dir/lock`, waiting up to [`LOCK_WAIT`] for another owner.
fn lock_dir(dir: &Path, label: &str) -> Result<File, OutputError> {
    let path = dir.join("lock");
    let file =
        OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path).map_err(|e| OutputError::io(label, &path, "cannot create", e))?;
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => std::thread::sleep(Duration::from_millis(20)),
            Err(fs::TryLockError::WouldBlock) => {
                return Err(OutputError::Start {
                    output: label.to_string(),
                    message: format!(
                        "spool directory {} is in use by another output or process (lock {} held for {}s); give each output its own spool_dir",
                        dir.display(),
                        path.display(),
                        LOCK_WAIT.as_secs()
                    ),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(OutputError::io(label, &path, "cannot lock", e)),
        }
    }
}

/// `v1 <segment> <offset>`.
fn parse_committed(text: &str) -> Option<Pos> {
    let mut it = text.split_whitespace();
    if it.next()? != "v1" {
        return None;
    }
    let segment = it.next()?.parse().ok()?;
    let offset = it.next()?.parse().ok()?;
    it.next().is_none().then_some(Pos { segment, offset })
}

/// Header and payload of one record.
fn encode_record(id: u64, json: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(RECORD_HEADER + json.len());
    buf.extend_from_slice(&(json.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(id, json.as_bytes()).to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(json.as_bytes());
    buf
}

fn checksum(id: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&id.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// The record at `off` if it is complete and intact within `limit`:
/// `(id, json, offset of the next record)`; `None` for a torn or corrupt
/// record.
fn read_record(file: &File, off: u64, limit: u64) -> io::Result<Option<(u64, String, u64)>> {
    if off + RECORD_HEADER as u64 > limit {
        return Ok(None);
    }
    let mut header = [0u8; RECORD_HEADER];
    file.read_exact_at(&mut header, off)?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let id = u64::from_le_bytes([header[8], header[9], header[10], header[11], header[12], header[13], header[14], header[15]]);
    let next = off + (RECORD_HEADER + len) as u64;
    if len > MAX_RECORD || next > limit {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, off + RECORD_HEADER as u64)?;
    if checksum(id, &payload) != crc {
        return Ok(None);
    }
    match String::from_utf8(payload) {
        Ok(json) => Ok(Some((id, json, next))),
        Err(_) => Ok(None),
    }
}

/// Whether the bad bytes from `off` to `len` look like an append cut short
/// (the record reaches past the end of the file, or the rest is zeros, as a
/// file system leaves a size extension whose data never reached the disk)
/// rather than damage in the middle of good data.
fn torn_tail(file: &File, off: u64, len: u64) -> io::Result<bool> {
    if len - off < RECORD_HEADER as u64 {
        return Ok(true);
    }
    let mut header = [0u8; 4];
    file.read_exact_at(&mut header, off)?;
    let claimed = u32::from_le_bytes(header) as u64;
    if off + RECORD_HEADER as u64 + claimed >= len {
        return Ok(true);
    }
    let mut rest = vec![0u8; usize::try_from(len - off).unwrap_or(usize::MAX).min(MAX_RECORD + RECORD_HEADER)];
    file.read_exact_at(&mut rest, off)?;
    Ok(rest.iter().all(|&b| b == 0))
}

/// fsync of a directory, so that created, renamed and deleted entries are
/// durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
