//! `zeppelin dev`: the embedded local default behind the README's main command.
//!
//! It brings up a complete local marketplace on this machine, step by step, printing readable
//! progress: a local chain (anvil), the protocol contracts deployed, and several worker daemons
//! started as separate processes, each with its own key, state directory, config and log, and
//! funded from the chain's dev accounts; it shows them registering. A buying client joins as
//! that capability lands (the README says which).
//!
//! [`DevWorker`] is also what the integration tests use to run real daemons.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::U256;
use alloy::primitives::aliases::U96;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::Context;

use crate::api::render::format_eth;
use crate::chain::bindings::WorkerDispatcher;
use crate::chain::deployment::Deployment;
use crate::cli::DevArgs;
use crate::runtime::Runtime as _;

/// Runs the local marketplace until interrupted (or, with `--once`, until it is set up).
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    println!("zeppelin dev: a local marketplace on this machine");
    // The workers' config files need absolute paths.
    std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    let args = DevArgs { dir: std::path::absolute(&args.dir)?, ..args };

    let anvil = start_chain(&args).await?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let chain_id = provider.get_chain_id().await.context("asking the local chain for its id")?;
    let head = provider.get_block_number().await.context("asking the local chain for its head")?;
    println!(
        "  chain     anvil at {} (chain id {chain_id}, head block {head}, {} funded dev accounts, {})",
        anvil.endpoint(),
        anvil.addresses().len(),
        block_time_label(args.block_time),
    );

    let deployer = PrivateKeySigner::from(anvil.keys()[0].clone());
    let deployer_address = deployer.address();
    let wallet_provider =
        ProviderBuilder::new().wallet(EthereumWallet::from(deployer)).connect_http(anvil.endpoint_url());
    let params = dev_params();
    let receipt = WorkerDispatcher::deploy_builder(&wallet_provider, params.clone())
        .send()
        .await
        .context("sending the WorkerDispatcher deployment")?
        .get_receipt()
        .await
        .context("waiting for the WorkerDispatcher deployment")?;
    let dispatcher = receipt.contract_address.context("the deployment receipt names no contract address")?;
    let deployment = Deployment {
        chain_id,
        dispatcher,
        deploy_block: receipt.block_number.context("the deployment receipt names no block")?,
    };
    // Read the parameters back: proves the code is live at that address and speaks our ABI.
    let on_chain = WorkerDispatcher::new(dispatcher, &provider)
        .params()
        .call()
        .await
        .context("reading the parameters back from the deployed WorkerDispatcher")?;
    anyhow::ensure!(
        on_chain == params,
        "the deployed WorkerDispatcher reports other parameters than it was given: {on_chain:?}"
    );
    let deployment_file = args.dir.join(format!("deployments/{chain_id}.json"));
    deployment.save(&deployment_file)?;
    println!(
        "  contracts WorkerDispatcher at {dispatcher} (block {}, {} gas, deployed by {deployer_address})",
        deployment.deploy_block, receipt.gas_used
    );
    println!(
        "            min stake {}, verifier fee {} wei per agreeing report, {} s epochs; deployment file {}",
        format_eth(params.minStake.to::<u128>()),
        params.verifierFee,
        params.epochLength,
        deployment_file.display()
    );

    // Worker daemons: a key each (made here, so they can be funded before they start), a config,
    // a process.
    let mut workers = Vec::new();
    for i in 1..=args.workers {
        let funder = PrivateKeySigner::from(anvil.keys()[i % anvil.keys().len()].clone());
        let spec = WorkerSpec {
            dir: args.dir.join(format!("worker{i}")),
            rpc_url: anvil.endpoint(),
            deployment_file: deployment_file.clone(),
            price: format!("{} gwei", i),
            extra: String::new(),
            env: Vec::new(),
            ws_url: Some(anvil.ws_endpoint()),
            poll_interval: "2s".into(),
        };
        let worker = DevWorker::start(&std::env::current_exe()?, &spec, Some(&funder)).await?;
        println!(
            "  worker {i}  {} (pid {}, {} gwei/s) log {}",
            worker.address,
            worker.pid(),
            i,
            worker.log.display()
        );
        workers.push(worker);
    }
    for (i, worker) in workers.iter_mut().enumerate() {
        let report = worker.wait_registered(Duration::from_secs(60)).await?;
        let terms = report.registration.terms.as_ref().expect("registered workers have terms");
        println!(
            "  worker {}  registered: {} {} CPU, {} MiB memory, {} MiB disk, stake {}",
            i + 1,
            terms.arch,
            terms.cpu_millis as f64 / 1000.0,
            terms.memory_mib,
            terms.disk_mib,
            format_eth(report.registration.stake_wei)
        );
    }

    let docker = crate::runtime::DockerRuntime::connect(None)?;
    if args.workers >= 2 {
        // Buying needs a worker and at least one verifier besides it.
        let client = PrivateKeySigner::from(anvil.keys()[anvil.keys().len() - 1].clone());
        let addresses: Vec<_> = workers.iter().map(|w| w.address).collect();
        let mine = args.block_time == 0;
        demo_client(&docker, &anvil.endpoint_url(), &deployment, client, &args.dir, &addresses, mine).await?;
    } else {
        println!("  client    (skipped: buying needs two workers, one to run the work and one to verify it)");
    }

    if args.once {
        println!("set up; stopping (--once)");
        for worker in &mut workers {
            worker.stop(Duration::from_secs(10)).await?;
        }
        // The work outlives a stopped daemon (a restart adopts it); this devnet is gone for good.
        for worker in &workers {
            let scope = crate::app::work_scope(&deployment, crate::chain::decode::address(worker.address));
            for c in docker.list(&scope).await.unwrap_or_default() {
                docker.remove(&scope, c.agreement).await?;
            }
        }
        return Ok(());
    }
    println!(
        "running; press Ctrl-C to stop (`zeppelin status --socket <worker dir>/control.sock` shows a worker)"
    );
    wait_for_shutdown_signal().await?;
    println!("stopping the local marketplace");
    for worker in &mut workers {
        worker.stop(Duration::from_secs(10)).await?;
    }
    Ok(())
}

