//! Image transfer: the client pushes its image to the worker over TLS.
//!
//! The worker's certificate is self-signed and pinned by the fingerprint it sent over the
//! private channel ([`crate::letters::Offer`]). Inside the TLS stream:
//!
//! ```text
//!   worker -> client   Challenge { nonce }                         (fresh 32 random bytes)
//!   client -> worker   Auth { agreement, signature }               (EIP-191 over auth_message)
//!   client -> worker   Offer { image, config_size, layers[] }      (layers = config's diff_ids)
//!   worker -> client   Need { from_layer }                         (the layers it lacks)
//!   client -> worker   raw: config bytes, then layers[from_layer..] bytes, back to back
//!   worker -> client   Done { loaded } | Refused { reason }        (Refused may come at any step)
//! ```
//!
//! Control frames are JSON, prefixed by their length (u32, big endian, at most
//! [`MAX_FRAME`]). The worker writes what it receives straight into the engine as a
//! `docker save` archive (config, the missing `layer.tar`s, then `manifest.json`), hashing as
//! it goes: the config must hash to the image digest the client committed to on chain, and every
//! layer to its diff id. A mismatch, a short or overlong stream, a stall, or an archive over the
//! agreement's disk size ends the load with an error before `manifest.json` is written, so the
//! engine never loads a partial or wrong image.
//!
//! Layers are reused by *prefix*: the engine keeps a layer per chain of parents, so the worker
//! says how many of the image's first layers it already holds as a chain (from any image), and
//! only the rest are sent.
pub mod archive;
pub mod push;
pub mod server;

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::core::types::{Address, AgreementId};

/// The longest control frame either side accepts.
pub const MAX_FRAME: usize = 64 * 1024;
/// The most layers an image may have (Docker's own limit is 127 for overlay2).
pub const MAX_LAYERS: usize = 256;
/// The largest image config accepted.
pub const MAX_CONFIG: u64 = 1024 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// `sha256:<hex>` of the uncompressed layer tar.
    pub diff_id: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Frame {
    Challenge {
        version: u8,
        nonce: String,
    },
    Auth {
        agreement: AgreementId,
        signature: String,
    },
    Offer {
        image: String,
        config_size: u64,
        layers: Vec<LayerInfo>,
    },
    Need {
        from_layer: usize,
    },
    Done {
        loaded: bool,
    },
    Refused {
        reason: String,
    },
    /// A verifier asks for the signed health report of a running agreement (instead of `Auth`).
    HealthRequest {
        agreement: AgreementId,
        nonce: String,
    },
    /// The report's JSON exactly as signed, and the worker's EIP-191 signature of it (hex).
    Health {
        report: String,
        signature: String,
    },
}

pub const PROTOCOL_VERSION: u8 = 1;

/// The text a client signs (EIP-191) to prove it is the agreement's client, bound to this
/// worker's fresh challenge, the chain, the dispatcher and the agreement.
pub fn auth_message(chain_id: u64, dispatcher: Address, agreement: AgreementId, nonce: &str) -> String {
    format!(
        "zeppelin image transfer\nchain: {chain_id}\ndispatcher: {dispatcher}\nagreement: {agreement}\nnonce: {nonce}"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> Result<(), FrameError> {
    let body = serde_json::to_vec(frame).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLong(body.len()));
    }
    w.write_all(&(body.len() as u32).to_be_bytes()).await?;
    w.write_all(&body).await?;
    w.flush().await?;
    Ok(())
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLong(len));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Where verifiers' health requests are answered: the daemon's running work. The transfer
/// server only asks it for agreements its [`server::Gate`] lists as running.
pub trait HealthSource: Send + Sync + 'static {
    /// The signed [`Frame::Health`] for `agreement`, made for `nonce`.
    fn health(
        &self,
        agreement: AgreementId,
        nonce: String,
    ) -> impl Future<Output = Result<Frame, String>> + Send;
}

/// A stream of archive bytes handed to the engine.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// Where received images go: the container engine. (The Docker runtime implements it; the
/// transfer code knows nothing of Docker.)
pub trait ImageSink: Send + Sync + 'static {
    /// Whether the image (by ID, `sha256:<hex>`) is already loaded.
    fn has_image(&self, image: &str) -> impl Future<Output = Result<bool, String>> + Send;
    /// How many of these layers, from the first, the engine already holds as a chain.
    fn present_prefix(&self, diff_ids: &[String]) -> impl Future<Output = Result<usize, String>> + Send;
    /// Loads a `docker save` archive; an error item in the stream must fail the load and leave
    /// nothing behind.
    fn load(&self, archive: ByteStream) -> impl Future<Output = Result<(), String>> + Send;
}

/// `sha256:<hex>` of a 32-byte digest.
pub fn digest_string(d: &[u8; 32]) -> String {
    format!("sha256:{}", alloy::hex::encode(d))
}

/// The 32 bytes of a `sha256:<hex>` digest.
pub fn parse_digest(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    alloy::hex::decode(hex).ok()?.try_into().ok()
}
