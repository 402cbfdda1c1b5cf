//! `cargo bench --bench daemon`: the worker daemon's own figures, measured on the release
//! binary against a real anvil that this benchmark starts. It prints figures; it never fails on
//! slowness (only when something it needs cannot be set up).
//!
//! 1. Start-up: spawn to `READY=1` (the sd_notify datagram, through `NOTIFY_SOCKET` pointing at
//!    a socket bound here), first start and the median of 5 restarts; spawn to registered on
//!    chain for a fresh key.
//! 2. Idle memory after registration (VmRSS, VmHWM from /proc/<pid>/status).
//! 3. CPU over 60 idle seconds (utime + stime from /proc/<pid>/stat), 1-second blocks,
//!    `poll_interval = "1s"`, `confirmations = 2`.
//! 4. RPC calls (the daemon's `zeppelin_rpc_requests_total` by method, from `GET /metrics`) and
//!    CPU per block on a chain carrying N agreements among other workers versus none.
//!
//! `ZEPPELIN_BENCH_AGREEMENTS` (default 10000) sizes the market, `ZEPPELIN_BENCH_BLOCKS`
//! (default 30) the measured windows, `ZEPPELIN_BENCH_CPU_SECS` (default 60) the idle CPU window;
//! `ZEPPELIN_ANVIL` names another anvil.
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::eips::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::aliases::U80;
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use anyhow::{Context, Result, bail, ensure};
use zeppelin::chain::bindings::WorkerDispatcher;
use zeppelin::chain::deployment::Deployment;

const ETHER: u128 = 1_000_000_000_000_000_000;
const GWEI: u128 = 1_000_000_000;
/// Slots per market worker: the contract's largest (`uint8`); agreements stay open, so the
/// market needs `agreements / 255` workers at least.
const MARKET_SLOTS: u8 = 255;
/// Clients buying in the market (each its own anvil account, sending in nonce order).
const CLIENTS: usize = 10;
/// Transactions sent before mining them (automine off), per round.
const CHUNK: usize = 1000;

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

