//! The work of an agreement, as the core sees it: what the client committed to on chain, and
//! where the deployment of its image stands on this worker.
//!
//! The deployment moves one way:
//!
//! ```text
//!   (no deployment) --client's hello, probe matches the commitment--> AwaitingImage
//!   AwaitingImage --image pushed, checked, loaded--> Loaded --container up, probe answers--> Started
//!   Loaded | Started --agreement over, terminated or closed--> Stopped
//!   any --container would not start--> Failed (the ready window then closes the agreement)
//! ```
use serde::{Deserialize, Serialize};

use super::types::AgreementId;

/// The client's commitment, from the `AgreementCreated` log: the resources it asked for (the
/// container gets exactly these) and the digests it committed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    /// The image's config digest (its image ID, `sha256:<hex>`): it commits to every layer.
    pub image: [u8; 32],
    /// keccak256 of the probe specification the client sends over the private channel.
    pub probe: [u8; 32],
}

/// How the work is checked: by the worker before it declares ready, and by the verifiers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Probe {
    /// An HTTP GET of `path` answers `status`, and (if given) a body with this SHA-256.
    Http {
        path: String,
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body_sha256: Option<String>,
    },
    /// A TCP connection is accepted.
    Tcp,
}

/// Where the image of an agreement stands on this worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    AwaitingImage,
    Loaded,
    Started,
    Failed { reason: String },
    Stopped,
}

/// A deployment agreed over the private channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The client's X25519 key (from its hello): our letters to it are sealed to this.
    pub client_key: [u8; 32],
    /// The port the work listens on inside its container.
    pub container_port: u16,
    /// The port it is published on here (chosen by the shell from the configured range).
    pub host_port: u16,
    pub probe: Probe,
    /// Our offer (endpoint and certificate fingerprint) was seen on chain.
    pub offer_sent: bool,
    pub phase: Phase,
    /// Watch letters to the verifiers not yet seen on chain: (verifier, sealed letter).
    #[serde(default)]
    pub pending_watches: Vec<(super::types::Address, Vec<u8>)>,
}

/// What the shell reports about the work.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkEvent {
    /// The client's hello was opened and checked against the commitment; `offer` is our sealed
    /// answer, ready to be sent in a `sendMessage`.
    Hello {
        id: AgreementId,
        client_key: [u8; 32],
        container_port: u16,
        host_port: u16,
        probe: Probe,
        offer: Vec<u8>,
        /// Our watch letters to the agreement's verifiers (endpoint, probe, health endpoint),
        /// each sealed to that verifier's registered key.
        #[serde(default)]
        watches: Vec<(super::types::Address, Vec<u8>)>,
    },
    /// The image was received, matched the committed digest and is in the engine.
    ImageLoaded { id: AgreementId },
    /// The container runs and answered the probe.
    Started { id: AgreementId },
    /// The container could not be started or never answered the probe.
    Failed { id: AgreementId, reason: String },
    /// As a verifier: the worker's watch letter was opened and its probe matches the client's
    /// commitment.
    Watch { id: AgreementId, spec: WatchSpec },
    /// As a verifier: the probe of `epoch` (the client's probe and the signed health report).
    Probed { id: AgreementId, epoch: u64, ok: bool, detail: String },
}

/// What a verifier checks, from the worker's watch letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchSpec {
    /// `host:port` where the work answers.
    pub work: String,
    pub probe: Probe,
    /// `host:port` of the worker's transfer server, which also serves the signed health report.
    pub transfer: String,
    /// SHA-256 of the transfer server's certificate, hex.
    pub fingerprint: String,
}
