//! `zeppelin daemon` as systemd runs it: real processes against a real anvil running our
//! compiled contracts. Each test brings up its own chain on its own port.
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use rustix::process::Signal;
use zeppelin::api::status::{HealthStatus, RegistrationState};
use zeppelin::chain::bindings::WorkerDispatcher;
use zeppelin::chain::deployment::Deployment;
use zeppelin::dev::{DevWorker, WorkerSpec};

const GWEI: u64 = 1_000_000_000;
const WAIT: Duration = Duration::from_secs(60);

/// A local chain with the dispatcher deployed, in a directory of its own.
struct Net {
    anvil: Option<AnvilInstance>,
    port: u16,
    state_file: PathBuf,
    dir: PathBuf,
    keys: Vec<PrivateKeySigner>,
    dispatcher: Address,
    deployment_file: PathBuf,
}

impl Net {
    /// Anvil on a fixed port, keeping its state in a file so it can be stopped and restarted.
    async fn start(name: &str) -> Net {
        zeppelin::tls::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("zeppelin-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let state_file = dir.join("anvil-state.json");
        let anvil = spawn_anvil(port, &state_file);
        let keys: Vec<_> = anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(keys[0].clone()))
            .connect_http(anvil.endpoint_url());
        let receipt = WorkerDispatcher::deploy_builder(&provider, zeppelin::dev::dev_params())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        let dispatcher = receipt.contract_address.unwrap();
        let deployment_file = dir.join("deployment.json");
        Deployment { chain_id: 31337, dispatcher, deploy_block: receipt.block_number.unwrap() }
            .save(&deployment_file)
            .unwrap();
        Net { anvil: Some(anvil), port, state_file, dir, keys, dispatcher, deployment_file }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn provider(&self) -> DynProvider {
        ProviderBuilder::new().connect_http(self.url().parse().unwrap()).erased()
    }

    async fn rpc(&self, method: &'static str, params: serde_json::Value) -> serde_json::Value {
        self.provider().raw_request(method.into(), params).await.unwrap()
    }

    fn spec(&self, name: &str, extra: &str) -> WorkerSpec {
        WorkerSpec {
            dir: self.dir.join(name),
            rpc_url: self.url(),
            deployment_file: self.deployment_file.clone(),
            price: "1 gwei".into(),
            extra: extra.into(),
            env: Vec::new(),
            ws_url: None,
            poll_interval: "500ms".into(),
        }
    }

    async fn worker(&self, name: &str, extra: &str, funder: usize) -> DevWorker {
        DevWorker::start(&common::zeppelin(), &self.spec(name, extra), Some(&self.keys[funder]))
            .await
            .unwrap()
    }

    async fn registration(&self, worker: Address) -> WorkerDispatcher::Worker {
        WorkerDispatcher::new(self.dispatcher, self.provider()).getWorker(worker).call().await.unwrap()
    }

    async fn nonce(&self, who: Address) -> u64 {
        self.provider().get_transaction_count(who).await.unwrap()
    }

    /// Every `WorkerRegistered` log naming `who`.
    async fn registrations_logged(&self, who: Address) -> usize {
        let filter = Filter::new()
            .address(self.dispatcher)
            .event_signature(WorkerDispatcher::WorkerRegistered::SIGNATURE_HASH)
            .topic1(who.into_word())
            .from_block(0);
        self.provider().get_logs(&filter).await.unwrap().len()
    }

    /// Stops the chain (state kept in its file), as an RPC outage.
    fn stop_chain(&mut self) {
        // Give anvil's once-a-second state dump time to include the latest block.
        std::thread::sleep(Duration::from_millis(1500));
        self.anvil = None;
    }

    fn restart_chain(&mut self) {
        self.anvil = Some(spawn_anvil(self.port, &self.state_file));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn spawn_anvil(port: u16, state_file: &Path) -> AnvilInstance {
    Anvil::at(common::anvil())
        .port(port)
        .args(["--state", &state_file.display().to_string(), "--state-interval", "1"])
        .spawn()
}

async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_registers_its_measured_capacity_capped_by_its_config() {
    let net = Net::start("register").await;
    let mut worker = net.worker("w", "cpus = 1\nmemory = \"512 MiB\"\ndisk = \"1 GiB\"\nslots = 2", 1).await;
    let report = worker.wait_registered(WAIT).await.unwrap();

    let on_chain = net.registration(worker.address).await;
    assert_eq!((on_chain.cpuMillis, on_chain.memoryMiB, on_chain.diskMiB), (1000, 512, 1024));
    assert_eq!(on_chain.slots, 2);
    assert_eq!(on_chain.pricePerSecond.to::<u64>(), GWEI);
    assert_eq!(on_chain.arch, zeppelin::core::types::Arch::of_this_build().unwrap().code());
    assert_eq!(on_chain.stake.to::<u128>(), 10u128.pow(18));
    assert_ne!(
        on_chain.encryptionKey,
        alloy::primitives::B256::ZERO,
        "the private-channel key is registered"
    );
    // The status tells the same story.
    let terms = report.registration.terms.unwrap();
    assert_eq!((terms.cpu_millis, terms.memory_mib, terms.disk_mib), (1000, 512, 1024));
    assert_eq!(report.address, zeppelin::core::types::Address(worker.address.0.0).to_string());
    assert_eq!(net.nonce(worker.address).await, 1, "one transaction: the registration");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_change_updates_the_registration_on_reload() {
    let net = Net::start("reload").await;
    let mut worker = net.worker("w", "", 1).await;
    worker.wait_registered(WAIT).await.unwrap();

    worker.spec.price = "2 gwei".into();
    worker.spec.write_config(worker.http_port).unwrap();
    worker.signal(Signal::HUP).unwrap();
    eventually("the new price on chain", || async {
        net.registration(worker.address).await.pricePerSecond.to::<u64>() == 2 * GWEI
    })
    .await;
    // Reloading again without a change sends nothing.
    worker.signal(Signal::HUP).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(net.nonce(worker.address).await, 2, "register, then one update");
    assert!(worker.stop(Duration::from_secs(10)).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_without_registering_again() {
    let net = Net::start("restart").await;
    let mut worker = net.worker("w", "", 1).await;
    worker.wait_registered(WAIT).await.unwrap();
    let status = worker.stop(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status}");

    net.rpc("anvil_mine", serde_json::json!([5])).await;
    worker.restart(&common::zeppelin()).unwrap();
    let head = net.provider().get_block_number().await.unwrap();
    let report = worker
        .wait_for("caught up", WAIT, |r| {
            r.chain.processed_block >= head && matches!(r.registration.state, RegistrationState::Active)
        })
        .await
        .unwrap();
    assert!(report.transactions_in_flight.is_empty(), "{:?}", report.transactions_in_flight);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(net.nonce(worker.address).await, 1, "no second registration");
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(log.contains("resuming from the saved state"), "{log}");
    // A second registration would revert in its estimate; the log shows none was even tried.
    assert_eq!(log.matches("tx=register").count(), 2, "sent once, mined once:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_rpc_outage_is_reported_as_degraded_and_recovered_from() {
    let mut net = Net::start("outage").await;
    let mut worker = net.worker("w", "", 1).await;
    worker.wait_registered(WAIT).await.unwrap();

    net.stop_chain();
    let down = worker
        .wait_for("degraded", WAIT, |r| !r.chain.connected && r.health.status == HealthStatus::Degraded)
        .await
        .unwrap();
    assert!(down.health.reasons.iter().any(|r| r.contains("unreachable")), "{:?}", down.health.reasons);
    assert!(down.last_error.unwrap().message.contains("rpc "), "the last error names the failing call");
    let health = reqwest_health(worker.http_port).await;
    assert_eq!(health.0, 503, "{}", health.1);
    // It backs off: over 8 s of outage, polling every 0.5 s would fail 16 times; doubling
    // intervals (0.5, 1, 2, 4 s ...) fail a handful.
    let errors_before = rpc_errors(worker.http_port).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let failed = rpc_errors(worker.http_port).await - errors_before;
    assert!(failed <= 6, "{failed} failed requests in 8 s: no backoff");

    net.restart_chain();
    net.rpc("anvil_mine", serde_json::json!([3])).await;
    let head = net.provider().get_block_number().await.unwrap();
    worker
        .wait_for("recovered", WAIT, |r| {
            r.chain.connected && r.health.status == HealthStatus::Ok && r.chain.processed_block >= head
        })
        .await
        .unwrap();
    assert_eq!(reqwest_health(worker.http_port).await.0, 200);
    assert_eq!(net.nonce(worker.address).await, 1);
}

/// `zeppelin_rpc_errors_total` from the daemon's metrics.
async fn rpc_errors(port: u16) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    let line =
        text.lines().find(|l| l.starts_with("zeppelin_rpc_errors_total ")).expect("the counter is exported");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `GET /health`: status code and body.
async fn reqwest_health(port: u16) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/health")).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_a_transaction_in_flight_leaves_exactly_one_effect() {
    let net = Net::start("kill9").await;
    // Transactions wait in the pool until the test mines them.
    net.rpc("evm_setAutomine", serde_json::json!([false])).await;
    let mut worker = net.worker_unfunded_mining_off("w").await;
    worker
        .wait_for("the registration sent", WAIT, |r| r.transactions_in_flight.iter().any(|k| k == "register"))
        .await
        .unwrap();
    let pending: serde_json::Value = net.rpc("txpool_content", serde_json::json!([])).await;
    assert!(
        pending.to_string().to_lowercase().contains(&format!("{:x}", worker.address)),
        "the tx is in the pool"
    );
    worker.kill().await.unwrap();

    // Restarted before the transaction is mined, then mined: one registration.
    worker.restart(&common::zeppelin()).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.rpc("evm_setAutomine", serde_json::json!([true])).await;
    net.rpc("anvil_mine", serde_json::json!([2])).await;
    worker.wait_registered(WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(net.registrations_logged(worker.address).await, 1);
    assert_eq!(net.nonce(worker.address).await, 1, "exactly one transaction from the worker");
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert_eq!(
        log.matches("sending tx=register").count(),
        1,
        "signed once, rebroadcast after the crash:\n{log}"
    );
}

impl Net {
    /// A worker whose funding transaction is mined on demand (automine is off in that test).
    async fn worker_unfunded_mining_off(&self, name: &str) -> DevWorker {
        let spec = self.spec(name, "");
        let (identity, _) = zeppelin::identity::Identity::load_or_create(
            &spec.state_dir(),
            &zeppelin::identity::Password::none(),
        )
        .unwrap();
        let balance = U256::from(100u64) * U256::from(10u64).pow(U256::from(18u64));
        self.rpc("anvil_setBalance", serde_json::json!([identity.address(), balance])).await;
        DevWorker::start(&common::zeppelin(), &spec, None).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reorg_that_drops_the_registration_is_followed_and_repaired() {
    let net = Net::start("reorg").await;
    let before: String =
        serde_json::from_value(net.rpc("evm_snapshot", serde_json::json!([])).await).unwrap();
    let mut worker = net.worker("w", "", 1).await;
    worker.wait_registered(WAIT).await.unwrap();

    // The chain forgets the funding and the registration; a longer chain replaces them.
    let reverted: bool =
        serde_json::from_value(net.rpc("evm_revert", serde_json::json!([before])).await).unwrap();
    assert!(reverted);
    assert_eq!(net.registration(worker.address).await.stake, alloy::primitives::aliases::U96::ZERO);
    let balance = U256::from(100u64) * U256::from(10u64).pow(U256::from(18u64));
    net.rpc("anvil_setBalance", serde_json::json!([worker.address, balance])).await;
    net.rpc("anvil_mine", serde_json::json!([6])).await;

    eventually("the registration back on the new chain", || async {
        net.registration(worker.address).await.stake.to::<u128>() == 10u128.pow(18)
    })
    .await;
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(log.contains("chain reorganised"), "{log}");
    assert_eq!(net.registrations_logged(worker.address).await, 1, "one registration on the canonical chain");
}

#[test]
fn bad_config_files_stop_start_up_naming_the_key_and_the_reason() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text.lines().next().and_then(|l| l.strip_prefix("# expect: ")).unwrap_or_else(|| {
            panic!("{} lacks its '# expect: ' line", path.display());
        });
        let out = std::process::Command::new(common::zeppelin())
            .args(["daemon", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        let want = format!("zeppelin: error: {}: {expect}", path.display());
        assert!(
            stderr.trim_end().ends_with(&want) || stderr.contains(&want),
            "{}:\n{stderr}\nwant: {want}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} bad configs found");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_changed_while_stopped_is_applied_at_the_next_start() {
    let net = Net::start("offline-change").await;
    let mut worker = net.worker("w", "", 1).await;
    worker.wait_registered(WAIT).await.unwrap();
    assert!(worker.stop(Duration::from_secs(10)).await.unwrap().success());

    worker.spec.extra = "slots = 3".into();
    worker.spec.write_config(worker.http_port).unwrap();
    worker.restart(&common::zeppelin()).unwrap();
    eventually("three slots on chain", || async { net.registration(worker.address).await.slots == 3 }).await;
    assert_eq!(net.nonce(worker.address).await, 2, "register, then one update");
}

#[tokio::test(flavor = "multi_thread")]
async fn leave_gets_the_stake_back_to_the_payout_address_after_the_unbonding_delay() {
    let net = Net::start("leave").await;
    let payout = Address::repeat_byte(0x5a);
    let mut worker = net.worker("w", &format!("payout_address = \"{payout}\""), 1).await;
    worker.wait_registered(WAIT).await.unwrap();
    let out = std::process::Command::new(common::zeppelin())
        .args(["leave", "--socket"])
        .arg(worker.spec.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("leaving: "));
    worker
        .wait_for("leaving", WAIT, |r| matches!(r.registration.state, RegistrationState::Leaving { .. }))
        .await
        .unwrap();

    // Past the unbonding delay (120 s on the dev parameters): the stake comes home.
    net.rpc("evm_increaseTime", serde_json::json!([200])).await;
    net.rpc("anvil_mine", serde_json::json!([1])).await;
    worker
        .wait_for("gone, stake withdrawn and forwarded", WAIT, |r| {
            matches!(r.registration.state, RegistrationState::NotRegistered)
                && r.credits_wei == 0
                && r.transactions_in_flight.is_empty()
        })
        .await
        .unwrap();
    eventually("the stake at the payout address", || async {
        net.provider().get_balance(payout).await.unwrap() == U256::from(10u64).pow(U256::from(18u64))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // register, requestLeave, withdrawStake, withdraw, forward: and nothing twice.
    assert_eq!(net.nonce(worker.address).await, 5);
    assert_eq!(net.provider().get_balance(payout).await.unwrap(), U256::from(10u64).pow(U256::from(18u64)));
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_its_status_watchdog_pings_and_stopping() {
    let net = Net::start("notify").await;
    let socket_path = net.dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut spec = net.spec("w", "");
    spec.env = vec![
        ("NOTIFY_SOCKET".into(), socket_path.display().to_string()),
        // A watchdog of 2 s: systemd wants a ping at least every second.
        ("WATCHDOG_USEC".into(), "2000000".into()),
    ];
    let mut worker = DevWorker::start(&common::zeppelin(), &spec, Some(&net.keys[1])).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.iter().any(|m: &String| m.starts_with("STATUS=registered")) {
        let n =
            recv(&socket, &mut buf).unwrap_or_else(|e| panic!("no more notifications ({e}) after {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
    }
    let ready = seen.iter().position(|m| m == "READY=1").unwrap_or_else(|| panic!("no READY=1 in {seen:?}"));
    assert!(seen[..ready].iter().all(|m| !m.starts_with("STATUS=registered")), "READY comes first: {seen:?}");
    assert!(seen.last().unwrap().starts_with("STATUS=registered, 0 agreements"), "{seen:?}");
    // Pings keep coming while the loop turns.
    let pings = (0..20)
        .filter_map(|_| recv(&socket, &mut buf).ok().map(|n| buf[..n].to_vec()))
        .filter(|m| m.trim_ascii_end() == b"WATCHDOG=1")
        .count();
    assert!(pings >= 2, "watchdog pings: {pings}");
    assert!(worker.stop(Duration::from_secs(10)).await.unwrap().success());
    let mut rest = Vec::new();
    while let Ok(n) = recv(&socket, &mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned());
        if rest.last().unwrap() == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(rest.last().map(String::as_str), Some("STOPPING=1"), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_heads_over_the_websocket_wake_the_daemon_between_slow_polls() {
    let net = Net::start("ws").await;
    let mut spec = net.spec("w", "");
    spec.poll_interval = "5m".into();
    spec.ws_url = Some(format!("ws://127.0.0.1:{}", net.port));
    let mut worker = DevWorker::start(&common::zeppelin(), &spec, Some(&net.keys[1])).await.unwrap();
    // The first poll runs at start and sends the registration; only a new head can make the
    // daemon see it mined before the five-minute timer.
    let report = worker.wait_registered(Duration::from_secs(20)).await.unwrap();
    assert!(report.uptime_secs < 20);
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(log.contains("following new heads over the WebSocket"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfunded_worker_says_it_needs_ether_and_registers_once_funded() {
    let net = Net::start("unfunded").await;
    let spec = net.spec("w", "");
    let (identity, _) = zeppelin::identity::Identity::load_or_create(
        &spec.state_dir(),
        &zeppelin::identity::Password::none(),
    )
    .unwrap();
    let eth = U256::from(10u64).pow(U256::from(18u64));
    net.rpc("anvil_setBalance", serde_json::json!([identity.address(), eth / U256::from(2u64)])).await;
    let mut worker = DevWorker::start(&common::zeppelin(), &spec, None).await.unwrap();
    let report = worker
        .wait_for("degraded for want of ether", WAIT, |r| r.health.status == HealthStatus::Degraded)
        .await
        .unwrap();
    let expected = format!(
        "account {} holds 0.5 ETH but registering needs 1 ETH plus gas: send ETH to it",
        zeppelin::core::types::Address(identity.address().0.0)
    );
    assert!(report.health.reasons.contains(&expected), "{:?}", report.health.reasons);

    net.rpc("anvil_setBalance", serde_json::json!([identity.address(), eth * U256::from(2u64)])).await;
    let report = worker.wait_registered(WAIT).await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shallow_reorg_rewinds_to_a_checkpoint_and_redoes_the_lost_update() {
    let net = Net::start("rewind").await;
    let mut worker = net.worker("w", "", 1).await;
    worker.wait_registered(WAIT).await.unwrap();
    // A few blocks the daemon processes (and checkpoints) while registered.
    net.rpc("anvil_mine", serde_json::json!([3])).await;
    let head = net.provider().get_block_number().await.unwrap();
    worker.wait_for("caught up", WAIT, |r| r.chain.processed_block >= head).await.unwrap();
    let before: String =
        serde_json::from_value(net.rpc("evm_snapshot", serde_json::json!([])).await).unwrap();

    worker.spec.price = "3 gwei".into();
    worker.spec.write_config(worker.http_port).unwrap();
    worker.signal(Signal::HUP).unwrap();
    eventually("the update on chain", || async {
        net.registration(worker.address).await.pricePerSecond.to::<u64>() == 3 * GWEI
    })
    .await;
    let mined = net.provider().get_block_number().await.unwrap();
    worker.wait_for("the update processed", WAIT, |r| r.chain.processed_block >= mined).await.unwrap();

    // The block with the update is replaced by a longer chain without it.
    let reverted: bool =
        serde_json::from_value(net.rpc("evm_revert", serde_json::json!([before])).await).unwrap();
    assert!(reverted);
    assert_eq!(net.registration(worker.address).await.pricePerSecond.to::<u64>(), GWEI);
    net.rpc("anvil_mine", serde_json::json!([4])).await;

    eventually("the update redone on the new chain", || async {
        net.registration(worker.address).await.pricePerSecond.to::<u64>() == 3 * GWEI
    })
    .await;
    let log = std::fs::read_to_string(&worker.log).unwrap();
    assert!(log.contains("chain reorganised: rewound to the last common block"), "{log}");
    assert!(!log.contains("deeper than the saved checkpoints"), "{log}");
    assert_eq!(net.registrations_logged(worker.address).await, 1, "the registration survived the reorg");
}

/// One datagram; a signal landing during the wait (SIGCHLD of a child process the test
/// runtime reaps) is not the end of the notifications.
fn recv(socket: &std::os::unix::net::UnixDatagram, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match socket.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
