//! Cluster mode: the run's token on every gRPC call, and TLS for the gRPC server.
//!
//! # Contract
//! * With a token (`--auth-token-file`, `$RINGTRAIN_AUTH_TOKEN`, or the one `launch` makes), a
//!   Coordinator call without `authorization: Bearer <token>` is refused UNAUTHENTICATED and
//!   logged with the caller's address, before its body is decoded: nothing it sent is used.
//!   The comparison is constant-time (`ringtrain_common::auth::ct_eq`). The health service is
//!   not behind the token (kubelet probes cannot send one).
//! * TLS (`--tls-cert` + `--tls-key`, PEM, rustls): both files are read when the run is
//!   prepared, so a missing or unreadable file is an error naming it before anything serves.
//!
//! Tests: `tests` at the bottom; `tests/tests/security.rs` (real binaries: refused workers, a
//! TLS run).

use std::path::Path;
use std::sync::Arc;

use ringtrain_common::auth::{Token, AUTH_HEADER};
use tonic::transport::{Identity, ServerTlsConfig};

use crate::config::RunConfig;

/// A request whose body is not a valid protobuf message answers INVALID_ARGUMENT: the caller
/// sent something malformed (tonic's codec says INTERNAL, which would blame the coordinator).
/// Applied to every response of the server; only rewrites that one case.
pub fn malformed_is_invalid_argument<B>(mut res: http::Response<B>) -> http::Response<B> {
    let h = res.headers_mut();
    let decode_error = h.get("grpc-status").is_some_and(|v| v == "13")
        && h.get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"failed%20to%20decode"));
    if decode_error {
        h.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
    res
}

/// Why the run's security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Token(#[from] ringtrain_common::auth::AuthError),
    #[error("cannot read the TLS {what} {path}: {reason}")]
    TlsFile {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("tls_cert and tls_key go together: give both or neither")]
    TlsPair,
    /// gRPC would be reachable from other machines with nobody's identity checked.
    #[error("refusing to serve gRPC on {listen} without an auth token: anyone who can reach that port could join the run, report results and upload checkpoints. Give the run a token (--auth-token-file FILE or RINGTRAIN_AUTH_TOKEN; e.g. `openssl rand -hex 32 > token`), listen on 127.0.0.1, or pass --insecure-no-auth on a trusted, isolated network")]
    Unauthenticated { listen: String },
}

/// Refuses a gRPC listen address other machines can reach (anything but loopback) when the run
/// has no token, unless the configuration says `insecure_no_auth`.
pub fn check_exposure(config: &RunConfig, token: Option<&Token>) -> Result<(), SecurityError> {
    let loopback = config
        .listen
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if token.is_some() || loopback || config.insecure_no_auth {
        return Ok(());
    }
    Err(SecurityError::Unauthenticated {
        listen: config.listen.clone(),
    })
}

/// The token of a run from its configuration (file) or `$RINGTRAIN_AUTH_TOKEN`.
pub fn load_token(config: &RunConfig) -> Result<Option<Token>, SecurityError> {
    Ok(Token::load(
        config.auth_token_file.as_deref(),
        std::env::var("RINGTRAIN_AUTH_TOKEN").ok().as_deref(),
    )?)
}

/// The server's TLS settings, read now (`None`: plain HTTP/2).
pub fn load_tls(config: &RunConfig) -> Result<Option<ServerTlsConfig>, SecurityError> {
    let read = |what: &'static str, p: &Path| {
        std::fs::read(p).map_err(|e| SecurityError::TlsFile {
            what,
            path: p.to_path_buf(),
            reason: e.to_string(),
        })
    };
    match (&config.tls_cert, &config.tls_key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let identity = Identity::from_pem(read("certificate", cert)?, read("key", key)?);
            Ok(Some(ServerTlsConfig::new().identity(identity)))
        }
        _ => Err(SecurityError::TlsPair),
    }
}

