//! Built-in sealing: real Filecoin PoRep phases through `filecoin-proofs-api` on the CPU.
//!
//! The benchmark runs this in a child process (`comine bench seal-worker`) so the parent
//! can pause it with SIGSTOP/SIGCONT (steering) and account its CPU time from
//! `/proc/<pid>/stat` apart from the transcoder's. The child seals sector after sector
//! and prints one JSON line per finished phase on stdout.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// One line of the seal worker's stdout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum WorkerLine {
    /// A sealing phase finished: `ap`, `pc1`, `pc2`, `c1` or `c2`.
    Phase { sector: u64, phase: String, ms: u64 },
    /// Every phase of a sector finished.
    Sector { sector: u64, ms: u64 },
    /// Something the report must say (e.g. why C2 was skipped).
    Note { message: String },
    /// A phase failed; the worker stops.
    Failed { message: String },
}

/// Why the seal worker could not seal.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sector size {0} is not one filecoin-proofs seals (2KiB, 8MiB, 512MiB, 32GiB, 64GiB)")]
    SectorSize(String),
    #[error("{phase} failed: {reason}")]
    Phase { phase: &'static str, reason: String },
    #[error("cannot prepare sector files in {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("this comine was built without the `seal-builtin` feature; rebuild with default features or use --seal cmd:'…'")]
    NotBuilt,
}

/// Unpadded piece size for `len` payload bytes: 127/128 of the next power of two ≥ 128.
pub fn unpadded_piece_size(len: u64) -> u64 {
    // Fr32 expands 127 bytes to 128, so the padded size must hold len*128/127 rounded up.
    let padded_needed = len.div_ceil(127) * 128;
    let padded = padded_needed.max(128).next_power_of_two();
    padded / 128 * 127
}

#[cfg(feature = "seal-builtin")]
mod imp {
    use super::*;
    use filecoin_proofs_api::seal;
    use filecoin_proofs_api::{RegisteredSealProof, SectorId, UnpaddedBytesAmount};

    pub fn proof_for(size: &str) -> Result<RegisteredSealProof, SealError> {
        Ok(match size {
            "2KiB" => RegisteredSealProof::StackedDrg2KiBV1_1,
            "8MiB" => RegisteredSealProof::StackedDrg8MiBV1_1,
            "512MiB" => RegisteredSealProof::StackedDrg512MiBV1_1,
            "32GiB" => RegisteredSealProof::StackedDrg32GiBV1_1,
            "64GiB" => RegisteredSealProof::StackedDrg64GiBV1_1,
            other => return Err(SealError::SectorSize(other.to_string())),
        })
    }

    /// Where C2's Groth16 parameters would be, and whether they are there.
    pub fn c2_params(proof: RegisteredSealProof) -> Result<PathBuf, String> {
        let params = proof
            .cache_params_path()
            .map_err(|e| format!("cannot locate Groth16 parameters: {e}"))?;
        let vk = proof
            .cache_verifying_key_path()
            .map_err(|e| format!("cannot locate the verifying key: {e}"))?;
        if params.is_file() && vk.is_file() {
            Ok(params)
        } else {
            Err(format!(
                "C2 skipped: Groth16 parameters {} are not in FIL_PROOFS_PARAMETER_CACHE ({}); fetch them (e.g. `lotus fetch-params`) to include C2",
                params.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                params.parent().map(|p| p.display().to_string()).unwrap_or_default()
            ))
        }
    }

