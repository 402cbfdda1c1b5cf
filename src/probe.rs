//! Checking that work answers its probe: the worker before it declares ready, the client after
//! its push (and the verifiers, with their issue).
use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::core::work::Probe;

/// The largest body an HTTP probe reads.
pub const MAX_BODY: usize = 1 << 20;

/// One attempt at `probe` against `addr`, within `timeout`.
pub async fn check(addr: SocketAddr, probe: &Probe, timeout: Duration) -> Result<String, String> {
    match probe {
        Probe::Tcp => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => Ok(format!("TCP {addr} accepts connections")),
            Ok(Err(e)) => Err(format!("TCP {addr}: {e}")),
            Err(_) => Err(format!("TCP {addr}: no answer within {} s", timeout.as_secs())),
        },
        Probe::Http { path, status, body_sha256 } => {
            let url = format!("http://{addr}{path}");
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| format!("HTTP client: {e}"))?;
            let mut response = client.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
            let got = response.status().as_u16();
            if got != *status {
                return Err(format!("GET {url}: status {got}, expected {status}"));
            }
            // Bodies are bounded: a probe reads at most 1 MiB, chunk by chunk, whatever the
            // other side sends (verifiers probe endpoints they have no reason to trust).
            let mut body = Vec::new();
            while let Some(chunk) =
                response.chunk().await.map_err(|e| format!("GET {url}: reading the body: {e}"))?
            {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(format!("GET {url}: body over the 1 MiB probe limit"));
                }
                body.extend_from_slice(&chunk);
            }
            if let Some(want) = body_sha256 {
                let digest = alloy::hex::encode(Sha256::digest(&body));
                if !digest.eq_ignore_ascii_case(want) {
                    return Err(format!("GET {url}: body SHA-256 {digest}, expected {want}"));
                }
            }
            Ok(format!("GET {url}: {got}"))
        }
    }
}

/// Retries [`check`] until it passes or `within` has passed.
pub async fn wait_until_ok(addr: SocketAddr, probe: &Probe, within: Duration) -> Result<String, String> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last;
    loop {
        match check(addr, probe, Duration::from_secs(5)).await {
            Ok(ok) => return Ok(ok),
            Err(e) => last = e,
        }
        if tokio::time::Instant::now() + Duration::from_millis(250) >= deadline {
            return Err(format!("{last} (still failing after {} s)", within.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Parses the command line's probe: `tcp`, or `http:<path>[:<status>[:<body sha256>]]`.
pub fn parse(text: &str) -> Result<Probe, String> {
    if text == "tcp" {
        return Ok(Probe::Tcp);
    }
    let Some(rest) = text.strip_prefix("http:") else {
        return Err(format!("{text:?}: expected `tcp` or `http:<path>[:<status>[:<sha256 of the body>]]`"));
    };
    let mut parts = rest.splitn(3, ':');
    let path = parts.next().unwrap_or("/");
    if !path.starts_with('/') {
        return Err(format!("{text:?}: the HTTP path must start with '/'"));
    }
    let status = match parts.next() {
        Some(s) => s
            .parse::<u16>()
            .ok()
            .filter(|s| (100..600).contains(s))
            .ok_or(format!("{text:?}: {s:?} is not an HTTP status"))?,
        None => 200,
    };
    let body_sha256 = match parts.next() {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Some(h.to_ascii_lowercase()),
        Some(h) => return Err(format!("{text:?}: {h:?} is not a SHA-256 in hex")),
        None => None,
    };
    Ok(Probe::Http { path: path.to_owned(), status, body_sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_parse_from_the_command_line_or_say_why_not() {
        assert_eq!(parse("tcp").unwrap(), Probe::Tcp);
        assert_eq!(
            parse("http:/").unwrap(),
            Probe::Http { path: "/".into(), status: 200, body_sha256: None }
        );
        let h = "ab".repeat(32);
        assert_eq!(
            parse(&format!("http:/health:204:{h}")).unwrap(),
            Probe::Http { path: "/health".into(), status: 204, body_sha256: Some(h) }
        );
        assert!(parse("http:health").unwrap_err().contains("must start with '/'"));
        assert!(parse("http:/:99").unwrap_err().contains("not an HTTP status"));
        assert!(parse("http:/:200:xyz").unwrap_err().contains("not a SHA-256"));
        assert!(parse("udp").unwrap_err().contains("expected `tcp`"));
    }

    #[tokio::test]
    async fn a_tcp_probe_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(check(addr, &Probe::Tcp, Duration::from_secs(2)).await.is_ok());
        drop(listener);
        assert!(check(addr, &Probe::Tcp, Duration::from_secs(2)).await.is_err());
    }
}
