//! The task that keeps the wanted ports mapped: discovery, mapping, renewal, fallback,
//! release. The daemon and `zeppelin nat check` talk to it through a [`NatHandle`].
//!
//! One loop: discover (ask every candidate protocol at once, take the first in the order of
//! preference that answered), then map whatever is due, publish the [`NatStatus`], and sleep
//! until the next mapping is due, a command arrives, or cancellation. Two requests in a row
//! that get no answer drop the protocol and start discovery again, which is how a router that
//! turned UPnP off is left for PCP or NAT-PMP. Each renewal re-creates the mapping if the
//! router lost it (a restart), so `refresh` bounds how long a restart goes unnoticed. At
//! cancellation every mapping is removed, within [`RELEASE_TIMEOUT`].
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::natpmp::NatPmp;
use super::pcp::Pcp;
use super::upnp::Upnp;
use super::{
    External, Granted, MapError, MappingStatus, Method, NatStatus, PortMapper, Quirks, Transport, Want,
    backoff, classify_external, not_public_explanation,
};

/// The longest the service spends removing mappings at shutdown.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(4);
/// Requests without an answer in a row before the protocol is dropped and discovery restarts.
const NO_ANSWER_LIMIT: u32 = 2;

/// What the service does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// `nat.mode` as written, for the status.
    pub mode: String,
    /// The protocols to try, in order of preference. Empty: manual or off (no router requests).
    pub methods: Vec<Method>,
    /// The lease to ask for.
    pub lease: Duration,
    /// The longest time between two requests for one mapping.
    pub refresh: Duration,
    /// Manual mode: the public address the operator forwarded to this host, and the external
    /// port for each internal port (absent: the same number).
    pub manual: Option<Manual>,
}

/// Manual port forwarding, as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manual {
    pub external_ip: Ipv4Addr,
    pub ports: BTreeMap<u16, u16>,
}

/// Something the service did, for `zeppelin nat check` (the daemon logs them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum NatEvent {
    /// Discovery chose a protocol (`external_ip` unless PCP).
    Chosen { method: Method, gateway: String, external_ip: Option<String>, at_ms: u64 },
    /// Discovery found nothing; `explanation` says why.
    NoGateway { explanation: String, at_ms: u64 },
    /// A new mapping (or one restored after it was lost).
    Mapped {
        transport: Transport,
        internal_port: u16,
        external: String,
        method: Method,
        lease_secs: Option<u64>,
        at_ms: u64,
        took_ms: u64,
    },
    /// A renewal; `margin_ms` is how long the old lease still had to run (negative: late).
    Renewed {
        transport: Transport,
        internal_port: u16,
        external: String,
        method: Method,
        lease_secs: Option<u64>,
        at_ms: u64,
        margin_ms: Option<i64>,
        renewals: u64,
    },
    /// A request failed.
    Failed { transport: Transport, internal_port: u16, method: Method, error: String, at_ms: u64 },
    /// The protocol stopped answering; discovery starts again.
    Dropped { method: Method, at_ms: u64 },
    /// A mapping was removed from the router (release or shutdown).
    Removed { transport: Transport, internal_port: u16, method: Method, ok: bool, at_ms: u64 },
}

enum Command {
    Want { transport: Transport, port: u16, label: String },
    Release { transport: Transport, port: u16 },
}

/// The daemon's side: ask for ports, read the state. Clones share the service.
#[derive(Clone)]
pub struct NatHandle {
    commands: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<NatStatus>,
}

impl NatHandle {
    /// Keep `port` (on this host) reachable from the internet until released.
    pub fn want(&self, transport: Transport, port: u16, label: impl Into<String>) {
        let _ = self.commands.send(Command::Want { transport, port, label: label.into() });
    }

    /// Remove the mapping of `port` from the router.
    pub fn release(&self, transport: Transport, port: u16) {
        let _ = self.commands.send(Command::Release { transport, port });
    }

    /// The latest state.
    pub fn status(&self) -> NatStatus {
        self.status.borrow().clone()
    }

    /// Changes of the state.
    pub fn subscribe(&self) -> watch::Receiver<NatStatus> {
        self.status.clone()
    }
}

/// One of the three protocols (an enum rather than `dyn`: the trait has async methods).
pub enum AnyMapper {
    Upnp(Upnp),
    Pcp(Pcp),
    NatPmp(NatPmp),
}

