//! Maps the orchestrator's `VideoProfile`s onto the transcoding engine's [`Profile`]s
//! (the daemon's side of the Livepeer boundary: the protocol module knows no engine).

use crate::livepeer::proto::{self, VideoProfile};
use crate::transcode::{Container, Gop, H264Profile, Profile, VideoCodec};

/// Engine profiles, in the orchestrator's order. Rendition `i` is named `r{i}` on disk:
/// orchestrator names are not trusted as file names and may repeat across formats.
pub fn to_engine(profiles: &[VideoProfile]) -> Result<Vec<Profile>, String> {
    if profiles.is_empty() {
        return Err("segment carries no profiles (fullProfiles3/2/1 are all empty)".into());
    }
    profiles
        .iter()
        .enumerate()
        .map(|(i, p)| map_one(i, p))
        .collect()
}

fn map_one(index: usize, p: &VideoProfile) -> Result<Profile, String> {
    let bad = |why: String| format!("profile {index} ({:?}): {why}", p.name);
    let width = u32::try_from(p.width).map_err(|_| bad(format!("negative width {}", p.width)))?;
    let height =
        u32::try_from(p.height).map_err(|_| bad(format!("negative height {}", p.height)))?;
    if width > 8192 || height > 8192 {
        return Err(bad(format!("{width}x{height} is above 8192 pixels a side")));
    }
    if p.bitrate <= 0 {
        return Err(bad(format!("bitrate must be positive, got {}", p.bitrate)));
    }
    let fps_den = if p.fps_den == 0 { 1 } else { p.fps_den };
    if f64::from(p.fps) / f64::from(fps_den) > 240.0 {
        return Err(bad(format!("frame rate {}/{fps_den} is above 240", p.fps)));
    }
    let gop = match p.gop {
        -1 => Gop::Intra,
        0 => Gop::Default,
        ms if ms > 0 => Gop::Millis(ms as u32),
        other => {
            return Err(bad(format!(
                "gop {other} ms is invalid (-1 = intra, 0 = default)"
            )))
        }
    };
    let format = match proto::Format::try_from(p.format) {
        Ok(proto::Format::Mpegts) => Container::MpegTs,
        Ok(proto::Format::Mp4) => Container::Mp4,
        Err(_) => return Err(bad(format!("unknown format {}", p.format))),
    };
    let h264_profile = match proto::H264Profile::try_from(p.profile) {
        Ok(proto::H264Profile::EncoderDefault) => H264Profile::Default,
        Ok(proto::H264Profile::H264Baseline) => H264Profile::Baseline,
        Ok(proto::H264Profile::H264Main) => H264Profile::Main,
        Ok(proto::H264Profile::H264High) => H264Profile::High,
        Ok(proto::H264Profile::H264ConstrainedHigh) => H264Profile::ConstrainedHigh,
        Err(_) => return Err(bad(format!("unknown H.264 profile {}", p.profile))),
    };
    let codec = match proto::VideoCodec::try_from(p.encoder) {
        Ok(proto::VideoCodec::H264) => VideoCodec::H264,
        Ok(proto::VideoCodec::H265) => VideoCodec::H265,
        Ok(proto::VideoCodec::Vp8) => VideoCodec::Vp8,
        Ok(proto::VideoCodec::Vp9) => VideoCodec::Vp9,
        Ok(proto::VideoCodec::Av1) | Err(_) => {
            return Err(bad(format!(
                "codec {} is not supported; comine encodes H.264",
                p.encoder
            )))
        }
    };
    Ok(Profile {
        name: format!("r{index}"),
        width,
        height,
        fps_num: p.fps,
        fps_den,
        bitrate: p.bitrate as u64,
        gop,
        format,
        h264_profile,
        codec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vp(name: &str) -> VideoProfile {
        VideoProfile {
            name: name.into(),
            width: 640,
            height: 360,
            bitrate: 1_200_000,
            fps: 30,
            fps_den: 1,
            ..Default::default()
        }
    }

    #[test]
    fn maps_every_field() {
        let mut p = vp("P360p30fps16x9");
        p.width = 0;
        p.height = 0;
        p.fps = 0;
        p.fps_den = 0;
        p.gop = -1;
        p.format = proto::Format::Mp4 as i32;
        p.profile = proto::H264Profile::H264ConstrainedHigh as i32;
        let e = &to_engine(&[vp("a"), p]).unwrap()[1];
        assert_eq!(e.name, "r1");
        assert_eq!((e.width, e.height, e.fps_num, e.fps_den), (0, 0, 0, 1));
        assert_eq!(e.bitrate, 1_200_000);
        assert_eq!(e.gop, Gop::Intra);
        assert_eq!(e.format, Container::Mp4);
        assert_eq!(e.h264_profile, H264Profile::ConstrainedHigh);
        let mut q = vp("g");
        q.gop = 2000;
        q.fps = 30000;
        q.fps_den = 1001;
        q.encoder = proto::VideoCodec::H265 as i32;
        let e = &to_engine(&[q]).unwrap()[0];
        assert_eq!(
            (e.gop, e.fps_num, e.fps_den),
            (Gop::Millis(2000), 30000, 1001)
        );
        assert_eq!(e.codec, VideoCodec::H265);
    }

    #[test]
    fn rejects_bad_profiles_with_reasons() {
        assert!(to_engine(&[]).unwrap_err().contains("no profiles"));
        for (mutate, needle) in [
            (
                Box::new(|p: &mut VideoProfile| p.width = -2) as Box<dyn Fn(&mut VideoProfile)>,
                "negative width",
            ),
            (Box::new(|p: &mut VideoProfile| p.bitrate = 0), "bitrate"),
            (Box::new(|p: &mut VideoProfile| p.gop = -5), "gop"),
            (Box::new(|p: &mut VideoProfile| p.format = 7), "format"),
            (Box::new(|p: &mut VideoProfile| p.encoder = 4), "H.264"),
        ] {
            let mut p = vp("x");
            mutate(&mut p);
            let err = to_engine(&[p]).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }
}
