//! The client side of a transfer: push an indexed image archive to a worker.
use std::time::{Duration, Instant};

use alloy::signers::Signer;
use alloy::signers::local::PrivateKeySigner;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::archive::{ImageArchive, Span};
use super::{Frame, FrameError, PROTOCOL_VERSION};
use crate::core::types::{Address, AgreementId};

/// Who pushes, for which agreement.
pub struct PushAuth<'a> {
    pub chain_id: u64,
    pub dispatcher: Address,
    pub agreement: AgreementId,
    pub signer: &'a PrivateKeySigner,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushReport {
    /// Layers the worker already had (from the first).
    pub layers_reused: usize,
    pub layers_sent: usize,
    pub bytes_sent: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("worker unreachable at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("TLS with the worker at {endpoint} failed: {reason}")]
    Tls { endpoint: String, reason: String },
    #[error("the worker refused the push: {0}")]
    Refused(String),
    #[error("transfer broke off: {0}")]
    Broken(String),
    #[error("reading the image archive {path}: {source}")]
    Archive { path: String, source: std::io::Error },
}

impl From<FrameError> for PushError {
    fn from(e: FrameError) -> Self {
        PushError::Broken(e.to_string())
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CHUNK: usize = 256 * 1024;

/// Sends a frame; if the worker has already hung up, its refusal (if it sent one) is the error.
async fn send<T>(tls: &mut T, frame: &Frame) -> Result<(), PushError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match super::write_frame(tls, frame).await {
        Ok(()) => Ok(()),
        Err(e) => match super::read_frame(tls).await {
            Ok(Frame::Refused { reason }) => Err(PushError::Refused(reason)),
            _ => Err(e.into()),
        },
    }
}

/// Pushes `archive` to the worker at `endpoint` whose certificate has `fingerprint`.
/// `progress(sent, total)` is called as bytes go out (total: what this push sends).
pub async fn push(
    endpoint: &str,
    fingerprint: &str,
    auth: PushAuth<'_>,
    archive: &ImageArchive,
    mut progress: impl FnMut(u64, u64),
) -> Result<PushReport, PushError> {
    let started = Instant::now();
    let unreachable = |reason: String| PushError::Unreachable { endpoint: endpoint.to_owned(), reason };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
        .await
        .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let connector = TlsConnector::from(crate::tls::pinned_client_config(fingerprint));
    let name = ServerName::try_from("zeppelin-worker").expect("a valid name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| PushError::Tls { endpoint: endpoint.to_owned(), reason: e.to_string() })?;

    let nonce = match super::read_frame(&mut tls).await? {
        Frame::Challenge { version: PROTOCOL_VERSION, nonce } => nonce,
        Frame::Challenge { version, .. } => {
            return Err(PushError::Broken(format!("the worker speaks transfer version {version}")));
        }
        Frame::Refused { reason } => return Err(PushError::Refused(reason)),
        other => return Err(PushError::Broken(format!("expected a challenge, got {other:?}"))),
    };
    let message = super::auth_message(auth.chain_id, auth.dispatcher, auth.agreement, &nonce);
    let signature = auth
        .signer
        .sign_message(message.as_bytes())
        .await
        .map_err(|e| PushError::Broken(format!("signing the challenge: {e}")))?;
    send(
        &mut tls,
        &Frame::Auth { agreement: auth.agreement, signature: alloy::hex::encode(signature.as_bytes()) },
    )
    .await?;
    send(
        &mut tls,
        &Frame::Offer {
            image: archive.image.clone(),
            config_size: archive.config.len,
            layers: archive.layers.iter().map(|(l, _)| l.clone()).collect(),
        },
    )
    .await?;
    let from_layer = match super::read_frame(&mut tls).await? {
        Frame::Need { from_layer } if from_layer <= archive.layers.len() => from_layer,
        Frame::Refused { reason } => return Err(PushError::Refused(reason)),
        other => return Err(PushError::Broken(format!("expected the layers needed, got {other:?}"))),
    };
    let spans: Vec<Span> =
        std::iter::once(archive.config).chain(archive.layers[from_layer..].iter().map(|(_, s)| *s)).collect();
    let total: u64 = spans.iter().map(|s| s.len).sum();
    let path = archive.path.display().to_string();
    let file_err = |source| PushError::Archive { path: path.clone(), source };
    let mut file = tokio::fs::File::open(&archive.path).await.map_err(file_err)?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    let mut write_failed = None;
    'spans: for span in &spans {
        file.seek(std::io::SeekFrom::Start(span.offset)).await.map_err(file_err)?;
        let mut left = span.len;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            file.read_exact(&mut buf[..n]).await.map_err(file_err)?;
            if let Err(e) = tls.write_all(&buf[..n]).await {
                write_failed = Some(e);
                break 'spans;
            }
            left -= n as u64;
            sent += n as u64;
            progress(sent, total);
        }
    }
    if write_failed.is_none() {
        let _ = tls.flush().await;
    }
    // The worker answers once the engine has loaded the image (or says why not, possibly
    // before everything was sent).
    match super::read_frame(&mut tls).await {
        Ok(Frame::Done { loaded: true }) => Ok(PushReport {
            layers_reused: from_layer,
            layers_sent: archive.layers.len() - from_layer,
            bytes_sent: sent,
            elapsed: started.elapsed(),
        }),
        Ok(Frame::Refused { reason }) => Err(PushError::Refused(reason)),
        Ok(other) => Err(PushError::Broken(format!("unexpected answer {other:?}"))),
        Err(e) => Err(PushError::Broken(match write_failed {
            Some(w) => format!("{w} (and no reason given: {e})"),
            None => e.to_string(),
        })),
    }
}
