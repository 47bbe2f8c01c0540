//! The CAR body of a gateway answer: resolves a UnixFS path to its terminal block, decides what
//! the requested scope means for that entity (before any byte is sent, so errors are still HTTP
//! statuses), then writes CAR v1 sections in DFS pre-order, every block read through the
//! verifying store. A block that turns out missing or corrupt mid-stream ends the stream early;
//! the client sees an incomplete CAR, never bad bytes.

use std::collections::HashSet;

use bytes::Bytes;
use cid::Cid;

use super::negotiate::{resolve_range, CarRequest, Scope};
use crate::store::car::header_bytes;
use crate::store::pb::{self, put_varint, UNIXFS_DIRECTORY, UNIXFS_FILE, UNIXFS_RAW};
use crate::store::{Store, StoreError, DAG_PB, RAW};

/// UnixFS types we do not produce and do not traverse by path.
const UNIXFS_SYMLINK: u64 = 4;
const UNIXFS_HAMT_SHARD: u64 = 5;
/// Multihash code of identity CIDs: their bytes are inline and never sent as blocks.
const IDENTITY: u64 = 0x00;

/// Why a CAR request cannot be answered; decided before streaming starts.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    NoSuchPath(String),
    #[error("{0}")]
    Unsupported(String),
}

/// What will be streamed.
#[derive(Debug, Clone)]
pub struct CarPlan {
    /// The CID in the URL (the CAR header's root).
    pub root: Cid,
    /// Blocks traversed to resolve the path, root first (empty without a path).
    pub path: Vec<Cid>,
    /// The block at the end of the path.
    pub terminal: Cid,
    /// Effective scope after looking at the terminal entity.
    pub scope: Scope,
    /// Inclusive byte range of the terminal file when `entity-bytes` applies.
    pub range: Option<(u64, u64)>,
    pub dups: bool,
}

impl CarPlan {
    /// Every CID in the path, terminal last (the `X-Ipfs-Roots` header).
    pub fn roots(&self) -> Vec<Cid> {
        let mut r = self.path.clone();
        r.push(self.terminal);
        r
    }
}

fn unixfs_of(cid: &Cid, block: &[u8]) -> Result<(pb::PbNode, pb::UnixFs), StoreError> {
    let node =
        pb::decode_node(block).map_err(|source| StoreError::BadBlock { cid: *cid, source })?;
    let fs = match &node.data {
        Some(d) => {
            pb::decode_unixfs(d).map_err(|source| StoreError::BadBlock { cid: *cid, source })?
        }
        None => pb::UnixFs::default(),
    };
    Ok((node, fs))
}

/// Resolves `segments` under `root` through plain UnixFS directories and decides the scope.
/// Blocking (store reads).
pub fn plan(
    store: &Store,
    root: &Cid,
    segments: &[String],
    req: &CarRequest,
) -> Result<CarPlan, PlanError> {
    let mut path = Vec::new();
    let mut current = *root;
    for seg in segments {
        if current.codec() != DAG_PB {
            return Err(PlanError::NoSuchPath(format!(
                "{current} is not a directory, so it has no entry '{seg}'"
            )));
        }
        let block = store.get_block(&current)?;
        let (node, fs) = unixfs_of(&current, &block)?;
        match fs.kind {
            UNIXFS_DIRECTORY => {}
            UNIXFS_HAMT_SHARD => {
                return Err(PlanError::Unsupported(format!(
                    "{current} is a sharded (HAMT) directory; this gateway does not resolve paths in them, request the entry's CID directly"
                )))
            }
            _ => {
                return Err(PlanError::NoSuchPath(format!(
                    "{current} is not a directory, so it has no entry '{seg}'"
                )))
            }
        }
        let next = node
            .links
            .iter()
            .find(|l| &l.name == seg)
            .map(|l| l.cid)
            .ok_or_else(|| {
                PlanError::NoSuchPath(format!("directory {current} has no entry '{seg}'"))
            })?;
        path.push(current);
        current = next;
    }
    // Load (and verify) the terminal block now, so a missing or corrupt one is a status code.
    let terminal_block = if current.hash().code() == IDENTITY {
        current.hash().digest().to_vec()
    } else {
        store.get_block(&current)?.to_vec()
    };
    let mut scope = req.scope;
    let mut range = None;
    if scope == Scope::Entity {
        match current.codec() {
            RAW => {
                if let Some(r) = req.range {
                    range = resolve_range(r, terminal_block.len() as u64);
                }
                scope = Scope::Block;
            }
            DAG_PB => {
                let (node, fs) = unixfs_of(&current, &terminal_block)?;
                match fs.kind {
                    UNIXFS_FILE | UNIXFS_RAW => {
                        scope = Scope::All;
                        if let Some(r) = req.range {
                            let size = fs.filesize.unwrap_or_else(|| {
                                fs.data.as_ref().map_or(0, |d| d.len() as u64)
                                    + fs.blocksizes.iter().sum::<u64>()
                            });
                            range = resolve_range(r, size);
                            if range.is_none() {
                                // Nothing of the file is in the range: the root alone lets
                                // the client see why (its blocksizes).
                                scope = Scope::Block;
                            }
                        }
                    }
                    UNIXFS_DIRECTORY | UNIXFS_SYMLINK => scope = Scope::Block,
                    UNIXFS_HAMT_SHARD => {
                        return Err(PlanError::Unsupported(format!(
                            "{current} is a sharded (HAMT) directory; dag-scope=entity is not served for it, use dag-scope=all"
                        )))
                    }
                    _ => scope = Scope::Block,
                }
                let _ = node;
            }
            other => {
                return Err(PlanError::Unsupported(format!(
                    "codec 0x{other:x} of {current} is not dag-pb or raw"
                )))
            }
        }
    } else if scope == Scope::All && current.codec() != DAG_PB && current.codec() != RAW {
        return Err(PlanError::Unsupported(format!(
            "codec 0x{:x} of {current} is not dag-pb or raw",
            current.codec()
        )));
    }
    Ok(CarPlan {
        root: *root,
        path,
        terminal: current,
        scope,
        range,
        dups: req.dups,
    })
}

