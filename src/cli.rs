//! The command line: one binary, subcommands that stay thin and call into the library.
//!
//! Subcommands appear here as their capability lands; nothing is listed that does not work.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::logging::LogFormat;

/// Zeppelin: sell this machine's CPU and memory on a decentralized compute marketplace.
#[derive(Debug, Parser)]
#[command(name = "zeppelin", version = crate::version::LONG, propagate_version = true)]
pub struct Cli {
    /// Log line format (`journal` under systemd).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ZEPPELIN_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a complete local marketplace on this machine: a local chain with the protocol
    /// contracts deployed (worker daemons and a client join it as those capabilities land).
    Dev(DevArgs),
}

/// Options of `zeppelin dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// The `anvil` executable that runs the local chain.
    #[arg(long, env = "ZEPPELIN_ANVIL", default_value = "anvil")]
    pub anvil: PathBuf,

    /// Seconds between blocks on the local chain (0: a block per transaction).
    #[arg(long, default_value_t = 1)]
    pub block_time: u64,

    /// Port for the chain's JSON-RPC (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub rpc_port: u16,

    /// Directory for the local marketplace's files (deployment file, later the daemons' state).
    #[arg(long, default_value = ".dev")]
    pub dir: PathBuf,

    /// Set everything up, print the summary, then stop instead of running until interrupted.
    #[arg(long)]
    pub once: bool,
}

/// Runs the parsed command line. The only place that builds the async runtime.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Dev(args) => runtime.block_on(crate::dev::run(args)),
    }
}
