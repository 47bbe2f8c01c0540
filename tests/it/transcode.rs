//! The transcoding engine, checked against ffprobe on media the tests generate.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use comine::transcode::{
    transcode, EncoderChoice, Input, Options, Profile, Report, Request, TranscodeError,
};
use common::{comine, generate, pattern, probe, segment_360p};

fn opts() -> Options {
    Options {
        encoder: EncoderChoice::X264,
        x264_preset: "ultrafast".into(),
        ..Options::default()
    }
}

fn run(input: Input, profiles: &str, out: &Path) -> Result<Report, TranscodeError> {
    transcode(&Request {
        input,
        profiles: Profile::parse_list(profiles).unwrap(),
        out_dir: out.to_path_buf(),
        options: opts(),
    })
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Pixels are exact and match ffprobe; IDR first; timestamps and audio kept.
#[test]
fn ladder_matches_ffprobe() {
    let src = segment_360p();
    let out = tempfile::tempdir().unwrap();
    let report = run(
        Input::File(src.clone()),
        "P144p30fps16x9,P240p30fps16x9,P360p30fps16x9",
        out.path(),
    )
    .unwrap();
    let source = probe(&src);
    assert_eq!(report.decoded_frames, source.frames);
    assert_eq!(report.decoded_pixels, 640 * 360 * source.frames);
    assert_eq!(report.decode_errors, 0);
    assert_eq!(report.renditions.len(), 3);
    let mut sum = 0;
    for r in &report.renditions {
        let p = probe(&r.path);
        assert_eq!((p.width, p.height), (r.width, r.height), "{}", r.profile);
        assert_eq!(p.frames, r.frames, "{}: ffprobe frame count", r.profile);
        assert_eq!(r.pixels, r.width as u64 * r.height as u64 * p.frames);
        assert_eq!(r.frames, source.frames, "30 fps in, 30 fps out");
        assert!(
            p.first_key && p.first_pict_type == "I",
            "{}: first frame {p:?}",
            r.profile
        );
        assert!(
            (p.start_time - source.start_time).abs() < 0.034,
            "{}: start {} vs source {}",
            r.profile,
            p.start_time,
            source.start_time
        );
        assert!(p.has_audio, "{}: audio copied through", r.profile);
        assert_eq!(r.bytes, std::fs::metadata(&r.path).unwrap().len());
        assert_eq!(r.encoder, "libx264");
        sum += r.pixels;
    }
    assert_eq!(report.encoded_pixels, sum);
    let dims: Vec<_> = report
        .renditions
        .iter()
        .map(|r| (r.width, r.height))
        .collect();
    assert_eq!(dims, [(256, 144), (426, 240), (640, 360)]);
    assert!(report.realtime_factor > 0.0 && report.media_seconds > 0.9);
    // No temporary files are left behind.
    assert_eq!(files_in(out.path()).len(), 3, "{:?}", files_in(out.path()));
}

/// A lower frame rate profile drops frames through the fps filter; the count stays exact.
#[test]
fn frame_rate_conversion_counts_exactly() {
    let src = generate(
        "seg60.ts",
        &pattern(320, 180, "60"),
        1.0,
        false,
        &["-c:v", "libx264", "-preset", "ultrafast"],
    );
    let out = tempfile::tempdir().unwrap();
    let report = run(
        Input::File(src),
        "half:320x180@30:300k,same:320x180@0:300k",
        out.path(),
    )
    .unwrap();
    assert_eq!(report.decoded_frames, 60);
    let half = &report.renditions[0];
    let same = &report.renditions[1];
    assert_eq!(probe(&half.path).frames, half.frames);
    assert!(
        (29..=31).contains(&half.frames),
        "30 fps from 60: {}",
        half.frames
    );
    assert_eq!(same.frames, 60, "fps 0 keeps the source rate");
}

/// Odd input sizes keep their aspect ratio with even output dimensions.
#[test]
fn odd_resolution_works() {
    let src = generate(
        "odd.mkv",
        &format!("{},scale=853:479,format=yuv444p", pattern(854, 480, "30")),
        0.5,
        false,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv444p",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let report = run(
        Input::File(src),
        "P360p30fps16x9,P144p30fps16x9",
        out.path(),
    )
    .unwrap();
    assert_eq!((report.input_width, report.input_height), (853, 479));
    for r in &report.renditions {
        assert!(
            r.width % 2 == 0 && r.height % 2 == 0,
            "{}x{}",
            r.width,
            r.height
        );
        let aspect = r.width as f64 / r.height as f64;
        assert!((aspect - 853.0 / 479.0).abs() < 0.03, "aspect {aspect}");
        assert_eq!(probe(&r.path).frames, r.frames);
    }
}

/// Variable frame rate input (frames dropped at random) gives a constant-rate ladder.
#[test]
fn variable_frame_rate_works() {
    let src = generate(
        "vfr.mkv",
        &format!(
            "{},select='not(eq(mod(n\\,7)\\,3))*not(eq(mod(n\\,11)\\,5))'",
            pattern(320, 180, "30")
        ),
        1.0,
        false,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-fps_mode",
            "vfr",
        ],
    );
    let out = tempfile::tempdir().unwrap();
    let report = run(Input::File(src), "P144p30fps16x9", out.path()).unwrap();
    let r = &report.renditions[0];
    assert!(
        report.decoded_frames < 30,
        "source really is VFR: {}",
        report.decoded_frames
    );
    assert_eq!(probe(&r.path).frames, r.frames);
    assert!(
        r.frames >= report.decoded_frames,
        "fps filter fills the gaps"
    );
}

