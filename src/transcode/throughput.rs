//! Throughput for calibration: how many pixels per second this host's encoder sustains for a
//! ladder, measured with the engine itself. The source clip is made in-process (libavfilter's
//! moving `testsrc2` pattern with temporal noise, encoded with libx264 ultrafast), so the
//! probe needs no FFmpeg command-line tool and no media file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ffmpeg_next::{filter, format, frame, picture, Packet, Rational};

use super::encoder::{self, Setup};
use super::{avlog, EncoderChoice, Input, Options, Profile, Request, TranscodeError};

/// What one probe measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// Encoded pixels per wall-clock second (decode included), the unit admission counts in.
    pub pixels_per_sec: f64,
    /// The encoder that ran (`libx264`, `h264_nvenc`).
    pub encoder: String,
    pub wall_ms: u64,
    /// CPU time this process spent meanwhile (every thread), ms.
    pub cpu_ms: u64,
    /// Encoded pixels of one run.
    pub encoded_pixels: u64,
}

impl Measured {
    /// Encoded pixels per second of CPU time: what one fully available core does.
    pub fn pixels_per_cpu_sec(&self) -> f64 {
        self.encoded_pixels as f64 / (self.cpu_ms.max(1) as f64 / 1000.0)
    }
}

/// CPU time of this process so far (user + system, all threads).
fn process_cpu_time() -> std::time::Duration {
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn ffmpeg_err(what: &'static str) -> impl Fn(ffmpeg_next::Error) -> TranscodeError {
    move |e| TranscodeError::Ffmpeg {
        what,
        reason: e.to_string(),
    }
}

/// Writes a `seconds`-long `width`x`height` H.264 MPEG-TS clip at `fps` to `out`.
pub fn synthetic_clip(
    width: u32,
    height: u32,
    fps: u32,
    seconds: u32,
    out: &Path,
) -> Result<(), TranscodeError> {
    avlog::install();
    ffmpeg_next::init().map_err(ffmpeg_err("initialising libav"))?;
    let mut graph = filter::Graph::new();
    let sink = filter::find("buffersink").ok_or(TranscodeError::Ffmpeg {
        what: "building the probe source",
        reason: "libavfilter has no buffersink".into(),
    })?;
    graph
        .add(&sink, "out", "")
        .map_err(ffmpeg_err("building the probe source"))?;
    let spec = format!(
        "testsrc2=size={width}x{height}:rate={fps}:duration={seconds},noise=alls=12:allf=t+u,format=yuv420p"
    );
    graph
        .input("out", 0)
        .and_then(|p| p.parse(&spec))
        .map_err(ffmpeg_err("building the probe source"))?;
    graph
        .validate()
        .map_err(ffmpeg_err("building the probe source"))?;

    let profile = Profile::parse(&format!("probe:{width}x{height}@{fps}:4000k")).map_err(|e| {
        TranscodeError::Ffmpeg {
            what: "describing the probe clip",
            reason: e.to_string(),
        }
    })?;
    let time_base = Rational::new(1, fps as i32);
    let frame_rate = Rational::new(fps as i32, 1);
    let out_err = |reason: String| TranscodeError::Output {
        path: out.display().to_string(),
        reason,
    };
    let mut octx = format::output_as(out, "mpegts").map_err(|e| out_err(e.to_string()))?;
    let mut opened = encoder::open(
        EncoderChoice::X264,
        &Setup {
            profile: &profile,
            width,
            height,
            time_base,
            frame_rate,
            global_header: false,
            gpu: 0,
            x264_preset: "ultrafast",
            threads: 0,
        },
    )?;
    let stream_tb = {
        let mut st = octx
            .add_stream(ffmpeg_next::encoder::find_by_name(opened.name))
            .map_err(|e| out_err(e.to_string()))?;
        st.set_parameters(&opened.encoder);
        st.set_time_base(time_base);
        st.index()
    };
    octx.write_header().map_err(|e| out_err(e.to_string()))?;
    let out_tb = octx
        .stream(stream_tb)
        .map(|s| s.time_base())
        .unwrap_or(time_base);
    let write = |enc: &mut ffmpeg_next::encoder::video::Encoder,
                 octx: &mut format::context::Output|
     -> Result<(), TranscodeError> {
        let mut packet = Packet::empty();
        while enc.receive_packet(&mut packet).is_ok() {
            packet.set_stream(stream_tb);
            packet.rescale_ts(time_base, out_tb);
            packet
                .write_interleaved(octx)
                .map_err(|e| out_err(e.to_string()))?;
        }
        Ok(())
    };
    let mut n = 0i64;
    let mut frame = frame::Video::empty();
    loop {
        let got = graph.get("out").map(|mut c| c.sink().frame(&mut frame));
        match got {
            Some(Ok(())) => {}
            Some(Err(ffmpeg_next::Error::Eof)) | None => break,
            Some(Err(ffmpeg_next::Error::Other { errno })) if errno == libc::EAGAIN => break,
            Some(Err(e)) => return Err(ffmpeg_err("generating the probe clip")(e)),
        }
        frame.set_pts(Some(n));
        frame.set_kind(if n == 0 {
            picture::Type::I
        } else {
            picture::Type::None
        });
        n += 1;
        opened
            .encoder
            .send_frame(&frame)
            .map_err(ffmpeg_err("encoding the probe clip"))?;
        write(&mut opened.encoder, &mut octx)?;
    }
    opened
        .encoder
        .send_eof()
        .map_err(ffmpeg_err("encoding the probe clip"))?;
    write(&mut opened.encoder, &mut octx)?;
    octx.write_trailer().map_err(|e| out_err(e.to_string()))?;
    if n == 0 {
        return Err(TranscodeError::NoFrames { decode_errors: 0 });
    }
    Ok(())
}

/// Transcodes `clip` to `ladder` twice (the first run warms caches and threads up) and
/// returns the second run's rate. Renditions go to `work`, removed afterwards.
pub fn measure(
    clip: &Path,
    ladder: &[Profile],
    encoder: EncoderChoice,
    x264_preset: &str,
    gpu: u32,
    work: &Path,
) -> Result<Measured, TranscodeError> {
    let mut last = None;
    for run in 0..2 {
        let out_dir: PathBuf = work.join(format!("probe-{run}"));
        let request = Request {
            input: Input::File(clip.to_path_buf()),
            profiles: ladder.to_vec(),
            out_dir: out_dir.clone(),
            options: Options {
                encoder,
                x264_preset: x264_preset.to_string(),
                gpu,
                ..Options::default()
            },
        };
        let t = Instant::now();
        let cpu = process_cpu_time();
        let report = super::transcode(&request);
        let wall = t.elapsed();
        let cpu = process_cpu_time().saturating_sub(cpu);
        let _ = std::fs::remove_dir_all(&out_dir);
        let report = report?;
        let secs = wall.as_secs_f64().max(1e-3);
        last = Some(Measured {
            pixels_per_sec: report.encoded_pixels as f64 / secs,
            encoder: report
                .renditions
                .first()
                .map(|r| r.encoder.clone())
                .unwrap_or_default(),
            wall_ms: wall.as_millis() as u64,
            cpu_ms: cpu.as_millis() as u64,
            encoded_pixels: report.encoded_pixels,
        });
    }
    last.ok_or(TranscodeError::NoFrames { decode_errors: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_measures_a_positive_rate_with_libx264() {
        let dir = tempfile::tempdir().unwrap();
        let clip = dir.path().join("probe.ts");
        synthetic_clip(320, 180, 30, 1, &clip).unwrap();
        assert!(std::fs::metadata(&clip).unwrap().len() > 1000);
        let ladder = Profile::parse_list("P144p30fps16x9").unwrap();
        let m = measure(
            &clip,
            &ladder,
            EncoderChoice::X264,
            "ultrafast",
            0,
            dir.path(),
        )
        .unwrap();
        assert_eq!(m.encoder, "libx264");
        // 30 frames of 256x144 were encoded in a finite, positive time.
        assert!(
            m.pixels_per_sec > 0.0 && m.pixels_per_sec.is_finite(),
            "{m:?}"
        );
        assert!(
            m.pixels_per_sec <= 256.0 * 144.0 * 30.0 / (m.wall_ms.max(1) as f64 / 1000.0) * 1.01
        );
    }
}
