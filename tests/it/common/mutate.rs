//! Seeded mutations of real media segments, for the robustness harness: bit flips,
//! truncation, MPEG-TS packet shuffles, zeroed ranges, random bytes and PES timestamp
//! rewrites (jumps, spikes, a 13-hour jump, a 33-bit wrap). Case `i` of seed `s` is always
//! the same bytes, so a failure found by a long run is replayed from `(s, i)` alone.
//! Shared by `tests/` (through `common`) and `benchmarks/mutate.rs` (through `#[path]`).
#![allow(dead_code)]

/// MPEG-TS packet size.
pub const TS_PACKET: usize = 188;
/// 90 kHz ticks in 13 hours: the jump seen in the field that made `fps` fill ~1.4 M frames.
pub const THIRTEEN_HOURS: i64 = 13 * 3600 * 90_000;
/// PTS/DTS are 33-bit counters.
pub const TS_WRAP: i64 = 1 << 33;

/// splitmix64: tiny, seedable, good enough to pick offsets (not for anything secret).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    /// The generator for case `index` of a run seeded with `seed`.
    pub fn for_case(seed: u64, index: u64) -> Rng {
        let mut r = Rng(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// What was done to a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    BitFlips,
    Truncate,
    ShufflePackets,
    ZeroRange,
    RandomBytes,
    /// Every PTS/DTS from one PES on jumps by an offset (forward or back).
    TimestampStep,
    /// One PES's PTS (and DTS) jumps; the rest stay.
    TimestampSpike,
    /// The segment is rebased so its timestamps cross 2^33 mid-segment.
    TimestampWrap,
}

pub const KINDS: [Kind; 8] = [
    Kind::BitFlips,
    Kind::Truncate,
    Kind::ShufflePackets,
    Kind::ZeroRange,
    Kind::RandomBytes,
    Kind::TimestampStep,
    Kind::TimestampSpike,
    Kind::TimestampWrap,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::BitFlips => "bit-flips",
            Kind::Truncate => "truncate",
            Kind::ShufflePackets => "shuffle-packets",
            Kind::ZeroRange => "zero-range",
            Kind::RandomBytes => "random-bytes",
            Kind::TimestampStep => "timestamp-step",
            Kind::TimestampSpike => "timestamp-spike",
            Kind::TimestampWrap => "timestamp-wrap",
        }
    }
    /// Needs MPEG-TS packet structure (the rest apply to any container).
    pub fn needs_ts(self) -> bool {
        matches!(
            self,
            Kind::ShufflePackets | Kind::TimestampStep | Kind::TimestampSpike | Kind::TimestampWrap
        )
    }
}

/// One mutated segment.
#[derive(Clone, Debug)]
pub struct Mutated {
    pub bytes: Vec<u8>,
    /// Each mutation applied, in order, e.g. `timestamp-step +4212000000 from PES 31`.
    pub steps: Vec<String>,
}

/// Case `index` of the run `seed`: one to three stacked mutations of `seg`.
pub fn case(seg: &[u8], seed: u64, index: u64) -> Mutated {
    let mut rng = Rng::for_case(seed, index);
    let ts = is_ts(seg);
    let mut bytes = seg.to_vec();
    let mut steps = Vec::new();
    let n = if rng.chance(70) { 1 } else { rng.range(2, 3) };
    for _ in 0..n {
        let kinds: Vec<Kind> = KINDS
            .iter()
            .copied()
            .filter(|k| ts || !k.needs_ts())
            .collect();
        let kind = kinds[rng.below(kinds.len())];
        steps.push(apply(kind, &mut bytes, &mut rng));
    }
    Mutated { bytes, steps }
}

