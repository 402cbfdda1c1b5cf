//! The worker's side of agreements' work, around the core's decisions: reading the client's
//! hello and sealing our offer, the transfer server's gate, and starting and stopping
//! containers. The core decides *what* ([`Action::Start`](crate::core::Action::Start), [`Action::Stop`](crate::core::Action::Stop), the offer and
//! `declareReady` intents); this carries it out and reports back as [`WorkEvent`]s through the
//! event loop.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::WorkConfig;
use crate::core::node::{AgreementView, Node, Role, Stage};
use crate::core::types::{Address, AgreementId};
use crate::core::work::{Phase, Probe, WatchSpec, WorkEvent};
use crate::identity::Identity;
use crate::letters::{self, Body, Context, Offer};
use crate::nat::{NatHandle, Transport};
use crate::runtime::{ContainerSpec, DockerRuntime, Runtime};
use crate::transfer::server::{Admission, Gate};
use crate::transfer::{ByteStream, ImageSink, digest_string};

/// How long a started container has to answer its probe before the start counts as failed.
pub const READY_PROBE_WITHIN: Duration = Duration::from_secs(90);

pub struct Work {
    pub runtime: Arc<DockerRuntime>,
    pub identity: Identity,
    pub scope: String,
    pub chain_id: u64,
    pub dispatcher: Address,
    pub me: Address,
    pub config: WorkConfig,
    /// The port our transfer server listens on.
    pub transfer_port: u16,
    /// The host clients reach us at when the router maps nothing (`work.announce_host`, or the
    /// address of the default route's interface).
    pub announce_host: String,
    /// The home router's port mappings.
    pub nat: NatHandle,
    pub fingerprint: String,
    pub events: mpsc::Sender<WorkEvent>,
    pub gate: watch::Sender<Gate>,
}

impl Work {
    /// A letter relayed to us: a client's hello becomes a [`WorkEvent::Hello`] with our sealed
    /// offer; anything else is logged and dropped (a broken or hostile letter changes nothing).
    /// `verifiers`: the agreement's verifiers with their registered keys (read from the chain),
    /// to whom our watch letters are sealed.
    pub fn letter(
        &self,
        node: &Node,
        id: AgreementId,
        from: Address,
        ciphertext: &[u8],
        verifiers: &[(Address, [u8; 32])],
    ) -> Option<WorkEvent> {
        let ctx = Context {
            chain_id: self.chain_id,
            dispatcher: self.dispatcher,
            agreement: id,
            from,
            to: self.me,
        };
        let refuse = |why: String| {
            warn!(agreement = id, %from, "letter ignored: {why}");
            None
        };
        let Some(a) = node.agreement(id) else { return refuse("not an agreement of ours".into()) };
        if a.role != Role::Worker || from != a.client {
            return refuse("only the agreement's client writes to its worker".into());
        }
        if a.deployment.is_some() {
            return refuse("the deployment was already agreed".into());
        }
        let body = match letters::open(|c| self.identity.open(c), &ctx, ciphertext) {
            Ok(body) => body,
            Err(e) => return refuse(e.to_string()),
        };
        let Body::Hello(hello) = body else { return refuse("expected a hello".into()) };
        let Some(work) = a.work else { return refuse("the agreement's commitment is unknown".into()) };
        if letters::probe_hash(&hello.probe) != work.probe {
            return refuse(letters::LetterError::ProbeMismatch.to_string());
        }
        let client_key = match hello.key() {
            Ok(k) => k,
            Err(e) => return refuse(e.to_string()),
        };
        if hello.container_port == 0 {
            return refuse("the hello names port 0".into());
        }
        let Some(host_port) = self.free_port(node) else {
            return refuse(format!(
                "every port of work.ports {}-{} is taken",
                self.config.ports.0, self.config.ports.1
            ));
        };
        // Mapped on the router now; the router grants the same external port (asked for).
        self.nat.want(Transport::Tcp, host_port, format!("agreement {id}"));
        let (transfer, host) = self.endpoints();
        let work = format!("{host}:{host_port}");
        let offer =
            Offer { transfer: transfer.clone(), fingerprint: self.fingerprint.clone(), work: work.clone() };
        let back = Context { from: self.me, to: from, ..ctx };
        let sealed = match letters::seal(&back, Body::Offer(offer), &client_key) {
            Ok(s) => s,
            Err(e) => return refuse(e.to_string()),
        };
        // The verifiers probe what the client reaches, with the client's own probe.
        let spec =
            WatchSpec { work, probe: hello.probe.clone(), transfer, fingerprint: self.fingerprint.clone() };
        let mut watches = Vec::new();
        for (verifier, key) in verifiers {
            let to = Context { from: self.me, to: *verifier, ..ctx };
            match letters::seal(&to, Body::Watch(spec.clone()), key) {
                Ok(sealed) => watches.push((*verifier, sealed)),
                Err(e) => warn!(agreement = id, %verifier, "no watch letter for this verifier: {e}"),
            }
        }
        info!(agreement = id, host_port, "client's hello read; offering our endpoint");
        Some(WorkEvent::Hello {
            id,
            client_key,
            container_port: hello.container_port,
            host_port,
            probe: hello.probe,
            offer: sealed,
            watches,
        })
    }

