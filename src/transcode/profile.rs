//! Rendition profiles: Livepeer's preset ladder, custom rungs, and output-size fitting.
//!
//! A profile is a *box*: the rendition keeps the source's display aspect ratio inside
//! it, with even dimensions, and is never stretched or upscaled.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Output container of one rendition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Container {
    MpegTs,
    Mp4,
}

impl Container {
    pub fn extension(self) -> &'static str {
        match self {
            Container::MpegTs => "ts",
            Container::Mp4 => "mp4",
        }
    }
    /// libavformat muxer name.
    pub fn muxer(self) -> &'static str {
        match self {
            Container::MpegTs => "mpegts",
            Container::Mp4 => "mp4",
        }
    }
    pub fn mime(self) -> &'static str {
        match self {
            Container::MpegTs => "video/mp2t",
            Container::Mp4 => "video/mp4",
        }
    }
}

/// Key-frame interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gop {
    /// One second of frames, the Livepeer benchmark ladder's choice.
    Default,
    /// Every frame is a key frame (Livepeer's GOP of -1).
    Intra,
    /// Key frame every N milliseconds.
    Millis(u32),
}

/// H.264 profile, as Livepeer's `VideoProfile.profile` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum H264Profile {
    /// Let the encoder pick (libx264: high).
    Default,
    Baseline,
    Main,
    High,
    /// High without B-frames, what Livepeer uses for low-latency playback.
    ConstrainedHigh,
}

/// Output video codec. Only H.264 is encoded today; the others are parsed so that a
/// Livepeer profile asking for them is refused with a clear reason instead of misread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    H264,
    H265,
    Vp8,
    Vp9,
}

/// One rung of the ladder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub name: String,
    /// Box width; 0 keeps the source's.
    pub width: u32,
    /// Box height; 0 keeps the source's.
    pub height: u32,
    /// Frame rate numerator; 0 keeps the source's rate.
    pub fps_num: u32,
    pub fps_den: u32,
    /// Target bitrate in bits per second.
    pub bitrate: u64,
    pub gop: Gop,
    pub format: Container,
    pub h264_profile: H264Profile,
    pub codec: VideoCodec,
}

/// Livepeer LPMS presets: (name, width, height, fps, bitrate kbps).
const PRESETS: &[(&str, u32, u32, u32, u64)] = &[
    ("P144p30fps16x9", 256, 144, 30, 400),
    ("P144p25fps16x9", 256, 144, 25, 400),
    ("P240p30fps16x9", 426, 240, 30, 600),
    ("P240p25fps16x9", 426, 240, 25, 600),
    ("P240p30fps4x3", 320, 240, 30, 600),
    ("P360p30fps16x9", 640, 360, 30, 1200),
    ("P360p25fps16x9", 640, 360, 25, 1000),
    ("P360p30fps4x3", 480, 360, 30, 1000),
    ("P576p30fps16x9", 1024, 576, 30, 1500),
    ("P576p25fps16x9", 1024, 576, 25, 1500),
    ("P720p30fps16x9", 1280, 720, 30, 4000),
    ("P720p25fps16x9", 1280, 720, 25, 3500),
    ("P720p60fps16x9", 1280, 720, 60, 6000),
    ("P720p30fps4x3", 960, 720, 30, 3500),
    ("P1080p30fps16x9", 1920, 1080, 30, 6000),
];

/// The ladder `comine transcode` uses when no `--profiles` is given.
pub const DEFAULT_LADDER: &str = "P240p30fps16x9,P360p30fps16x9,P720p30fps16x9";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("unknown profile {name:?}; valid presets: {}; or a custom rung name:WxH@FPS:BITRATE (e.g. my480:854x480@30:1500k)", preset_names().join(", "))]
    Unknown { name: String },
    #[error("bad custom profile {spec:?}: {why}; expected name:WxH@FPS:BITRATE[:mp4][:gop=2s|intra][:profile=high], e.g. my480:854x480@30:1500k")]
    Malformed { spec: String, why: String },
    #[error("no profiles given; valid presets: {}", preset_names().join(", "))]
    Empty,
    #[error("two profiles are named {0:?}; each rendition needs its own file name")]
    Duplicate(String),
}

/// Names of every built-in preset, for error messages and `--help`.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

impl Profile {
    /// A Livepeer preset by exact name.
    pub fn preset(name: &str) -> Option<Profile> {
        PRESETS
            .iter()
            .find(|p| p.0 == name)
            .map(|&(name, width, height, fps, kbps)| Profile {
                name: name.to_string(),
                width,
                height,
                fps_num: fps,
                fps_den: 1,
                bitrate: kbps * 1000,
                gop: Gop::Default,
                format: Container::MpegTs,
                h264_profile: H264Profile::Default,
                codec: VideoCodec::H264,
            })
    }