/// The client's part of the local marketplace: build a small web server image, buy a minute
/// of a worker for it, push it, fetch its page where the worker runs it, then wait for the
/// agreement to end and be settled, withdraw the refund and show where the money went.
async fn demo_client(
    docker: &crate::runtime::DockerRuntime,
    rpc: &url::Url,
    deployment: &Deployment,
    key: PrivateKeySigner,
    dir: &Path,
    workers: &[alloy::primitives::Address],
    mine: bool,
) -> anyhow::Result<()> {
    docker
        .ping()
        .await
        .context("the client's demo needs the Docker engine (start it with tools/dockerd.sh start)")?;
    let tag = "zeppelin-dev-demo:latest";
    let page = "hello from a zeppelin worker\n";
    crate::runtime::images::build_image(docker, tag, &crate::runtime::images::ImageRecipe::httpd(8080, page))
        .await
        .context("building the demo image")?;
    let identity = crate::identity::Identity::from_signer(key.clone());
    println!(
        "  client    {} buys 1 minute of 0.5 CPU and 128 MiB for image {tag} (busybox httpd)",
        identity.address()
    );
    let market = crate::chain::market::Market::new(rpc.clone(), deployment.clone(), key);
    let probe = crate::core::work::Probe::Http { path: "/index.html".into(), status: 200, body_sha256: None };
    let order = crate::client::BuyOrder {
        image: tag.into(),
        wants: crate::chain::market::Wants {
            arch: crate::core::types::Arch::from_name(crate::host::NATIVE_ARCH)
                .expect("a known architecture"),
            cpu_millis: 500,
            memory_mib: 128,
            disk_mib: 64,
            duration: 60,
            max_price_per_second: U256::from(10_000_000_000u64),
            verifiers: 1,
        },
        port: 8080,
        probe: probe.clone(),
        wait: Duration::from_secs(120),
    };
    let deployed = crate::client::buy(&market, &identity, docker, &dir.join("client-cache"), &order).await?;
    let addr: std::net::SocketAddr = deployed.endpoint.parse().context("the worker's endpoint")?;
    let answer =
        crate::probe::check(addr, &probe, Duration::from_secs(5)).await.map_err(anyhow::Error::msg)?;
    let body = reqwest::get(format!("http://{addr}/index.html")).await?.text().await?;
    println!("  client    {answer}: {:?}", body.trim_end());
    settle(&market, deployed.id, workers, mine).await
}

