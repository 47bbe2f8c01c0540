//! UnixFS importer: chunks a byte stream and builds the same balanced DAG as Kubo's `ipfs add`.
//!
//! Kubo (boxo `importer/balanced`) fills the tree depth-first: a file of one chunk is that leaf,
//! otherwise every node takes up to 174 children, every subtree but the rightmost is full, and a
//! partial right edge still gets one wrapper node per level (a node with a single child is not
//! collapsed). Building it bottom-up with one pending list per level gives the identical tree
//! while streaming: memory stays at one chunk plus 174 links per level.

use std::io::{self, Read};

use cid::Cid;
use multihash::Multihash;
use sha2::{Digest, Sha256};

use super::pb::{self, PbLink, UNIXFS_FILE};
use super::StoreError;

/// Kubo's default chunker: `size-262144`.
pub const CHUNK_SIZE: usize = 256 * 1024;
/// Kubo's `DefaultLinksPerBlock` for the balanced layout.
pub const MAX_LINKS: usize = 174;

/// Multicodec codes used by the store.
pub const DAG_PB: u64 = 0x70;
pub const RAW: u64 = 0x55;
pub const SHA2_256: u64 = 0x12;

/// How to build the DAG; mirrors `ipfs add --cid-version N --raw-leaves`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddOptions {
    /// 0 (Kubo's default) or 1.
    pub cid_version: u8,
    /// `None` follows Kubo: raw leaves exactly when `cid_version` is 1.
    pub raw_leaves: Option<bool>,
}

impl AddOptions {
    pub fn raw_leaves(&self) -> bool {
        self.raw_leaves.unwrap_or(self.cid_version == 1)
    }

    pub fn validate(&self) -> Result<(), StoreError> {
        if self.cid_version > 1 {
            return Err(StoreError::BadOption(format!(
                "--cid-version {} is not a CID version: use 0 or 1",
                self.cid_version
            )));
        }
        Ok(())
    }
}

/// Receives every block the importer produces, leaves first, root last.
pub trait BlockSink {
    /// `false` lets the importer hash leaves in place without materialising their bytes
    /// (pure CID computation, the benchmark path).
    fn wants_bytes(&self) -> bool {
        true
    }
    fn put(&mut self, cid: &Cid, block: &[u8]) -> Result<(), StoreError>;
}

/// Sink that keeps nothing: computes the CID only.
pub struct NullSink;

