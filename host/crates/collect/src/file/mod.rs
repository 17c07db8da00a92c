//! File collector: creates, modifications, deletes, renames, mode changes
//! under the include paths, and reads of a few sensitive files.
//!
//! * `fanotify` (root, kernel >= 5.9; renames with their old path from
//!   5.17): filesystem marks on the filesystems holding the include paths,
//!   every event attributed to the process that caused it (pid from the
//!   kernel; exe, entity and uid from the process tree, which remembers
//!   processes that already exited, else `/proc`). Directory handles are
//!   resolved to paths with `open_by_handle_at` (cached; the cache is
//!   cleared on every directory rename). A filesystem that refuses
//!   a fanotify mark (no file handle support) is watched with inotify instead
//!   and the mode says so.
//! * `inotify` (degraded: not root, or fanotify refused): the `notify` crate
//!   on the existing include paths; no pid, exe or entity.
//!
//! `modify` is `FAN_CLOSE_WRITE`, not `FAN_MODIFY`: one event per write
//! session (open, writes, close) instead of one per `write(2)`, which on a
//! filesystem-wide mark would be a flood (every log append on `/`). The
//! cost: a file kept open for writing is reported when it is closed, and
//! writes through a shared mapping are not reported. Sensitive files get an
//! inode mark for `FAN_OPEN` (one event per open, whatever reads follow,
//! mmap included; `FAN_ACCESS` would fire per `read(2)`), re-added when the
//! file is replaced by a rename. `chmod`
//! vs `attrib`: an attribute change is stat'ed at once; it is `chmod` when
//! the mode differs from the one last seen for that path, or, for a path
//! not seen before, when the change was metadata-only (ctime newer than
//! mtime: chmod, chown, xattr, link count) or a setuid/setgid bit is set;
//! otherwise `attrib` (e.g. `touch`). `mode` (full `st_mode`, setuid/setgid
//! bits included) is filled for both, so a rule can test bits either way.
//!
//! Events caused by `exclude_pids` (the agent) and under excluded paths are
//! dropped (fanotify mode; inotify cannot tell who caused an event). When
//! the kernel queue overflows (`FAN_Q_OVERFLOW`, 16384 events by default)
//! the overflow is counted in `lost` and `overflows`.

pub(crate) mod fanotify;
pub(crate) mod filter;
pub(crate) mod inotify;

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use edr_event::{EventBody, FileEvent, FileOp};

use crate::attribute::attribute;
use crate::sink::Sink;
use crate::{CollectError, Ctx, FileConfig, FileMode};
use fanotify::{join, Fanotify, RawEvent};
use filter::PathFilter;

type Started = (Vec<JoinHandle<()>>, Vec<Box<dyn Any + Send>>);

/// Starts the file collector.
pub(crate) fn start(cfg: &FileConfig, exclude_paths: &[PathBuf], ctx: &Arc<Ctx>, sink: Sink) -> Result<Started, CollectError> {
    if cfg.mode == FileMode::Off {
        sink.counters.set_mode("off");
        return Ok((Vec::new(), Vec::new()));
    }
    let filter = Arc::new(PathFilter::new(&cfg.include, &cfg.exclude, exclude_paths));
    if cfg.mode == FileMode::Inotify {
        return start_inotify(cfg, &filter, sink, None);
    }
    match setup_fanotify(cfg, &filter) {
        Ok((fan, refused)) => {
            let mut keep: Vec<Box<dyn Any + Send>> = Vec::new();
            let mut mode = "fanotify".to_string();
            if fan.marked_filesystems() == 0 {
                mode.push_str(" (nothing marked: no include path exists)");
            }
            if !fan.rename {
                mode.push_str(" (no FAN_RENAME: kernel < 5.17, renames lack the old path)");
            }
            if !refused.is_empty() {
                let roots: Vec<(PathBuf, bool)> = refused.iter().map(|(p, _)| (p.clone(), true)).collect();
                let list: Vec<String> = refused.iter().map(|(p, e)| format!("{} ({e})", p.display())).collect();
                match inotify::watch(&roots, inotify::Handler::new(filter.clone(), &[], sink.clone())) {
                    Ok(w) => {
                        keep.push(Box::new(w));
                        mode.push_str(&format!(" + inotify without pids for {}", list.join(", ")));
                    }
                    Err(e) => mode.push_str(&format!(" (unwatched: {}; inotify failed too: {e})", list.join(", "))),
                }
            }
            sink.counters.set_mode(mode);
            let ctx = ctx.clone();
            let sensitive: HashSet<String> = cfg.sensitive_reads.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            let threads = crate::process::spawn("file", move || {
                let mut c = FanCollector { fan, ctx, filter, sensitive, sink, modes: ModeCache::default(), pending: Default::default() };
                c.run();
            })?;
            Ok((threads, keep))
        }
        Err(e) if cfg.mode == FileMode::Fanotify => Err(CollectError::Unavailable { collector: "file", mode: "fanotify".into(), reason: e }),
        Err(e) => {
            tracing::warn!("file collector degraded to inotify (no pid attribution): {e}");
            start_inotify(cfg, &filter, sink, Some(e))
        }
    }
}