/// How long past the settlement time the demo client waits for the worker's daemon to redeem
/// before it redeems itself (anyone may).
const REDEEM_MARGIN: u64 = 20;

/// Waits for agreement `id` to end and be settled (redeeming it if the worker's daemon has not
/// within [`REDEEM_MARGIN`]), withdraws the client's refund, waits for the daemons to withdraw
/// their pay, and prints the money flow, checking that the dispatcher holds exactly the stakes
/// and the credits still owed. With `mine` (a chain that makes a block per transaction only),
/// it mines an empty block every second so that chain time moves.
async fn settle(
    market: &crate::chain::market::Market,
    id: crate::core::types::AgreementId,
    workers: &[alloy::primitives::Address],
    mine: bool,
) -> anyhow::Result<()> {
    use crate::chain::decode;
    use crate::chain::market::STATES;
    use crate::client::{Timing, amount, when};
    let t = Timing::from_params(&market.params().await?);
    let r = market.agreement(id).await?;
    let settles = t.closes_at(r.startedAt.to::<u64>(), u64::from(r.endEpoch).saturating_sub(1));
    let now = market.now().await?;
    println!(
        "  client    waiting for agreement {id} to end and be settled: its last reporting window closes at {} (in {} s)",
        when(settles),
        settles.saturating_sub(now)
    );
    loop {
        let state = market.agreement(id).await?.state;
        match STATES.get(state as usize).copied().unwrap_or("unknown") {
            "finished" | "cancelled" | "aborted" => break,
            _ if market.now().await? >= settles + REDEEM_MARGIN => {
                println!(
                    "  client    the worker has not settled {REDEEM_MARGIN} s after it could; the client does"
                );
                print!("  client    {}", crate::client::redeem(market, id).await?);
                break;
            }
            _ => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if mine {
                    ProviderBuilder::new()
                        .connect_http(market.rpc_url().parse()?)
                        .raw_request::<_, serde_json::Value>("evm_mine".into(), ())
                        .await
                        .context("mining a block on the local chain")?;
                }
            }
        }
    }
    let s = market.settlement(id).await?;
    let (escrow, _) = s.escrow.context("no AgreementCreated log for the demo agreement")?;
    let r = market.agreement(id).await?;
    let worker = decode::address(r.worker);
    match &s.redeemed {
        Some(red) => {
            let by = market.sender_of(red.tx).await?;
            let by = if by == worker {
                "by the worker's daemon"
            } else if by == market.me() {
                "by the client"
            } else {
                "by a third party"
            };
            println!(
                "  client    agreement {id} settled {by} in block {}: {} served, {} failed, {} unjudged epoch(s)",
                red.block,
                red.served,
                red.failed,
                u64::from(r.endEpoch).saturating_sub(red.served + red.failed)
            )
        }
        None => println!("  client    agreement {id} closed early ({})", STATES[r.state as usize]),
    }
    print!("  client    {}", crate::client::withdraw(market).await?);

    // The daemons withdraw their own credits; give them a moment.
    let earners: Vec<_> = std::iter::once(worker).chain(s.verifier_fees.iter().map(|(v, _, _)| *v)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut left = Vec::new();
    loop {
        left.clear();
        for who in &earners {
            let credits = market.credits(*who).await?;
            if !credits.is_zero() {
                left.push((*who, credits));
            }
        }
        if left.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let withdrawn = |who: crate::core::types::Address| match left.iter().find(|(w, _)| *w == who) {
        Some((_, c)) => format!("{} still to withdraw", amount(*c)),
        None => "withdrawn by its daemon".to_owned(),
    };

    let row = |role: &str, who: String, what: &str, value: String| {
        println!("            {role:<9} {who:<42}  {what:<9} {value}");
    };
    println!("  money     agreement {id}, in exact wei:");
    row(
        "client",
        decode::eth_address(market.me()).to_string(),
        "paid in",
        format!("{} as escrow", amount(escrow)),
    );
    row("", String::new(), "got back", format!("{}, withdrawn", amount(s.client_back().unwrap_or_default())));
    let earned = s.worker_earned().unwrap_or_default();
    let note = if earned.is_zero() { "nothing to withdraw".to_owned() } else { withdrawn(worker) };
    row("worker", r.worker.to_string(), "earned", format!("{}, {note}", amount(earned)));
    for (v, reports) in market.verifiers_of(id).await? {
        let fee = s.verifier_fees.iter().find(|(w, _, _)| *w == v).map(|(_, _, f)| *f).unwrap_or_default();
        let note = if fee.is_zero() {
            format!("for {reports} report(s), nothing to withdraw")
        } else {
            format!("for {reports} report(s), {}", withdrawn(v))
        };
        row("verifier", decode::eth_address(v).to_string(), "earned", format!("{} {note}", amount(fee)));
    }
    if !s.slashed.is_zero() {
        row(
            "",
            String::new(),
            "slashed",
            format!("{} from the worker's stake, to the client", amount(s.slashed)),
        );
    }
    let held = s.still_held().context("the demo agreement is not settled")?;
    anyhow::ensure!(held.is_zero(), "the dispatcher still holds {held} wei of agreement {id}'s escrow");

    // The dispatcher's balance is exactly the workers' stakes plus every credit not yet
    // withdrawn (nothing else is open on this chain), read at one block.
    let (balance, stakes, owed) = dispatcher_books(market, workers).await?;
    anyhow::ensure!(
        balance == stakes + owed,
        "the dispatcher holds {balance} wei, not the stakes ({stakes}) plus the credits owed ({owed})"
    );
    println!(
        "            the dispatcher holds nothing for it: its balance {} is the workers' stakes {} plus the credits owed {}",
        amount(balance),
        amount(stakes),
        amount(owed)
    );
    Ok(())
}

/// At the head block: the dispatcher's balance, the sum of `workers`' stakes, and the credits
/// owed to the workers and to the market's own account.
async fn dispatcher_books(
    market: &crate::chain::market::Market,
    workers: &[alloy::primitives::Address],
) -> anyhow::Result<(U256, U256, U256)> {
    let provider = ProviderBuilder::new().connect_http(market.rpc_url().parse()?);
    let block = provider.get_block_number().await?;
    let at = alloy::eips::BlockId::number(block);
    let d = WorkerDispatcher::new(market.deployment.dispatcher, &provider);
    let balance = provider.get_balance(market.deployment.dispatcher).block_id(at).await?;
    let mut stakes = U256::ZERO;
    let mut owed = d.credits(crate::chain::decode::eth_address(market.me())).block(at).call().await?;
    for w in workers {
        stakes += U256::from(d.getWorker(*w).block(at).call().await?.stake);
        owed += d.credits(*w).block(at).call().await?;
    }
    Ok((balance, stakes, owed))
}

/// How to set up one worker daemon on a local chain.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// Its directory: `zeppelin.toml`, `state/`, `control.sock`, `daemon.log`.
    pub dir: PathBuf,
    pub rpc_url: String,
    pub deployment_file: PathBuf,
    /// `worker.price_per_second`.
    pub price: String,
    /// More TOML lines for the `[worker]` table (caps, slots, stake).
    pub extra: String,
    /// Environment for the daemon process (say, `NOTIFY_SOCKET` in tests).
    pub env: Vec<(String, String)>,
    /// `chain.ws_url`, if any.
    pub ws_url: Option<String>,
    /// `chain.poll_interval`.
    pub poll_interval: String,
}

