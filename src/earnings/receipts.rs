//! Signed work receipts: one EIP-712 receipt per completed job, a daily Merkle root over them
//! signed EIP-191, an export with proofs, and offline verification.
//!
//! A receipt says "this transcoder did this job for this orchestrator": job id, both
//! addresses, manifest and seq, decoded and encoded pixels, a hash over the renditions' CIDs
//! and the completion time, signed with the operator's key (`[earnings] key_file`, mode 0600).
//! It travels to the orchestrator in the [`RECEIPT_HEADER`] of `/transcodeResults` — never as
//! a multipart part: go-livepeer reads an `application/octet-stream` part as a perceptual
//! hash — and is kept in `earnings_receipts`. Anyone holding an export can recount the pixels
//! from the CIDs and check every signature without comine or a chain.
//!
//! The key is read once; it is never logged, shown or put in an error (errors name the file).

use std::io::Write;
use std::path::{Path, PathBuf};

use alloy::primitives::{keccak256, Address, Signature, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;
use alloy::sol_types::{Eip712Domain, SolStruct};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// HTTP header carrying a signed receipt on `/transcodeResults`.
pub const RECEIPT_HEADER: &str = "Comine-Work-Receipt";
/// Export file format tag.
pub const EXPORT_FORMAT: &str = "comine-receipts/1";
/// EIP-712 domain name and version.
pub const DOMAIN_NAME: &str = "comine";
pub const DOMAIN_VERSION: &str = "1";

alloy::sol! {
    /// The EIP-712 type of a work receipt.
    struct WorkReceipt {
        string jobId;
        address transcoder;
        address orchestrator;
        string manifestId;
        int64 seq;
        uint64 decodedPixels;
        uint64 encodedPixels;
        bytes32 renditionsHash;
        uint64 completedAt;
    }
}

pub fn domain(chain_id: u64) -> Eip712Domain {
    Eip712Domain::new(
        Some(DOMAIN_NAME.into()),
        Some(DOMAIN_VERSION.into()),
        Some(U256::from(chain_id)),
        None,
        None,
    )
}

/// A receipt's fields (`completed_at_ms`: ms since the epoch; `seq` −1 when none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    pub job_id: String,
    pub transcoder: Address,
    pub orchestrator: Address,
    pub manifest_id: String,
    pub seq: i64,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    pub renditions_hash: B256,
    pub completed_at_ms: u64,
}

impl Receipt {
    fn typed(&self) -> WorkReceipt {
        WorkReceipt {
            jobId: self.job_id.clone(),
            transcoder: self.transcoder,
            orchestrator: self.orchestrator,
            manifestId: self.manifest_id.clone(),
            seq: self.seq,
            decodedPixels: self.decoded_pixels,
            encodedPixels: self.encoded_pixels,
            renditionsHash: self.renditions_hash,
            completedAt: self.completed_at_ms,
        }
    }

    /// The EIP-712 digest that is signed.
    pub fn digest(&self, chain_id: u64) -> B256 {
        self.typed().eip712_signing_hash(&domain(chain_id))
    }
}

/// The renditions' CIDs as EIP-712 would hash a `string[]`: keccak256 of the concatenated
/// keccak256 of each CID string, in rendition order.
pub fn renditions_hash<S: AsRef<str>>(cids: &[S]) -> B256 {
    let mut buf = Vec::with_capacity(cids.len() * 32);
    for c in cids {
        buf.extend_from_slice(keccak256(c.as_ref().as_bytes()).as_slice());
    }
    keccak256(&buf)
}

/// A receipt with its signature and the CIDs its hash covers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    pub cids: Vec<String>,
    pub chain_id: u64,
    pub signer: Address,
    /// 65 bytes r ‖ s ‖ v (v = 27/28), hex.
    pub signature: String,
}