fn start_inotify(cfg: &FileConfig, filter: &Arc<PathFilter>, sink: Sink, why: Option<String>) -> Result<Started, CollectError> {
    let roots = filter::watch_roots(filter, &cfg.sensitive_reads);
    let handler = inotify::Handler::new(filter.clone(), &cfg.sensitive_reads, sink.clone());
    let watcher = inotify::watch(&roots, handler).map_err(|reason| CollectError::Unavailable { collector: "file", mode: "inotify".into(), reason })?;
    sink.counters.set_mode(match why {
        Some(why) => format!("inotify (degraded: {why}; no pid/exe attribution)"),
        None => "inotify (no pid/exe attribution)".to_string(),
    });
    Ok((Vec::new(), vec![Box::new(watcher)]))
}

/// Initialises fanotify and marks every filesystem holding an include path
/// and every sensitive file. Returns the group and the include bases whose
/// filesystem refused a mark.
fn setup_fanotify(cfg: &FileConfig, filter: &PathFilter) -> Result<(Fanotify, Vec<(PathBuf, String)>), String> {
    let mut fan = Fanotify::init().map_err(|e| e.to_string())?;
    let mut refused = Vec::new();
    let (mut marked, mut failed) = (0, 0);
    let mut bases: Vec<PathBuf> = filter.include().iter().map(|p| p.base()).collect();
    bases.sort();
    bases.dedup();
    for base in bases {
        // The nearest existing directory at or above the base: a filesystem
        // mark there covers the base once it is created.
        let Some(dir) = base.ancestors().find(|a| a.is_dir()).map(PathBuf::from) else {
            continue;
        };
        if dir != base {
            tracing::debug!(path = %base.display(), "file collector: include path does not exist; its filesystem is marked through {}", dir.display());
        }
        match fan.mark_filesystem(&dir) {
            Ok(_) => marked += 1,
            // Unprivileged fanotify (Linux >= 5.13) allows inode marks only.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                return Err(format!("fanotify filesystem mark on {}: {e} (needs CAP_SYS_ADMIN)", dir.display()));
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), "fanotify refused a filesystem mark: {e}");
                failed += 1;
                if dir == base {
                    refused.push((base, e.to_string()));
                }
            }
        }
    }
    if marked == 0 && failed > 0 {
        return Err(format!("every filesystem refused a fanotify mark ({failed} tried)"));
    }
    for f in &cfg.sensitive_reads {
        if !crate::procfs::exists(f) {
            tracing::debug!(path = %f.display(), "file collector: sensitive file does not exist; skipped");
            continue;
        }
        if let Err(e) = fan.mark_reads(f) {
            tracing::warn!(path = %f.display(), "fanotify: cannot watch reads: {e}");
        }
    }
    Ok((fan, refused))
}

/// The fanotify reader thread's state.
struct FanCollector {
    fan: Fanotify,
    ctx: Arc<Ctx>,
    filter: Arc<PathFilter>,
    sensitive: HashSet<String>,
    sink: Sink,
    modes: ModeCache,
    /// Events waiting for their process's image, oldest first.
    pending: std::collections::VecDeque<Pending>,
}

