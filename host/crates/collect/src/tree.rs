//! The process tree: every process the agent knows, live or recently exited,
//! keyed by entity id, so an exec gets its full lineage even when its
//! ancestors have already exited.
//!
//! Exited processes are kept for [`crate::ProcessConfig::retain_exited`]
//! (10 minutes) and at most [`crate::ProcessConfig::max_exited`] of them
//! (100 000), oldest out first. Argument vectors kept here are capped
//! ([`MAX_TREE_ARGS`], [`MAX_TREE_ARGV_BYTES`]) so the tree stays small; the
//! exec events themselves carry the full argv.

use edr_event::ProcessInfo;
use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Arguments of a process kept in the tree (for `parent_argv`).
pub const MAX_TREE_ARGS: usize = 64;
/// Bytes of arguments of a process kept in the tree.
pub const MAX_TREE_ARGV_BYTES: usize = 8192;

/// A process as the tree stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Node {
    pub info: ProcessInfo,
    pub ppid: u32,
    /// 0 when unknown.
    pub parent_entity: u64,
    pub cwd: String,
    pub user: String,
    pub comm: String,
    pub start_ticks: u64,
    /// Some fields could not be read.
    pub partial: bool,
    /// The image is the parent's, copied at fork: no exec seen (yet).
    pub inherited: bool,
    pub exited: bool,
}

impl Node {
    /// Caps the argv kept in the tree.
    pub fn cap_argv(argv: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for a in argv.iter().take(MAX_TREE_ARGS) {
            if bytes + a.len() > MAX_TREE_ARGV_BYTES {
                break;
            }
            bytes += a.len();
            out.push(a.clone());
        }
        out
    }
}

/// How long exited processes are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Retention {
    pub max_age: Duration,
    pub max_exited: usize,
}

#[derive(Debug, Default)]
struct Inner {
    nodes: HashMap<u64, Node>,
    /// pid -> entity of the live process with that pid.
    live: HashMap<u32, u64>,
    /// pid -> entity of the last exited process with that pid.
    recent: HashMap<u32, u64>,
    /// Exited entities, oldest first.
    exited: VecDeque<(Instant, u64)>,
}

/// The agent's process tree; thread-safe (one writer: the process collector;
/// readers: the other collectors and plugins' ancestry lookups).
#[derive(Debug)]
pub struct ProcessTree {
    inner: RwLock<Inner>,
    retention: Retention,
}