fn section(cid: &Cid, block: &[u8]) -> Bytes {
    let cid_bytes = cid.to_bytes();
    let mut out = Vec::with_capacity(10 + cid_bytes.len() + block.len());
    put_varint(&mut out, (cid_bytes.len() + block.len()) as u64);
    out.extend_from_slice(&cid_bytes);
    out.extend_from_slice(block);
    Bytes::from(out)
}

/// Writes the CAR for `plan` into `sink` (which returns `false` once the client is gone).
/// Blocking (store reads). An error after the header means the stream must be cut short.
pub fn write(
    store: &Store,
    plan: &CarPlan,
    sink: &mut dyn FnMut(Bytes) -> bool,
) -> Result<(), StoreError> {
    let header = header_bytes(&[plan.root]);
    let mut framed = Vec::with_capacity(header.len() + 4);
    put_varint(&mut framed, header.len() as u64);
    framed.extend_from_slice(&header);
    if !sink(Bytes::from(framed)) {
        return Ok(());
    }
    let mut seen: HashSet<Cid> = HashSet::new();
    let load = |cid: &Cid| -> Result<Vec<u8>, StoreError> {
        if cid.hash().code() == IDENTITY {
            Ok(cid.hash().digest().to_vec())
        } else {
            Ok(store.get_block(cid)?.to_vec())
        }
    };
    for cid in &plan.path {
        if !plan.dups && !seen.insert(*cid) {
            continue;
        }
        let block = load(cid)?;
        if cid.hash().code() != IDENTITY && !sink(section(cid, &block)) {
            return Ok(());
        }
    }
    // DFS pre-order: (cid, file offset of the node's first byte).
    let mut stack = vec![(plan.terminal, 0u64)];
    while let Some((cid, offset)) = stack.pop() {
        let fresh = plan.dups || seen.insert(cid);
        // dups=n: a repeated subtree was sent whole the first time (unless a byte range
        // selects different children of it here).
        if !fresh && plan.range.is_none() {
            continue;
        }
        let block = load(&cid)?;
        if fresh && cid.hash().code() != IDENTITY && !sink(section(&cid, &block)) {
            return Ok(());
        }
        if plan.scope == Scope::Block || cid.codec() != DAG_PB {
            continue;
        }
        let (node, fs) = unixfs_of(&cid, &block)?;
        let mut children: Vec<(Cid, u64)> = Vec::with_capacity(node.links.len());
        match plan.range {
            Some((from, to)) if fs.blocksizes.len() == node.links.len() => {
                // Only the children whose bytes intersect [from, to].
                let mut child_off = offset + fs.data.as_ref().map_or(0, |d| d.len() as u64);
                for (link, size) in node.links.iter().zip(&fs.blocksizes) {
                    let end = child_off + size; // exclusive
                    if child_off <= to && end > from {
                        children.push((link.cid, child_off));
                    }
                    child_off = end;
                }
            }
            _ => children.extend(node.links.iter().map(|l| (l.cid, offset))),
        }
        stack.extend(children.into_iter().rev());
    }
    Ok(())
}