/// Refused calls are logged at most this often: a stranger must not fill the log.
static UNAUTHENTICATED_LOG: std::sync::LazyLock<ringtrain_common::logging::RateLimit> =
    std::sync::LazyLock::new(|| {
        ringtrain_common::logging::RateLimit::new(20, std::time::Duration::from_secs(10))
    });

/// Checks the token on every Coordinator call (see the module contract).
#[derive(Clone, Default)]
pub struct CheckToken {
    token: Option<Arc<Token>>,
}

impl CheckToken {
    pub fn new(token: Option<Token>) -> Self {
        Self {
            token: token.map(Arc::new),
        }
    }
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(token) = &self.token else {
            crate::guard::mark_authenticated(&req);
            return Ok(req);
        };
        let given = req.metadata().get(AUTH_HEADER).map(|v| v.as_bytes());
        if token.accepts(given) {
            // The connection proved the token: it may stay past the handshake deadline.
            crate::guard::mark_authenticated(&req);
            return Ok(req);
        }
        let peer =
            crate::guard::peer_addr(&req).map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let why = if given.is_none() {
            "no auth token"
        } else {
            "a wrong auth token"
        };
        if let Some(left_out) = UNAUTHENTICATED_LOG.allow() {
            tracing::warn!(%peer, reason = why, left_out, "call refused");
        }
        Err(tonic::Status::unauthenticated(format!(
            "refused: {why}; this run requires its shared token (--auth-token-file or RINGTRAIN_AUTH_TOKEN)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    fn request(header: Option<&str>) -> tonic::Request<()> {
        let mut r = tonic::Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert(AUTH_HEADER, h.parse().unwrap());
        }
        r
    }

    #[test]
    fn calls_need_the_exact_token_when_one_is_set() {
        let t = Token::parse("0123456789abcdef0123", "test").unwrap();
        let mut check = CheckToken::new(Some(t.clone()));
        assert!(check.call(request(Some(&t.bearer()))).is_ok());
        let no = check.call(request(None)).unwrap_err();
        assert_eq!(no.code(), tonic::Code::Unauthenticated);
        assert!(no.message().contains("no auth token"), "{}", no.message());
        let wrong = check
            .call(request(Some("Bearer 0123456789abcdef0124")))
            .unwrap_err();
        assert!(
            wrong.message().contains("a wrong auth token"),
            "{}",
            wrong.message()
        );
        // No token configured: nothing is checked.
        assert!(CheckToken::new(None).call(request(None)).is_ok());
    }

    #[test]
    fn reachable_addresses_need_a_token_or_the_explicit_opt_out() {
        let t = Token::parse("0123456789abcdef0123", "test").unwrap();
        let at = |listen: &str, insecure: bool| RunConfig {
            listen: listen.into(),
            insecure_no_auth: insecure,
            ..RunConfig::default()
        };
        for listen in ["127.0.0.1:29400", "[::1]:29400", "127.0.0.2:1"] {
            assert!(check_exposure(&at(listen, false), None).is_ok(), "{listen}");
        }
        for listen in ["0.0.0.0:29400", "[::]:29400", "10.1.2.3:29400"] {
            let err = check_exposure(&at(listen, false), None).unwrap_err();
            assert!(
                matches!(&err, SecurityError::Unauthenticated { listen: l } if l == listen),
                "{err}"
            );
            assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
            assert!(check_exposure(&at(listen, false), Some(&t)).is_ok());
            assert!(check_exposure(&at(listen, true), None).is_ok());
        }
    }

    #[test]
    fn tls_files_are_read_up_front_and_come_in_pairs() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = RunConfig {
            tls_cert: Some(dir.path().join("cert.pem")),
            ..RunConfig::default()
        };
        assert!(matches!(load_tls(&c), Err(SecurityError::TlsPair)));
        c.tls_key = Some(dir.path().join("key.pem"));
        let err = load_tls(&c).unwrap_err().to_string();
        assert!(
            err.contains("certificate") && err.contains("cert.pem"),
            "{err}"
        );
        assert!(load_tls(&RunConfig::default()).unwrap().is_none());
    }
}