    /// A preset name or a custom rung `name:WxH@FPS:BITRATE[:opts…]`.
    pub fn parse(spec: &str) -> Result<Profile, ProfileError> {
        let spec = spec.trim();
        if !spec.contains(':') {
            return Profile::preset(spec).ok_or_else(|| ProfileError::Unknown {
                name: spec.to_string(),
            });
        }
        let bad = |why: &str| ProfileError::Malformed {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default();
        if !valid_name(name) {
            return Err(bad(
                "the name must be 1-64 characters of letters, digits, '_', '-' or '.'",
            ));
        }
        let geometry = parts.next().ok_or_else(|| bad("missing WxH@FPS"))?;
        let (size, fps) = geometry
            .split_once('@')
            .ok_or_else(|| bad("missing @FPS after the size"))?;
        let (w, h) = size
            .split_once(['x', 'X'])
            .ok_or_else(|| bad("size must be WxH"))?;
        let width: u32 = w.parse().map_err(|_| bad("width is not a number"))?;
        let height: u32 = h.parse().map_err(|_| bad("height is not a number"))?;
        if width > 8192 || height > 8192 {
            return Err(bad("width and height must be at most 8192"));
        }
        let (fps_num, fps_den) = parse_fps(fps).ok_or_else(|| bad("FPS must be N, N/D or 0"))?;
        let bitrate = parts
            .next()
            .and_then(parse_bitrate)
            .ok_or_else(|| bad("BITRATE must be a number with an optional k or M suffix"))?;
        let mut profile = Profile {
            name: name.to_string(),
            width,
            height,
            fps_num,
            fps_den,
            bitrate,
            gop: Gop::Default,
            format: Container::MpegTs,
            h264_profile: H264Profile::Default,
            codec: VideoCodec::H264,
        };
        for opt in parts {
            match opt.split_once('=') {
                None if opt == "mp4" => profile.format = Container::Mp4,
                None if opt == "ts" => profile.format = Container::MpegTs,
                Some(("gop", v)) => profile.gop = parse_gop(v).ok_or_else(|| bad("bad gop"))?,
                Some(("profile", v)) => {
                    profile.h264_profile = match v {
                        "baseline" => H264Profile::Baseline,
                        "main" => H264Profile::Main,
                        "high" => H264Profile::High,
                        "constrained-high" => H264Profile::ConstrainedHigh,
                        _ => {
                            return Err(bad(
                                "profile must be baseline, main, high or constrained-high",
                            ))
                        }
                    }
                }
                _ => return Err(bad(&format!("unknown option {opt:?}"))),
            }
        }
        Ok(profile)
    }

    /// A comma-separated list, as `--profiles` takes it.
    pub fn parse_list(list: &str) -> Result<Vec<Profile>, ProfileError> {
        let profiles = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(Profile::parse)
            .collect::<Result<Vec<_>, _>>()?;
        validate_ladder(&profiles)?;
        Ok(profiles)
    }

    /// Frame rate as a float, or None when the source's rate is kept.
    pub fn fps(&self) -> Option<f64> {
        (self.fps_num > 0 && self.fps_den > 0).then(|| self.fps_num as f64 / self.fps_den as f64)
    }

    /// File name of this rendition inside the output directory.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.name, self.format.extension())
    }
}

/// A ladder must be non-empty with unique names (names become file names).
pub fn validate_ladder(profiles: &[Profile]) -> Result<(), ProfileError> {
    if profiles.is_empty() {
        return Err(ProfileError::Empty);
    }
    for (i, p) in profiles.iter().enumerate() {
        if profiles[..i].iter().any(|q| q.name == p.name) {
            return Err(ProfileError::Duplicate(p.name.clone()));
        }
    }
    Ok(())
}

impl FromStr for Profile {
    type Err = ProfileError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Profile::parse(s)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}x{}@{}/{}:{}",
            self.name, self.width, self.height, self.fps_num, self.fps_den, self.bitrate
        )
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_fps(s: &str) -> Option<(u32, u32)> {
    if s == "source" {
        return Some((0, 1));
    }
    let (n, d) = match s.split_once('/') {
        Some((n, d)) => (n.parse().ok()?, d.parse().ok()?),
        None => (s.parse().ok()?, 1),
    };
    // The cap is on the rate itself (30000/1001 is ~29.97 fps), not on the numerator.
    (d > 0 && n / d <= 240).then_some((n, d))
}

fn parse_bitrate(s: &str) -> Option<u64> {
    let (digits, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1_000),
        b'm' | b'M' => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    let v: u64 = digits.parse().ok()?;
    let bps = v.checked_mul(mult)?;
    (1_000..=200_000_000).contains(&bps).then_some(bps)
}

fn parse_gop(s: &str) -> Option<Gop> {
    if s == "intra" {
        return Some(Gop::Intra);
    }
    let ms = if let Some(v) = s.strip_suffix("ms") {
        v.parse::<u32>().ok()?
    } else if let Some(v) = s.strip_suffix('s') {
        (v.parse::<f64>().ok()? * 1000.0).round() as u32
    } else {
        return None;
    };
    (ms > 0).then_some(Gop::Millis(ms))
}

