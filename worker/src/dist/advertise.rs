//! Which address the worker tells its ring peers to dial.
//!
//! # Contract
//! * `--advertise-host` wins when given (a DNS name or an IP: Kubernetes pod names, NAT).
//! * Else a specific `--collective-listen` IP is the address.
//! * Else (listening on 0.0.0.0 / ::, the default) it is the source address this machine's
//!   routing table picks for reaching the coordinator: the address of the interface the worker's
//!   own gRPC connection leaves by, which is the one the other machines of the run can reach
//!   it at. On one machine (coordinator on 127.0.0.1) that is 127.0.0.1.
//! * Finding it sends nothing: a UDP socket `connect` only asks the kernel for a route.
//!
//! Tests: `tests` at the bottom; `tests/tests/netns.rs` (separate hosts, default flags).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};

/// `host:port` of a coordinator URL (`http://host:port`, `https://host:port/...`).
pub fn url_authority(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.is_empty() {
        return None;
    }
    // No port: the scheme's default.
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    if has_port {
        Some(authority.to_string())
    } else if url.starts_with("https://") {
        Some(format!("{authority}:443"))
    } else {
        Some(format!("{authority}:80"))
    }
}

/// The local address the kernel would send from to reach `coordinator_url`.
pub fn source_address_towards(coordinator_url: &str) -> Result<IpAddr, String> {
    let authority = url_authority(coordinator_url)
        .ok_or_else(|| format!("no host:port in the coordinator URL {coordinator_url:?}"))?;
    let target: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} resolves to no address"))?;
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("UDP socket: {e}"))?;
    sock.connect(target)
        .map_err(|e| format!("no route to the coordinator at {target}: {e}"))?;
    let ip = sock.local_addr().map_err(|e| e.to_string())?.ip();
    if ip.is_unspecified() {
        return Err(format!("no source address towards {target}"));
    }
    Ok(ip)
}

/// The host part of the ring address to announce (see the module contract).
pub fn ring_host(
    advertise_host: Option<&str>,
    listen_ip: IpAddr,
    coordinator_url: &str,
) -> Result<String, String> {
    if let Some(h) = advertise_host {
        return Ok(h.to_string());
    }
    let ip = if listen_ip.is_unspecified() {
        source_address_towards(coordinator_url).map_err(|e| {
            format!("cannot tell which address ring peers reach this worker at ({e}); pass --advertise-host")
        })?
    } else {
        listen_ip
    };
    Ok(ip.to_string())
}

/// `host:port`, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_of_urls() {
        let a = |u: &str| url_authority(u);
        assert_eq!(
            a("http://10.0.0.5:29400").as_deref(),
            Some("10.0.0.5:29400")
        );
        assert_eq!(
            a("https://coord.ns.svc:29400/").as_deref(),
            Some("coord.ns.svc:29400")
        );
        assert_eq!(a("http://[::1]:29400").as_deref(), Some("[::1]:29400"));
        assert_eq!(a("https://coord").as_deref(), Some("coord:443"));
        assert_eq!(a("http://[::1]").as_deref(), Some("[::1]:80"));
        assert_eq!(a("http://"), None);
    }

    #[test]
    fn the_source_address_towards_loopback_is_loopback() {
        let ip = source_address_towards("http://127.0.0.1:29400").unwrap();
        assert!(ip.is_loopback(), "{ip}");
        assert!(source_address_towards("http://no-such-host.invalid:1").is_err());
    }

    #[test]
    fn advertise_host_wins_then_a_specific_listen_ip_then_the_route() {
        let any: IpAddr = "0.0.0.0".parse().unwrap();
        let url = "http://127.0.0.1:1";
        assert_eq!(ring_host(Some("pod-1.svc"), any, url).unwrap(), "pod-1.svc");
        let specific: IpAddr = "10.9.8.7".parse().unwrap();
        assert_eq!(ring_host(None, specific, url).unwrap(), "10.9.8.7");
        assert_eq!(ring_host(None, any, url).unwrap(), "127.0.0.1");
        let err = ring_host(None, any, "http://no-such-host.invalid:1").unwrap_err();
        assert!(err.contains("--advertise-host"), "{err}");
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
        assert_eq!(join_host_port("10.0.0.1", 5), "10.0.0.1:5");
    }
}