/// Applies one mutation of `kind`; returns its description.
pub fn apply(kind: Kind, bytes: &mut Vec<u8>, rng: &mut Rng) -> String {
    if bytes.is_empty() {
        return format!("{} (nothing left to mutate)", kind.name());
    }
    match kind {
        Kind::BitFlips => {
            let n = if rng.chance(50) {
                rng.range(1, 4)
            } else {
                rng.range(5, 64)
            };
            for _ in 0..n {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            format!("bit-flips x{n}")
        }
        Kind::Truncate => {
            let at = rng.below(bytes.len());
            bytes.truncate(at);
            format!("truncate at {at}")
        }
        Kind::ShufflePackets => {
            let packets = bytes.len() / TS_PACKET;
            if packets < 2 {
                return "shuffle-packets (too short)".into();
            }
            let start = rng.below(packets - 1);
            let len = rng.range(2, (packets - start).min(64));
            // Fisher-Yates over the window of whole packets.
            for i in (1..len).rev() {
                let j = rng.below(i + 1);
                swap_packets(bytes, start + i, start + j);
            }
            format!("shuffle-packets {len} from packet {start}")
        }
        Kind::ZeroRange => {
            let at = rng.below(bytes.len());
            let len = rng.range(1, (bytes.len() - at).min(16 * 1024));
            bytes[at..at + len].fill(0);
            format!("zero-range {len} at {at}")
        }
        Kind::RandomBytes => {
            let at = rng.below(bytes.len());
            let len = rng.range(1, (bytes.len() - at).min(4096));
            for b in &mut bytes[at..at + len] {
                *b = rng.next_u64() as u8;
            }
            format!("random-bytes {len} at {at}")
        }
        Kind::TimestampStep | Kind::TimestampSpike => {
            let pes = pes_starts(bytes);
            if pes.is_empty() {
                return format!("{} (no PES timestamps)", kind.name());
            }
            let offset = jump(rng);
            let first = rng.below(pes.len());
            let only_one = kind == Kind::TimestampSpike;
            let n = shift_timestamps(bytes, first, offset, only_one);
            format!("{} {offset:+} from PES {first} ({n} PES)", kind.name())
        }
        Kind::TimestampWrap => {
            let pes = pes_starts(bytes);
            let Some(mid) = pes.get(pes.len() / 2).copied() else {
                return "timestamp-wrap (no PES timestamps)".into();
            };
            let Some(mid_pts) = read_pes_pts(&bytes[mid..]) else {
                return "timestamp-wrap (no PTS mid-segment)".into();
            };
            // Rebase so the middle PES lands just past the wrap.
            let offset = TS_WRAP - mid_pts as i64;
            let n = shift_timestamps(bytes, 0, offset, false);
            shift_pcrs(bytes, offset);
            format!("timestamp-wrap {offset:+} ({n} PES)")
        }
    }
}

/// A timestamp jump worth trying: the field's 13 hours, near-wrap, seconds, or backwards.
fn jump(rng: &mut Rng) -> i64 {
    match rng.below(6) {
        0 => THIRTEEN_HOURS,
        1 => -THIRTEEN_HOURS,
        2 => rng.range(1, 600) as i64 * 90_000,
        3 => -(rng.range(1, 60) as i64 * 90_000),
        4 => TS_WRAP - rng.range(1, 90_000) as i64,
        _ => (rng.next_u64() % TS_WRAP as u64) as i64,
    }
}

/// The field's poison pattern: from the middle of the segment on, every PTS/DTS of every
/// stream jumps ~13 hours ahead (PCR untouched, as with a corrupted timestamp).
pub fn poison_13h(seg: &[u8]) -> Vec<u8> {
    let mut bytes = seg.to_vec();
    let pes = pes_starts(&bytes);
    assert!(
        !pes.is_empty(),
        "the poison needs an MPEG-TS with PES timestamps"
    );
    let n = shift_timestamps(&mut bytes, pes.len() / 2, THIRTEEN_HOURS, false);
    assert!(n > 0);
    bytes
}

pub fn is_ts(seg: &[u8]) -> bool {
    seg.len() >= 2 * TS_PACKET && seg[0] == 0x47 && seg[TS_PACKET] == 0x47
}

fn swap_packets(bytes: &mut [u8], a: usize, b: usize) {
    if a == b {
        return;
    }
    let (lo, hi) = (a.min(b) * TS_PACKET, a.max(b) * TS_PACKET);
    let (left, right) = bytes.split_at_mut(hi);
    left[lo..lo + TS_PACKET].swap_with_slice(&mut right[..TS_PACKET]);
}

/// Offset of the payload of a TS packet, if it has one.
fn payload_offset(pkt: &[u8]) -> Option<usize> {
    if pkt.len() < TS_PACKET || pkt[0] != 0x47 {
        return None;
    }
    let afc = (pkt[3] >> 4) & 3;
    if afc & 1 == 0 {
        return None;
    }
    let off = if afc & 2 != 0 { 5 + pkt[4] as usize } else { 4 };
    (off < TS_PACKET).then_some(off)
}

/// Byte offsets of the PES headers (with a PTS) that start in a TS packet, in order.
pub fn pes_starts(bytes: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, pkt) in bytes.chunks(TS_PACKET).enumerate() {
        if pkt.len() < TS_PACKET || pkt[1] & 0x40 == 0 {
            continue;
        }
        let Some(off) = payload_offset(pkt) else {
            continue;
        };
        let at = i * TS_PACKET + off;
        if read_pes_pts(&bytes[at..(i + 1) * TS_PACKET]).is_some() {
            out.push(at);
        }
    }
    out
}

