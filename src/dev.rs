//! `zeppelin dev`: the embedded local default behind the README's main command.
//!
//! It brings up a complete local marketplace on this machine, step by step, printing readable
//! progress. Today that is a local chain (anvil) with the protocol contracts deployed; worker
//! daemons and a buying client join as those capabilities land (the README says which).
use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::primitives::U256;
use alloy::primitives::aliases::U96;
use alloy::primitives::utils::format_ether;
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anyhow::Context;

use crate::chain::bindings::WorkerDispatcher;
use crate::chain::deployment::Deployment;
use crate::cli::DevArgs;

/// Runs the local marketplace until interrupted (or, with `--once`, until it is set up).
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    println!("zeppelin dev: a local marketplace on this machine");

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
        "            min stake {} ETH, verifier fee {} ETH per report, {} s epochs; deployment file {}",
        eth(params.minStake),
        eth(params.verifierFee),
        params.epochLength,
        deployment_file.display()
    );

    if args.once {
        println!("set up; stopping (--once)");
        return Ok(());
    }
    println!("running; press Ctrl-C to stop");
    wait_for_shutdown_signal().await?;
    println!("stopping the local marketplace");
    Ok(())
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
        verifierFee: U96::from(MILLI_ETH),
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

/// Wei as ETH without trailing zeros: `1`, `0.001`.
fn eth(wei: U96) -> String {
    let text = format_ether(U256::from(wei));
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
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
