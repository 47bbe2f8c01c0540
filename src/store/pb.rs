//! Hand-written dag-pb and UnixFS protobuf encoding, byte-identical to Kubo's.
//!
//! The schemas are tiny (PBNode{Links=2, Data=1}, PBLink{Hash=1, Name=2, Tsize=3},
//! unixfs Data{Type=1, Data=2, filesize=3, blocksizes=4}), so a protobuf crate would cost more
//! than it saves. What matters for CIDs is the exact byte layout: dag-pb writes Links *before*
//! Data, every link carries Name (even empty) and Tsize, and proto2 `blocksizes` is unpacked.

use cid::Cid;

/// UnixFS node types we produce or read.
pub const UNIXFS_RAW: u64 = 0;
pub const UNIXFS_DIRECTORY: u64 = 1;
pub const UNIXFS_FILE: u64 = 2;

/// One dag-pb link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PbLink {
    pub cid: Cid,
    pub name: String,
    /// Cumulative size of the linked DAG (block bytes plus everything below).
    pub tsize: u64,
}

/// A decoded dag-pb node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PbNode {
    pub links: Vec<PbLink>,
    pub data: Option<Vec<u8>>,
}

/// A decoded UnixFS `Data` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixFs {
    pub kind: u64,
    pub data: Option<Vec<u8>>,
    pub filesize: Option<u64>,
    pub blocksizes: Vec<u64>,
}

/// Malformed protobuf bytes: the block is not dag-pb/UnixFS as we know it.
#[derive(Debug, thiserror::Error)]
#[error("malformed dag-pb/UnixFS block: {0}")]
pub struct PbError(pub &'static str);

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, field << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

/// Encodes a UnixFS `Data` message (fields in tag order, as gogo-protobuf writes them).
pub fn encode_unixfs(
    kind: u64,
    data: Option<&[u8]>,
    filesize: Option<u64>,
    blocksizes: &[u64],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + data.map_or(0, |d| d.len() + 5) + blocksizes.len() * 4);
    put_varint_field(&mut out, 1, kind);
    if let Some(d) = data {
        put_bytes_field(&mut out, 2, d);
    }
    if let Some(size) = filesize {
        put_varint_field(&mut out, 3, size);
    }
    for &b in blocksizes {
        put_varint_field(&mut out, 4, b);
    }
    out
}

/// Encodes a dag-pb node: Links (field 2) first, then Data (field 1), as Kubo does.
pub fn encode_node(links: &[PbLink], data: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(links.len() * 48 + data.map_or(0, |d| d.len() + 6));
    let mut link_buf = Vec::with_capacity(64);
    for link in links {
        link_buf.clear();
        put_bytes_field(&mut link_buf, 1, &link.cid.to_bytes());
        put_bytes_field(&mut link_buf, 2, link.name.as_bytes());
        put_varint_field(&mut link_buf, 3, link.tsize);
        put_bytes_field(&mut out, 2, &link_buf);
    }
    if let Some(d) = data {
        put_bytes_field(&mut out, 1, d);
    }
    out
}

/// Header and trailer that wrap a file chunk into a UnixFS leaf dag-pb node, so the chunk can
/// be hashed in place (`header ‖ chunk`) without copying it into a new buffer.
pub fn leaf_header(chunk_len: usize) -> Vec<u8> {
    let len = chunk_len as u64;
    // unixfs Data{Type=File, Data=chunk (omitted when empty, like Kubo's nil slice), filesize=len}
    let mut inner_prefix = Vec::with_capacity(16);
    put_varint_field(&mut inner_prefix, 1, UNIXFS_FILE);
    let mut inner_suffix = Vec::with_capacity(12);
    put_varint_field(&mut inner_suffix, 3, len);
    let mut inner_len = inner_prefix.len() + inner_suffix.len();
    if chunk_len > 0 {
        put_varint(&mut inner_prefix, 2 << 3 | 2);
        put_varint(&mut inner_prefix, len);
        inner_len = inner_prefix.len() + chunk_len + inner_suffix.len();
    }
    let mut out = Vec::with_capacity(24);
    put_varint(&mut out, 1 << 3 | 2);
    put_varint(&mut out, inner_len as u64);
    out.extend_from_slice(&inner_prefix);
    // The trailer (filesize) follows the chunk; callers get it from `leaf_trailer`.
    out
}