/// (PTS offset, DTS offset) inside a PES header at the start of `pes`.
fn pes_timestamp_offsets(pes: &[u8]) -> Option<(usize, Option<usize>)> {
    if pes.len() < 19 || pes[..3] != [0, 0, 1] {
        return None;
    }
    // Streams without the optional PES header (padding, private 2, ECM, …).
    if matches!(
        pes[3],
        0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF
    ) {
        return None;
    }
    if pes[6] & 0xC0 != 0x80 {
        return None;
    }
    match pes[7] >> 6 {
        2 => Some((9, None)),
        3 => Some((9, Some(14))),
        _ => None,
    }
}

fn read_pes_pts(pes: &[u8]) -> Option<u64> {
    let (p, _) = pes_timestamp_offsets(pes)?;
    Some(read_ts(&pes[p..p + 5]))
}

/// A 33-bit PES timestamp from its 5 marker-bit-laden bytes.
pub fn read_ts(b: &[u8]) -> u64 {
    (((b[0] as u64 >> 1) & 7) << 30)
        | ((b[1] as u64) << 22)
        | ((b[2] as u64 >> 1) << 15)
        | ((b[3] as u64) << 7)
        | (b[4] as u64 >> 1)
}

/// Writes a 33-bit timestamp, keeping the 4-bit prefix (`0010`/`0011`/`0001`).
pub fn write_ts(b: &mut [u8], v: u64) {
    let v = v & (TS_WRAP as u64 - 1);
    b[0] = (b[0] & 0xF0) | (((v >> 29) as u8) & 0x0E) | 1;
    b[1] = (v >> 22) as u8;
    b[2] = (((v >> 14) as u8) & 0xFE) | 1;
    b[3] = (v >> 7) as u8;
    b[4] = (((v << 1) as u8) & 0xFE) | 1;
}

/// Adds `offset` (mod 2^33) to the PTS/DTS of PES number `first` (and, unless `only_one`,
/// every later one). Returns how many PES headers changed.
pub fn shift_timestamps(bytes: &mut [u8], first: usize, offset: i64, only_one: bool) -> usize {
    let starts = pes_starts(bytes);
    let mut n = 0;
    for &at in starts.iter().skip(first) {
        let Some((p, d)) = pes_timestamp_offsets(&bytes[at..]) else {
            continue;
        };
        for off in std::iter::once(p).chain(d) {
            let slot = &mut bytes[at + off..at + off + 5];
            let v = (read_ts(slot) as i64 + offset).rem_euclid(TS_WRAP);
            write_ts(slot, v as u64);
        }
        n += 1;
        if only_one {
            break;
        }
    }
    n
}

