//! A start-up probe of the encoder on one device (`comine run --test-transcoder`), as
//! go-livepeer's `-testTranscoder` does: open the encoder the config asks for, as many
//! sessions at once as one Livepeer session's ladder needs, and encode a few frames through
//! each. A driver that cannot open NVENC, or a session cap below one ladder, is found at
//! start instead of on the first paid segment. It uses the engine's own encoder choice and
//! fallback reporting (`super::encoder::open`): under `auto` a rung that fell back to
//! libx264 is reported with libav's reason.

use ffmpeg_next::{format::Pixel, frame, Packet, Rational};

use super::encoder::{self, Setup};
use super::{EncoderChoice, Profile, TranscodeError};

/// What one device's probe found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProbeReport {
    pub gpu: u32,
    /// Sessions opened at once.
    pub sessions: u32,
    /// The encoder each session ended up with (`h264_nvenc` or `libx264`).
    pub encoders: Vec<&'static str>,
    /// Frames encoded per session.
    pub frames: u64,
    /// Why NVENC was not used under `auto` (libav's words), if it was not.
    pub fallback_reason: Option<String>,
}

impl ProbeReport {
    /// True when every session runs on NVENC.
    pub fn all_nvenc(&self) -> bool {
        !self.encoders.is_empty() && self.encoders.iter().all(|e| *e == encoder::NVENC)
    }
}

const FRAMES: u64 = 8;

/// Opens `sessions` encoders at once on `gpu` with `choice` (144p, so the probe costs little
/// GPU memory) and encodes `FRAMES` frames through each.
pub fn encoder(
    choice: EncoderChoice,
    gpu: u32,
    sessions: u32,
    x264_preset: &str,
) -> Result<ProbeReport, TranscodeError> {
    let profile = Profile::parse("P144p30fps16x9")?;
    let (w, h) = (profile.width, profile.height);
    let rate = Rational::new(30, 1);
    let mut opened = Vec::new();
    for _ in 0..sessions.max(1) {
        opened.push(encoder::open(
            choice,
            &Setup {
                profile: &profile,
                width: w,
                height: h,
                time_base: Rational::new(1, 30),
                frame_rate: rate,
                global_header: false,
                gpu,
                x264_preset,
                threads: 1,
            },
        )?);
    }
    let mut report = ProbeReport {
        gpu,
        sessions: sessions.max(1),
        encoders: opened.iter().map(|o| o.name).collect(),
        frames: 0,
        fallback_reason: opened.iter().find_map(|o| o.fallback_reason.clone()),
    };
    let mut picture = frame::Video::new(Pixel::YUV420P, w, h);
    for plane in 0..3 {
        picture
            .data_mut(plane)
            .fill(if plane == 0 { 96 } else { 128 });
    }
    let mut packet = Packet::empty();
    let mut encoded = 0u64;
    for o in &mut opened {
        let enc = &mut o.encoder;
        let fail = |e: ffmpeg_next::Error| TranscodeError::EncoderOpen {
            encoder: o.name.to_string(),
            profile: profile.name.clone(),
            reason: format!("probe encode failed: {e}"),
        };
        for i in 0..FRAMES {
            picture.set_pts(Some(i as i64));
            enc.send_frame(&picture).map_err(fail)?;
            while enc.receive_packet(&mut packet).is_ok() {
                encoded += 1;
            }
        }
        enc.send_eof().map_err(fail)?;
        while enc.receive_packet(&mut packet).is_ok() {
            encoded += 1;
        }
    }
    report.frames = encoded / u64::from(report.sessions);
    if report.frames < FRAMES {
        return Err(TranscodeError::EncoderOpen {
            encoder: report.encoders.first().copied().unwrap_or("?").to_string(),
            profile: profile.name.clone(),
            reason: format!(
                "the probe got {} of {FRAMES} frames back per session",
                report.frames
            ),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x264_probe_encodes_every_frame_of_every_session() {
        let r = encoder(EncoderChoice::X264, 0, 2, "ultrafast").unwrap();
        assert_eq!(r.encoders, vec!["libx264", "libx264"]);
        assert_eq!(r.frames, FRAMES);
        assert!(r.fallback_reason.is_none());
        assert!(!r.all_nvenc());
    }

    #[test]
    fn nvenc_probe_fails_with_the_reason_on_a_host_without_nvenc() {
        // This machine has no NVIDIA GPU: `nvenc` must fail with libav's reason and `auto`
        // must report the fallback (on a GPU host, both open NVENC instead).
        match encoder(EncoderChoice::Nvenc, 0, 1, "ultrafast") {
            Err(e) => assert!(!e.to_string().is_empty()),
            Ok(r) => assert!(r.all_nvenc(), "{r:?}"),
        }
        let r = encoder(EncoderChoice::Auto, 0, 1, "ultrafast").unwrap();
        assert!(r.all_nvenc() || r.fallback_reason.is_some(), "{r:?}");
    }
}
