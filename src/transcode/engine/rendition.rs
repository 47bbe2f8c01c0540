//! One rendition's worker thread: the filter graph (fps → scale → yuv420p, rebuilt when the
//! input geometry changes), the encoder (NVENC or libx264, see `transcode::encoder`) and the
//! muxer, with the input's audio copied alongside. It counts encoded frames for the exact
//! pixel count.

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use ffmpeg_next::{
    codec, ffi, filter, format, frame, picture, util::format::Pixel, Packet, Rational,
};

use super::super::encoder::{self, Setup};
use super::super::{avlog, EncoderChoice, Profile, RenditionReport, Request, TranscodeError};
use super::output::{temp_name, Finished, TempOutput};
use super::session::{can_flush, EncoderKey, WarmEncoder};
use super::{AudioIn, Msg, Stop};

/// One rendition's filter graph, encoder and muxer, run on its own thread.
pub(super) struct Worker {
    profile: Profile,
    width: u32,
    height: u32,
    in_time_base: Rational,
    encoder: ffmpeg_next::encoder::video::Encoder,
    encoder_name: &'static str,
    /// What a later segment of the stream must match to take this encoder.
    encoder_key: EncoderKey,
    /// The encoder came warm from the stream's previous segment.
    pub(super) reused: bool,
    pub(super) fallback_reason: Option<String>,
    /// `auto` found NVENC absent on this host (not merely out of sessions).
    pub(super) nvenc_unavailable: bool,
    enc_time_base: Rational,
    octx: format::context::Output,
    video_out: usize,
    video_out_time_base: Rational,
    audio: Option<AudioOut>,
    graph: Option<Graph>,
    /// Latest input pts and one source frame's duration, both in `in_time_base`.
    last_in_pts: Option<i64>,
    in_frame_duration: i64,
    /// Frames received from the decoder.
    received: u64,
    /// libx264 threads given to this rung.
    threads: usize,
    /// One source frame and the caller's declared duration, in seconds: the frame bound.
    in_frame_secs: f64,
    declared_secs: f64,
    /// Frames sent to the encoder.
    sent: u64,
    /// The stage profile: time waiting for frames, and inside the encoder (send, receive
    /// and mux); the rest of the worker's time is the filter graph (fps, scale).
    waiting: Duration,
    encoding: Duration,
    /// Packets out of the encoder, one per encoded frame: the pixel count's basis.
    frames: u64,
    output: TempOutput,
}

/// Where copied audio packets go in this rendition's muxer.
struct AudioOut {
    index: usize,
    in_time_base: Rational,
    out_time_base: Rational,
}

