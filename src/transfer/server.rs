//! The worker's transfer server: accepts pushes for the agreements waiting for an image.
//!
//! Which agreements may push, by whom and what, comes from the daemon's loop as a [`Gate`]
//! (published after every change); a loaded image is reported back as a [`Delivery`].
//! Everything a peer sends is bounded: the number of connections at once, the time to
//! authenticate, the silence between reads, the frame sizes and the archive size.
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::Signature;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::archive::{self, TRAILER};
use super::{
    ByteStream, Frame, HealthSource, ImageSink, LayerInfo, MAX_CONFIG, MAX_LAYERS, PROTOCOL_VERSION,
};
use crate::chain::decode;
use crate::core::types::{Address, AgreementId};

/// Who may push what, for each agreement waiting for its image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    pub chain_id: u64,
    pub dispatcher: Address,
    pub open: BTreeMap<AgreementId, Admission>,
    /// Agreements whose work runs here: verifiers may ask for their health reports.
    pub running: std::collections::BTreeSet<AgreementId>,
}

/// For a server that runs no work (tests of the transfer alone): every health request is
/// refused.
pub struct NoHealth;

impl HealthSource for NoHealth {
    async fn health(&self, agreement: AgreementId, _nonce: String) -> Result<Frame, String> {
        Err(format!("no work runs here for agreement {agreement}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    pub client: Address,
    /// The image digest committed on chain.
    pub image: [u8; 32],
    /// The agreement's disk size: the largest archive accepted.
    pub max_bytes: u64,
}

/// An image delivered and loaded for an agreement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub agreement: AgreementId,
    pub image: String,
    pub layers_received: usize,
    pub layers_reused: usize,
    pub bytes_received: u64,
    pub elapsed: Duration,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Transfers at once (authenticated pushes); more are refused with "busy".
    pub max_concurrent: usize,
    /// Connections at once that have not authenticated yet (or ask for a health report); more
    /// are closed at once, so peers that connect and say nothing cannot hold the server.
    pub max_handshakes: usize,
    /// Time from the TCP connection to an authenticated offer.
    pub handshake: Duration,
    /// Longest silence while receiving.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent: 2,
            max_handshakes: 32,
            handshake: Duration::from_secs(15),
            idle: Duration::from_secs(30),
        }
    }
}

/// Serves until `shutdown`. Each connection runs in its own task; one that misbehaves is
/// refused and logged, and nothing else is affected.
#[allow(clippy::too_many_arguments)]
pub async fn serve<S: ImageSink, H: HealthSource>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gate: watch::Receiver<Gate>,
    sink: Arc<S>,
    health: Arc<H>,
    delivered: mpsc::Sender<Delivery>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let permits = Arc::new(Semaphore::new(limits.max_concurrent));
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let busy = Arc::new(Mutex::new(HashSet::new()));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("transfer: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let conn = Conn {
            acceptor: acceptor.clone(),
            gate: gate.clone(),
            sink: sink.clone(),
            health: health.clone(),
            delivered: delivered.clone(),
            limits,
            busy: busy.clone(),
            peer,
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            tracing::info!(
                "transfer from {peer}: {} connections already waiting; closed",
                limits.max_handshakes
            );
            continue;
        };
        let permits = permits.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = conn.run(tcp, handshake, permits) => {}
            }
        });
    }
}

struct Conn<S, H> {
    acceptor: TlsAcceptor,
    gate: watch::Receiver<Gate>,
    sink: Arc<S>,
    health: Arc<H>,
    delivered: mpsc::Sender<Delivery>,
    limits: Limits,
    busy: Arc<Mutex<HashSet<AgreementId>>>,
    peer: SocketAddr,
}

/// Why a push was refused: said to the client, and logged.
#[derive(Debug)]
struct Refusal(String);

impl<E: std::fmt::Display> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal(e.to_string())
    }
}

macro_rules! refuse {
    ($($arg:tt)*) => { return Err(Refusal(format!($($arg)*))) };
}

