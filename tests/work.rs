//! Issue 5 end to end: two worker daemons on a real anvil (one is drawn as the worker, the other
//! as its verifier), a client buying with `zeppelin client buy`, the image pushed over TLS into
//! the real Docker engine, the container started under its limits and reachable; a `kill -9` of
//! the worker's daemon mid-run re-adopts the container; the end of the agreement removes it, the
//! worker's daemon settles it, and the client withdraws its refund.
mod common;

use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::node_bindings::Anvil;
use alloy::providers::ProviderBuilder;
use alloy::signers::local::PrivateKeySigner;
use zeppelin::api::status::AgreementRole;
use zeppelin::chain::bindings::WorkerDispatcher;
use zeppelin::chain::deployment::Deployment;
use zeppelin::dev::{DevWorker, WorkerSpec};
use zeppelin::runtime::images::{ImageRecipe, build_image};
use zeppelin::runtime::{DockerRuntime, Runtime};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_client_buys_pushes_and_reaches_its_work_which_survives_a_daemon_crash_and_ends_on_time() {
    zeppelin::tls::install_crypto_provider();
    let runtime = DockerRuntime::connect(None).unwrap();
    runtime.ping().await.expect("this test needs the Docker engine (tools/dockerd.sh start)");
    let dir = std::env::temp_dir().join(format!("zeppelin-work-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // A chain with a block every second: the agreement's end is chain time.
    let anvil = Anvil::at(common::anvil()).block_time(1).spawn();
    let keys: Vec<PrivateKeySigner> =
        anvil.keys().iter().map(|k| PrivateKeySigner::from(k.clone())).collect();
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
    let deployment_file = dir.join("deployment.json");
    Deployment { chain_id: 31337, dispatcher: receipt.contract_address.unwrap(), deploy_block: 0 }
        .save(&deployment_file)
        .unwrap();

    let spec = |name: &str| WorkerSpec {
        dir: dir.join(name),
        rpc_url: anvil.endpoint(),
        deployment_file: deployment_file.clone(),
        price: "1 gwei".into(),
        extra: String::new(),
        env: Vec::new(),
        ws_url: None,
        poll_interval: "500ms".into(),
    };
    let mut workers = Vec::new();
    for (i, name) in ["w1", "w2"].iter().enumerate() {
        let mut w = DevWorker::start(&common::zeppelin(), &spec(name), Some(&keys[i + 1])).await.unwrap();
        w.wait_registered(WAIT).await.unwrap();
        workers.push(w);
    }

    let tag = format!("zeppelin-test-work:{}", std::process::id());
    let page = format!("hello from agreement test {}", std::process::id());
    build_image(&runtime, &tag, &ImageRecipe::httpd(8080, &page)).await.unwrap();
    let key_file = dir.join("client.key");
    std::fs::write(&key_file, alloy::hex::encode(keys[5].to_bytes())).unwrap();

    let buy = |extra: &[&str]| {
        let mut command = tokio::process::Command::new(common::zeppelin());
        command
            .args(["client", "buy", "--rpc-url", &anvil.endpoint(), "--deployment"])
            .arg(&deployment_file)
            .arg("--key-file")
            .arg(&key_file)
            .args(["--port", "8080", "--cpus", "0.5", "--wait", "90s"])
            .args(extra)
            .env("XDG_CACHE_HOME", dir.join("cache"));
        async move { command.output().await.unwrap() }
    };
    // Refusals first: each one says why, and buys nothing.
    for (extra, why) in [
        (vec!["--image", &tag, "--memory-mib", "50000000"], "no worker fits"),
        (vec!["--image", &tag, "--max-price", "1wei"], "price too low"),
        (vec!["--image", "zeppelin-test-no-such-image:0"], "no image"),
        (vec!["--image", &tag, "--probe", "http:nopath"], "must start with '/'"),
    ] {
        let output = buy(&extra).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(why),
            "{extra:?}: expected {why:?}, got:\n{stderr}"
        );
    }
    let list = tokio::process::Command::new(common::zeppelin())
        .args(["client", "list", "--rpc-url", &anvil.endpoint(), "--deployment"])
        .arg(&deployment_file)
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&list.stdout).starts_with("no agreements bought by"),
        "refusals bought nothing"
    );

    let output = buy(&[
        "--image",
        &tag,
        "--memory-mib",
        "128",
        "--duration",
        "60s",
        "--probe",
        "http:/index.html:200",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let log_files: Vec<_> = workers.iter().map(|w| w.spec.dir.join("daemon.log")).collect();
    let logs = || {
        log_files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert!(
        output.status.success(),
        "buy failed:\n{stdout}\n{}\nworker logs:\n{}",
        String::from_utf8_lossy(&output.stderr),
        logs()
    );
    // The readable progress, and where the work is.
    for step in ["bought in block", "sealed to its key", "pushing to", "pushed in", "declared ready"] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    let endpoint = stdout
        .lines()
        .find_map(|l| l.split("work reachable at ").nth(1))
        .unwrap_or_else(|| panic!("no endpoint in:\n{stdout}"))
        .trim()
        .to_owned();
    let fetch = |endpoint: String| async move {
        reqwest::get(format!("http://{endpoint}/index.html")).await.ok()?.text().await.ok()
    };
    assert_eq!(fetch(endpoint.clone()).await.as_deref(), Some(page.as_str()));
    let status = tokio::process::Command::new(common::zeppelin())
        .args(["client", "status", "1", "--rpc-url", &anvil.endpoint(), "--deployment"])
        .arg(&deployment_file)
        .arg("--key-file")
        .arg(&key_file)
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("agreement 1: running") && status.contains(&endpoint), "{status}");

    // The worker that was drawn says so, and runs the container under the agreement's limits.
    let mut worker = None;
    for w in &workers {
        let status = w.status().await.unwrap();
        if status.agreements.iter().any(|a| a.role == AgreementRole::Worker) {
            worker = Some(w.address);
        }
    }
    let worker_index = workers.iter().position(|w| Some(w.address) == worker).expect("one worker runs it");
    let w = &mut workers[worker_index];
    let status = w.status().await.unwrap();
    let agreement = status.agreements.iter().find(|a| a.role == AgreementRole::Worker).unwrap().clone();
    assert!(agreement.work.as_deref().unwrap_or("").starts_with("running on port"), "{agreement:?}");
    let scope = |address: alloy::primitives::Address| {
        format!(
            "31337-{}-{}",
            &alloy::hex::encode(receipt.contract_address.unwrap())[..12],
            &alloy::hex::encode(address)[..12]
        )
    };
    let containers = runtime.list(&scope(w.address)).await.unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let before = containers[0].container_id.clone();
    let state = runtime.state(&scope(w.address), agreement.id).await.unwrap().unwrap();
    assert_eq!(state.memory_limit, Some(128 << 20));

    // kill -9 of the daemon: the container keeps serving, and the restarted daemon adopts it.
    w.kill().await.unwrap();
    assert_eq!(fetch(endpoint.clone()).await.as_deref(), Some(page.as_str()));
    w.restart(&common::zeppelin()).unwrap();
    w.wait_for("running the work again", WAIT, |s| {
        s.agreements
            .iter()
            .any(|a| a.id == agreement.id && a.work.as_deref().is_some_and(|t| t.starts_with("running")))
    })
    .await
    .unwrap();
    let after = runtime.list(&scope(w.address)).await.unwrap();
    assert_eq!(after.iter().map(|c| c.container_id.clone()).collect::<Vec<_>>(), vec![before]);

    // The agreement ends (60 s after it started): the container is stopped and removed.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !runtime.list(&scope(w.address)).await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the container outlived its agreement:\n{}", logs());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(fetch(endpoint).await, None, "nothing answers once the agreement is over");

    // The worker's daemon settles it once the last reporting window closes (no verifier reports
    // yet: every epoch unjudged, the whole escrow back to the client), and the client withdraws.
    let client = |args: &[&str]| {
        let mut command = tokio::process::Command::new(common::zeppelin());
        command
            .arg("client")
            .args(args)
            .args(["--rpc-url", &anvil.endpoint(), "--deployment"])
            .arg(&deployment_file)
            .arg("--key-file")
            .arg(&key_file);
        async move {
            let out = command.output().await.unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let status = client(&["status", "1"]).await;
        if status.starts_with("agreement 1: finished") {
            break status;
        }
        assert!(tokio::time::Instant::now() < deadline, "not settled:\n{status}\n{}", logs());
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    // The other daemon verified it: the worker is paid for the served epochs, the verifier for
    // its reports, the client gets the rest, and the contract keeps nothing of it.
    // (An epoch whose probe hit the moment the worker's daemon was down may have failed: then
    // a slash from its stake went to the client too.)
    let amount = |label: &str| -> u128 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map_or(0, |line| line.split(' ').next().unwrap().parse().unwrap())
    };
    let (escrow, earned, fee, slashed, refunded) = (
        amount("  escrowed      "),
        amount("  worker earned "),
        amount("  verifier fee  "),
        amount("  slashed       "),
        amount("  refunded      "),
    );
    assert!(escrow > 0 && refunded > 0, "{status}");
    assert!(earned > 0, "the worker was paid:\n{status}");
    assert_eq!(escrow + slashed, earned + fee + refunded, "{status}");
    assert!(status.contains("  still held    0 wei"), "{status}");
    let withdrew = client(&["withdraw"]).await;
    assert!(withdrew.starts_with(&format!("withdrew {refunded} wei")), "{withdrew}");
    let _ = runtime.remove_image(&tag).await;
    let _ = std::fs::remove_dir_all(&dir);
}
