//! `switchyard healthcheck [URL]`: one GET over plain HTTP/1.1, for a container's
//! HEALTHCHECK (the distroless image has no curl). Exit 0 on a 2xx answer within the
//! timeout, 1 otherwise with a one-line reason on stderr.
//!
//! Only `http://` URLs whose host is an IP address or `localhost` (127.0.0.1): a probe
//! that needs DNS or TLS to ask "is this process up" would fail for reasons that are not
//! the process's.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// The default URL: the admin listener's `/healthz` on the default admin port.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9901/healthz";

/// What to probe: where to connect, the Host header to send, the request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub authority: String,
    pub path: String,
}

/// Parse `url` as `http://IP[:PORT][/path][?query]` or `http://localhost...`.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// URLs can be probed"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: user info is not supported"));
    }
    let host = authority.host();
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{url:?}: the host must be an IP address or localhost"))?
    };
    let port = authority.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        authority: authority.as_str().to_string(),
        path: if path.is_empty() { "/".into() } else { path },
    })
}

/// GET `t` within `timeout`, connect included: the status, or why there is none.
pub async fn get(t: &Target, timeout: Duration) -> Result<http::StatusCode, String> {
    match tokio::time::timeout(timeout, exchange(t)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

async fn exchange(t: &Target) -> Result<http::StatusCode, String> {
    let tcp = tokio::net::TcpStream::connect(t.addr)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => format!("connect failed: {e}"),
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::get(t.path.as_str())
        .header(http::header::HOST, t.authority.as_str())
        .header(http::header::USER_AGENT, "switchyard-healthcheck")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    Ok(resp.status())
}

/// Probe `t` on a current-thread runtime; the one-line verdict.
pub fn run(t: &Target, timeout: Duration) -> Result<http::StatusCode, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let status = rt.block_on(get(t, timeout))?;
    if status.is_success() {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_an_ip_or_localhost_parse() {
        let t = parse_url(DEFAULT_URL).unwrap();
        assert_eq!(t.addr, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:9901");
        assert_eq!(t.path, "/healthz");
        let t = parse_url("http://localhost:8080/ready?x=1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ready?x=1");
        let t = parse_url("http://[::1]/").unwrap();
        assert_eq!(t.addr, "[::1]:80".parse().unwrap());
        assert_eq!(parse_url("http://10.0.0.1:1").unwrap().path, "/");
    }

    #[test]
    fn other_urls_are_refused() {
        for bad in [
            "https://127.0.0.1:9901/healthz",
            "http://example.com/healthz",
            "127.0.0.1:9901",
            "/healthz",
            "http://u@127.0.0.1/",
            "not a url",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} was accepted");
        }
    }
}
