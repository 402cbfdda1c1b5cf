//! What verification costs, measured on a real local marketplace (anvil with a block a second,
//! the compiled dispatcher, real daemons, real containers in the Docker engine):
//!
//! 1. **Gas of a whole agreement as the daemons run it**: one agreement of 4 epochs with 2
//!    verifiers, from the client's `buyContract` to the last withdrawal, every transaction of
//!    every party, by function.
//! 2. **What a verifier spends per watched agreement**: one verifier daemon, first idle (no
//!    agreement to watch), then watching N agreements at once; its CPU time (utime + stime of
//!    the process) and resident memory over the same wall-clock window, the difference divided
//!    by N (and by the epochs in the window for CPU).
//!
//! Run: `cargo bench --bench verification` (about 6 minutes; `ZEPPELIN_BENCH_WATCHED=N`
//! changes N, 16 by default). Needs the Docker engine (`tools/dockerd.sh start`) and anvil
//! (`tools/setup.sh`).
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alloy::eips::BlockId;
use alloy::network::EthereumWallet;
use alloy::node_bindings::Anvil;
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use anyhow::{Context, Result};
use zeppelin::chain::bindings::WorkerDispatcher as W;
use zeppelin::chain::deployment::Deployment;
use zeppelin::dev::{DevWorker, WorkerSpec};
use zeppelin::runtime::images::{ImageRecipe, build_image};
use zeppelin::runtime::{DockerRuntime, Runtime};

const EPOCH: u64 = 10;
const WINDOW: Duration = Duration::from_secs(60);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/zeppelin")
}

fn anvil_path() -> PathBuf {
    std::env::var_os("ZEPPELIN_ANVIL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
    })
}