impl FanCollector {
    fn run(&mut self) {
        while !self.ctx.stopping() {
            self.flush_pending();
            let wait_ms = if self.pending.is_empty() { 200 } else { 10 };
            if !crate::process::wait_readable(self.fan.as_raw_fd(), wait_ms) {
                continue;
            }
            // Bounded, so that a busy filesystem cannot keep stop() waiting.
            for _ in 0..64 {
                let mut malformed = 0;
                let read = self.fan.read(&mut malformed);
                self.sink.counters.lost.fetch_add(malformed, Ordering::Relaxed);
                match read {
                    Ok(None) => break,
                    Ok(Some(events)) if events.is_empty() => break,
                    Ok(Some(events)) => {
                        for ev in events {
                            self.handle(ev);
                        }
                    }
                    Err(e) => {
                        tracing::error!("fanotify: read failed: {e}");
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        break;
                    }
                }
            }
        }
        // Stopping: what still waits for its process goes out as it is.
        for p in std::mem::take(&mut self.pending) {
            self.send(p);
        }
    }

    fn handle(&mut self, ev: RawEvent) {
        let c = self.sink.counters.clone();
        if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
            let n = c.overflows.fetch_add(1, Ordering::Relaxed) + 1;
            c.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(overflows = n, "fanotify queue overflowed: file events were lost (counted)");
            return;
        }
        let pid = ev.pid.max(0) as u32;
        if self.ctx.exclude_pids.contains(&pid) {
            return;
        }
        let is_dir = ev.mask & libc::FAN_ONDIR != 0;
        if ev.mask & libc::FAN_RENAME != 0 {
            let old = ev.info(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME).and_then(|i| self.path_of(i));
            let new = ev.info(libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME).and_then(|i| self.path_of(i));
            if is_dir {
                self.fan.clear_cache();
            }
            let Some(new) = new else {
                c.unresolved.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if !(self.filter.allows(&new) || old.as_deref().is_some_and(|o| self.filter.allows(o))) {
                return;
            }
            let partial = old.is_none();
            self.rearm(&new);
            self.emit(pid, FileOp::Rename, new, old, None, partial);
            return;
        }
        let Some(info) = ev.info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME).or(ev.info(libc::FAN_EVENT_INFO_TYPE_DFID)) else {
            c.unresolved.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let info = info.clone();
        let Some(path) = self.path_of(&info) else {
            c.unresolved.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if is_dir && ev.mask & (libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO) != 0 {
            self.fan.clear_cache();
        }
        // Sensitive reads are reported whatever the include set says.
        if ev.mask & libc::FAN_OPEN != 0 && self.sensitive.contains(&path) && !self.filter.excluded(&path) {
            self.emit(pid, FileOp::Read, path.clone(), None, None, false);
        }
        if !self.filter.allows(&path) {
            return;
        }
        // Merged events carry several bits: report them in causal order.
        if ev.mask & libc::FAN_CREATE != 0 {
            self.rearm(&path);
            self.emit(pid, FileOp::Create, path.clone(), None, None, false);
        }
        if ev.mask & libc::FAN_MOVED_TO != 0 {
            self.rearm(&path);
            self.emit(pid, FileOp::Rename, path.clone(), None, None, true);
        }
        if ev.mask & libc::FAN_CLOSE_WRITE != 0 {
            self.emit(pid, FileOp::Modify, path.clone(), None, None, false);
        }
        if ev.mask & libc::FAN_ATTRIB != 0 {
            let (op, mode) = self.modes.classify(&path);
            self.emit(pid, op, path.clone(), None, mode, false);
        }
        if ev.mask & libc::FAN_DELETE != 0 {
            self.modes.forget(&path);
            self.emit(pid, FileOp::Delete, path, None, None, false);
        }
    }

    fn path_of(&mut self, info: &fanotify::FidInfo) -> Option<String> {
        let dir = self.fan.resolve_dir(info)?;
        Some(join(&dir, info.name.as_deref().unwrap_or("")))
    }

    /// A sensitive file replaced by a new inode: mark the new one.
    fn rearm(&mut self, path: &str) {
        if self.sensitive.contains(path) {
            if let Err(e) = self.fan.mark_reads(std::path::Path::new(path)) {
                tracing::warn!(path, "fanotify: cannot re-mark a replaced sensitive file: {e}");
            }
        }
    }

    fn emit(&mut self, pid: u32, op: FileOp, path: String, old_path: Option<String>, mode: Option<u32>, partial: bool) {
        let who = attribute(&self.ctx, pid);
        let ev = FileEvent { op, path, old_path, mode, pid: Some(pid), entity_id: who.entity_id, exe: who.exe, uid: who.uid };
        let p = Pending { since: std::time::Instant::now(), time: edr_event::time::now(), ev, partial };
        // A process known by its entity but not yet by its image (it exited
        // before `/proc` was read and the process collector has not handled
        // its exec yet) waits a little for the tree; events queue behind it
        // so that the collector's order is kept.
        if (p.ev.exe.is_none() && p.ev.entity_id.is_some()) || !self.pending.is_empty() {
            self.pending.push_back(p);
            self.flush_pending();
        } else {
            self.send(p);
        }
    }

    /// Emits one event; partial when its process is not fully known.
    fn send(&self, p: Pending) {
        let partial = p.partial || p.ev.exe.is_none() || p.ev.entity_id.is_none();
        self.sink.emit_at(p.time, EventBody::File(p.ev), partial);
    }

    /// Emits the waiting events, in order, up to the first one whose
    /// process is still unknown and younger than [`ATTRIBUTION_WAIT`].
    fn flush_pending(&mut self) {
        while let Some(front) = self.pending.front_mut() {
            if front.ev.exe.is_none() {
                if let Some(node) = front.ev.entity_id.and_then(|e| self.ctx.tree.node(e)) {
                    if !node.inherited && !node.info.exe.is_empty() {
                        front.ev.exe = Some(node.info.exe);
                        front.ev.uid = Some(node.info.uid);
                    }
                }
                if front.ev.exe.is_none() && front.since.elapsed() < ATTRIBUTION_WAIT {
                    return;
                }
            }
            let p = self.pending.pop_front().expect("front exists");
            self.send(p);
        }
    }
}

/// How long a file event waits for the process tree to learn the image of
/// the process that caused it before it is emitted as partial.
const ATTRIBUTION_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// A file event waiting for its process's image.
struct Pending {
    since: std::time::Instant,
    time: u64,
    ev: FileEvent,
    partial: bool,
}

/// The last mode seen per path, to tell `chmod` from other attribute changes.
#[derive(Debug, Default)]
pub(crate) struct ModeCache {
    modes: HashMap<String, u32>,
}

const MODE_CACHE_MAX: usize = 16_384;

impl ModeCache {
    /// Stats `path` after an attribute change: `(Chmod | Attrib, st_mode)`.
    pub fn classify(&mut self, path: &str) -> (FileOp, Option<u32>) {
        let Ok(md) = std::fs::symlink_metadata(path) else {
            return (FileOp::Attrib, None);
        };
        let mode = md.mode();
        if self.modes.len() >= MODE_CACHE_MAX {
            self.modes.clear();
        }
        let prev = self.modes.insert(path.to_string(), mode);
        let op = match prev {
            Some(p) if p != mode => FileOp::Chmod,
            Some(_) => FileOp::Attrib,
            None => {
                let ctime = (md.ctime(), md.ctime_nsec());
                let mtime = (md.mtime(), md.mtime_nsec());
                if ctime > mtime || mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
                    FileOp::Chmod
                } else {
                    FileOp::Attrib
                }
            }
        };
        (op, Some(mode))
    }