struct Graph {
    graph: filter::Graph,
    /// Input geometry the graph was built for; a change mid-stream rebuilds it.
    key: (u32, u32, Pixel),
    out_time_base: Rational,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        profile: &Profile,
        req: &Request,
        encoder_choice: EncoderChoice,
        (width, height): (u32, u32),
        src_rate: Rational,
        in_time_base: Rational,
        audio: Option<&AudioIn>,
        threads: usize,
        warm: &mut super::session::WarmSession,
    ) -> Result<Worker, TranscodeError> {
        let dst = req.out_dir.join(profile.file_name());
        let tmp = temp_name(&dst);
        let output = TempOutput {
            tmp: tmp.clone(),
            dst: dst.clone(),
            keep: false,
        };
        let out_err = |reason: String| TranscodeError::Output {
            path: dst.display().to_string(),
            reason,
        };
        let mut octx =
            format::output_as(&tmp, profile.format.muxer()).map_err(|e| out_err(e.to_string()))?;
        let global_header = octx
            .format()
            .flags()
            .contains(format::flag::Flags::GLOBAL_HEADER);
        let (enc_time_base, frame_rate) = match profile.fps() {
            Some(_) => (
                Rational::new(profile.fps_den as i32, profile.fps_num as i32),
                Rational::new(profile.fps_num as i32, profile.fps_den as i32),
            ),
            None => (in_time_base, src_rate),
        };
        let encoder_key = EncoderKey::new(
            profile,
            (width, height),
            enc_time_base,
            global_header,
            req.options.gpu,
            threads,
        );
        // Only an encoder of the choice asked for is reused: `x264` never takes a warm NVENC.
        let reusable = |w: &WarmEncoder| match encoder_choice {
            EncoderChoice::X264 => w.name == encoder::X264,
            EncoderChoice::Nvenc => w.name == encoder::NVENC,
            EncoderChoice::Auto => true,
        };
        let (opened, reused) = match warm.take_encoder(&encoder_key).filter(reusable) {
            Some(w) => (
                encoder::Opened {
                    encoder: w.encoder,
                    name: w.name,
                    fallback_reason: None,
                    nvenc_unavailable: false,
                },
                true,
            ),
            None => (
                encoder::open(
                    encoder_choice,
                    &Setup {
                        profile,
                        width,
                        height,
                        time_base: enc_time_base,
                        frame_rate,
                        global_header,
                        gpu: req.options.gpu,
                        x264_preset: &req.options.x264_preset,
                        threads,
                    },
                )?,
                false,
            ),
        };
        let video_out = {
            let mut st = octx
                .add_stream(ffmpeg_next::encoder::find_by_name(opened.name))
                .map_err(|e| out_err(e.to_string()))?;
            st.set_parameters(&opened.encoder);
            st.set_time_base(enc_time_base);
            st.set_avg_frame_rate(frame_rate);
            st.index()
        };
        let audio_out = match audio {
            Some(a) => {
                let mut st = octx
                    .add_stream(ffmpeg_next::encoder::find(codec::Id::None))
                    .map_err(|e| out_err(e.to_string()))?;
                st.set_parameters(a.params.clone());
                // SAFETY: the stream's codecpar is valid; a tag from the source container
                // may be invalid in the output container, so let the muxer choose.
                unsafe { (*st.parameters().as_mut_ptr()).codec_tag = 0 };
                Some((st.index(), a.time_base))
            }
            None => None,
        };
        let (header, lines) = avlog::capture(|| octx.write_header());
        if let Err(e) = header {
            let why = avlog::summarize(&lines).unwrap_or_else(|| e.to_string());
            return Err(out_err(format!(
                "cannot start the {} muxer: {why}",
                profile.format.muxer()
            )));
        }
        // The muxer fixes its streams' time bases in write_header; read them once here
        // instead of per packet.
        let out_tb = |idx: usize, fallback: Rational| {
            octx.stream(idx).map(|s| s.time_base()).unwrap_or(fallback)
        };
        let video_out_time_base = out_tb(video_out, enc_time_base);
        let audio = audio_out.map(|(idx, in_tb)| AudioOut {
            index: idx,
            in_time_base: in_tb,
            out_time_base: out_tb(idx, in_tb),
        });
        Ok(Worker {
            profile: profile.clone(),
            width,
            height,
            in_time_base,
            encoder: opened.encoder,
            encoder_name: opened.name,
            encoder_key,
            reused,
            fallback_reason: opened.fallback_reason,
            nvenc_unavailable: opened.nvenc_unavailable,
            enc_time_base,
            octx,
            video_out,
            video_out_time_base,
            audio,
            graph: None,
            last_in_pts: None,
            // SAFETY: pure arithmetic on plain rationals.
            in_frame_duration: unsafe {
                ffi::av_rescale_q(1, src_rate.invert().into(), in_time_base.into()).max(1)
            },
            received: 0,
            threads,
            in_frame_secs: src_rate.denominator() as f64 / src_rate.numerator().max(1) as f64,
            declared_secs: req.options.media_duration.map_or(0.0, |d| d.as_secs_f64()),
            sent: 0,
            waiting: Duration::ZERO,
            encoding: Duration::ZERO,
            frames: 0,
            output,
        })
    }

    pub(super) fn run(
        mut self,
        rx: Receiver<Msg>,
        stop: &Stop,
    ) -> Result<Finished, TranscodeError> {
        let started = Instant::now();
        loop {
            let t = Instant::now();
            let Ok(msg) = rx.recv() else { break };
            self.waiting += t.elapsed();
            stop.check()?;
            match msg {
                Msg::Video(frame) => self.push_video(&frame, stop)?,
                Msg::Audio(packet) => self.push_audio(packet),
            }
        }
        stop.check()?;
        // Flush: filter graph first (fps may hold a frame), then the encoder.
        if let Some(g) = self.graph.as_mut() {
            // Close at the *end* of the last frame, as the ffmpeg CLI does: closing at
            // its start makes the fps filter drop it.
            let eof_pts = self
                .last_in_pts
                .map_or(ffi::AV_NOPTS_VALUE, |p| p + self.in_frame_duration);
            if let Some(mut src) = g.graph.get("in") {
                // SAFETY: valid buffersrc context; closing only marks EOF.
                unsafe {
                    ffi::av_buffersrc_close(
                        src.as_mut_ptr(),
                        eof_pts,
                        ffi::AV_BUFFERSRC_FLAG_PUSH as u32,
                    );
                }
            }
            self.drain_graph(stop)?;
        }
        self.encoder
            .send_eof()
            .map_err(|e| self.ffmpeg("flushing the encoder", e))?;
        self.drain_encoder(stop)?;
        self.octx.write_trailer().map_err(|e| self.write_err(e))?;
        // Drained to its end; an encoder that can be reset takes the stream's next segment.
        let warm = if can_flush(&self.encoder) {
            // SAFETY: a valid, opened, fully drained encoder context.
            unsafe { ffi::avcodec_flush_buffers(self.encoder.as_mut_ptr()) };
            true
        } else {
            false
        };
        let total = started.elapsed();
        tracing::debug!(
            target: "comine::transcode::stages",
            profile = %self.profile.name,
            threads = self.threads,
            total_ms = total.as_millis() as u64,
            waiting_ms = self.waiting.as_millis() as u64,
            encoding_ms = self.encoding.as_millis() as u64,
            filtering_ms = total.saturating_sub(self.waiting + self.encoding).as_millis() as u64,
            "rendition stage profile"
        );
        let Worker {
            profile,
            width,
            height,
            frames,
            encoder,
            encoder_name,
            encoder_key,
            octx,
            output,
            ..
        } = self;
        let warm = warm.then_some(WarmEncoder {
            key: encoder_key,
            encoder,
            name: encoder_name,
        });
        drop(octx); // closes the file so its size is final
        let bytes = std::fs::metadata(&output.tmp).map(|m| m.len()).unwrap_or(0);
        Ok(Finished {
            report: RenditionReport {
                path: output.dst.clone(),
                profile: profile.name.clone(),
                width,
                height,
                frames,
                pixels: width as u64 * height as u64 * frames,
                bytes,
                encoder: encoder_name.to_string(),
                format: profile.format,
                mime: profile.format.mime(),
            },
            output,
            warm,
        })
    }

    fn push_video(&mut self, frame: &frame::Video, stop: &Stop) -> Result<(), TranscodeError> {
        self.received += 1;
        if let Some(p) = frame.pts() {
            self.last_in_pts = Some(self.last_in_pts.map_or(p, |l| l.max(p)));
        }
        let key = (frame.width(), frame.height(), frame.format());
        if self.graph.as_ref().is_none_or(|g| g.key != key) {
            if self.graph.is_some() {
                tracing::debug!(profile = %self.profile.name, ?key, "input geometry changed mid-segment; rebuilding the filter graph");
            }
            self.graph = Some(self.build_graph(frame)?);
        }
        let g = self.graph.as_mut().ok_or_else(|| TranscodeError::Ffmpeg {
            what: "filtering",
            reason: "filter graph missing".into(),
        })?;
        let mut src = g.graph.get("in").ok_or_else(|| TranscodeError::Ffmpeg {
            what: "filtering",
            reason: "buffer source missing".into(),
        })?;
        // SAFETY: `write_frame` takes a new reference to the shared frame's buffers and
        // leaves the frame itself untouched, so other workers can keep reading it.
        let ret = unsafe { ffi::av_buffersrc_write_frame(src.as_mut_ptr(), frame.as_ptr()) };
        if ret < 0 {
            return Err(self.ffmpeg("feeding the scaler", ffmpeg_next::Error::from(ret)));
        }
        self.drain_graph(stop)
    }

    fn build_graph(&self, frame: &frame::Video) -> Result<Graph, TranscodeError> {
        let fail = |e: ffmpeg_next::Error| TranscodeError::Ffmpeg {
            what: "building the scale filter graph",
            reason: e.to_string(),
        };
        let sar = frame.aspect_ratio();
        let (sn, sd) = if sar.numerator() > 0 && sar.denominator() > 0 {
            (sar.numerator(), sar.denominator())
        } else {
            (1, 1)
        };
        let pix: ffi::AVPixelFormat = frame.format().into();
        let args = format!(
            "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
            frame.width(),
            frame.height(),
            pix as i32,
            self.in_time_base.numerator(),
            self.in_time_base.denominator(),
            sn,
            sd
        );
        let mut graph = filter::Graph::new();
        let buffer = filter::find("buffer")
            .ok_or(ffmpeg_next::Error::FilterNotFound)
            .map_err(fail)?;
        let sink = filter::find("buffersink")
            .ok_or(ffmpeg_next::Error::FilterNotFound)
            .map_err(fail)?;
        graph.add(&buffer, "in", &args).map_err(fail)?;
        graph.add(&sink, "out", "").map_err(fail)?;
        let spec = filter_spec(&self.profile, self.width, self.height);
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse(&spec))
            .map_err(fail)?;
        graph.validate().map_err(fail)?;
        let out_time_base = graph
            .get("out")
            .map(|mut c| c.sink().time_base())
            .unwrap_or(self.enc_time_base);
        Ok(Graph {
            graph,
            key: (frame.width(), frame.height(), frame.format()),
            out_time_base,
        })
    }

    fn drain_graph(&mut self, stop: &Stop) -> Result<(), TranscodeError> {
        loop {
            stop.check()?;
            let Some(g) = self.graph.as_mut() else {
                return Ok(());
            };
            let out_tb = g.out_time_base;
            let mut filtered = frame::Video::empty();
            let got = match g.graph.get("out") {
                Some(mut sink) => sink.sink().frame(&mut filtered),
                None => return Ok(()),
            };
            match got {
                Ok(()) => self.encode(filtered, out_tb, stop)?,
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(self.ffmpeg("scaling", e)),
            }
        }
    }

    /// Output frames this rendition may hold so far: its frame rate times twice the media
    /// the input can account for (its frames, or the caller's declared duration) plus 2 s.
    /// A real freeze fits; a timestamp gap the rebasing let through (under 10 s) in a
    /// short segment does not, and is refused instead of encoded.
    fn frame_bound(&self) -> Option<u64> {
        let fps = self.profile.fps()?;
        let secs = (self.received as f64 * self.in_frame_secs).max(self.declared_secs);
        Some((fps * (secs * 2.0 + 2.0)).ceil() as u64)
    }

    fn encode(
        &mut self,
        mut frame: frame::Video,
        tb: Rational,
        stop: &Stop,
    ) -> Result<(), TranscodeError> {
        if let Some(bound) = self.frame_bound().filter(|&b| self.sent >= b) {
            return Err(TranscodeError::TimestampGap {
                profile: self.profile.name.clone(),
                frames_in: self.received,
                bound,
                seconds: self.received as f64 * self.in_frame_secs,
            });
        }
        if let Some(pts) = frame.pts() {
            // SAFETY: pure arithmetic on plain rationals.
            let pts = unsafe { ffi::av_rescale_q(pts, tb.into(), self.enc_time_base.into()) };
            frame.set_pts(Some(pts));
        }
        // The decoder's picture types must not leak into the encoder (it would copy the
        // source's GOP); only the segment's first frame is forced, to an IDR.
        frame.set_kind(if self.sent == 0 {
            picture::Type::I
        } else {
            picture::Type::None
        });
        self.sent += 1;
        let t = Instant::now();
        self.encoder
            .send_frame(&frame)
            .map_err(|e| self.ffmpeg("encoding", e))?;
        let r = self.drain_encoder(stop);
        self.encoding += t.elapsed();
        r
    }

    fn drain_encoder(&mut self, stop: &Stop) -> Result<(), TranscodeError> {
        let mut packet = Packet::empty();
        loop {
            // At the flush, libx264 encodes its whole lookahead here, one frame per call.
            stop.check()?;
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => {
                    self.frames += 1;
                    packet.set_stream(self.video_out);
                    packet.rescale_ts(self.enc_time_base, self.video_out_time_base);
                    packet
                        .write_interleaved(&mut self.octx)
                        .map_err(|e| self.write_err(e))?;
                }
                Err(ffmpeg_next::Error::Eof) => return Ok(()),
                Err(ffmpeg_next::Error::Other { errno }) if errno == libc::EAGAIN => return Ok(()),
                Err(e) => return Err(self.ffmpeg("encoding", e)),
            }
        }
    }

    fn push_audio(&mut self, mut packet: Packet) {
        let Some(a) = &self.audio else {
            return;
        };
        packet.set_stream(a.index);
        packet.rescale_ts(a.in_time_base, a.out_time_base);
        packet.set_position(-1);
        // Audio is passed through untouched; a packet the muxer refuses (damaged
        // timestamps in a truncated segment) is dropped rather than failing the video.
        if let Err(e) = packet.write_interleaved(&mut self.octx) {
            tracing::debug!(profile = %self.profile.name, error = %e, "dropped an audio packet the muxer refused");
        }
    }

    fn ffmpeg(&self, what: &'static str, e: ffmpeg_next::Error) -> TranscodeError {
        TranscodeError::Ffmpeg {
            what,
            reason: format!("{e} (rendition {})", self.profile.name),
        }
    }
    /// A write the muxer refused. The video packets are our encoder's, so "invalid data"
    /// comes from what is copied from the input (a corrupt AAC stream surfaces on the next
    /// interleaved write): bad input, not an output failure. Anything else (a full disk) is.
    fn write_err(&self, e: ffmpeg_next::Error) -> TranscodeError {
        match e {
            ffmpeg_next::Error::InvalidData => TranscodeError::MuxRefused {
                profile: self.profile.name.clone(),
                reason: e.to_string(),
            },
            e => TranscodeError::Output {
                path: self.output.dst.display().to_string(),
                reason: e.to_string(),
            },
        }
    }
}

/// fps → scale → yuv420p, the same chain a `-vf` on the ffmpeg CLI would run.
pub(crate) fn filter_spec(profile: &Profile, width: u32, height: u32) -> String {
    let mut spec = String::new();
    if profile.fps().is_some() {
        spec.push_str(&format!("fps=fps={}/{},", profile.fps_num, profile.fps_den));
    }
    spec.push_str(&format!("scale={width}:{height},format=yuv420p,setsar=1"));
    spec
}