impl ProcessTree {
    pub(crate) fn new(retention: Retention) -> ProcessTree {
        ProcessTree { inner: RwLock::new(Inner::default()), retention }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The process with this entity id, then its ancestors (parent first), up
    /// to the root or the first ancestor the tree no longer knows. Empty when
    /// the entity is unknown. Works after the ancestors exited, within the
    /// retention window.
    pub fn ancestry(&self, entity_id: u64) -> Vec<ProcessInfo> {
        let inner = self.read();
        edr_ancestry::walk(entity_id, |id| inner.nodes.get(&id).map(|n| (n.info.clone(), n.parent_entity)))
    }

    /// The live process with this pid.
    pub fn by_pid(&self, pid: u32) -> Option<ProcessInfo> {
        let inner = self.read();
        inner.live.get(&pid).and_then(|e| inner.nodes.get(e)).map(|n| n.info.clone())
    }

    /// The process with this entity id, live or exited (within retention).
    pub fn get(&self, entity_id: u64) -> Option<ProcessInfo> {
        self.read().nodes.get(&entity_id).map(|n| n.info.clone())
    }

    /// Processes known: (live, exited).
    pub fn len(&self) -> (usize, usize) {
        let inner = self.read();
        (inner.live.len(), inner.nodes.len() - inner.live.len().min(inner.nodes.len()))
    }

    /// Whether the tree knows no process at all.
    pub fn is_empty(&self) -> bool {
        self.read().nodes.is_empty()
    }

    /// The live node of `pid`.
    pub(crate) fn live_node(&self, pid: u32) -> Option<Node> {
        let inner = self.read();
        inner.live.get(&pid).and_then(|e| inner.nodes.get(e)).cloned()
    }

    /// The live node of `pid`, or else the last one that exited with it: for
    /// attributing a file or network event to a process that is already gone.
    pub(crate) fn recent_node(&self, pid: u32) -> Option<Node> {
        let inner = self.read();
        inner.live.get(&pid).or_else(|| inner.recent.get(&pid)).and_then(|e| inner.nodes.get(e)).cloned()
    }

    pub(crate) fn node(&self, entity: u64) -> Option<Node> {
        self.read().nodes.get(&entity).cloned()
    }

    /// The executables of the ancestors of `entity` (parent first) and the
    /// parent's node.
    pub(crate) fn lineage(&self, entity: u64) -> (Option<Node>, Vec<String>) {
        let inner = self.read();
        let Some(node) = inner.nodes.get(&entity) else {
            return (None, Vec::new());
        };
        let parent = inner.nodes.get(&node.parent_entity).filter(|_| node.parent_entity != entity).cloned();
        // From the parent (a root, its own parent, has none).
        let from = if node.parent_entity == entity { 0 } else { node.parent_entity };
        let exes = edr_ancestry::walk(from, |id| inner.nodes.get(&id).map(|n| (n.info.exe.clone(), n.parent_entity)));
        (parent, exes)
    }

    /// Records a live process. A different live process with the same pid
    /// (whose exit was missed) is marked exited.
    pub(crate) fn insert_live(&self, node: Node, now: Instant) {
        let mut inner = self.write();
        let pid = node.info.pid;
        let entity = node.info.entity_id;
        if let Some(old) = inner.live.insert(pid, entity) {
            if old != entity {
                Self::retire(&mut inner, pid, old, now);
            }
        }
        inner.nodes.insert(entity, node);
    }

    /// Marks the live process `pid` exited; returns its node.
    pub(crate) fn exit(&self, pid: u32, now: Instant) -> Option<Node> {
        let mut inner = self.write();
        let entity = inner.live.remove(&pid)?;
        Self::retire(&mut inner, pid, entity, now);
        let node = inner.nodes.get(&entity).cloned();
        self.evict_locked(&mut inner, now);
        node
    }

    fn retire(inner: &mut Inner, pid: u32, entity: u64, now: Instant) {
        if let Some(n) = inner.nodes.get_mut(&entity) {
            if !n.exited {
                n.exited = true;
                inner.exited.push_back((now, entity));
                inner.recent.insert(pid, entity);
            }
        }
    }

    /// Drops exited processes past the retention limits.
    pub(crate) fn evict(&self, now: Instant) {
        let mut inner = self.write();
        self.evict_locked(&mut inner, now);
    }

    fn evict_locked(&self, inner: &mut Inner, now: Instant) {
        while let Some(&(at, entity)) = inner.exited.front() {
            let too_old = now.saturating_duration_since(at) > self.retention.max_age;
            if !too_old && inner.exited.len() <= self.retention.max_exited {
                break;
            }
            inner.exited.pop_front();
            if let Some(n) = inner.nodes.get(&entity) {
                if n.exited {
                    let pid = n.info.pid;
                    inner.nodes.remove(&entity);
                    if inner.recent.get(&pid) == Some(&entity) {
                        inner.recent.remove(&pid);
                    }
                }
            }
        }
    }

    /// The live pids with their start ticks (for the periodic sweep that
    /// retires processes whose exit was lost).
    pub(crate) fn live_pids(&self) -> Vec<(u32, u64)> {
        let inner = self.read();
        inner.live.iter().filter_map(|(pid, e)| inner.nodes.get(e).map(|n| (*pid, n.start_ticks))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(pid: u32, entity: u64, parent: u64, exe: &str) -> Node {
        Node {
            info: ProcessInfo { pid, entity_id: entity, exe: exe.into(), argv: vec![exe.into()], uid: 0, start_time: 1 },
            ppid: 0,
            parent_entity: parent,
            ..Node::default()
        }
    }

    fn tree() -> ProcessTree {
        ProcessTree::new(Retention { max_age: Duration::from_secs(600), max_exited: 3 })
    }

    #[test]
    fn ancestry_survives_the_exit_of_ancestors() {
        let t = tree();
        let now = Instant::now();
        t.insert_live(node(1, 10, 0, "/sbin/init"), now);
        t.insert_live(node(100, 11, 10, "/usr/sbin/nginx"), now);
        t.insert_live(node(200, 12, 11, "/bin/sh"), now);
        t.insert_live(node(300, 13, 12, "/usr/bin/curl"), now);
        // The shell and nginx exit before anyone asks.
        assert!(t.exit(200, now).is_some());
        assert!(t.exit(100, now).is_some());
        let chain: Vec<String> = t.ancestry(13).into_iter().map(|p| p.exe).collect();
        assert_eq!(chain, ["/usr/bin/curl", "/bin/sh", "/usr/sbin/nginx", "/sbin/init"]);
        let (parent, exes) = t.lineage(13);
        assert_eq!(parent.unwrap().info.exe, "/bin/sh");
        assert_eq!(exes, ["/bin/sh", "/usr/sbin/nginx", "/sbin/init"]);
        assert!(t.by_pid(200).is_none(), "exited processes are not live");
        assert_eq!(t.recent_node(200).unwrap().info.entity_id, 12);
        assert_eq!(t.get(12).unwrap().exe, "/bin/sh");
        assert!(t.ancestry(999).is_empty());
    }

    #[test]
    fn exited_entries_are_evicted_oldest_first_by_count_and_age() {
        let t = tree();
        let t0 = Instant::now();
        t.insert_live(node(1, 1, 0, "/sbin/init"), t0);
        for i in 0..5u32 {
            t.insert_live(node(100 + i, 100 + u64::from(i), 1, "/bin/true"), t0);
            t.exit(100 + i, t0 + Duration::from_secs(u64::from(i)));
        }
        // max_exited = 3: the two oldest went.
        assert!(t.get(100).is_none() && t.get(101).is_none());
        assert!(t.get(102).is_some() && t.get(104).is_some());
        assert_eq!(t.len(), (1, 3));
        t.evict(t0 + Duration::from_secs(604));
        assert!(t.get(102).is_none() && t.get(103).is_none(), "older than 10 minutes");
        assert!(t.get(104).is_some());
        assert!(t.get(1).is_some(), "live processes are never evicted");
    }

    #[test]
    fn pid_reuse_retires_the_old_process() {
        let t = tree();
        let now = Instant::now();
        t.insert_live(node(500, 50, 0, "/bin/old"), now);
        t.insert_live(node(500, 51, 0, "/bin/new"), now);
        assert_eq!(t.by_pid(500).unwrap().entity_id, 51);
        assert_eq!(t.get(50).unwrap().exe, "/bin/old");
        assert_eq!(t.len(), (1, 1));
    }

    #[test]
    fn argv_kept_in_the_tree_is_capped() {
        let many: Vec<String> = (0..100).map(|i| format!("arg{i}")).collect();
        assert_eq!(Node::cap_argv(&many).len(), MAX_TREE_ARGS);
        let big = vec!["x".repeat(5000), "y".repeat(5000)];
        assert_eq!(Node::cap_argv(&big).len(), 1);
    }

    #[test]
    fn a_self_parented_node_does_not_loop() {
        let t = tree();
        t.insert_live(node(7, 70, 70, "/weird"), Instant::now());
        assert_eq!(t.ancestry(70).len(), 1);
        assert!(t.lineage(70).1.is_empty());
    }
}
