//! Letters of the private channel: what client and worker tell each other through the
//! dispatcher's `sendMessage`, sealed to the recipient's X25519 key so that only it can read them.
//!
//! - The client's **hello** to the worker: its own channel key (clients are not registered, so
//!   this is how the worker learns where to seal its answer), the port its work listens on, and
//!   the probe, whose hash it committed to on chain.
//! - The worker's **offer** to the client: where to push the image (transfer endpoint), the
//!   transfer certificate's fingerprint to pin, and where the work will be reachable.
//! - The worker's **watch** letter to each verifier: where the work answers, the client's probe
//!   (the verifier checks it against the client's on-chain commitment, so the worker cannot
//!   weaken it), and where to ask for the signed health report (transfer endpoint and
//!   certificate fingerprint).
//!
//! Every letter carries its context (chain, dispatcher, agreement, sender, recipient) inside the
//! sealed box, and the reader checks it against the log that carried it: a ciphertext copied
//! into another agreement, or relayed by another party, is refused. No endpoint ever appears in
//! plaintext on chain.
use alloy::primitives::keccak256;
use serde::{Deserialize, Serialize};

use crate::core::types::{Address, AgreementId};
use crate::core::work::Probe;
use crate::identity::{self as channel, ChannelError};

/// The log a letter travels in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context {
    pub chain_id: u64,
    pub dispatcher: Address,
    pub agreement: AgreementId,
    pub from: Address,
    pub to: Address,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Body {
    Hello(Hello),
    Offer(Offer),
    Watch(crate::core::work::WatchSpec),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's X25519 public key, hex.
    pub client_key: String,
    /// The port the work listens on inside its container.
    pub container_port: u16,
    pub probe: Probe,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// `host:port` of the worker's transfer server.
    pub transfer: String,
    /// SHA-256 of the transfer server's certificate, hex.
    pub fingerprint: String,
    /// `host:port` where the work will answer.
    pub work: String,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u8,
    chain: u64,
    dispatcher: String,
    agreement: AgreementId,
    from: String,
    to: String,
    body: Body,
}

