//! CAR v1 (Content Addressable aRchive) writer and reader, written by hand.
//!
//! The format is a varint-framed dag-cbor header `{"roots": [cid…], "version": 1}` followed by
//! varint-framed `cid ‖ block` sections. Hand-encoding that one CBOR map keeps us off a second
//! `cid`/`multihash` version that CAR crates pull in.

use std::io::{self, Read, Write};

use cid::Cid;
use sha2::{Digest, Sha256};

use super::pb::put_varint;
use super::{Store, StoreError, SHA2_256};

/// Errors reading a CAR file.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    #[error("reading the CAR: {0}")]
    Io(#[from] io::Error),
    #[error("not a CAR v1 file: {0}")]
    Format(String),
    #[error("CAR block {cid} does not hash to its CID")]
    Corrupt { cid: Cid },
}

fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// dag-cbor header bytes (keys in dag-cbor order: shorter first, so "roots" before "version").
pub fn header_bytes(roots: &[Cid]) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + roots.len() * 40);
    cbor_head(&mut h, 5, 2);
    cbor_head(&mut h, 3, 5);
    h.extend_from_slice(b"roots");
    cbor_head(&mut h, 4, roots.len() as u64);
    for root in roots {
        let bytes = root.to_bytes();
        h.extend_from_slice(&[0xd8, 42]); // tag 42: CID
        cbor_head(&mut h, 2, bytes.len() as u64 + 1);
        h.push(0); // multibase identity prefix, required by the CID tag
        h.extend_from_slice(&bytes);
    }
    cbor_head(&mut h, 3, 7);
    h.extend_from_slice(b"version");
    cbor_head(&mut h, 0, 1);
    h
}

/// Writes a CAR v1 with `roots` and every block of their DAGs (each block once, in DFS
/// pre-order). Returns the bytes written.
pub fn write_car(store: &Store, roots: &[Cid], out: &mut impl Write) -> Result<u64, StoreError> {
    let werr = |e| StoreError::io("writing the CAR", e);
    let header = header_bytes(roots);
    let mut frame = Vec::with_capacity(10);
    put_varint(&mut frame, header.len() as u64);
    out.write_all(&frame).map_err(werr)?;
    out.write_all(&header).map_err(werr)?;
    let mut written = (frame.len() + header.len()) as u64;
    let mut seen = std::collections::HashSet::new();
    for root in roots {
        let mut emit = |cid: &Cid, block: &[u8]| -> Result<(), StoreError> {
            if !seen.insert(*cid) {
                return Ok(());
            }
            let cid_bytes = cid.to_bytes();
            frame.clear();
            put_varint(&mut frame, (cid_bytes.len() + block.len()) as u64);
            out.write_all(&frame).map_err(werr)?;
            out.write_all(&cid_bytes).map_err(werr)?;
            out.write_all(block).map_err(werr)?;
            written += (frame.len() + cid_bytes.len() + block.len()) as u64;
            Ok(())
        };
        store.walk(root, &mut emit)?;
    }
    out.flush().map_err(werr)?;
    Ok(written)
}

/// Streaming CAR v1 reader; every block is verified against its CID.
pub struct CarReader<R> {
    inner: R,
    pub roots: Vec<Cid>,
}

fn read_varint(r: &mut impl Read) -> Result<Option<u64>, CarError> {
    let mut v: u64 = 0;
    for (i, shift) in (0..64).step_by(7).enumerate() {
        let mut b = [0u8; 1];
        match r.read_exact(&mut b) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && i == 0 => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] < 0x80 {
            return Ok(Some(v));
        }
    }
    Err(CarError::Format("varint too long".into()))
}

/// Minimal CBOR reader for the CAR header (maps, arrays, text, bytes, uints, tag 42).
struct Cbor<'a> {
    b: &'a [u8],
    p: usize,
}

#[derive(Debug)]
enum Item {
    Uint(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Item>),
    Map(Vec<(Item, Item)>),
    Tag(u64, Box<Item>),
}

