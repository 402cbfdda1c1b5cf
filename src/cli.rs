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
    /// contracts deployed, worker daemons registering, and a client buying time on one of them
    /// for a small web server image, pushing it and fetching its page.
    Dev(DevArgs),
    /// Buy time on a worker and run an image there; follow or cancel what you bought.
    #[command(subcommand)]
    Client(ClientCommand),
    /// NAT traversal diagnostics: can the router map a port for this machine?
    #[command(subcommand)]
    Nat(NatCommand),
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

/// The client's commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Buy time on a worker, push a local image to it, and wait until it runs.
    Buy(Box<BuyArgs>),
    /// Show one agreement (and, for its client, where the work is reachable).
    Status {
        #[command(flatten)]
        market: MarketArgs,
        /// The agreement.
        id: u64,
    },
    /// List the agreements this key bought.
    List(MarketArgs),
    /// Cancel an agreement the worker did not accept within its accept window: everything
    /// comes back.
    Cancel {
        #[command(flatten)]
        market: MarketArgs,
        /// The agreement.
        id: u64,
    },
    /// Settle an agreement whose last reporting window has closed, if its worker has not
    /// (anyone may): the worker, the verifiers and you are credited your shares.
    Redeem {
        #[command(flatten)]
        market: MarketArgs,
        /// The agreement.
        id: u64,
    },
    /// End a running agreement early after a run of failed epochs (the protocol's
    /// `maxConsecutiveFailures`): the epochs after the current one are refunded.
    Terminate {
        #[command(flatten)]
        market: MarketArgs,
        /// The agreement.
        id: u64,
    },
    /// Send your credits on the dispatcher (refunds) to your address.
    Withdraw(MarketArgs),
}

/// Which chain and dispatcher, and whose key.
#[derive(Debug, Args)]
pub struct MarketArgs {
    /// The chain's JSON-RPC endpoint.
    #[arg(long, env = "ZEPPELIN_RPC_URL", default_value = "http://127.0.0.1:8545")]
    pub rpc_url: url::Url,
    /// The deployment file naming the dispatcher (written by the deploy script or `zeppelin dev`).
    #[arg(long, env = "ZEPPELIN_DEPLOYMENT")]
    pub deployment: PathBuf,
    /// The client's key: a file holding a hex private key, created (0600) if missing.
    #[arg(long, env = "ZEPPELIN_CLIENT_KEY")]
    pub key_file: Option<PathBuf>,
}

/// Options of `zeppelin client buy`.
#[derive(Debug, Args)]
pub struct BuyArgs {
    #[command(flatten)]
    pub market: MarketArgs,
    /// The local image to run (name, name:tag or image ID).
    #[arg(long)]
    pub image: String,
    /// CPU for the work, in cores (e.g. 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub cpus: f64,
    /// Memory for the work, MiB.
    #[arg(long, default_value_t = 256)]
    pub memory_mib: u32,
    /// Disk for the work, MiB (at least the image's size is asked for).
    #[arg(long, default_value_t = 64)]
    pub disk_mib: u32,
    /// How long to buy (e.g. 10m, 1h); a multiple of the protocol's epoch.
    #[arg(long, default_value = "10m")]
    pub duration: humantime::Duration,
    /// The highest price per second you accept (wei, or with a unit: 2gwei).
    #[arg(long, default_value = "10gwei")]
    pub max_price: String,
    /// How many verifiers watch the work.
    #[arg(long, default_value_t = 1)]
    pub verifiers: u8,
    /// The architecture the image is built for (amd64, arm64, armhf).
    #[arg(long, default_value = crate::host::NATIVE_ARCH)]
    pub arch: String,
    /// The port the work listens on inside its container.
    #[arg(long)]
    pub port: u16,
    /// How the work is checked: `tcp`, or `http:<path>[:<status>[:<sha256 of the body>]]`.
    #[arg(long, default_value = "tcp")]
    pub probe: String,
    /// How long to wait for the worker at each step.
    #[arg(long, default_value = "5m")]
    pub wait: humantime::Duration,
    /// The local Docker engine's socket (where the image is exported from).
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,
}

/// `zeppelin nat ...`.
#[derive(Debug, Subcommand)]
pub enum NatCommand {
    /// Ask the router (UPnP IGD, PCP, NAT-PMP) to map a port, print what works with timings,
    /// and remove the test mapping; `--hold` keeps the mappings and renews them until Ctrl-C.
    Check(NatCheckArgs),
}