/// MP4 and MKV inputs, MP4 output, and an in-memory segment.
#[test]
fn containers_and_memory_input() {
    let mp4 = generate(
        "clip.mp4",
        &pattern(320, 240, "25"),
        0.6,
        true,
        &["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
    );
    let out = tempfile::tempdir().unwrap();
    let report = run(
        Input::File(mp4.clone()),
        "boxed:426x240@25:300k:mp4",
        out.path(),
    )
    .unwrap();
    let r = &report.renditions[0];
    assert!(r.path.extension().unwrap() == "mp4");
    assert_eq!(
        (r.width, r.height),
        (320, 240),
        "4:3 inside a 16:9 box is not stretched or upscaled"
    );
    let p = probe(&r.path);
    assert_eq!(p.frames, r.frames);
    assert!(p.has_audio);

    let bytes = std::fs::read(segment_360p()).unwrap();
    let out2 = tempfile::tempdir().unwrap();
    let mem = run(Input::Memory(bytes.into()), "P144p30fps16x9", out2.path()).unwrap();
    assert_eq!(
        mem.renditions[0].frames,
        probe(&mem.renditions[0].path).frames
    );
    assert!(mem.decoded_frames > 0);
}

/// A truncated segment transcodes what decodes; cut before the first frame it errors.
#[test]
fn truncated_segment() {
    let full = std::fs::read(segment_360p()).unwrap();
    let out = tempfile::tempdir().unwrap();
    // Cut mid-packet (not on a 188-byte TS boundary) at about 60%.
    let cut = full.len() * 6 / 10 + 77;
    let report = run(
        Input::Memory(full[..cut].to_vec().into()),
        "P144p30fps16x9",
        out.path(),
    )
    .unwrap();
    let whole = probe(&segment_360p()).frames;
    assert!(
        report.decoded_frames > 0 && report.decoded_frames < whole,
        "{} of {whole}",
        report.decoded_frames
    );
    assert_eq!(
        probe(&report.renditions[0].path).frames,
        report.renditions[0].frames
    );
    let json = serde_json::to_value(&report).unwrap();
    assert!(
        json["decode_errors"].as_u64().unwrap() > 0,
        "damage is reported: {json}"
    );

    let out2 = tempfile::tempdir().unwrap();
    let err = run(
        Input::Memory(full[..400].to_vec().into()),
        "P144p30fps16x9",
        out2.path(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TranscodeError::NoFrames { .. }
                | TranscodeError::NotMedia(_)
                | TranscodeError::NoVideo(_)
        ),
        "{err}"
    );
    assert!(err.is_bad_input());
    assert!(
        files_in(out2.path()).is_empty(),
        "nothing left behind: {:?}",
        files_in(out2.path())
    );
}

/// A passed deadline and a cancellation stop the job and leave no files.
#[test]
fn deadline_and_cancel() {
    let src = segment_360p();
    let out = tempfile::tempdir().unwrap();
    let mut o = opts();
    o.deadline = Some(Instant::now() - Duration::from_millis(1));
    let err = transcode(&Request {
        input: Input::File(src.clone()),
        profiles: Profile::parse_list("P144p30fps16x9").unwrap(),
        out_dir: out.path().into(),
        options: o,
    })
    .unwrap_err();
    assert!(
        matches!(err, TranscodeError::DeadlineExceeded { .. }),
        "{err}"
    );

    let o = opts();
    o.cancel.cancel();
    let err = transcode(&Request {
        input: Input::File(src),
        profiles: Profile::parse_list("P144p30fps16x9").unwrap(),
        out_dir: out.path().into(),
        options: o,
    })
    .unwrap_err();
    assert!(matches!(err, TranscodeError::Cancelled), "{err}");
    assert!(files_in(out.path()).is_empty());
}

/// Bad input through the real binary: one clear line on stderr, non-zero exit, no panic.
#[test]
fn cli_bad_input_gives_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.ts");
    std::fs::write(&empty, b"").unwrap();
    let garbage = dir.path().join("garbage.ts");
    let noise: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&garbage, noise).unwrap();
    let audio_only = generate(
        "tone.m4a",
        "sine=frequency=300:sample_rate=44100",
        0.5,
        false,
        &["-c:a", "aac"],
    );
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let seg = segment_360p();
    let missing = dir.path().join("missing.ts");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![empty.to_str().unwrap()], "empty"),
        (vec![garbage.to_str().unwrap()], "not a media file"),
        (vec![audio_only.to_str().unwrap()], "no video stream"),
        (vec![missing.to_str().unwrap()], "cannot read"),
        (
            vec![seg.to_str().unwrap(), "--profiles", "P240p30fps16x9,P9000p"],
            "P720p30fps16x9",
        ),
        (
            vec![seg.to_str().unwrap(), "--max-input-pixels", "100000"],
            "ceiling",
        ),
    ];
    for (args, expect) in cases {
        let mut full = vec!["-q", "transcode", "--out", out_s, "--encoder", "x264"];
        full.extend(args.iter().copied());
        let (ok, stdout, stderr) = comine(&full, None);
        assert!(!ok, "{args:?} should fail");
        assert!(
            stdout.is_empty(),
            "{args:?}: nothing on stdout, got {stdout}"
        );
        let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expect),
            "{args:?}: {}",
            lines[0]
        );
        assert!(!stderr.contains("panicked"));
    }
    assert!(
        files_in(&out).is_empty(),
        "no renditions from failed inputs: {:?}",
        files_in(&out)
    );
}