impl WorkerSpec {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("zeppelin.toml")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// Sixteen host ports for the worker's containers (so at most 16 slots), picked from its
    /// directory so that local workers do not share them.
    pub fn work_ports(&self) -> (u16, u16) {
        let first = self.port_block();
        (first, first + 15)
    }

    /// The transfer server's port, next to the work ports: fixed for the directory, so a
    /// restarted daemon is where its clients and verifiers were told it is.
    pub fn transfer_port(&self) -> u16 {
        self.port_block() + 16
    }

    fn port_block(&self) -> u16 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.dir.hash(&mut h);
        // Below 32768, where Linux starts handing out ephemeral ports (anvil's among them).
        20_000 + (h.finish() % 700) as u16 * 17
    }

    /// Writes the worker's config file: no confirmations on a local chain (it does not reorg by
    /// itself), and the spec's poll interval and WebSocket.
    pub fn write_config(&self, http_port: u16) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let text = format!(
            "[chain]\nrpc_url = \"{rpc}\"\n{ws}deployment_file = \"{deployment}\"\nconfirmations = 0\n\
             poll_interval = \"{poll}\"\n\n[worker]\nprice_per_second = \"{price}\"\nstake = \"1 ether\"\n{extra}\n\
             [state]\ndir = \"{state}\"\n\n[api]\ncontrol_socket = \"{socket}\"\nhttp_listen = \"127.0.0.1:{http_port}\"\n\n\
             [work]\ntransfer_listen = \"127.0.0.1:{transfer}\"\nannounce_host = \"127.0.0.1\"\npublish_ip = \"127.0.0.1\"\n\
             ports = \"{first}-{last}\"\n\n\
                          [nat]\nmode = \"off\"\n",
            rpc = self.rpc_url,
            ws = self.ws_url.as_ref().map(|u| format!("ws_url = \"{u}\"\n")).unwrap_or_default(),
            poll = self.poll_interval,
            deployment = self.deployment_file.display(),
            price = self.price,
            extra = self.extra,
            state = self.state_dir().display(),
            socket = self.socket().display(),
            transfer = self.transfer_port(),
            first = self.work_ports().0,
            last = self.work_ports().1,
        );
        let path = self.config_path();
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// A worker daemon running as a child process.
pub struct DevWorker {
    pub spec: WorkerSpec,
    pub address: alloy::primitives::Address,
    pub http_port: u16,
    pub log: PathBuf,
    child: tokio::process::Child,
}