    /// The transfer endpoint and the host to announce: what the operator configured, else what
    /// the home router maps (its external address), else this machine's address.
    fn endpoints(&self) -> (String, String) {
        if self.config.announce_host.is_none() {
            let nat = self.nat.status();
            if let (Some(transfer), Some(ip)) =
                (nat.endpoint(Transport::Tcp, self.transfer_port), nat.external_ip)
            {
                return (transfer, ip);
            }
        }
        (format!("{}:{}", self.announce_host, self.transfer_port), self.announce_host.clone())
    }

    fn free_port(&self, node: &Node) -> Option<u16> {
        let used: Vec<u16> = node.ports_in_use().collect();
        (self.config.ports.0..=self.config.ports.1).find(|p| !used.contains(p))
    }

    /// Who may push what now.
    pub fn publish_gate(&self, node: &Node) {
        let open = node
            .agreements()
            .filter(|a| {
                a.role == Role::Worker
                    && matches!(a.stage, Stage::Created { .. } | Stage::Accepted { .. })
                    && a.deployment.as_ref().is_some_and(|d| d.phase == Phase::AwaitingImage)
            })
            .filter_map(|a| {
                let work = a.work?;
                Some((
                    a.id,
                    Admission {
                        client: a.client,
                        image: work.image,
                        max_bytes: u64::from(work.disk_mib) << 20,
                    },
                ))
            })
            .collect();
        let running = node
            .agreements()
            .filter(|a| {
                a.role == Role::Worker
                    && a.deployment
                        .as_ref()
                        .is_some_and(|d| matches!(d.phase, Phase::Loaded | Phase::Started))
            })
            .map(|a| a.id)
            .collect();
        self.gate.send_if_modified(|gate| {
            let new = Gate { chain_id: self.chain_id, dispatcher: self.dispatcher, open, running };
            let changed = *gate != new;
            *gate = new;
            changed
        });
    }

    fn spec(&self, a: &AgreementView) -> Option<(ContainerSpec, Probe)> {
        let work = a.work?;
        let d = a.deployment.as_ref()?;
        let memory_bytes = i64::from(work.memory_mib) << 20;
        let spec = ContainerSpec {
            scope: self.scope.clone(),
            agreement: a.id,
            image: digest_string(&work.image),
            nano_cpus: i64::from(work.cpu_millis) * 1_000_000,
            memory_bytes,
            pids_limit: i64::from(self.config.pids_limit),
            container_port: d.container_port,
            host_ip: self.config.publish_ip,
            host_port: d.host_port,
            tmpfs_bytes: (u64::from(self.config.tmp_mib) << 20).min(memory_bytes as u64 / 2),
        };
        Some((spec, d.probe.clone()))
    }

