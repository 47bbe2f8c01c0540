//! Filecoin piece commitment (CommP) and piece CID v1, streaming.
//!
//! The payload is zero-padded to the unpadded piece size (127/128 of the next power of two, at
//! least 128 padded bytes), Fr32-padded (every 254 bits become a 32-byte field element with two
//! zero top bits), and hashed into a binary SHA-256 merkle tree whose node hashes have their top
//! two bits cleared (sha2-256-trunc254-padded). Trailing zero padding is folded in with
//! precomputed zero-subtree roots, so a small CAR in a large piece costs nothing extra.
//!
//! Speed: a node is SHA-256 of exactly 64 bytes, i.e. two compressions (the pair, then the
//! constant padding block), run directly with `sha2::compress256`. [`piece_cid`] hashes whole
//! 8 MiB subtrees on every core in parallel and folds their roots into the streaming tree.

use std::io::{self, Read};

use cid::Cid;
use multihash::Multihash;
use sha2::digest::consts::U64;
use sha2::digest::generic_array::GenericArray;

/// Multicodec `fil-commitment-unsealed`.
pub const FIL_COMMITMENT_UNSEALED: u64 = 0xf101;
/// Multihash `sha2-256-trunc254-padded`.
pub const SHA2_256_TRUNC254_PADDED: u64 = 0x1012;

type Node = [u8; 32];

const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// SHA-256's padding block for a 64-byte message: 0x80, zeros, length 512 bits big-endian.
fn padding_block() -> GenericArray<u8, U64> {
    let mut p = GenericArray::<u8, U64>::default();
    p[0] = 0x80;
    p[62] = 0x02;
    p
}

fn hash_pair(left: &Node, right: &Node) -> Node {
    let mut block = GenericArray::<u8, U64>::default();
    block[..32].copy_from_slice(left);
    block[32..].copy_from_slice(right);
    let mut state = SHA256_IV;
    sha2::compress256(&mut state, &[block, padding_block()]);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out[31] &= 0x3f;
    out
}

/// Input bytes of one parallel subtree: 2^16 Fr32 blocks, i.e. 2^18 leaves.
const SUBTREE_INPUT: usize = 127 << 16;
const SUBTREE_LEVEL: usize = 18;

/// Root of the tree over `data`, a whole number of 127-byte blocks whose count is a power of two.
fn subtree_root(data: &[u8]) -> Node {
    let mut nodes: Vec<Node> = Vec::with_capacity(data.len() / 127 * 4);
    let mut out = [0u8; 128];
    for block in data.chunks_exact(127) {
        let mut input = [0u8; 127];
        input.copy_from_slice(block);
        fr32_pad(&input, &mut out);
        for leaf in out.chunks_exact(32) {
            let mut n = [0u8; 32];
            n.copy_from_slice(leaf);
            nodes.push(n);
        }
    }
    while nodes.len() > 1 {
        let half = nodes.len() / 2;
        for i in 0..half {
            nodes[i] = hash_pair(&nodes[2 * i], &nodes[2 * i + 1]);
        }
        nodes.truncate(half);
    }
    nodes.first().copied().unwrap_or([0u8; 32])
}

/// Padded piece size for a payload: next power of two of the Fr32-expanded size, at least 128.
pub fn padded_piece_size(payload: u64) -> u64 {
    let blocks = payload.div_ceil(127).max(1);
    (blocks * 128).next_power_of_two()
}

/// Unpadded piece size: what the payload is zero-filled to before Fr32 padding.
pub fn unpadded_piece_size(payload: u64) -> u64 {
    padded_piece_size(payload) / 128 * 127
}

/// Fr32-pads one 127-byte block into 128 bytes: four 254-bit field elements, each stored
/// little-endian in 32 bytes with the top two bits zero.
pub fn fr32_pad(input: &[u8; 127], out: &mut [u8; 128]) {
    out[..31].copy_from_slice(&input[..31]);
    out[31] = input[31] & 0x3f;
    // Element 1 starts at bit 254 of the input: shift the stream left by 2 bits.
    let mut carry = input[31] >> 6;
    for i in 32..64 {
        let v = input[i];
        out[i] = (v << 2) | carry;
        carry = v >> 6;
    }
    out[63] &= 0x3f;
    // Element 2 starts at bit 508: shift by 4 bits (from byte 63, bit 4).
    let mut carry = input[63] >> 4;
    for i in 64..96 {
        let v = input[i];
        out[i] = (v << 4) | carry;
        carry = v >> 4;
    }
    out[95] &= 0x3f;
    // Element 3 starts at bit 762: shift by 6 bits (from byte 95, bit 2).
    let mut carry = input[95] >> 2;
    for i in 96..127 {
        let v = input[i];
        out[i] = (v << 6) | carry;
        carry = v >> 2;
    }
    out[127] = carry & 0x3f;
}

/// Streaming CommP hasher.
pub struct CommP {
    pending: [u8; 127],
    pending_len: usize,
    payload: u64,
    /// Binary-counter merkle stack: `levels[i]` holds a finished left subtree of 2^i leaves.
    levels: Vec<Option<Node>>,
    leaves: u64,
}

impl Default for CommP {
    fn default() -> Self {
        CommP {
            pending: [0; 127],
            pending_len: 0,
            payload: 0,
            levels: Vec::new(),
            leaves: 0,
        }
    }
}

