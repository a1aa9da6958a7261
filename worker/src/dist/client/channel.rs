//! The channel to the coordinator: keepalive, TLS, and the token on every call.

use std::time::Duration;

use ringtrain_common::auth::{Token, AUTH_HEADER};
use ringtrain_common::pb::coordinator_client::CoordinatorClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::train::TrainError;

/// HTTP/2 keepalive period (and answer timeout) for a given patience.
pub fn keepalive_for(patience: Duration) -> Duration {
    (patience / 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// Puts the run's token on every call (nothing when no token is configured).
#[derive(Clone)]
pub struct Authorize {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Authorize {
    pub(super) fn new(token: Option<&Token>) -> Result<Self, TrainError> {
        let header = match token {
            Some(t) => Some(t.bearer().parse().map_err(|_| {
                TrainError::Coordinator("the auth token cannot go into a header".into())
            })?),
            None => None,
        };
        Ok(Self { header })
    }
}

impl tonic::service::Interceptor for Authorize {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert(AUTH_HEADER, h.clone());
        }
        Ok(req)
    }
}

pub(super) type Rpc = CoordinatorClient<InterceptedService<Channel, Authorize>>;

/// How to reach the coordinator: its token, and TLS when the URL is https.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub token: Option<Token>,
    /// PEM file of the CA that signed the coordinator's certificate (https URLs).
    pub tls_ca: Option<std::path::PathBuf>,
    /// Name to check the certificate against (default: the URL's host).
    pub tls_domain: Option<String>,
}

/// Largest message either way (the coordinator's server uses the same limit).
pub use ringtrain_common::wire::MAX_MESSAGE_BYTES;

pub(super) fn endpoint(
    url: &str,
    sec: &Security,
    patience: Duration,
) -> Result<Endpoint, TrainError> {
    let bad = |e: String| TrainError::Coordinator(format!("coordinator URL {url}: {e}"));
    let keepalive = keepalive_for(patience);
    let ep = Channel::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(keepalive)
        .http2_keep_alive_interval(keepalive)
        .keep_alive_timeout(keepalive)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(keepalive));
    let Some(ca) = &sec.tls_ca else {
        if url.starts_with("https://") {
            return Err(bad(
                "an https URL needs --tls-ca (the CA of its certificate)".into(),
            ));
        }
        return Ok(ep);
    };
    let pem = std::fs::read(ca).map_err(|e| {
        TrainError::Coordinator(format!("cannot read the TLS CA {}: {e}", ca.display()))
    })?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
    if let Some(d) = &sec.tls_domain {
        tls = tls.domain_name(d.clone());
    }
    ep.tls_config(tls).map_err(|e| bad(format!("TLS: {e}")))
}
