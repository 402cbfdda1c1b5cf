//! The worker's signed health report, which verifiers read with each probe.
//!
//! A verifier asks the worker's transfer server (the endpoint and certificate pinned from the
//! worker's watch letter) for the report of one agreement, with a fresh nonce of its own. The
//! worker answers with the container's state as the engine reports it (running, restarts,
//! uptime, CPU time, memory, tasks), bound to the chain, the dispatcher, the agreement and the
//! nonce, and signed (EIP-191) with its Ethereum key. The verifier checks the binding and the
//! signer against the agreement's worker: a report that is stale (replayed), for another
//! agreement, or not signed by the worker counts as no report. A report says what the worker
//! claims; it is read *with* the client's probe, never instead of it.
use std::time::Duration;

use alloy::primitives::Signature;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::chain::decode;
use crate::core::types::{Address, AgreementId};
use crate::runtime::ContainerState;
use crate::transfer::{Frame, PROTOCOL_VERSION, read_frame, write_frame};

/// How long a verifier waits for the whole exchange.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker says about an agreement's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    pub chain_id: u64,
    pub dispatcher: String,
    pub agreement: AgreementId,
    /// The verifier's nonce: the report was made for this request.
    pub nonce: String,
    /// When the report was made (Unix seconds, the worker's clock).
    pub at: u64,
    /// The engine's word (`running`, `restarting`, `exited`, ...), or `missing`.
    pub state: String,
    pub running: bool,
    pub restarts: i64,
    pub exit_code: i64,
    pub oom_killed: bool,
    /// Seconds since the container (re)started, while it runs.
    pub uptime_secs: Option<u64>,
    pub cpu_usage_ns: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub memory_limit: Option<u64>,
    pub pids: Option<u64>,
}

/// What the report is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub chain_id: u64,
    pub dispatcher: Address,
    pub agreement: AgreementId,
    pub nonce: String,
}

impl HealthReport {
    /// A report of `state` (`None`: the agreement has no container here).
    pub fn new(binding: &Binding, state: Option<&ContainerState>, now: u64) -> Self {
        let uptime_secs = state.filter(|s| s.running).and_then(|s| {
            let started = humantime::parse_rfc3339_weak(s.started_at.as_deref()?).ok()?;
            let started = started.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
            Some(now.saturating_sub(started))
        });
        HealthReport {
            chain_id: binding.chain_id,
            dispatcher: binding.dispatcher.to_string(),
            agreement: binding.agreement,
            nonce: binding.nonce.clone(),
            at: now,
            state: state.map_or_else(|| "missing".to_owned(), |s| s.status.clone()),
            running: state.is_some_and(|s| s.running),
            restarts: state.map_or(0, |s| s.restart_count),
            exit_code: state.map_or(0, |s| s.exit_code),
            oom_killed: state.is_some_and(|s| s.oom_killed),
            uptime_secs,
            cpu_usage_ns: state.and_then(|s| s.cpu_usage_ns),
            memory_bytes: state.and_then(|s| s.memory_bytes),
            memory_limit: state.and_then(|s| s.memory_limit),
            pids: state.and_then(|s| s.pids),
        }
    }

    /// One line for logs and the verifier's status.
    pub fn summary(&self) -> String {
        let mut s = format!("container {}", self.state);
        if let Some(up) = self.uptime_secs {
            s.push_str(&format!(", up {up} s"));
        }
        if self.restarts > 0 {
            s.push_str(&format!(", {} restarts", self.restarts));
        }
        if let Some(m) = self.memory_bytes {
            s.push_str(&format!(", {:.1} MiB", m as f64 / 1048576.0));
        }
        if self.oom_killed {
            s.push_str(", last run killed at its memory limit");
        }
        s
    }
}

/// The worker's answer: the report's JSON, exactly as signed, and the signature (hex).
pub fn sign(report: &HealthReport, signer: &PrivateKeySigner) -> Result<Frame, String> {
    let json = serde_json::to_string(report).map_err(|e| e.to_string())?;
    let signature = signer.sign_message_sync(json.as_bytes()).map_err(|e| e.to_string())?;
    Ok(Frame::Health { report: json, signature: alloy::hex::encode(signature.as_bytes()) })
}

/// Why a health report does not count.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthError {
    #[error("health endpoint {endpoint} unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("health endpoint {endpoint}: {reason}")]
    Broken { endpoint: String, reason: String },
    #[error("the worker refused the health request: {0}")]
    Refused(String),
    #[error("the health report is not signed by the agreement's worker")]
    WrongSigner,
    #[error("the health report was made for another request ({0})")]
    WrongBinding(String),
}

/// Checks a signed report against what was asked and who must have signed it.
pub fn verify(
    report_json: &str,
    signature: &str,
    binding: &Binding,
    worker: Address,
) -> Result<HealthReport, HealthError> {
    let signer = alloy::hex::decode(signature)
        .ok()
        .and_then(|b| Signature::from_raw(&b).ok())
        .and_then(|s| s.recover_address_from_msg(report_json.as_bytes()).ok())
        .map(decode::address);
    if signer != Some(worker) {
        return Err(HealthError::WrongSigner);
    }
    let report: HealthReport = serde_json::from_str(report_json)
        .map_err(|e| HealthError::WrongBinding(format!("unreadable: {e}")))?;
    let expected =
        (binding.chain_id, binding.dispatcher.to_string(), binding.agreement, binding.nonce.as_str());
    let got = (report.chain_id, report.dispatcher.to_lowercase(), report.agreement, report.nonce.as_str());
    if expected != got {
        return Err(HealthError::WrongBinding(format!(
            "agreement {} on chain {}, nonce {}",
            report.agreement, report.chain_id, report.nonce
        )));
    }
    Ok(report)
}