    /// Starts (or adopts) the container, waits for its probe, reports `Started` or `Failed`.
    pub fn start(&self, node: &Node, id: AgreementId) {
        let Some((spec, probe)) = node.agreement(id).and_then(|a| self.spec(a)) else { return };
        let runtime = self.runtime.clone();
        let events = self.events.clone();
        let local = match self.config.publish_ip {
            ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        tokio::spawn(async move {
            let event = match runtime.run(&spec).await {
                Err(e) => WorkEvent::Failed { id, reason: format!("starting the container: {e}") },
                Ok(running) => {
                    let addr = SocketAddr::new(local, running.host_port);
                    match crate::probe::wait_until_ok(addr, &probe, READY_PROBE_WITHIN).await {
                        Ok(answer) => {
                            info!(agreement = id, container = %running.container_id, "work is up: {answer}");
                            WorkEvent::Started { id }
                        }
                        Err(e) => WorkEvent::Failed {
                            id,
                            reason: format!("the work never answered its probe: {e}"),
                        },
                    }
                }
            };
            let _ = events.send(event).await;
        });
    }

    /// Stops and removes the container (in the background; idempotent), and its port mapping.
    pub fn stop(&self, node: &Node, id: AgreementId) {
        if let Some(d) = node.agreement(id).and_then(|a| a.deployment.as_ref()) {
            self.nat.release(Transport::Tcp, d.host_port);
        }
        let runtime = self.runtime.clone();
        let scope = self.scope.clone();
        tokio::spawn(async move {
            match runtime.remove(&scope, id).await {
                Ok(()) => info!(agreement = id, "work stopped and removed"),
                Err(e) => warn!(agreement = id, "removing the container failed: {e}"),
            }
        });
    }

    /// After a restart: adopt the containers that should run, start the ones that vanished,
    /// remove the ones whose agreement is over.
    pub async fn reconcile(&self, node: &Node) {
        let should: Vec<AgreementId> = node.should_run().collect();
        match self.runtime.list(&self.scope).await {
            Ok(found) => {
                for c in found.iter().filter(|c| !should.contains(&c.agreement)) {
                    info!(agreement = c.agreement, "removing the container of an agreement that is over");
                    self.stop(node, c.agreement);
                }
            }
            Err(e) => warn!("listing our containers: {e}"),
        }
        for id in should {
            info!(agreement = id, "re-adopting the work after a restart");
            if let Some(d) = node.agreement(id).and_then(|a| a.deployment.as_ref()) {
                self.nat.want(Transport::Tcp, d.host_port, format!("agreement {id}"));
            }
            self.start(node, id);
        }
    }
}

impl ImageSink for DockerRuntime {
    async fn has_image(&self, image: &str) -> Result<bool, String> {
        Runtime::has_image(self, image).await.map_err(|e| e.to_string())
    }
    async fn present_prefix(&self, diff_ids: &[String]) -> Result<usize, String> {
        Runtime::present_prefix(self, diff_ids).await.map_err(|e| e.to_string())
    }
    async fn load(&self, archive: ByteStream) -> Result<(), String> {
        Runtime::load_image(self, archive).await.map_err(|e| e.to_string())
    }
}

/// The address of the interface that routes to the Internet (no packet is sent: a UDP
/// socket's connect only picks the route).
pub fn default_route_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// The signed health reports verifiers ask the transfer server for.
pub struct WorkerHealth {
    pub runtime: Arc<DockerRuntime>,
    pub scope: String,
    pub signer: alloy::signers::local::PrivateKeySigner,
    pub chain_id: u64,
    pub dispatcher: Address,
}

impl crate::transfer::HealthSource for WorkerHealth {
    async fn health(&self, agreement: AgreementId, nonce: String) -> Result<crate::transfer::Frame, String> {
        let state = self.runtime.state(&self.scope, agreement).await.map_err(|e| e.to_string())?;
        let binding =
            crate::health::Binding { chain_id: self.chain_id, dispatcher: self.dispatcher, agreement, nonce };
        let report = crate::health::HealthReport::new(&binding, state.as_ref(), super::unix_now());
        crate::health::sign(&report, &self.signer)
    }
}