impl<S: ImageSink, H: HealthSource> Conn<S, H> {
    async fn run(
        self,
        tcp: tokio::net::TcpStream,
        handshake: tokio::sync::OwnedSemaphorePermit,
        permits: Arc<Semaphore>,
    ) {
        let _ = tcp.set_nodelay(true);
        let tls = match tokio::time::timeout(self.limits.handshake, self.acceptor.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tracing::info!("transfer from {}: TLS handshake failed: {e}", self.peer),
            Err(_) => return tracing::info!("transfer from {}: TLS handshake timed out", self.peer),
        };
        let mut stream = tls;
        // The challenge first; the peer's first frame says what it wants: a push (`Auth`), or
        // a verifier's health request (answered whatever the pushes in progress).
        let nonce = match fresh_nonce() {
            Ok(n) => n,
            Err(Refusal(reason)) => return tracing::warn!("transfer from {}: {reason}", self.peer),
        };
        let challenge = Frame::Challenge { version: PROTOCOL_VERSION, nonce: nonce.clone() };
        if super::write_frame(&mut stream, &challenge).await.is_err() {
            return;
        }
        let first = match timed(self.limits.handshake, super::read_frame(&mut stream)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(e)) => return tracing::info!("transfer from {}: {e}", self.peer),
            Err(Refusal(reason)) => return tracing::info!("transfer from {}: {reason}", self.peer),
        };
        if let Frame::HealthRequest { agreement, nonce } = first {
            let running = self.gate.borrow().running.contains(&agreement);
            let answer = if !running {
                Frame::Refused { reason: format!("no work runs here for agreement {agreement}") }
            } else {
                match self.health.health(agreement, nonce).await {
                    Ok(frame) => frame,
                    Err(reason) => Frame::Refused { reason },
                }
            };
            let _ = super::write_frame(&mut stream, &answer).await;
            let _ = stream.shutdown().await;
            return;
        }
        let mut agreement = None;
        let result = self.push(&mut stream, nonce, first, (handshake, permits), &mut agreement).await;
        if let Some(id) = agreement {
            self.busy.lock().expect("busy set").remove(&id);
        }
        let frame = match result {
            Ok(delivery) => {
                tracing::info!(
                    "transfer from {}: agreement {}: image {} loaded ({} layers received, {} reused, {} bytes, {:.1} s)",
                    self.peer,
                    delivery.agreement,
                    delivery.image,
                    delivery.layers_received,
                    delivery.layers_reused,
                    delivery.bytes_received,
                    delivery.elapsed.as_secs_f64()
                );
                let _ = self.delivered.send(delivery).await;
                Frame::Done { loaded: true }
            }
            Err(Refusal(reason)) => {
                tracing::warn!("transfer from {}: refused: {reason}", self.peer);
                Frame::Refused { reason }
            }
        };
        let _ = super::write_frame(&mut stream, &frame).await;
        let _ = stream.shutdown().await;
    }

    async fn push<T: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut T,
        nonce: String,
        first: Frame,
        (handshake, permits): (tokio::sync::OwnedSemaphorePermit, Arc<Semaphore>),
        claimed: &mut Option<AgreementId>,
    ) -> Result<Delivery, Refusal> {
        let started = Instant::now();
        let deadline = self.limits.handshake;
        let Frame::Auth { agreement, signature } = first else {
            refuse!("expected the client's authentication first");
        };
        let gate = self.gate.borrow().clone();
        let Some(admission) = gate.open.get(&agreement).copied() else {
            refuse!("agreement {agreement} is not waiting for an image on this worker");
        };
        let message = super::auth_message(gate.chain_id, gate.dispatcher, agreement, &nonce);
        let signer = alloy::hex::decode(&signature)
            .ok()
            .and_then(|b| Signature::from_raw(&b).ok())
            .and_then(|s| s.recover_address_from_msg(message.as_bytes()).ok())
            .map(decode::address);
        if signer != Some(admission.client) {
            refuse!(
                "authentication failed: the signature is not the agreement's client's for this challenge"
            );
        }
        // Authenticated: the push now holds one of the transfer permits until it ends, and
        // gives its handshake slot back.
        let Ok(_permit) = permits.try_acquire_owned() else {
            refuse!("busy: {} transfers in progress, try again shortly", self.limits.max_concurrent);
        };
        drop(handshake);
        if !self.busy.lock().expect("busy set").insert(agreement) {
            refuse!("a transfer for agreement {agreement} is already in progress");
        }
        *claimed = Some(agreement);
        let Frame::Offer { image, config_size, layers } =
            timed(deadline, super::read_frame(stream)).await??
        else {
            refuse!("expected the image offer after authentication");
        };
        let committed = super::digest_string(&admission.image);
        if image != committed {
            refuse!("digest rejected: the image offered is {image}, the agreement commits to {committed}");
        }
        if layers.len() > MAX_LAYERS {
            refuse!("the image has {} layers (at most {MAX_LAYERS})", layers.len());
        }
        if config_size > MAX_CONFIG {
            refuse!("the image config is {config_size} bytes (at most {MAX_CONFIG})");
        }
        let total = layers.iter().fold(config_size, |sum, l| sum.saturating_add(l.size));
        if total > admission.max_bytes {
            refuse!(
                "the image is {total} bytes, over the agreement's disk size of {} bytes",
                admission.max_bytes
            );
        }
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let have_image = self.sink.has_image(&image).await?;
        let from_layer = if have_image { layers.len() } else { self.sink.present_prefix(&diff_ids).await? };
        super::write_frame(stream, &Frame::Need { from_layer }).await?;

        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let load = (!have_image).then(|| {
            let sink = self.sink.clone();
            tokio::spawn(async move { sink.load(receiver_stream(rx)).await })
        });
        let received = self.receive(stream, &tx, &image, config_size, &layers[from_layer..], &diff_ids).await;
        if let Err(Refusal(reason)) = &received {
            // The engine must see the archive fail, not end: it then loads nothing.
            let _ = tx.send(Err(std::io::Error::other(reason.clone()))).await;
        }
        drop(tx);
        let loaded = match load {
            Some(task) => task.await.map_err(|e| Refusal(format!("the load task failed: {e}")))?,
            None => Ok(()),
        };
        let bytes_received = received?;
        loaded.map_err(|e| Refusal(format!("the engine refused the image: {e}")))?;
        Ok(Delivery {
            agreement,
            image,
            layers_received: layers.len() - from_layer,
            layers_reused: from_layer,
            bytes_received,
            elapsed: started.elapsed(),
        })
    }

    /// Receives the config and the missing layers into the archive stream, checking every digest.
    async fn receive<T: AsyncRead + Unpin>(
        &self,
        stream: &mut T,
        tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
        image: &str,
        config_size: u64,
        missing: &[LayerInfo],
        diff_ids: &[String],
    ) -> Result<u64, Refusal> {
        let idle = self.limits.idle;
        let forward = |chunk: Bytes| async move {
            // A load that ended early (the engine gave up) drops the receiver: keep reading
            // the client's bytes anyway so the refusal reaches it.
            let _ = tx.send(Ok(chunk)).await;
        };
        // The config: kept whole (it is small) to check its layers against the offer.
        forward(Bytes::copy_from_slice(&archive::header(&archive::config_path(image), config_size))).await;
        let mut config = Vec::with_capacity(config_size as usize);
        copy_exact(
            stream,
            config_size,
            idle,
            |chunk| {
                config.extend_from_slice(&chunk);
                Some(chunk)
            },
            &forward,
        )
        .await?;
        if archive::sha256_string(&config) != image {
            refuse!("digest rejected: the image config does not hash to the committed digest {image}");
        }
        let declared: Vec<String> = serde_json::from_slice::<serde_json::Value>(&config)
            .ok()
            .and_then(|c| serde_json::from_value(c["rootfs"]["diff_ids"].clone()).ok())
            .unwrap_or_default();
        if declared != diff_ids {
            refuse!("the offered layers are not the ones the image config lists");
        }
        forward(Bytes::from_static(&[0; 512][..archive::padding(config_size)])).await;
        let mut total = config_size;
        for layer in missing {
            forward(Bytes::copy_from_slice(&archive::header(
                &archive::layer_path(&layer.diff_id),
                layer.size,
            )))
            .await;
            let mut hasher = Sha256::new();
            copy_exact(
                stream,
                layer.size,
                idle,
                |chunk| {
                    hasher.update(&chunk);
                    Some(chunk)
                },
                &forward,
            )
            .await?;
            let got = format!("sha256:{}", alloy::hex::encode(hasher.finalize()));
            if got != layer.diff_id {
                refuse!("layer {} arrived with digest {got}: corrupted or not the image's", layer.diff_id);
            }
            forward(Bytes::from_static(&[0; 512][..archive::padding(layer.size)])).await;
            total += layer.size;
        }
        let manifest = archive::manifest(image, diff_ids);
        forward(Bytes::copy_from_slice(&archive::header("manifest.json", manifest.len() as u64))).await;
        let pad = archive::padding(manifest.len() as u64);
        forward(Bytes::from(manifest)).await;
        forward(Bytes::from_static(&[0; 512][..pad])).await;
        forward(Bytes::from_static(&TRAILER)).await;
        Ok(total)
    }
}

