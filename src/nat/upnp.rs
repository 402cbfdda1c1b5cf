//! UPnP IGD through `igd-next` (tokio): SSDP discovery from the address that faces the gateway,
//! SOAP requests to the device found. The only module that knows `igd-next`.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{
    AddAnyPortError, AddPortError, PortMappingProtocol, RemovePortError, RequestError, SearchOptions,
};
use tokio::sync::Mutex;
use tokio::time::timeout;

use super::{Granted, MapError, Method, PortMapper, Transport};

/// How long an SSDP search waits for the router.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one SOAP request (igd-next has its own, this covers the whole call).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The mapping description routers show.
const DESCRIPTION: &str = "zeppelin worker";

/// A UPnP IGD client for the gateway reached from `local`.
pub struct Upnp {
    local: Ipv4Addr,
    gateway: Mutex<Option<Gateway<Tokio>>>,
}

impl Upnp {
    pub fn new(local: Ipv4Addr) -> Self {
        Upnp { local, gateway: Mutex::new(None) }
    }

    /// The device, discovered on first use and after a failure.
    async fn gateway(&self) -> Result<Gateway<Tokio>, MapError> {
        let mut cached = self.gateway.lock().await;
        if let Some(g) = cached.as_ref() {
            return Ok(g.clone());
        }
        let mut options = SearchOptions::default();
        options.bind_addr = SocketAddr::new(IpAddr::V4(self.local), 0);
        options.timeout = Some(SEARCH_TIMEOUT);
        options.single_search_timeout = Some(SEARCH_TIMEOUT);
        let g = match timeout(
            SEARCH_TIMEOUT + Duration::from_millis(500),
            igd_next::aio::tokio::search_gateway(options),
        )
        .await
        {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => {
                return Err(MapError::NoAnswer(format!("no UPnP IGD answered an SSDP search: {e}")));
            }
            Err(_) => return Err(MapError::NoAnswer("no UPnP IGD answered an SSDP search".into())),
        };
        *cached = Some(g.clone());
        Ok(g)
    }

    /// Forgets the device after a transport failure, so the next call searches again.
    async fn forget(&self) {
        *self.gateway.lock().await = None;
    }

    async fn external_ip(&self, g: &Gateway<Tokio>) -> Result<Ipv4Addr, MapError> {
        match timeout(REQUEST_TIMEOUT, g.get_external_ip()).await {
            Ok(Ok(IpAddr::V4(ip))) => Ok(ip),
            Ok(Ok(IpAddr::V6(ip))) => Err(MapError::BadAnswer(format!("an IPv6 external address {ip}"))),
            Ok(Err(igd_next::GetExternalIpError::ActionNotAuthorized)) => {
                Err(MapError::Refused("GetExternalIPAddress not authorized".into()))
            }
            Ok(Err(igd_next::GetExternalIpError::RequestError(e))) => Err(request_error(e, None)),
            Err(_) => Err(MapError::NoAnswer("GetExternalIPAddress timed out".into())),
        }
    }

    /// Runs `f`; a failure to reach the device makes the next call search again.
    async fn checked<T>(&self, r: Result<T, MapError>) -> Result<T, MapError> {
        if matches!(r, Err(MapError::NoAnswer(_))) {
            self.forget().await;
        }
        r
    }
}

fn protocol(t: Transport) -> PortMappingProtocol {
    match t {
        Transport::Tcp => PortMappingProtocol::TCP,
        Transport::Udp => PortMappingProtocol::UDP,
    }
}

/// Sorts a SOAP/transport error into what the service acts on.
fn request_error(e: RequestError, lease: Option<u32>) -> MapError {
    match e {
        RequestError::ErrorCode(725, _) => MapError::PermanentOnly,
        // 402 Invalid Args (and 716/724-ish variants) to lease 0: some routers refuse permanent.
        RequestError::ErrorCode(code @ (402 | 501 | 726), text) if lease == Some(0) => {
            MapError::PermanentRefused(format!("UPnP error {code} {text}"))
        }
        RequestError::ErrorCode(718, text) => MapError::PortTaken(format!("UPnP error 718 {text}")),
        RequestError::ErrorCode(code, text) => MapError::Refused(format!("UPnP error {code} {text}")),
        RequestError::InvalidResponse(text) => MapError::BadAnswer(text),
        RequestError::UnsupportedAction(a) => MapError::Refused(format!("the device has no {a} action")),
        other => MapError::NoAnswer(other.to_string()),
    }
}