async fn run() -> Result<()> {
    zeppelin::tls::install_crypto_provider();
    let agreements = env_usize("ZEPPELIN_BENCH_AGREEMENTS", 10_000)?;
    let window_blocks = env_usize("ZEPPELIN_BENCH_BLOCKS", 30)? as u64;
    let cpu_secs = env_usize("ZEPPELIN_BENCH_CPU_SECS", 60)? as u64;
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_zeppelin"));
    let anvil_path = anvil_path()?;
    let tmp = tempfile::Builder::new().prefix("zb-").tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
    let started = Instant::now();

    println!("zeppelin daemon benchmark");
    println!(
        "command: cargo bench --bench daemon   (this process: {})",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "machine: {} CPUs (nproc), {}, {} MiB memory, Linux {}",
        nproc(),
        cpu_model(),
        mem_total_mib(),
        kernel()
    );
    println!(
        "daemon:  {} ({:.1} MiB), {}",
        exe.display(),
        std::fs::metadata(&exe).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0),
        command_line(&exe, &["--version"]).unwrap_or_default()
    );
    println!(
        "anvil:   {} ({})",
        anvil_path.display(),
        command_line(&anvil_path, &["--version"]).unwrap_or_default().lines().next().unwrap_or("")
    );
    println!(
        "settings: poll_interval 1s, confirmations 2, anvil --block-time 1 for measured windows; market of {agreements} agreements (ZEPPELIN_BENCH_AGREEMENTS), windows of {window_blocks} blocks (ZEPPELIN_BENCH_BLOCKS)"
    );
    let tck = clock_ticks();
    println!();

    // ------------------------------------------------------------------------------------------
    // Chain A: 1-second blocks, no market. Start-up, registration, memory, idle CPU.
    // ------------------------------------------------------------------------------------------
    println!("== chain A: anvil --block-time 1, no agreements");
    let anvil = Anvil::at(&anvil_path).block_time(1).timeout(30_000).try_spawn().context("starting anvil")?;
    let chain = Chain::deploy(&anvil, &tmp.path().join("a-deployment.json")).await?;
    let mut d = BenchDaemon::prepare(&exe, &tmp.path().join("worker-a"), &chain, "1 gwei", "").await?;

    let ready = d.start().await?;
    let at_ready = proc_status(d.pid())?;
    println!("start to READY (first start, fresh state, key already made): {} ms", ready.as_millis());
    let (mined_after, active_after, reg_block) = d.wait_registered(&chain, Duration::from_secs(60)).await?;
    println!(
        "start to registered on chain: {} ms (fresh key, first start; registration mined in block {reg_block}; \
         the daemon reports itself active after {} ms, {} confirmations later)",
        mined_after.as_millis(),
        active_after.as_millis(),
        2
    );

    let at_registered = proc_status(d.pid())?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mem = proc_status(d.pid())?;
    let rss = mem.get("VmRSS").copied().unwrap_or(0) as f64 / 1024.0;
    let hwm = mem.get("VmHWM").copied().unwrap_or(0) as f64 / 1024.0;
    println!(
        "idle resident memory after registration: {rss:.1} MiB (VmRSS after 10 s idle; goal <= 15 MiB: {})",
        if rss <= 15.0 { "goal: met" } else { "goal: not met" }
    );
    let mib = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0) as f64 / 1024.0;
    println!(
        "peak resident memory: {hwm:.1} MiB (VmHWM); at READY: VmRSS {:.1} / VmHWM {:.1} MiB; when active: VmRSS {:.1} / VmHWM {:.1} MiB; {} threads; VmSize {:.1} MiB",
        mib(&at_ready, "VmRSS"),
        mib(&at_ready, "VmHWM"),
        mib(&at_registered, "VmRSS"),
        mib(&at_registered, "VmHWM"),
        mem.get("Threads").copied().unwrap_or(0),
        mib(&mem, "VmSize")
    );

    let head0 = chain.provider.get_block_number().await?;
    let cpu0 = cpu_ticks(d.pid())?;
    let (ns0, io0) = (cpu_ns(d.pid())?, proc_io(d.pid())?);
    let m0 = d.metrics().await?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(cpu_secs)).await;
    let cpu1 = cpu_ticks(d.pid())?;
    let (ns1, io1) = (cpu_ns(d.pid())?, proc_io(d.pid())?);
    let secs = t0.elapsed().as_secs_f64();
    let m1 = d.metrics().await?;
    let head1 = chain.provider.get_block_number().await?;
    let cpu_ms = (cpu1 - cpu0) as f64 * 1000.0 / tck as f64;
    println!(
        "CPU over {cpu_secs} idle seconds: {cpu_ms:.0} ms ({:.2}% of one core) [utime+stime at {tck} ticks/s; schedstat of the live threads: {:.1} ms; {} blocks, {} RPC calls, {:.0} KiB written to storage in the window]",
        cpu_ms / (secs * 1000.0) * 100.0,
        (ns1 - ns0) as f64 / 1e6,
        head1 - head0,
        total(&diff(&m1, &m0)),
        (io1.get("write_bytes").copied().unwrap_or(0) - io0.get("write_bytes").copied().unwrap_or(0)) as f64
            / 1024.0
    );

    let idle = measure_window(&d, &chain, anvil.child().id(), window_blocks, tck).await?;
    idle.print("no agreements");

    // Restarts: the chain reachable, key and state on disk.
    let mut readies = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        d.stop(Duration::from_secs(15))?;
        stops.push(t.elapsed());
        readies.push(d.start().await?);
        // Let it make its first poll before the next stop (see the probe below).
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut sorted = readies.clone();
    sorted.sort();
    println!(
        "start to READY: {} ms (median of 5 restarts, chain reachable; each: {} ms; SIGTERM to exit before each: {} ms)",
        sorted[2].as_millis(),
        readies.iter().map(|r| r.as_millis().to_string()).collect::<Vec<_>>().join(", "),
        stops.iter().map(|r| r.as_millis().to_string()).collect::<Vec<_>>().join(", ")
    );
    d.stop(Duration::from_secs(15))?;
    // Probe: SIGTERM as soon as READY=1 arrives (`systemctl stop` right after the start).
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        d.start().await?;
        outcomes.push(match d.stop(Duration::from_secs(15)) {
            Ok(()) => "clean exit".to_owned(),
            Err(e) => e.to_string().lines().next().unwrap_or("").to_owned(),
        });
    }
    println!("SIGTERM right after READY=1 (3 tries): {}", outcomes.join("; "));
    d.stop(Duration::from_secs(15)).ok();
    let db = d.dir.join("state/state.redb");
    let store = zeppelin::store::DbStore::open(&db)?;
    if let Some(snapshot) = zeppelin::store::Store::<zeppelin::app::Snapshot>::load(&store)? {
        println!(
            "state: snapshot of {:.1} KiB JSON, saved when it changes (checkpoints stay in memory); {} is {:.1} KiB",
            serde_json::to_vec(&snapshot)?.len() as f64 / 1024.0,
            db.display(),
            std::fs::metadata(&db)?.len() as f64 / 1024.0
        );
    }
    drop(anvil);
    println!();

    // ------------------------------------------------------------------------------------------
    // Chain B: a market of `agreements` among other workers, then 1-second blocks.
    // ------------------------------------------------------------------------------------------
    let workers = agreements.div_ceil(200).max(20);
    println!("== chain B: {agreements} agreements among {workers} other workers ({CLIENTS} clients)");
    let accounts = 1 + workers + CLIENTS;
    let anvil = Anvil::at(&anvil_path)
        .args(["--accounts", &accounts.to_string(), "--base-fee", "0", "--balance", "100000"])
        .timeout(60_000)
        .try_spawn()
        .context("starting anvil for the market")?;
    let chain = Chain::deploy(&anvil, &tmp.path().join("b-deployment.json")).await?;
    let built = Instant::now();
    let market = build_market(&anvil, &chain, workers, agreements).await?;
    println!(
        "market: {} agreements open among {workers} workers in {} blocks (head {}), built in {:.1} s; buyContract gas limit {} (estimate {} + 25%){}",
        market.created,
        market.blocks,
        market.head,
        built.elapsed().as_secs_f64(),
        market.gas_limit,
        market.estimate,
        if market.failed > 0 {
            format!("; {} buys reverted and were replaced", market.failed)
        } else {
            String::new()
        }
    );
    rpc::<serde_json::Value>(&chain.provider, "evm_setIntervalMining", serde_json::json!([1])).await?;

    let mut d = BenchDaemon::prepare(&exe, &tmp.path().join("worker-b"), &chain, "1 gwei", "").await?;
    let ready = d.start().await?;
    let m_ready = d.metrics().await.unwrap_or_default();
    let (mined_after, active_after, _) = d.wait_registered(&chain, Duration::from_secs(120)).await?;
    let caught = d.wait_caught_up(&chain, Duration::from_secs(120)).await?;
    let m_caught = d.metrics().await?;
    println!(
        "joining the market: READY {} ms, registered on chain {} ms, active {} ms, caught up {} ms after start; {} RPC calls from READY to caught up ({})",
        ready.as_millis(),
        mined_after.as_millis(),
        active_after.as_millis(),
        caught.as_millis(),
        total(&diff(&m_caught, &m_ready)),
        breakdown(&diff(&m_caught, &m_ready))
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let busy = measure_window(&d, &chain, anvil.child().id(), window_blocks, tck).await?;
    busy.print(&format!("{agreements} agreements"));
    let mem = proc_status(d.pid())?;
    println!(
        "resident memory in the market: {:.1} MiB (VmRSS), peak {:.1} MiB (VmHWM)",
        mem.get("VmRSS").copied().unwrap_or(0) as f64 / 1024.0,
        mem.get("VmHWM").copied().unwrap_or(0) as f64 / 1024.0
    );
    d.stop(Duration::from_secs(15))?;
    drop(anvil);

    println!();
    println!("== summary");
    idle.print_short("no agreements");
    busy.print_short(&format!("{agreements} agreements"));
    let rpc_ratio = busy.rpc_per_block() / idle.rpc_per_block().max(f64::MIN_POSITIVE);
    let cpu_ratio = busy.cpu_ms_per_block() / idle.cpu_ms_per_block().max(1e-6);
    if rpc_ratio <= 1.10 && cpu_ratio <= 1.5 {
        println!("growth: none (RPC per block x{rpc_ratio:.2}, CPU per block x{cpu_ratio:.2})");
    } else {
        println!("growth: RPC per block x{rpc_ratio:.2}, CPU per block x{cpu_ratio:.2}");
    }
    println!("bench took {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// The chain
// ----------------------------------------------------------------------------------------------

struct Chain {
    provider: DynProvider,
    url: String,
    chain_id: u64,
    dispatcher: Address,
    deployment_file: PathBuf,
    funder: PrivateKeySigner,
}

impl Chain {
    async fn deploy(anvil: &AnvilInstance, deployment_file: &Path) -> Result<Chain> {
        let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url()).erased();
        let funder = PrivateKeySigner::from(anvil.keys()[0].clone());
        let wallet = ProviderBuilder::new()
            .wallet(EthereumWallet::from(funder.clone()))
            .connect_http(anvil.endpoint_url());
        let receipt = WorkerDispatcher::deploy_builder(&wallet, zeppelin::dev::dev_params())
            .send()
            .await?
            .get_receipt()
            .await?;
        let dispatcher = receipt.contract_address.context("no contract address")?;
        let chain_id = provider.get_chain_id().await?;
        Deployment { chain_id, dispatcher, deploy_block: receipt.block_number.context("no block")? }
            .save(deployment_file)?;
        Ok(Chain {
            provider,
            url: anvil.endpoint(),
            chain_id,
            dispatcher,
            deployment_file: deployment_file.to_owned(),
            funder,
        })
    }

    fn contract(&self) -> WorkerDispatcher::WorkerDispatcherInstance<&DynProvider> {
        WorkerDispatcher::new(self.dispatcher, &self.provider)
    }
}

async fn rpc<R: serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + Unpin + 'static>(
    provider: &DynProvider,
    method: &'static str,
    params: serde_json::Value,
) -> Result<R> {
    provider.raw_request(method.into(), params).await.context(method)
}

