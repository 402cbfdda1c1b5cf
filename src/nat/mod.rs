//! NAT traversal: make a worker behind a home router reachable from the internet, and keep it so.
//!
//! One trait, [`PortMapper`], stands for a router protocol; its three implementations are the
//! only code that knows a port-mapping library: [`upnp`] (UPnP IGD through `igd-next`), [`pcp`]
//! and [`natpmp`] (both through `crab_nat`). [`service`] drives them: it finds which protocols the
//! gateway answers, maps the ports the daemon wants, renews every lease before it expires,
//! re-maps what a restarted router forgot, falls back to another protocol when one stops
//! answering, and removes every mapping when a port is released and at shutdown.
//!
//! What is decided here is pure (no I/O, no clock: times are [`Duration`]s since the service
//! started, handed in by the caller) and unit-tested with an in-memory mapper:
//! - [`Method::ORDER`]: UPnP IGD first (what most home routers serve), then PCP (NAT-PMP's
//!   successor, with explicit lifetimes and a nonce that protects the mapping), then NAT-PMP.
//! - [`Want`]: when a mapping is due ([`Want::due_at`]): a new one at
//!   once, an active one at half its lease or after `refresh` (whichever comes first, so a
//!   router that lost its state is noticed within `refresh`), a failed one after a doubling
//!   backoff.
//! - [`Quirks`]: routers that accept only permanent leases (UPnP error 725) get lease 0 and
//!   keep it; routers that refuse a permanent lease get a finite one.
//! - [`classify_external`]: an external address that is not public (RFC 1918, 100.64/10 of
//!   carrier-grade NAT, ...) means a second NAT upstream: the mapping exists but nobody on the
//!   internet can use it, and the status says so plainly.
pub mod check;
pub mod natpmp;
pub mod pcp;
pub mod route;
pub mod service;
pub mod upnp;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use service::{Manual, NatCommands, NatEvent, NatHandle, NatService, ServiceConfig};

/// Transport protocol of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A router protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Upnp,
    Pcp,
    NatPmp,
}

impl Method {
    /// The order of preference in `auto` mode.
    pub const ORDER: [Method; 3] = [Method::Upnp, Method::Pcp, Method::NatPmp];

    /// How people write it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Upnp => "UPnP IGD",
            Method::Pcp => "PCP",
            Method::NatPmp => "NAT-PMP",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a router granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    /// The external address and port the internet connects to.
    pub external: SocketAddrV4,
    /// The lease; `None` is permanent (until removed or the router restarts).
    pub lifetime: Option<Duration>,
}

/// Why a router request failed, in the categories the service acts on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Nothing answered (timeout, connection refused, no UPnP device found).
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// The router accepts only permanent leases (UPnP error 725).
    #[error("the router accepts only permanent leases")]
    PermanentOnly,
    /// The router refused a permanent lease (lease 0; UPnP error 402 or similar).
    #[error("the router refused a permanent lease: {0}")]
    PermanentRefused(String),
    /// The external port is taken by another client (UPnP 718, PCP CANNOT_PROVIDE_EXTERNAL).
    #[error("the external port is taken: {0}")]
    PortTaken(String),
    /// The router refused (not authorized, no resources, mapping disabled...).
    #[error("refused: {0}")]
    Refused(String),
    /// The answer made no sense.
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

/// One router protocol. Implementations bound every request in time and never panic on what
/// a router answers.
pub trait PortMapper: Send + Sync {
    fn method(&self) -> Method;

    /// Whether the gateway speaks this protocol, and the external address if the protocol can
    /// tell without a mapping (PCP cannot: its address comes with the first mapping).
    fn probe(&self) -> impl Future<Output = Result<Option<Ipv4Addr>, MapError>> + Send;

    /// Creates or renews the mapping of `internal_port` (on this host) to `external_port` (0:
    /// any) for `lifetime` (`None`: permanent).
    fn map(
        &self,
        transport: Transport,
        internal_port: u16,
        external_port: u16,
        lifetime: Option<Duration>,
    ) -> impl Future<Output = Result<Granted, MapError>> + Send;

    /// Removes the mapping.
    fn unmap(
        &self,
        transport: Transport,
        internal_port: u16,
        external_port: u16,
    ) -> impl Future<Output = Result<(), MapError>> + Send;
}

/// Whether an address the router reports can be reached from the internet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum External {
    Public,
    /// Not public: a NAT upstream of the router (carrier-grade NAT or a second router).
    NotPublic(&'static str),
}