/// (CPU seconds used so far, resident KiB now) of process `pid`.
fn usage(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(") ").context("/proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // USER_HZ is 100 on every Linux architecture we build for.
    Ok((ticks as f64 / 100.0, rss))
}

async fn measure(pid: u32, window: Duration) -> Result<(f64, u64)> {
    let (cpu0, _) = usage(pid)?;
    let mut rss_max = 0;
    let end = Instant::now() + window;
    while Instant::now() < end {
        rss_max = rss_max.max(usage(pid)?.1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (cpu1, rss) = usage(pid)?;
    Ok((cpu1 - cpu0, rss_max.max(rss)))
}

fn function_name(input: &[u8]) -> &'static str {
    let Some(selector) = input.get(..4) else { return "plain transfer" };
    let known: [(&[u8; 4], &str); 12] = [
        (&W::buyContractCall::SELECTOR, "buyContract (client)"),
        (&W::sendMessageCall::SELECTOR, "sendMessage (hello, offer, watch letters)"),
        (&W::acceptAgreementCall::SELECTOR, "acceptAgreement"),
        (&W::declareReadyCall::SELECTOR, "declareReady"),
        (&W::provideVerificationCall::SELECTOR, "provideVerification"),
        (&W::redeemPaymentCall::SELECTOR, "redeemPayment"),
        (&W::withdrawCall::SELECTOR, "withdraw"),
        (&W::terminateAgreementCall::SELECTOR, "terminateAgreement"),
        (&W::addStakeCall::SELECTOR, "addStake"),
        (&W::registerWorkerCall::SELECTOR, "registerWorker"),
        (&W::cancelAgreementCall::SELECTOR, "cancelAgreement"),
        (&W::abortAgreementCall::SELECTOR, "abortAgreement"),
    ];
    known.iter().find(|(s, _)| s.as_slice() == selector).map_or("other", |(_, n)| n)
}

/// Gas of every transaction to `to` in blocks `from+1..=to_block`, by function: (count, gas).
async fn gas_by_function(
    provider: &DynProvider,
    to: Address,
    from: u64,
    to_block: u64,
) -> Result<BTreeMap<&'static str, (u64, u64)>> {
    let mut out: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for b in from + 1..=to_block {
        let Some(block) = provider.get_block_by_number(b.into()).full().await? else { continue };
        let receipts = provider.get_block_receipts(BlockId::number(b)).await?.unwrap_or_default();
        for (tx, receipt) in block.transactions.txns().zip(&receipts) {
            use alloy::consensus::Transaction;
            if tx.to() != Some(to) {
                continue;
            }
            let entry = out.entry(function_name(tx.input())).or_default();
            entry.0 += 1;
            entry.1 += receipt.gas_used;
        }
    }
    Ok(out)
}

async fn buy(
    market: &Path,
    rpc: &str,
    key_file: &Path,
    tag: &str,
    duration: &str,
    cache: &Path,
) -> Result<()> {
    let out = tokio::process::Command::new(exe())
        .args(["client", "buy", "--rpc-url", rpc, "--deployment"])
        .arg(market)
        .arg("--key-file")
        .arg(key_file)
        .args(["--image", tag, "--port", "8080", "--cpus", "0.25", "--memory-mib", "32"])
        .args([
            "--duration",
            duration,
            "--verifiers",
            "1",
            "--probe",
            "http:/index.html:200",
            "--wait",
            "90s",
        ])
        .env("XDG_CACHE_HOME", cache)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "buy failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    zeppelin::tls::install_crypto_provider();
    anyhow::ensure!(exe().is_file(), "build the release binary first: cargo build --release");
    let watched: usize =
        std::env::var("ZEPPELIN_BENCH_WATCHED").ok().and_then(|v| v.parse().ok()).unwrap_or(12).min(14);
    let runtime = DockerRuntime::connect(None)?;
    runtime.ping().await.context("the Docker engine (tools/dockerd.sh start)")?;
    let dir = std::env::temp_dir().join(format!("zeppelin-bench-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;

    let anvil = Anvil::at(anvil_path()).block_time(1).try_spawn()?;
    let keys: Vec<PrivateKeySigner> =
        anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
    let deployer = ProviderBuilder::new()
        .wallet(EthereumWallet::from(keys[0].clone()))
        .connect_http(anvil.endpoint_url());
    let mut params = zeppelin::dev::dev_params();
    params.epochLength = EPOCH as u32;
    params.reportGrace = 5;
    let receipt = W::deploy_builder(&deployer, params).send().await?.get_receipt().await?;
    let dispatcher = receipt.contract_address.context("no contract address")?;
    let deployment_file = dir.join("deployment.json");
    Deployment { chain_id: 31337, dispatcher, deploy_block: 0 }.save(&deployment_file)?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url()).erased();

    // The worker has room for every agreement; the verifiers are too small to be drawn as it.
    let spec = |name: &str, extra: &str| WorkerSpec {
        dir: dir.join(name),
        rpc_url: anvil.endpoint(),
        deployment_file: deployment_file.clone(),
        price: "1 gwei".into(),
        extra: extra.into(),
        env: Vec::new(),
        ws_url: None,
        poll_interval: "500ms".into(),
    };
    let mut daemons = Vec::new();
    for (i, (name, extra)) in [
        ("worker", format!("slots = {}\ncpus = 2\nmemory = \"4 GiB\"\n", (watched + 2).min(16))),
        ("verifier-a", "cpus = 0.1\nmemory = \"64 MiB\"\nslots = 1\n".to_owned()),
        ("verifier-b", "cpus = 0.1\nmemory = \"64 MiB\"\nslots = 1\n".to_owned()),
    ]
    .iter()
    .enumerate()
    {
        let mut d = DevWorker::start(&exe(), &spec(name, extra), Some(&keys[i + 1])).await?;
        d.wait_registered(Duration::from_secs(120)).await?;
        daemons.push(d);
    }
    let tag = format!("zeppelin-bench-verify:{}", std::process::id());
    build_image(&runtime, &tag, &ImageRecipe::httpd(8080, "watched")).await?;
    let key_file = dir.join("client.key");
    std::fs::write(&key_file, alloy::hex::encode(keys[9].to_bytes()))?;
    let cache = dir.join("cache");
    let rpc = anvil.endpoint();

    // 1. One whole agreement, 4 epochs, 2 verifiers: buy to the last withdrawal.
    let before = provider.get_block_number().await?;
    let out = tokio::process::Command::new(exe())
        .args(["client", "buy", "--rpc-url", &rpc, "--deployment"])
        .arg(&deployment_file)
        .arg("--key-file")
        .arg(&key_file)
        .args(["--image", &tag, "--port", "8080", "--cpus", "0.25", "--memory-mib", "32"])
        .args(["--duration", "40s", "--verifiers", "2", "--probe", "http:/index.html:200", "--wait", "90s"])
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "buy failed: {}", String::from_utf8_lossy(&out.stderr));
    let d = W::new(dispatcher, &provider);
    let id = d.nextAgreementId().call().await? - U256::from(1);
    let settle_by = Instant::now() + Duration::from_secs(180);
    loop {
        let state = d.getAgreement(id).call().await?.state as u8;
        let mut credits = U256::ZERO;
        for daemon in &daemons {
            credits += d.credits(daemon.address).call().await?;
        }
        if state == 5 && credits.is_zero() {
            break;
        }
        anyhow::ensure!(Instant::now() < settle_by, "agreement {id} not settled (state {state})");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The client withdraws its refund too.
    let client = ProviderBuilder::new()
        .wallet(EthereumWallet::from(keys[9].clone()))
        .connect_http(anvil.endpoint_url())
        .erased();
    W::new(dispatcher, &client).withdraw().send().await?.get_receipt().await?;
    let after = provider.get_block_number().await?;
    let gas = gas_by_function(&provider, dispatcher, before, after).await?;
    println!("gas of one whole agreement (4 epochs of {EPOCH} s, 2 verifiers), every party's transactions:");
    let mut total = 0;
    for (name, (count, used)) in &gas {
        println!("  {name:<45} {count:>3} tx  {used:>9} gas");
        total += used;
    }
    println!("  {:<45}        {total:>9} gas (receipts' gasUsed, intrinsic and calldata included)", "total");

    // 2. The verifier's cost per watched agreement: idle, then watching `watched` agreements.
    let verifier = &daemons[1];
    let pid = verifier.pid();
    let (idle_cpu, idle_rss) = measure(pid, WINDOW).await?;
    // verifier-b pauses (`zeppelin pause`): from now on every agreement draws verifier-a.
    let b = &daemons[2];
    let out = tokio::process::Command::new(exe())
        .arg("pause")
        .arg("--socket")
        .arg(b.spec.socket())
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "pause: {}", String::from_utf8_lossy(&out.stderr));
    let paused_by = Instant::now() + Duration::from_secs(60);
    while d.getWorker(b.address).call().await?.status as u8 != 2 {
        anyhow::ensure!(Instant::now() < paused_by, "verifier-b did not pause");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let started = Instant::now();
    let mut mine = 0;
    let mut bought = 0;
    while mine < watched && bought < watched + 2 {
        buy(&deployment_file, &rpc, &key_file, &tag, "600s", &cache).await?;
        bought += 1;
        let id = d.nextAgreementId().call().await? - U256::from(1);
        let v = d.verifiersOf(id).call().await?.accounts;
        if v.contains(&verifier.address) {
            mine += 1;
        }
    }
    println!(
        "bought {bought} agreements of 60 epochs in {:.0} s; verifier-a watches {mine}",
        started.elapsed().as_secs_f64()
    );
    // Past the first epoch of the last one, so every watched agreement is being probed.
    tokio::time::sleep(Duration::from_secs(EPOCH + 2)).await;
    let (busy_cpu, busy_rss) = measure(pid, WINDOW).await?;
    let epochs_in_window = WINDOW.as_secs() as f64 / EPOCH as f64;
    let per = (busy_cpu - idle_cpu).max(0.0) / mine.max(1) as f64;
    println!("verifier daemon over {} s (the same window each time):", WINDOW.as_secs());
    println!("  idle, watching nothing:        CPU {idle_cpu:.2} s, RSS {:.1} MiB", idle_rss as f64 / 1024.0);
    println!(
        "  watching {mine} agreements:        CPU {busy_cpu:.2} s, RSS {:.1} MiB",
        busy_rss as f64 / 1024.0
    );
    println!(
        "  per watched agreement: {:.1} ms CPU per epoch ({:.3}% of one core at {EPOCH} s epochs), {:.0} KiB memory",
        per / epochs_in_window * 1000.0,
        per / WINDOW.as_secs_f64() * 100.0,
        (busy_rss as f64 - idle_rss as f64).max(0.0) / mine.max(1) as f64
    );

    for daemon in &mut daemons {
        let _ = daemon.stop(Duration::from_secs(10)).await;
    }
    let scope = zeppelin::app::work_scope(
        &Deployment { chain_id: 31337, dispatcher, deploy_block: 0 },
        zeppelin::chain::decode::address(daemons[0].address),
    );
    for c in runtime.list(&scope).await.unwrap_or_default() {
        let _ = runtime.remove(&scope, c.agreement).await;
    }
    let _ = runtime.remove_image(&tag).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