    /// Seal one sector in `dir`, reporting each phase through `emit`.
    pub fn seal_sector(
        size: &str,
        dir: &Path,
        sector: u64,
        with_c2: bool,
        emit: &mut dyn FnMut(WorkerLine),
    ) -> Result<(), SealError> {
        let proof = proof_for(size)?;
        let io = |source| SealError::Io {
            path: dir.display().to_string(),
            source,
        };
        let cache = dir.join("cache");
        std::fs::create_dir_all(&cache).map_err(io)?;
        let staged = dir.join("staged");
        let sealed = dir.join("sealed");
        std::fs::File::create(&sealed).map_err(io)?;
        let sector_bytes = u64::from(proof.sector_size());
        let unpadded =
            UnpaddedBytesAmount::from(filecoin_proofs_api::PaddedBytesAmount(sector_bytes));
        let prover_id = [7u8; 32];
        let ticket = [sector as u8 & 0x3f; 32];
        let seed = [3u8; 32];
        let sector_id = SectorId::from(sector);
        let started = Instant::now();
        let fail = |phase: &'static str| {
            move |e: anyhow::Error| SealError::Phase {
                phase,
                reason: format!("{e:#}"),
            }
        };

        // Add piece: pseudo-random payload (incompressible, like real deal data).
        let t = Instant::now();
        let payload = Noise::new(sector ^ 0x9e37_79b9_7f4a_7c15).take(unpadded.0);
        let mut target = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&staged)
            .map_err(io)?;
        let (piece, _) = seal::add_piece(proof, payload, &mut target, unpadded, &[])
            .map_err(fail("add piece"))?;
        target.flush().map_err(io)?;
        drop(target);
        emit(phase_line(sector, "ap", t));

        let t = Instant::now();
        let pieces = [piece];
        let pc1 = seal::seal_pre_commit_phase1(
            proof, &cache, &staged, &sealed, prover_id, sector_id, ticket, &pieces,
        )
        .map_err(fail("PC1"))?;
        emit(phase_line(sector, "pc1", t));

        let t = Instant::now();
        let pc2 = seal::seal_pre_commit_phase2(pc1, &cache, &sealed).map_err(fail("PC2"))?;
        emit(phase_line(sector, "pc2", t));

        let t = Instant::now();
        let c1 = seal::seal_commit_phase1(
            &cache, &sealed, prover_id, sector_id, ticket, seed, pc2, &pieces,
        )
        .map_err(fail("C1"))?;
        emit(phase_line(sector, "c1", t));

        if with_c2 {
            let t = Instant::now();
            seal::seal_commit_phase2(c1, prover_id, sector_id).map_err(fail("C2"))?;
            emit(phase_line(sector, "c2", t));
        }
        emit(WorkerLine::Sector {
            sector,
            ms: started.elapsed().as_millis() as u64,
        });
        Ok(())
    }

    /// Piece CID (CommP) of `bytes`, zero-padded to the unpadded piece size, computed by
    /// filecoin-proofs itself: the reference the store's own CommP is checked against.
    pub fn commp_reference(bytes: &[u8]) -> Result<cid::Cid, SealError> {
        let unpadded = unpadded_piece_size(bytes.len() as u64);
        let source = bytes.chain(std::io::repeat(0).take(unpadded - bytes.len() as u64));
        // The commitment does not depend on the sector size; any V1 proof dispatches.
        let info = seal::generate_piece_commitment(
            RegisteredSealProof::StackedDrg2KiBV1_1,
            source,
            UnpaddedBytesAmount(unpadded),
        )
        .map_err(|e| SealError::Phase {
            phase: "piece commitment",
            reason: format!("{e:#}"),
        })?;
        piece_cid(info.commitment)
    }
}

#[cfg(feature = "seal-builtin")]
pub use imp::{c2_params, commp_reference, seal_sector};

/// Without the feature, built-in sealing reports how to get it.
#[cfg(not(feature = "seal-builtin"))]
pub fn seal_sector(
    _size: &str,
    _dir: &Path,
    _sector: u64,
    _with_c2: bool,
    _emit: &mut dyn FnMut(WorkerLine),
) -> Result<(), SealError> {
    Err(SealError::NotBuilt)
}