/// Output size for a source of `src_w`×`src_h` storage pixels with sample aspect
/// ratio `sar` (num, den; 0/x means square) inside a `box_w`×`box_h` box.
///
/// Keeps the display aspect ratio, rounds to even numbers (4:2:0 chroma needs them),
/// never exceeds the box and never upscales beyond the source's display size.
pub fn fit_dimensions(
    src_w: u32,
    src_h: u32,
    sar: (i32, i32),
    box_w: u32,
    box_h: u32,
) -> (u32, u32) {
    let (sn, sd) = if sar.0 > 0 && sar.1 > 0 { sar } else { (1, 1) };
    // Display size in square pixels.
    let disp_w = src_w as f64 * sn as f64 / sd as f64;
    let disp_h = src_h as f64;
    let bw = if box_w == 0 {
        f64::INFINITY
    } else {
        box_w as f64
    };
    let bh = if box_h == 0 {
        f64::INFINITY
    } else {
        box_h as f64
    };
    let scale = (bw / disp_w).min(bh / disp_h).min(1.0);
    // Round to the nearest even number, but never past the box or the source itself.
    let even = |v: f64, cap: f64| -> u32 {
        let cap_even = ((cap.floor() as u32) & !1).max(2);
        (((v / 2.0).round() as u32) * 2).clamp(2, cap_even)
    };
    (
        even(disp_w * scale, bw.min(disp_w)),
        even(disp_h * scale, bh.min(disp_h)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_with_livepeer_values() {
        let p = Profile::parse("P720p60fps16x9").unwrap();
        assert_eq!(
            (p.width, p.height, p.fps_num, p.bitrate),
            (1280, 720, 60, 6_000_000)
        );
        let ladder = Profile::parse_list(DEFAULT_LADDER).unwrap();
        let names: Vec<_> = ladder.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["P240p30fps16x9", "P360p30fps16x9", "P720p30fps16x9"]
        );
    }

    #[test]
    fn custom_rung_with_options() {
        let p = Profile::parse("my480:854x480@30000/1001:1.5M").err();
        assert!(p.is_some(), "fractional M is not accepted");
        let p =
            Profile::parse("my480:854x480@30000/1001:1500k:mp4:gop=2s:profile=constrained-high")
                .unwrap();
        assert_eq!(
            (p.width, p.height, p.fps_num, p.fps_den, p.bitrate),
            (854, 480, 30000, 1001, 1_500_000)
        );
        assert_eq!(p.format, Container::Mp4);
        assert_eq!(p.gop, Gop::Millis(2000));
        assert_eq!(p.h264_profile, H264Profile::ConstrainedHigh);
        assert_eq!(p.file_name(), "my480.mp4");
    }

    #[test]
    fn unknown_profile_lists_valid_ones() {
        let err = Profile::parse_list("P240p30fps16x9,P999p").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("P999p") && msg.contains("P720p30fps16x9"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_and_duplicate_rungs_are_rejected() {
        for bad in [
            "x:10x@30:1k",
            "x:10x10@30:abc",
            "../evil:10x10@30:100k",
            "x:10x10@30",
            "x:10x10@30:100k:gop=zz",
        ] {
            assert!(Profile::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            Profile::parse_list("P240p30fps16x9,P240p30fps16x9"),
            Err(ProfileError::Duplicate("P240p30fps16x9".into()))
        );
        assert_eq!(Profile::parse_list(" , "), Err(ProfileError::Empty));
    }

    #[test]
    fn fitting_keeps_aspect_even_and_inside_box() {
        // 16:9 into 16:9.
        assert_eq!(fit_dimensions(1920, 1080, (1, 1), 1280, 720), (1280, 720));
        // Odd source 853x479 into 640x360.
        let (w, h) = fit_dimensions(853, 479, (1, 1), 640, 360);
        assert!(w <= 640 && h <= 360 && w % 2 == 0 && h % 2 == 0, "{w}x{h}");
        assert!(((w as f64 / h as f64) - 853.0 / 479.0).abs() < 0.02);
        // 4:3 source into a 16:9 box: pillarboxed size, never stretched.
        assert_eq!(fit_dimensions(640, 480, (1, 1), 1280, 720), (640, 480));
        assert_eq!(fit_dimensions(1440, 1080, (1, 1), 1280, 720), (960, 720));
        // Portrait.
        assert_eq!(fit_dimensions(1080, 1920, (1, 1), 1280, 720), (406, 720));
        // Anamorphic 720x576 with SAR 16:15 displays as 768x576.
        assert_eq!(fit_dimensions(720, 576, (16, 15), 640, 360), (480, 360));
        // Never upscale; keep-source box rounds odd sizes down to even.
        assert_eq!(fit_dimensions(320, 180, (1, 1), 1280, 720), (320, 180));
        assert_eq!(fit_dimensions(853, 479, (1, 1), 0, 0), (852, 478));
    }
}
