//! Where new pack versions come from: a watched drop-in directory and an
//! update URL polled at an interval. Both only fetch bytes: trust is decided
//! by the pack manager's verification, never by where a file came from.

use crossbeam_channel::Sender;
use edr_datadir::{DataDir, DataDirError};
use edr_pack::semver::Version;
use notify::Watcher;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A pack archive and its signature, as found.
#[derive(Debug)]
pub struct Candidate {
    /// The archive's bytes.
    pub archive: Vec<u8>,
    /// `None` when no signature came with the archive (rejected, reported).
    pub signature: Option<String>,
    /// Where it came from, for logs (a path or a URL).
    pub origin: String,
    /// The file in the drop-in directory, to be moved out once judged
    /// ([`retire_dropped`]); `None` for downloads.
    pub dropped: Option<PathBuf>,
    /// Refused before verification (too big to read, a link, unreadable):
    /// `archive` is then empty.
    pub refused: Option<edr_pack::Rejection>,
}

/// Largest archive fetched (the verifier applies its own, equal, limit).
const MAX_DOWNLOAD: u64 = edr_pack::DEFAULT_MAX_ARCHIVE_BYTES;

/// How long an archive may wait for its `.minisig` before it is reported.
const SIGNATURE_GRACE: Duration = Duration::from_secs(5);

/// Watches `dir` for `*.edrpack` files (with `*.edrpack.minisig` beside
/// them) and sends each new or changed one once its size and mtime have
/// settled; the pack thread moves it out once judged ([`retire_dropped`]).
/// inotify wakes it at once; a rescan every second covers file systems
/// where notifications do not arrive.
pub fn watch_drop_dir(dir: PathBuf, tx: Sender<Candidate>, stop: Arc<AtomicBool>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    // The same rules as the data dir: what is dropped here gets installed.
    let drop_dir = DataDir::open_or_create(&dir, edr_datadir::agent_uid()).map_err(|e| anyhow::anyhow!("packs drop-in directory: {e}"))?;
    let (wake_tx, wake_rx) = crossbeam_channel::bounded::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only changes wake the scanner. Reading the directory (the scan
        // itself) raises access events: waking on those would spin.
        let relevant = match res {
            Ok(e) => matches!(e.kind, notify::EventKind::Create(_) | notify::EventKind::Modify(_) | notify::EventKind::Remove(_) | notify::EventKind::Any),
            Err(_) => true,
        };
        if relevant {
            let _ = wake_tx.try_send(());
        }
    })?;
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), "cannot watch the packs directory ({e}); rescanning every second instead");
    }
    let handle = std::thread::Builder::new().name("edr-pack-dir".into()).spawn(move || {
        let _watcher = watcher;
        // path -> (len, mtime) last sent, and pending changes waiting to settle.
        let mut sent: HashMap<PathBuf, (u64, SystemTime)> = HashMap::new();
        let mut pending: HashMap<PathBuf, ((u64, SystemTime), Instant)> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let wait = if pending.is_empty() { Duration::from_secs(1) } else { Duration::from_millis(200) };
            let _ = wake_rx.recv_timeout(wait);
            let archives = list_archives(&dir);
            // Judged files are moved out: forget them, so that the same file
            // dropped again (even with the same size and mtime) is judged again.
            sent.retain(|p, _| archives.contains(p));
            pending.retain(|p, _| archives.contains(p));
            for archive in archives {
                let Some(meta) = stat(&archive) else { continue };
                if sent.get(&archive) == Some(&meta) {
                    continue;
                }
                match pending.get(&archive) {
                    // Unchanged since the last scan: the writer is done.
                    Some((m, first_seen)) if *m == meta => {
                        let Some(candidate) = read_dropped(&drop_dir, &archive, *first_seen) else { continue };
                        if tx.send(candidate).is_err() {
                            return;
                        }
                        sent.insert(archive.clone(), meta);
                        pending.remove(&archive);
                    }
                    _ => {
                        let first = pending.get(&archive).map(|(_, t)| *t).unwrap_or_else(Instant::now);
                        pending.insert(archive, (meta, first));
                    }
                }
            }
        }
    })?;
    Ok(handle)
}

