//! PCP (RFC 6887) through `crab_nat`, plus the ANNOUNCE probe it lacks. Only this module and
//! [`super::natpmp`] know `crab_nat`.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU16;
use std::sync::Mutex;
use std::time::Duration;

use crab_nat::pcp::{self, BaseMapRequest, DropMappingRange, Failure, Nonce};
use crab_nat::{InternetProtocol, PortMappingOptions, PortMappingType, TimeoutConfig};
use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::{Granted, MapError, Method, PortMapper, Transport};

/// Retransmission for PCP and NAT-PMP requests: 250 ms, 500 ms, 1 s (RFC 6887 starts at 3 s,
/// which makes an absent server cost half a minute; a LAN gateway answers in milliseconds).
pub(super) const TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_secs(1)),
};
/// Bound on any one call, whatever the library does.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// PCP and NAT-PMP cannot ask for a permanent mapping (lifetime 0 deletes); this is asked
/// instead, as RFC 6886 recommends.
pub(super) const LONGEST: Duration = Duration::from_secs(7200);

/// A PCP client for `gateway`, speaking from `client`.
pub struct Pcp {
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    /// The nonce of each mapping (by transport and internal port): renewals and deletions must
    /// carry the one that created it.
    nonces: Mutex<HashMap<(Transport, u16), Nonce>>,
}

impl Pcp {
    pub fn new(gateway: Ipv4Addr, client: Ipv4Addr) -> Self {
        Pcp { gateway, client, nonces: Mutex::new(HashMap::new()) }
    }
}

pub(super) fn protocol(t: Transport) -> InternetProtocol {
    match t {
        Transport::Tcp => InternetProtocol::Tcp,
        Transport::Udp => InternetProtocol::Udp,
    }
}

pub(super) fn lifetime_secs(lifetime: Option<Duration>) -> u32 {
    u32::try_from(lifetime.unwrap_or(LONGEST).as_secs()).unwrap_or(u32::MAX).max(1)
}

fn failure(e: Failure) -> MapError {
    match e {
        Failure::Timeout => MapError::NoAnswer("no PCP answer".into()),
        Failure::Socket(e) => MapError::NoAnswer(format!("PCP socket: {e}")),
        Failure::UnsupportedVersion(v) => MapError::NoAnswer(format!("the gateway speaks {v}, not PCP")),
        Failure::CannotProvideExternal(_) => MapError::PortTaken("PCP CANNOT_PROVIDE_EXTERNAL".into()),
        Failure::InvalidResponse(e) => MapError::BadAnswer(format!("PCP: {e}")),
        Failure::Nonce => MapError::BadAnswer("PCP: a reply with another nonce".into()),
        other => MapError::Refused(format!("PCP: {other}")),
    }
}

/// Encodes a PCP ANNOUNCE request (RFC 6887 section 14.1) from `client`.
pub fn announce_request(client: Ipv4Addr) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0] = 2; // version
    b[1] = 0; // opcode ANNOUNCE, R = 0
    b[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    b
}

/// Checks an ANNOUNCE response: version 2, R bit and opcode 0, result SUCCESS. Returns the
/// server's epoch.
pub fn parse_announce_response(b: &[u8]) -> Result<u32, MapError> {
    if b.len() < 24 {
        return Err(MapError::BadAnswer(format!("a PCP reply of {} bytes", b.len())));
    }
    if b[0] != 2 {
        return Err(MapError::NoAnswer(format!("the gateway answered PCP with version {}", b[0])));
    }
    if b[1] != 0x80 {
        return Err(MapError::BadAnswer(format!("a PCP reply with opcode {:#04x}", b[1])));
    }
    if b[3] != 0 {
        return Err(MapError::Refused(format!("PCP ANNOUNCE result code {}", b[3])));
    }
    Ok(u32::from_be_bytes([b[8], b[9], b[10], b[11]]))
}

impl PortMapper for Pcp {
    fn method(&self) -> Method {
        Method::Pcp
    }

    /// Sends ANNOUNCE, with the same retransmission as the mappings. PCP has no request for the
    /// external address alone: it comes with the first mapping.
    async fn probe(&self) -> Result<Option<Ipv4Addr>, MapError> {
        let socket =
            UdpSocket::bind((self.client, 0)).await.map_err(|e| MapError::NoAnswer(e.to_string()))?;
        socket
            .connect((self.gateway, crab_nat::GATEWAY_PORT))
            .await
            .map_err(|e| MapError::NoAnswer(e.to_string()))?;
        let request = announce_request(self.client);
        let mut wait = TIMEOUTS.initial_timeout;
        for _ in 0..=TIMEOUTS.max_retries {
            socket.send(&request).await.map_err(|e| MapError::NoAnswer(e.to_string()))?;
            let mut buf = [0u8; 1100];
            match timeout(wait, socket.recv(&mut buf)).await {
                Ok(Ok(n)) => return parse_announce_response(&buf[..n]).map(|_| None),
                Ok(Err(e)) => return Err(MapError::NoAnswer(format!("PCP: {e}"))),
                Err(_) => wait = (wait * 2).min(TIMEOUTS.max_retry_timeout.unwrap_or(wait * 2)),
            }
        }
        Err(MapError::NoAnswer(format!("no PCP answer from {}:{}", self.gateway, crab_nat::GATEWAY_PORT)))
    }