impl SignedReceipt {
    /// The header value: base64url (no padding) of the compact JSON.
    pub fn to_header(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    pub fn from_header(value: &str) -> Result<SignedReceipt, ReceiptError> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(value.trim())
            .map_err(|e| ReceiptError::Malformed(format!("not base64url: {e}")))?;
        serde_json::from_slice(&raw).map_err(|e| ReceiptError::Malformed(e.to_string()))
    }

    /// Checks the CID hash and the signature; returns the digest.
    pub fn verify(&self) -> Result<B256, ReceiptError> {
        if renditions_hash(&self.cids) != self.receipt.renditions_hash {
            return Err(ReceiptError::Invalid(format!(
                "job {}: the renditions hash does not match its CIDs",
                self.receipt.job_id
            )));
        }
        let digest = self.receipt.digest(self.chain_id);
        let who = recover(&self.signature, |s| s.recover_address_from_prehash(&digest))?;
        if who != self.signer {
            return Err(ReceiptError::Invalid(format!(
                "job {}: the signature is by {who}, not {}; the receipt was altered or signed by another key",
                self.receipt.job_id, self.signer
            )));
        }
        Ok(digest)
    }
}

fn recover(
    sig_hex: &str,
    f: impl FnOnce(&Signature) -> Result<Address, alloy::primitives::SignatureError>,
) -> Result<Address, ReceiptError> {
    let bytes = alloy::primitives::hex::decode(sig_hex.trim())
        .map_err(|_| ReceiptError::Malformed("signature is not hex".into()))?;
    let sig = Signature::from_raw(&bytes)
        .map_err(|e| ReceiptError::Malformed(format!("signature: {e}")))?;
    f(&sig).map_err(|e| ReceiptError::Invalid(format!("signature does not recover: {e}")))
}

#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt is malformed: {0}")]
    Malformed(String),
    #[error("receipt does not verify: {0}")]
    Invalid(String),
    #[error("signing failed: {0}")]
    Sign(String),
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the key file {path}: {source}; set [earnings] key_file to a readable file (create one with `comine earnings key new --out FILE`)")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {path} has mode {mode:o}: group or others can read it; run `chmod 600 {path}` (the key is refused until only its owner can read it)")]
    Permissions { path: String, mode: u32 },
    #[error("the key file {path} does not hold a secp256k1 key: expected 64 hex digits (optionally 0x-prefixed) and nothing else")]
    Format { path: String },
    #[error("the key file {path} holds an invalid secp256k1 key (zero or above the curve order)")]
    Invalid { path: String },
    #[error("cannot create the key file {path}: {source}")]
    Create {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The operator's signing key. Its `Debug` shows only the address.
pub struct OperatorKey {
    signer: PrivateKeySigner,
    path: PathBuf,
}

impl std::fmt::Debug for OperatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "OperatorKey({}, {})",
            self.address(),
            self.path.display()
        )
    }
}

