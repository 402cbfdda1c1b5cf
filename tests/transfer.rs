//! The image transfer against a real Docker engine: real TLS with a pinned certificate, the
//! worker's server loading into the engine, the client pushing an exported archive. Every
//! refusal the protocol promises, and that nothing partial stays behind.
use std::sync::Arc;
use std::time::Duration;

use alloy::signers::Signer;
use alloy::signers::local::PrivateKeySigner;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use zeppelin::chain::decode;
use zeppelin::core::types::Address;
use zeppelin::runtime::images::{Content, ImageRecipe, build_image};
use zeppelin::runtime::{DockerRuntime, Runtime};
use zeppelin::tls::TransferCert;
use zeppelin::transfer::archive::ImageArchive;
use zeppelin::transfer::push::{PushAuth, PushError, push};
use zeppelin::transfer::server::{Admission, Delivery, Gate, Limits, serve};
use zeppelin::transfer::{Frame, auth_message, parse_digest, read_frame, write_frame};

const DISPATCHER: Address = Address([0xd1; 20]);
const CHAIN: u64 = 31337;

struct Worker {
    addr: String,
    fingerprint: String,
    gate: watch::Sender<Gate>,
    delivered: mpsc::Receiver<Delivery>,
    cancel: CancellationToken,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn worker(runtime: &DockerRuntime, limits: Limits) -> Worker {
    zeppelin::tls::install_crypto_provider();
    let cert = TransferCert::generate().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (gate, gate_rx) = watch::channel(Gate {
        chain_id: CHAIN,
        dispatcher: DISPATCHER,
        open: Default::default(),
        running: Default::default(),
    });
    let (tx, delivered) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        cert.server_config().unwrap(),
        gate_rx,
        Arc::new(runtime.clone()),
        Arc::new(zeppelin::transfer::server::NoHealth),
        tx,
        limits,
        cancel.clone(),
    ));
    Worker { addr, fingerprint: cert.fingerprint(), gate, delivered, cancel }
}

impl Worker {
    fn admit(&self, id: u64, client: &PrivateKeySigner, image: &str, max_bytes: u64) {
        self.gate.send_modify(|g| {
            g.open.insert(
                id,
                Admission {
                    client: decode::address(client.address()),
                    image: parse_digest(image).unwrap(),
                    max_bytes,
                },
            );
        });
    }
}

fn auth(id: u64, signer: &PrivateKeySigner) -> PushAuth<'_> {
    PushAuth { chain_id: CHAIN, dispatcher: DISPATCHER, agreement: id, signer }
}

/// A seed no earlier run used, so that the filler layer is new to the engine.
fn fresh_seed() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// A unique tag for this test run.
fn tag(name: &str) -> String {
    format!("zeppelin-test-transfer-{name}:{}", std::process::id())
}

/// Builds an image with a filler layer, exports it to a temporary cache and returns the
/// indexed archive. The caller removes it from the engine (so that a push must load it).
async fn exported(
    runtime: &DockerRuntime,
    name: &str,
    filler_seed: u64,
    cache: &std::path::Path,
) -> ImageArchive {
    let recipe = ImageRecipe::httpd(8080, &format!("hello from {name}")).with_filler(
        2 << 20,
        Content::Random,
        filler_seed,
    );
    let t = tag(name);
    let id = build_image(runtime, &t, &recipe).await.unwrap();
    let archive = zeppelin::client::prepare_image(runtime, &t, cache).await.unwrap();
    assert_eq!(archive.image, id);
    archive
}

async fn remove(runtime: &DockerRuntime, reference: &str) {
    let _ = runtime.remove_image(reference).await;
}

