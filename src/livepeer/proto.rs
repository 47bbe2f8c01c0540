//! Wire types of the remote-transcoder protocol, written by hand after `proto/lp_rpc.proto`.
//!
//! Hand-written prost structs and a hand-written tonic client keep protoc and a build script
//! out of the build; `proto/lp_rpc.proto` stays the documented source of truth and the
//! `matches_protoc_encoding` test checks these structs against it byte for byte.

use std::collections::HashMap;
use std::time::Duration;

/// gRPC path of the only RPC a transcoder calls.
pub const REGISTER_TRANSCODER_PATH: &str = "/net.Transcoder/RegisterTranscoder";
/// go-livepeer's `Orchestrator.GetOrchestrator`, served on the same TLS port.
pub const GET_ORCHESTRATOR_PATH: &str = "/net.Orchestrator/GetOrchestrator";

/// `Authorization` value go-livepeer's orchestrator expects on `/transcodeResults`.
pub const PROTOCOL_VERSION: &str = "Livepeer-Transcoder-1.0";

/// Content type of an error result.
pub const TRANSCODING_ERROR_MIME: &str = "livepeer/transcoding-error";

/// The version we announce in `Capabilities.version`. Gateways compare it with *go-livepeer*
/// releases (`-orchMinLivepeerVersion`), so it names the go-livepeer protocol level comine
/// implements, not comine's own version.
pub const LIVEPEER_COMPAT_VERSION: &str = "0.8.0";

