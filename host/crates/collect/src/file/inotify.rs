//! The inotify fallback (through the `notify` crate): the same operations
//! on the watched trees, without the pid, exe or entity of the process that
//! caused them (inotify does not report it). Moves out of the watched trees
//! are not reported; moves into them are reported as renames without an old
//! path. Directories created later are watched as they appear (recursive
//! watches), within `fs.inotify.max_user_watches`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edr_event::{EventBody, FileEvent, FileOp};
use notify::event::{AccessKind, CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};

use super::filter::PathFilter;
use super::ModeCache;
use crate::sink::Sink;

/// Turns `notify` events into file events.
pub(crate) struct Handler {
    filter: Arc<PathFilter>,
    sensitive: HashSet<String>,
    sink: Sink,
    modes: ModeCache,
    /// Cookie of the last MOVED_FROM, whose MOVED_TO is reported as a pair.
    pending_from: Option<usize>,
    /// The last event sent, to collapse the duplicates inotify produces
    /// (a removed directory is reported by its parent and by itself).
    last: Option<(FileOp, String, Instant)>,
}

impl Handler {
    pub fn new(filter: Arc<PathFilter>, sensitive: &[PathBuf], sink: Sink) -> Handler {
        Handler {
            filter,
            sensitive: sensitive.iter().map(|p| p.to_string_lossy().into_owned()).collect(),
            sink,
            modes: ModeCache::default(),
            pending_from: None,
            last: None,
        }
    }

    fn send(&mut self, op: FileOp, path: String, old_path: Option<String>, mode: Option<u32>) {
        let allowed = if op == FileOp::Read {
            self.sensitive.contains(&path) && !self.filter.excluded(&path)
        } else {
            self.filter.allows(&path) || old_path.as_deref().is_some_and(|o| self.filter.allows(o))
        };
        if !allowed {
            return;
        }
        if let Some((lop, lpath, at)) = &self.last {
            if *lop == op && *lpath == path && at.elapsed() < Duration::from_secs(1) && op != FileOp::Modify {
                return;
            }
        }
        self.last = Some((op, path.clone(), Instant::now()));
        let ev = FileEvent { op, path, old_path, mode, pid: None, entity_id: None, exe: None, uid: None };
        self.sink.emit(EventBody::File(ev), false);
    }

    /// Handles one `notify` event.
    pub fn handle(&mut self, res: notify::Result<notify::Event>) {
        let ev = match res {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("inotify: {e}");
                return;
            }
        };
        if ev.need_rescan() {
            let n = self.sink.counters.overflows.fetch_add(1, Ordering::Relaxed) + 1;
            self.sink.counters.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(overflows = n, "inotify queue overflowed: file events were lost (counted)");
            return;
        }
        let path = |i: usize| ev.paths.get(i).map(|p| p.to_string_lossy().into_owned());
        match ev.kind {
            EventKind::Create(CreateKind::File | CreateKind::Folder | CreateKind::Any | CreateKind::Other) => {
                if let Some(p) = path(0) {
                    self.send(FileOp::Create, p, None, None);
                }
            }
            EventKind::Access(AccessKind::Close(notify::event::AccessMode::Write)) => {
                if let Some(p) = path(0) {
                    self.send(FileOp::Modify, p, None, None);
                }
            }
            EventKind::Access(AccessKind::Open(_)) => {
                if let Some(p) = path(0) {
                    if self.sensitive.contains(&p) {
                        self.send(FileOp::Read, p, None, None);
                    }
                }
            }
            EventKind::Modify(ModifyKind::Metadata(_)) => {
                if let Some(p) = path(0) {
                    let (op, mode) = self.modes.classify(&p);
                    self.send(op, p, None, mode);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                self.pending_from = ev.tracker();
            }
            // Unless paired with a MOVED_FROM (then the Both event that follows says it all).
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) if ev.tracker().is_none() || ev.tracker() != self.pending_from => {
                if let Some(p) = path(0) {
                    self.send(FileOp::Rename, p, None, None);
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                self.pending_from = None;
                if let (Some(old), Some(new)) = (path(0), path(1)) {
                    self.send(FileOp::Rename, new, Some(old), None);
                }
            }
            EventKind::Remove(RemoveKind::File | RemoveKind::Folder | RemoveKind::Any) => {
                if let Some(p) = path(0) {
                    self.send(FileOp::Delete, p, None, None);
                }
            }
            _ => {}
        }
    }
}

/// Starts an inotify watcher on `roots` (path, recursive).
pub(crate) fn watch(roots: &[(PathBuf, bool)], mut handler: Handler) -> Result<notify::RecommendedWatcher, String> {
    let mut watcher = notify::recommended_watcher(move |res| handler.handle(res)).map_err(|e| format!("inotify: {e}"))?;
    let mut watched = 0;
    for (root, recursive) in roots {
        let mode = if *recursive { RecursiveMode::Recursive } else { RecursiveMode::NonRecursive };
        match watcher.watch(root, mode) {
            Ok(()) => watched += 1,
            Err(e) => tracing::warn!(path = %root.display(), "inotify: cannot watch: {e}"),
        }
    }
    if watched == 0 && !roots.is_empty() {
        return Err("inotify: no path could be watched".into());
    }
    Ok(watcher)
}