impl OperatorKey {
    /// Loads a key file: mode 0600 (no group/other bits), 64 hex digits.
    pub fn load(path: &Path) -> Result<OperatorKey, KeyError> {
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
            path: p.clone(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path: p, mode });
            }
        }
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: p.clone(),
            source,
        })?;
        let hex = text.trim();
        let hex = hex.strip_prefix("0x").unwrap_or(hex);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KeyError::Format { path: p });
        }
        let mut raw = [0u8; 32];
        alloy::primitives::hex::decode_to_slice(hex, &mut raw)
            .map_err(|_| KeyError::Format { path: p.clone() })?;
        let signer = PrivateKeySigner::from_bytes(&B256::from(raw))
            .map_err(|_| KeyError::Invalid { path: p })?;
        raw.fill(0);
        Ok(OperatorKey {
            signer,
            path: path.to_path_buf(),
        })
    }

    /// Creates a new random key file with mode 0600; refuses to overwrite one.
    pub fn generate(path: &Path) -> Result<OperatorKey, KeyError> {
        let p = path.display().to_string();
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| KeyError::Create {
            path: p.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let signer = PrivateKeySigner::from_bytes(&B256::from(raw))
            .map_err(|_| KeyError::Invalid { path: p.clone() })?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|source| KeyError::Create {
            path: p.clone(),
            source,
        })?;
        f.write_all(alloy::primitives::hex::encode(raw).as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|source| KeyError::Create { path: p, source })?;
        raw.fill(0);
        Ok(OperatorKey {
            signer,
            path: path.to_path_buf(),
        })
    }

    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// Signs a receipt (EIP-712).
    pub fn sign(
        &self,
        receipt: Receipt,
        cids: Vec<String>,
        chain_id: u64,
    ) -> Result<SignedReceipt, ReceiptError> {
        let digest = receipt.digest(chain_id);
        let sig = self
            .signer
            .sign_hash_sync(&digest)
            .map_err(|e| ReceiptError::Sign(e.to_string()))?;
        Ok(SignedReceipt {
            receipt,
            cids,
            chain_id,
            signer: self.address(),
            signature: alloy::primitives::hex::encode_prefixed(sig.as_bytes()),
        })
    }

    /// Signs `message` EIP-191 (`personal_sign`); returns the hex signature.
    pub fn sign_message(&self, message: &[u8]) -> Result<String, ReceiptError> {
        let sig = self
            .signer
            .sign_message_sync(message)
            .map_err(|e| ReceiptError::Sign(e.to_string()))?;
        Ok(alloy::primitives::hex::encode_prefixed(sig.as_bytes()))
    }

    /// go-livepeer's `GetOrchestrator` request signature: EIP-191 over keccak256 of the
    /// checksummed address string (`addr.Hex()`), v = 27/28.
    pub fn orchestrator_request_sig(&self) -> Result<Vec<u8>, ReceiptError> {
        let msg = keccak256(self.address().to_checksum(None).as_bytes());
        let sig = self
            .signer
            .sign_message_sync(msg.as_slice())
            .map_err(|e| ReceiptError::Sign(e.to_string()))?;
        Ok(sig.as_bytes().to_vec())
    }
}

// ---- Merkle tree over a day's receipts ------------------------------------------------------

/// A leaf is keccak256 of a receipt's EIP-712 digest (32 bytes; inner nodes hash 64).
pub fn leaf(digest: &B256) -> B256 {
    keccak256(digest.as_slice())
}

fn node(a: &B256, b: &B256) -> B256 {
    // Sorted pairs: a proof needs no left/right flags (as OpenZeppelin's MerkleProof).
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(x.as_slice());
    buf[32..].copy_from_slice(y.as_slice());
    keccak256(buf)
}

fn levels(leaves: &[B256]) -> Vec<Vec<B256>> {
    let mut out = vec![leaves.to_vec()];
    while out.last().is_some_and(|l| l.len() > 1) {
        let cur = out.last().cloned().unwrap_or_default();
        let next = cur
            .chunks(2)
            .map(|p| {
                if p.len() == 2 {
                    node(&p[0], &p[1])
                } else {
                    p[0]
                }
            })
            .collect();
        out.push(next);
    }
    out
}

/// The root over `leaves` in order (zero for none; the leaf itself for one).
pub fn merkle_root(leaves: &[B256]) -> B256 {
    levels(leaves)
        .last()
        .and_then(|l| l.first().copied())
        .unwrap_or(B256::ZERO)
}

/// The sibling path of leaf `index`.
pub fn merkle_proof(leaves: &[B256], index: usize) -> Vec<B256> {
    let mut proof = Vec::new();
    let mut i = index;
    for level in levels(leaves) {
        if level.len() <= 1 {
            break;
        }
        let sib = i ^ 1;
        if sib < level.len() {
            proof.push(level[sib]);
        }
        i /= 2;
    }
    proof
}