impl PortMapper for AnyMapper {
    fn method(&self) -> Method {
        match self {
            AnyMapper::Upnp(m) => m.method(),
            AnyMapper::Pcp(m) => m.method(),
            AnyMapper::NatPmp(m) => m.method(),
        }
    }
    async fn probe(&self) -> Result<Option<Ipv4Addr>, MapError> {
        match self {
            AnyMapper::Upnp(m) => m.probe().await,
            AnyMapper::Pcp(m) => m.probe().await,
            AnyMapper::NatPmp(m) => m.probe().await,
        }
    }
    async fn map(&self, t: Transport, i: u16, e: u16, l: Option<Duration>) -> Result<Granted, MapError> {
        match self {
            AnyMapper::Upnp(m) => m.map(t, i, e, l).await,
            AnyMapper::Pcp(m) => m.map(t, i, e, l).await,
            AnyMapper::NatPmp(m) => m.map(t, i, e, l).await,
        }
    }
    async fn unmap(&self, t: Transport, i: u16, e: u16) -> Result<(), MapError> {
        match self {
            AnyMapper::Upnp(m) => m.unmap(t, i, e).await,
            AnyMapper::Pcp(m) => m.unmap(t, i, e).await,
            AnyMapper::NatPmp(m) => m.unmap(t, i, e).await,
        }
    }
}

/// The receiving end of the [`NatHandle`]s, handed to [`NatService::run`].
pub struct NatCommands(mpsc::UnboundedReceiver<Command>);

/// Finds the gateway and builds the mappers for it; `Err` says why there is none (yet).
pub type Locator<M> = Box<dyn Fn() -> Result<(Ipv4Addr, Vec<M>), String> + Send>;

/// Where the router is, as found from the routing table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub gateway: Ipv4Addr,
    pub local: Ipv4Addr,
}

/// Finds the default gateway and the local address towards it.
pub fn find_route() -> Result<Route, String> {
    let gateway = super::route::default_gateway()
        .map_err(|e| format!("reading the routing table: {e}"))?
        .ok_or_else(|| "this host has no IPv4 default route, so there is no router to ask".to_owned())?;
    let local = super::route::local_address_towards(gateway)
        .map_err(|e| format!("finding the local address towards the gateway {gateway}: {e}"))?;
    Ok(Route { gateway, local })
}

/// The real mappers for `methods`, talking to `route`.
pub fn mappers(route: Route, methods: &[Method]) -> Vec<AnyMapper> {
    methods
        .iter()
        .map(|m| match m {
            Method::Upnp => AnyMapper::Upnp(Upnp::new(route.local)),
            Method::Pcp => AnyMapper::Pcp(Pcp::new(route.gateway, route.local)),
            Method::NatPmp => AnyMapper::NatPmp(NatPmp::new(route.gateway)),
        })
        .collect()
}

/// The service's state. Generic over the mapper so the unit tests can use a fake router.
pub struct NatService<M> {
    config: ServiceConfig,
    locator: Locator<M>,
    /// The gateway, for the status (none: no default route).
    gateway: Option<Ipv4Addr>,
    /// Why there is no route, if so.
    route_error: Option<String>,
    mappers: Vec<Arc<M>>,
    current: Option<usize>,
    quirks: Quirks,
    no_answers: u32,
    external_ip: Option<Ipv4Addr>,
    /// Why discovery found nothing, per protocol.
    discovery_error: Option<String>,
    discoveries_failed: u32,
    next_discovery: Duration,
    wants: BTreeMap<(Transport, u16), Want>,
    renewals: u64,
    failures: u64,
    start: Instant,
    status: watch::Sender<NatStatus>,
    events: Option<mpsc::UnboundedSender<NatEvent>>,
}

impl NatService<AnyMapper> {
    /// The service for `config` on this host's default route. A missing route is no error:
    /// the status explains it and the service looks again with a backoff.
    pub fn for_host(config: ServiceConfig) -> (Self, NatHandle, NatCommands) {
        let methods = config.methods.clone();
        let locator: Locator<AnyMapper> = Box::new(move || {
            let route = find_route()?;
            Ok((route.gateway, mappers(route, &methods)))
        });
        Self::new(config, locator)
    }
}