/// Reads a settled drop-in archive and its signature through the directory's
/// fd, never through a link, each size checked on the opened file before
/// reading and reading stopped one byte past the limit (the archive limit,
/// 64 KiB for a signature): a file that is too big, a link or unreadable
/// becomes a refused candidate, reported and moved to `rejected/` like any
/// other. `None`: wait (no signature yet, within the grace period) or the
/// archive is gone.
fn read_dropped(dir: &DataDir, archive: &Path, first_seen: Instant) -> Option<Candidate> {
    let name = archive.file_name()?.to_str()?;
    let sig_name = format!("{name}{}", edr_pack::SIGNATURE_SUFFIX);
    let signature = dir.read_limited(&sig_name, edr_pack::MAX_SIGNATURE_BYTES);
    if matches!(signature, Ok(None)) && first_seen.elapsed() < SIGNATURE_GRACE {
        return None;
    }
    let unreadable = |e: DataDirError| edr_pack::Rejection::Unreadable { path: archive.to_path_buf(), message: e.to_string() };
    let mut c = Candidate { archive: Vec::new(), signature: None, origin: archive.display().to_string(), dropped: Some(archive.to_path_buf()), refused: None };
    match dir.read_limited(name, MAX_DOWNLOAD) {
        Ok(Some(bytes)) => c.archive = bytes,
        Ok(None) => return None,
        Err(DataDirError::TooLarge { size, limit, .. }) => c.refused = Some(edr_pack::Rejection::TooLarge { size, limit }),
        Err(e) => c.refused = Some(unreadable(e)),
    }
    if c.refused.is_none() {
        match signature {
            Ok(s) => match s.map(String::from_utf8).transpose() {
                Ok(s) => c.signature = s,
                Err(_) => c.refused = Some(edr_pack::Rejection::MalformedSignature { message: format!("{sig_name} is not UTF-8 text") }),
            },
            Err(DataDirError::TooLarge { size, limit, .. }) => {
                c.refused = Some(edr_pack::Rejection::MalformedSignature { message: format!("the signature file {sig_name} is {size} bytes, more than the limit of {limit} bytes (a minisign signature is under 64 KiB); refused without reading it") })
            }
            Err(e) => c.refused = Some(unreadable(e)),
        }
    }
    if let Some(r) = &c.refused {
        tracing::warn!(path = %archive.display(), "drop-in pack refused before verification: {r}");
    }
    Some(c)
}

/// Where a judged drop-in archive goes, under the drop-in directory.
pub const DONE_DIR: &str = "done";
/// Where a refused drop-in archive goes, with a `.reason` file beside it.
pub const REJECTED_DIR: &str = "rejected";

/// Moves a judged drop-in archive and its signature out of the watched
/// directory, so that what is left there is what waits, and a restart does
/// not judge (and report) the same files again: to `done/` when it was
/// activated or already installed, to `rejected/` otherwise, with the reason
/// in `<archive>.reason`. A file of the same name there is replaced (a link
/// there is replaced, never written through: everything goes through the
/// directories' fds, `done/` and `rejected/` themselves must not be links).
/// A failure to move is logged; the archive is then judged again at the next
/// start, which is harmless.
pub fn retire_dropped(archive: &Path, refused: Option<&str>) {
    let Some(dir) = archive.parent() else { return };
    let Some(name) = archive.file_name().and_then(|n| n.to_str()) else { return };
    let to = dir.join(if refused.is_some() { REJECTED_DIR } else { DONE_DIR });
    let sig = format!("{name}{}", edr_pack::SIGNATURE_SUFFIX);
    let moved = (|| -> std::io::Result<()> {
        let from = DataDir::open_or_create(dir, edr_datadir::agent_uid())?;
        let to = from.subdir(if refused.is_some() { REJECTED_DIR } else { DONE_DIR })?;
        if let Some(reason) = refused {
            to.write_atomically(&format!("{name}.reason"), format!("{reason}\n").as_bytes())?;
        }
        from.rename_to(name, &to, name)?;
        match from.rename_to(&sig, &to, &sig) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })();
    match moved {
        Ok(()) => tracing::debug!(archive = %archive.display(), to = %to.display(), "drop-in archive judged; moved out of the watched directory"),
        Err(e) => tracing::warn!(archive = %archive.display(), "cannot move a judged pack to {}: {e}; it will be judged again at the next start", to.display()),
    }
}