pub fn verify_proof(leaf: B256, proof: &[B256], root: B256) -> bool {
    proof.iter().fold(leaf, |acc, p| node(&acc, p)) == root
}

/// The text a daily root's EIP-191 signature covers.
pub fn root_message(day: &str, count: u64, root: &B256) -> String {
    format!("comine work receipts\nday: {day}\nreceipts: {count}\nroot: {root}\n")
}

// ---- export and offline verification -------------------------------------------------------

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedReceipt {
    #[serde(flatten)]
    pub signed: SignedReceipt,
    pub digest: B256,
    pub proof: Vec<B256>,
}

/// `comine earnings receipts --day DATE`: a day's receipts with proofs to its signed root.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Export {
    pub format: String,
    pub day: String,
    pub domain: ExportDomain,
    pub signer: Address,
    pub root: B256,
    pub root_message: String,
    pub root_signature: String,
    pub receipts: Vec<ExportedReceipt>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDomain {
    pub name: String,
    pub version: String,
    pub chain_id: u64,
}

/// Builds an export from a day's signed receipts (in leaf order) and its root signature.
pub fn build_export(
    day: &str,
    signer: Address,
    chain_id: u64,
    receipts: Vec<SignedReceipt>,
    root_message: String,
    root_signature: String,
) -> Export {
    let digests: Vec<B256> = receipts
        .iter()
        .map(|r| r.receipt.digest(r.chain_id))
        .collect();
    let leaves: Vec<B256> = digests.iter().map(leaf).collect();
    let root = merkle_root(&leaves);
    let receipts = receipts
        .into_iter()
        .zip(digests)
        .enumerate()
        .map(|(i, (signed, digest))| ExportedReceipt {
            signed,
            digest,
            proof: merkle_proof(&leaves, i),
        })
        .collect();
    Export {
        format: EXPORT_FORMAT.into(),
        day: day.into(),
        domain: ExportDomain {
            name: DOMAIN_NAME.into(),
            version: DOMAIN_VERSION.into(),
            chain_id,
        },
        signer,
        root,
        root_message,
        root_signature,
        receipts,
    }
}

/// The outcome of `comine earnings verify`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    pub day: String,
    pub signer: Option<Address>,
    pub receipts: usize,
    pub valid: usize,
    pub decoded_pixels: u128,
    pub encoded_pixels: u128,
    pub root_valid: bool,
    pub failures: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.root_valid && self.failures.is_empty() && self.valid == self.receipts
    }
}