/// Options of `zeppelin nat check`.
#[derive(Debug, Args)]
pub struct NatCheckArgs {
    /// Local port to map (repeat for more; without `--hold` the first is used).
    #[arg(long = "port", default_value = "7070")]
    pub ports: Vec<u16>,
    /// Map UDP instead of TCP.
    #[arg(long)]
    pub udp: bool,
    /// The lease to ask for, such as "30s" or "1h".
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub lease: std::time::Duration,
    /// With `--hold`: the longest time between two requests for a mapping (router restarts
    /// are noticed within it).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub refresh: std::time::Duration,
    /// Which protocol: auto (all, in the order UPnP IGD, PCP, NAT-PMP), upnp, pcp or natpmp.
    #[arg(long, default_value = "auto")]
    pub method: String,
    /// Keep the mappings and renew them until Ctrl-C (or `--duration`), then remove them.
    #[arg(long)]
    pub hold: bool,
    /// With `--hold`: stop after this long.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
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
        Command::Nat(NatCommand::Check(args)) => {
            let methods =
                crate::config::nat_methods(&args.method).map_err(|e| anyhow::anyhow!("--method: {e}"))?;
            anyhow::ensure!(!methods.is_empty(), "--method: choose auto, upnp, pcp or natpmp");
            anyhow::ensure!(args.lease >= std::time::Duration::from_secs(1), "--lease: at least 1s");
            anyhow::ensure!(args.refresh >= std::time::Duration::from_secs(1), "--refresh: at least 1s");
            let transport = if args.udp { crate::nat::Transport::Udp } else { crate::nat::Transport::Tcp };
            runtime.block_on(crate::nat::check::run(crate::nat::check::CheckOptions {
                ports: args.ports,
                transport,
                lease: args.lease,
                refresh: args.refresh,
                methods,
                hold: args.hold,
                duration: args.duration,
                json: args.json,
            }))
        }
        Command::Client(command) => runtime.block_on(client(command)),
    }
}

fn market(args: &MarketArgs) -> anyhow::Result<(crate::chain::market::Market, crate::identity::Identity)> {
    let key_path = args.key_file.clone().unwrap_or_else(crate::client::default_key_path);
    let (identity, created) = crate::client::load_or_create_key(&key_path)?;
    if created {
        println!("created a client key in {}: address {}", key_path.display(), identity.address());
    }
    let deployment = crate::chain::deployment::Deployment::load(&args.deployment)?;
    let market =
        crate::chain::market::Market::new(args.rpc_url.clone(), deployment, identity.signer().clone());
    Ok((market, identity))
}

async fn client(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Buy(args) => {
            let args = *args;
            let (market, identity) = market(&args.market)?;
            let arch = crate::core::types::Arch::from_name(&args.arch)
                .ok_or_else(|| anyhow::anyhow!("--arch {:?}: expected amd64, arm64 or armhf", args.arch))?;
            if !(args.cpus > 0.0 && args.cpus <= 1024.0) {
                anyhow::bail!("--cpus {}: expected a positive number of cores", args.cpus);
            }
            let order = crate::client::BuyOrder {
                image: args.image.clone(),
                wants: crate::chain::market::Wants {
                    arch,
                    cpu_millis: (args.cpus * 1000.0).round() as u32,
                    memory_mib: args.memory_mib,
                    disk_mib: args.disk_mib,
                    duration: args.duration.as_secs(),
                    max_price_per_second: crate::client::parse_wei(&args.max_price)
                        .map_err(|e| anyhow::anyhow!("--max-price {e}"))?,
                    verifiers: args.verifiers,
                },
                port: args.port,
                probe: crate::probe::parse(&args.probe).map_err(|e| anyhow::anyhow!("--probe {e}"))?,
                wait: *args.wait,
            };
            let docker = crate::runtime::DockerRuntime::connect(Some(&args.docker_socket))?;
            let deployed =
                crate::client::buy(&market, &identity, &docker, &crate::client::default_cache_dir(), &order)
                    .await?;
            println!("agreement {}: work reachable at {}", deployed.id, deployed.endpoint);
            Ok(())
        }
        ClientCommand::Status { market: args, id } => {
            let (market, identity) = market(&args)?;
            print!("{}", crate::client::status(&market, &identity, id).await?);
            Ok(())
        }
        ClientCommand::List(args) => {
            let (market, _) = market(&args)?;
            print!("{}", crate::client::list(&market).await?);
            Ok(())
        }
        ClientCommand::Cancel { market: args, id } => {
            let (market, _) = market(&args)?;
            print!("{}", crate::client::cancel(&market, id).await?);
            Ok(())
        }
        ClientCommand::Redeem { market: args, id } => {
            let (market, _) = market(&args)?;
            print!("{}", crate::client::redeem(&market, id).await?);
            Ok(())
        }
        ClientCommand::Terminate { market: args, id } => {
            let (market, _) = market(&args)?;
            print!("{}", crate::client::terminate(&market, id).await?);
            Ok(())
        }
        ClientCommand::Withdraw(args) => {
            let (market, _) = market(&args)?;
            print!("{}", crate::client::withdraw(&market).await?);
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
