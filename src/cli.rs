//! The command line: one binary, subcommands that stay thin and call into the library.
//!
//! Subcommands appear here as their capability lands; nothing is listed that does not work.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::api::{Request, Response};
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
    /// Run the worker daemon (what systemd starts): register this machine, follow the chain,
    /// answer agreements, collect pay.
    Daemon(ConfigArg),
    /// Show what the running daemon is doing.
    Status {
        #[command(flatten)]
        target: SocketArgs,
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Leave the market: no new work; the stake comes back after the unbonding delay, once the
    /// running agreements have closed.
    Leave(SocketArgs),
    /// Stop taking new work (running agreements continue).
    Pause(SocketArgs),
    /// Take new work again after `pause`.
    Resume(SocketArgs),
    /// Re-read the config file (as SIGHUP or `systemctl reload zeppelin` do).
    Reload(SocketArgs),
    /// Run a complete local marketplace on this machine: a local chain with the protocol
    /// contracts deployed (worker daemons and a client join it as those capabilities land).
    Dev(DevArgs),
    /// Write the man pages or shell completions into a directory (for packaging).
    #[command(hide = true)]
    Generate {
        /// What to write.
        #[arg(value_enum)]
        what: crate::generate::Artifact,
        /// The directory to write into (created if missing).
        dir: PathBuf,
    },
}

/// Where the config file is.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The config file.
    #[arg(short, long, env = "ZEPPELIN_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

/// How to reach the running daemon: its control socket, given or read from its config file.
#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The daemon's control socket (default: `api.control_socket` of the config file).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

impl SocketArgs {
    /// The socket to talk to. A config file that cannot be read is no reason to fail here:
    /// the default socket is tried, and the daemon's answer (or absence) says the rest.
    fn socket(&self) -> PathBuf {
        if let Some(socket) = &self.socket {
            return socket.clone();
        }
        match crate::config::Config::load(&self.config.config) {
            Ok(config) => config.api.control_socket,
            Err(_) => PathBuf::from(crate::api::client::DEFAULT_SOCKET),
        }
    }
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

    /// How many worker daemons to start.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,

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
        Command::Daemon(ConfigArg { config: path }) => {
            // A bad config stops start-up here, naming the key and the reason.
            let config = crate::config::Config::load(&path)?;
            runtime.block_on(crate::app::run(&path, config))
        }
        Command::Status { target, json } => {
            let report = match runtime.block_on(control(&target, Request::Status))? {
                Response::Status { report } => report,
                other => anyhow::bail!("unexpected answer from the daemon: {other:?}"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", crate::api::render_human(&report));
            }
            Ok(())
        }
        Command::Leave(target) => command(&runtime, &target, Request::Leave),
        Command::Pause(target) => command(&runtime, &target, Request::Pause),
        Command::Resume(target) => command(&runtime, &target, Request::Resume),
        Command::Reload(target) => command(&runtime, &target, Request::Reload),
        Command::Generate { what, dir } => {
            for file in crate::generate::run(what, &dir)? {
                println!("{}", file.display());
            }
            Ok(())
        }
    }
}

async fn control(target: &SocketArgs, request: Request) -> anyhow::Result<Response> {
    Ok(crate::api::client::request(&target.socket(), request).await?)
}

/// Sends a command and prints the daemon's answer; a refusal is an error.
fn command(runtime: &tokio::runtime::Runtime, target: &SocketArgs, request: Request) -> anyhow::Result<()> {
    match runtime.block_on(control(target, request))? {
        Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Error { message } => anyhow::bail!("the daemon refused: {message}"),
        Response::Status { .. } => anyhow::bail!("unexpected answer from the daemon"),
    }
}
