//! `cargo bench --bench transfer`: moving an image to a worker, against the real Docker engine,
//! every method in this one process on the same bytes, so the ratios are fair. It prints
//! figures and the goals; it never fails on slowness.
//!
//! The image: busybox plus four filler layers of `ZEPPELIN_BENCH_IMAGE_MIB / 4` MiB each (default
//! 256 MiB in all), two of incompressible bytes and two of text (most real images are a mix).
//! A second image shares that base and differs in its small top layer (the warm redeploy).
//!
//! 1. **local load**: the archive loaded from disk into the engine: the floor.
//! 2. **thesis method**: `docker save | gzip` over a plain TCP socket into `gunzip | docker
//!    load` (gzip level 6, as the gzip tool's default), from the same archive.
//! 3. **raw TCP** and **TLS** throughput of the archive's bytes over loopback (received and
//!    dropped): the cost of encryption alone.
//! 4. **push+load**: `zeppelin`'s transfer (TLS, pinned certificate, signed challenge, digests
//!    checked while streaming) into the engine, cold (no layer present).
//! 5. **warm redeploy**: the second image pushed while the first is loaded: only its top layer
//!    travels.
//! 6. **buy to probe**: on a devnet with 1-second blocks, two worker daemons; the time from the
//!    block of the client's buy transaction to the work answering its probe.
//!
//! Exporting an image from the client's engine (`docker save`) is needed by every method; it
//! is timed once and reported on its own.
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::network::EthereumWallet;
use alloy::node_bindings::Anvil;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, Result};
use bytes::Bytes;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use zeppelin::chain::bindings::WorkerDispatcher;
use zeppelin::chain::decode;
use zeppelin::chain::deployment::Deployment;
use zeppelin::core::types::Address;
use zeppelin::dev::{DevWorker, WorkerSpec};
use zeppelin::runtime::images::{Content, ImageRecipe, build_image};
use zeppelin::runtime::{DockerRuntime, Runtime};
use zeppelin::tls::TransferCert;
use zeppelin::transfer::archive::ImageArchive;
use zeppelin::transfer::push::{PushAuth, push};
use zeppelin::transfer::server::{Admission, Gate, serve};
use zeppelin::transfer::{ByteStream, parse_digest};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn file_stream(path: &Path) -> Result<ByteStream> {
    let mut file = std::fs::File::open(path)?;
    Ok(Box::pin(futures_util::stream::iter(std::iter::from_fn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(Bytes::from(buf)))
            }
            Err(e) => Some(Err(e)),
        }
    }))))
}

/// Removes the images so the next method starts cold. Layers shared with nothing else go.
async fn forget(rt: &DockerRuntime, images: &[&str]) {
    for image in images {
        let _ = rt.remove_image(image).await;
    }
}

/// 1. The floor: the archive from disk into the engine.
async fn local_load(rt: &DockerRuntime, archive: &ImageArchive) -> Result<f64> {
    let t = Instant::now();
    rt.load_image(file_stream(&archive.path)?).await?;
    Ok(t.elapsed().as_secs_f64())
}

/// 2. The thesis prototype's method: gzip | TCP | gunzip | docker load.
async fn thesis(rt: &DockerRuntime, archive: &ImageArchive) -> Result<(f64, u64)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let path = archive.path.clone();
    let t = Instant::now();
    let sender = std::thread::spawn(move || -> Result<u64> {
        let socket = std::net::TcpStream::connect(addr)?;
        let mut counted = Counter { inner: socket, count: 0 };
        let mut gz = flate2::write::GzEncoder::new(&mut counted, flate2::Compression::new(6));
        std::io::copy(&mut std::fs::File::open(path)?, &mut gz)?;
        gz.finish()?;
        Ok(counted.count)
    });
    let (socket, _) = listener.accept()?;
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let receiver = std::thread::spawn(move || {
        let mut gunzip = flate2::read::GzDecoder::new(socket);
        loop {
            let mut buf = vec![0u8; 256 * 1024];
            match gunzip.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let stream: ByteStream =
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) }));
    rt.load_image(stream).await?;
    let secs = t.elapsed().as_secs_f64();
    let wire = sender.join().expect("sender thread")?;
    receiver.join().expect("receiver thread");
    Ok((secs, wire))
}