    /// Forgets a deleted path.
    pub fn forget(&mut self, path: &str) {
        self.modes.remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn chmod_is_told_apart_from_touch() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("payload");
        std::fs::write(&f, "x").unwrap();
        let p = f.to_string_lossy().into_owned();
        let mut cache = ModeCache::default();
        // First sight, ctime == mtime (just written): attrib.
        let (op, mode) = cache.classify(&p);
        assert_eq!(op, FileOp::Attrib);
        assert_eq!(mode.unwrap() & 0o777, std::fs::metadata(&f).unwrap().permissions().mode() & 0o777);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let (op, mode) = cache.classify(&p);
        assert_eq!(op, FileOp::Chmod);
        let mode = mode.unwrap();
        assert_eq!(mode & 0o7777, 0o4755, "setuid bit visible");
        assert_eq!(mode & libc::S_IFMT, libc::S_IFREG);
        // Same mode again (e.g. chown or touch): attrib.
        assert_eq!(cache.classify(&p).0, FileOp::Attrib);
        // Gone: attrib without mode.
        std::fs::remove_file(&f).unwrap();
        assert_eq!(cache.classify(&p), (FileOp::Attrib, None));
    }

    #[test]
    fn unseen_setuid_file_is_a_chmod() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("suid");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o2755)).unwrap();
        let (op, mode) = ModeCache::default().classify(&f.to_string_lossy());
        assert_eq!(op, FileOp::Chmod);
        assert_eq!(mode.unwrap() & 0o7777, 0o2755);
    }
}