impl Cbor<'_> {
    fn byte(&mut self) -> Result<u8, CarError> {
        let b = *self
            .b
            .get(self.p)
            .ok_or_else(|| CarError::Format("truncated header".into()))?;
        self.p += 1;
        Ok(b)
    }
    fn arg(&mut self, info: u8) -> Result<u64, CarError> {
        let n = match info {
            0..=23 => return Ok(u64::from(info)),
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            _ => return Err(CarError::Format("unsupported CBOR length".into())),
        };
        let mut v = 0u64;
        for _ in 0..n {
            v = v << 8 | u64::from(self.byte()?);
        }
        Ok(v)
    }
    fn take(&mut self, n: u64) -> Result<&[u8], CarError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.p.checked_add(n))
            .filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| CarError::Format("truncated header".into()))?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn item(&mut self, depth: u32) -> Result<Item, CarError> {
        if depth > 8 {
            return Err(CarError::Format("header nested too deep".into()));
        }
        let b = self.byte()?;
        let n = self.arg(b & 0x1f)?;
        Ok(match b >> 5 {
            0 => Item::Uint(n),
            2 => Item::Bytes(self.take(n)?.to_vec()),
            3 => Item::Text(String::from_utf8_lossy(self.take(n)?).into_owned()),
            4 => Item::Array(
                (0..n.min(1 << 16))
                    .map(|_| self.item(depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
            5 => Item::Map(
                (0..n.min(1 << 16))
                    .map(|_| Ok((self.item(depth + 1)?, self.item(depth + 1)?)))
                    .collect::<Result<_, CarError>>()?,
            ),
            6 => Item::Tag(n, Box::new(self.item(depth + 1)?)),
            _ => return Err(CarError::Format("unexpected CBOR type in header".into())),
        })
    }
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header.
    pub fn new(mut inner: R) -> Result<Self, CarError> {
        let len = read_varint(&mut inner)?.ok_or_else(|| CarError::Format("empty file".into()))?;
        if len == 0 || len > 1 << 20 {
            return Err(CarError::Format(format!(
                "header length {len} out of range"
            )));
        }
        let mut header = vec![0u8; len as usize];
        inner.read_exact(&mut header)?;
        let item = Cbor { b: &header, p: 0 }.item(0)?;
        let Item::Map(entries) = item else {
            return Err(CarError::Format("header is not a map".into()));
        };
        let (mut version, mut roots) = (None, Vec::new());
        for (k, v) in entries {
            match (k, v) {
                (Item::Text(k), Item::Uint(n)) if k == "version" => version = Some(n),
                (Item::Text(k), Item::Array(items)) if k == "roots" => {
                    for it in items {
                        match it {
                            Item::Tag(42, b) => match *b {
                                Item::Bytes(bytes) if bytes.first() == Some(&0) => {
                                    roots.push(Cid::try_from(&bytes[1..]).map_err(|e| {
                                        CarError::Format(format!("bad root CID: {e}"))
                                    })?)
                                }
                                _ => return Err(CarError::Format("root is not a CID".into())),
                            },
                            _ => return Err(CarError::Format("root is not a tag-42 CID".into())),
                        }
                    }
                }
                _ => {}
            }
        }
        if version != Some(1) {
            return Err(CarError::Format(format!(
                "version {version:?}, only CAR v1 is supported"
            )));
        }
        Ok(CarReader { inner, roots })
    }

    /// Next verified block, or `None` at the end.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        let Some(len) = read_varint(&mut self.inner)? else {
            return Ok(None);
        };
        if len > 8 << 20 {
            return Err(CarError::Format(format!(
                "section of {len} bytes is larger than any block"
            )));
        }
        let mut section = vec![0u8; len as usize];
        self.inner.read_exact(&mut section)?;
        let mut cursor = io::Cursor::new(&section[..]);
        let cid = Cid::read_bytes(&mut cursor)
            .map_err(|e| CarError::Format(format!("bad block CID: {e}")))?;
        let data = section[cursor.position() as usize..].to_vec();
        if cid.hash().code() != SHA2_256 || Sha256::digest(&data).as_slice() != cid.hash().digest()
        {
            return Err(CarError::Corrupt { cid });
        }
        Ok(Some((cid, data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_go_car() {
        // go-car's header for root QmbFMke… (empty file), checked by hand against the CBOR spec.
        let root: Cid = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
            .parse()
            .unwrap();
        let h = header_bytes(&[root]);
        assert_eq!(&h[..8], &[0xa2, 0x65, b'r', b'o', b'o', b't', b's', 0x81]);
        assert_eq!(&h[8..12], &[0xd8, 0x2a, 0x58, 0x23]);
        assert_eq!(
            &h[h.len() - 9..],
            &[0x67, b'v', b'e', b'r', b's', b'i', b'o', b'n', 0x01]
        );
        let mut framed = vec![h.len() as u8];
        framed.extend_from_slice(&h);
        let r = CarReader::new(&framed[..]).unwrap();
        assert_eq!(r.roots, vec![root]);
    }
}
