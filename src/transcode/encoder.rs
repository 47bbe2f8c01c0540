//! Opening one rendition's H.264 encoder: NVENC first under `auto`, libx264 otherwise,
//! with NVENC failures explained from libav's log rather than its errno.

use ffmpeg_next::{codec, encoder, format::Pixel, Dictionary, Rational};

use super::{avlog, EncoderChoice, Gop, H264Profile, Profile, TranscodeError, VideoCodec};

pub const NVENC: &str = "h264_nvenc";
pub const X264: &str = "libx264";

/// Everything an encoder needs besides the profile.
pub struct Setup<'a> {
    pub profile: &'a Profile,
    pub width: u32,
    pub height: u32,
    pub time_base: Rational,
    pub frame_rate: Rational,
    pub global_header: bool,
    pub gpu: u32,
    pub x264_preset: &'a str,
    /// libx264 threads for this rendition (0: libx264's own choice).
    pub threads: usize,
}

pub struct Opened {
    pub encoder: encoder::video::Encoder,
    pub name: &'static str,
    /// Set when `auto` wanted NVENC and fell back to libx264.
    pub fallback_reason: Option<String>,
    /// The fallback happened because NVENC cannot open on this host at all (as opposed
    /// to the driver's session cap), so further rungs need not try it.
    pub nvenc_unavailable: bool,
}

/// Opens the encoder `choice` asks for.
pub fn open(choice: EncoderChoice, setup: &Setup) -> Result<Opened, TranscodeError> {
    if setup.profile.codec != VideoCodec::H264 {
        return Err(TranscodeError::UnsupportedCodec {
            profile: setup.profile.name.clone(),
            codec: setup.profile.codec,
        });
    }
    match choice {
        EncoderChoice::X264 => open_named(X264, setup).map(|encoder| Opened {
            encoder,
            name: X264,
            fallback_reason: None,
            nvenc_unavailable: false,
        }),
        EncoderChoice::Nvenc => open_nvenc(setup).map(|encoder| Opened {
            encoder,
            name: NVENC,
            fallback_reason: None,
            nvenc_unavailable: false,
        }),
        EncoderChoice::Auto => match open_nvenc(setup) {
            Ok(encoder) => Ok(Opened {
                encoder,
                name: NVENC,
                fallback_reason: None,
                nvenc_unavailable: false,
            }),
            Err(nvenc_err) => {
                let nvenc_unavailable =
                    !matches!(nvenc_err, TranscodeError::NvencSessionCap { .. });
                let reason = nvenc_err.to_string();
                tracing::info!(profile = %setup.profile.name, %reason, "NVENC unavailable, encoding with libx264");
                let encoder = open_named(X264, setup)?;
                Ok(Opened {
                    encoder,
                    name: X264,
                    fallback_reason: Some(reason),
                    nvenc_unavailable,
                })
            }
        },
    }
}

fn open_nvenc(setup: &Setup) -> Result<encoder::video::Encoder, TranscodeError> {
    if encoder::find_by_name(NVENC).is_none() {
        return Err(TranscodeError::NvencUnavailable {
            gpu: setup.gpu,
            reason: "this FFmpeg build has no h264_nvenc encoder".into(),
        });
    }
    open_named(NVENC, setup).map_err(|e| match e {
        TranscodeError::EncoderOpen { reason, .. } => classify_nvenc_failure(setup.gpu, reason),
        other => other,
    })
}

/// Turns libav's NVENC log into an operator-facing error. The driver's session cap
/// surfaces as `OpenEncodeSessionEx failed: out of memory (10)` and errno ENOMEM,
/// which go-livepeer passes on as "Cannot allocate memory".
pub fn classify_nvenc_failure(gpu: u32, reason: String) -> TranscodeError {
    let lower = reason.to_ascii_lowercase();
    if lower.contains("openencodesessionex failed: out of memory")
        || lower.contains("incompatible client key")
        || lower.contains("too many concurrent sessions")
    {
        TranscodeError::NvencSessionCap {
            gpu,
            detail: reason,
        }
    } else {
        TranscodeError::NvencUnavailable { gpu, reason }
    }
}

