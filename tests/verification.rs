//! Issue 6 end to end: verification, health and payment on a real anvil with the compiled
//! dispatcher, real worker daemons (one drawn as the worker, the others as its verifiers)
//! running the client's image in the real Docker engine, and `zeppelin client buy` as a client
//! runs it. Money is checked to the wei: every balance change is what the contract's events
//! say was paid, minus the gas that party's own transactions burnt.
//!
//! The protocol runs on short windows here: 10 s epochs, 5 s report grace, 20 s to accept,
//! 60 s to declare ready, termination after 2 failed epochs in a row.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use alloy::eips::BlockId;
use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use zeppelin::chain::bindings::WorkerDispatcher;
use zeppelin::chain::deployment::Deployment;
use zeppelin::dev::{DevWorker, WorkerSpec};
use zeppelin::runtime::images::{ImageRecipe, build_image};
use zeppelin::runtime::{DockerRuntime, Runtime};

const WAIT: Duration = Duration::from_secs(120);
const EPOCH: u64 = 10;
const FEE: u128 = 1_000_000_000_000_000; // verifier fee per report: 1 milli-ETH
const SLASH: u128 = 100_000_000_000_000_000; // per failed epoch
const PENALTY: u128 = 50_000_000_000_000_000; // accept penalty
const READY_WINDOW: u64 = 60;

fn params() -> WorkerDispatcher::Params {
    let mut p = zeppelin::dev::dev_params();
    p.epochLength = EPOCH as u32;
    p.reportGrace = 5;
    p.acceptWindow = 20;
    p.readyWindow = READY_WINDOW as u32;
    p.maxConsecutiveFailures = 2;
    p.verifierFee = alloy::primitives::Uint::from(FEE);
    p.slashPerFailedEpoch = alloy::primitives::Uint::from(SLASH);
    p.acceptPenalty = alloy::primitives::Uint::from(PENALTY);
    p
}

/// A local marketplace: anvil (a block a second), the dispatcher, worker daemons, a client key.
struct Market {
    anvil: AnvilInstance,
    dir: PathBuf,
    deployment_file: PathBuf,
    dispatcher: Address,
    provider: DynProvider,
    runtime: DockerRuntime,
    workers: Vec<DevWorker>,
    client: PrivateKeySigner,
    key_file: PathBuf,
    tag: String,
}