/// Signs a transaction with every field set, so sending it is one `eth_sendRawTransaction`.
#[allow(clippy::too_many_arguments)]
async fn sign(
    signer: &PrivateKeySigner,
    chain_id: u64,
    to: Address,
    input: Vec<u8>,
    value: U256,
    nonce: u64,
    gas: u64,
) -> Result<Bytes> {
    let request = TransactionRequest::default()
        .with_from(signer.address())
        .with_to(to)
        .with_input(Bytes::from(input))
        .with_value(value)
        .with_nonce(nonce)
        .with_chain_id(chain_id)
        .with_gas_limit(gas)
        .with_max_fee_per_gas(100 * GWEI)
        .with_max_priority_fee_per_gas(GWEI);
    let envelope = request.build(&EthereumWallet::from(signer.clone())).await?;
    Ok(Bytes::from(envelope.encoded_2718()))
}

struct Market {
    created: u64,
    failed: u64,
    blocks: u64,
    head: u64,
    estimate: u64,
    gas_limit: u64,
}

fn market_caps(i: usize) -> WorkerDispatcher::Capabilities {
    WorkerDispatcher::Capabilities {
        arch: 2, // arm64: another class than this machine's daemon
        cpuMillis: 4000,
        memoryMiB: 3800,
        diskMiB: 20_000,
        pricePerSecond: U80::from(GWEI),
        maxDuration: 86_400,
        slots: MARKET_SLOTS,
        encryptionKey: B256::from(U256::from(i as u64 + 1)),
    }
}