fn add_port_error(e: AddPortError, lease: u32) -> MapError {
    match e {
        AddPortError::OnlyPermanentLeasesSupported => MapError::PermanentOnly,
        AddPortError::PortInUse => MapError::PortTaken("UPnP error 718 ConflictInMappingEntry".into()),
        AddPortError::ActionNotAuthorized => MapError::Refused("UPnP error 606 Action not authorized".into()),
        AddPortError::RequestError(e) => request_error(e, Some(lease)),
        other => MapError::Refused(other.to_string()),
    }
}

impl PortMapper for Upnp {
    fn method(&self) -> Method {
        Method::Upnp
    }

    async fn probe(&self) -> Result<Option<Ipv4Addr>, MapError> {
        let r = async {
            let g = self.gateway().await?;
            self.external_ip(&g).await.map(Some)
        }
        .await;
        self.checked(r).await
    }

    async fn map(
        &self,
        transport: Transport,
        internal_port: u16,
        external_port: u16,
        lifetime: Option<Duration>,
    ) -> Result<Granted, MapError> {
        let lease = lifetime.map_or(0, |l| u32::try_from(l.as_secs()).unwrap_or(u32::MAX).max(1));
        let r = async {
            let g = self.gateway().await?;
            let local = SocketAddr::V4(SocketAddrV4::new(self.local, internal_port));
            let proto = protocol(transport);
            let wanted = if external_port == 0 { internal_port } else { external_port };
            let port = match timeout(REQUEST_TIMEOUT, g.add_port(proto, wanted, local, lease, DESCRIPTION))
                .await
            {
                Err(_) => return Err(MapError::NoAnswer("AddPortMapping timed out".into())),
                Ok(Ok(())) => wanted,
                // Taken by another host: let the router pick (AddAnyPortMapping or random ports).
                Ok(Err(AddPortError::PortInUse)) => {
                    match timeout(REQUEST_TIMEOUT * 4, g.add_any_port(proto, local, lease, DESCRIPTION)).await
                    {
                        Err(_) => return Err(MapError::NoAnswer("AddAnyPortMapping timed out".into())),
                        Ok(Ok(port)) => port,
                        Ok(Err(AddAnyPortError::OnlyPermanentLeasesSupported)) => {
                            return Err(MapError::PermanentOnly);
                        }
                        Ok(Err(AddAnyPortError::RequestError(e))) => {
                            return Err(request_error(e, Some(lease)));
                        }
                        Ok(Err(e)) => return Err(MapError::PortTaken(e.to_string())),
                    }
                }
                Ok(Err(e)) => return Err(add_port_error(e, lease)),
            };
            let ip = self.external_ip(&g).await?;
            Ok(Granted { external: SocketAddrV4::new(ip, port), lifetime })
        }
        .await;
        self.checked(r).await
    }

    async fn unmap(
        &self,
        transport: Transport,
        _internal_port: u16,
        external_port: u16,
    ) -> Result<(), MapError> {
        let r = async {
            let g = self.gateway().await?;
            match timeout(REQUEST_TIMEOUT, g.remove_port(protocol(transport), external_port)).await {
                Err(_) => Err(MapError::NoAnswer("DeletePortMapping timed out".into())),
                Ok(Ok(())) | Ok(Err(RemovePortError::NoSuchPortMapping)) => Ok(()),
                Ok(Err(RemovePortError::ActionNotAuthorized)) => {
                    Err(MapError::Refused("DeletePortMapping not authorized".into()))
                }
                Ok(Err(RemovePortError::RequestError(e))) => Err(request_error(e, None)),
            }
        }
        .await;
        self.checked(r).await
    }
}
