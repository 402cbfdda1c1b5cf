//! `zeppelin dev`: the embedded local default behind the README's main command.
//!
//! It brings up a complete local marketplace on this machine, step by step, printing readable
//! progress. Today that is a local chain (anvil) with the protocol contracts deployed; worker
//! daemons and a buying client join as those capabilities land (the README says which).
use std::time::Duration;

use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::providers::{Provider, ProviderBuilder};
use anyhow::Context;

use crate::cli::DevArgs;

/// Runs the local marketplace until interrupted (or, with `--once`, until it is set up).
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    println!("zeppelin dev: a local marketplace on this machine");

    let anvil = start_chain(&args).await?;
    let provider = ProviderBuilder::new().connect_http(anvil.endpoint_url());
    let chain_id = provider
        .get_chain_id()
        .await
        .context("asking the local chain for its id")?;
    let head = provider
        .get_block_number()
        .await
        .context("asking the local chain for its head")?;
    println!(
        "  chain     anvil at {} (chain id {chain_id}, head block {head}, {} funded dev accounts, {})",
        anvil.endpoint(),
        anvil.addresses().len(),
        block_time_label(args.block_time),
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
    tokio::task::spawn_blocking(move || anvil.try_spawn())
        .await?
        .with_context(|| format!("starting the local chain with `{anvil_path}` (is anvil installed? run tools/setup.sh)"))
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