/// The tests share the engine's base layers (busybox): one at a time, so that one test removing
/// its image cannot take layers from under the other's counts.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn engine() -> DockerRuntime {
    let runtime = DockerRuntime::connect(None).unwrap();
    if let Err(e) = runtime.ping().await {
        panic!("these tests need the Docker engine (tools/dockerd.sh start): {e}");
    }
    runtime
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_is_pushed_loaded_and_a_second_push_sends_only_what_is_missing() {
    let _one_at_a_time = ENGINE.lock().await;
    let runtime = engine().await;
    let cache = tempfile::tempdir().unwrap();
    let seed = fresh_seed();
    let archive = exported(&runtime, "cold", seed, cache.path()).await;
    // Built while the first is there, a second image shares its base layers (the builder's
    // cache), and differs in its top layer (the page it serves).
    let warm = exported(&runtime, "warm", seed, cache.path()).await;
    let infos = |a: &ImageArchive| a.layers.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>();
    let (cold_layers, warm_layers) = (infos(&archive), infos(&warm));
    assert_eq!(warm_layers[..warm_layers.len() - 1], cold_layers[..cold_layers.len() - 1]);
    assert_ne!(warm_layers.last(), cold_layers.last());
    remove(&runtime, &tag("warm")).await;
    remove(&runtime, &tag("cold")).await;
    assert!(!runtime.has_image(&archive.image).await.unwrap());
    // The engine is shared: base layers may be there already (busybox, from other images).
    let diff_ids: Vec<String> = archive.layers.iter().map(|(l, _)| l.diff_id.clone()).collect();
    let present = runtime.present_prefix(&diff_ids).await.unwrap();
    assert!(present < archive.layers.len() - 1, "the filler layer (own seed) is new to the engine");
    let mut w = worker(&runtime, Limits::default()).await;
    let client = PrivateKeySigner::random();
    w.admit(1, &client, &archive.image, 1 << 30);
    let mut progress = 0;
    let report =
        push(&w.addr, &w.fingerprint, auth(1, &client), &archive, |sent, _| progress = sent).await.unwrap();
    assert!(runtime.has_image(&archive.image).await.unwrap(), "the image is in the engine");
    assert_eq!(progress, report.bytes_sent);
    let delivery = w.delivered.recv().await.unwrap();
    assert_eq!(delivery.agreement, 1);
    assert_eq!(delivery.image, archive.image);
    // Exactly what the engine lacked was sent: at least the filler and the files.
    assert_eq!(report.layers_reused, present);
    assert_eq!(report.layers_sent, archive.layers.len() - present);
    let missing: u64 = archive.layers[present..].iter().map(|(l, _)| l.size).sum();
    assert_eq!(report.bytes_sent, archive.config.len + missing);
    assert!(report.bytes_sent >= 2 << 20);

    // The second image: only its own top layer travels.
    w.admit(2, &client, &warm.image, 1 << 30);
    let report = push(&w.addr, &w.fingerprint, auth(2, &client), &warm, |_, _| {}).await.unwrap();
    assert_eq!(report.layers_reused, warm.layers.len() - 1);
    assert_eq!(report.layers_sent, 1);
    assert!(report.bytes_sent < 64 * 1024, "sent {} bytes", report.bytes_sent);
    assert!(runtime.has_image(&warm.image).await.unwrap());

    // The same image again: nothing but the config.
    w.admit(3, &client, &warm.image, 1 << 30);
    let report = push(&w.addr, &w.fingerprint, auth(3, &client), &warm, |_, _| {}).await.unwrap();
    assert_eq!((report.layers_sent, report.bytes_sent), (0, warm.config.len));
    remove(&runtime, &warm.image).await;
    remove(&runtime, &archive.image).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_says_why_and_leaves_no_image_behind() {
    let _one_at_a_time = ENGINE.lock().await;
    let runtime = engine().await;
    let cache = tempfile::tempdir().unwrap();
    let archive = exported(&runtime, "refusals", fresh_seed(), cache.path()).await;
    remove(&runtime, &tag("refusals")).await;
    let w = worker(&runtime, Limits { idle: Duration::from_secs(3), ..Limits::default() }).await;
    let client = PrivateKeySigner::random();
    let refused = |r: Result<_, PushError>| match r {
        Err(PushError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    };

    // No admission for this agreement.
    let reason = refused(push(&w.addr, &w.fingerprint, auth(9, &client), &archive, |_, _| {}).await);
    assert!(reason.contains("not waiting for an image"), "{reason}");

    // The agreement commits to another image.
    w.admit(10, &client, &format!("sha256:{}", "ab".repeat(32)), 1 << 30);
    let reason = refused(push(&w.addr, &w.fingerprint, auth(10, &client), &archive, |_, _| {}).await);
    assert!(reason.contains("digest rejected"), "{reason}");

    // Somebody else's key.
    w.admit(11, &client, &archive.image, 1 << 30);
    let stranger = PrivateKeySigner::random();
    let reason = refused(push(&w.addr, &w.fingerprint, auth(11, &stranger), &archive, |_, _| {}).await);
    assert!(reason.contains("authentication failed"), "{reason}");

    // Over the agreement's disk size.
    w.admit(12, &client, &archive.image, 1 << 20);
    let reason = refused(push(&w.addr, &w.fingerprint, auth(12, &client), &archive, |_, _| {}).await);
    assert!(reason.contains("over the agreement's disk size"), "{reason}");

    // Nobody listening where the offer said.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let err = push(&closed, &w.fingerprint, auth(11, &client), &archive, |_, _| {}).await.unwrap_err();
    assert!(
        matches!(err, PushError::Unreachable { .. }) && err.to_string().contains("worker unreachable"),
        "{err}"
    );

    // A worker that is not the one announced: the pinned fingerprint does not match.
    let err = push(&w.addr, &"00".repeat(32), auth(11, &client), &archive, |_, _| {}).await.unwrap_err();
    assert!(matches!(err, PushError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("not the one it announced"), "{err}");

    // A corrupted layer: the bytes of the filler flipped in a copy of the archive.
    let mut bad = archive.clone();
    bad.path = cache.path().join("corrupted.tar");
    let mut bytes = std::fs::read(&archive.path).unwrap();
    let filler = archive.layers.iter().map(|(_, s)| *s).max_by_key(|s| s.len).unwrap();
    bytes[(filler.offset + filler.len / 2) as usize] ^= 0xff;
    std::fs::write(&bad.path, bytes).unwrap();
    w.admit(13, &client, &archive.image, 1 << 30);
    let reason = refused(push(&w.addr, &w.fingerprint, auth(13, &client), &bad, |_, _| {}).await);
    assert!(reason.contains("corrupted"), "{reason}");
    assert!(!runtime.has_image(&archive.image).await.unwrap(), "nothing loaded from a corrupted push");

    // A replayed authentication: a valid signature over an earlier challenge.
    let (old_challenge, old_auth) = {
        let mut tls = connect(&w).await;
        let Frame::Challenge { nonce, .. } = read_frame(&mut tls).await.unwrap() else { panic!() };
        let sig = client.sign_message(auth_message(CHAIN, DISPATCHER, 13, &nonce).as_bytes()).await.unwrap();
        (nonce, Frame::Auth { agreement: 13, signature: alloy::hex::encode(sig.as_bytes()) })
    };
    let mut tls = connect(&w).await;
    let Frame::Challenge { nonce, .. } = read_frame(&mut tls).await.unwrap() else { panic!() };
    assert_ne!(nonce, old_challenge, "every connection gets a fresh challenge");
    write_frame(&mut tls, &old_auth).await.unwrap();
    match read_frame(&mut tls).await.unwrap() {
        Frame::Refused { reason } => assert!(reason.contains("authentication failed"), "{reason}"),
        other => panic!("a replayed authentication was not refused: {other:?}"),
    }

    // A truncated stream: the client goes away in the middle of a layer.
    let mut tls = connect(&w).await;
    let Frame::Challenge { nonce, .. } = read_frame(&mut tls).await.unwrap() else { panic!() };
    let sig = client.sign_message(auth_message(CHAIN, DISPATCHER, 13, &nonce).as_bytes()).await.unwrap();
    write_frame(&mut tls, &Frame::Auth { agreement: 13, signature: alloy::hex::encode(sig.as_bytes()) })
        .await
        .unwrap();
    let layers = archive.layers.iter().map(|(l, _)| l.clone()).collect();
    write_frame(
        &mut tls,
        &Frame::Offer { image: archive.image.clone(), config_size: archive.config.len, layers },
    )
    .await
    .unwrap();
    let Frame::Need { from_layer } = read_frame(&mut tls).await.unwrap() else { panic!("expected Need") };
    assert!(from_layer < archive.layers.len());
    let bytes = std::fs::read(&archive.path).unwrap();
    let config =
        &bytes[archive.config.offset as usize..(archive.config.offset + archive.config.len) as usize];
    tls.write_all(config).await.unwrap();
    let first = archive.layers[from_layer].1;
    tls.write_all(&bytes[first.offset as usize..(first.offset + first.len / 2) as usize]).await.unwrap();
    tls.flush().await.unwrap();
    // Silence, then the answer: the idle limit ends the wait.
    match read_frame(&mut tls).await.unwrap() {
        Frame::Refused { reason } => assert!(reason.contains("silent"), "{reason}"),
        other => panic!("a truncated push was not refused: {other:?}"),
    }
    assert!(!runtime.has_image(&archive.image).await.unwrap(), "nothing loaded from a truncated push");

    // And after all that the server still serves an honest client.
    let report = push(&w.addr, &w.fingerprint, auth(13, &client), &archive, |_, _| {}).await.unwrap();
    assert!(report.layers_sent >= 2, "the filler and the files were sent");
    assert!(runtime.has_image(&archive.image).await.unwrap());
    remove(&runtime, &archive.image).await;
}

async fn connect(w: &Worker) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
    let connector = TlsConnector::from(zeppelin::tls::pinned_client_config(&w.fingerprint));
    connector.connect(ServerName::try_from("zeppelin-worker").unwrap(), tcp).await.unwrap()
}

/// A verifier's health request for an agreement that does not run here is refused with the
/// reason, over the same pinned TLS; the server goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_health_request_for_work_that_does_not_run_here_is_refused() {
    let runtime = engine().await;
    let w = worker(&runtime, Limits::default()).await;
    let binding = zeppelin::health::Binding {
        chain_id: CHAIN,
        dispatcher: DISPATCHER,
        agreement: 9,
        nonce: "n".into(),
    };
    let err = zeppelin::health::fetch(&w.addr, &w.fingerprint, &binding, DISPATCHER).await.unwrap_err();
    assert!(
        matches!(&err, zeppelin::health::HealthError::Refused(r) if r.contains("no work runs here for agreement 9")),
        "{err}"
    );
    // Listed as running, but this server has no health source: still a refusal, not a hang.
    w.gate.send_modify(|g| {
        g.running.insert(9);
    });
    let err = zeppelin::health::fetch(&w.addr, &w.fingerprint, &binding, DISPATCHER).await.unwrap_err();
    assert!(matches!(err, zeppelin::health::HealthError::Refused(_)), "{err}");
    // A wrong pin is a TLS failure, not a report.
    let wrong = "00".repeat(32);
    let err = zeppelin::health::fetch(&w.addr, &wrong, &binding, DISPATCHER).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
}

/// Peers that connect and say nothing hold at most `max_handshakes` connections (the next
/// ones are closed at once, and free again when they give up); unauthenticated peers never
/// take a transfer permit, and with no permit free an authenticated push is refused as busy.
#[tokio::test(flavor = "multi_thread")]
async fn silent_peers_are_bounded_and_only_an_authenticated_push_takes_a_transfer_permit() {
    let runtime = engine().await;
    let limits = Limits { max_handshakes: 2, max_concurrent: 0, ..Limits::default() };
    let w = worker(&runtime, limits).await;
    let binding = zeppelin::health::Binding {
        chain_id: CHAIN,
        dispatcher: DISPATCHER,
        agreement: 9,
        nonce: "n".into(),
    };
    let ask = || zeppelin::health::fetch(&w.addr, &w.fingerprint, &binding, DISPATCHER);
    // Two silent peers fill the handshake slots: a third connection is closed unanswered.
    let silent: Vec<_> =
        futures_util::future::join_all((0..2).map(|_| tokio::net::TcpStream::connect(&w.addr))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = ask().await.unwrap_err();
    assert!(!matches!(err, zeppelin::health::HealthError::Refused(_)), "closed, not answered: {err}");
    // They leave: the server answers again.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = ask().await.unwrap_err();
    assert!(
        matches!(&err, zeppelin::health::HealthError::Refused(r) if r.contains("no work runs here")),
        "{err}"
    );

    // No transfer permit at all: an authenticated push is refused as busy, after its
    // authentication (a stranger learns nothing of the load).
    let client = PrivateKeySigner::random();
    let cache = tempfile::tempdir().unwrap();
    let archive = {
        let _one_at_a_time = ENGINE.lock().await;
        exported(&runtime, "busy", fresh_seed(), cache.path()).await
    };
    w.admit(13, &client, &archive.image, 1 << 30);
    match push(&w.addr, &w.fingerprint, auth(13, &client), &archive, |_, _| {}).await {
        Err(PushError::Refused(reason)) => assert!(reason.starts_with("busy"), "{reason}"),
        other => panic!("expected busy, got {other:?}"),
    }
    let stranger = PrivateKeySigner::random();
    match push(&w.addr, &w.fingerprint, auth(13, &stranger), &archive, |_, _| {}).await {
        Err(PushError::Refused(reason)) => assert!(reason.contains("authentication failed"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    remove(&runtime, &tag("busy")).await;
    remove(&runtime, &archive.image).await;
}
