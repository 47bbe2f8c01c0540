//! A stream's warm pipeline: the codec contexts kept open between the segments of one
//! stream (a Livepeer session), as go-livepeer's transcoder keeps its own.
//!
//! Opening a decoder costs little in software but hundreds of milliseconds with NVDEC (on an
//! H200, a 1 s 180p segment took 500 ms at p50 with a fresh NVDEC decoder against 95 ms in
//! software), and opening an NVENC session is the dominant fixed cost of a GPU segment. So a
//! [`WarmSession`] keeps:
//! - the video decoder, drained at the end of each segment and reset with
//!   `avcodec_flush_buffers` (as the ffmpeg CLI does for `-stream_loop`), reused while the
//!   next segment's stream has the same codec, size, pixel format, extradata and device;
//! - each rung's encoder, where the encoder can be reset after draining
//!   (`AV_CODEC_CAP_ENCODER_FLUSH`: NVENC). libx264 in FFmpeg 5.1 cannot, so it is opened per
//!   segment, as go-livepeer does for software encoders.
//!
//! Anything that does not match is closed and opened afresh, with the reason kept in the
//! segment's [`WarmUse`]. A failed segment closes everything: a context that saw an error is
//! never trusted with the next segment.

use ffmpeg_next::{codec, ffi, Rational};
use serde::Serialize;

use super::super::{DecoderChoice, Options};
use super::decode::Decoder;

/// What identifies a decoder that can take the next segment's packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DecoderKey {
    codec: i32,
    width: i32,
    height: i32,
    format: i32,
    extradata: Vec<u8>,
    choice: DecoderChoice,
    gpu: u32,
    threads: usize,
}

impl DecoderKey {
    pub(super) fn new(params: &codec::Parameters, opts: &Options) -> DecoderKey {
        // SAFETY: reading plain fields of the stream's valid codec parameters; extradata is
        // `extradata_size` bytes when non-null.
        unsafe {
            let p = params.as_ptr();
            let extradata = if (*p).extradata.is_null() || (*p).extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts((*p).extradata, (*p).extradata_size as usize).to_vec()
            };
            DecoderKey {
                codec: (*p).codec_id as i32,
                width: (*p).width,
                height: (*p).height,
                format: (*p).format,
                extradata,
                choice: opts.decoder,
                gpu: opts.gpu,
                threads: opts.decoder_threads,
            }
        }
    }

    /// Why a decoder opened for `self` cannot take `next`.
    fn differs(&self, next: &DecoderKey) -> Option<String> {
        if self.codec != next.codec {
            Some("the input codec changed".into())
        } else if (self.width, self.height) != (next.width, next.height) {
            Some(format!(
                "the input resolution changed from {}x{} to {}x{}",
                self.width, self.height, next.width, next.height
            ))
        } else if self.format != next.format {
            Some("the input pixel format changed".into())
        } else if self.extradata != next.extradata {
            Some("the input's codec headers (extradata) changed".into())
        } else if (self.choice, self.gpu) != (next.choice, next.gpu) {
            Some(format!(
                "the segment was placed on GPU {} (the decoder was on GPU {})",
                next.gpu, self.gpu
            ))
        } else if self.threads != next.threads {
            Some("the decoder thread count changed".into())
        } else {
            None
        }
    }
}

/// What identifies an encoder that can take the next segment's frames.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct EncoderKey {
    pub(super) profile: crate::transcode::Profile,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) time_base: (i32, i32),
    pub(super) global_header: bool,
    pub(super) gpu: u32,
    pub(super) threads: usize,
}

impl EncoderKey {
    pub(super) fn new(
        profile: &crate::transcode::Profile,
        (width, height): (u32, u32),
        time_base: Rational,
        global_header: bool,
        gpu: u32,
        threads: usize,
    ) -> EncoderKey {
        EncoderKey {
            profile: profile.clone(),
            width,
            height,
            time_base: (time_base.numerator(), time_base.denominator()),
            global_header,
            gpu,
            threads,
        }
    }
}

/// An encoder drained and reset, ready for the next segment.
pub(super) struct WarmEncoder {
    pub(super) key: EncoderKey,
    pub(super) encoder: ffmpeg_next::encoder::video::Encoder,
    pub(super) name: &'static str,
}

/// Whether an opened encoder can be reset after draining and take more frames.
pub(super) fn can_flush(encoder: &ffmpeg_next::encoder::video::Encoder) -> bool {
    // SAFETY: an opened codec context always has its codec set.
    unsafe {
        let c = (*encoder.as_ptr()).codec;
        !c.is_null() && ((*c).capabilities as u32 & ffi::AV_CODEC_CAP_ENCODER_FLUSH) != 0
    }
}