/// stdin input and the JSON summary's documented keys.
#[test]
fn cli_stdin_and_json() {
    let seg = std::fs::read(segment_360p()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = comine(
        &[
            "-q",
            "transcode",
            "-",
            "--out",
            out.to_str().unwrap(),
            "--profiles",
            "P144p30fps16x9,P240p30fps16x9",
            "--encoder",
            "x264",
            "--json",
        ],
        Some(&seg),
    );
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for k in [
        "decoded_pixels",
        "wall_ms",
        "realtime_factor",
        "renditions",
        "decode_errors",
    ] {
        assert!(v.get(k).is_some(), "missing {k}");
    }
    let r = &v["renditions"][1];
    for k in [
        "profile", "path", "width", "height", "frames", "pixels", "bytes", "encoder",
    ] {
        assert!(r.get(k).is_some(), "missing renditions[].{k}");
    }
    assert_eq!(r["profile"], "P240p30fps16x9");
    assert!(out.join("P240p30fps16x9.ts").exists());
    assert_eq!(
        r["pixels"].as_u64().unwrap(),
        r["width"].as_u64().unwrap()
            * r["height"].as_u64().unwrap()
            * r["frames"].as_u64().unwrap()
    );
}

fn has_nvidia_gpu() -> bool {
    Path::new("/dev/nvidiactl").exists()
}

/// NVENC: without a GPU, `nvenc` fails naming the real cause and `auto` falls back with
/// `fallback_reason`; with a GPU it either encodes on NVENC or fails over cleanly.
#[test]
fn nvenc_failover() {
    let seg = segment_360p();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, stdout, stderr) = comine(
        &[
            "-q",
            "transcode",
            seg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--profiles",
            "P144p30fps16x9",
            "--encoder",
            "auto",
            "--x264-preset",
            "ultrafast",
            "--json",
        ],
        None,
    );
    assert!(ok, "auto must always produce renditions: {stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let encoder = v["renditions"][0]["encoder"].as_str().unwrap().to_string();
    if encoder == "libx264" {
        let reason = v["fallback_reason"]
            .as_str()
            .expect("fallback_reason when NVENC was not used");
        assert!(reason.contains("NVENC"), "{reason}");
        assert!(
            !reason.contains("Operation not permitted)")
                || reason.contains("cuda")
                || reason.contains("CUDA")
                || reason.contains("nvenc"),
            "the real cause, not just the errno: {reason}"
        );
    } else {
        assert_eq!(encoder, "h264_nvenc");
        assert!(has_nvidia_gpu());
    }
    let (ok, _, stderr) = comine(
        &[
            "-q",
            "transcode",
            seg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--profiles",
            "P144p30fps16x9",
            "--encoder",
            "nvenc",
        ],
        None,
    );
    if !has_nvidia_gpu() {
        assert!(!ok, "nvenc without a GPU must fail");
        assert!(
            stderr.contains("NVENC") && stderr.to_lowercase().contains("cuda"),
            "names the cause: {stderr}"
        );
    } else if !ok {
        assert!(stderr.contains("NVENC"), "{stderr}");
    }
}

/// `--log-format json` turns every stderr log line into a JSON object.
#[test]
fn json_logs() {
    let seg = segment_360p();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (ok, _, stderr) = comine(
        &[
            "--log-format",
            "json",
            "transcode",
            seg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--profiles",
            "P144p30fps16x9",
            "--encoder",
            "auto",
            "--x264-preset",
            "ultrafast",
        ],
        None,
    );
    assert!(ok, "{stderr}");
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.contains("transcode done")),
        "{stderr}"
    );
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{l}"
        );
    }
}