fn list_archives(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "edrpack")).collect()).unwrap_or_default();
    v.sort();
    v
}

/// Size and mtime of a drop-in file, not following a link: a link is
/// offered too, and refused when read (it is never followed).
fn stat(p: &Path) -> Option<(u64, SystemTime)> {
    let m = std::fs::symlink_metadata(p).ok()?;
    (m.is_file() || m.is_symlink()).then(|| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)))
}

/// The update server's `index.json`.
#[derive(Debug, serde::Deserialize)]
struct Index {
    packs: Vec<IndexEntry>,
}

#[derive(Debug, serde::Deserialize)]
struct IndexEntry {
    id: String,
    version: String,
    /// The archive, relative to the base URL (or absolute); its signature is
    /// the same URL with `.minisig` appended.
    file: String,
}

/// The version of a pack id the agent has installed, if any.
pub type InstalledVersion = Arc<dyn Fn(&str) -> Option<Version> + Send + Sync>;

/// Polls `base/index.json` every `interval` and sends every pack whose
/// version is above what `installed(id)` reports, once per (id, version).
/// The index only says what exists; each pack still carries its own signature.
pub fn poll_update_url(
    base: String,
    interval: Duration,
    tx: Sender<Candidate>,
    installed: InstalledVersion,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let base = base.trim_end_matches('/').to_string();
    let handle = std::thread::Builder::new().name("edr-pack-url".into()).spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(60))).build().into();
        let mut tried: HashSet<(String, String)> = HashSet::new();
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(100).min(next - Instant::now()));
                continue;
            }
            next = Instant::now() + interval;
            let index: Index =
                match fetch(&agent, &format!("{base}/index.json"), 1 << 20).and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("index.json: {e}"))) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::warn!(url = %base, "update check failed: {e}");
                        continue;
                    }
                };
            for entry in index.packs {
                let Ok(version) = Version::parse(&entry.version) else {
                    tracing::warn!(url = %base, pack = %entry.id, "index.json: `{}` is not a version", entry.version);
                    continue;
                };
                if installed(&entry.id).is_some_and(|v| v >= version) || tried.contains(&(entry.id.clone(), entry.version.clone())) {
                    continue;
                }
                let url = if entry.file.starts_with("http://") || entry.file.starts_with("https://") {
                    entry.file.clone()
                } else {
                    format!("{base}/{}", entry.file.trim_start_matches('/'))
                };
                let archive = match fetch(&agent, &url, MAX_DOWNLOAD) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(%url, "pack download failed (will retry next poll): {e}");
                        continue;
                    }
                };
                let signature = fetch(&agent, &format!("{url}.minisig"), 4096).ok().and_then(|b| String::from_utf8(b).ok());
                tried.insert((entry.id.clone(), entry.version.clone()));
                tracing::info!(%url, pack = %entry.id, version = %entry.version, "downloaded pack update");
                if tx.send(Candidate { archive, signature, origin: url, dropped: None, refused: None }).is_err() {
                    return;
                }
            }
        }
    })?;
    Ok(handle)
}

fn fetch(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Vec<u8>, String> {
    let mut resp = agent.get(url).call().map_err(|e| e.to_string())?;
    resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| e.to_string())
}