/// Adds `offset` (mod 2^33) to the base of every PCR.
pub fn shift_pcrs(bytes: &mut [u8], offset: i64) {
    for pkt in bytes.chunks_mut(TS_PACKET) {
        if pkt.len() < TS_PACKET || pkt[0] != 0x47 || (pkt[3] >> 4) & 2 == 0 {
            continue;
        }
        if pkt[4] < 7 || pkt[5] & 0x10 == 0 {
            continue;
        }
        let b = &mut pkt[6..12];
        let base = ((b[0] as u64) << 25)
            | ((b[1] as u64) << 17)
            | ((b[2] as u64) << 9)
            | ((b[3] as u64) << 1)
            | (b[4] as u64 >> 7);
        let v = (base as i64 + offset).rem_euclid(TS_WRAP) as u64;
        b[0] = (v >> 25) as u8;
        b[1] = (v >> 17) as u8;
        b[2] = (v >> 9) as u8;
        b[3] = (v >> 1) as u8;
        b[4] = (b[4] & 0x7F) | (((v & 1) as u8) << 7);
    }
}

// ---- running cases through the engine and the daemon ----

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use comine::transcode::{self, EncoderChoice, Input, Options, Profile, Request};
use tokio_util::sync::CancellationToken;

/// Panics on the harness's case threads and the engine's threads (all named `comine-…`)
/// since the harness started: the engine turns a worker's panic into an error, so an
/// outcome alone would hide it. Other tests' threads, which run beside it in the one test
/// binary and whose failures are their own, are not counted.
pub fn panics() -> u64 {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("comine-"))
            {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}
static PANICS: AtomicU64 = AtomicU64::new(0);

/// A real segment to mutate.
#[derive(Clone)]
pub struct Source {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub seconds: f64,
}

/// The harness's real segments: 1 s 320x180 H.264 in MPEG-TS with AAC (no B-frames), in
/// MPEG-TS without audio but with B-frames (so DTS differs from PTS), and in MP4.
pub fn sources() -> Vec<Source> {
    let pat = super::media::pattern(320, 180, "30");
    let make = |name: &'static str, audio: bool, extra: &[&str]| Source {
        name,
        bytes: std::fs::read(super::media::generate(name, &pat, 1.0, audio, extra))
            .expect("read a generated segment"),
        seconds: 1.0,
    };
    vec![
        make(
            "mut-180p-aac.ts",
            true,
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "30",
                "-c:a",
                "aac",
            ],
        ),
        make(
            "mut-180p-bframes.ts",
            false,
            &[
                "-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "15",
            ],
        ),
        make(
            "mut-180p-aac.mp4",
            true,
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-g",
                "30",
                "-c:a",
                "aac",
            ],
        ),
    ]
}

/// The ladder every case is transcoded to.
pub const LADDER: &str = "P144p30fps16x9,P240p30fps16x9";
/// Output frames a rendition may hold for a 1 s, 30 fps source however its timestamps
/// were mangled: the source's span three times over plus four seconds. A filled
/// timestamp gap (the field's bug) exceeds it by orders of magnitude.
pub fn frame_ceiling(seconds: f64) -> u64 {
    ((seconds * 3.0 + 4.0) * 30.0) as u64
}

/// How one case ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transcoded; the largest rendition's frame count.
    Done { frames: u64 },
    /// Refused as bad input (422 through the daemon), with the reason.
    Refused(String),
    /// Failed otherwise (our fault, or the engine's own bound), with the reason.
    Failed(String),
    /// Not answered within the harness's hang bound.
    Hung,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Done { .. } => "done",
            Verdict::Refused(_) => "refused",
            Verdict::Failed(_) => "failed",
            Verdict::Hung => "hung",
        }
    }
}