#[derive(Debug, thiserror::Error)]
pub enum LetterError {
    #[error("sealing the letter: {0}")]
    Seal(#[from] ChannelError),
    #[error("the letter cannot be opened with our key (not meant for us, or damaged)")]
    Open,
    #[error("the letter is not one we understand: {0}")]
    Format(String),
    #[error("the letter was written for {written}, but arrived as {arrived}: refused (replayed or relayed)")]
    WrongContext { written: String, arrived: String },
    #[error("the hello's probe does not match the hash the client committed to on chain")]
    ProbeMismatch,
    #[error("the hello's client key is not 32 bytes of hex")]
    BadKey,
}

const VERSION: u8 = 1;

fn describe(c: &Context) -> String {
    format!("agreement {} on chain {} ({} -> {})", c.agreement, c.chain_id, c.from, c.to)
}

/// Seals `body` for `recipient_key`, bound to `ctx`.
pub fn seal(ctx: &Context, body: Body, recipient_key: &[u8; 32]) -> Result<Vec<u8>, LetterError> {
    let envelope = Envelope {
        v: VERSION,
        chain: ctx.chain_id,
        dispatcher: ctx.dispatcher.to_string(),
        agreement: ctx.agreement,
        from: ctx.from.to_string(),
        to: ctx.to.to_string(),
        body,
    };
    let plain = serde_json::to_vec(&envelope).map_err(|e| LetterError::Format(e.to_string()))?;
    Ok(channel::seal(recipient_key, &plain)?)
}

/// Opens a letter with `open` (the recipient's key) and checks it was written for `ctx`.
pub fn open(
    open: impl FnOnce(&[u8]) -> Result<Vec<u8>, ChannelError>,
    ctx: &Context,
    ciphertext: &[u8],
) -> Result<Body, LetterError> {
    let plain = open(ciphertext).map_err(|_| LetterError::Open)?;
    let e: Envelope = serde_json::from_slice(&plain).map_err(|e| LetterError::Format(e.to_string()))?;
    if e.v != VERSION {
        return Err(LetterError::Format(format!("version {} (we speak {VERSION})", e.v)));
    }
    let arrived =
        (ctx.chain_id, ctx.dispatcher.to_string(), ctx.agreement, ctx.from.to_string(), ctx.to.to_string());
    let written =
        (e.chain, e.dispatcher.to_lowercase(), e.agreement, e.from.to_lowercase(), e.to.to_lowercase());
    if arrived != written {
        return Err(LetterError::WrongContext {
            written: format!(
                "agreement {} on chain {} ({} -> {})",
                written.2, written.0, written.3, written.4
            ),
            arrived: describe(ctx),
        });
    }
    Ok(e.body)
}

/// What a client commits to on chain for its probe: keccak256 of the probe's JSON as we write it.
pub fn probe_hash(probe: &Probe) -> [u8; 32] {
    keccak256(serde_json::to_vec(probe).expect("a probe always serializes")).0
}

impl Hello {
    /// The client's key, if well formed.
    pub fn key(&self) -> Result<[u8; 32], LetterError> {
        let bytes = alloy::hex::decode(&self.client_key).map_err(|_| LetterError::BadKey)?;
        bytes.try_into().map_err(|_| LetterError::BadKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, PrivateKeySigner};

    fn ctx() -> Context {
        Context {
            chain_id: 31337,
            dispatcher: Address([0xd1; 20]),
            agreement: 7,
            from: Address([0xc1; 20]),
            to: Address([0x77; 20]),
        }
    }

    fn hello() -> Body {
        Body::Hello(Hello { client_key: "ab".repeat(32), container_port: 8080, probe: Probe::Tcp })
    }

    #[test]
    fn a_letter_opens_for_its_recipient_in_its_context() {
        let worker = Identity::from_signer(PrivateKeySigner::random());
        let sealed = seal(&ctx(), hello(), &worker.encryption_public_key()).unwrap();
        assert_eq!(open(|c| worker.open(c), &ctx(), &sealed).unwrap(), hello());
    }

    #[test]
    fn a_letter_copied_into_another_agreement_or_relayed_by_another_sender_is_refused() {
        let worker = Identity::from_signer(PrivateKeySigner::random());
        let sealed = seal(&ctx(), hello(), &worker.encryption_public_key()).unwrap();
        let other_agreement = Context { agreement: 8, ..ctx() };
        assert!(matches!(
            open(|c| worker.open(c), &other_agreement, &sealed),
            Err(LetterError::WrongContext { .. })
        ));
        let relayed = Context { from: Address([0x99; 20]), ..ctx() };
        let err = open(|c| worker.open(c), &relayed, &sealed).unwrap_err();
        assert!(err.to_string().contains("replayed or relayed"), "{err}");
    }

    #[test]
    fn a_letter_for_someone_else_cannot_be_opened() {
        let worker = Identity::from_signer(PrivateKeySigner::random());
        let eve = Identity::from_signer(PrivateKeySigner::random());
        let sealed = seal(&ctx(), hello(), &worker.encryption_public_key()).unwrap();
        assert!(matches!(open(|c| eve.open(c), &ctx(), &sealed), Err(LetterError::Open)));
        assert!(matches!(open(|c| worker.open(c), &ctx(), b"garbage"), Err(LetterError::Open)));
    }

    #[test]
    fn the_probe_hash_changes_with_every_field() {
        let a = Probe::Http { path: "/".into(), status: 200, body_sha256: None };
        let b = Probe::Http { path: "/".into(), status: 204, body_sha256: None };
        assert_ne!(probe_hash(&a), probe_hash(&b));
        assert_ne!(probe_hash(&a), probe_hash(&Probe::Tcp));
        assert_eq!(probe_hash(&a), probe_hash(&a.clone()));
    }
}
