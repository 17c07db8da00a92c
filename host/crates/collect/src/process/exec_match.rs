//! Matching `FAN_OPEN_EXEC` records to the process connector's exec events.
//!
//! An `execve` opens, in this order and each with `FAN_OPEN_EXEC`, all as
//! the exec'ing process (same tgid):
//!
//! 1. the file passed to `execve` (program, script or `binfmt_misc` file);
//! 2. for a script, its `#!` interpreter (and so on: interpreters may be
//!    scripts, up to the kernel's nesting limit); for a file handled by
//!    `binfmt_misc`, the registered interpreter;
//! 3. for the ELF image finally loaded, the dynamic loader named in its
//!    `PT_INTERP` (e.g. `/lib64/ld-linux-x86-64.so.2`); none for a static one.
//!
//! Only then does the kernel send the connector's exec message. So the
//! first record of a pid after its previous exec is the program itself, and
//! what follows belongs to the same exec only where the previous record
//! calls for it: a script for its interpreter (checked against the `#!`
//! path), an ELF with `PT_INTERP` for that loader (checked against the
//! path), an unknown format for one interpreter. Anything else starts the
//! pid's next exec. The loader is never the executable: `/proc/<pid>/exe`
//! names the last image before it (the interpreter of a script), and so
//! does [`Chain::exe`]. Libraries are mapped with plain opens and are not
//! reported.
//!
//! A file on a filesystem nobody can mark is not reported at all: a
//! `memfd` (`memfd_create` + `execve("/proc/self/fd/N")` or `fexecve`; the
//! memfd's internal mount refuses filesystem marks with `EINVAL`), a
//! network or FUSE mount, another mount namespace's private mount. The
//! first record of such an exec of a dynamically linked program is its
//! loader. A chain that is nothing but a loader is therefore ambiguous
//! (the loader run directly, `ld.so PROG`, or a program whose own open was
//! not reported): its [`Chain::exe`] is `None` and [`Chain::only_loader`]
//! names the loader, for the caller to decide with the process's comm
//! (which the kernel sets from the name of the file exec'd).
//!
//! Records are told apart by pid, and from other processes that had the
//! same pid by time: every record carries the monotonic time at which it
//! had been read (so it was generated earlier), and the connector stamps
//! fork and exec messages with the same clock. A record read before the
//! fork of a pid, or before an exec of that pid that has been handled,
//! cannot belong to a later exec of it, and is dropped.
//!
//! fanotify merges an unread event into an identical one queued before
//! (same pid, same file): a pid exec'ing the same file twice before the
//! records are read yields one record (the second exec gets none), and a
//! second exec of a dynamically linked program may come without its loader
//! record (the path check above keeps the next exec apart).
//!
//! When events were lost (the fanotify queue overflowed, or a read failed)
//! a [`gap`](ExecMatcher::gap) is recorded: an exec that happened before it
//! only takes records read before it, so a later exec's records can never
//! stand in for lost ones. When connector messages were lost, the records
//! in hand are dropped ([`clear`](ExecMatcher::clear)): they might belong
//! to the execs whose messages are gone.

use std::collections::{HashMap, VecDeque};

/// What the file opened for exec is, from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An ELF image; `interp` is its `PT_INTERP` (the dynamic loader).
    Elf { interp: Option<String> },
    /// A `#!` script and the interpreter path on its first line.
    Script { interp: String },
    /// Anything else: a `binfmt_misc` format, or not executable at all
    /// (`ENOEXEC`; `execvp` then runs it with `/bin/sh`).
    Other,
    /// The file could not be opened for us (the kernel reported an error
    /// instead of an fd): neither its path nor its format is known.
    Unknown,
}

/// One `FAN_OPEN_EXEC` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecOpen {
    /// The path as `readlink(/proc/self/fd/N)` gives it (` (deleted)` when
    /// the file was unlinked); empty for [`Kind::Unknown`].
    pub path: String,
    pub kind: Kind,
    /// CLOCK_MONOTONIC ns right after the read that returned it.
    pub read_ns: u64,
    /// Arrival order, over all pids.
    seq: u64,
}