impl DevWorker {
    /// Makes the worker's key, funds it with 100 ETH from `funder` (if given) when it holds
    /// less than 10, writes its config and starts `exe daemon`.
    pub async fn start(
        exe: &Path,
        spec: &WorkerSpec,
        funder: Option<&PrivateKeySigner>,
    ) -> anyhow::Result<Self> {
        let (identity, _) =
            crate::identity::Identity::load_or_create(&spec.state_dir(), &crate::identity::Password::none())?;
        let address = identity.address();
        if let Some(funder) = funder {
            let url: url::Url = spec.rpc_url.parse()?;
            let provider =
                ProviderBuilder::new().wallet(EthereumWallet::from(funder.clone())).connect_http(url);
            let ten = U256::from(10u64) * U256::from(10u64).pow(U256::from(18u64));
            if provider.get_balance(address).await? < ten {
                let tx = alloy::rpc::types::TransactionRequest::default()
                    .to(address)
                    .value(ten * U256::from(10u64));
                provider.send_transaction(tx).await?.get_receipt().await.context("funding the worker")?;
            }
        }
        let http_port = free_port()?;
        spec.write_config(http_port)?;
        let mut worker = DevWorker {
            spec: spec.clone(),
            address,
            http_port,
            log: spec.dir.join("daemon.log"),
            child: spawn_placeholder()?,
        };
        worker.child = worker.spawn(exe)?;
        Ok(worker)
    }

