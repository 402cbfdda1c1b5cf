//! The client's side of payment against a real anvil: agreements driven to each end state with
//! direct contract calls (the test acts as the workers and the verifiers), and the client's
//! commands (`status`, `redeem`, `terminate`, `cancel`, `withdraw`, `list`) checked on their
//! output and on the balances, to the wei. Chain time is moved with `evm_increaseTime`.
mod common;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use zeppelin::chain::bindings::WorkerDispatcher;
use zeppelin::chain::decode;
use zeppelin::chain::deployment::Deployment;
use zeppelin::core::types::{Arch, Terms};

const PRICE: u64 = 1_000_000_000;

struct Net {
    anvil: AnvilInstance,
    dispatcher: Address,
    keys: Vec<PrivateKeySigner>,
    params: WorkerDispatcher::Params,
    class: u64,
    dir: std::path::PathBuf,
    deployment_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
}

impl Net {
    async fn start() -> Net {
        zeppelin::tls::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("zeppelin-client-pay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // A block per transaction; time moves when the test says so.
        let anvil = Anvil::at(common::anvil()).spawn();
        let keys: Vec<PrivateKeySigner> =
            anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
        let params = WorkerDispatcher::Params {
            epochLength: 10,
            reportGrace: 5,
            acceptWindow: 20,
            readyWindow: 40,
            ..zeppelin::dev::dev_params()
        };
        let deployer = wallet(&anvil, &keys[0]);
        let receipt = WorkerDispatcher::deploy_builder(&deployer, params.clone())
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        let dispatcher = receipt.contract_address.unwrap();
        let deployment_file = dir.join("deployment.json");
        Deployment { chain_id: 31337, dispatcher, deploy_block: 0 }.save(&deployment_file).unwrap();
        // The client's key (account 4).
        let key_file = dir.join("client.key");
        std::fs::write(&key_file, alloy::hex::encode(keys[4].to_bytes())).unwrap();
        // Three workers (accounts 1-3): each agreement draws one to work, the others verify.
        let caps = decode::capabilities(&Terms {
            arch: Arch::Amd64,
            cpu_millis: 2000,
            memory_mib: 2048,
            disk_mib: 10_000,
            price_per_second: PRICE.into(),
            max_duration_secs: 86_400,
            slots: 8,
            encryption_key: [7; 32],
        });
        let mut class = 0;
        for key in &keys[1..=3] {
            let p = wallet(&anvil, key);
            let d = WorkerDispatcher::new(dispatcher, &p);
            class = d.classOf(caps.clone()).call().await.unwrap();
            let two_eth = U256::from(2u64) * U256::from(10u64).pow(U256::from(18u64));
            let r = d
                .registerWorker(caps.clone())
                .value(two_eth)
                .send()
                .await
                .unwrap()
                .get_receipt()
                .await
                .unwrap();
            assert!(r.status());
        }
        Net { anvil, dispatcher, keys, params, class, dir, deployment_file, key_file }
    }

    fn as_key(&self, key: &PrivateKeySigner) -> WorkerDispatcher::WorkerDispatcherInstance<DynProvider> {
        WorkerDispatcher::new(self.dispatcher, wallet(&self.anvil, key))
    }

    fn key_of(&self, who: Address) -> &PrivateKeySigner {
        self.keys.iter().find(|k| k.address() == who).expect("one of ours")
    }

    async fn rpc(&self, method: &'static str, params: serde_json::Value) -> serde_json::Value {
        self.anvil_provider().raw_request(method.into(), params).await.unwrap()
    }

    fn anvil_provider(&self) -> DynProvider {
        ProviderBuilder::new().connect_http(self.anvil.endpoint_url()).erased()
    }

    /// Moves chain time on by `secs` and mines a block there.
    async fn advance(&self, secs: u64) {
        self.rpc("evm_increaseTime", serde_json::json!([secs])).await;
        self.rpc("evm_mine", serde_json::json!([])).await;
    }

    async fn now(&self) -> u64 {
        let p = self.anvil_provider();
        p.get_block_by_number(alloy::eips::BlockNumberOrTag::Latest).await.unwrap().unwrap().header.timestamp
    }

    /// The client buys `epochs` epochs with `verifiers` verifiers; returns (id, worker, escrow).
    async fn buy(&self, epochs: u64, verifiers: u64) -> (u64, Address, U256) {
        let d = self.as_key(&self.keys[4]);
        let duration = U256::from(epochs * u64::from(self.params.epochLength));
        let escrow = d.quote(self.class, duration, U256::from(verifiers)).call().await.unwrap();
        let req = WorkerDispatcher::Requirements {
            workerClass: self.class,
            arch: Arch::Amd64.code(),
            cpuMillis: 500,
            memoryMiB: 128,
            diskMiB: 64,
        };
        let work = WorkerDispatcher::WorkCommitment {
            imageDigest: B256::repeat_byte(1),
            probeSpecHash: B256::repeat_byte(2),
        };
        let ceiling = d.classPriceCeiling(self.class).call().await.unwrap();
        let receipt = d
            .buyContract(req, duration, ceiling, U256::from(verifiers), work)
            .value(escrow)
            .gas(2_000_000)
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(receipt.status());
        let created = receipt
            .inner
            .logs()
            .iter()
            .find_map(|l| l.log_decode::<WorkerDispatcher::AgreementCreated>().ok())
            .unwrap()
            .inner
            .data;
        (created.id.to(), created.worker, escrow)
    }

    /// The worker accepts and declares ready; returns the agreement's start.
    async fn start_work(&self, id: u64, worker: Address) -> u64 {
        let d = self.as_key(self.key_of(worker));
        d.acceptAgreement(U256::from(id)).send().await.unwrap().get_receipt().await.unwrap();
        d.declareReady(U256::from(id)).send().await.unwrap().get_receipt().await.unwrap();
        let a = d.getAgreement(U256::from(id)).call().await.unwrap();
        a.startedAt.to::<u64>()
    }

    async fn verifiers(&self, id: u64) -> Vec<Address> {
        self.as_key(&self.keys[0]).verifiersOf(U256::from(id)).call().await.unwrap().accounts
    }

    async fn report(&self, id: u64, verifier: Address, epoch: u64, ok: bool) {
        let r = self
            .as_key(self.key_of(verifier))
            .provideVerification(U256::from(id), U256::from(epoch), ok)
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(r.status(), "report {id}/{epoch}");
    }

    async fn credits(&self, who: Address) -> U256 {
        self.as_key(&self.keys[0]).credits(who).call().await.unwrap()
    }

    async fn balance(&self, who: Address) -> U256 {
        self.anvil_provider().get_balance(who).await.unwrap()
    }

    /// Runs `zeppelin client <args>` as the client: (success, stdout, stderr).
    async fn client(&self, args: &[&str]) -> (bool, String, String) {
        let output = tokio::process::Command::new(common::zeppelin())
            .arg("client")
            .args(args)
            .args(["--rpc-url", &self.anvil.endpoint(), "--deployment"])
            .arg(&self.deployment_file)
            .arg("--key-file")
            .arg(&self.key_file)
            .output()
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        // Shown with --nocapture: the commands' output as a user sees it.
        println!("$ zeppelin client {}\n{out}{err}", args.join(" "));
        (output.status.success(), out, err)
    }

    /// `client <args>` must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.client(args).await;
        assert!(ok, "{args:?} failed:\n{out}\n{err}");
        out
    }