/// The files of one exec: the `execve` target first, then interpreters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Empty strings stand for records whose path is unknown.
    pub files: Vec<String>,
}

impl Chain {
    /// The image the process runs, as `/proc/<pid>/exe` would name it;
    /// `None` when unknown, and for a chain that is only a loader (see
    /// [`Chain::only_loader`]).
    pub fn exe(&self) -> Option<&str> {
        if self.only_loader().is_some() {
            return None;
        }
        self.files.last().map(String::as_str).filter(|p| !p.is_empty())
    }

    /// The loader, when it is the only file of the chain: either it was
    /// exec'd itself (`ld.so PROG`), or the program's own open was not
    /// reported (a memfd, an unmarked filesystem) and the loader's is all
    /// that came. Which one, the process's comm tells (the loader's file
    /// name in the first case).
    pub fn only_loader(&self) -> Option<&str> {
        match self.files.as_slice() {
            [one] if looks_like_loader(one.strip_suffix(" (deleted)").unwrap_or(one)) => Some(one.as_str()),
            _ => None,
        }
    }

    /// An argv to stand in for an unreadable `/proc/<pid>/cmdline`: the
    /// files, interpreter first, which is how the kernel starts the argv of
    /// a script (`[interpreter, script]`, without the `#!` line's optional
    /// argument and the caller's own arguments), and `[exe]` for a program.
    /// Paths are the resolved ones, not as the caller spelled them.
    pub fn argv(&self) -> Vec<String> {
        self.files.iter().rev().filter(|p| !p.is_empty()).cloned().collect()
    }
}

/// What may follow a record within the same exec.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Nothing,
    Loader(String),
    Interp(String),
    AnyInterp,
    /// After a record of unknown format: a loader-named file is taken as
    /// its loader, anything else as its interpreter.
    Unsure,
}

