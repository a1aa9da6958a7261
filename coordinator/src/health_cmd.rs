//! `ringtrain health [--addr URL] [--service NAME]`: the gRPC health check the kubelet's `grpc`
//! probe makes (`grpc.health.v1.Health/Check`), from a shell: exit 0 when the coordinator
//! answers SERVING, 1 otherwise (NOT_SERVING, an unknown service, nothing listening, no answer
//! within `--timeout-s`), with the reason on stderr.
//!
//! For exec probes on clusters without gRPC probes, for `podman exec`/`kubectl exec` checks
//! (deploy/smoke.sh runs it inside the coordinator container), and for scripts. The health
//! service is open without the run's token (coordinator/src/health.rs); TLS is not spoken here
//! (the TLS overlay probes the port with tcpSocket instead).
//!
//! Tests: `coordinator/tests/health.rs` (the binary against a real coordinator).

use std::time::Duration;

use clap::Args;
use thiserror::Error;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Flags of `ringtrain health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The coordinator's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:29400")]
    pub addr: String,
    /// The health service to ask for: "" (serving; the startup and readiness probes) or
    /// "liveness" (no stalled round; the liveness probe).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this many seconds (connecting and the call together).
    #[arg(long, default_value_t = 1.0)]
    pub timeout_s: f64,
}

/// Why a health check did not say SERVING.
#[derive(Debug, Error)]
pub enum HealthError {
    #[error("--addr {addr:?} is not a URL like http://HOST:PORT")]
    Addr {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("--timeout-s must be a positive number of seconds, not {0}")]
    Timeout(f64),
    #[error("no answer from {addr} within {secs} s")]
    NoAnswer { addr: String, secs: f64 },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("{addr} answered the health check with an error: {0}", .status.message())]
    Rpc { addr: String, status: tonic::Status },
    #[error("{addr}: service {service:?} is {status}")]
    NotServing {
        addr: String,
        service: String,
        status: &'static str,
    },
}

/// Checks once; Ok with the line to print when the service is SERVING.
pub async fn check(args: &HealthArgs) -> Result<String, HealthError> {
    if !(args.timeout_s.is_finite() && args.timeout_s > 0.0) {
        return Err(HealthError::Timeout(args.timeout_s));
    }
    let limit = Duration::from_secs_f64(args.timeout_s);
    let addr = args.addr.clone();
    let endpoint = tonic::transport::Endpoint::from_shared(addr.clone())
        .map_err(|source| HealthError::Addr {
            addr: addr.clone(),
            source,
        })?
        .connect_timeout(limit);
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| HealthError::Connect {
                addr: addr.clone(),
                source,
            })?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|status| HealthError::Rpc {
                addr: addr.clone(),
                status,
            })
    };
    let answer = tokio::time::timeout(limit, call)
        .await
        .map_err(|_| HealthError::NoAnswer {
            addr: addr.clone(),
            secs: args.timeout_s,
        })??
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    if status == ServingStatus::Serving {
        Ok(format!("{addr}: service {:?} is SERVING", args.service))
    } else {
        Err(HealthError::NotServing {
            addr,
            service: args.service.clone(),
            status: status.as_str_name(),
        })
    }
}