/// Asks the worker at `endpoint` (certificate pinned to `fingerprint`) for its signed report
/// on `binding.agreement`, and checks it was signed by `worker` for this request.
pub async fn fetch(
    endpoint: &str,
    fingerprint: &str,
    binding: &Binding,
    worker: Address,
) -> Result<HealthReport, HealthError> {
    let broken = |reason: String| HealthError::Broken { endpoint: endpoint.to_owned(), reason };
    let exchange = async {
        let tcp = TcpStream::connect(endpoint)
            .await
            .map_err(|e| HealthError::Unreachable { endpoint: endpoint.to_owned(), reason: e.to_string() })?;
        let connector = TlsConnector::from(crate::tls::pinned_client_config(fingerprint));
        let name = ServerName::try_from("zeppelin-worker").expect("a valid name");
        let mut tls = connector.connect(name, tcp).await.map_err(|e| broken(format!("TLS: {e}")))?;
        match read_frame(&mut tls).await.map_err(|e| broken(e.to_string()))? {
            Frame::Challenge { version: PROTOCOL_VERSION, .. } => {}
            Frame::Refused { reason } => return Err(HealthError::Refused(reason)),
            other => return Err(broken(format!("unexpected {other:?}"))),
        }
        let ask = Frame::HealthRequest { agreement: binding.agreement, nonce: binding.nonce.clone() };
        write_frame(&mut tls, &ask).await.map_err(|e| broken(e.to_string()))?;
        match read_frame(&mut tls).await.map_err(|e| broken(e.to_string()))? {
            Frame::Health { report, signature } => verify(&report, &signature, binding, worker),
            Frame::Refused { reason } => Err(HealthError::Refused(reason)),
            other => Err(broken(format!("unexpected {other:?}"))),
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| broken(format!("no report within {} s", FETCH_TIMEOUT.as_secs())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> Binding {
        Binding { chain_id: 31337, dispatcher: Address([0xd1; 20]), agreement: 4, nonce: "n1".into() }
    }

    fn state() -> ContainerState {
        ContainerState {
            container_id: "c".into(),
            image: "sha256:x".into(),
            status: "running".into(),
            running: true,
            exit_code: 0,
            oom_killed: false,
            restart_count: 1,
            started_at: Some("2026-11-25T10:00:00.5Z".into()),
            finished_at: None,
            host_port: 7100,
            cpu_usage_ns: Some(5),
            memory_bytes: Some(3 << 20),
            memory_limit: Some(64 << 20),
            pids: Some(2),
        }
    }

    #[test]
    fn a_report_signed_by_the_worker_for_this_request_verifies() {
        let worker = PrivateKeySigner::random();
        let now = 1_795_601_200; // 2026-11-25T10:06:40Z
        let report = HealthReport::new(&binding(), Some(&state()), now);
        assert_eq!(report.uptime_secs, Some(400));
        let Frame::Health { report: json, signature } = sign(&report, &worker).unwrap() else { panic!() };
        let got = verify(&json, &signature, &binding(), decode::address(worker.address())).unwrap();
        assert_eq!(got, report);
        assert!(got.summary().starts_with("container running, up 400 s, 1 restarts"), "{}", got.summary());
    }

    #[test]
    fn a_stranger_s_signature_a_replayed_nonce_or_an_edited_report_do_not_verify() {
        let worker = PrivateKeySigner::random();
        let eve = PrivateKeySigner::random();
        let me = decode::address(worker.address());
        let report = HealthReport::new(&binding(), None, 1);
        assert_eq!((report.state.as_str(), report.running), ("missing", false));
        let Frame::Health { report: json, signature } = sign(&report, &eve).unwrap() else { panic!() };
        assert_eq!(verify(&json, &signature, &binding(), me), Err(HealthError::WrongSigner));

        let Frame::Health { report: json, signature } = sign(&report, &worker).unwrap() else { panic!() };
        let other_nonce = Binding { nonce: "n2".into(), ..binding() };
        assert!(matches!(verify(&json, &signature, &other_nonce, me), Err(HealthError::WrongBinding(_))));
        let other_agreement = Binding { agreement: 5, ..binding() };
        assert!(matches!(verify(&json, &signature, &other_agreement, me), Err(HealthError::WrongBinding(_))));
        // Claiming "running" after the fact breaks the signature.
        let edited = json.replace("\"running\":false", "\"running\":true");
        assert_ne!(edited, json);
        assert_eq!(verify(&edited, &signature, &binding(), me), Err(HealthError::WrongSigner));
        assert_eq!(verify(&json, "zz", &binding(), me), Err(HealthError::WrongSigner));
    }
}