fn open_named(
    name: &'static str,
    setup: &Setup,
) -> Result<encoder::video::Encoder, TranscodeError> {
    let p = setup.profile;
    let fail = |reason: String| TranscodeError::EncoderOpen {
        encoder: name.to_string(),
        profile: p.name.clone(),
        reason,
    };
    let codec = encoder::find_by_name(name)
        .ok_or_else(|| fail(format!("this FFmpeg build has no {name} encoder")))?;
    let mut enc = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(|e| fail(e.to_string()))?;
    enc.set_width(setup.width);
    enc.set_height(setup.height);
    enc.set_format(Pixel::YUV420P);
    enc.set_time_base(setup.time_base);
    enc.set_frame_rate(Some(setup.frame_rate));
    enc.set_aspect_ratio(Rational::new(1, 1));
    enc.set_bit_rate(p.bitrate as usize);
    enc.set_gop(keyint(p.gop, setup.frame_rate));
    if matches!(
        p.h264_profile,
        H264Profile::Baseline | H264Profile::ConstrainedHigh
    ) || p.gop == Gop::Intra
    {
        enc.set_max_b_frames(0);
    }
    if setup.global_header {
        enc.set_flags(codec::Flags::GLOBAL_HEADER);
    }
    let mut opts = Dictionary::new();
    // A forced key frame (the segment's first) is an IDR, so every segment starts clean.
    opts.set("forced-idr", "1");
    if let Some(prof) = profile_name(p.h264_profile) {
        opts.set("profile", prof);
    }
    if name == NVENC {
        opts.set("gpu", &setup.gpu.to_string());
        opts.set("preset", "p4");
        opts.set("tune", "ll");
    } else {
        opts.set("preset", setup.x264_preset);
        if setup.threads > 0 {
            opts.set("threads", &setup.threads.to_string());
        }
    }
    let (result, lines) = avlog::capture(|| enc.open_with(opts));
    result.map_err(|e| {
        let detail = avlog::summarize(&lines).unwrap_or_default();
        if detail.is_empty() {
            fail(e.to_string())
        } else {
            fail(format!("{detail} ({e})"))
        }
    })
}

/// Frames between key frames for a GOP setting at `fps`.
pub fn keyint(gop: Gop, fps: Rational) -> u32 {
    let fps = if fps.numerator() > 0 && fps.denominator() > 0 {
        fps.numerator() as f64 / fps.denominator() as f64
    } else {
        30.0
    };
    match gop {
        Gop::Intra => 1,
        Gop::Default => fps.round().max(1.0) as u32,
        Gop::Millis(ms) => ((ms as f64 / 1000.0) * fps).round().max(1.0) as u32,
    }
}

fn profile_name(p: H264Profile) -> Option<&'static str> {
    match p {
        H264Profile::Default => None,
        H264Profile::Baseline => Some("baseline"),
        H264Profile::Main => Some("main"),
        H264Profile::High | H264Profile::ConstrainedHigh => Some("high"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cap_is_named_as_such() {
        let e = classify_nvenc_failure(
            1,
            "[h264_nvenc @ 0x1] OpenEncodeSessionEx failed: out of memory (10): (no details)"
                .into(),
        );
        assert!(matches!(e, TranscodeError::NvencSessionCap { gpu: 1, .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("session limit") && !msg.starts_with("Cannot allocate"),
            "{msg}"
        );
        let e = classify_nvenc_failure(0, "Cannot load libcuda.so.1".into());
        assert!(matches!(e, TranscodeError::NvencUnavailable { .. }));
    }

    #[test]
    fn keyint_follows_gop() {
        assert_eq!(keyint(Gop::Default, Rational::new(30, 1)), 30);
        assert_eq!(keyint(Gop::Millis(2000), Rational::new(30000, 1001)), 60);
        assert_eq!(keyint(Gop::Intra, Rational::new(60, 1)), 1);
    }
}
