//! Malformed and oversized messages against the real server on 127.0.0.1 (cluster mode: anyone
//! on the network can send bytes): random bytes to every method, well-formed messages with
//! absurd values, and a message over the size bound. Each gets a clear status (never INTERNAL
//! or UNKNOWN, which a panicking handler would produce), calls without the token are refused,
//! and the coordinator still answers afterwards.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut};
use prost::Message;
use ringtrain_common::pb;
use ringtrain_coordinator::{Run, RunConfig};
use tokio::net::TcpListener;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// Sends and receives raw bytes, so the server's decoders see exactly what the test made.
#[derive(Default, Clone)]
struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let v = buf.chunk().to_vec();
        buf.advance(v.len());
        Ok(Some(v))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

const METHODS: [&str; 8] = [
    "Join",
    "Heartbeat",
    "ReportPixelStats",
    "GetEpochPlan",
    "ReportEpoch",
    "Leave",
    "Checkpoint",
    "ShareNcclId",
];

async fn call(
    channel: &tonic::transport::Channel,
    method: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = format!("/ringtrain.v1.Coordinator/{method}")
        .parse()
        .unwrap();
    let mut req = tonic::Request::new(body);
    req.set_timeout(Duration::from_secs(5));
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    grpc.unary(req, path, Raw).await.map(|r| r.into_inner())
}

/// xorshift64*: reproducible bytes without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn assert_clear(method: &str, what: &str, r: &Result<Vec<u8>, tonic::Status>) {
    if let Err(s) = r {
        assert!(
            !matches!(s.code(), Code::Internal | Code::Unknown | Code::Unavailable),
            "{method} with {what}: {:?} {}",
            s.code(),
            s.message()
        );
    }
}

const TOKEN: &str = "fuzz-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_absurd_and_oversized_messages_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = RunConfig {
        auth_token_file: Some(token_file),
        join_timeout_s: 120.0,
        ..common::config(dir.path(), 2)
    };
    let run = Run::prepare_with_table(config, Box::new(std::io::sink())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(run.serve(listener, std::future::pending()));
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Without the token nothing reaches a decoder.
    for m in METHODS {
        let r = call(&channel, m, vec![0xff; 32], None).await;
        assert_eq!(r.unwrap_err().code(), Code::Unauthenticated, "{m}");
    }

    // Random bytes, many lengths, every method.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut invalid = 0;
    for round in 0..40 {
        for m in METHODS {
            let len = [0, 1, 2, 7, 64, 1000][round % 6] + (rng.next() % 16) as usize;
            let r = call(&channel, m, rng.bytes(len), Some(TOKEN)).await;
            assert_clear(m, &format!("{len} random bytes"), &r);
            invalid += usize::from(r.as_ref().is_err_and(|s| s.code() == Code::InvalidArgument));
        }
    }
    assert!(
        invalid > 100,
        "undecodable bodies are INVALID_ARGUMENT ({invalid} of 320)"
    );

    // Well-formed messages with absurd values.
    let absurd: Vec<(&str, Vec<u8>)> = vec![
        (
            "Join",
            pb::JoinRequest {
                protocol_version: u32::MAX,
                worker_id: "w".repeat(1 << 20),
                collective_addr: "not an address".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "Join",
            pb::JoinRequest {
                protocol_version: ringtrain_coordinator::PROTOCOL_VERSION,
                worker_id: String::new(),
                dataset_fingerprint: "x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ReportEpoch",
            pb::EpochReport {
                run_id: "test-run".into(),
                rank: u32::MAX,
                epoch: u32::MAX,
                step_losses: vec![f32::NAN; 1000],
                valid_count: u64::MAX,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "ShareNcclId",
            pb::NcclIdRequest {
                run_id: "test-run".into(),
                rank: 7,
                unique_id: vec![1; 1 << 16],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "Checkpoint",
            pb::CheckpointReport {
                run_id: "test-run".into(),
                global_step: u64::MAX,
                model_safetensors: vec![0; 1 << 20],
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            "GetEpochPlan",
            pb::EpochPlanRequest {
                run_id: "test-run".into(),
                epoch: u32::MAX,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ];
    for (m, body) in absurd {
        let r = call(&channel, m, body, Some(TOKEN)).await;
        assert_clear(m, "absurd values", &r);
        assert!(r.is_err(), "{m} with absurd values must be refused");
    }

    // Over the 64 MiB bound: refused before it is decoded.
    let r = call(&channel, "Leave", vec![0; (64 << 20) + 1], Some(TOKEN)).await;
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::OutOfRange, "{}", s.message());
    assert!(s.message().contains("too large"), "{}", s.message());

    // Still serving: a real (wrong-version) Join gets its usual answer.
    let bad_version = pb::JoinRequest {
        protocol_version: 1,
        worker_id: "late".into(),
        ..Default::default()
    };
    let r = call(&channel, "Join", bad_version.encode_to_vec(), Some(TOKEN)).await;
    let s = r.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(!server.is_finished(), "the coordinator is still running");
    server.abort();
}