impl CommP {
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&mut self, level: usize, mut node: Node) {
        let mut lvl = level;
        loop {
            if self.levels.len() <= lvl {
                self.levels.resize(lvl + 1, None);
            }
            match self.levels[lvl].take() {
                Some(left) => {
                    node = hash_pair(&left, &node);
                    lvl += 1;
                }
                None => {
                    self.levels[lvl] = Some(node);
                    break;
                }
            }
        }
        self.leaves += 1 << level;
    }

    fn block(&mut self, input: &[u8; 127]) {
        let mut out = [0u8; 128];
        fr32_pad(input, &mut out);
        for leaf in out.chunks_exact(32) {
            let mut n = [0u8; 32];
            n.copy_from_slice(leaf);
            self.push(0, n);
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.payload += data.len() as u64;
        if self.pending_len > 0 {
            let take = (127 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 127 {
                return;
            }
            let block = self.pending;
            self.block(&block);
            self.pending_len = 0;
        }
        let mut chunks = data.chunks_exact(127);
        for chunk in &mut chunks {
            let mut block = [0u8; 127];
            block.copy_from_slice(chunk);
            self.block(&block);
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// Returns (piece CID, padded piece size, payload size).
    pub fn finish(mut self) -> (Cid, u64, u64) {
        if self.pending_len > 0 || self.leaves == 0 {
            let mut block = [0u8; 127];
            block[..self.pending_len].copy_from_slice(&self.pending[..self.pending_len]);
            self.block(&block);
        }
        let padded = padded_piece_size(self.payload);
        let total_leaves = padded / 32;
        let mut zeros: Vec<Node> = vec![[0u8; 32]];
        while self.leaves < total_leaves {
            // Largest aligned zero subtree that fits at the current position.
            let level = self.leaves.trailing_zeros() as usize;
            while zeros.len() <= level {
                let z = zeros[zeros.len() - 1];
                zeros.push(hash_pair(&z, &z));
            }
            self.push(level, zeros[level]);
        }
        let root = self
            .levels
            .iter()
            .rev()
            .find_map(|n| *n)
            .unwrap_or([0u8; 32]);
        (piece_cid_from_commitment(&root), padded, self.payload)
    }
}

/// Wraps a 32-byte commitment as a piece CID v1 (`baga6ea4sea…`).
pub fn piece_cid_from_commitment(commitment: &[u8; 32]) -> Cid {
    let mh = Multihash::<64>::wrap(SHA2_256_TRUNC254_PADDED, commitment).unwrap_or_default();
    Cid::new_v1(FIL_COMMITMENT_UNSEALED, mh)
}

/// Computes (piece CID, padded piece size, payload size) of everything `reader` yields.
/// Whole subtrees are hashed on every core at once; memory stays at two 8 MiB buffers per core.
pub fn piece_cid(mut reader: impl Read) -> io::Result<(Cid, u64, u64)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let mut c = CommP::new();
    let mut buf = vec![0u8; SUBTREE_INPUT * threads];
    loop {
        let n = super::importer::read_full(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        let whole = n / SUBTREE_INPUT * SUBTREE_INPUT;
        if whole > 0 {
            // Only whole subtrees were pushed before, so the tree is aligned for another.
            let roots: Vec<Node> = std::thread::scope(|s| {
                let handles: Vec<_> = buf[..whole]
                    .chunks(SUBTREE_INPUT)
                    .map(|chunk| s.spawn(move || subtree_root(chunk)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .map_err(|_| io::Error::other("a CommP hashing thread failed"))
                    })
                    .collect::<io::Result<_>>()
            })?;
            for root in roots {
                c.push(SUBTREE_LEVEL, root);
            }
            c.payload += whole as u64;
        }
        c.update(&buf[whole..n]);
        if n < buf.len() {
            break;
        }
    }
    Ok(c.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference Fr32 padding, bit by bit: input bit k goes to output element k/254, bit k%254.
    fn fr32_bits(input: &[u8; 127]) -> [u8; 128] {
        let mut out = [0u8; 128];
        for k in 0..(127 * 8) {
            let bit = (input[k / 8] >> (k % 8)) & 1;
            let (elem, off) = (k / 254, k % 254);
            let o = elem * 256 + off;
            out[o / 8] |= bit << (o % 8);
        }
        out
    }

    #[test]
    fn fr32_matches_bitwise_reference() {
        let mut input = [0u8; 127];
        for (seed, fill) in [(1u32, 0xffu8), (7, 0), (13, 0xcc)] {
            for (i, b) in input.iter_mut().enumerate() {
                *b = if seed == 1 {
                    fill
                } else {
                    ((i as u32).wrapping_mul(seed).wrapping_mul(2654435761) >> 13) as u8 ^ fill
                };
            }
            let mut fast = [0u8; 128];
            fr32_pad(&input, &mut fast);
            assert_eq!(fast, fr32_bits(&input));
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(padded_piece_size(0), 128);
        assert_eq!(padded_piece_size(127), 128);
        assert_eq!(padded_piece_size(128), 256);
        assert_eq!(padded_piece_size(1016), 1024);
        assert_eq!(padded_piece_size(1017), 2048);
        assert_eq!(unpadded_piece_size(1017), 2032);
    }

    #[test]
    fn parallel_subtrees_agree_with_the_streaming_tree() {
        // Two whole subtrees and a tail, so both paths and their seam are exercised.
        let len = SUBTREE_INPUT * 2 + 5000;
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let mut c = CommP::new();
        for part in data.chunks(1 << 20) {
            c.update(part);
        }
        assert_eq!(piece_cid(&data[..]).unwrap(), c.finish());
    }

    #[test]
    fn split_updates_agree() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        let whole = piece_cid(&data[..]).unwrap();
        let mut c = CommP::new();
        for part in data.chunks(100) {
            c.update(part);
        }
        assert_eq!(c.finish(), whole);
    }
}