impl Market {
    /// `prices`: one worker daemon per price.
    async fn start(name: &str, prices: &[&str]) -> Market {
        zeppelin::tls::install_crypto_provider();
        let runtime = DockerRuntime::connect(None).unwrap();
        runtime.ping().await.expect("this test needs the Docker engine (tools/dockerd.sh start)");
        let dir = std::env::temp_dir().join(format!("zeppelin-verify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let anvil = Anvil::at(common::anvil()).block_time(1).spawn();
        let keys: Vec<PrivateKeySigner> =
            anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
        let deployer = ProviderBuilder::new()
            .wallet(EthereumWallet::from(keys[0].clone()))
            .connect_http(anvil.endpoint_url());
        let receipt = WorkerDispatcher::deploy_builder(&deployer, params())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        let dispatcher = receipt.contract_address.unwrap();
        let deployment_file = dir.join("deployment.json");
        Deployment { chain_id: 31337, dispatcher, deploy_block: 0 }.save(&deployment_file).unwrap();
        let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url()).erased();

        let mut workers = Vec::new();
        for (i, price) in prices.iter().enumerate() {
            let spec = WorkerSpec {
                dir: dir.join(format!("w{i}")),
                rpc_url: anvil.endpoint(),
                deployment_file: deployment_file.clone(),
                price: (*price).into(),
                extra: String::new(),
                env: Vec::new(),
                ws_url: None,
                poll_interval: "500ms".into(),
            };
            let mut w = DevWorker::start(&common::zeppelin(), &spec, Some(&keys[i + 1])).await.unwrap();
            w.wait_registered(WAIT).await.unwrap();
            workers.push(w);
        }
        let tag = format!("zeppelin-test-verify-{name}:{}", std::process::id());
        build_image(&runtime, &tag, &ImageRecipe::httpd(8080, &format!("verified {name}"))).await.unwrap();
        let client = keys[9].clone();
        let key_file = dir.join("client.key");
        std::fs::write(&key_file, alloy::hex::encode(client.to_bytes())).unwrap();
        Market { anvil, dir, deployment_file, dispatcher, provider, runtime, workers, client, key_file, tag }
    }

    fn dispatcher(&self) -> WorkerDispatcher::WorkerDispatcherInstance<&DynProvider> {
        WorkerDispatcher::new(self.dispatcher, &self.provider)
    }

    /// The dispatcher as `key` sends to it.
    fn as_party(&self, key: &PrivateKeySigner) -> WorkerDispatcher::WorkerDispatcherInstance<DynProvider> {
        let p = ProviderBuilder::new()
            .wallet(EthereumWallet::from(key.clone()))
            .connect_http(self.anvil.endpoint_url())
            .erased();
        WorkerDispatcher::new(self.dispatcher, p)
    }

    fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|w| format!("== {} ==\n{}", w.address, std::fs::read_to_string(&w.log).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `zeppelin client buy` of the test image for `duration`, watched by `verifiers`.
    async fn buy(&self, duration: &str, verifiers: u8, wait: &str) -> std::process::Output {
        tokio::process::Command::new(common::zeppelin())
            .args(["client", "buy", "--rpc-url", &self.anvil.endpoint(), "--deployment"])
            .arg(&self.deployment_file)
            .arg("--key-file")
            .arg(&self.key_file)
            .args(["--image", &self.tag, "--port", "8080", "--cpus", "0.25", "--memory-mib", "128"])
            .args(["--duration", duration, "--verifiers", &verifiers.to_string(), "--wait", wait])
            .args(["--probe", "http:/index.html:200"])
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .output()
            .await
            .unwrap()
    }

    async fn buy_ok(&self, duration: &str, verifiers: u8) -> u64 {
        let output = self.buy(duration, verifiers, "90s").await;
        assert!(
            output.status.success(),
            "buy failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        self.last_id().await
    }

    async fn last_id(&self) -> u64 {
        self.dispatcher().nextAgreementId().call().await.unwrap().to::<u64>() - 1
    }

    async fn agreement(&self, id: u64) -> zeppelin::chain::bindings::WorkAgreement::Record {
        self.dispatcher().getAgreement(U256::from(id)).call().await.unwrap()
    }

    fn worker_index(&self, who: Address) -> usize {
        self.workers.iter().position(|w| w.address == who).expect("the drawn worker is one of ours")
    }

    async fn head(&self) -> u64 {
        self.provider.get_block_number().await.unwrap()
    }

    async fn balance_at(&self, who: Address, block: u64) -> U256 {
        self.provider.get_balance(who).block_id(BlockId::number(block)).await.unwrap()
    }

    /// Wei `who` spent on gas in blocks `from+1..=to`.
    async fn gas_spent(&self, who: Address, from: u64, to: u64) -> U256 {
        let mut spent = U256::ZERO;
        for b in from + 1..=to {
            let receipts =
                self.provider.get_block_receipts(BlockId::number(b)).await.unwrap().unwrap_or_default();
            for r in receipts.iter().filter(|r| r.from == who) {
                spent += U256::from(r.gas_used) * U256::from(r.effective_gas_price);
            }
        }
        spent
    }

    /// Logs of event `E` about agreement `id` (topic 1).
    async fn events<E: SolEvent>(&self, id: u64) -> Vec<E> {
        self.events_at(1, id).await
    }

    /// Logs of event `E` whose topic `n` (1 or 2) is agreement `id`.
    async fn events_at<E: SolEvent>(&self, n: u8, id: u64) -> Vec<E> {
        let topic = alloy::primitives::B256::from(U256::from(id));
        let filter = Filter::new().address(self.dispatcher).event_signature(E::SIGNATURE_HASH).from_block(0);
        let filter = if n == 1 { filter.topic1(topic) } else { filter.topic2(topic) };
        self.provider
            .get_logs(&filter)
            .await
            .unwrap()
            .iter()
            .filter_map(|l| l.log_decode::<E>().ok())
            .map(|l| l.inner.data)
            .collect()
    }

    /// `Withdrawn` logs of `who`.
    async fn withdrawals(&self, who: Address) -> Vec<U256> {
        let filter = Filter::new()
            .address(self.dispatcher)
            .event_signature(WorkerDispatcher::Withdrawn::SIGNATURE_HASH)
            .topic1(who.into_word())
            .from_block(0);
        self.provider
            .get_logs(&filter)
            .await
            .unwrap()
            .iter()
            .filter_map(|l| l.log_decode::<WorkerDispatcher::Withdrawn>().ok())
            .map(|l| l.inner.data.amount)
            .collect()
    }

    /// Waits until agreement `id` is in `state` and the daemons hold no credits (they withdraw
    /// by themselves).
    async fn wait_settled(&self, id: u64, state: u8) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
        loop {
            let a = self.agreement(id).await;
            let mut credits = U256::ZERO;
            for w in &self.workers {
                credits += self.dispatcher().credits(w.address).call().await.unwrap();
            }
            if a.state as u8 == state && credits.is_zero() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agreement {id} not settled (state {}, daemons' credits {credits}):\n{}",
                a.state as u8,
                self.logs()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The client withdraws its refund (as the client tool does).
    async fn client_withdraws(&self) {
        self.as_party(&self.client).withdraw().send().await.unwrap().get_receipt().await.unwrap();
    }

    async fn escrow(&self, id: u64) -> U256 {
        self.events::<WorkerDispatcher::AgreementCreated>(id).await[0].escrow
    }

    fn scope(&self, worker: Address) -> String {
        let deployment = Deployment { chain_id: 31337, dispatcher: self.dispatcher, deploy_block: 0 };
        zeppelin::app::work_scope(&deployment, zeppelin::chain::decode::address(worker))
    }

    async fn cleanup(self) {
        for w in &self.workers {
            for c in self.runtime.list(&self.scope(w.address)).await.unwrap_or_default() {
                let _ = self.runtime.remove(&self.scope(w.address), c.agreement).await;
            }
        }
        let _ = self.runtime.remove_image(&self.tag).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks that `who`'s balance moved by exactly `received` minus its own gas between the blocks.
async fn assert_balance(
    m: &Market,
    who: Address,
    what: &str,
    from: u64,
    to: u64,
    received: U256,
    paid: U256,
) {
    let before = m.balance_at(who, from).await;
    let after = m.balance_at(who, to).await;
    let gas = m.gas_spent(who, from, to).await;
    assert_eq!(
        after + gas + paid,
        before + received,
        "{what} {who}: before {before}, after {after}, gas {gas}"
    );
}

/// 1. An honest run: every epoch served, everyone paid exactly its share, the contract keeps
///    nothing of the agreement.
#[tokio::test(flavor = "multi_thread")]
async fn an_honest_agreement_pays_worker_verifiers_and_refunds_the_client_to_the_wei() {
    let m = Market::start("honest", &["1 gwei", "1 gwei", "1 gwei"]).await;
    let start = m.head().await;
    let contract_before = m.balance_at(m.dispatcher, start).await;
    let id = m.buy_ok("40s", 2).await;
    let a = m.agreement(id).await;
    let epochs = u64::from(a.epochs);
    assert_eq!(epochs, 4);
    m.wait_settled(id, 5).await;
    m.client_withdraws().await;
    let end = m.head().await;

    let escrow = m.escrow(id).await;
    let redeemed = m.events::<WorkerDispatcher::PaymentRedeemed>(id).await;
    assert_eq!(redeemed.len(), 1, "settled once");
    let r = &redeemed[0];
    assert_eq!((r.servedEpochs, r.failedEpochs), (U256::from(epochs), U256::ZERO), "{}", m.logs());
    let price = U256::from(a.pricePerSecond);
    assert_eq!(r.workerPay, price * U256::from(epochs * EPOCH));
    let (verifiers, reports) =
        m.dispatcher().verifiersOf(U256::from(id)).call().await.map(|v| (v.accounts, v.reports)).unwrap();
    assert_eq!(reports, vec![U256::from(epochs); 2], "each verifier reported every epoch on time");
    let paid = m.events::<WorkerDispatcher::VerifierPaid>(id).await;
    assert_eq!(paid.len(), 2);
    let fees: U256 = paid.iter().map(|p| p.fee).sum();
    assert_eq!(fees, U256::from(2 * epochs as u128 * FEE));
    assert_eq!(r.clientRefund, escrow - r.workerPay - fees, "the client gets the rest of the escrow");

    // Balances, to the wei: received = what the events credited, withdrawn exactly once.
    assert_eq!(m.withdrawals(a.worker).await, vec![r.workerPay], "the worker withdrew its pay once");
    assert_balance(&m, a.worker, "worker", start, end, r.workerPay, U256::ZERO).await;
    for (v, p) in verifiers.iter().zip(&paid) {
        assert_eq!(p.verifier, *v);
        assert_eq!(m.withdrawals(*v).await, vec![p.fee], "verifier {v} withdrew its fees once");
        assert_balance(&m, *v, "verifier", start, end, p.fee, U256::ZERO).await;
    }
    assert_balance(&m, m.client.address(), "client", start, end, r.clientRefund, escrow).await;
    assert_eq!(m.balance_at(m.dispatcher, end).await, contract_before, "the contract holds only the stakes");
    // Each verifier's daemon shows what it saw.
    for w in m.workers.iter().filter(|w| verifiers.contains(&w.address)) {
        let status = w.status().await.unwrap();
        let row = status.agreements.iter().find(|x| x.id == id).expect("the verifier lists it");
        assert!(row.work.as_deref().unwrap_or("").contains(&format!("{epochs} reports on chain")), "{row:?}");
    }
    m.cleanup().await;
}

/// 2. The container is killed mid-run: the verifiers report failures, the agreement is
///    terminated, the client is refunded for the unserved time and the worker's stake slashed.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_container_fails_its_epochs_is_terminated_refunded_and_slashed() {
    let m = Market::start("killed", &["1 gwei", "1 gwei", "1 gwei"]).await;
    let start = m.head().await;
    let id = m.buy_ok("100s", 2).await;
    let a = m.agreement(id).await;
    // The work dies and stays dead (container and image gone: nothing can restart it).
    let scope = m.scope(a.worker);
    m.runtime.remove(&scope, id).await.unwrap();
    let _ = m.runtime.remove_image(&m.tag).await;
    m.wait_settled(id, 5).await;
    m.client_withdraws().await;
    let end = m.head().await;

    let terminated = m.events::<WorkerDispatcher::AgreementTerminated>(id).await;
    assert_eq!(terminated.len(), 1, "terminated early:\n{}", m.logs());
    let end_epoch = terminated[0].endEpoch.to::<u64>();
    assert!(end_epoch < 10, "cut short: {end_epoch} of 10 epochs");
    let r = &m.events::<WorkerDispatcher::PaymentRedeemed>(id).await[0];
    let (served, failed) = (r.servedEpochs.to::<u64>(), r.failedEpochs.to::<u64>());
    assert!(failed >= 2 && served <= 1, "served {served}, failed {failed}");
    assert_eq!(
        r.workerPay,
        U256::from(a.pricePerSecond) * U256::from(served * EPOCH),
        "paid only what was served"
    );
    let slash = U256::from(failed as u128 * SLASH);
    let slashed = m.events_at::<WorkerDispatcher::StakeSlashed>(2, id).await;
    assert_eq!(slashed.len(), 1);
    assert_eq!(
        (slashed[0].worker, slashed[0].amount),
        (a.worker, slash),
        "the stake paid for each failed epoch"
    );
    let escrow = m.escrow(id).await;
    let fees: U256 = m.events::<WorkerDispatcher::VerifierPaid>(id).await.iter().map(|p| p.fee).sum();
    assert_eq!(
        r.clientRefund,
        escrow - r.workerPay - fees + slash,
        "refund of the unserved time, plus the slash"
    );
    assert_balance(&m, m.client.address(), "client", start, end, r.clientRefund, escrow).await;
    m.cleanup().await;
}

/// 3. One verifier lies (reports every epoch failed), one stays silent: the honest majority
///    stands, the worker is paid in full, and neither the liar nor the silent one earns a fee.
#[tokio::test(flavor = "multi_thread")]
async fn a_lying_or_silent_verifier_is_not_paid_and_cannot_swing_an_honest_majority() {
    let m = Market::start("liar", &["1 gwei", "1 gwei", "1 gwei"]).await;
    // Two more registered workers too small to be drawn as the worker, so both are drawn as
    // verifiers: the liar (keys 7) and the silent one (keys 8), run by this test, not a daemon.
    let keys: Vec<PrivateKeySigner> =
        m.anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
    let (liar, silent) = (keys[7].clone(), keys[8].clone());
    for key in [&liar, &silent] {
        let caps = WorkerDispatcher::Capabilities {
            arch: zeppelin::core::types::Arch::of_this_build().unwrap().code(),
            cpuMillis: 100,
            memoryMiB: 64,
            diskMiB: 64,
            pricePerSecond: alloy::primitives::Uint::from(1_000_000_000u64),
            maxDuration: 3600,
            slots: 1,
            encryptionKey: alloy::primitives::B256::repeat_byte(7),
        };
        m.as_party(key)
            .registerWorker(caps)
            .value(U256::from(params().minStake))
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }
    let id = m.buy_ok("40s", 4).await;
    let a = m.agreement(id).await;
    let epochs = u64::from(a.epochs);
    // The liar reports "failed" in every epoch, as soon as it opens.
    let lies = m.as_party(&liar);
    let mut lied = 0;
    while lied < epochs {
        let (started, epoch, _) = m
            .dispatcher()
            .epochOf(U256::from(id))
            .call()
            .await
            .map(|e| (e.started, e.epoch.to::<u64>(), e.reportDeadline))
            .unwrap();
        if started && epoch >= lied && epoch < epochs {
            lies.provideVerification(U256::from(id), U256::from(epoch), false)
                .send()
                .await
                .unwrap()
                .get_receipt()
                .await
                .unwrap();
            lied = epoch + 1;
        } else if epoch >= epochs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(lied, epochs, "the liar reported every epoch");
    m.wait_settled(id, 5).await;

    let r = &m.events::<WorkerDispatcher::PaymentRedeemed>(id).await[0];
    assert_eq!(
        (r.servedEpochs.to::<u64>(), r.failedEpochs.to::<u64>()),
        (epochs, 0),
        "the honest majority stands"
    );
    assert_eq!(r.workerPay, U256::from(a.pricePerSecond) * U256::from(epochs * EPOCH));
    let paid = m.events::<WorkerDispatcher::VerifierPaid>(id).await;
    let fee_of = |who: Address| paid.iter().filter(|p| p.verifier == who).map(|p| p.fee).sum::<U256>();
    assert!(fee_of(liar.address()).is_zero(), "the liar earns nothing: {paid:?}");
    assert!(fee_of(silent.address()).is_zero(), "the silent one earns nothing: {paid:?}");
    let honest: Vec<_> = paid.iter().filter(|p| !p.fee.is_zero()).collect();
    assert_eq!(honest.len(), 2, "the two honest verifiers are paid: {paid:?}");
    for p in honest {
        assert_ne!(p.verifier, liar.address());
        assert_eq!((p.reports, p.fee), (U256::from(epochs), U256::from(epochs as u128 * FEE)));
    }
    for key in [&liar, &silent] {
        assert!(m.dispatcher().credits(key.address()).call().await.unwrap().is_zero());
    }
    let escrow = m.escrow(id).await;
    assert_eq!(r.clientRefund, escrow - r.workerPay - U256::from(2 * epochs as u128 * FEE));
    m.cleanup().await;
}

/// 4. The drawn worker never accepts (its daemon went offline after registering): the client
///    cancels after the accept window and gets everything back, plus the accept penalty.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_never_accepts_is_cancelled_and_the_client_gets_everything_back() {
    // The cheapest worker (a class of its own, so the client's tool picks it) goes offline.
    let mut m = Market::start("noaccept", &["1 gwei", "1 gwei", "0.25 gwei"]).await;
    let offline = m.workers[2].address;
    m.workers[2].stop(Duration::from_secs(10)).await.unwrap();
    let start = m.head().await;
    let output = m.buy("40s", 2, "10s").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "nobody accepted, yet:\n{stderr}");
    assert!(stderr.contains("cancel"), "the client is told how to get its money back:\n{stderr}");
    let id = m.last_id().await;
    let a = m.agreement(id).await;
    assert_eq!(a.worker, offline);
    let stake_before = m.dispatcher().getWorker(offline).call().await.unwrap().stake;

    // Cancelling before the accept window closes is refused, clearly.
    let cancel = || {
        tokio::process::Command::new(common::zeppelin())
            .args(["client", "cancel", &id.to_string(), "--rpc-url", &m.anvil.endpoint(), "--deployment"])
            .arg(&m.deployment_file)
            .arg("--key-file")
            .arg(&m.key_file)
            .output()
    };
    let early = cancel().await.unwrap();
    assert!(!early.status.success(), "{}", String::from_utf8_lossy(&early.stdout));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let out = cancel().await.unwrap();
        if out.status.success() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    m.client_withdraws().await;
    let end = m.head().await;
    let escrow = m.escrow(id).await;
    let cancelled = m.events::<WorkerDispatcher::AgreementCancelled>(id).await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0].refund, escrow, "everything back");
    let slashed = m.events_at::<WorkerDispatcher::StakeSlashed>(2, id).await;
    assert_eq!(slashed.len(), 1);
    assert_eq!((slashed[0].worker, slashed[0].amount), (offline, U256::from(PENALTY)), "plus the penalty");
    let stake_after = m.dispatcher().getWorker(offline).call().await.unwrap().stake;
    assert_eq!(U256::from(stake_before) - U256::from(stake_after), U256::from(PENALTY));
    let received = escrow + U256::from(PENALTY);
    assert_balance(&m, m.client.address(), "client", start, end, received, escrow).await;
    m.cleanup().await;
}

/// 5. kill -9 of the worker's daemon mid-agreement: it resumes, the work completes, and it is
///    paid exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_daemon_killed_mid_agreement_resumes_and_is_paid_once() {
    let mut m = Market::start("crash", &["1 gwei", "1 gwei", "1 gwei"]).await;
    let start = m.head().await;
    let id = m.buy_ok("50s", 2).await;
    let a = m.agreement(id).await;
    let epochs = u64::from(a.epochs);
    let i = m.worker_index(a.worker);
    tokio::time::sleep(Duration::from_secs(12)).await;
    m.workers[i].kill().await.unwrap();
    m.workers[i].restart(&common::zeppelin()).unwrap();
    m.wait_settled(id, 5).await;
    let end = m.head().await;

    let redeemed = m.events::<WorkerDispatcher::PaymentRedeemed>(id).await;
    assert_eq!(redeemed.len(), 1);
    let r = &redeemed[0];
    // The daemon was down a moment: a verifier probing its health endpoint just then may
    // have judged that epoch failed (a tie then leaves it unjudged); the rest were served.
    assert!(r.servedEpochs.to::<u64>() >= epochs - 1, "served {} of {epochs}:\n{}", r.servedEpochs, m.logs());
    assert_eq!(r.workerPay, U256::from(a.pricePerSecond) * r.servedEpochs * U256::from(EPOCH));
    assert_eq!(m.withdrawals(a.worker).await, vec![r.workerPay], "paid once, withdrawn once");
    assert_balance(&m, a.worker, "worker", start, end, r.workerPay, U256::ZERO).await;
    let log = std::fs::read_to_string(&m.workers[i].log).unwrap();
    assert!(log.contains("resuming from the saved state"), "it resumed rather than starting afresh");
    m.cleanup().await;
}

/// 6. The client buys and never sends its image: the worker does not hold the slot forever.
///    After the ready window it aborts, is compensated for half the window, and is free again.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_pushes_does_not_hold_the_worker_s_slot_forever() {
    let m = Market::start("nopush", &["1 gwei", "1 gwei", "1 gwei"]).await;
    // The client tool's own buy, without the hello or the push that `client buy` does next.
    let market = zeppelin::chain::market::Market::new(
        m.anvil.endpoint_url(),
        Deployment { chain_id: 31337, dispatcher: m.dispatcher, deploy_block: 0 },
        m.client.clone(),
    );
    let wants = zeppelin::chain::market::Wants {
        arch: zeppelin::core::types::Arch::of_this_build().unwrap(),
        cpu_millis: 250,
        memory_mib: 128,
        disk_mib: 64,
        duration: 40,
        max_price_per_second: U256::from(10_000_000_000u64),
        verifiers: 2,
    };
    let choice = market.choose_class(&wants).await.unwrap();
    let bought = market.buy(&wants, choice, [1; 32], [2; 32]).await.unwrap();
    let id = bought.id;
    let worker = zeppelin::chain::decode::eth_address(bought.worker);
    let i = m.worker_index(worker);
    m.wait_settled(id, 7).await; // Aborted
    let aborted = m.events::<WorkerDispatcher::AgreementAborted>(id).await;
    assert_eq!(aborted.len(), 1);
    let a = m.agreement(id).await;
    let compensation = U256::from(a.pricePerSecond) * U256::from(READY_WINDOW / 2);
    assert_eq!(aborted[0].workerCompensation, compensation, "half the ready window's pay");
    assert_eq!(aborted[0].clientRefund, bought.escrow - compensation);
    assert_eq!(m.withdrawals(worker).await, vec![compensation]);
    let record = m.dispatcher().getWorker(worker).call().await.unwrap();
    assert_eq!(record.running, 0, "the slot is free again");
    let status = m.workers[i].status().await.unwrap();
    let row = status.agreements.iter().find(|x| x.id == id).unwrap();
    assert_eq!(row.stage.name(), "aborted", "{row:?}");
    m.cleanup().await;
}
