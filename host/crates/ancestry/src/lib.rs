//! The process-ancestry walk: a process, then its parent, its parent's
//! parent, and so on, through whatever table the caller keeps.
//!
//! One walk for the agent (its process table), the plugin runtime's
//! in-memory services, the collector's process tree and the SDK's native
//! test stand-in, so that a plugin sees the same chain in `cargo test` as
//! in the agent. It has no dependencies and no `std`, so the SDK (which
//! also builds for `wasm32-unknown-unknown`) can depend on it; every other
//! crate depends on it, it depends on none.
//!
//! The walk stops at the first entity the table does not know, at entity
//! id 0 (unknown), at a process that is its own parent (a root), and after
//! [`MAX_ANCESTRY`] processes (a corrupted table may hold a longer cycle).

#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;

/// Processes a walk yields at most, the start included.
pub const MAX_ANCESTRY: usize = 256;

/// The entity `start`, then its ancestors (parent first): `lookup(id)`
/// gives an entity's item and its parent's entity id, `None` when unknown.
/// At most [`MAX_ANCESTRY`] items.
pub fn walk<T>(start: u64, lookup: impl FnMut(u64) -> Option<(T, u64)>) -> Vec<T> {
    Ancestry { next: start, left: MAX_ANCESTRY, lookup }.collect()
}

/// The iterator behind [`walk`], for callers that stop early.
pub struct Ancestry<F> {
    next: u64,
    left: usize,
    lookup: F,
}

impl<F> Ancestry<F> {
    /// Walks from `start` with `lookup` (see [`walk`]).
    pub fn new(start: u64, lookup: F) -> Ancestry<F> {
        Ancestry { next: start, left: MAX_ANCESTRY, lookup }
    }
}

impl<T, F: FnMut(u64) -> Option<(T, u64)>> Iterator for Ancestry<F> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        if self.next == 0 || self.left == 0 {
            return None;
        }
        let id = self.next;
        let (item, parent) = (self.lookup)(id)?;
        self.left -= 1;
        // A root is its own parent: nothing above it.
        self.next = if parent == id { 0 } else { parent };
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec;

    fn table(edges: &[(u64, u64)]) -> BTreeMap<u64, u64> {
        edges.iter().copied().collect()
    }

    fn chain(t: &BTreeMap<u64, u64>, start: u64) -> Vec<u64> {
        walk(start, |id| t.get(&id).map(|p| (id, *p)))
    }

    #[test]
    fn parent_first_to_the_root() {
        let t = table(&[(1, 1), (10, 1), (11, 10), (12, 11)]);
        assert_eq!(chain(&t, 12), vec![12, 11, 10, 1]);
        assert_eq!(chain(&t, 1), vec![1], "a root is its own parent");
    }

    #[test]
    fn stops_at_the_unknown() {
        let t = table(&[(10, 9), (11, 10), (20, 0)]);
        assert_eq!(chain(&t, 11), vec![11, 10], "9 is not in the table");
        assert_eq!(chain(&t, 20), vec![20], "0 is no entity");
        assert!(chain(&t, 99).is_empty());
        assert!(chain(&table(&[(0, 0)]), 0).is_empty(), "id 0 is never looked up");
    }

    #[test]
    fn a_cycle_is_cut_at_the_bound() {
        let t = table(&[(1, 2), (2, 1)]);
        assert_eq!(chain(&t, 1).len(), MAX_ANCESTRY);
        let long: Vec<(u64, u64)> = (1..1000).map(|i| (i + 1, i)).collect();
        let c = chain(&table(&long), 1000);
        assert_eq!((c.len(), c[0], c[MAX_ANCESTRY - 1]), (MAX_ANCESTRY, 1000, 1000 - MAX_ANCESTRY as u64 + 1));
    }

    #[test]
    fn stops_early_without_walking_on() {
        let t = table(&[(1, 1), (2, 1), (3, 2)]);
        let mut looked = 0;
        let first: Vec<u64> = Ancestry::new(3, |id| {
            looked += 1;
            t.get(&id).map(|p| (id, *p))
        })
        .take(2)
        .collect();
        assert_eq!((first, looked), (vec![3, 2], 2));
    }
}