impl BlockSink for NullSink {
    fn wants_bytes(&self) -> bool {
        false
    }
    fn put(&mut self, _: &Cid, _: &[u8]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The root of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub cid: Cid,
    /// File bytes.
    pub size: u64,
    /// Cumulative DAG size (Kubo's `Tsize` of the root link; blocks plus links).
    pub dag_size: u64,
    pub blocks: u64,
}

#[derive(Clone)]
struct Child {
    cid: Cid,
    tsize: u64,
    filesize: u64,
}

pub fn sha256_mh(digest: &[u8]) -> Multihash<64> {
    // A 32-byte digest always fits the 64-byte multihash.
    Multihash::wrap(SHA2_256, digest).unwrap_or_default()
}

fn make_cid(version: u8, codec: u64, digest: &[u8]) -> Cid {
    let mh = sha256_mh(digest);
    if version == 0 && codec == DAG_PB {
        // v0 only fails for non-sha256 hashes, which we never produce.
        Cid::new_v0(mh).unwrap_or_else(|_| Cid::new_v1(DAG_PB, mh))
    } else {
        Cid::new_v1(codec, mh)
    }
}

/// Hashes a whole block and returns its CID.
pub fn block_cid(version: u8, codec: u64, block: &[u8]) -> Cid {
    make_cid(version, codec, &Sha256::digest(block))
}

/// Reads until `buf` is full or EOF; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Imports `reader` as a UnixFS file, handing each block to `sink`.
pub fn import(
    reader: &mut impl Read,
    opts: &AddOptions,
    sink: &mut impl BlockSink,
) -> Result<Imported, StoreError> {
    opts.validate()?;
    let raw_leaves = opts.raw_leaves();
    let version = opts.cid_version;
    let mut levels: Vec<Vec<Child>> = vec![Vec::new()];
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut block = Vec::with_capacity(CHUNK_SIZE + 32);
    let mut total: u64 = 0;
    let mut blocks: u64 = 0;
    let mut first = true;
    loop {
        let n =
            read_full(reader, &mut buf).map_err(|e| StoreError::io("reading the input file", e))?;
        if n == 0 && !first {
            break;
        }
        first = false;
        let chunk = &buf[..n];
        let leaf = if raw_leaves {
            let cid = make_cid(1, RAW, &Sha256::digest(chunk));
            if sink.wants_bytes() {
                sink.put(&cid, chunk)?;
            }
            Child {
                cid,
                tsize: n as u64,
                filesize: n as u64,
            }
        } else {
            let header = pb::leaf_header(n);
            let trailer = pb::leaf_trailer(n);
            let cid = if sink.wants_bytes() {
                block.clear();
                block.extend_from_slice(&header);
                block.extend_from_slice(chunk);
                block.extend_from_slice(&trailer);
                let cid = make_cid(version, DAG_PB, &Sha256::digest(&block));
                sink.put(&cid, &block)?;
                cid
            } else {
                let mut h = Sha256::new();
                h.update(&header);
                h.update(chunk);
                h.update(&trailer);
                make_cid(version, DAG_PB, &h.finalize())
            };
            Child {
                cid,
                tsize: (header.len() + n + trailer.len()) as u64,
                filesize: n as u64,
            }
        };
        blocks += 1;
        total += n as u64;
        push(&mut levels, 0, leaf, version, sink, &mut blocks)?;
        if n < CHUNK_SIZE {
            break;
        }
    }
    // Flush the right edge bottom-up. A level is wrapped into a parent when it holds more than
    // one child or when anything sits above it; the lone child of the top level is the root.
    let mut level = 0;
    loop {
        let above = levels[level + 1..].iter().any(|l| !l.is_empty());
        let pending = std::mem::take(&mut levels[level]);
        if pending.len() == 1 && !above {
            let root = &pending[0];
            return Ok(Imported {
                cid: root.cid,
                size: total,
                dag_size: root.tsize,
                blocks,
            });
        }
        if !pending.is_empty() {
            let node = build_node(&pending, version, sink, &mut blocks)?;
            push(&mut levels, level + 1, node, version, sink, &mut blocks)?;
        }
        level += 1;
    }
}

fn push(
    levels: &mut Vec<Vec<Child>>,
    level: usize,
    child: Child,
    version: u8,
    sink: &mut impl BlockSink,
    blocks: &mut u64,
) -> Result<(), StoreError> {
    if levels.len() <= level + 1 {
        levels.resize(level + 2, Vec::new());
    }
    levels[level].push(child);
    // Closing a full node eagerly gives Kubo's tree: a full node is final whether or not more
    // data follows, and the final flush wraps whatever is left.
    if levels[level].len() == MAX_LINKS {
        let full = std::mem::take(&mut levels[level]);
        let node = build_node(&full, version, sink, blocks)?;
        push(levels, level + 1, node, version, sink, blocks)?;
    }
    Ok(())
}

fn build_node(
    children: &[Child],
    version: u8,
    sink: &mut impl BlockSink,
    blocks: &mut u64,
) -> Result<Child, StoreError> {
    let filesize: u64 = children.iter().map(|c| c.filesize).sum();
    let sizes: Vec<u64> = children.iter().map(|c| c.filesize).collect();
    let data = pb::encode_unixfs(UNIXFS_FILE, None, Some(filesize), &sizes);
    let links: Vec<PbLink> = children
        .iter()
        .map(|c| PbLink {
            cid: c.cid,
            name: String::new(),
            tsize: c.tsize,
        })
        .collect();
    let bytes = pb::encode_node(&links, Some(&data));
    let cid = block_cid(version, DAG_PB, &bytes);
    sink.put(&cid, &bytes)?;
    *blocks += 1;
    let tsize = bytes.len() as u64 + children.iter().map(|c| c.tsize).sum::<u64>();
    Ok(Child {
        cid,
        tsize,
        filesize,
    })
}

/// Computes the CID `ipfs add` would give, storing nothing.
pub fn compute_cid(reader: &mut impl Read, opts: &AddOptions) -> Result<Imported, StoreError> {
    import(reader, opts, &mut NullSink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid_of(data: &[u8], v: u8, raw: Option<bool>) -> String {
        compute_cid(
            &mut &data[..],
            &AddOptions {
                cid_version: v,
                raw_leaves: raw,
            },
        )
        .unwrap()
        .cid
        .to_string()
    }

    #[test]
    fn empty_file_matches_kubo() {
        assert_eq!(
            cid_of(b"", 0, None),
            "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
        );
        assert_eq!(
            cid_of(b"", 1, None),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }

    #[test]
    fn hello_world_matches_kubo() {
        // `echo "hello world" | ipfs add` (a well-known CID).
        assert_eq!(
            cid_of(b"hello world\n", 0, None),
            "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
        );
    }

    #[test]
    fn null_sink_and_storing_sink_agree() {
        struct Keep(Vec<(Cid, Vec<u8>)>);
        impl BlockSink for Keep {
            fn put(&mut self, cid: &Cid, b: &[u8]) -> Result<(), StoreError> {
                self.0.push((*cid, b.to_vec()));
                Ok(())
            }
        }
        let data: Vec<u8> = (0..(CHUNK_SIZE * 3 + 5))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        for opts in [
            AddOptions::default(),
            AddOptions {
                cid_version: 1,
                raw_leaves: None,
            },
        ] {
            let mut keep = Keep(Vec::new());
            let a = import(&mut &data[..], &opts, &mut keep).unwrap();
            let b = compute_cid(&mut &data[..], &opts).unwrap();
            assert_eq!(a, b);
            assert_eq!(keep.0.len(), 5);
            for (cid, bytes) in &keep.0 {
                assert_eq!(cid.hash().digest(), Sha256::digest(bytes).as_slice());
            }
        }
    }
}