/// CID v1 of a piece commitment: codec fil-commitment-unsealed (0xf101),
/// multihash sha2-256-trunc254-padded (0x1012).
pub fn piece_cid(commitment: [u8; 32]) -> Result<cid::Cid, SealError> {
    let mh = cid::multihash::Multihash::<64>::wrap(0x1012, &commitment).map_err(|e| {
        SealError::Phase {
            phase: "piece CID",
            reason: e.to_string(),
        }
    })?;
    Ok(cid::Cid::new_v1(0xf101, mh))
}

#[cfg_attr(not(feature = "seal-builtin"), allow(dead_code))]
fn phase_line(sector: u64, phase: &str, t: Instant) -> WorkerLine {
    WorkerLine::Phase {
        sector,
        phase: phase.to_string(),
        ms: t.elapsed().as_millis() as u64,
    }
}

/// The `comine bench seal-worker` loop: seal sectors until killed, one JSON line per event.
pub fn worker_main(size: &str, dir: &Path, max_sectors: Option<u64>) -> Result<(), SealError> {
    let mut out = std::io::stdout().lock();
    let mut emit = |line: WorkerLine| {
        if let Ok(json) = serde_json::to_string(&line) {
            // A closed pipe means the parent is gone: nothing left to tell.
            let _ = writeln!(out, "{json}");
            let _ = out.flush();
        }
    };
    #[cfg(feature = "seal-builtin")]
    let with_c2 = match c2_params(imp::proof_for(size)?) {
        Ok(_) => true,
        Err(why) => {
            emit(WorkerLine::Note { message: why });
            false
        }
    };
    #[cfg(not(feature = "seal-builtin"))]
    let with_c2 = false;
    let mut sector = 1u64;
    loop {
        let sector_dir: PathBuf = dir.join(format!("s-{sector}"));
        // Never seal on top of a previous run's layers (it would skip real work).
        let _ = std::fs::remove_dir_all(&sector_dir);
        let result = seal_sector(size, &sector_dir, sector, with_c2, &mut emit);
        let _ = std::fs::remove_dir_all(&sector_dir);
        if let Err(e) = result {
            emit(WorkerLine::Failed {
                message: e.to_string(),
            });
            return Err(e);
        }
        if max_sectors.is_some_and(|m| sector >= m) {
            return Ok(());
        }
        sector += 1;
    }
}

/// xorshift64* stream: cheap incompressible bytes for the piece payload.
#[cfg_attr(not(feature = "seal-builtin"), allow(dead_code))]
struct Noise(u64);

#[cfg_attr(not(feature = "seal-builtin"), allow(dead_code))]
impl Noise {
    fn new(seed: u64) -> Self {
        Noise(seed | 1)
    }
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_sizes() {
        assert_eq!(unpadded_piece_size(0), 127);
        assert_eq!(unpadded_piece_size(127), 127);
        assert_eq!(unpadded_piece_size(128), 254);
        assert_eq!(unpadded_piece_size(2032), 2032);
        assert_eq!(unpadded_piece_size(2033), 4064);
    }

    #[cfg(feature = "seal-builtin")]
    #[test]
    fn commp_reference_pads_with_zeros() {
        let short = commp_reference(b"hello comine").unwrap();
        let mut padded = b"hello comine".to_vec();
        padded.resize(127, 0);
        assert_eq!(short, commp_reference(&padded).unwrap());
        assert_ne!(short, commp_reference(b"hello comine!").unwrap());
        assert_eq!(short.codec(), 0xf101);
        assert_eq!(short.hash().code(), 0x1012);
        // 2032 bytes fill a 2 KiB piece exactly; one more byte doubles the piece.
        let a = commp_reference(&vec![1u8; 2032]).unwrap();
        let b = commp_reference(&vec![1u8; 2033]).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn piece_cid_codec() {
        let cid = piece_cid([0u8; 32]).unwrap();
        assert_eq!(cid.codec(), 0xf101);
        assert!(cid.to_string().starts_with("baga6ea4sea"), "{cid}");
    }
}