/// Classifies the external address a router reports.
pub fn classify_external(ip: Ipv4Addr) -> External {
    let o = ip.octets();
    let kind = match o {
        [10, ..] | [172, 16..=31, ..] | [192, 168, ..] => "a private (RFC 1918) address",
        [100, 64..=127, ..] => "a carrier-grade NAT (100.64.0.0/10) address",
        [0, ..] => "an unspecified address",
        [127, ..] => "a loopback address",
        [169, 254, ..] => "a link-local address",
        [192, 0, 0, _] => "an IETF protocol-assignment address",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "a documentation address",
        [198, 18..=19, ..] => "a benchmarking address",
        [224..=239, ..] => "a multicast address",
        [240..=255, ..] => "a reserved address",
        _ => return External::Public,
    };
    External::NotPublic(kind)
}

/// The sentence the status shows when the router's external address is not public.
pub fn not_public_explanation(ip: Ipv4Addr, kind: &str) -> String {
    format!(
        "not reachable: the router's external address {ip} is {kind}, so there is another NAT \
         upstream (carrier-grade NAT at the provider, or a second router); mappings on this router \
         do not make the worker reachable. Ask the provider for a public IPv4 address, put the \
         upstream router in bridge mode, or forward the ports on the upstream router and set \
         [nat] mode = \"manual\" with its public address"
    )
}

/// What the router has taught us about leases. Kept per method; reset when the method changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quirks {
    /// Error 725 seen: ask for permanent leases from now on.
    pub permanent_only: bool,
    /// A permanent lease was refused: never ask for one.
    pub permanent_refused: bool,
}

impl Quirks {
    /// The lease to ask for, given the configured one.
    pub fn lease(&self, configured: Duration) -> Option<Duration> {
        if self.permanent_only && !self.permanent_refused { None } else { Some(configured) }
    }

    /// Learns from a failure; true if the request should be repeated at once with the new lease.
    pub fn learn(&mut self, error: &MapError, asked: Option<Duration>) -> bool {
        match error {
            MapError::PermanentOnly if !self.permanent_only && !self.permanent_refused => {
                self.permanent_only = true;
                true
            }
            MapError::PermanentRefused(_) if asked.is_none() && !self.permanent_refused => {
                self.permanent_refused = true;
                true
            }
            _ => false,
        }
    }
}

/// The first retry after a failure; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait after `failures` consecutive failures (1, 2, ...): 2 s, 4 s, ... up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

/// A mapping the router granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Active {
    pub granted: Granted,
    /// When it was granted (or last renewed).
    pub since: Duration,
    /// When the lease runs out (`None`: permanent).
    pub expires_at: Option<Duration>,
}

/// A port the daemon wants reachable, and how that is going.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub transport: Transport,
    pub internal_port: u16,
    /// What it is for: "transfer", "agreement 7".
    pub label: String,
    /// The last grant; kept through failed renewals (the router may still hold it).
    pub active: Option<Active>,
    /// Set when a request is due sooner than the lease says: new, lost, or failing.
    pub retry_at: Option<Duration>,
    /// Successful renewals of an active mapping.
    pub renewals: u64,
    /// Renewals that came after the lease had already expired (should stay 0).
    pub late_renewals: u64,
    /// Consecutive failures.
    pub failures: u32,
    pub last_error: Option<String>,
    /// The external port last granted, asked for again so the endpoint does not move.
    pub last_external_port: Option<u16>,
}

impl Want {
    pub fn new(transport: Transport, internal_port: u16, label: impl Into<String>, now: Duration) -> Self {
        Want {
            transport,
            internal_port,
            label: label.into(),
            active: None,
            retry_at: Some(now),
            renewals: 0,
            late_renewals: 0,
            failures: 0,
            last_error: None,
            last_external_port: None,
        }
    }

    /// When the next request for this mapping is due: at once for a new one; half the lease
    /// or `refresh` after the last grant, whichever is sooner; the backoff after a failure.
    pub fn due_at(&self, refresh: Duration) -> Duration {
        if let Some(at) = self.retry_at {
            return at;
        }
        match &self.active {
            Some(a) => {
                let half = a.granted.lifetime.map_or(refresh, |l| l / 2);
                a.since + half.min(refresh).max(Duration::from_millis(500))
            }
            None => Duration::ZERO,
        }
    }

    /// The external port to ask for: the last granted, else the internal one.
    pub fn requested_external_port(&self) -> u16 {
        self.last_external_port.unwrap_or(self.internal_port)
    }

    /// Records a grant at `now`; returns whether it was a renewal.
    pub fn granted(&mut self, granted: Granted, now: Duration) -> bool {
        let renewal = match &self.active {
            Some(a) => {
                if a.expires_at.is_some_and(|e| now > e) {
                    self.late_renewals += 1;
                }
                self.renewals += 1;
                true
            }
            None => false,
        };
        self.failures = 0;
        self.last_error = None;
        self.retry_at = None;
        self.last_external_port = Some(granted.external.port());
        self.active = Some(Active { granted, since: now, expires_at: granted.lifetime.map(|l| now + l) });
        renewal
    }