struct Counter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// 3. The archive's bytes over loopback, plain or TLS, received and dropped.
async fn stream_only(archive: &ImageArchive, tls: bool) -> Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cert = TransferCert::generate()?;
    let acceptor = TlsAcceptor::from(cert.server_config()?);
    let receiver = tokio::spawn(async move {
        let (socket, _) = listener.accept().await?;
        socket.set_nodelay(true)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        if tls {
            let mut s = acceptor.accept(socket).await?;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        } else {
            let mut s = socket;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        anyhow::Ok(total)
    });
    let t = Instant::now();
    let socket = tokio::net::TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let mut file = tokio::fs::File::open(&archive.path).await?;
    let mut buf = vec![0u8; 256 * 1024];
    if tls {
        let connector = TlsConnector::from(zeppelin::tls::pinned_client_config(&cert.fingerprint()));
        let mut s = connector.connect(ServerName::try_from("zeppelin-worker")?, socket).await?;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await?;
        }
        s.shutdown().await?;
    } else {
        let mut s = socket;
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).await?;
        }
        s.shutdown().await?;
    }
    let received = receiver.await??;
    anyhow::ensure!(received == std::fs::metadata(&archive.path)?.len(), "short stream");
    Ok(t.elapsed().as_secs_f64())
}

/// 4 and 5. Our push into a transfer server loading into the engine.
struct Server {
    addr: String,
    fingerprint: String,
    gate: watch::Sender<Gate>,
    _delivered: mpsc::Receiver<zeppelin::transfer::server::Delivery>,
    cancel: CancellationToken,
}

const DISPATCHER: Address = Address([0xd1; 20]);

async fn server(rt: &DockerRuntime) -> Result<Server> {
    let cert = TransferCert::generate()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let (gate, gate_rx) = watch::channel(Gate {
        chain_id: 1,
        dispatcher: DISPATCHER,
        open: Default::default(),
        running: Default::default(),
    });
    let (tx, delivered) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    tokio::spawn(serve(
        listener,
        cert.server_config()?,
        gate_rx,
        Arc::new(rt.clone()),
        Arc::new(zeppelin::transfer::server::NoHealth),
        tx,
        Default::default(),
        cancel.clone(),
    ));
    Ok(Server { addr, fingerprint: cert.fingerprint(), gate, _delivered: delivered, cancel })
}

async fn pushed(
    s: &Server,
    id: u64,
    client: &PrivateKeySigner,
    archive: &ImageArchive,
) -> Result<(f64, u64)> {
    s.gate.send_modify(|g| {
        g.open.insert(
            id,
            Admission {
                client: decode::address(client.address()),
                image: parse_digest(&archive.image).expect("an image id"),
                max_bytes: 1 << 40,
            },
        );
    });
    let auth = PushAuth { chain_id: 1, dispatcher: DISPATCHER, agreement: id, signer: client };
    let t = Instant::now();
    let report = push(&s.addr, &s.fingerprint, auth, archive, |_, _| {}).await?;
    Ok((t.elapsed().as_secs_f64(), report.bytes_sent))
}