/// Trailer of a UnixFS leaf: the `filesize` field after the chunk bytes.
pub fn leaf_trailer(chunk_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    put_varint_field(&mut out, 3, chunk_len as u64);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn varint(&mut self) -> Result<u64, PbError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or(PbError("truncated varint"))?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(PbError("varint too long"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], PbError> {
        let len = usize::try_from(self.varint()?).map_err(|_| PbError("length overflow"))?;
        let end = self
            .pos
            .checked_add(len)
            .ok_or(PbError("length overflow"))?;
        let out = self
            .buf
            .get(self.pos..end)
            .ok_or(PbError("truncated field"))?;
        self.pos = end;
        Ok(out)
    }
    fn skip(&mut self, wire: u64) -> Result<(), PbError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            _ => Err(PbError("unsupported wire type")),
        }
    }
    fn advance(&mut self, n: usize) -> Result<(), PbError> {
        if self.pos + n > self.buf.len() {
            return Err(PbError("truncated field"));
        }
        self.pos += n;
        Ok(())
    }
}

/// Decodes a dag-pb node.
pub fn decode_node(buf: &[u8]) -> Result<PbNode, PbError> {
    let mut r = Reader { buf, pos: 0 };
    let mut node = PbNode::default();
    while !r.done() {
        let key = r.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => node.data = Some(r.bytes()?.to_vec()),
            (2, 2) => node.links.push(decode_link(r.bytes()?)?),
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(node)
}

fn decode_link(buf: &[u8]) -> Result<PbLink, PbError> {
    let mut r = Reader { buf, pos: 0 };
    let (mut cid, mut name, mut tsize) = (None, String::new(), 0);
    while !r.done() {
        let key = r.varint()?;
        match (key >> 3, key & 7) {
            (1, 2) => {
                cid = Some(Cid::try_from(r.bytes()?).map_err(|_| PbError("bad CID in link"))?)
            }
            (2, 2) => name = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (3, 0) => tsize = r.varint()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(PbLink {
        cid: cid.ok_or(PbError("link without hash"))?,
        name,
        tsize,
    })
}

/// Decodes a UnixFS `Data` message.
pub fn decode_unixfs(buf: &[u8]) -> Result<UnixFs, PbError> {
    let mut r = Reader { buf, pos: 0 };
    let mut fs = UnixFs::default();
    while !r.done() {
        let key = r.varint()?;
        match (key >> 3, key & 7) {
            (1, 0) => fs.kind = r.varint()?,
            (2, 2) => fs.data = Some(r.bytes()?.to_vec()),
            (3, 0) => fs.filesize = Some(r.varint()?),
            (4, 0) => fs.blocksizes.push(r.varint()?),
            (4, 2) => {
                // Packed encoding: accept it too (some writers use it).
                let packed = r.bytes()?;
                let mut pr = Reader {
                    buf: packed,
                    pos: 0,
                };
                while !pr.done() {
                    fs.blocksizes.push(pr.varint()?);
                }
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_header_matches_full_encoding() {
        for len in [0usize, 1, 127, 128, 300, 262144] {
            let chunk = vec![7u8; len];
            let full = encode_node(
                &[],
                Some(&encode_unixfs(
                    UNIXFS_FILE,
                    (len > 0).then_some(&chunk[..]),
                    Some(len as u64),
                    &[],
                )),
            );
            let mut pieced = leaf_header(len);
            pieced.extend_from_slice(&chunk);
            pieced.extend_from_slice(&leaf_trailer(len));
            assert_eq!(full, pieced, "len {len}");
            let node = decode_node(&full).unwrap();
            let fs = decode_unixfs(node.data.as_deref().unwrap()).unwrap();
            assert_eq!(fs.kind, UNIXFS_FILE);
            assert_eq!(fs.filesize, Some(len as u64));
            assert_eq!(fs.data.unwrap_or_default(), chunk);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &[0x12u8, 0xff][..],
            &[0x0a, 0x05, 0x01],
            &[0xff; 12],
            &[0x0b],
        ] {
            let _ = decode_node(bad);
            let _ = decode_unixfs(bad);
        }
        assert!(decode_node(&[0x12, 0x05, 0x01]).is_err());
    }
}