    /// Records a failure at `now`: retry after the backoff, but before a running lease expires.
    pub fn failed(&mut self, error: &MapError, now: Duration) {
        self.failures += 1;
        self.last_error = Some(error.to_string());
        let mut retry_at = now + backoff(self.failures);
        if let Some(Active { expires_at: Some(e), .. }) = self.active
            && e > now
        {
            retry_at = retry_at.min(now + (e - now) / 2).max(now + Duration::from_millis(500));
        }
        self.retry_at = Some(retry_at);
    }

    /// Forgets the mapping (the router changed or restarted): map again at `now`.
    pub fn reset(&mut self, now: Duration) {
        self.active = None;
        self.retry_at = Some(now);
    }

    /// Whether the router holds the mapping as far as we know at `now`.
    pub fn is_mapped(&self, now: Duration) -> bool {
        self.active.is_some_and(|a| a.expires_at.is_none_or(|e| e > now))
    }
}

/// The NAT state as `zeppelin status`, the metrics and `zeppelin nat check` show it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatStatus {
    /// The configured `nat.mode`.
    pub mode: String,
    /// The protocol in use ("UPnP IGD", "PCP", "NAT-PMP", "manual"), if any.
    pub method: Option<String>,
    /// The gateway asked.
    pub gateway: Option<String>,
    /// The router's external address.
    pub external_ip: Option<String>,
    /// Whether the internet can reach the mapped ports, as far as we can tell.
    pub reachable: bool,
    /// Why not (or how), in one sentence for people.
    pub explanation: String,
    pub mappings: Vec<MappingStatus>,
    /// Successful renewals since start.
    pub renewals: u64,
    /// Failed router requests since start.
    pub failures: u64,
}

impl NatStatus {
    /// The endpoint to announce for `internal_port`: the mapped external address and port.
    pub fn endpoint(&self, transport: Transport, internal_port: u16) -> Option<String> {
        if !self.reachable {
            return None;
        }
        self.mappings
            .iter()
            .find(|m| m.transport == transport && m.internal_port == internal_port)
            .and_then(|m| m.external.clone())
    }
}