/// Verifies an export offline: each receipt's CID hash, signature and proof, the root
/// recomputed from all receipts, and the root's EIP-191 signature.
pub fn verify_export(text: &str) -> Result<VerifyReport, ReceiptError> {
    let ex: Export =
        serde_json::from_str(text).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    if ex.format != EXPORT_FORMAT {
        return Err(ReceiptError::Malformed(format!(
            "format {:?} is not {EXPORT_FORMAT}",
            ex.format
        )));
    }
    let mut rep = VerifyReport {
        day: ex.day.clone(),
        signer: Some(ex.signer),
        receipts: ex.receipts.len(),
        ..VerifyReport::default()
    };
    let mut leaves = Vec::with_capacity(ex.receipts.len());
    for r in &ex.receipts {
        let id = &r.signed.receipt.job_id;
        let digest = r.signed.receipt.digest(r.signed.chain_id);
        leaves.push(leaf(&digest));
        if r.signed.signer != ex.signer {
            rep.failures.push(format!(
                "job {id}: signed by {}, the export by {}",
                r.signed.signer, ex.signer
            ));
            continue;
        }
        if r.signed.chain_id != ex.domain.chain_id {
            rep.failures.push(format!(
                "job {id}: chain id {} differs from the export's",
                r.signed.chain_id
            ));
            continue;
        }
        if let Err(e) = r.signed.verify() {
            rep.failures.push(e.to_string());
            continue;
        }
        if digest != r.digest {
            rep.failures
                .push(format!("job {id}: the listed digest is not the receipt's"));
            continue;
        }
        if !verify_proof(leaf(&digest), &r.proof, ex.root) {
            rep.failures.push(format!(
                "job {id}: the Merkle proof does not lead to the root"
            ));
            continue;
        }
        rep.valid += 1;
        rep.decoded_pixels += u128::from(r.signed.receipt.decoded_pixels);
        rep.encoded_pixels += u128::from(r.signed.receipt.encoded_pixels);
    }
    let root = merkle_root(&leaves);
    let expected_message = root_message(&ex.day, ex.receipts.len() as u64, &ex.root);
    if root != ex.root {
        rep.failures.push(format!(
            "the root {} is not the root of these receipts ({root})",
            ex.root
        ));
    } else if ex.root_message != expected_message {
        rep.failures
            .push("the root message does not name this day, count and root".into());
    } else {
        match recover(&ex.root_signature, |s| {
            s.recover_address_from_msg(ex.root_message.as_bytes())
        }) {
            Ok(a) if a == ex.signer => rep.root_valid = true,
            Ok(a) => rep
                .failures
                .push(format!("the root is signed by {a}, not {}", ex.signer)),
            Err(e) => rep.failures.push(format!("root signature: {e}")),
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &Path) -> OperatorKey {
        OperatorKey::generate(&dir.join("k")).unwrap()
    }

    fn receipt(n: u64) -> (Receipt, Vec<String>) {
        let cids = vec![format!("QmA{n}"), format!("QmB{n}")];
        (
            Receipt {
                job_id: format!("job-{n}"),
                transcoder: Address::repeat_byte(1),
                orchestrator: Address::repeat_byte(2),
                manifest_id: "manifest".into(),
                seq: n as i64,
                decoded_pixels: 1000 + n,
                encoded_pixels: 2000 + n,
                renditions_hash: renditions_hash(&cids),
                completed_at_ms: 1_700_000_000_000 + n,
            },
            cids,
        )
    }

    #[test]
    fn receipt_verifies_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(dir.path());
        let (r, cids) = receipt(1);
        let s = k.sign(r, cids, 42161).unwrap();
        s.verify().unwrap();
        let back = SignedReceipt::from_header(&s.to_header()).unwrap();
        assert_eq!(back, s);
        let mut t = s.clone();
        t.receipt.encoded_pixels += 1;
        assert!(
            t.verify().unwrap_err().to_string().contains("not"),
            "tampered pixels must fail"
        );
        let mut t = s.clone();
        t.cids[0] = "QmX".into();
        assert!(t
            .verify()
            .unwrap_err()
            .to_string()
            .contains("renditions hash"));
    }

    #[test]
    fn merkle_proofs_cover_every_leaf() {
        for n in 1..=9usize {
            let leaves: Vec<B256> = (0..n).map(|i| keccak256([i as u8])).collect();
            let root = merkle_root(&leaves);
            for i in 0..n {
                assert!(
                    verify_proof(leaves[i], &merkle_proof(&leaves, i), root),
                    "n={n} i={i}"
                );
            }
            assert!(!verify_proof(keccak256([99u8]), &merkle_proof(&leaves, 0), root) || n == 0);
        }
    }

    #[test]
    fn key_file_rules() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let k = OperatorKey::generate(&p).unwrap();
        assert_eq!(OperatorKey::load(&p).unwrap().address(), k.address());
        assert!(OperatorKey::generate(&p).is_err(), "never overwrites");
        let secret = std::fs::read_to_string(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = OperatorKey::load(&p).unwrap_err().to_string();
            assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
            assert!(!e.contains(secret.trim()));
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        std::fs::write(&p, "not a key").unwrap();
        let e = OperatorKey::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("64 hex digits") && !e.contains("not a key"),
            "{e}"
        );
        assert!(!format!("{k:?}").contains(secret.trim()));
    }
}