    fn spawn(&self, exe: &Path) -> anyhow::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        tokio::process::Command::new(exe)
            .arg("daemon")
            .arg("--config")
            .arg(self.spec.config_path())
            .env("ZEPPELIN_LOG_FORMAT", "journal")
            .envs(self.spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} daemon", exe.display()))
    }

    /// Starts the daemon again (after `stop` or `kill`), with the same key, state and config.
    pub fn restart(&mut self, exe: &Path) -> anyhow::Result<()> {
        self.child = self.spawn(exe)?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends a signal (SIGTERM to stop, SIGHUP to reload, SIGKILL to crash).
    pub fn signal(&self, signal: rustix::process::Signal) -> anyhow::Result<()> {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).context("the daemon has exited")?;
        rustix::process::kill_process(pid, signal)?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        if self.child.id().is_some() {
            self.signal(rustix::process::Signal::TERM)?;
        }
        tokio::time::timeout(within, self.child.wait())
            .await
            .context("the daemon did not stop in time")?
            .map_err(Into::into)
    }

    /// SIGKILL: a crash, as `kill -9` or a power cut would do.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// The daemon's status report, through its control socket.
    pub async fn status(&self) -> anyhow::Result<crate::api::StatusReport> {
        match crate::api::client::request(&self.spec.socket(), crate::api::Request::Status).await? {
            crate::api::Response::Status { report } => Ok(*report),
            other => anyhow::bail!("unexpected answer: {other:?}"),
        }
    }

    /// Waits until `check` holds for the daemon's status (polling its socket).
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        check: impl Fn(&crate::api::StatusReport) -> bool,
    ) -> anyhow::Result<crate::api::StatusReport> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                anyhow::bail!(
                    "worker {} exited ({status}) before it was {what}; its log:\n{}",
                    self.address,
                    log.trim_end()
                );
            }
            if let Ok(report) = self.status().await {
                if check(&report) {
                    return Ok(report);
                }
                last = Some(report);
            }
            if tokio::time::Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<_> = log.lines().rev().take(15).collect();
                anyhow::bail!(
                    "worker {} not {what} within {within:?}; last status: {last:?}; log tail:\n{}",
                    self.address,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits for the registration to show on chain (as the daemon sees it).
    pub async fn wait_registered(&mut self, within: Duration) -> anyhow::Result<crate::api::StatusReport> {
        self.wait_for("registered", within, |r| {
            matches!(r.registration.state, crate::api::status::RegistrationState::Active)
        })
        .await
    }
}

/// A child that has already exited, to fill the field until the real one is spawned.
fn spawn_placeholder() -> anyhow::Result<tokio::process::Child> {
    Ok(tokio::process::Command::new("true").stdin(Stdio::null()).spawn()?)
}

/// A loopback port free right now (bound, then released).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_chain(args: &DevArgs) -> anyhow::Result<AnvilInstance> {
    let mut anvil = Anvil::at(&args.anvil).port(args.rpc_port).timeout(20_000);
    if args.block_time > 0 {
        anvil = anvil.block_time(args.block_time);
    }
    let anvil_path = args.anvil.display().to_string();
    // Spawning waits for anvil's "Listening on" line: blocking work, off the async threads.
    tokio::task::spawn_blocking(move || anvil.try_spawn()).await?.with_context(|| {
        format!("starting the local chain with `{anvil_path}` (is anvil installed? run tools/setup.sh)")
    })
}

/// Protocol parameters for the local marketplace: short windows so a whole lifecycle takes
/// minutes, small amounts so the dev accounts' 10,000 ETH go a long way.
pub fn dev_params() -> WorkerDispatcher::Params {
    const MILLI_ETH: u128 = 1_000_000_000_000_000;
    WorkerDispatcher::Params {
        minStake: U96::from(1000 * MILLI_ETH),
        // A tenth of what the cheapest dev worker (1 gwei/s) earns in a 30 s epoch, so the
        // money flow shows fees as the small part of the price they are meant to be.
        verifierFee: U96::from(3_000_000_000u64),
        acceptPenalty: U96::from(50 * MILLI_ETH),
        slashPerFailedEpoch: U96::from(100 * MILLI_ETH),
        acceptWindow: 60,
        readyWindow: 300,
        epochLength: 30,
        reportGrace: 15,
        maxEpochs: 2880,
        unbondingDelay: 120,
        maxConsecutiveFailures: 2,
    }
}

fn block_time_label(seconds: u64) -> String {
    match seconds {
        0 => "a block per transaction".into(),
        s => format!("a block every {s} s"),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    // Give in-flight output a moment; the chain stops when `AnvilInstance` drops.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