/// Totals over a run.
#[derive(Debug, Default)]
pub struct Tally {
    pub cases: u64,
    pub done: u64,
    pub refused: u64,
    pub failed: u64,
    /// (case, source, steps) for each case not answered within the bound.
    pub hangs: Vec<String>,
    /// Cases whose output broke the frame ceiling.
    pub overfilled: Vec<String>,
    /// Temporary or partial files left behind by a case that did not succeed.
    pub leaked: Vec<String>,
    pub walls_ms: Vec<u64>,
    /// Failure reasons, counted (first 80 characters).
    pub reasons: std::collections::BTreeMap<String, u64>,
    /// Cases that failed other than as bad input, with the whole reason (the first 50): an
    /// internal error on mutated input is a misclassified refusal or a bug, and its
    /// truncated reason did not say which.
    pub failures: Vec<String>,
    /// Warm runs: clean segments that did not come out as they do cold after a mutated
    /// one through the same session, and clean segments that reused the warm decoder.
    pub warm_mismatches: Vec<String>,
    pub warm_reused: u64,
}

impl Tally {
    pub fn add(&mut self, label: &str, verdict: &Verdict, wall: Duration, ceiling: u64) {
        self.cases += 1;
        self.walls_ms.push(wall.as_millis() as u64);
        match verdict {
            Verdict::Done { frames } => {
                self.done += 1;
                if *frames > ceiling {
                    self.overfilled
                        .push(format!("{label}: {frames} frames > {ceiling}"));
                }
            }
            Verdict::Refused(r) | Verdict::Failed(r) => {
                if matches!(verdict, Verdict::Refused(_)) {
                    self.refused += 1;
                } else {
                    self.failed += 1;
                    if self.failures.len() < 50 {
                        self.failures.push(format!("{label}: {r}"));
                    }
                }
                let key: String = r.chars().take(80).collect();
                *self.reasons.entry(key).or_default() += 1;
            }
            Verdict::Hung => self.hangs.push(label.to_string()),
        }
    }

    /// [`Tally::add`] for an engine case that wrote into `out`, which is checked for leaks
    /// (a failed case leaves nothing; a done one exactly its renditions) and removed.
    fn add_case(
        &mut self,
        label: &str,
        verdict: &Verdict,
        wall: Duration,
        ceiling: u64,
        out: &Path,
    ) {
        let left = files_under(out);
        let leaked: Vec<_> = match verdict {
            Verdict::Done { .. } => left.into_iter().filter(|f| f.ends_with(".tmp")).collect(),
            _ => left,
        };
        if !leaked.is_empty() {
            self.leaked.push(format!("{label}: {leaked:?}"));
        }
        let _ = std::fs::remove_dir_all(out);
        self.add(label, verdict, wall, ceiling);
    }

