//! Wire types of the AI-worker protocol, written by hand after `proto/lp_ai_rpc.proto`,
//! and the `net.AIWorker` client. Same approach as [`super::proto`]: no build script, and
//! `matches_protoc_encoding` checks the structs against the `.proto` byte for byte.

use std::collections::HashMap;

/// gRPC path of the only RPC an AI worker calls.
pub const REGISTER_AI_WORKER_PATH: &str = "/net.AIWorker/RegisterAIWorker";

#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterAiWorkerRequest {
    #[prost(string, tag = "1")]
    pub secret: String,
    #[prost(message, optional, tag = "2")]
    pub capabilities: Option<AiCapabilities>,
    #[prost(message, repeated, tag = "3")]
    pub hardware: Vec<HardwareInformation>,
}

/// `net.Capabilities` with the per-capability model constraints AI workers send.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AiCapabilities {
    #[prost(uint64, repeated, tag = "1")]
    pub bitstring: Vec<u64>,
    #[prost(uint64, repeated, tag = "2")]
    pub mandatories: Vec<u64>,
    #[prost(map = "uint32, uint32", tag = "3")]
    pub capacities: HashMap<u32, u32>,
    #[prost(string, tag = "4")]
    pub version: String,
    #[prost(message, optional, tag = "5")]
    pub constraints: Option<AiConstraints>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AiConstraints {
    #[prost(string, tag = "1")]
    pub min_version: String,
    #[prost(map = "uint32, message", tag = "2")]
    pub per_capability: HashMap<u32, CapabilityConstraints>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CapabilityConstraints {
    #[prost(map = "string, message", tag = "1")]
    pub models: HashMap<String, ModelConstraint>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelConstraint {
    #[prost(bool, tag = "1")]
    pub warm: bool,
    #[prost(uint32, tag = "2")]
    pub capacity: u32,
    #[prost(string, tag = "3")]
    pub runner_version: String,
    #[prost(uint32, tag = "4")]
    pub capacity_in_use: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HardwareInformation {
    #[prost(string, tag = "1")]
    pub pipeline: String,
    #[prost(string, tag = "2")]
    pub model_id: String,
    #[prost(map = "string, message", tag = "3")]
    pub gpu_info: HashMap<String, GpuComputeInfo>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct GpuComputeInfo {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(uint32, tag = "4")]
    pub major: u32,
    #[prost(uint32, tag = "5")]
    pub minor: u32,
    #[prost(int64, tag = "6")]
    pub memory_free: i64,
    #[prost(int64, tag = "7")]
    pub memory_total: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AiJobData {
    #[prost(string, tag = "1")]
    pub pipeline: String,
    /// JSON `{"input_url": "...", "request": {...}}`.
    #[prost(bytes = "vec", tag = "2")]
    pub request_data: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyAiJob {
    #[prost(message, optional, tag = "1")]
    pub ai_job_data: Option<AiJobData>,
    #[prost(int64, tag = "2")]
    pub task_id: i64,
}

/// The `net.AIWorker` client: one server-streaming call.
#[derive(Clone, Debug)]
pub struct AiWorkerClient {
    inner: tonic::client::Grpc<tonic::transport::Channel>,
}

impl AiWorkerClient {
    pub fn new(channel: tonic::transport::Channel) -> Self {
        AiWorkerClient {
            inner: tonic::client::Grpc::new(channel),
        }
    }

    /// `RegisterAIWorker`: resolves once the orchestrator answers the call.
    pub async fn register_ai_worker(
        &mut self,
        request: RegisterAiWorkerRequest,
    ) -> Result<tonic::Response<tonic::Streaming<NotifyAiJob>>, tonic::Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(REGISTER_AI_WORKER_PATH);
        let codec = tonic_prost::ProstCodec::<RegisterAiWorkerRequest, NotifyAiJob>::default();
        self.inner
            .server_streaming(tonic::Request::new(request), path, codec)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Encodes the same messages with protoc (from `proto/lp_ai_rpc.proto`) and with these
    /// structs. Maps have one entry each so the byte order is fixed. Needs protoc; fails in
    /// CI without it.
    #[test]
    fn matches_protoc_encoding() {
        let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
        let register = RegisterAiWorkerRequest {
            secret: "s".into(),
            capabilities: Some(AiCapabilities {
                bitstring: vec![1 << 30],
                capacities: HashMap::from([(30, 2)]),
                version: "0.8.0".into(),
                constraints: Some(AiConstraints {
                    min_version: "0.7.0".into(),
                    per_capability: HashMap::from([(
                        30,
                        CapabilityConstraints {
                            models: HashMap::from([(
                                "m".to_string(),
                                ModelConstraint {
                                    warm: true,
                                    capacity: 2,
                                    runner_version: "r1".into(),
                                    capacity_in_use: 1,
                                },
                            )]),
                        },
                    )]),
                }),
                ..Default::default()
            }),
            hardware: vec![HardwareInformation {
                pipeline: "upscale".into(),
                model_id: "m".into(),
                gpu_info: HashMap::from([(
                    "0".to_string(),
                    GpuComputeInfo {
                        id: "GPU-0".into(),
                        name: "sim".into(),
                        major: 8,
                        minor: 6,
                        memory_free: 1000,
                        memory_total: 2000,
                    },
                )]),
            }],
        };
        let notify = NotifyAiJob {
            ai_job_data: Some(AiJobData {
                pipeline: "upscale".into(),
                request_data: b"{}".to_vec(),
            }),
            task_id: 42,
        };
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            (
                "net.RegisterAIWorkerRequest",
                "secret: \"s\" capabilities { bitstring: [1073741824] capacities { key: 30 value: 2 } version: \"0.8.0\" \
                 constraints { minVersion: \"0.7.0\" PerCapability { key: 30 value { models { key: \"m\" value { warm: true capacity: 2 runnerVersion: \"r1\" capacityInUse: 1 } } } } } } \
                 hardware { pipeline: \"upscale\" model_id: \"m\" gpu_info { key: \"0\" value { id: \"GPU-0\" name: \"sim\" major: 8 minor: 6 memory_free: 1000 memory_total: 2000 } } }",
                register.encode_to_vec(),
            ),
            (
                "net.NotifyAIJob",
                "AIJobData { pipeline: \"upscale\" requestData: \"{}\" } taskId: 42",
                notify.encode_to_vec(),
            ),
        ];
        for (message, text, ours) in cases {
            let out = std::process::Command::new("protoc")
                .arg(format!("--proto_path={proto_dir}"))
                .arg(format!("--encode={message}"))
                .arg("lp_ai_rpc.proto")
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
            let Ok(out) = out else {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI is set but protoc is not installed (scripts/setup.sh installs it)"
                );
                eprintln!("protoc not installed; skipping the encoding cross-check");
                return;
            };
            assert!(out.status.success(), "protoc failed for {message}");
            assert_eq!(
                out.stdout, ours,
                "{message} encodes differently from protoc"
            );
            // And back: what protoc wrote decodes to the same struct.
            if message == "net.NotifyAIJob" {
                assert_eq!(NotifyAiJob::decode(&out.stdout[..]).unwrap(), notify);
            } else {
                assert_eq!(
                    RegisterAiWorkerRequest::decode(&out.stdout[..]).unwrap(),
                    register
                );
            }
        }
    }
}
