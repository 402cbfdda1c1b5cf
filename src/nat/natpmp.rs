//! NAT-PMP (RFC 6886) through `crab_nat`'s client (retransmission and timeouts built in).
//!
//! Not the `natpmp` crate: its async client never retransmits and waits for the first
//! datagram without a timeout, and it pulls `netdev` just to find the default route.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::PortMappingOptions;
use crab_nat::natpmp::{self, Failure};
use tokio::time::timeout;

use super::pcp::{CALL_TIMEOUT, TIMEOUTS, lifetime_secs, protocol};
use super::{Granted, MapError, Method, PortMapper, Transport};

/// A NAT-PMP client for `gateway`.
pub struct NatPmp {
    gateway: Ipv4Addr,
}

impl NatPmp {
    pub fn new(gateway: Ipv4Addr) -> Self {
        NatPmp { gateway }
    }

    async fn external(&self) -> Result<Ipv4Addr, MapError> {
        match timeout(CALL_TIMEOUT, natpmp::external_address(self.gateway.into(), Some(TIMEOUTS))).await {
            Err(_) => Err(MapError::NoAnswer("NAT-PMP external address request timed out".into())),
            Ok(r) => r.map_err(failure),
        }
    }
}

fn failure(e: Failure) -> MapError {
    match e {
        Failure::Timeout => MapError::NoAnswer("no NAT-PMP answer".into()),
        Failure::Socket(e) => MapError::NoAnswer(format!("NAT-PMP socket: {e}")),
        Failure::UnsupportedVersion(v) => {
            MapError::NoAnswer(format!("the gateway does not speak NAT-PMP ({v})"))
        }
        Failure::InvalidResponse(e) => MapError::BadAnswer(format!("NAT-PMP: {e}")),
        other => MapError::Refused(format!("NAT-PMP: {other}")),
    }
}

impl PortMapper for NatPmp {
    fn method(&self) -> Method {
        Method::NatPmp
    }

    async fn probe(&self) -> Result<Option<Ipv4Addr>, MapError> {
        self.external().await.map(Some)
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
        let options = PortMappingOptions {
            external_port: NonZeroU16::new(external_port),
            lifetime_seconds: Some(lifetime_secs(lifetime)),
            timeout_config: Some(TIMEOUTS),
        };
        let m = match timeout(
            CALL_TIMEOUT,
            natpmp::port_mapping(self.gateway.into(), protocol(transport), port, options),
        )
        .await
        {
            Err(_) => return Err(MapError::NoAnswer("NAT-PMP mapping request timed out".into())),
            Ok(r) => r.map_err(failure)?,
        };
        let ip = self.external().await?;
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
        let drop =
            natpmp::try_drop_mapping(self.gateway.into(), protocol(transport), Some(port), Some(TIMEOUTS));
        match timeout(CALL_TIMEOUT, drop).await {
            Err(_) => Err(MapError::NoAnswer("NAT-PMP delete timed out".into())),
            Ok(r) => r.map_err(failure),
        }
    }
}