/// How a segment used its stream's warm pipeline (`transcode --json` and the daemon show it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WarmUse {
    /// The decoder was the one the previous segment of the stream used.
    pub decoder_reused: bool,
    /// Rungs whose encoder was the previous segment's.
    pub encoders_reused: u32,
    /// Why the stream's open contexts were closed before this segment, when they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
}

/// The open codec contexts of one stream, kept between its segments (see the module docs).
/// Owned by one segment at a time; `Send`, so it can follow the segment to a blocking thread.
#[derive(Default)]
pub struct WarmSession {
    pub(super) decoder: Option<(DecoderKey, Decoder)>,
    pub(super) encoders: Vec<WarmEncoder>,
    /// The reason the next segment must start cold, set by [`WarmSession::reset`].
    pending_reset: Option<String>,
    /// The last sequence number transcoded, for the discontinuity check.
    last_seq: Option<i64>,
    segments: u64,
    decoder_opens: u64,
    encoder_opens: u64,
}

impl std::fmt::Debug for WarmSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmSession")
            .field("warm_decoder", &self.decoder.is_some())
            .field("warm_encoders", &self.encoders.len())
            .field("segments", &self.segments)
            .field("decoder_opens", &self.decoder_opens)
            .field("encoder_opens", &self.encoder_opens)
            .finish()
    }
}

impl WarmSession {
    /// An empty session: its first segment opens everything.
    pub fn new() -> WarmSession {
        WarmSession::default()
    }

    /// Closes every open context; the next segment starts cold and reports `reason`.
    pub fn reset(&mut self, reason: impl Into<String>) {
        let had = self.decoder.is_some() || !self.encoders.is_empty();
        self.decoder = None;
        self.encoders.clear();
        if had {
            self.pending_reset = Some(reason.into());
        }
    }

    /// Called with each segment's sequence number before it is transcoded: a segment that
    /// does not follow the last one (a gap, a repeat, a restart) is a discontinuity, and
    /// its stream starts cold.
    pub fn follow(&mut self, seq: i64) {
        if let Some(last) = self.last_seq {
            if seq != last.saturating_add(1) {
                self.reset(format!(
                    "segment {seq} does not follow segment {last}: a discontinuity"
                ));
            }
        }
        self.last_seq = Some(seq);
    }

    /// Segments transcoded through this session.
    pub fn segments(&self) -> u64 {
        self.segments
    }
    /// Decoders opened (the first segment's, and one per reset or change).
    pub fn decoder_opens(&self) -> u64 {
        self.decoder_opens
    }
    /// Encoders opened over all rungs.
    pub fn encoder_opens(&self) -> u64 {
        self.encoder_opens
    }

    /// Takes the warm decoder if it fits `key`; a misfit is closed, and the reason returned.
    pub(super) fn take_decoder(&mut self, key: &DecoderKey, warm: &mut WarmUse) -> Option<Decoder> {
        warm.reset = self.pending_reset.take();
        let (old, decoder) = self.decoder.take()?;
        match old.differs(key) {
            None => {
                warm.decoder_reused = true;
                Some(decoder)
            }
            Some(why) => {
                tracing::debug!(reason = %why, "stream decoder closed");
                warm.reset.get_or_insert(why);
                None
            }
        }
    }

    /// Takes the warm encoder that fits `key`, if one does.
    pub(super) fn take_encoder(&mut self, key: &EncoderKey) -> Option<WarmEncoder> {
        let i = self.encoders.iter().position(|e| &e.key == key)?;
        Some(self.encoders.swap_remove(i))
    }

    pub(super) fn opened(&mut self, decoder: bool, encoders: u64) {
        if decoder {
            self.decoder_opens += 1;
        }
        self.encoder_opens += encoders;
    }

    /// Keeps the contexts of a segment that succeeded for the next one.
    pub(super) fn keep(&mut self, decoder: (DecoderKey, Decoder), encoders: Vec<WarmEncoder>) {
        self.segments += 1;
        self.decoder = Some(decoder);
        self.encoders = encoders;
    }

    /// A segment failed: nothing it touched is reused.
    pub(super) fn failed(&mut self) {
        self.segments += 1;
        self.decoder = None;
        self.encoders.clear();
        self.pending_reset = Some("the previous segment failed".into());
    }
}