    pub fn wall_percentile(&self, p: f64) -> u64 {
        let mut v = self.walls_ms.clone();
        v.sort_unstable();
        v.get(((v.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    }

    pub fn summary(&self) -> String {
        format!(
            "{} cases: {} done, {} refused as bad input, {} failed otherwise; {} hangs, {} over the frame ceiling, {} leaked files; wall p50 {} ms, p99 {} ms, max {} ms",
            self.cases,
            self.done,
            self.refused,
            self.failed,
            self.hangs.len(),
            self.overfilled.len(),
            self.leaked.len(),
            self.wall_percentile(0.5),
            self.wall_percentile(0.99),
            self.walls_ms.iter().max().copied().unwrap_or(0)
        )
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Transcodes one mutated segment in this process, with no deadline of the caller's:
/// the engine's own bounds must end it. Past `hang_after` the case is a hang; the
/// harness then cancels it and waits up to 5 s more before giving up on the thread.
pub fn engine_case(bytes: Vec<u8>, out_dir: &Path, hang_after: Duration) -> (Verdict, Duration) {
    let (verdict, wall, _) = engine_case_in(bytes, out_dir, hang_after, None);
    (verdict, wall)
}

/// [`engine_case`] as the next segment of a stream whose warm `session` it uses (and gives
/// back, unless the case hung: a hung thread keeps it).
pub fn engine_case_in(
    bytes: Vec<u8>,
    out_dir: &Path,
    hang_after: Duration,
    session: Option<transcode::WarmSession>,
) -> (Verdict, Duration, Option<transcode::WarmSession>) {
    let cancel = CancellationToken::new();
    let request = Request {
        input: Input::Memory(bytes.into()),
        profiles: Profile::parse_list(LADDER).expect("ladder"),
        out_dir: out_dir.to_path_buf(),
        options: Options {
            encoder: EncoderChoice::X264,
            x264_preset: "ultrafast".into(),
            cancel: cancel.clone(),
            ..Options::default()
        },
    };
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("comine-mutate-case".into())
        .spawn(move || {
            let r = match session {
                Some(mut s) => {
                    let r = transcode::transcode_warm(&request, &mut s);
                    (r, Some(s))
                }
                None => (transcode::transcode(&request), None),
            };
            let _ = tx.send(r);
        });
    spawned.expect("spawn a case thread");
    let (result, session) = match rx.recv_timeout(hang_after) {
        Ok(r) => r,
        Err(_) => {
            cancel.cancel();
            let _ = rx.recv_timeout(Duration::from_secs(5));
            return (Verdict::Hung, started.elapsed(), None);
        }
    };
    let wall = started.elapsed();
    let verdict = match result {
        Ok(report) => Verdict::Done {
            frames: report
                .renditions
                .iter()
                .map(|r| r.frames)
                .max()
                .unwrap_or(0),
        },
        Err(e) if e.is_bad_input() => Verdict::Refused(e.to_string()),
        Err(e) => Verdict::Failed(e.to_string()),
    };
    (verdict, wall, session)
}

/// Runs cases `range` of `seed` through warm sessions, one per source (a stream keeps its
/// format): each mutated case is a segment of its source's stream, and the clean source
/// follows it through the same session. The clean segment must come out exactly as it does
/// cold: a decoder left in a bad state by a damaged segment would show there.
pub fn run_engine_warm(
    seed: u64,
    range: std::ops::Range<u64>,
    sources: &[Source],
    hang_after: Duration,
    mut progress: impl FnMut(u64, &Tally),
) -> Tally {
    let mut tally = Tally::default();
    let root = tempfile::tempdir().expect("tempdir");
    let cold: Vec<Verdict> = sources
        .iter()
        .map(|src| engine_case(src.bytes.clone(), &root.path().join("cold"), hang_after).0)
        .collect();
    let mut sessions: Vec<(i64, Option<transcode::WarmSession>)> =
        sources.iter().map(|_| (0, None)).collect();
    for i in range {
        let k = (i % sources.len() as u64) as usize;
        let src = &sources[k];
        let m = case(&src.bytes, seed, i);
        let label = format!(
            "warm case {i} of seed {seed} on {}: {}",
            src.name,
            m.steps.join(", ")
        );
        let out = root.path().join(format!("c{i}"));
        let (seq, session) = &mut sessions[k];
        let mut s = session.take().unwrap_or_default();
        s.follow(*seq);
        *seq += 1;
        let (verdict, wall, back) = engine_case_in(m.bytes, &out, hang_after, Some(s));
        tally.add_case(&label, &verdict, wall, frame_ceiling(src.seconds), &out);
        // The clean segment next, through whatever the case left warm.
        let mut s = back.unwrap_or_default();
        s.follow(*seq);
        *seq += 1;
        let opens = s.decoder_opens();
        let (clean, _, back) = engine_case_in(src.bytes.clone(), &out, hang_after, Some(s));
        let _ = std::fs::remove_dir_all(&out);
        if back.as_ref().is_some_and(|s| s.decoder_opens() == opens) {
            tally.warm_reused += 1;
        }
        if clean != cold[k] {
            tally.warm_mismatches.push(format!(
                "{label}: the clean segment after it gave {clean:?}, cold {:?}",
                cold[k]
            ));
        }
        *session = back;
        progress(i, &tally);
    }
    tally
}

/// Runs cases `range` of `seed` through the engine, cycling over `sources`.
pub fn run_engine(
    seed: u64,
    range: std::ops::Range<u64>,
    sources: &[Source],
    hang_after: Duration,
    mut progress: impl FnMut(u64, &Tally),
) -> Tally {
    let mut tally = Tally::default();
    let root = tempfile::tempdir().expect("tempdir");
    for i in range {
        let src = &sources[(i % sources.len() as u64) as usize];
        let m = case(&src.bytes, seed, i);
        let label = format!(
            "case {i} of seed {seed} on {}: {}",
            src.name,
            m.steps.join(", ")
        );
        let out = root.path().join(format!("c{i}"));
        let (verdict, wall) = engine_case(m.bytes, &out, hang_after);
        tally.add_case(&label, &verdict, wall, frame_ceiling(src.seconds), &out);
        progress(i, &tally);
    }
    tally
}

/// Posts cases `range` of `seed` to a running daemon's `/v1/transcode` (sync), `parallel`
/// at a time; every fourth case is `live` with its declared duration, the rest `batch`.
pub async fn run_daemon(
    d: &super::Daemon,
    seed: u64,
    range: std::ops::Range<u64>,
    sources: &[Source],
    parallel: usize,
    hang_after: Duration,
    mut progress: impl FnMut(u64, &Tally),
) -> Tally {
    let mut tally = Tally::default();
    let mut running = tokio::task::JoinSet::new();
    let mut next = range.start;
    loop {
        while running.len() < parallel.max(1) && next < range.end {
            let i = next;
            next += 1;
            let src = &sources[(i % sources.len() as u64) as usize];
            let m = case(&src.bytes, seed, i);
            let label = format!(
                "case {i} of seed {seed} on {}: {}",
                src.name,
                m.steps.join(", ")
            );
            let class = if i.is_multiple_of(4) { "live" } else { "batch" };
            let ms = (src.seconds * 1000.0) as u64;
            let req = d
                .http
                .post(d.url(&format!(
                    "/v1/transcode?profiles={LADDER}&class={class}&duration_ms={ms}&manifest_id=mut{seed}&seq={i}"
                )))
                .bearer_auth(&d.token)
                .timeout(hang_after)
                .body(m.bytes);
            let ceiling = frame_ceiling(src.seconds);
            running.spawn(async move {
                let started = Instant::now();
                let verdict = match req.send().await {
                    Err(e) if e.is_timeout() => Verdict::Hung,
                    Err(e) => Verdict::Failed(format!("HTTP error: {e}")),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        match status {
                            200 => Verdict::Done {
                                frames: body["renditions"]
                                    .as_array()
                                    .map(|a| {
                                        a.iter()
                                            .filter_map(|r| r["frames"].as_u64())
                                            .max()
                                            .unwrap_or(0)
                                    })
                                    .unwrap_or(0),
                            },
                            422 => Verdict::Refused(body["error"].to_string()),
                            _ => Verdict::Failed(format!("HTTP {status}: {}", body["error"])),
                        }
                    }
                };
                (label, verdict, started.elapsed(), ceiling, i)
            });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (label, verdict, wall, ceiling, i) = joined.expect("a harness task panicked");
        tally.add(&label, &verdict, wall, ceiling);
        progress(i, &tally);
    }
    // Every answered job has left the spool and its work directory.
    for sub in ["spool", "work"] {
        for f in files_under(&d.data.join(sub)) {
            tally.leaked.push(f);
        }
    }
    tally
}