/// One mapping in [`NatStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingStatus {
    pub label: String,
    pub transport: Transport,
    pub internal_port: u16,
    /// `ip:port` on the internet side, when mapped.
    pub external: Option<String>,
    /// "mapped", "pending" or "failing".
    pub state: String,
    /// The lease granted in seconds (`None`: permanent or not mapped).
    pub lease_secs: Option<u64>,
    /// Unix time the lease runs out.
    pub expires_at: Option<u64>,
    pub renewals: u64,
    pub late_renewals: u64,
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(port: u16, lease: Option<u64>) -> Granted {
        Granted {
            external: SocketAddrV4::new(Ipv4Addr::new(198, 20, 1, 1), port),
            lifetime: lease.map(Duration::from_secs),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn public_and_not_public_addresses() {
        assert_eq!(classify_external(Ipv4Addr::new(198, 20, 1, 1)), External::Public);
        assert_eq!(classify_external(Ipv4Addr::new(8, 8, 8, 8)), External::Public);
        assert_eq!(classify_external(Ipv4Addr::new(100, 63, 0, 1)), External::Public);
        assert_eq!(classify_external(Ipv4Addr::new(172, 32, 0, 1)), External::Public);
        for (ip, kind) in [
            ([100, 64, 0, 1], "carrier-grade"),
            ([100, 127, 255, 254], "carrier-grade"),
            ([10, 0, 0, 1], "RFC 1918"),
            ([172, 16, 5, 1], "RFC 1918"),
            ([172, 31, 5, 1], "RFC 1918"),
            ([192, 168, 0, 1], "RFC 1918"),
            ([0, 0, 0, 0], "unspecified"),
            ([169, 254, 1, 1], "link-local"),
        ] {
            match classify_external(Ipv4Addr::from(ip)) {
                External::NotPublic(k) => assert!(k.contains(kind), "{ip:?}: {k}"),
                External::Public => panic!("{ip:?} classified public"),
            }
        }
        let text = not_public_explanation(
            Ipv4Addr::new(100, 64, 0, 7),
            "a carrier-grade NAT (100.64.0.0/10) address",
        );
        assert!(
            text.starts_with("not reachable: the router's external address 100.64.0.7 is a carrier-grade")
        );
        assert!(text.contains("mode = \"manual\""));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), S(2));
        assert_eq!(backoff(2), S(4));
        assert_eq!(backoff(5), S(32));
        assert_eq!(backoff(9), S(300));
        assert_eq!(backoff(u32::MAX), S(300));
    }

    #[test]
    fn a_new_want_is_due_at_once_then_at_half_the_lease_or_refresh() {
        let refresh = S(60);
        let mut w = Want::new(Transport::Tcp, 7070, "transfer", S(5));
        assert_eq!(w.due_at(refresh), S(5));
        assert_eq!(w.requested_external_port(), 7070);
        assert!(!w.granted(granted(7070, Some(30)), S(6)));
        assert_eq!(w.due_at(refresh), S(6 + 15));
        // A long lease is refreshed after `refresh` so a router restart is noticed.
        assert!(w.granted(granted(7070, Some(3600)), S(21)));
        assert_eq!(w.due_at(refresh), S(21 + 60));
        // Permanent: every `refresh`.
        assert!(w.granted(granted(7070, None), S(81)));
        assert_eq!(w.due_at(refresh), S(141));
        assert_eq!((w.renewals, w.late_renewals), (2, 0));
    }

    #[test]
    fn a_renewal_after_expiry_is_counted_late() {
        let mut w = Want::new(Transport::Tcp, 7070, "transfer", S(0));
        w.granted(granted(7070, Some(4)), S(0));
        assert!(w.granted(granted(7070, Some(4)), S(2)));
        assert!(w.granted(granted(7070, Some(4)), S(7)));
        assert_eq!((w.renewals, w.late_renewals), (2, 1));
    }

    #[test]
    fn failures_back_off_and_keep_the_external_port() {
        let refresh = S(60);
        let mut w = Want::new(Transport::Tcp, 7070, "transfer", S(0));
        w.granted(granted(40000, Some(100)), S(0));
        assert_eq!(w.requested_external_port(), 40000);
        let e = MapError::NoAnswer("timeout".into());
        w.failed(&e, S(50));
        assert_eq!(w.due_at(refresh), S(52));
        assert_eq!(w.last_error.as_deref(), Some("no answer: timeout"));
        w.failed(&e, S(52));
        assert_eq!(w.due_at(refresh), S(56));
        // Close to expiry the retry comes before the lease runs out.
        let mut w = Want::new(Transport::Tcp, 7070, "transfer", S(0));
        w.granted(granted(7070, Some(10)), S(0));
        for _ in 0..5 {
            w.failed(&e, S(8));
        }
        assert_eq!(w.due_at(refresh), S(9));
        assert_eq!(w.requested_external_port(), 7070);
        // After a success the failures are forgotten.
        w.granted(granted(7070, Some(10)), S(9));
        assert_eq!((w.failures, w.last_error.clone()), (0, None));
        w.reset(S(12));
        assert_eq!(w.due_at(refresh), S(12));
    }

    #[test]
    fn permanent_only_routers_get_lease_zero_and_refusals_a_finite_lease() {
        let configured = S(3600);
        let mut q = Quirks::default();
        assert_eq!(q.lease(configured), Some(configured));
        assert!(q.learn(&MapError::PermanentOnly, Some(configured)));
        assert_eq!(q.lease(configured), None);
        // Not learnt twice: a router that says 725 to lease 0 too is not asked forever.
        assert!(!q.learn(&MapError::PermanentOnly, None));
        // Then it refuses the permanent lease: back to finite, for good.
        assert!(q.learn(&MapError::PermanentRefused("402 Invalid Args".into()), None));
        assert_eq!(q.lease(configured), Some(configured));
        assert!(!q.learn(&MapError::PermanentOnly, Some(configured)));
        assert!(!q.learn(&MapError::NoAnswer("x".into()), Some(configured)));
    }

    #[test]
    fn the_endpoint_is_the_mapped_one_and_only_when_reachable() {
        let mut s = NatStatus {
            reachable: true,
            mappings: vec![MappingStatus {
                label: "transfer".into(),
                transport: Transport::Tcp,
                internal_port: 7070,
                external: Some("198.20.1.1:40000".into()),
                state: "mapped".into(),
                lease_secs: Some(3600),
                expires_at: None,
                renewals: 0,
                late_renewals: 0,
                last_error: None,
            }],
            ..NatStatus::default()
        };
        assert_eq!(s.endpoint(Transport::Tcp, 7070).as_deref(), Some("198.20.1.1:40000"));
        assert_eq!(s.endpoint(Transport::Udp, 7070), None);
        s.reachable = false;
        assert_eq!(s.endpoint(Transport::Tcp, 7070), None);
    }
}
