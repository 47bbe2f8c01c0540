//! Which blocks the public gateway may serve: roots comine pinned, and the blocks inside their
//! DAGs. Nothing else in the blockstore (unpinned leftovers waiting for GC, blocks put by
//! imports) is served.
//!
//! A pinned root is checked against the pin set on every request. A block inside a pinned DAG
//! is found in an in-memory index built lazily: on a miss the gateway indexes pinned roots it has
//! not indexed yet, newest first, within a per-request read budget, and a hit is re-checked
//! against the pin set (an unpinned root's blocks are dropped from the index). Only the DAGs'
//! structure is read (raw leaves are known from their parent's link), the index holds at most
//! `cap` blocks (oldest roots evicted), and every client starts from a root, which is always
//! answered directly.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use cid::Cid;

use crate::store::{pb, Store, StoreError, DAG_PB};

/// Bytes of dag-pb nodes one missed lookup may read while indexing pinned DAGs.
const SCAN_BUDGET_BYTES: u64 = 256 << 20;

/// The answer for one CID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A pinned root or a block of a pinned DAG.
    Allowed,
    /// In the blockstore but not under any pin (or not found within the scan budget).
    NotPinned,
    /// Not in the blockstore.
    Missing,
}

#[derive(Default)]
struct Inner {
    /// Block multihash → the pinned root it was indexed under.
    members: HashMap<Vec<u8>, Cid>,
    /// Indexed roots in indexing order, with their blocks (for eviction).
    roots: VecDeque<(Cid, Vec<Vec<u8>>)>,
    indexed: HashSet<Cid>,
}

impl Inner {
    fn drop_root(&mut self, root: &Cid) {
        if !self.indexed.remove(root) {
            return;
        }
        if let Some(pos) = self.roots.iter().position(|(r, _)| r == root) {
            if let Some((_, blocks)) = self.roots.remove(pos) {
                for mh in blocks {
                    if self.members.get(&mh) == Some(root) {
                        self.members.remove(&mh);
                    }
                }
            }
        }
    }

    fn insert(&mut self, root: Cid, blocks: Vec<Vec<u8>>, cap: usize) {
        if !self.indexed.insert(root) {
            return;
        }
        for mh in &blocks {
            self.members.entry(mh.clone()).or_insert(root);
        }
        self.roots.push_back((root, blocks));
        while self.members.len() > cap && self.roots.len() > 1 {
            let Some((old, _)) = self.roots.front().cloned() else {
                break;
            };
            self.drop_root(&old);
        }
    }
}

/// The lazily built index of pinned DAGs.
pub struct PinnedIndex {
    inner: Mutex<Inner>,
    cap: usize,
}

/// Multihashes of every block under `root`, reading only dag-pb nodes. A node that cannot be
/// read (missing, corrupt) is listed but its subtree is not: it is not served either way.
fn dag_blocks(store: &Store, root: &Cid, budget: &mut u64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        out.push(cid.hash().to_bytes());
        if cid.codec() != DAG_PB {
            continue;
        }
        let Ok(block) = store.get_block(&cid) else {
            continue;
        };
        *budget = budget.saturating_sub(block.len() as u64);
        if let Ok(node) = pb::decode_node(&block) {
            stack.extend(node.links.iter().map(|l| l.cid));
        }
    }
    out
}

impl PinnedIndex {
    /// An index holding at most `cap` blocks.
    pub fn new(cap: usize) -> PinnedIndex {
        PinnedIndex {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `cid` may be served. Blocking (store reads): call it off the async workers.
    pub fn check(&self, store: &Store, cid: &Cid) -> Result<Access, StoreError> {
        if store.pin_info(cid)?.is_some() {
            return Ok(Access::Allowed);
        }
        if !store.has(cid)? {
            return Ok(Access::Missing);
        }
        let mh = cid.hash().to_bytes();
        let owner = self.lock().members.get(&mh).copied();
        if let Some(root) = owner {
            if store.pin_info(&root)?.is_some() {
                return Ok(Access::Allowed);
            }
            // Unpinned since it was indexed: forget it, then look under the other pins.
            self.lock().drop_root(&root);
        }
        let pins = store.pins()?;
        let pinned: HashSet<Cid> = pins.iter().map(|(c, _)| *c).collect();
        let todo: Vec<Cid> = {
            let mut inner = self.lock();
            let stale: Vec<Cid> = inner
                .indexed
                .iter()
                .filter(|r| !pinned.contains(r))
                .copied()
                .collect();
            for r in &stale {
                inner.drop_root(r);
            }
            pins.iter()
                .rev()
                .map(|(c, _)| *c)
                .filter(|c| !inner.indexed.contains(c))
                .collect()
        };
        let mut budget = SCAN_BUDGET_BYTES;
        for root in todo {
            if budget == 0 {
                break;
            }
            // Read without holding the lock; other requests keep being answered meanwhile.
            let blocks = dag_blocks(store, &root, &mut budget);
            let found = blocks.contains(&mh);
            self.lock().insert(root, blocks, self.cap);
            if found {
                return Ok(Access::Allowed);
            }
        }
        Ok(Access::NotPinned)
    }
}