    async fn map(
        &self,
        transport: Transport,
        internal_port: u16,
        external_port: u16,
        lifetime: Option<Duration>,
    ) -> Result<Granted, MapError> {
        let port =
            NonZeroU16::new(internal_port).ok_or_else(|| MapError::Refused("internal port 0".into()))?;
        let nonce =
            self.nonces.lock().unwrap_or_else(|p| p.into_inner()).get(&(transport, internal_port)).copied();
        let options = PortMappingOptions {
            external_port: NonZeroU16::new(external_port),
            lifetime_seconds: Some(lifetime_secs(lifetime)),
            timeout_config: Some(TIMEOUTS),
        };
        let base =
            BaseMapRequest::new(self.gateway.into(), IpAddr::V4(self.client), protocol(transport), port);
        let m = match timeout(CALL_TIMEOUT, pcp::port_mapping(base, nonce, None, options)).await {
            Err(_) => return Err(MapError::NoAnswer("PCP MAP timed out".into())),
            Ok(r) => r.map_err(failure)?,
        };
        let PortMappingType::Pcp { nonce, external_ip, .. } = m.mapping_type() else {
            return Err(MapError::BadAnswer("a PCP request answered by another protocol".into()));
        };
        let ip = match external_ip {
            IpAddr::V4(ip) => ip,
            IpAddr::V6(v6) => {
                v6.to_ipv4_mapped().ok_or_else(|| MapError::BadAnswer(format!("external address {v6}")))?
            }
        };
        self.nonces.lock().unwrap_or_else(|p| p.into_inner()).insert((transport, internal_port), nonce);
        Ok(Granted {
            external: SocketAddrV4::new(ip, m.external_port().get()),
            lifetime: Some(Duration::from_secs(m.lifetime().into())),
        })
    }

    async fn unmap(
        &self,
        transport: Transport,
        internal_port: u16,
        _external_port: u16,
    ) -> Result<(), MapError> {
        let Some(port) = NonZeroU16::new(internal_port) else { return Ok(()) };
        let Some(nonce) =
            self.nonces.lock().unwrap_or_else(|p| p.into_inner()).get(&(transport, internal_port)).copied()
        else {
            return Ok(()); // never mapped through this client
        };
        let range = DropMappingRange::Single { internal_port: port, protocol: protocol(transport) };
        let drop =
            pcp::try_drop_mapping(self.gateway.into(), IpAddr::V4(self.client), nonce, range, Some(TIMEOUTS));
        match timeout(CALL_TIMEOUT, drop).await {
            Err(_) => Err(MapError::NoAnswer("PCP delete timed out".into())),
            Ok(r) => {
                r.map_err(failure)?;
                self.nonces.lock().unwrap_or_else(|p| p.into_inner()).remove(&(transport, internal_port));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_round_trip_and_hostile_replies() {
        let req = announce_request(Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(&req[..4], &[2, 0, 0, 0]);
        assert_eq!(&req[18..24], &[0xff, 0xff, 192, 168, 1, 2]);
        let mut reply = [0u8; 24];
        reply[0] = 2;
        reply[1] = 0x80;
        reply[8..12].copy_from_slice(&77u32.to_be_bytes());
        assert_eq!(parse_announce_response(&reply), Ok(77));
        assert!(matches!(parse_announce_response(&reply[..5]), Err(MapError::BadAnswer(_))));
        assert!(matches!(parse_announce_response(&[]), Err(MapError::BadAnswer(_))));
        let mut natpmp = reply;
        natpmp[0] = 0;
        assert!(matches!(parse_announce_response(&natpmp), Err(MapError::NoAnswer(_))));
        let mut refused = reply;
        refused[3] = 2;
        assert!(matches!(parse_announce_response(&refused), Err(MapError::Refused(_))));
        let mut wrong = reply;
        wrong[1] = 0x81;
        assert!(matches!(parse_announce_response(&wrong), Err(MapError::BadAnswer(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A deterministic xorshift: every length up to 64, many contents.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..64 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = parse_announce_response(&bytes);
            }
        }
    }
}
