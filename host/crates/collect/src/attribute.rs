//! Attributing a file or network event to a process: `/proc` while the
//! process lives, else the process tree (it remembers processes that exited).

use crate::procfs;
use crate::Ctx;

/// Who did it, as far as it is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Attribution {
    pub entity_id: Option<u64>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
}

impl Attribution {
    /// Whether both the executable and the entity are known.
    pub fn complete(&self) -> bool {
        self.entity_id.is_some() && self.exe.is_some()
    }
}

/// Attributes `pid`: a live process from `/proc` (its current image, even
/// if the process collector has not handled its exec yet), a process that
/// is gone from the tree.
pub(crate) fn attribute(ctx: &Ctx, pid: u32) -> Attribution {
    if let (Ok(exe), Ok(stat)) = (procfs::read_exe(pid), procfs::read_stat(pid)) {
        let entity = ctx.boot.entity_id(pid, stat.start_ticks);
        let uid = match ctx.tree.node(entity) {
            Some(n) if !n.partial => Some(n.info.uid),
            _ => procfs::read_euid(pid).ok(),
        };
        return Attribution { entity_id: Some(entity), exe: Some(exe), uid };
    }
    // A fork-time copy of the parent's image may predate an exec the process
    // collector has not handled yet: not trusted for the exe.
    if let Some(node) = ctx.tree.recent_node(pid) {
        if !node.info.exe.is_empty() && !node.inherited {
            return Attribution { entity_id: Some(node.info.entity_id), exe: Some(node.info.exe), uid: Some(node.info.uid) };
        }
    }
    let stat = procfs::read_stat(pid).ok();
    Attribution { entity_id: stat.map(|s| ctx.boot.entity_id(pid, s.start_ticks)), exe: None, uid: procfs::read_euid(pid).ok() }
}