    /// `client <args>` must fail saying `why`; its stderr.
    async fn refused(&self, args: &[&str], why: &str) -> String {
        let (ok, out, err) = self.client(args).await;
        assert!(!ok && err.contains(why), "{args:?}: expected a refusal with {why:?}, got:\n{out}\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    }

    /// The gas fee of the transaction named in a command's output (`tx 0x...`).
    async fn fee_of(&self, out: &str) -> U256 {
        let hash: B256 = out.split("tx ").nth(1).unwrap()[..66].parse().unwrap();
        let r = self.anvil_provider().get_transaction_receipt(hash).await.unwrap().unwrap();
        U256::from(r.gas_used) * U256::from(r.effective_gas_price)
    }
}

fn wallet(anvil: &AnvilInstance, key: &PrivateKeySigner) -> DynProvider {
    ProviderBuilder::new()
        .wallet(EthereumWallet::from(key.clone()))
        .connect_http(anvil.endpoint_url())
        .erased()
}

fn wei(v: U256) -> String {
    format!("{v} wei")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_follows_settles_terminates_cancels_and_withdraws_to_the_wei() {
    let net = Net::start().await;
    let p = net.params.clone();
    let epoch = u64::from(p.epochLength);
    let fee = U256::from(p.verifierFee);
    let slash = U256::from(p.slashPerFailedEpoch);
    let client = net.keys[4].address();

    // Nothing bought yet: nothing to withdraw is a message, not a failure.
    let out = net.ok(&["withdraw"]).await;
    assert!(out.starts_with("nothing to withdraw"), "{out}");
    net.refused(&["redeem", "9"], "there is no agreement 9").await;

    // 1. Three epochs, two verifiers: served, failed, a tie; settled by the client.
    let (id, worker, escrow) = net.buy(3, 2).await;
    assert_eq!(id, 1);
    net.refused(&["redeem", "1"], "it never started").await;
    let started = net.start_work(id, worker).await;
    let v = net.verifiers(id).await;
    assert_eq!(v.len(), 2);
    net.report(id, v[0], 0, true).await;
    net.report(id, v[1], 0, true).await;
    let out = net.ok(&["status", "1"]).await;
    assert!(out.starts_with("agreement 1: running"), "{out}");
    assert!(out.contains("    0           open              2 of 2 reported, 2 ok\n"), "{out}");
    assert!(out.contains("    1-2         to come\n"), "{out}");
    assert!(out.contains(&format!("  escrowed      {} (", wei(escrow))), "{out}");
    net.advance(epoch).await;
    net.report(id, v[0], 1, false).await;
    net.report(id, v[1], 1, false).await;
    net.advance(epoch).await;
    net.report(id, v[0], 2, true).await;
    net.report(id, v[1], 2, false).await;
    let err = net.refused(&["redeem", "1"], "it settles at").await;
    let settles = started + 3 * epoch + u64::from(p.reportGrace);
    let wait = settles - net.now().await;
    assert!(err.contains(&format!("in {wait} s")), "{err}");
    // Not a run of two failures: a single failed epoch does not terminate.
    net.advance(epoch + u64::from(p.reportGrace)).await;
    net.refused(&["terminate", "1"], "no 2 failed epochs in a row").await;
    let out = net.ok(&["status", "1"]).await;
    for row in [
        "    0           served            2 of 2 reported, 2 ok\n",
        "    1           failed            2 of 2 reported, 0 ok\n",
        "    2           unjudged          2 of 2 reported, 1 ok\n",
        "settles at    ",
    ] {
        assert!(out.contains(row), "no {row:?} in:\n{out}");
    }
    let out = net.ok(&["redeem", "1"]).await;
    assert!(out.starts_with("agreement 1 settled ("), "{out}");
    let worker_pay = U256::from(epoch * PRICE);
    // Verifiers are paid for the reports that agreed with each epoch's outcome: both in epochs
    // 0 and 1, neither in the tied epoch 2.
    let fees = fee * U256::from(4u64);
    let back = escrow - worker_pay - fees + slash;
    assert!(out.contains(&format!("the worker earned {}", wei(worker_pay))), "{out}");
    assert!(out.contains(&format!("you got back {}", wei(back))), "{out}");
    // Twice: nothing is claimed again.
    let out = net.ok(&["redeem", "1"]).await;
    assert!(out.starts_with("agreement 1 is already settled (finished)"), "{out}");
    let out = net.ok(&["terminate", "1"]).await;
    assert!(out.contains("already settled"), "{out}");
    let out = net.ok(&["status", "1"]).await;
    for row in [
        "agreement 1: finished\n".to_owned(),
        "(1 served, 1 failed epoch(s))".into(),
        format!("  worker earned {} (", wei(worker_pay)),
        format!("  verifier fee  {} (", wei(fee * U256::from(2u64))),
        format!(") to {} for 2 reports", v[0]),
        format!("  slashed       {} (0.1 ETH) from the worker's stake", wei(slash)),
        format!("  refunded      {} (", wei(back)),
        "  still held    0 wei (0 ETH)".into(),
        format!("  your credits  {} (", wei(back)),
    ] {
        assert!(out.contains(&row), "no {row:?} in:\n{out}");
    }
    assert_eq!(net.credits(worker).await, worker_pay);
    assert_eq!(net.credits(v[1]).await, fee * U256::from(2u64));

    // Withdraw moves exactly the credit (less the gas the client paid).
    let before = net.balance(client).await;
    let out = net.ok(&["withdraw"]).await;
    assert!(out.starts_with(&format!("withdrew {}", wei(back))), "{out}");
    let gas = net.fee_of(&out).await;
    assert_eq!(net.balance(client).await, before + back - gas);
    assert_eq!(net.credits(client).await, U256::ZERO);
    let out = net.ok(&["withdraw"]).await;
    assert!(out.starts_with("nothing to withdraw"), "{out}");

    // 2. Four epochs, one verifier: two failures in a row, terminated by the client.
    let (id, worker, escrow) = net.buy(4, 1).await;
    assert_eq!(id, 2);
    let started = net.start_work(id, worker).await;
    let v = net.verifiers(id).await;
    net.report(id, v[0], 0, false).await;
    net.advance(epoch).await;
    net.report(id, v[0], 1, false).await;
    net.advance(u64::from(p.reportGrace)).await;
    let err = net.refused(&["terminate", "2"], "no 2 failed epochs in a row").await;
    assert!(err.contains("0 failed, 1 open"), "{err}");
    net.advance(started + 2 * epoch + u64::from(p.reportGrace) - net.now().await).await;
    let out = net.ok(&["terminate", "2"]).await;
    assert!(out.starts_with("agreement 2 terminated after failed epochs 0-1"), "{out}");
    assert!(out.contains("epochs from 3 on are refunded"), "{out}");
    let out = net.ok(&["terminate", "2"]).await;
    assert!(out.starts_with("agreement 2 is already terminated"), "{out}");
    let out = net.ok(&["status", "2"]).await;
    assert!(out.starts_with("agreement 2: terminated"), "{out}");
    assert!(out.contains("    3           refunded (terminated)\n"), "{out}");
    net.refused(&["redeem", "2"], "it settles at").await;
    net.advance(epoch).await;
    let out = net.ok(&["redeem", "2"]).await;
    let back = escrow - fee * U256::from(2u64) + slash * U256::from(2u64);
    assert!(
        out.contains("the worker earned 0 wei") && out.contains(&format!("you got back {}", wei(back))),
        "{out}"
    );

    // 3. Never accepted: cancelled after the accept window; the worker's penalty comes too.
    let (id, _, escrow) = net.buy(2, 1).await;
    assert_eq!(id, 3);
    let err = net.refused(&["cancel", "3"], "cannot be cancelled yet: the worker may accept until").await;
    assert!(err.contains(" s"), "{err}");
    net.refused(&["terminate", "3"], "only a running agreement").await;
    net.advance(u64::from(p.acceptWindow)).await;
    let out = net.ok(&["cancel", "3"]).await;
    let back3 = escrow + U256::from(p.acceptPenalty);
    assert!(out.contains(&format!("): {} (0.05 ETH) credited to you", wei(back3))), "{out}");
    let out = net.ok(&["cancel", "3"]).await;
    assert!(out.starts_with("agreement 3 is already cancelled"), "{out}");
    let out = net.ok(&["status", "3"]).await;
    assert!(out.contains(&format!("  refunded      {} (", wei(back3))), "{out}");

    // 4. Accepted, never ready: the worker aborts after the ready window.
    let (id, worker, escrow) = net.buy(2, 1).await;
    let d = net.as_key(net.key_of(worker));
    d.acceptAgreement(U256::from(id)).send().await.unwrap().get_receipt().await.unwrap();
    net.advance(u64::from(p.readyWindow)).await;
    let r = d.abortAgreement(U256::from(id)).send().await.unwrap().get_receipt().await.unwrap();
    assert!(r.status());
    let compensation = U256::from(PRICE * u64::from(p.readyWindow) / 2);
    let out = net.ok(&["status", &id.to_string()]).await;
    assert!(out.contains(&format!("  worker earned {} (", wei(compensation))), "{out}");
    assert!(out.contains(&format!("  refunded      {} (", wei(escrow - compensation))), "{out}");
    assert!(out.contains("  still held    0 wei"), "{out}");

    // The list: every agreement, its state, what it escrowed and what came back.
    let out = net.ok(&["list"]).await;
    let line =
        |id: u64| out.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap_or_default().to_owned();
    assert!(line(1).contains("finished"), "{out}");
    assert!(line(2).contains("finished") && line(2).ends_with(&back.to_string()), "{out}");
    assert!(line(3).contains("cancelled") && line(3).ends_with(&back3.to_string()), "{out}");
    assert!(line(4).contains("aborted") && line(4).ends_with(&(escrow - compensation).to_string()), "{out}");

    // Everything the client is owed, withdrawn at once, to the wei.
    let owed = back + back3 + escrow - compensation;
    assert_eq!(net.credits(client).await, owed);
    let before = net.balance(client).await;
    let out = net.ok(&["withdraw"]).await;
    let gas = net.fee_of(&out).await;
    assert_eq!(net.balance(client).await, before + owed - gas);
    let _ = std::fs::remove_dir_all(&net.dir);
}