impl<M: PortMapper + 'static> NatService<M> {
    /// A service whose `locator` finds the gateway and its mappers (in order of preference).
    pub fn new(config: ServiceConfig, locator: Locator<M>) -> (Self, NatHandle, NatCommands) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) =
            watch::channel(NatStatus { mode: config.mode.clone(), ..NatStatus::default() });
        let mut service = NatService {
            config,
            locator,
            gateway: None,
            route_error: None,
            mappers: Vec::new(),
            current: None,
            quirks: Quirks::default(),
            no_answers: 0,
            external_ip: None,
            discovery_error: None,
            discoveries_failed: 0,
            next_discovery: Duration::ZERO,
            wants: BTreeMap::new(),
            renewals: 0,
            failures: 0,
            start: Instant::now(),
            status: status_tx,
            events: None,
        };
        service.publish();
        (service, NatHandle { commands: tx, status: status_rx }, NatCommands(rx))
    }

    /// Sends every [`NatEvent`] to `events` too.
    pub fn with_events(mut self, events: mpsc::UnboundedSender<NatEvent>) -> Self {
        self.events = Some(events);
        self
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.now().as_millis()).unwrap_or(u64::MAX)
    }

    fn emit(&self, event: NatEvent) {
        match &event {
            NatEvent::Chosen { method, gateway, external_ip, .. } => {
                info!(%method, %gateway, external_ip = external_ip.as_deref().unwrap_or("-"), "NAT: using the router's port mapping")
            }
            NatEvent::NoGateway { explanation, .. } => warn!("NAT: {explanation}"),
            NatEvent::Mapped { transport, internal_port, external, method, took_ms, .. } => {
                info!(%transport, internal_port, %external, %method, took_ms, "NAT: port mapped")
            }
            NatEvent::Renewed { transport, internal_port, external, margin_ms, .. } => {
                debug!(%transport, internal_port, %external, margin_ms, "NAT: lease renewed")
            }
            NatEvent::Failed { transport, internal_port, method, error, .. } => {
                warn!(%transport, internal_port, %method, %error, "NAT: mapping request failed")
            }
            NatEvent::Dropped { method, .. } => {
                warn!(%method, "NAT: the router stopped answering; looking again")
            }
            NatEvent::Removed { transport, internal_port, ok, .. } => {
                info!(%transport, internal_port, ok, "NAT: mapping removed")
            }
        }
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    /// Runs until `cancel`, then removes every mapping (bounded by [`RELEASE_TIMEOUT`]).
    pub async fn run(mut self, NatCommands(mut commands): NatCommands, cancel: CancellationToken) {
        let mut open = true;
        loop {
            if !self.config.methods.is_empty() {
                self.step().await;
            }
            self.publish();
            let wake = self.start + self.next_wake();
            tokio::select! {
                _ = cancel.cancelled() => break,
                command = commands.recv(), if open => match command {
                    Some(c) => self.apply(c).await,
                    None => open = false,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        if tokio::time::timeout(RELEASE_TIMEOUT, self.release_all()).await.is_err() {
            warn!(
                "NAT: removing the mappings took longer than {RELEASE_TIMEOUT:?}; the router drops them when the leases end"
            );
        }
        self.publish();
    }

    /// Discovery if needed, then every due mapping.
    async fn step(&mut self) {
        if self.current.is_none() && self.now() >= self.next_discovery {
            self.discover().await;
        }
        let Some(index) = self.current else { return };
        let mapper = Arc::clone(&self.mappers[index]);
        let due: Vec<(Transport, u16)> = self
            .wants
            .iter()
            .filter(|(_, w)| w.due_at(self.config.refresh) <= self.now())
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if self.current != Some(index) {
                break;
            }
            self.map_one(&mapper, key).await;
        }
    }

    async fn discover(&mut self) {
        if self.gateway.is_none() {
            match (self.locator)() {
                Ok((gateway, mappers)) => {
                    self.gateway = Some(gateway);
                    self.route_error = None;
                    self.mappers = mappers.into_iter().map(Arc::new).collect();
                }
                Err(e) => {
                    // No default route (yet): look again later.
                    if self.route_error.as_ref() != Some(&e) {
                        warn!("NAT: {e}");
                    }
                    self.route_error = Some(e);
                    self.discoveries_failed += 1;
                    self.next_discovery =
                        self.now() + backoff(self.discoveries_failed).min(Duration::from_secs(60));
                    return;
                }
            }
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, m) in self.mappers.iter().enumerate() {
            let m = Arc::clone(m);
            tasks.spawn(async move { (i, m.probe().await) });
        }
        let mut results: Vec<Option<Result<Option<Ipv4Addr>, MapError>>> =
            (0..self.mappers.len()).map(|_| None).collect();
        // Take the most preferred protocol as soon as it answered and every one before it
        // failed: a router that answers UPnP at once is not kept waiting for PCP's timeout.
        let mut chosen = None;
        while let Some(r) = tasks.join_next().await {
            if let Ok((i, r)) = r {
                results[i] = Some(r);
            }
            match results.iter().position(|r| !matches!(r, Some(Err(_)))) {
                Some(first) if matches!(results[first], Some(Ok(_))) => {
                    chosen = Some(first);
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        // Dropping the set stops the probes still running.
        drop(tasks);
        match chosen {
            Some(i) => {
                let ip = results[i].as_ref().and_then(|r| r.as_ref().ok().copied().flatten());
                self.current = Some(i);
                self.quirks = Quirks::default();
                self.no_answers = 0;
                self.discovery_error = None;
                self.discoveries_failed = 0;
                if ip.is_some() {
                    self.external_ip = ip;
                }
                let now = self.now();
                for w in self.wants.values_mut() {
                    w.reset(now);
                }
                self.emit(NatEvent::Chosen {
                    method: self.mappers[i].method(),
                    gateway: self.gateway.map(|g| g.to_string()).unwrap_or_default(),
                    external_ip: ip.map(|ip| ip.to_string()),
                    at_ms: self.ms(),
                });
            }
            None => {
                let reasons: Vec<String> = self
                    .mappers
                    .iter()
                    .zip(&results)
                    .map(|(m, r)| match r {
                        Some(Err(e)) => format!("{}: {e}", m.method()),
                        _ => format!("{}: no answer", m.method()),
                    })
                    .collect();
                self.discovery_error = Some(reasons.join("; "));
                self.discoveries_failed += 1;
                self.next_discovery =
                    self.now() + backoff(self.discoveries_failed).min(Duration::from_secs(60));
                self.external_ip = None;
                let explanation = self.explanation();
                self.emit(NatEvent::NoGateway { explanation, at_ms: self.ms() });
            }
        }
    }

    async fn map_one(&mut self, mapper: &Arc<M>, key: (Transport, u16)) {
        let method = mapper.method();
        for _attempt in 0..3 {
            let Some(want) = self.wants.get(&key) else { return };
            let lease = self.quirks.lease(self.config.lease);
            let external_port = want.requested_external_port();
            let was = want.active;
            let started = self.now();
            let result = mapper.map(key.0, key.1, external_port, lease).await;
            let now = self.now();
            match result {
                Ok(granted) => {
                    self.no_answers = 0;
                    self.external_ip = Some(*granted.external.ip());
                    let want = self.wants.get_mut(&key).expect("checked above");
                    let renewal = want.granted(granted, now);
                    let external = granted.external.to_string();
                    let lease_secs = granted.lifetime.map(|l| l.as_secs());
                    if renewal {
                        self.renewals += 1;
                        let margin_ms = was.and_then(|a| a.expires_at).map(|e| {
                            i64::try_from(e.as_millis()).unwrap_or(i64::MAX)
                                - i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
                        });
                        let renewals = want.renewals;
                        self.emit(NatEvent::Renewed {
                            transport: key.0,
                            internal_port: key.1,
                            external,
                            method,
                            lease_secs,
                            at_ms: self.ms(),
                            margin_ms,
                            renewals,
                        });
                    } else {
                        let took_ms = u64::try_from((now - started).as_millis()).unwrap_or(u64::MAX);
                        self.emit(NatEvent::Mapped {
                            transport: key.0,
                            internal_port: key.1,
                            external,
                            method,
                            lease_secs,
                            at_ms: self.ms(),
                            took_ms,
                        });
                    }
                    return;
                }
                Err(error) => {
                    self.failures += 1;
                    self.emit(NatEvent::Failed {
                        transport: key.0,
                        internal_port: key.1,
                        method,
                        error: error.to_string(),
                        at_ms: self.ms(),
                    });
                    if self.quirks.learn(&error, lease) {
                        continue;
                    }
                    let want = self.wants.get_mut(&key).expect("checked above");
                    if let MapError::PortTaken(_) = error {
                        // Let the router choose the external port next time.
                        want.last_external_port = Some(0);
                    }
                    want.failed(&error, now);
                    if let MapError::NoAnswer(_) = error {
                        self.no_answers += 1;
                        if self.no_answers >= NO_ANSWER_LIMIT {
                            self.drop_method(now);
                        }
                    }
                    return;
                }
            }
        }
    }

    /// The protocol stopped answering: forget it and discover again now.
    fn drop_method(&mut self, now: Duration) {
        if let Some(i) = self.current.take() {
            self.emit(NatEvent::Dropped { method: self.mappers[i].method(), at_ms: self.ms() });
        }
        self.no_answers = 0;
        self.next_discovery = now;
        for w in self.wants.values_mut() {
            w.reset(now);
        }
    }

    async fn apply(&mut self, command: Command) {
        match command {
            Command::Want { transport, port, label } => {
                let now = self.now();
                self.wants.entry((transport, port)).or_insert_with(|| Want::new(transport, port, label, now));
            }
            Command::Release { transport, port } => {
                if let Some(want) = self.wants.remove(&(transport, port)) {
                    self.unmap(&want).await;
                }
            }
        }
    }

    async fn unmap(&mut self, want: &Want) {
        let (Some(i), Some(active)) = (self.current, want.active) else { return };
        let mapper = Arc::clone(&self.mappers[i]);
        let ok = mapper.unmap(want.transport, want.internal_port, active.granted.external.port()).await;
        if let Err(e) = &ok {
            warn!(transport = %want.transport, port = want.internal_port, error = %e, "NAT: removing the mapping failed; the router drops it when the lease ends");
        }
        self.emit(NatEvent::Removed {
            transport: want.transport,
            internal_port: want.internal_port,
            method: mapper.method(),
            ok: ok.is_ok(),
            at_ms: self.ms(),
        });
    }

    async fn release_all(&mut self) {
        let wants = std::mem::take(&mut self.wants);
        for want in wants.values() {
            self.unmap(want).await;
        }
    }

    fn next_wake(&self) -> Duration {
        let mut wake = self.now() + Duration::from_secs(3600);
        if self.config.methods.is_empty() {
            return wake;
        }
        match self.current {
            None => wake = wake.min(self.next_discovery),
            Some(_) => {
                for w in self.wants.values() {
                    wake = wake.min(w.due_at(self.config.refresh));
                }
            }
        }
        wake.max(self.now())
    }

    fn method(&self) -> Option<Method> {
        self.current.map(|i| self.mappers[i].method())
    }

    /// Why the worker is or is not reachable, in one sentence.
    fn explanation(&self) -> String {
        if let Some(manual) = &self.config.manual {
            return match classify_external(manual.external_ip) {
                External::Public => format!(
                    "manual port forwarding to this host through {} (as configured; not verified)",
                    manual.external_ip
                ),
                External::NotPublic(kind) => not_public_explanation(manual.external_ip, kind),
            };
        }
        if self.config.methods.is_empty() {
            return "NAT traversal is off ([nat] mode = \"off\"): the worker is reachable only if this host \
                    has a public address or the ports are forwarded by hand"
                .into();
        }
        if let Some(e) = &self.route_error {
            return format!("not reachable: {e}");
        }
        let Some(method) = self.method() else {
            let gateway = self.gateway.map(|g| g.to_string()).unwrap_or_default();
            return match &self.discovery_error {
                None => format!("looking for the router ({gateway})"),
                Some(reasons) => format!(
                    "not reachable: no gateway answered UPnP IGD, PCP or NAT-PMP (default gateway {gateway}; \
                     {reasons}). Enable UPnP or NAT-PMP/PCP on the router, or forward the ports there by hand \
                     and set [nat] mode = \"manual\""
                ),
            };
        };
        if let Some(ip) = self.external_ip
            && let External::NotPublic(kind) = classify_external(ip)
        {
            return not_public_explanation(ip, kind);
        }
        let now = self.now();
        let failing: Vec<String> = self
            .wants
            .values()
            .filter(|w| !w.is_mapped(now))
            .map(|w| match &w.last_error {
                Some(e) => format!("{} {} ({}): {e}", w.transport, w.internal_port, w.label),
                None => format!("{} {} ({}): mapping", w.transport, w.internal_port, w.label),
            })
            .collect();
        let ip = self.external_ip.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
        if failing.is_empty() {
            format!(
                "reachable: ports mapped through {method} on {}, external address {ip}",
                self.gateway.map(|g| g.to_string()).unwrap_or_default()
            )
        } else {
            format!("not reachable yet through {method}: {}", failing.join("; "))
        }
    }

    fn publish(&mut self) {
        let now = self.now();
        let unix = crate::api::unix_now();
        let manual = self.config.manual.clone();
        let mappings: Vec<MappingStatus> = self
            .wants
            .values()
            .map(|w| {
                if let Some(m) = &manual {
                    let port = m.ports.get(&w.internal_port).copied().unwrap_or(w.internal_port);
                    return MappingStatus {
                        label: w.label.clone(),
                        transport: w.transport,
                        internal_port: w.internal_port,
                        external: Some(format!("{}:{port}", m.external_ip)),
                        state: "forwarded".into(),
                        lease_secs: None,
                        expires_at: None,
                        renewals: 0,
                        late_renewals: 0,
                        last_error: None,
                    };
                }
                let mapped = w.is_mapped(now) && self.current.is_some();
                let active = w.active.filter(|_| mapped);
                MappingStatus {
                    label: w.label.clone(),
                    transport: w.transport,
                    internal_port: w.internal_port,
                    external: active.map(|a| a.granted.external.to_string()),
                    state: if mapped {
                        "mapped"
                    } else if w.failures > 0 {
                        "failing"
                    } else {
                        "pending"
                    }
                    .into(),
                    lease_secs: active.and_then(|a| a.granted.lifetime).map(|l| l.as_secs()),
                    expires_at: active
                        .and_then(|a| a.expires_at)
                        .map(|e| unix + e.saturating_sub(now).as_secs()),
                    renewals: w.renewals,
                    late_renewals: w.late_renewals,
                    last_error: w.last_error.clone(),
                }
            })
            .collect();
        let external_ip = match &manual {
            Some(m) => Some(m.external_ip),
            None => self.external_ip.filter(|_| self.current.is_some()),
        };
        let public = external_ip.is_some_and(|ip| classify_external(ip) == External::Public);
        let reachable = public
            && match &manual {
                Some(_) => true,
                // Nothing wanted yet (the first ports are still in the command queue) is not
                // "reachable": there is nothing to reach.
                None => {
                    self.current.is_some()
                        && !mappings.is_empty()
                        && mappings.iter().all(|m| m.state == "mapped")
                }
            };
        let status = NatStatus {
            mode: self.config.mode.clone(),
            method: match &manual {
                Some(_) => Some("manual".into()),
                None => self.method().map(|m| m.name().to_owned()),
            },
            gateway: self.gateway.map(|g| g.to_string()),
            external_ip: external_ip.map(|ip| ip.to_string()),
            reachable,
            explanation: self.explanation(),
            mappings,
            renewals: self.renewals,
            failures: self.failures,
        };
        self.status.send_if_modified(|old| {
            if *old == status {
                false
            } else {
                *old = status;
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddrV4;
    use std::sync::Mutex;

    use super::*;

    /// An in-memory router: what it holds, how it misbehaves.
    #[derive(Default)]
    struct Router {
        answers: bool,
        permanent_only: bool,
        refuses_permanent: bool,
        external: Option<Ipv4Addr>,
        mappings: HashMap<(Transport, u16), (u16, Option<Duration>)>,
        requests: u32,
    }

    struct Fake {
        method: Method,
        router: Arc<Mutex<Router>>,
    }

    impl PortMapper for Fake {
        fn method(&self) -> Method {
            self.method
        }
        async fn probe(&self) -> Result<Option<Ipv4Addr>, MapError> {
            let r = self.router.lock().unwrap();
            if r.answers { Ok(r.external) } else { Err(MapError::NoAnswer("silence".into())) }
        }
        async fn map(&self, t: Transport, i: u16, e: u16, l: Option<Duration>) -> Result<Granted, MapError> {
            let mut r = self.router.lock().unwrap();
            r.requests += 1;
            if !r.answers {
                return Err(MapError::NoAnswer("silence".into()));
            }
            if r.permanent_only && l.is_some() {
                return Err(MapError::PermanentOnly);
            }
            if r.refuses_permanent && l.is_none() {
                return Err(MapError::PermanentRefused("UPnP error 402 Invalid Args".into()));
            }
            let port = if e == 0 { 40000 } else { e };
            r.mappings.insert((t, i), (port, l));
            let ip = r.external.unwrap_or(Ipv4Addr::new(198, 20, 1, 1));
            Ok(Granted { external: SocketAddrV4::new(ip, port), lifetime: l })
        }
        async fn unmap(&self, t: Transport, i: u16, _e: u16) -> Result<(), MapError> {
            let mut r = self.router.lock().unwrap();
            if !r.answers {
                return Err(MapError::NoAnswer("silence".into()));
            }
            r.mappings.remove(&(t, i));
            Ok(())
        }
    }

    fn router(answers: bool, external: Option<[u8; 4]>) -> Arc<Mutex<Router>> {
        Arc::new(Mutex::new(Router { answers, external: external.map(Ipv4Addr::from), ..Router::default() }))
    }

    fn start(
        routers: Vec<(Method, Arc<Mutex<Router>>)>,
    ) -> (NatHandle, CancellationToken, tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<NatEvent>) {
        let config = ServiceConfig {
            mode: "auto".into(),
            methods: routers.iter().map(|(m, _)| *m).collect(),
            lease: Duration::from_secs(30),
            refresh: Duration::from_secs(60),
            manual: None,
        };
        let locator: Locator<Fake> = Box::new(move || {
            Ok((
                Ipv4Addr::new(192, 168, 1, 1),
                routers.iter().map(|(m, r)| Fake { method: *m, router: Arc::clone(r) }).collect(),
            ))
        });
        let (service, handle, commands) = NatService::new(config, locator);
        let (tx, rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(service.with_events(tx).run(commands, cancel.clone()));
        (handle, cancel, task, rx)
    }

    async fn settle(handle: &NatHandle, pred: impl Fn(&NatStatus) -> bool) -> NatStatus {
        let mut rx = handle.subscribe();
        tokio::time::timeout(Duration::from_secs(600), async {
            loop {
                let s = rx.borrow_and_update().clone();
                if pred(&s) {
                    return s;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never settled: {:?}", handle.status()))
    }

    #[tokio::test(start_paused = true)]
    async fn maps_renews_at_half_the_lease_and_removes_at_shutdown() {
        let upnp = router(true, Some([198, 20, 1, 1]));
        let (handle, cancel, task, _events) = start(vec![(Method::Upnp, upnp.clone())]);
        handle.want(Transport::Tcp, 7070, "transfer");
        let s = settle(&handle, |s| s.reachable).await;
        assert_eq!(s.method.as_deref(), Some("UPnP IGD"));
        assert_eq!(s.endpoint(Transport::Tcp, 7070).as_deref(), Some("198.20.1.1:7070"));
        assert!(s.explanation.starts_with("reachable: ports mapped through UPnP IGD on 192.168.1.1"));
        // 100 s of 30 s leases: renewed every 15 s, never late.
        tokio::time::sleep(Duration::from_secs(100)).await;
        let s = handle.status();
        assert_eq!((s.renewals, s.mappings[0].late_renewals, s.failures), (6, 0, 0));
        assert_eq!(upnp.lock().unwrap().requests, 7);
        cancel.cancel();
        task.await.unwrap();
        assert!(upnp.lock().unwrap().mappings.is_empty(), "removed at shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_only_router_gets_lease_zero() {
        let upnp = router(true, Some([198, 20, 1, 1]));
        upnp.lock().unwrap().permanent_only = true;
        let (handle, cancel, task, _events) = start(vec![(Method::Upnp, upnp.clone())]);
        handle.want(Transport::Tcp, 7070, "transfer");
        let s = settle(&handle, |s| s.reachable).await;
        assert_eq!(s.mappings[0].lease_secs, None);
        assert_eq!(upnp.lock().unwrap().mappings[&(Transport::Tcp, 7070)], (7070, None));
        // Refreshed every `refresh` (60 s), asking for a permanent lease straight away.
        tokio::time::sleep(Duration::from_secs(125)).await;
        assert_eq!(upnp.lock().unwrap().requests, 2 + 2);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_router_that_says_725_and_then_refuses_lease_zero_is_not_asked_in_circles() {
        let upnp = router(true, Some([198, 20, 1, 1]));
        {
            let mut r = upnp.lock().unwrap();
            r.permanent_only = true;
            r.refuses_permanent = true;
        }
        let (handle, cancel, task, _events) = start(vec![(Method::Upnp, upnp.clone())]);
        handle.want(Transport::Tcp, 7070, "transfer");
        let s = settle(&handle, |s| s.mappings.first().is_some_and(|m| m.state == "failing")).await;
        // Finite (725), permanent (402), finite again (725): then the backoff, not a loop.
        assert_eq!(upnp.lock().unwrap().requests, 3);
        assert_eq!(s.mappings[0].last_error.as_deref(), Some("the router accepts only permanent leases"));
        assert!(!s.reachable);
        // The router is fixed: the next retry (after the backoff) maps with a finite lease.
        upnp.lock().unwrap().permanent_only = false;
        let s = settle(&handle, |s| s.reachable).await;
        assert_eq!(s.mappings[0].lease_secs, Some(30));
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_router_behind_carrier_grade_nat_is_not_reachable_and_says_why() {
        let natpmp = router(true, Some([100, 64, 7, 9]));
        let (handle, cancel, task, _events) = start(vec![(Method::NatPmp, natpmp)]);
        handle.want(Transport::Tcp, 7070, "transfer");
        let s = settle(&handle, |s| s.mappings.first().is_some_and(|m| m.state == "mapped")).await;
        assert!(!s.reachable);
        assert_eq!(s.endpoint(Transport::Tcp, 7070), None);
        assert!(
            s.explanation.starts_with(
                "not reachable: the router's external address 100.64.7.9 is a carrier-grade NAT (100.64.0.0/10) address"
            ),
            "{}",
            s.explanation
        );
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_protocol_that_stops_answering_is_left_for_the_next() {
        let upnp = router(true, Some([198, 20, 1, 1]));
        let pcp = router(true, None);
        let (handle, cancel, task, mut events) =
            start(vec![(Method::Upnp, upnp.clone()), (Method::Pcp, pcp.clone())]);
        handle.want(Transport::Tcp, 7070, "transfer");
        settle(&handle, |s| s.method.as_deref() == Some("UPnP IGD") && s.reachable).await;
        upnp.lock().unwrap().answers = false;
        let s = settle(&handle, |s| s.method.as_deref() == Some("PCP") && s.reachable).await;
        assert_eq!(s.endpoint(Transport::Tcp, 7070).as_deref(), Some("198.20.1.1:7070"));
        assert!(pcp.lock().unwrap().mappings.contains_key(&(Transport::Tcp, 7070)));
        let mut names = Vec::new();
        while let Ok(e) = events.try_recv() {
            names.push(serde_json::to_value(&e).unwrap()["event"].as_str().unwrap().to_owned());
        }
        let dropped = names.iter().position(|n| n == "dropped").expect("a dropped event");
        assert_eq!(names[dropped + 1..dropped + 3], ["chosen", "mapped"], "{names:?}");
        // Releasing removes it from the router at once.
        handle.release(Transport::Tcp, 7070);
        settle(&handle, |s| s.mappings.is_empty()).await;
        assert!(pcp.lock().unwrap().mappings.is_empty());
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_gateway_answering_is_explained_and_retried() {
        let upnp = router(false, None);
        let pcp = router(false, None);
        let (handle, cancel, task, _events) = start(vec![(Method::Upnp, upnp), (Method::Pcp, pcp.clone())]);
        handle.want(Transport::Tcp, 7070, "transfer");
        let s = settle(&handle, |s| s.explanation.starts_with("not reachable")).await;
        assert_eq!(
            s.explanation,
            "not reachable: no gateway answered UPnP IGD, PCP or NAT-PMP (default gateway 192.168.1.1; \
             UPnP IGD: no answer: silence; PCP: no answer: silence). Enable UPnP or NAT-PMP/PCP on the \
             router, or forward the ports there by hand and set [nat] mode = \"manual\""
        );
        assert_eq!(s.mappings[0].state, "pending");
        // The router comes up later: found at the next discovery (backoff 2 s, 4 s, ...).
        tokio::time::sleep(Duration::from_secs(20)).await;
        pcp.lock().unwrap().answers = true;
        let s = settle(&handle, |s| s.reachable).await;
        assert_eq!(s.method.as_deref(), Some("PCP"));
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn no_default_route_is_explained_and_manual_forwarding_is_reported_as_configured() {
        let config = ServiceConfig {
            mode: "auto".into(),
            methods: Method::ORDER.to_vec(),
            lease: Duration::from_secs(30),
            refresh: Duration::from_secs(60),
            manual: None,
        };
        let locator: Locator<Fake> =
            Box::new(|| Err("this host has no IPv4 default route, so there is no router to ask".into()));
        let (service, handle, commands) = NatService::new(config, locator);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(service.run(commands, cancel.clone()));
        handle.want(Transport::Tcp, 7070, "transfer");
        let s = settle(&handle, |s| s.explanation.starts_with("not reachable")).await;
        assert_eq!(
            s.explanation,
            "not reachable: this host has no IPv4 default route, so there is no router to ask"
        );
        cancel.cancel();
        task.await.unwrap();

        let config = ServiceConfig {
            mode: "manual".into(),
            methods: Vec::new(),
            lease: Duration::from_secs(30),
            refresh: Duration::from_secs(60),
            manual: Some(Manual { external_ip: Ipv4Addr::new(81, 2, 69, 160), ports: BTreeMap::new() }),
        };
        let locator: Locator<Fake> = Box::new(|| panic!("manual mode asks no router"));
        let (service, handle, commands) = NatService::new(config, locator);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(service.run(commands, cancel.clone()));
        handle.want(Transport::Tcp, 7070, "transfer");
        let s = settle(&handle, |s| !s.mappings.is_empty()).await;
        assert!(s.reachable);
        assert_eq!(s.method.as_deref(), Some("manual"));
        assert_eq!(s.endpoint(Transport::Tcp, 7070).as_deref(), Some("81.2.69.160:7070"));
        assert_eq!(s.mappings[0].state, "forwarded");
        assert_eq!(
            s.explanation,
            "manual port forwarding to this host through 81.2.69.160 (as configured; not verified)"
        );
        cancel.cancel();
        task.await.unwrap();
    }
}