/// Reads exactly `len` bytes in chunks, passing each through `inspect` and then `forward`.
async fn copy_exact<T, F, Fut>(
    stream: &mut T,
    len: u64,
    idle: Duration,
    mut inspect: impl FnMut(Bytes) -> Option<Bytes>,
    forward: &F,
) -> Result<(), Refusal>
where
    T: AsyncRead + Unpin,
    F: Fn(Bytes) -> Fut,
    Fut: Future<Output = ()>,
{
    const CHUNK: usize = 256 * 1024;
    let mut left = len;
    let mut buf = BytesMut::with_capacity(CHUNK);
    while left > 0 {
        let want = left.min(CHUNK as u64) as usize;
        buf.reserve(want);
        let n = timed(idle, (&mut *stream).take(want as u64).read_buf(&mut buf)).await??;
        if n == 0 {
            refuse!("the stream ended {left} bytes early (truncated)");
        }
        left -= n as u64;
        if (buf.len() >= CHUNK / 2 || left == 0)
            && let Some(chunk) = inspect(buf.split().freeze())
        {
            forward(chunk).await;
        }
    }
    Ok(())
}

async fn timed<T>(limit: Duration, f: impl Future<Output = T>) -> Result<T, Refusal> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Refusal(format!("the client was silent for {} s", limit.as_secs())))
}

fn fresh_nonce() -> Result<String, Refusal> {
    let mut nonce = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut nonce)
        .map_err(|_| Refusal("no randomness for the challenge".into()))?;
    Ok(alloy::hex::encode(nonce))
}

fn receiver_stream(rx: mpsc::Receiver<Result<Bytes, std::io::Error>>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}