/// 6. Buy to probe on a devnet with 1-second blocks.
async fn devnet(rt: &DockerRuntime, dir: &Path) -> Result<(f64, u64)> {
    let anvil_path = std::env::var_os("ZEPPELIN_ANVIL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
    });
    let anvil = Anvil::at(anvil_path).block_time(1).spawn();
    let keys: Vec<PrivateKeySigner> =
        anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(keys[0].clone()))
        .connect_http(anvil.endpoint_url());
    let receipt = WorkerDispatcher::deploy_builder(&provider, zeppelin::dev::dev_params())
        .send()
        .await?
        .get_receipt()
        .await?;
    let deployment = Deployment {
        chain_id: 31337,
        dispatcher: receipt.contract_address.context("no address")?,
        deploy_block: 0,
    };
    let deployment_file = dir.join("deployment.json");
    deployment.save(&deployment_file)?;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_zeppelin"));
    let mut workers = Vec::new();
    for i in 0..2 {
        let spec = WorkerSpec {
            dir: dir.join(format!("w{i}")),
            rpc_url: anvil.endpoint(),
            deployment_file: deployment_file.clone(),
            price: "1 gwei".into(),
            extra: String::new(),
            env: Vec::new(),
            ws_url: None,
            poll_interval: "250ms".into(),
        };
        let mut w = DevWorker::start(&exe, &spec, Some(&keys[i + 1])).await?;
        w.wait_registered(Duration::from_secs(60)).await?;
        workers.push(w);
    }
    let tag = format!("zeppelin-bench-devnet:{}", std::process::id());
    build_image(rt, &tag, &ImageRecipe::httpd(8080, "bench devnet\n")).await?;
    let identity = zeppelin::identity::Identity::from_signer(keys[5].clone());
    let market = zeppelin::chain::market::Market::new(anvil.endpoint_url(), deployment, keys[5].clone());
    let probe =
        zeppelin::core::work::Probe::Http { path: "/index.html".into(), status: 200, body_sha256: None };
    let order = zeppelin::client::BuyOrder {
        image: tag.clone(),
        wants: zeppelin::chain::market::Wants {
            arch: zeppelin::core::types::Arch::from_name(zeppelin::host::NATIVE_ARCH).expect("a known arch"),
            cpu_millis: 500,
            memory_mib: 128,
            disk_mib: 64,
            duration: 120,
            max_price_per_second: alloy::primitives::U256::from(10_000_000_000u64),
            verifiers: 1,
        },
        port: 8080,
        probe: probe.clone(),
        wait: Duration::from_secs(120),
    };
    let deployed = zeppelin::client::buy(&market, &identity, rt, &dir.join("cache"), &order).await?;
    let addr: std::net::SocketAddr = deployed.endpoint.parse()?;
    zeppelin::probe::wait_until_ok(addr, &probe, Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    let answered = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
    let block =
        provider.get_block_by_number(deployed.bought_in_block.into()).await?.context("the buy block")?;
    let blocks = deployed.ready_in_block.unwrap_or(0).saturating_sub(deployed.bought_in_block);
    for mut w in workers {
        let _ = w.stop(Duration::from_secs(10)).await;
    }
    // The worker's container of this devnet goes with its agreement; remove what is left.
    for c in docker_ps_zeppelin()? {
        let _ = std::process::Command::new("docker").args(["rm", "-f", &c]).output();
    }
    let _ = rt.remove_image(&tag).await;
    Ok((answered - block.header.timestamp as f64, blocks))
}

fn docker_ps_zeppelin() -> Result<Vec<String>> {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=org.zeppelin.scope"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect())
}