/// One segment of a stream through `session` (or cold with `None`), into `out`.
fn run_in(session: Option<&mut comine::transcode::WarmSession>, seg: &Path, out: &Path) -> Report {
    let req = Request {
        input: Input::File(seg.to_path_buf()),
        profiles: Profile::parse_list("P240p30fps16x9,P144p30fps16x9").unwrap(),
        out_dir: out.to_path_buf(),
        options: Options {
            // Fixed threading: the warm and cold runs must make byte-identical renditions.
            decoder_threads: 2,
            encode_cores: 2,
            ..opts()
        },
    };
    match session {
        Some(s) => comine::transcode::transcode_warm(&req, s),
        None => transcode(&req),
    }
    .unwrap_or_else(|e| panic!("{}: {e}", seg.display()))
}

/// A stream's segments through one warm session: the decoder is opened once and reused,
/// and every rendition is byte for byte what a cold transcode of the segment makes.
#[test]
fn warm_session_reuses_the_decoder_and_changes_no_output() {
    let segs = common::media::stream_segments("warm360", &pattern(640, 360, "30"), 1, 4, true);
    let mut session = comine::transcode::WarmSession::new();
    for (i, seg) in segs.iter().enumerate() {
        let (cold_dir, warm_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cold = run_in(None, seg, cold_dir.path());
        session.follow(i as i64);
        let warm = run_in(Some(&mut session), seg, warm_dir.path());
        assert_eq!(
            warm.warm.decoder_reused,
            i > 0,
            "segment {i}: {:?}",
            warm.warm
        );
        assert!(!cold.warm.decoder_reused, "a one-off transcode is cold");
        // libx264 in FFmpeg 5.1 cannot be reset after draining: opened per segment.
        assert_eq!(warm.warm.encoders_reused, 0);
        assert_eq!(warm.decoded_frames, cold.decoded_frames, "segment {i}");
        assert_eq!(warm.decoded_frames, 30, "segment {i} holds 1 s at 30 fps");
        assert_eq!(warm.decode_errors, 0);
        for (w, c) in warm.renditions.iter().zip(&cold.renditions) {
            assert_eq!(
                (w.frames, w.pixels),
                (c.frames, c.pixels),
                "segment {i} {}",
                w.profile
            );
            assert_eq!(
                std::fs::read(&w.path).unwrap(),
                std::fs::read(&c.path).unwrap(),
                "segment {i} {}: warm and cold renditions differ",
                w.profile
            );
        }
    }
    assert_eq!(session.segments(), 4);
    assert_eq!(session.decoder_opens(), 1, "{session:?}");
    assert_eq!(session.encoder_opens(), 8, "two rungs x four segments");
}

/// A resolution change, a gap in the sequence and a failed segment each close the warm
/// decoder, and the next segment says why.
#[test]
fn warm_session_resets_on_change_discontinuity_and_failure() {
    let segs = common::media::stream_segments("warm360", &pattern(640, 360, "30"), 1, 4, true);
    let other = common::media::stream_segments("warm180", &pattern(320, 180, "30"), 1, 2, false);
    let mut s = comine::transcode::WarmSession::new();
    let out = tempfile::tempdir().unwrap();
    let step = |s: &mut comine::transcode::WarmSession, seq: i64, seg: &Path| {
        s.follow(seq);
        run_in(Some(s), seg, out.path()).warm
    };
    assert!(!step(&mut s, 0, &segs[0]).decoder_reused);
    assert!(step(&mut s, 1, &segs[1]).decoder_reused);
    let changed = step(&mut s, 2, &other[0]);
    assert!(!changed.decoder_reused);
    let why = changed.reset.unwrap_or_default();
    assert!(
        why.contains("resolution changed from 640x360 to 320x180"),
        "{why}"
    );
    assert!(step(&mut s, 3, &other[1]).decoder_reused);
    let gap = step(&mut s, 7, &segs[2]);
    assert!(!gap.decoder_reused);
    assert!(gap
        .reset
        .unwrap_or_default()
        .contains("does not follow segment 3"));
    // A garbage segment fails; the one after it starts cold and is transcoded correctly.
    s.follow(8);
    let bad = comine::transcode::transcode_warm(
        &Request {
            input: Input::Memory(bytes::Bytes::from(vec![0x47u8; 188 * 40])),
            profiles: Profile::parse_list("P144p30fps16x9").unwrap(),
            out_dir: out.path().to_path_buf(),
            options: opts(),
        },
        &mut s,
    );
    assert!(bad.is_err());
    let after = step(&mut s, 9, &segs[3]);
    assert!(!after.decoder_reused);
    assert_eq!(after.reset.as_deref(), Some("the previous segment failed"));
    assert!(
        step(&mut s, 10, &segs[0]).decoder_reused,
        "warm again after the failure"
    );
}