/// Capabilities we advertise (go-livepeer `core/capabilities.go` numbering): H.264,
/// MPEG-TS, MP4, fractional frame rates, the three storage kinds (the O stores, not us),
/// the four H.264 profiles, GOP and auth tokens. Not MPEG-7 signatures (14) or HEVC (15, 16).
pub const CAPABILITIES: &[u32] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// The orchestrator's deadline for a segment of `duration_ms`: max(floor, 4 × duration).
pub fn deadline_for(duration_ms: u32, floor: Duration) -> Duration {
    floor.max(Duration::from_millis(4 * u64::from(duration_ms)))
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterRequest {
    #[prost(string, tag = "1")]
    pub secret: String,
    #[prost(int64, tag = "2")]
    pub capacity: i64,
    #[prost(message, optional, tag = "3")]
    pub capabilities: Option<Capabilities>,
    /// Livepool-style pool extension: the 20 raw address bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub ethereum_address: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Capabilities {
    #[prost(uint64, repeated, tag = "1")]
    pub bitstring: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub mandatories: Vec<u64>,
    #[prost(map = "uint32, uint32", tag = "3")]
    pub capacities: HashMap<u32, u32>,
    #[prost(string, tag = "4")]
    pub version: String,
    #[prost(message, optional, tag = "5")]
    pub constraints: Option<Constraints>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Constraints {
    #[prost(string, tag = "1")]
    pub min_version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthToken {
    #[prost(bytes = "vec", tag = "1")]
    pub token: Vec<u8>,
    #[prost(string, tag = "2")]
    pub session_id: String,
    #[prost(int64, tag = "3")]
    pub expiration: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SegParameters {
    #[prost(uint64, tag = "1")]
    pub from: u64,
    #[prost(uint64, tag = "2")]
    pub to: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct VideoProfile {
    #[prost(string, tag = "16")]
    pub name: String,
    #[prost(int32, tag = "17")]
    pub width: i32,
    #[prost(int32, tag = "18")]
    pub height: i32,
    #[prost(int32, tag = "19")]
    pub bitrate: i32,
    #[prost(uint32, tag = "20")]
    pub fps: u32,
    #[prost(enumeration = "Format", tag = "21")]
    pub format: i32,
    #[prost(uint32, tag = "22")]
    pub fps_den: u32,
    #[prost(enumeration = "H264Profile", tag = "23")]
    pub profile: i32,
    #[prost(int32, tag = "24")]
    pub gop: i32,
    #[prost(enumeration = "VideoCodec", tag = "25")]
    pub encoder: i32,
    #[prost(int32, tag = "26")]
    pub color_depth: i32,
    #[prost(int32, tag = "27")]
    pub chroma_format: i32,
    #[prost(uint32, tag = "28")]
    pub quality: u32,
}

/// `VideoProfile.Format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Format {
    Mpegts = 0,
    Mp4 = 1,
}

/// `VideoProfile.Profile`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum H264Profile {
    EncoderDefault = 0,
    H264Baseline = 1,
    H264Main = 2,
    H264High = 3,
    H264ConstrainedHigh = 4,
}

/// `VideoProfile.VideoCodec`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VideoCodec {
    H264 = 0,
    H265 = 1,
    Vp8 = 2,
    Vp9 = 3,
    Av1 = 4,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SegData {
    #[prost(bytes = "vec", tag = "1")]
    pub manifest_id: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub seq: i64,
    #[prost(bytes = "vec", tag = "3")]
    pub hash: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub profiles: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub sig: Vec<u8>,
    /// Milliseconds; 0 means 2 s.
    #[prost(int32, tag = "6")]
    pub duration: i32,
    #[prost(message, optional, tag = "7")]
    pub capabilities: Option<Capabilities>,
    #[prost(message, optional, tag = "8")]
    pub auth_token: Option<AuthToken>,
    #[prost(bool, tag = "10")]
    pub calc_perceptual_hash: bool,
    #[prost(message, repeated, tag = "33")]
    pub full_profiles: Vec<VideoProfile>,
    #[prost(message, repeated, tag = "34")]
    pub full_profiles2: Vec<VideoProfile>,
    #[prost(message, repeated, tag = "35")]
    pub full_profiles3: Vec<VideoProfile>,
    #[prost(message, optional, tag = "37")]
    pub segment_parameters: Option<SegParameters>,
    #[prost(bool, tag = "38")]
    pub force_session_reinit: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifySegment {
    #[prost(string, tag = "1")]
    pub url: String,
    #[prost(message, optional, tag = "3")]
    pub seg_data: Option<SegData>,
    #[prost(int64, tag = "16")]
    pub task_id: i64,
    #[prost(bytes = "vec", tag = "17")]
    pub profiles: Vec<u8>,
    #[prost(string, tag = "18")]
    pub orch_id: String,
}

impl SegData {
    /// Livepeer's segment length, assumed when a notification carries no duration.
    pub const DEFAULT_DURATION_MS: u32 = 2000;

    /// The segment's duration in ms, or [`Self::DEFAULT_DURATION_MS`] when it carries none
    /// (a negative one is refused as bad input where the segment is transcoded).
    pub fn duration_ms(&self) -> u32 {
        u32::try_from(self.duration)
            .ok()
            .filter(|ms| *ms > 0)
            .unwrap_or(Self::DEFAULT_DURATION_MS)
    }

    /// The profiles to use: `fullProfiles3`, falling back to `fullProfiles2`, then `fullProfiles`.
    pub fn profiles(&self) -> &[VideoProfile] {
        if !self.full_profiles3.is_empty() {
            &self.full_profiles3
        } else if !self.full_profiles2.is_empty() {
            &self.full_profiles2
        } else {
            &self.full_profiles
        }
    }
}

impl NotifySegment {
    /// The teardown notification go-livepeer sends when `session_id` ends: no URL, only the
    /// session ID.
    pub fn teardown(session_id: &str) -> Self {
        NotifySegment {
            seg_data: Some(SegData {
                auth_token: Some(AuthToken {
                    session_id: session_id.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The segment's duration in ms ([`SegData::duration_ms`]).
    pub fn duration_ms(&self) -> u32 {
        self.seg_data
            .as_ref()
            .map_or(SegData::DEFAULT_DURATION_MS, SegData::duration_ms)
    }

    /// The session ID of a teardown notification (empty URL, session ID set), if this is one.
    pub fn teardown_session(&self) -> Option<&str> {
        if !self.url.is_empty() {
            return None;
        }
        self.seg_data
            .as_ref()
            .and_then(|s| s.auth_token.as_ref())
            .map(|t| t.session_id.as_str())
            .filter(|s| !s.is_empty())
    }

    /// The session this segment belongs to: the auth token's session ID, else the manifest ID.
    pub fn session_key(&self) -> String {
        let Some(seg) = &self.seg_data else {
            return String::new();
        };
        match seg.auth_token.as_ref().map(|t| t.session_id.as_str()) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => String::from_utf8_lossy(&seg.manifest_id).into_owned(),
        }
    }
}

/// `GetOrchestrator`'s request: a sender's address and its EIP-191 signature over the
/// address's checksummed hex (go-livepeer's `genOrchestratorReq`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrchestratorRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub address: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub sig: Vec<u8>,
}

/// `OrchestratorInfo.price_info`: `pricePerUnit` wei per `pixelsPerUnit` pixels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PriceInfo {
    #[prost(int64, tag = "1")]
    pub price_per_unit: i64,
    #[prost(int64, tag = "2")]
    pub pixels_per_unit: i64,
}

/// The part of `GetOrchestrator`'s reply a transcoder reads (other fields are skipped).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OrchestratorInfo {
    #[prost(string, tag = "1")]
    pub transcoder: String,
    #[prost(message, optional, tag = "3")]
    pub price_info: Option<PriceInfo>,
    /// The orchestrator's ETH address (20 bytes).
    #[prost(bytes = "vec", tag = "4")]
    pub address: Vec<u8>,
}

/// Builds a capability bitstring (bit n of word n/64) from capability numbers.
pub fn capability_bitstring(caps: &[u32]) -> Vec<u64> {
    let mut words = Vec::new();
    for &c in caps {
        let word = (c / 64) as usize;
        if words.len() <= word {
            words.resize(word + 1, 0u64);
        }
        words[word] |= 1u64 << (c % 64);
    }
    words
}

/// The `net.Transcoder` client: one server-streaming call.
#[derive(Clone, Debug)]
pub struct TranscoderClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl TranscoderClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        TranscoderClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// `RegisterTranscoder`: resolves once the orchestrator answers the call, which
    /// go-livepeer only does with its first segment or its refusal.
    pub async fn register_transcoder(
        &mut self,
        request: RegisterRequest,
    ) -> Result<tonic::Response<tonic::Streaming<NotifySegment>>, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(REGISTER_TRANSCODER_PATH);
        let codec = tonic_prost::ProstCodec::<RegisterRequest, NotifySegment>::default();
        self.inner
            .server_streaming(tonic::Request::new(request), path, codec)
            .await
    }
}

/// The `net.Orchestrator` client: the unary `GetOrchestrator`.
#[derive(Clone, Debug)]
pub struct OrchestratorClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl OrchestratorClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        OrchestratorClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    pub async fn get_orchestrator(
        &mut self,
        request: OrchestratorRequest,
    ) -> Result<OrchestratorInfo, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(GET_ORCHESTRATOR_PATH);
        let codec = tonic_prost::ProstCodec::<OrchestratorRequest, OrchestratorInfo>::default();
        self.inner
            .unary(tonic::Request::new(request), path, codec)
            .await
            .map(tonic::Response::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn deadline_is_four_durations_with_an_eight_second_floor() {
        let floor = Duration::from_secs(8);
        assert_eq!(deadline_for(2000, floor), Duration::from_secs(8));
        assert_eq!(deadline_for(6000, floor), Duration::from_secs(24));
    }

    #[test]
    fn falls_back_from_profiles3_to_2_to_1() {
        let vp = |name: &str| VideoProfile {
            name: name.into(),
            ..Default::default()
        };
        let mut seg = SegData {
            full_profiles: vec![vp("one")],
            ..Default::default()
        };
        assert_eq!(seg.profiles()[0].name, "one");
        seg.full_profiles2 = vec![vp("two")];
        assert_eq!(seg.profiles()[0].name, "two");
        seg.full_profiles3 = vec![vp("three")];
        assert_eq!(seg.profiles()[0].name, "three");
    }

    #[test]
    fn bitstring_sets_the_right_bits() {
        assert_eq!(
            capability_bitstring(&[0, 1, 2, 12]),
            vec![0b1_0000_0000_0111]
        );
        assert_eq!(capability_bitstring(&[65]), vec![0, 2]);
    }

    #[test]
    fn teardown_is_empty_url_with_session() {
        let mut n = NotifySegment {
            seg_data: Some(SegData {
                auth_token: Some(AuthToken {
                    session_id: "s1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(n.teardown_session(), Some("s1"));
        n.url = "https://o/x.ts".into();
        assert_eq!(n.teardown_session(), None);
        assert_eq!(n.session_key(), "s1");
    }

    /// Encodes the same messages with protoc (from `proto/lp_rpc.proto`) and with these
    /// structs and compares bytes. Without protoc it is skipped, except under `CI`, where a
    /// missing protoc fails the test (scripts/setup.sh installs it).
    #[test]
    fn matches_protoc_encoding() {
        let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            (
                "net.RegisterRequest",
                "secret: \"s3cr3t\" capacity: 7 capabilities { bitstring: [4103] version: \"0.8.0\" } ethereum_address: \"\\001\\002\"",
                RegisterRequest {
                    secret: "s3cr3t".into(),
                    capacity: 7,
                    capabilities: Some(Capabilities {
                        bitstring: vec![4103],
                        version: "0.8.0".into(),
                        ..Default::default()
                    }),
                    ethereum_address: vec![1, 2],
                }
                .encode_to_vec(),
            ),
            (
                "net.NotifySegment",
                "url: \"https://o/1.ts\" taskId: 9 orchId: \"o\" profiles: \"invalid\" segData { manifestId: \"m\" seq: 3 duration: 2000 auth_token { session_id: \"s\" } calc_perceptual_hash: true fullProfiles3 { name: \"p\" width: 640 height: 360 bitrate: 900000 fps: 30 fpsDen: 1 format: MP4 profile: H264_CONSTRAINED_HIGH gop: -1 encoder: H265 quality: 5 } fullProfiles2 { name: \"q\" } fullProfiles { name: \"r\" } segment_parameters { from: 1 to: 2 } ForceSessionReinit: true }",
                NotifySegment {
                    url: "https://o/1.ts".into(),
                    task_id: 9,
                    orch_id: "o".into(),
                    profiles: b"invalid".to_vec(),
                    seg_data: Some(SegData {
                        manifest_id: b"m".to_vec(),
                        seq: 3,
                        duration: 2000,
                        auth_token: Some(AuthToken {
                            session_id: "s".into(),
                            ..Default::default()
                        }),
                        calc_perceptual_hash: true,
                        full_profiles3: vec![VideoProfile {
                            name: "p".into(),
                            width: 640,
                            height: 360,
                            bitrate: 900_000,
                            fps: 30,
                            fps_den: 1,
                            format: Format::Mp4 as i32,
                            profile: H264Profile::H264ConstrainedHigh as i32,
                            gop: -1,
                            encoder: VideoCodec::H265 as i32,
                            quality: 5,
                            ..Default::default()
                        }],
                        full_profiles2: vec![VideoProfile {
                            name: "q".into(),
                            ..Default::default()
                        }],
                        full_profiles: vec![VideoProfile {
                            name: "r".into(),
                            ..Default::default()
                        }],
                        segment_parameters: Some(SegParameters { from: 1, to: 2 }),
                        force_session_reinit: true,
                        ..Default::default()
                    }),
                }
                .encode_to_vec(),
            ),
        ];
        for (message, text, ours) in cases {
            let out = std::process::Command::new("protoc")
                .arg(format!("--proto_path={proto_dir}"))
                .arg(format!("--encode={message}"))
                .arg("lp_rpc.proto")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    child
                        .stdin
                        .take()
                        .expect("piped stdin")
                        .write_all(text.as_bytes())?;
                    child.wait_with_output()
                });
            let out = match out {
                Ok(out) => out,
                Err(e) if std::env::var_os("CI").is_some() => {
                    panic!("CI is set but protoc cannot run ({e}): install protobuf-compiler (scripts/setup.sh)")
                }
                Err(_) => {
                    eprintln!("protoc not installed; skipping the encoding cross-check");
                    return;
                }
            };
            assert!(out.status.success(), "protoc failed for {message}");
            // Field order is canonical in both encoders, so bytes compare directly; decode
            // too so a mismatch is readable.
            assert_eq!(
                out.stdout, ours,
                "{message} encodes differently from protoc"
            );
        }
    }
}