fn row(name: &str, secs: f64, bytes: u64, note: &str) {
    println!("{name:<44} {secs:>7.2} s {:>8.1} MiB/s   {note}", mib(bytes) / secs);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    zeppelin::tls::install_crypto_provider();
    let rt = DockerRuntime::connect(None)?;
    let info = rt.ping().await.context("the benchmark needs a Docker engine (tools/dockerd.sh start)")?;
    println!("engine {} ({}), {} CPUs", info.version, info.storage_driver, info.cpus);
    let total_mib: u64 =
        std::env::var("ZEPPELIN_BENCH_IMAGE_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let filler = (total_mib << 20) / 4;
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut recipe = ImageRecipe::httpd(8080, "bench image A\n");
    for (i, content) in
        [Content::Random, Content::Text, Content::Random, Content::Text].into_iter().enumerate()
    {
        recipe = recipe.with_filler(filler, content, seed * 10 + i as u64);
    }
    let mut second = recipe.clone();
    second.files[0].1 = b"bench image B: same base, another page\n".to_vec();
    let pid = std::process::id();
    let (tag_a, tag_b) = (format!("zeppelin-bench-a:{pid}"), format!("zeppelin-bench-b:{pid}"));
    let dir = std::env::temp_dir().join(format!("zeppelin-bench-transfer-{pid}"));
    std::fs::create_dir_all(&dir)?;
    let result = run(&rt, &recipe, &second, &tag_a, &tag_b, &dir).await;
    forget(&rt, &[&tag_a, &tag_b]).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    rt: &DockerRuntime,
    recipe: &ImageRecipe,
    second: &ImageRecipe,
    tag_a: &str,
    tag_b: &str,
    dir: &Path,
) -> Result<()> {
    println!(
        "building the images (busybox + 2 incompressible and 2 text layers; a second one on the same base)"
    );
    let a = build_image(rt, tag_a, recipe).await?;
    let b = build_image(rt, tag_b, second).await?;
    let cache = dir.join("cache");
    let t = Instant::now();
    let archive_a = zeppelin::client::prepare_image(rt, tag_a, &cache).await?;
    let export = t.elapsed().as_secs_f64();
    let archive_b = zeppelin::client::prepare_image(rt, tag_b, &cache).await?;
    let size = std::fs::metadata(&archive_a.path)?.len();
    println!(
        "image A: {} layers, archive {:.0} MiB; B shares all but its top layer",
        archive_a.layers.len(),
        mib(size)
    );
    row("export from the client's engine (docker save)", export, size, "needed by every method below");
    println!();

    forget(rt, &[tag_a, tag_b]).await;
    let local = local_load(rt, &archive_a).await?;
    forget(rt, &[&a]).await;
    let (thesis_secs, wire) = thesis(rt, &archive_a).await?;
    forget(rt, &[&a]).await;
    let tcp = stream_only(&archive_a, false).await?;
    let tls = stream_only(&archive_a, true).await?;
    let s = server(rt).await?;
    let client = PrivateKeySigner::random();
    let (cold, cold_bytes) = pushed(&s, 1, &client, &archive_a).await?;
    let (warm, warm_bytes) = pushed(&s, 2, &client, &archive_b).await?;
    s.cancel.cancel();
    anyhow::ensure!(rt.has_image(&b).await?, "the warm push did not load image B");

    row("1. local load from disk (the floor)", local, size, "");
    row(
        "2. thesis: gzip | TCP | gunzip | docker load",
        thesis_secs,
        size,
        &format!("{:.0} MiB on the wire", mib(wire)),
    );
    row("3a. raw TCP, bytes only", tcp, size, "");
    row("3b. TLS (rustls, ring), bytes only", tls, size, "");
    row("4. zeppelin push+load, cold", cold, cold_bytes, "");
    row(
        "5. zeppelin push+load, warm redeploy of B",
        warm,
        warm_bytes.max(1),
        &format!("{:.1} KiB sent", warm_bytes as f64 / 1024.0),
    );
    println!();
    let goal = |ok: bool| if ok { "met" } else { "NOT met" };
    let speedup = thesis_secs / cold;
    println!("push+load vs thesis method:   {speedup:.2}x faster   (goal >= 2x: {})", goal(speedup >= 2.0));
    let overhead = tls / tcp - 1.0;
    println!(
        "TLS vs raw TCP, byte stream:  {:+.1}%   (goal within 10%: {})",
        overhead * 100.0,
        goal(overhead <= 0.10)
    );
    let warm_ratio = cold / warm;
    println!("cold / warm redeploy:         {warm_ratio:.1}x   (goal >= 5x: {})", goal(warm_ratio >= 5.0));
    let floor = cold / local;
    println!("push+load / local load:       {floor:.2}x   (goal <= 1.5x: {})", goal(floor <= 1.5));
    println!();
    println!("devnet (1-second blocks, 2 worker daemons): buying, pushing a small httpd image, waiting ...");
    let (secs, blocks) = devnet(rt, dir).await?;
    println!(
        "buy transaction's block to the work answering its probe: {secs:.1} s ({blocks} blocks to declareReady)"
    );
    Ok(())
}
