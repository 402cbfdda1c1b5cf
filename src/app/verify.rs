//! The verifier's side of agreements, around the core's decisions: reading the worker's watch
//! letter, and probing the work when the core says so ([`Action::Probe`](crate::core::Action::Probe)).
//! The core decides *when* (one moment per epoch, drawn from a secret the worker does not know)
//! and sends the report; this carries out the probe and reports back a
//! [`WorkEvent::Probed`] through the event loop.
//!
//! An epoch is served when both hold: the client's probe passes at the endpoint the worker
//! gave, and the worker's signed health report for this request says its container runs.
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::core::node::{Node, Role};
use crate::core::types::{Address, AgreementId};
use crate::core::work::{Work, WorkEvent};
use crate::health::{self, Binding};
use crate::identity::Identity;
use crate::letters::{self, Body, Context};

/// How long one probe of the client's endpoint may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Verifier {
    pub identity: Identity,
    pub chain_id: u64,
    pub dispatcher: Address,
    pub me: Address,
    pub events: mpsc::Sender<WorkEvent>,
}

impl Verifier {
    /// A worker's watch letter to us, checked against the client's commitment (`committed`,
    /// read from the chain). Anything else is logged and dropped.
    pub fn letter(
        &self,
        node: &Node,
        id: AgreementId,
        from: Address,
        ciphertext: &[u8],
        committed: Option<Work>,
    ) -> Option<WorkEvent> {
        let refuse = |why: String| {
            warn!(agreement = id, %from, "watch letter ignored: {why}");
            None
        };
        let a = node.agreement(id)?;
        if a.role != Role::Verifier {
            return None;
        }
        if from != a.worker {
            return refuse("only the agreement's worker tells its verifiers where to probe".into());
        }
        let ctx = Context {
            chain_id: self.chain_id,
            dispatcher: self.dispatcher,
            agreement: id,
            from,
            to: self.me,
        };
        let spec = match letters::open(|c| self.identity.open(c), &ctx, ciphertext) {
            Ok(Body::Watch(spec)) => spec,
            Ok(_) => return refuse("expected a watch letter".into()),
            Err(e) => return refuse(e.to_string()),
        };
        let Some(work) = committed else {
            return refuse("the agreement's commitment is not on chain".into());
        };
        if letters::probe_hash(&spec.probe) != work.probe {
            return refuse("its probe is not the one the client committed to on chain".into());
        }
        info!(agreement = id, "watching: the worker's endpoint and the client's probe received");
        Some(WorkEvent::Watch { id, spec })
    }

    /// Probes the work of `id` for `epoch` in the background and reports `Probed`.
    pub fn probe(&self, node: &Node, id: AgreementId, epoch: u64) {
        let Some(a) = node.agreement(id) else { return };
        let Some(spec) = a.verification.as_ref().and_then(|v| v.spec.clone()) else { return };
        let worker = a.worker;
        let (chain_id, dispatcher) = (self.chain_id, self.dispatcher);
        let events = self.events.clone();
        tokio::spawn(async move {
            let nonce = alloy::hex::encode(rand_nonce());
            if nonce.is_empty() {
                return;
            }
            let binding = Binding { chain_id, dispatcher, agreement: id, nonce };
            let (probe, report) = tokio::join!(
                probe_endpoint(&spec.work, &spec.probe),
                health::fetch(&spec.transfer, &spec.fingerprint, &binding, worker)
            );
            let (ok, detail) = match (probe, report) {
                (Ok(answer), Ok(report)) if report.running => {
                    (true, format!("{answer}; {}", report.summary()))
                }
                (Ok(answer), Ok(report)) => {
                    (false, format!("{answer}, but the worker reports {}", report.summary()))
                }
                (Ok(answer), Err(e)) => (false, format!("{answer}, but no valid health report: {e}")),
                (Err(e), Ok(report)) => (false, format!("{e} (the worker reports {})", report.summary())),
                (Err(e), Err(h)) => (false, format!("{e}; health: {h}")),
            };
            if ok {
                info!(agreement = id, epoch, "probe passed: {detail}");
            } else {
                warn!(agreement = id, epoch, "probe failed: {detail}");
            }
            let _ = events.send(WorkEvent::Probed { id, epoch, ok, detail }).await;
        });
    }
}

/// The client's probe at `endpoint` (`host:port`, a name or an address).
async fn probe_endpoint(endpoint: &str, probe: &crate::core::work::Probe) -> Result<String, String> {
    let resolve = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::lookup_host(endpoint));
    let addr = match resolve.await {
        Ok(Ok(mut addrs)) => addrs.next().ok_or_else(|| format!("{endpoint}: no address"))?,
        Ok(Err(e)) => return Err(format!("{endpoint}: {e}")),
        Err(_) => return Err(format!("{endpoint}: name not resolved in time")),
    };
    crate::probe::check(addr, probe, PROBE_TIMEOUT).await
}

/// 16 random bytes (empty if the system has no randomness to give).
fn rand_nonce() -> Vec<u8> {
    let mut n = vec![0; 16];
    match rustls::crypto::ring::default_provider().secure_random.fill(&mut n) {
        Ok(()) => n,
        Err(_) => Vec::new(),
    }
}