/// Registers `workers` workers (anvil accounts 1..=workers) and has the clients (the accounts
/// after them) buy `agreements` agreements from them, mined in full blocks.
async fn build_market(
    anvil: &AnvilInstance,
    chain: &Chain,
    workers: usize,
    agreements: usize,
) -> Result<Market> {
    ensure!(
        workers * MARKET_SLOTS as usize >= agreements,
        "{workers} workers of {MARKET_SLOTS} slots cannot hold {agreements} agreements"
    );
    let keys = anvil.keys();
    ensure!(keys.len() > workers + CLIENTS, "anvil made only {} accounts", keys.len());
    let start_block = chain.provider.get_block_number().await?;

    // Workers: automine, all sent at once.
    let stake = U256::from(ETHER);
    let mut hashes = Vec::new();
    for (i, key) in keys.iter().enumerate().skip(1).take(workers) {
        let signer = PrivateKeySigner::from(key.clone());
        let input = WorkerDispatcher::registerWorkerCall { caps: market_caps(i) }.abi_encode();
        let raw = sign(&signer, chain.chain_id, chain.dispatcher, input, stake, 0, 500_000).await?;
        hashes.push(*chain.provider.send_raw_transaction(&raw).await?.tx_hash());
    }
    for h in hashes {
        let r = wait_receipt(&chain.provider, h).await?;
        ensure!(r, "a market worker's registration reverted");
    }
    let c = chain.contract();
    let class = c.classOf(market_caps(1)).call().await?;
    let pool = c.poolSize(class).call().await?;
    ensure!(pool == U256::from(workers), "pool of class {class:#x} holds {pool}, not {workers}");
    let duration = U256::from(zeppelin::dev::dev_params().epochLength);
    let verifiers = U256::from(2u64);
    let value = c.quote(class, duration, verifiers).call().await?;
    let ceiling = c.classPriceCeiling(class).call().await?;
    let req = WorkerDispatcher::Requirements {
        workerClass: class,
        arch: 2,
        cpuMillis: 1000,
        memoryMiB: 512,
        diskMiB: 1000,
    };
    let buy = |n: u64| {
        WorkerDispatcher::buyContractCall {
            req: req.clone(),
            duration,
            maxPricePerSecond: ceiling,
            verifierCount: verifiers,
            work: WorkerDispatcher::WorkCommitment {
                imageDigest: B256::from(U256::from(n)),
                probeSpecHash: B256::from(U256::from(n + 1)),
            },
        }
        .abi_encode()
    };
    let clients: Vec<PrivateKeySigner> =
        keys.iter().skip(1 + workers).take(CLIENTS).map(|k| PrivateKeySigner::from(k.clone())).collect();
    let estimate = chain
        .provider
        .estimate_gas(
            TransactionRequest::default()
                .with_from(clients[0].address())
                .with_to(chain.dispatcher)
                .with_input(Bytes::from(buy(0)))
                .with_value(value),
        )
        .await?;
    let gas_limit = estimate + estimate / 4;

    // Buys: automine off; a chunk sent (each client in nonce order, clients in parallel), then
    // blocks mined until the pool is empty.
    rpc::<serde_json::Value>(&chain.provider, "evm_setAutomine", serde_json::json!([false])).await?;
    let target = agreements as u64;
    let mut sent = 0u64;
    let mut created = 0u64;
    let mut rounds = 0;
    while created < target {
        rounds += 1;
        ensure!(
            rounds < 10 * agreements.div_ceil(CHUNK) + 10,
            "the market does not fill: {created} of {target}"
        );
        let want = ((target - created) as usize).min(CHUNK);
        let mut tasks = tokio::task::JoinSet::new();
        for (ci, client) in clients.iter().enumerate() {
            let n = want / CLIENTS + usize::from(ci < want % CLIENTS);
            if n == 0 {
                continue;
            }
            let provider = chain.provider.clone();
            let client = client.clone();
            let (chain_id, dispatcher) = (chain.chain_id, chain.dispatcher);
            let inputs: Vec<Vec<u8>> = (0..n).map(|k| buy(sent + (ci * CHUNK + k) as u64)).collect();
            tasks.spawn(async move {
                let mut nonce = provider.get_transaction_count(client.address()).pending().await?;
                for input in inputs {
                    let raw = sign(&client, chain_id, dispatcher, input, value, nonce, gas_limit).await?;
                    let _ = provider.send_raw_transaction(&raw).await?;
                    nonce += 1;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        sent += want as u64;
        loop {
            rpc::<serde_json::Value>(&chain.provider, "evm_mine", serde_json::json!([])).await?;
            let status: serde_json::Value =
                rpc(&chain.provider, "txpool_status", serde_json::json!([])).await?;
            let pending = hex_u64(&status["pending"]) + hex_u64(&status["queued"]);
            if pending == 0 {
                break;
            }
        }
        created = c.nextAgreementId().call().await?.to::<u64>() - 1;
    }
    let head = chain.provider.get_block_number().await?;
    Ok(Market { created, failed: sent - created, blocks: head - start_block, head, estimate, gas_limit })
}

fn hex_u64(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
        serde_json::Value::String(s) => u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0),
        _ => 0,
    }
}

async fn wait_receipt(provider: &DynProvider, hash: B256) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = provider.get_transaction_receipt(hash).await? {
            return Ok(r.status());
        }
        ensure!(Instant::now() < deadline, "transaction {hash} not mined within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ----------------------------------------------------------------------------------------------
// The daemon under test
// ----------------------------------------------------------------------------------------------

struct BenchDaemon {
    exe: PathBuf,
    dir: PathBuf,
    address: Address,
    http_port: u16,
    child: Option<Child>,
    /// When the running child was spawned.
    spawned: Instant,
    starts: u32,
}

impl BenchDaemon {
    /// Makes the key (as `zeppelin dev` does, so it can be funded before the first start),
    /// funds it with 100 ETH and writes the config.
    async fn prepare(exe: &Path, dir: &Path, chain: &Chain, price: &str, extra: &str) -> Result<Self> {
        let state = dir.join("state");
        std::fs::create_dir_all(dir)?;
        let (identity, _) =
            zeppelin::identity::Identity::load_or_create(&state, &zeppelin::identity::Password::none())?;
        let address = identity.address();
        let wallet = ProviderBuilder::new()
            .wallet(EthereumWallet::from(chain.funder.clone()))
            .connect_http(chain.url.parse()?);
        let tx = TransactionRequest::default().to(address).value(U256::from(100 * ETHER));
        wallet.send_transaction(tx).await?.get_receipt().await.context("funding the daemon's key")?;
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = format!(
            "[chain]\nrpc_url = \"{rpc}\"\ndeployment_file = \"{deployment}\"\nconfirmations = 2\n\
             poll_interval = \"1s\"\n\n[worker]\nprice_per_second = \"{price}\"\nstake = \"1 ether\"\n{extra}\n\
             [state]\ndir = \"{state}\"\n\n[api]\ncontrol_socket = \"{socket}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n",
            rpc = chain.url,
            deployment = chain.deployment_file.display(),
            state = state.display(),
            socket = dir.join("control.sock").display(),
        );
        std::fs::write(dir.join("zeppelin.toml"), config)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(BenchDaemon {
            exe: exe.to_owned(),
            dir: dir.to_owned(),
            address,
            http_port,
            child: None,
            spawned: Instant::now(),
            starts: 0,
        })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// Spawns the daemon with `NOTIFY_SOCKET` and returns the time from spawn to `READY=1`.
    async fn start(&mut self) -> Result<Duration> {
        self.starts += 1;
        let notify_path = self.dir.join(format!("notify{}.sock", self.starts));
        let notify = tokio::net::UnixDatagram::bind(&notify_path)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log"))?;
        let t0 = Instant::now();
        let child = Command::new(&self.exe)
            .arg("daemon")
            .arg("--config")
            .arg(self.dir.join("zeppelin.toml"))
            .env("NOTIFY_SOCKET", &notify_path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning the daemon")?;
        self.child = Some(child);
        self.spawned = t0;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match tokio::time::timeout(Duration::from_secs(30), notify.recv(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => bail!("no READY=1 within 30 s; log tail:\n{}", self.log_tail()),
            };
            let at = t0.elapsed();
            if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
                return Ok(at);
            }
        }
    }

    /// SIGTERM, then waits for the exit.
    fn stop(&mut self, within: Duration) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                ensure!(status.success(), "the daemon exited with {status}; log tail:\n{}", self.log_tail());
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the daemon did not stop within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    async fn status(&self) -> Result<zeppelin::api::StatusReport> {
        match zeppelin::api::client::request(&self.socket(), zeppelin::api::Request::Status).await? {
            zeppelin::api::Response::Status { report } => Ok(*report),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Since the last spawn: when the registration showed on chain (polled every 20 ms), when
    /// the daemon reported itself active (polled every 50 ms), and the head block then.
    async fn wait_registered(&self, chain: &Chain, within: Duration) -> Result<(Duration, Duration, u64)> {
        let t0 = self.spawned;
        let deadline = Instant::now() + within;
        let c = chain.contract();
        let (mined, block) = loop {
            let w = c.getWorker(self.address).call().await?;
            if w.stake != alloy::primitives::aliases::U96::ZERO {
                break (t0.elapsed(), chain.provider.get_block_number().await?);
            }
            ensure!(
                Instant::now() < deadline,
                "not registered within {within:?}; log tail:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        loop {
            if let Ok(s) = self.status().await
                && matches!(s.registration.state, zeppelin::api::status::RegistrationState::Active)
            {
                return Ok((mined, t0.elapsed(), block));
            }
            ensure!(
                Instant::now() < deadline,
                "not active within {within:?}; log tail:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_caught_up(&self, chain: &Chain, within: Duration) -> Result<Duration> {
        let t0 = self.spawned;
        let deadline = Instant::now() + within;
        loop {
            let head = chain.provider.get_block_number().await?;
            if let Ok(s) = self.status().await
                && s.chain.processed_block + 2 >= head
            {
                return Ok(t0.elapsed());
            }
            ensure!(
                Instant::now() < deadline,
                "not caught up within {within:?}; log tail:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `zeppelin_rpc_requests_total` by method, from `GET /metrics`.
    async fn metrics(&self) -> Result<BTreeMap<String, u64>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.http_port)).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").await?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text)).await??;
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("zeppelin_rpc_requests_total{method=\"")
                && let Some((method, value)) = rest.split_once("\"} ")
            {
                out.insert(method.to_owned(), value.trim().parse::<f64>()? as u64);
            }
        }
        Ok(out)
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ----------------------------------------------------------------------------------------------
// Windows of blocks
// ----------------------------------------------------------------------------------------------

struct Window {
    blocks: u64,
    secs: f64,
    rpc: BTreeMap<String, u64>,
    /// utime + stime (clock ticks: coarse).
    cpu_ms: f64,
    /// Time on CPU of the daemon's threads (schedstat, nanoseconds: precise).
    cpu_ns: u64,
    anvil_cpu_ns: u64,
    /// /proc/<pid>/io: bytes the daemon caused to be written to storage, bytes passed to
    /// write(2) (files and sockets), write syscalls.
    write_bytes: u64,
    wchar: u64,
    syscw: u64,
}

impl Window {
    fn rpc_per_block(&self) -> f64 {
        total(&self.rpc) as f64 / self.blocks as f64
    }
    fn cpu_ms_per_block(&self) -> f64 {
        self.cpu_ns as f64 / 1e6 / self.blocks as f64
    }
    fn print(&self, label: &str) {
        println!(
            "RPC calls per block ({label}): {:.2} [{} calls over {} blocks in {:.1} s; per block: {}]",
            self.rpc_per_block(),
            total(&self.rpc),
            self.blocks,
            self.secs,
            self.rpc
                .iter()
                .map(|(m, n)| format!("{m} {:.2}", *n as f64 / self.blocks as f64))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "CPU per block ({label}): {:.2} ms [{:.1} ms on CPU over {} blocks (schedstat); utime+stime {:.0} ms; anvil {:.2} ms per block]",
            self.cpu_ms_per_block(),
            self.cpu_ns as f64 / 1e6,
            self.blocks,
            self.cpu_ms,
            self.anvil_cpu_ns as f64 / 1e6 / self.blocks as f64
        );
        println!(
            "disk writes per block ({label}): {:.1} KiB to storage (write_bytes) [{:.1} KiB passed to write(2) incl. sockets, {:.1} write calls]",
            self.write_bytes as f64 / 1024.0 / self.blocks as f64,
            self.wchar as f64 / 1024.0 / self.blocks as f64,
            self.syscw as f64 / self.blocks as f64
        );
    }
    fn print_short(&self, label: &str) {
        println!(
            "({label}): {:.2} RPC calls per block ({}), {:.2} ms CPU per block",
            self.rpc_per_block(),
            breakdown(&self.rpc),
            self.cpu_ms_per_block()
        );
    }
}

/// From the next block on, `blocks` blocks: the daemon's RPC calls (its own counters) and CPU.
async fn measure_window(d: &BenchDaemon, chain: &Chain, anvil: u32, blocks: u64, tck: u64) -> Result<Window> {
    // Start right after a block arrives, so the window holds whole block intervals.
    let mut head = chain.provider.get_block_number().await?;
    let first = head + 1;
    while head < first {
        tokio::time::sleep(Duration::from_millis(20)).await;
        head = chain.provider.get_block_number().await?;
    }
    let m0 = d.metrics().await?;
    let cpu0 = cpu_ticks(d.pid())?;
    let (ns0, anvil0, io0) = (cpu_ns(d.pid())?, cpu_ns(anvil)?, proc_io(d.pid())?);
    let t0 = Instant::now();
    let end = head + blocks;
    while head < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
        head = chain.provider.get_block_number().await?;
    }
    let cpu1 = cpu_ticks(d.pid())?;
    let (ns1, anvil1, io1) = (cpu_ns(d.pid())?, cpu_ns(anvil)?, proc_io(d.pid())?);
    let m1 = d.metrics().await?;
    let io = |k: &str| io1.get(k).copied().unwrap_or(0) - io0.get(k).copied().unwrap_or(0);
    Ok(Window {
        blocks: head - (end - blocks),
        secs: t0.elapsed().as_secs_f64(),
        rpc: diff(&m1, &m0),
        cpu_ms: (cpu1 - cpu0) as f64 * 1000.0 / tck as f64,
        cpu_ns: ns1 - ns0,
        anvil_cpu_ns: anvil1 - anvil0,
        write_bytes: io("write_bytes"),
        wchar: io("wchar"),
        syscw: io("syscw"),
    })
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(m, n)| (m.clone(), n - before.get(m).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

fn breakdown(m: &BTreeMap<String, u64>) -> String {
    m.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

// ----------------------------------------------------------------------------------------------
// The machine and /proc
// ----------------------------------------------------------------------------------------------

fn anvil_path() -> Result<PathBuf> {
    let path = std::env::var_os("ZEPPELIN_ANVIL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
    });
    ensure!(
        path.is_file(),
        "anvil not found at {}: run tools/setup.sh (or set ZEPPELIN_ANVIL)",
        path.display()
    );
    Ok(path)
}

fn command_line(exe: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(exe).args(args).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn mem_total_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| zeppelin::host::parse_meminfo_total_mib(&s))
        .unwrap_or(0)
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn clock_ticks() -> u64 {
    command_line(Path::new("getconf"), &["CLK_TCK"]).and_then(|s| s.parse().ok()).unwrap_or(100)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(") ").context("odd /proc stat")?.1.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Time on CPU of all live threads of a process, in nanoseconds (first field of schedstat).
fn cpu_ns(pid: u32) -> Result<u64> {
    let mut sum = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("schedstat")) else { continue };
        sum += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(sum)
}

/// /proc/<pid>/io.
fn proc_io(pid: u32) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

/// The `kB` fields of /proc/<pid>/status (and `Threads`).
fn proc_status(pid: u32) -> Result<BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.to_owned(), v.split_whitespace().next()?.parse().ok()?))
        })
        .collect())
}