impl Expect {
    fn after(kind: &Kind) -> Expect {
        match kind {
            Kind::Elf { interp: Some(i) } => Expect::Loader(i.clone()),
            Kind::Elf { interp: None } => Expect::Nothing,
            Kind::Script { interp } => Expect::Interp(interp.clone()),
            Kind::Other => Expect::AnyInterp,
            Kind::Unknown => Expect::Unsure,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Interp,
    Loader,
}

/// Longest chain: the kernel allows 5 nested binary handlers (plus the
/// file itself and the loader).
const MAX_CHAIN: usize = 8;

/// Records kept at most; beyond, they are all dropped as a gap.
pub(crate) const MAX_RECORDS: usize = 65_536;

/// How long a record nobody claimed is kept (ns). The exec it belongs to
/// is normally handled within milliseconds; records of failed execs (the
/// file was opened, then the exec failed) are never claimed.
pub(crate) const RECORD_TTL_NS: u64 = 10_000_000_000;

/// Unclaimed `FAN_OPEN_EXEC` records, per pid, in arrival order.
#[derive(Debug, Default)]
pub(crate) struct ExecMatcher {
    pids: HashMap<u32, VecDeque<ExecOpen>>,
    total: usize,
    next_seq: u64,
    /// The latest loss: (CLOCK_MONOTONIC ns before the read that showed
    /// it, sequence number of the first record after it).
    gap: Option<(u64, u64)>,
    /// `#!` and `PT_INTERP` paths resolved in this mount namespace.
    canonical: HashMap<String, Option<String>>,
}

impl ExecMatcher {
    /// Records one `FAN_OPEN_EXEC` of `pid`.
    pub fn push(&mut self, pid: u32, path: String, kind: Kind, read_ns: u64) {
        if self.total >= MAX_RECORDS {
            tracing::warn!(records = self.total, "exec paths: too many unclaimed FAN_OPEN_EXEC records; dropped (treated as lost)");
            self.clear();
            self.gap(read_ns);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pids.entry(pid).or_default().push_back(ExecOpen { path, kind, read_ns, seq });
        self.total += 1;
    }

    /// Whether the last record of `pid` is a file of the same name as
    /// `path` (an overlayfs open reports the layer's file first; see
    /// [`ExecMatcher::replace_last`]).
    pub fn last_has_name_of(&self, pid: u32, path: &str) -> bool {
        let name = |p: &str| basename(p.strip_suffix(" (deleted)").unwrap_or(p)).to_string();
        self.pids.get(&pid).and_then(|q| q.back()).is_some_and(|r| !r.path.is_empty() && name(&r.path) == name(path))
    }

    /// Replaces the path of the last record of `pid` (same file, same
    /// format): the overlayfs file whose layer file was reported just
    /// before it, as the process named it.
    pub fn replace_last(&mut self, pid: u32, path: String, read_ns: u64) {
        if let Some(r) = self.pids.get_mut(&pid).and_then(|q| q.back_mut()) {
            r.path = path;
            r.read_ns = read_ns;
        }
    }

    /// Whether `path` is the loader the last record of `pid` names (its
    /// `PT_INTERP`): then its own format does not matter, and the reader
    /// need not look at it.
    pub fn expects_loader(&mut self, pid: u32, path: &str) -> bool {
        match self.pids.get(&pid).and_then(|q| q.back()) {
            Some(ExecOpen { kind: Kind::Elf { interp: Some(i) }, .. }) => same_file(path, i, &mut self.canonical),
            _ => false,
        }
    }

    /// Records were lost before `at_ns` (CLOCK_MONOTONIC, taken after the
    /// read that reported the loss, so no earlier than it): an exec before
    /// that takes only records read before the loss, never later ones
    /// that could belong to a later exec of its pid.
    pub fn gap(&mut self, at_ns: u64) {
        self.gap = Some((at_ns, self.next_seq));
    }

    /// Drops every record (connector messages were lost).
    pub fn clear(&mut self) {
        self.pids.clear();
        self.total = 0;
    }

    /// `pid` was forked at `fork_ns`: records read before are another
    /// process's.
    pub fn forked(&mut self, pid: u32, fork_ns: u64) {
        self.retain(pid, |r| r.read_ns >= fork_ns);
    }

    /// Drops every record of `pid`.
    pub fn forget(&mut self, pid: u32) {
        self.retain(pid, |_| false);
    }

    /// Claims the records of the exec of `pid` the connector stamped
    /// `exec_ns`: the first chain of its records (see the module doc).
    /// Records read before `exec_ns` that are left over belonged to this
    /// exec or earlier ones (failed execs) and are dropped.
    pub fn take(&mut self, pid: u32, exec_ns: u64) -> Option<Chain> {
        let limit = match self.gap {
            Some((at, seq)) if exec_ns < at => seq,
            _ => u64::MAX,
        };
        let q = self.pids.get_mut(&pid)?;
        let mut files = Vec::new();
        let mut n = 0;
        let mut expect = Expect::Nothing;
        for r in q.iter().take_while(|r| r.seq < limit).take(MAX_CHAIN) {
            let role = if n == 0 { Some(Role::Interp) } else { accepts(&expect, r, &mut self.canonical) };
            match role {
                Some(Role::Interp) => {
                    files.push(r.path.clone());
                    expect = Expect::after(&r.kind);
                }
                Some(Role::Loader) => expect = Expect::Nothing,
                None => break,
            }
            n += 1;
        }
        q.drain(..n);
        self.total -= n;
        self.retain(pid, |r| r.read_ns >= exec_ns);
        (n > 0).then_some(Chain { files })
    }

    /// Drops records older than [`RECORD_TTL_NS`]; returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let before = self.total;
        let cutoff = now_ns.saturating_sub(RECORD_TTL_NS);
        self.pids.retain(|_, q| {
            q.retain(|r| r.read_ns >= cutoff);
            !q.is_empty()
        });
        self.total = self.pids.values().map(VecDeque::len).sum();
        if self.canonical.len() > 1024 {
            self.canonical.clear();
        }
        before - self.total
    }

    /// Records held.
    pub fn len(&self) -> usize {
        self.total
    }

    fn retain(&mut self, pid: u32, keep: impl Fn(&ExecOpen) -> bool) {
        if let Some(q) = self.pids.get_mut(&pid) {
            let before = q.len();
            q.retain(|r| keep(r));
            self.total -= before - q.len();
            if q.is_empty() {
                self.pids.remove(&pid);
            }
        }
    }
}

/// Whether `r` continues the chain whose last record expects `expect`.
fn accepts(expect: &Expect, r: &ExecOpen, canonical: &mut HashMap<String, Option<String>>) -> Option<Role> {
    match expect {
        Expect::Nothing => None,
        Expect::Loader(want) => same_file(&r.path, want, canonical).then_some(Role::Loader),
        Expect::Interp(want) => same_file(&r.path, want, canonical).then_some(Role::Interp),
        Expect::AnyInterp => Some(Role::Interp),
        Expect::Unsure if looks_like_loader(&r.path) => Some(Role::Loader),
        Expect::Unsure => Some(Role::Interp),
    }
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Whether the opened `path` (resolved, in our mount namespace) is the
/// file a `#!` line or `PT_INTERP` names as `want` (as the process saw
/// it): the same path, the same file name (a loader symlinked under
/// another directory, or a process in another mount namespace), or `want`
/// resolved here.
fn same_file(path: &str, want: &str, canonical: &mut HashMap<String, Option<String>>) -> bool {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    if path.is_empty() {
        return false;
    }
    if path == want || basename(path) == basename(want) {
        return true;
    }
    canonical.entry(want.to_string()).or_insert_with(|| std::fs::canonicalize(want).ok().map(|p| p.to_string_lossy().into_owned())).as_deref() == Some(path)
}

/// A dynamic loader by its name (`ld-linux-x86-64.so.2`, `ld-musl-*.so.1`,
/// `ld64.so.2`, `ld-2.31.so`); only used after a record whose format could
/// not be read.
fn looks_like_loader(path: &str) -> bool {
    let name = basename(path);
    (name.starts_with("ld-") || name.starts_with("ld64.") || name.starts_with("ld.so")) && name.contains(".so")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LD: &str = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2";
    const PT_INTERP: &str = "/lib64/ld-linux-x86-64.so.2";

    fn dynamic() -> Kind {
        Kind::Elf { interp: Some(PT_INTERP.into()) }
    }

    fn loader() -> Kind {
        Kind::Elf { interp: None }
    }

    fn chain(files: &[&str]) -> Option<Chain> {
        Some(Chain { files: files.iter().map(|s| s.to_string()).collect() })
    }

    #[test]
    fn program_then_loader_is_one_exec_and_the_loader_is_not_the_exe() {
        let mut m = ExecMatcher::default();
        m.push(100, "/tmp/x/dropper".into(), dynamic(), 10);
        m.push(100, LD.into(), loader(), 10);
        let c = m.take(100, 5).unwrap();
        assert_eq!(c.exe(), Some("/tmp/x/dropper"));
        assert_eq!(c.argv(), vec!["/tmp/x/dropper"]);
        assert_eq!(m.len(), 0, "the loader record was claimed with it");
    }

    #[test]
    fn script_exe_is_its_interpreter_and_argv_names_both() {
        let dir = tempfile::tempdir().unwrap();
        // `#!/bin/sh` where sh is a symlink to dash: matched once resolved.
        let dash = dir.path().join("dash");
        std::fs::write(&dash, "").unwrap();
        let sh = dir.path().join("sh");
        std::os::unix::fs::symlink(&dash, &sh).unwrap();
        let dash = std::fs::canonicalize(&dash).unwrap();
        let dash = dash.to_str().unwrap();
        let mut m = ExecMatcher::default();
        m.push(7, "/tmp/run.sh".into(), Kind::Script { interp: sh.to_string_lossy().into_owned() }, 10);
        m.push(7, dash.into(), dynamic(), 10);
        m.push(7, LD.into(), loader(), 10);
        let c = m.take(7, 9).unwrap();
        assert_eq!(c.exe(), Some(dash));
        assert_eq!(c.argv(), vec![dash, "/tmp/run.sh"]);
        assert_eq!(m.len(), 0);
        // `#!/usr/bin/env python3`: env is the interpreter, python3 the
        // next exec of the same pid (its own connector message).
        m.push(8, "/tmp/a.py".into(), Kind::Script { interp: "/usr/bin/env".into() }, 20);
        m.push(8, "/usr/bin/env".into(), dynamic(), 20);
        m.push(8, LD.into(), loader(), 20);
        m.push(8, "/usr/bin/python3.12".into(), dynamic(), 20);
        assert_eq!(m.take(8, 15), chain(&["/tmp/a.py", "/usr/bin/env"]));
        assert_eq!(m.take(8, 16), chain(&["/usr/bin/python3.12"]));
    }

    #[test]
    fn a_merged_loader_record_does_not_swallow_the_next_exec() {
        // sh -c 'exec prog; ...' read late: the second loader open was
        // merged into the first (same pid, same file, both unread).
        let mut m = ExecMatcher::default();
        m.push(50, "/usr/bin/dash".into(), dynamic(), 100);
        m.push(50, LD.into(), loader(), 100);
        m.push(50, "/tmp/x/prog".into(), dynamic(), 100);
        m.push(50, "/usr/bin/cat".into(), dynamic(), 100);
        assert_eq!(m.take(50, 10), chain(&["/usr/bin/dash"]));
        assert_eq!(m.take(50, 20), chain(&["/tmp/x/prog"]));
        assert_eq!(m.take(50, 30), chain(&["/usr/bin/cat"]));
        assert_eq!(m.take(50, 40), None);
    }

    #[test]
    fn static_program_then_exec_of_a_dynamic_one() {
        let mut m = ExecMatcher::default();
        m.push(9, "/tmp/static".into(), loader(), 100);
        m.push(9, "/usr/bin/ls".into(), dynamic(), 100);
        m.push(9, LD.into(), loader(), 100);
        assert_eq!(m.take(9, 10), chain(&["/tmp/static"]));
        assert_eq!(m.take(9, 20), chain(&["/usr/bin/ls"]));
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn unknown_format_takes_one_interpreter_as_execvp_falls_back_to_sh() {
        let mut m = ExecMatcher::default();
        m.push(3, "/tmp/noshebang".into(), Kind::Other, 100);
        m.push(3, "/usr/bin/dash".into(), dynamic(), 100);
        m.push(3, LD.into(), loader(), 100);
        let c = m.take(3, 50).unwrap();
        assert_eq!(c.exe(), Some("/usr/bin/dash"));
        assert_eq!(c.argv(), vec!["/usr/bin/dash", "/tmp/noshebang"]);
    }

    #[test]
    fn a_record_whose_file_could_not_be_opened_gives_no_exe() {
        let mut m = ExecMatcher::default();
        m.push(4, String::new(), Kind::Unknown, 100);
        m.push(4, LD.into(), loader(), 100);
        let c = m.take(4, 50).unwrap();
        assert_eq!(c.exe(), None, "never the loader");
        assert!(c.argv().is_empty());
        // Unknown script, known interpreter: the interpreter is the exe.
        m.push(5, String::new(), Kind::Unknown, 100);
        m.push(5, "/usr/bin/dash".into(), dynamic(), 100);
        m.push(5, LD.into(), loader(), 100);
        let c = m.take(5, 50).unwrap();
        assert_eq!(c.exe(), Some("/usr/bin/dash"));
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn pid_reuse_drops_the_previous_process_records() {
        let mut m = ExecMatcher::default();
        // A process with pid 200 opened a file for exec, then the exec failed
        // (no connector message) and the process exited.
        m.push(200, "/tmp/old".into(), dynamic(), 1_000);
        // pid 200 is reused: forked at 2_000, execs at 2_500.
        m.forked(200, 2_000);
        assert_eq!(m.len(), 0);
        m.push(200, "/tmp/new".into(), dynamic(), 2_600);
        m.push(200, LD.into(), loader(), 2_600);
        assert_eq!(m.take(200, 2_500), chain(&["/tmp/new"]));
        // A process that exited leaves nothing for the next one with its pid.
        m.push(200, "/tmp/failed".into(), dynamic(), 3_000);
        m.forget(200);
        assert_eq!(m.take(200, 3_500), None);
        // A fork does not touch records read after it (the new process's).
        m.push(201, "/tmp/b".into(), dynamic(), 3_000);
        m.forked(201, 2_900);
        assert_eq!(m.take(201, 2_950), chain(&["/tmp/b"]));
    }

    #[test]
    fn leftovers_read_before_a_handled_exec_are_dropped() {
        let mut m = ExecMatcher::default();
        // A failed exec (a foreign-arch ELF, say) then a good one, both
        // read before the connector's exec message was stamped.
        m.push(60, "/tmp/a".into(), Kind::Elf { interp: Some("/lib/ld-linux-armhf.so.3".into()) }, 100);
        m.push(60, "/usr/bin/true".into(), dynamic(), 100);
        m.push(60, LD.into(), loader(), 100);
        // The first chain goes to the exec; the rest, read before it, is
        // dropped and cannot shift onto the pid's next exec.
        assert!(m.take(60, 150).is_some());
        assert_eq!(m.len(), 0);
        m.push(60, "/usr/bin/id".into(), dynamic(), 300);
        assert_eq!(m.take(60, 250), chain(&["/usr/bin/id"]));
    }

    #[test]
    fn late_record_read_after_the_exec_was_stamped_still_matches() {
        // The collector reads the connector message first and the records
        // in the drain that follows: read long after the exec happened.
        let mut m = ExecMatcher::default();
        m.push(70, "/tmp/x/true".into(), dynamic(), 5_000_000_000);
        m.push(70, LD.into(), loader(), 5_000_000_000);
        let c = m.take(70, 1_000_000).unwrap();
        assert_eq!(c.exe(), Some("/tmp/x/true"));
        // The next exec of the same pid, read even later, is kept for it.
        m.push(71, "/bin/a".into(), dynamic(), 9_000);
        m.push(71, "/bin/b".into(), dynamic(), 9_000);
        assert_eq!(m.take(71, 1_000), chain(&["/bin/a"]));
        assert_eq!(m.len(), 1);
        assert_eq!(m.take(71, 2_000), chain(&["/bin/b"]));
    }

    #[test]
    fn the_loader_named_by_the_last_record_is_recognised_before_reading_it() {
        let mut m = ExecMatcher::default();
        assert!(!m.expects_loader(1, LD), "no record yet");
        m.push(1, "/tmp/x/prog".into(), dynamic(), 10);
        assert!(m.expects_loader(1, LD));
        assert!(!m.expects_loader(1, "/usr/bin/dash"));
        assert!(!m.expects_loader(2, LD), "another pid");
        m.push(1, LD.into(), loader(), 10);
        assert!(!m.expects_loader(1, LD), "after the loader, nothing is expected");
    }

    #[test]
    fn an_overlay_file_replaces_its_layer_file() {
        let mut m = ExecMatcher::default();
        // As the reader sees a container's exec: layer file, overlay file,
        // and the same for the loader.
        m.push(10, "/usr/bin/prog".into(), dynamic(), 10);
        assert!(m.last_has_name_of(10, "/var/lib/docker/overlay2/x/merged/usr/bin/prog"));
        assert!(!m.last_has_name_of(10, "/usr/bin/other"));
        assert!(!m.last_has_name_of(11, "/usr/bin/prog"));
        m.replace_last(10, "/var/lib/docker/overlay2/x/merged/usr/bin/prog".into(), 11);
        m.push(10, LD.into(), loader(), 11);
        m.replace_last(10, "/var/lib/docker/overlay2/x/merged/lib64/ld-linux-x86-64.so.2".into(), 11);
        assert_eq!(m.take(10, 5), chain(&["/var/lib/docker/overlay2/x/merged/usr/bin/prog"]));
        assert_eq!(m.len(), 0);
    }

    /// A memfd exec (`execve("/proc/self/fd/N")`, `fexecve`) of a dynamic
    /// program: the memfd cannot be marked, so its loader's record is the
    /// first and only one. Never taken for the exe; the loader exec'd
    /// directly looks the same and is told apart by the caller.
    #[test]
    fn a_chain_of_only_the_loader_names_no_exe() {
        let mut m = ExecMatcher::default();
        m.push(90, LD.into(), loader(), 100);
        let c = m.take(90, 50).unwrap();
        assert_eq!(c.exe(), None, "{c:?}");
        assert_eq!(c.only_loader(), Some(LD));
        assert_eq!(m.len(), 0);
        // The next exec of the pid (a program on a marked filesystem) is
        // its own chain, with its exe.
        m.push(90, LD.into(), loader(), 200);
        m.push(90, "/usr/bin/id".into(), dynamic(), 200);
        m.push(90, LD.into(), loader(), 200);
        assert_eq!(m.take(90, 150).unwrap().only_loader(), Some(LD));
        assert_eq!(m.take(90, 160), chain(&["/usr/bin/id"]));
        // A program with a loader, a script, a static binary: not loader-only.
        assert_eq!(chain(&["/tmp/x/prog"]).unwrap().only_loader(), None);
        assert_eq!(chain(&["/usr/bin/dash", "/tmp/s.sh"]).unwrap().only_loader(), None);
        assert_eq!(chain(&["/tmp/ld-evil"]).unwrap().exe(), Some("/tmp/ld-evil"));
    }

    #[test]
    fn no_record_at_all() {
        let mut m = ExecMatcher::default();
        assert_eq!(m.take(1234, 10), None);
        m.push(1, "/bin/a".into(), dynamic(), 10);
        assert_eq!(m.take(2, 10), None, "another pid's record is not used");
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn after_a_loss_an_earlier_exec_does_not_take_later_records() {
        let mut m = ExecMatcher::default();
        m.push(80, "/bin/before".into(), loader(), 100);
        m.push(81, "/bin/early".into(), loader(), 120);
        // Overflow seen by the read that started at 200.
        m.gap(200);
        m.push(80, "/bin/after".into(), loader(), 300);
        // Execs before the loss take what was read before it.
        assert_eq!(m.take(81, 180), chain(&["/bin/early"]));
        assert_eq!(m.take(80, 150), chain(&["/bin/before"]));
        m.push(82, "/bin/late".into(), loader(), 300);
        assert_eq!(m.take(82, 190), None, "lost: not replaced by a later record");
        assert_eq!(m.take(80, 250), chain(&["/bin/after"]), "after the loss: fine");
    }

    #[test]
    fn expiry_and_bound() {
        let mut m = ExecMatcher::default();
        m.push(1, "/bin/a".into(), loader(), 1_000);
        m.push(2, "/bin/b".into(), loader(), RECORD_TTL_NS + 5_000);
        assert_eq!(m.expire(RECORD_TTL_NS + 2_000), 1);
        assert_eq!(m.len(), 1);
        assert_eq!(m.take(1, 0), None);
        for i in 0..MAX_RECORDS as u32 + 1 {
            m.push(i, "/bin/x".into(), loader(), 1_000_000 + u64::from(i));
        }
        assert!(m.len() <= MAX_RECORDS);
        // The overflowed set is treated as lost for execs before it.
        assert_eq!(m.take(0, 10), None);
    }

    #[test]
    fn loader_names() {
        for l in [LD, "/lib/ld-musl-x86_64.so.1", "/lib64/ld64.so.2", "/lib/ld-2.31.so"] {
            assert!(looks_like_loader(l), "{l}");
        }
        for p in ["/usr/bin/ld", "/usr/bin/ld.bfd", "/tmp/ld-evil", "/bin/sh"] {
            assert!(!looks_like_loader(p), "{p}");
        }
        let mut c = HashMap::new();
        assert!(same_file(&format!("{LD} (deleted)"), PT_INTERP, &mut c));
        assert!(!same_file("/usr/bin/id", PT_INTERP, &mut c));
        assert!(!same_file("", "", &mut c));
    }
}
