//! Block bytes as files, in Kubo's flatfs layout, so a Kubo node can read the same blocks:
//! `<store>/blocks/<SHARD>/<KEY>.data`, where KEY is the block's multihash in unpadded
//! upper-case base32 (RFC 4648, what Kubo's blockstore uses as its datastore key) and SHARD is
//! KEY's next-to-last two characters (`/repo/flatfs/shard/v1/next-to-last/2`, Kubo's default,
//! written to `SHARDING`). Blocks are immutable, so a file per block needs no database pages,
//! no compaction and no write amplification: the disk holds the content plus file-system
//! overhead.
//!
//! Durability: a block is written to `.temp/`, then renamed into place, so a reader never sees
//! half a block. fsyncs are batched per add ([`BatchWriter::commit`]): a small add fsyncs its
//! few files and their directories; a large one syncs the file system once (`syncfs`) instead
//! of once per 256 KiB block. Only after that does the store record the blocks in the
//! database, so an indexed block is always on disk.
//!
//! This file knows nothing of hashes' meaning: the store verifies every read.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::util::durable::write_durable;

/// Kubo's default shard function, as flatfs writes it.
pub const SHARDING: &str = "/repo/flatfs/shard/v1/next-to-last/2";
const TEMP_DIR: &str = ".temp";
/// An add that writes more files than this syncs the whole file system once instead.
const FSYNC_EACH_MAX: usize = 16;

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Unpadded upper-case RFC 4648 base32.
pub fn base32(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(B32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(B32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Inverse of [`base32`]; `None` for anything else.
pub fn from_base32(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = B32.iter().position(|&x| x == c)? as u32;
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding, as the encoder writes them.
    (acc & ((1 << bits) - 1) == 0 && bits < 5).then_some(out)
}

/// `NextToLast(2)`: the two characters before the last one.
fn shard(key: &str) -> &str {
    let n = key.len();
    if n >= 3 {
        &key[n - 3..n - 1]
    } else {
        "__"
    }
}

/// The flatfs directory of one store.
pub struct Blockstore {
    root: PathBuf,
    temp: PathBuf,
    counter: AtomicU64,
}

impl Blockstore {
    /// Opens (or creates) the layout under `root`; refuses a flatfs with another shard function.
    pub fn open(root: &Path) -> io::Result<Blockstore> {
        let temp = root.join(TEMP_DIR);
        std::fs::create_dir_all(&temp)?;
        let sharding = root.join("SHARDING");
        match std::fs::read_to_string(&sharding) {
            Ok(s) if s.trim() == SHARDING => {}
            Ok(s) => {
                return Err(io::Error::other(format!(
                    "{} says the blocks are sharded by {:?}; comine reads only {SHARDING}",
                    sharding.display(),
                    s.trim()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                write_durable(&sharding, format!("{SHARDING}\n").as_bytes())?;
                write_durable(&root.join("_README"), README.as_bytes())?;
            }
            Err(e) => return Err(e),
        }
        Ok(Blockstore {
            root: root.to_path_buf(),
            temp,
            counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the block with this multihash lives.
    pub fn path(&self, mh: &[u8]) -> PathBuf {
        let key = base32(mh);
        self.root.join(shard(&key)).join(format!("{key}.data"))
    }

    /// The block's bytes, unverified; `None` when there is no such file.
    pub fn read(&self, mh: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(mh)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn contains(&self, mh: &[u8]) -> bool {
        self.path(mh).is_file()
    }

    /// Starts a group of writes made durable together by [`BatchWriter::commit`].
    pub fn writer(&self) -> BatchWriter<'_> {
        BatchWriter {
            store: self,
            open: Vec::new(),
            dirs: BTreeSet::new(),
            files: 0,
            bytes: 0,
        }
    }

    /// Deletes a block file; returns the bytes freed (0 if it was already gone).
    pub fn remove(&self, mh: &[u8]) -> io::Result<u64> {
        let path = self.path(mh);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Every block file as (multihash, bytes on disk); files that are not blocks are skipped.
    pub fn list(&self) -> io::Result<Vec<(Vec<u8>, u64)>> {
        let mut out = Vec::new();
        for shard in std::fs::read_dir(&self.root)? {
            let shard = shard?;
            let name = shard.file_name();
            if name.len() != 2 || !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name();
                let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".data")) else {
                    continue;
                };
                if let Some(mh) = from_base32(key) {
                    out.push((mh, f.metadata()?.len()));
                }
            }
        }
        Ok(out)
    }

    /// Removes temporary files left by writes that never finished (a crash mid-add). Only
    /// call it when no write is in progress (the store holds its GC lock).
    pub fn clear_temp(&self) -> io::Result<u64> {
        let mut freed = 0;
        for f in std::fs::read_dir(&self.temp)? {
            let f = f?;
            freed += f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = std::fs::remove_file(f.path());
        }
        Ok(freed)
    }

    fn temp_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.temp
            .join(format!("{}-{n}-{:x}", std::process::id(), rand_u64()))
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // A collision only makes create_new fail and the write retried with the next counter.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Writes of one add; durable only after [`BatchWriter::commit`].
pub struct BatchWriter<'a> {
    store: &'a Blockstore,
    /// Files kept open for their fsync while the add is small.
    open: Vec<File>,
    dirs: BTreeSet<PathBuf>,
    files: usize,
    bytes: u64,
}

impl BatchWriter<'_> {
    /// Writes one block (replacing an existing file: a re-add repairs a damaged block).
    pub fn put(&mut self, mh: &[u8], block: &[u8]) -> io::Result<()> {
        let dest = self.store.path(mh);
        let tmp = loop {
            let p = self.store.temp_path();
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
            {
                Ok(f) => break (p, f),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        };
        let (tmp_path, mut f) = tmp;
        let written = f.write_all(block).and_then(|_| {
            match std::fs::rename(&tmp_path, &dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(dir) = dest.parent() {
                        std::fs::create_dir_all(dir)?;
                        // The new shard directory's own entry must be durable too.
                        self.dirs.insert(self.store.root.clone());
                    }
                    std::fs::rename(&tmp_path, &dest)
                }
                other => other,
            }
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp_path);
            return Err(e);
        }
        self.files += 1;
        self.bytes += block.len() as u64;
        if let Some(dir) = dest.parent() {
            self.dirs.insert(dir.to_path_buf());
        }
        if self.files <= FSYNC_EACH_MAX {
            self.open.push(f);
        } else {
            self.open.clear();
        }
        Ok(())
    }

    /// Blocks written so far.
    pub fn files(&self) -> usize {
        self.files
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Makes every block written by this add durable: fsync of each file and directory for a
    /// small add, one `syncfs` of the store's file system for a large one.
    pub fn commit(self) -> io::Result<()> {
        if self.files == 0 {
            return Ok(());
        }
        if self.files <= FSYNC_EACH_MAX {
            for f in &self.open {
                f.sync_data()?;
            }
            for d in &self.dirs {
                File::open(d)?.sync_all()?;
            }
            return Ok(());
        }
        sync_filesystem(&self.store.root)
    }
}

#[cfg(target_os = "linux")]
fn sync_filesystem(root: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = File::open(root)?;
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn sync_filesystem(_root: &Path) -> io::Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

const README: &str = "This directory holds comine's IPFS blocks in Kubo's flatfs layout.
Each block is one file named <base32 of its multihash>.data, in a directory named after the
next-to-last two characters of that name (see SHARDING). comine's database (../../comine.db)
records which blocks belong to which pinned content; do not edit these files by hand, run
`comine store gc` to free space.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips_and_matches_kubo_keys() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(from_base32(&base32(data)).unwrap(), data);
        }
        // RFC 4648 test vectors, without padding.
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        // A sha2-256 multihash starts with 0x12 0x20: Kubo's keys start with "CIQ".
        let mut mh = vec![0x12, 0x20];
        mh.extend_from_slice(&[0u8; 32]);
        assert!(base32(&mh).starts_with("CIQ"));
        assert_eq!(base32(&mh).len(), 55);
        assert!(from_base32("not base32!").is_none());
    }

    #[test]
    fn next_to_last_shard_is_kubos() {
        // The example in flatfs' README: ...LKRSCA.data lives in SC/.
        assert_eq!(
            shard("AFKREIA22FLID5AJ2KU7URG47MDLROZIH6YF2KALU2PWEFPVI37YLKRSCA"),
            "SC"
        );
    }

    #[test]
    fn writes_become_files_and_sharding_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let bs = Blockstore::open(dir.path()).unwrap();
        let mut w = bs.writer();
        for i in 0..20u8 {
            w.put(&[0x12, 0x20, i, i], &[i; 100]).unwrap();
        }
        w.commit().unwrap();
        assert_eq!(
            bs.read(&[0x12, 0x20, 3, 3]).unwrap().unwrap(),
            vec![3u8; 100]
        );
        assert_eq!(bs.list().unwrap().len(), 20);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("SHARDING")).unwrap(),
            format!("{SHARDING}\n")
        );
        assert_eq!(bs.remove(&[0x12, 0x20, 3, 3]).unwrap(), 100);
        assert_eq!(bs.read(&[0x12, 0x20, 3, 3]).unwrap(), None);
        std::fs::write(
            dir.path().join("SHARDING"),
            "/repo/flatfs/shard/v1/prefix/2\n",
        )
        .unwrap();
        assert!(Blockstore::open(dir.path()).is_err());
    }
}
