//! The daemon's configuration: TOML at [`DEFAULT_PATH`], typed and validated at load.
//!
//! [`Config::from_toml_str`] is pure: it parses, checks every value and returns a [`Config`]
//! made of real types (URLs, addresses, wei amounts, durations, non-zero counts, socket
//! addresses). [`Config::load`] only reads the file around it. The commented default file the
//! Debian package installs is `packaging/zeppelin.toml`; it documents the same keys.
//!
//! Every key has a default except `worker.price_per_second`: what to charge depends on the
//! value of the chain's currency, so there is no safe guess. A file holding only that key is a
//! complete configuration.
//!
//! **No secrets in this file.** It is world-readable by design (`/etc/zeppelin`). The keystore
//! password comes from a systemd credential, never from here.
//!
//! A bad value stops start-up with one error naming the file, the full dotted key and the
//! reason, such as `/etc/zeppelin/zeppelin.toml: worker.slots: must be between 1 and 255`.
//! Unknown keys are errors too, so a misspelt key is never silently ignored.
//!
//! Input forms:
//! - amounts of the chain's currency: `"100 gwei"`, `"0.000001 ether"`, `"1000 wei"` (the unit
//!   is required in a string; at most as many decimals as the unit has), or a bare integer of
//!   wei (`1000`);
//! - sizes: `"512 MiB"`, `"2 GiB"`, `"1.5 TiB"` (powers of 1024; the result must be a whole
//!   number of MiB), or a bare integer of MiB (`512`);
//! - durations: humantime strings such as `"2s"`, `"500ms"`, `"24h"`, `"1h 30m"`.
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroU32};
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::aliases::{U80, U96};
use alloy::primitives::utils::{Unit, parse_units};
use alloy::primitives::{Address, U256};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use url::Url;

/// Where the daemon reads its configuration unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/zeppelin/zeppelin.toml";

/// Default for `chain.rpc_url`: a node on this machine (and `zeppelin dev`'s anvil).
pub const DEFAULT_RPC_URL: &str = "http://127.0.0.1:8545";
/// Default for `chain.deployment_file`.
pub const DEFAULT_DEPLOYMENT_FILE: &str = "/etc/zeppelin/deployment.json";
/// Default for `chain.confirmations`.
pub const DEFAULT_CONFIRMATIONS: u32 = 2;
/// Largest `chain.confirmations`.
pub const MAX_CONFIRMATIONS: u32 = 64;
/// Default for `chain.poll_interval`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
/// Bounds of `chain.poll_interval`.
pub const POLL_INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(300));
/// Default for `worker.max_duration`.
pub const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(24 * 3600);
/// Bounds of `worker.max_duration`.
pub const MAX_DURATION_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(365 * 24 * 3600));
/// Default for `worker.slots`.
pub const DEFAULT_SLOTS: NonZeroU8 = NonZeroU8::new(1).unwrap();
/// Default for `state.dir`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/zeppelin";
/// Default for `api.control_socket`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/zeppelin/control.sock";
/// Default for `api.http_listen`.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9465";

/// Default for `nat.lease`.
pub const DEFAULT_NAT_LEASE: Duration = Duration::from_secs(3600);
/// Bounds of `nat.lease`.
pub const NAT_LEASE_RANGE: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(24 * 3600));
/// Default for `nat.refresh`.
pub const DEFAULT_NAT_REFRESH: Duration = Duration::from_secs(60);
/// Bounds of `nat.refresh`.
pub const NAT_REFRESH_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));
/// Default for `nat.ports`: the transfer server's default port.
pub const DEFAULT_NAT_PORTS: [u16; 1] = [7070];

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `[chain]`: which chain, where the contracts are, how to follow it.
    pub chain: ChainConfig,
    /// `[worker]`: what this machine offers and at what price.
    pub worker: WorkerConfig,
    /// `[state]`: where the daemon keeps its data.
    pub state: StateConfig,
    /// `[api]`: the control socket and the health/metrics endpoint.
    pub api: ApiConfig,
    /// `[work]`: receiving images and running clients' containers.
    pub work: WorkConfig,
    /// `[nat]`: making the worker reachable through a home router.
    pub nat: NatConfig,
}

/// `[work]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkConfig {
    /// `work.transfer_listen`: where the image transfer server (TLS) listens. Default
    /// `0.0.0.0:7070`; port 0 takes any free port.
    pub transfer_listen: SocketAddr,
    /// `work.announce_host`: the host or IP address clients reach this worker at (sent to them
    /// over the private channel). Default: the address of the interface of the default route.
    pub announce_host: Option<String>,
    /// `work.ports`: the host ports clients' containers are published on, `"first-last"`.
    pub ports: (u16, u16),
    /// `work.publish_ip`: the address containers' ports are published on. Default `0.0.0.0`.
    pub publish_ip: std::net::IpAddr,
    /// `work.docker_socket`: the Docker engine's socket. Default `/var/run/docker.sock`.
    pub docker_socket: PathBuf,
    /// `work.pids_limit`: the most processes one container may run. Default 256.
    pub pids_limit: u32,
    /// `work.tmp_size`: the size of a container's writable `/tmp`, MiB. Default 64.
    pub tmp_mib: u32,
}

/// `[nat]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// `nat.mode`. Default `auto`.
    pub mode: NatMode,
    /// `nat.lease`: the lease asked of the router. Default 1 h.
    pub lease: Duration,
    /// `nat.refresh`: the longest time between two requests for one mapping (a router that
    /// restarted and lost its mappings is noticed within it). Default 60 s.
    pub refresh: Duration,
    /// `nat.ports`: TCP ports of this host to map. Default `[7070]`, the transfer port.
    pub ports: Vec<u16>,
}

/// How the worker is made reachable (`nat.mode`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatMode {
    /// Ask the router, trying UPnP IGD, PCP and NAT-PMP in this order.
    Auto,
    /// Only this protocol.
    Only(crate::nat::Method),
    /// The operator forwarded the ports on the router by hand to this host; `nat.external_address`
    /// is the router's public address.
    Manual { external_address: std::net::Ipv4Addr },
    /// Nothing is done.
    Off,
}

impl NatMode {
    /// The protocols to try, in order (empty for manual and off).
    pub fn methods(&self) -> Vec<crate::nat::Method> {
        match self {
            NatMode::Auto => crate::nat::Method::ORDER.to_vec(),
            NatMode::Only(m) => vec![*m],
            NatMode::Manual { .. } | NatMode::Off => Vec::new(),
        }
    }

    /// As written in the file.
    pub fn name(&self) -> &'static str {
        match self {
            NatMode::Auto => "auto",
            NatMode::Only(crate::nat::Method::Upnp) => "upnp",
            NatMode::Only(crate::nat::Method::Pcp) => "pcp",
            NatMode::Only(crate::nat::Method::NatPmp) => "natpmp",
            NatMode::Manual { .. } => "manual",
            NatMode::Off => "off",
        }
    }
}

/// The protocols named by a mode of `zeppelin nat check --method` or `nat.mode`: `auto` (all,
/// in order), `upnp`, `pcp`, `natpmp`; `manual` and `off` name none.
pub fn nat_methods(name: &str) -> Result<Vec<crate::nat::Method>, String> {
    use crate::nat::Method;
    match name {
        "auto" => Ok(Method::ORDER.to_vec()),
        "upnp" => Ok(vec![Method::Upnp]),
        "pcp" => Ok(vec![Method::Pcp]),
        "natpmp" => Ok(vec![Method::NatPmp]),
        "manual" | "off" => Ok(Vec::new()),
        other => Err(format!("unknown mode {other:?}: expected auto, upnp, pcp, natpmp, manual or off")),
    }
}

/// `[chain]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainConfig {
    /// `chain.rpc_url`: HTTP(S) JSON-RPC endpoint. Default [`DEFAULT_RPC_URL`].
    pub rpc_url: Url,
    /// `chain.ws_url`: optional ws:// or wss:// endpoint for subscriptions; absent: the daemon
    /// polls `rpc_url` every `poll_interval`.
    pub ws_url: Option<Url>,
    /// `chain.chain_id`: the chain id the daemon expects; it refuses a node that reports another.
    /// Absent: whatever the deployment file names (with `chain.dispatcher`: no check).
    pub chain_id: Option<u64>,
    /// `chain.deployment_file`, or `chain.dispatcher` with `chain.deploy_block`.
    pub contracts: Contracts,
    /// `chain.confirmations`: blocks on top of a log before the daemon acts on it. Default 2.
    pub confirmations: u32,
    /// `chain.poll_interval`: how often to ask the node for new blocks. Default 2 s.
    pub poll_interval: Duration,
    /// `chain.max_fee_per_gas`: the most the daemon pays per unit of gas, in wei; absent: what
    /// the node suggests, uncapped.
    pub max_fee_per_gas: Option<u128>,
}

/// Where the protocol contracts are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contracts {
    /// Read from the deployment file the deploy script writes (`chain.deployment_file`).
    DeploymentFile(PathBuf),
    /// Given directly (`chain.dispatcher`, `chain.deploy_block`), overriding the file.
    Dispatcher {
        /// The `WorkerDispatcher` contract.
        address: Address,
        /// Where to start reading its events (default 0: the whole chain).
        deploy_block: u64,
    },
}

/// `[worker]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerConfig {
    /// `worker.price_per_second`: wei per second of work. Required, non-zero, at most 80 bits
    /// (the contract's field).
    pub price_per_second: U80,
    /// `worker.max_duration`: the longest agreement accepted, whole seconds. Default 24 h.
    pub max_duration: Duration,
    /// `worker.slots`: agreements run at the same time. Default 1.
    pub slots: NonZeroU8,
    /// `worker.stake`: wei staked at registration; absent: the dispatcher's minimum stake.
    pub stake: Option<U96>,
    /// `worker.payout_address`: where the daemon sends the pay it withdraws; absent: the pay
    /// stays on the worker's own account.
    pub payout_address: Option<Address>,
    /// `worker.cpus`, in millicores: at most this much CPU is offered; absent: all the host has.
    pub cpu_millis: Option<NonZeroU32>,
    /// `worker.memory`, in MiB: at most this much memory is offered; absent: all the host has.
    pub memory_mib: Option<NonZeroU32>,
    /// `worker.disk`, in MiB: at most this much disk is offered; absent: all the free space of
    /// the state directory's file system.
    pub disk_mib: Option<NonZeroU32>,
    /// `worker.arch`: the architecture advertised; absent: the one detected.
    pub arch: Option<Arch>,
}

pub use crate::core::types::Arch;

/// `[state]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateConfig {
    /// `state.dir`: the daemon's database and keystore. Default [`DEFAULT_STATE_DIR`].
    pub dir: PathBuf,
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiConfig {
    /// `api.control_socket`: the Unix socket `zeppelin status` and `zeppelin leave` talk to.
    pub control_socket: PathBuf,
    /// `api.http_listen`: health JSON and Prometheus metrics. Loopback unless
    /// `http_allow_remote`.
    pub http_listen: SocketAddr,
    /// `api.http_allow_remote`: allow a non-loopback `http_listen`. Default false.
    pub http_allow_remote: bool,
}

/// What the configuration puts into the on-chain registration (`registerWorker` /
/// `updateWorker`). If it differs between the old and the reloaded configuration, the daemon
/// must update its registration. The limits are the configured caps, before they are
/// combined with what is measured on the host; the stake is not here (it is only ever added to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistrationTerms {
    /// Wei per second.
    pub price_per_second: U80,
    /// Longest agreement, in seconds.
    pub max_duration_secs: u32,
    /// Concurrent agreements.
    pub slots: NonZeroU8,
    /// CPU cap in millicores, or the host's.
    pub cpu_millis: Option<NonZeroU32>,
    /// Memory cap in MiB, or the host's.
    pub memory_mib: Option<NonZeroU32>,
    /// Disk cap in MiB, or the host's.
    pub disk_mib: Option<NonZeroU32>,
    /// Architecture override, or the detected one.
    pub arch: Option<Arch>,
}

/// Loading the configuration failed. Every message names the file; a bad value also names its
/// full dotted key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The text is not valid TOML.
    #[error("{file}: line {line}, column {column}: {message}")]
    Syntax { file: String, line: usize, column: usize, message: String },
    /// A key is unknown, missing, of the wrong type or out of range.
    #[error("{file}: {key}: {reason}")]
    Invalid { file: String, key: String, reason: String },
}

impl ConfigError {
    /// The dotted key at fault, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

impl Config {
    /// [`DEFAULT_PATH`].
    pub fn default_path() -> &'static Path {
        Path::new(DEFAULT_PATH)
    }

    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses and validates `text`; `source_name` (usually the path) prefixes every error.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, source_name, &e))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key.is_empty() || key == "." {
                syntax_error(text, source_name, &inner)
            } else {
                ConfigError::Invalid { file: source_name.to_owned(), key, reason: inner.message().to_owned() }
            }
        })?;
        raw.validate().map_err(|(key, reason)| ConfigError::Invalid {
            file: source_name.to_owned(),
            key: key.to_owned(),
            reason,
        })
    }

    /// The part of the configuration that goes on chain; see [`RegistrationTerms`].
    pub fn registration_terms(&self) -> RegistrationTerms {
        let w = &self.worker;
        RegistrationTerms {
            price_per_second: w.price_per_second,
            // Bounded by MAX_DURATION_RANGE, far below u32::MAX seconds.
            max_duration_secs: u32::try_from(w.max_duration.as_secs()).unwrap_or(u32::MAX),
            slots: w.slots,
            cpu_millis: w.cpu_millis,
            memory_mib: w.memory_mib,
            disk_mib: w.disk_mib,
            arch: w.arch,
        }
    }
}

fn syntax_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    ConfigError::Syntax {
        file: file.to_owned(),
        line,
        column,
        message: e.message().trim_end().trim_end_matches('.').to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written: every key optional, unknown keys rejected. `validate` turns it into the
// typed `Config`, applying defaults and the rules serde cannot express.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    chain: RawChain,
    worker: RawWorker,
    state: RawState,
    api: RawApi,
    work: RawWork,
    nat: RawNat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWork {
    transfer_listen: Option<String>,
    announce_host: Option<String>,
    ports: Option<String>,
    publish_ip: Option<String>,
    docker_socket: Option<PathBuf>,
    #[serde(deserialize_with = "integer")]
    pids_limit: Option<i64>,
    tmp_size: Option<Size>,
}

impl RawWork {
    fn validate(self) -> Result<WorkConfig, Invalid> {
        const LISTEN: &str = "work.transfer_listen";
        let listen = self.transfer_listen.as_deref().unwrap_or("0.0.0.0:7070");
        let transfer_listen: SocketAddr = listen.parse().map_err(|_| {
            (LISTEN, format!("{listen:?} is not an IP address and port, such as \"0.0.0.0:7070\""))
        })?;
        let announce_host = match self.announce_host {
            Some(h)
                if h.trim().is_empty()
                    || h.contains(['/', ' ', ':']) && h.parse::<std::net::IpAddr>().is_err() =>
            {
                return Err(("work.announce_host", format!("{h:?} is not a host name or IP address")));
            }
            other => other,
        };
        let ports_text = self.ports.as_deref().unwrap_or("7100-7163");
        let ports = ports_text
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| *a > 0 && a <= b)
            .ok_or(("work.ports", format!("{ports_text:?} is not a port range such as \"7100-7163\"")))?;
        let ip = self.publish_ip.as_deref().unwrap_or("0.0.0.0");
        let publish_ip =
            ip.parse().map_err(|_| ("work.publish_ip", format!("{ip:?} is not an IP address")))?;
        let docker_socket = absolute("work.docker_socket", self.docker_socket, "/var/run/docker.sock")?;
        let pids_limit = in_range("work.pids_limit", self.pids_limit.unwrap_or(256), 16, 1_000_000)? as u32;
        let tmp_mib = match self.tmp_size {
            Some(size) => size.mib("work.tmp_size")?.get(),
            None => 64,
        };
        Ok(WorkConfig {
            transfer_listen,
            announce_host,
            ports,
            publish_ip,
            docker_socket,
            pids_limit,
            tmp_mib,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawNat {
    mode: Option<String>,
    lease: Option<HumanDuration>,
    refresh: Option<HumanDuration>,
    ports: Option<Vec<i64>>,
    external_address: Option<String>,
}

impl RawNat {
    fn validate(self) -> Result<NatConfig, Invalid> {
        const MODE: &str = "nat.mode";
        const ADDRESS: &str = "nat.external_address";
        let name = self.mode.as_deref().unwrap_or("auto");
        let methods = nat_methods(name).map_err(|e| (MODE, e))?;
        let mode = match (name, self.external_address) {
            ("manual", None) => {
                return Err((
                    ADDRESS,
                    "required with mode = \"manual\": the public IPv4 address of the router that forwards \
                     the ports to this host"
                        .into(),
                ));
            }
            ("manual", Some(text)) => {
                let ip: std::net::Ipv4Addr =
                    text.parse().map_err(|_| (ADDRESS, format!("{text:?} is not an IPv4 address")))?;
                if let crate::nat::External::NotPublic(kind) = crate::nat::classify_external(ip) {
                    return Err((
                        ADDRESS,
                        format!("{ip} is {kind}, not reachable from the internet; give the public address"),
                    ));
                }
                NatMode::Manual { external_address: ip }
            }
            (_, Some(_)) => {
                return Err((ADDRESS, "only meaningful with mode = \"manual\"".into()));
            }
            ("off", None) => NatMode::Off,
            ("auto", None) => NatMode::Auto,
            (_, None) => NatMode::Only(methods[0]),
        };
        let lease = duration_in("nat.lease", self.lease, DEFAULT_NAT_LEASE, NAT_LEASE_RANGE)?;
        let refresh = duration_in("nat.refresh", self.refresh, DEFAULT_NAT_REFRESH, NAT_REFRESH_RANGE)?;
        let ports = match self.ports {
            None => DEFAULT_NAT_PORTS.to_vec(),
            Some(list) => {
                let mut ports = Vec::new();
                for p in list {
                    let p = in_range("nat.ports", p, 1, 65535)? as u16;
                    if ports.contains(&p) {
                        return Err(("nat.ports", format!("port {p} is listed twice")));
                    }
                    ports.push(p);
                }
                ports
            }
        };
        Ok(NatConfig { mode, lease, refresh, ports })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawChain {
    rpc_url: Option<String>,
    ws_url: Option<String>,
    #[serde(deserialize_with = "integer")]
    chain_id: Option<i64>,
    deployment_file: Option<PathBuf>,
    dispatcher: Option<String>,
    #[serde(deserialize_with = "integer")]
    deploy_block: Option<i64>,
    #[serde(deserialize_with = "integer")]
    confirmations: Option<i64>,
    poll_interval: Option<HumanDuration>,
    max_fee_per_gas: Option<Amount>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWorker {
    price_per_second: Option<Amount>,
    max_duration: Option<HumanDuration>,
    #[serde(deserialize_with = "integer")]
    slots: Option<i64>,
    stake: Option<Amount>,
    payout_address: Option<String>,
    cpus: Option<Cpus>,
    memory: Option<Size>,
    disk: Option<Size>,
    arch: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawState {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApi {
    control_socket: Option<PathBuf>,
    http_listen: Option<String>,
    http_allow_remote: Option<bool>,
}

/// A failed rule: the dotted key and the reason.
type Invalid = (&'static str, String);

impl RawConfig {
    fn validate(self) -> Result<Config, Invalid> {
        let config = Config {
            chain: self.chain.validate()?,
            worker: self.worker.validate()?,
            state: StateConfig { dir: absolute("state.dir", self.state.dir, DEFAULT_STATE_DIR)? },
            api: self.api.validate()?,
            work: self.work.validate()?,
            nat: self.nat.validate()?,
        };
        // Each running agreement publishes its work on a port of its own: more slots than
        // ports would accept agreements it cannot serve.
        let (first, last) = config.work.ports;
        let ports = usize::from(last - first) + 1;
        if usize::from(config.worker.slots.get()) > ports {
            return Err((
                "worker.slots",
                format!(
                    "{} agreements at once need as many ports, and work.ports \"{first}-{last}\" has {ports}",
                    config.worker.slots
                ),
            ));
        }
        Ok(config)
    }
}

impl RawChain {
    fn validate(self) -> Result<ChainConfig, Invalid> {
        let rpc_url =
            url("chain.rpc_url", self.rpc_url.as_deref().unwrap_or(DEFAULT_RPC_URL), &["http", "https"])?;
        let ws_url = self.ws_url.map(|u| url("chain.ws_url", &u, &["ws", "wss"])).transpose()?;
        let chain_id = self.chain_id.map(|id| positive("chain.chain_id", id)).transpose()?;
        let contracts = match (self.dispatcher, self.deployment_file) {
            (Some(_), Some(_)) => {
                return Err((
                    "chain.dispatcher",
                    "set either chain.dispatcher or chain.deployment_file, not both".into(),
                ));
            }
            (Some(d), None) => Contracts::Dispatcher {
                address: address("chain.dispatcher", &d)?,
                deploy_block: match self.deploy_block {
                    None => 0,
                    Some(b) => {
                        u64::try_from(b).map_err(|_| ("chain.deploy_block", "must not be negative".into()))?
                    }
                },
            },
            (None, file) => {
                if self.deploy_block.is_some() {
                    return Err((
                        "chain.deploy_block",
                        "only meaningful with chain.dispatcher (the deployment file has its own)".into(),
                    ));
                }
                Contracts::DeploymentFile(absolute("chain.deployment_file", file, DEFAULT_DEPLOYMENT_FILE)?)
            }
        };
        let confirmations = match self.confirmations {
            None => DEFAULT_CONFIRMATIONS,
            Some(n) => in_range("chain.confirmations", n, 0, i64::from(MAX_CONFIRMATIONS))? as u32,
        };
        let poll_interval = duration_in(
            "chain.poll_interval",
            self.poll_interval,
            DEFAULT_POLL_INTERVAL,
            POLL_INTERVAL_RANGE,
        )?;
        let max_fee_per_gas = self
            .max_fee_per_gas
            .map(|Amount(wei)| {
                if wei.is_zero() {
                    return Err(("chain.max_fee_per_gas", "must be greater than zero".into()));
                }
                u128::try_from(wei)
                    .map_err(|_| ("chain.max_fee_per_gas", "must fit in 128 bits of wei".into()))
            })
            .transpose()?;
        Ok(ChainConfig {
            rpc_url,
            ws_url,
            chain_id,
            contracts,
            confirmations,
            poll_interval,
            max_fee_per_gas,
        })
    }
}

impl RawWorker {
    fn validate(self) -> Result<WorkerConfig, Invalid> {
        const PRICE: &str = "worker.price_per_second";
        let Some(Amount(price)) = self.price_per_second else {
            return Err((
                PRICE,
                "required: there is no safe default, as what to charge depends on the chain's \
                 currency (for example \"1 gwei\")"
                    .into(),
            ));
        };
        if price.is_zero() {
            return Err((PRICE, "must be greater than zero".into()));
        }
        let price_per_second = U80::checked_from_limbs_slice(price.as_limbs())
            .ok_or_else(|| (PRICE, format!("must be at most {} wei (80 bits)", U80::MAX)))?;

        let max_duration =
            duration_in("worker.max_duration", self.max_duration, DEFAULT_MAX_DURATION, MAX_DURATION_RANGE)?;
        if max_duration.subsec_nanos() != 0 {
            return Err(("worker.max_duration", "must be a whole number of seconds".into()));
        }

        let slots = match self.slots {
            None => DEFAULT_SLOTS,
            Some(n) => {
                let n = in_range("worker.slots", n, 1, 255)?;
                NonZeroU8::new(n as u8).expect("checked to be between 1 and 255")
            }
        };

        let stake = self
            .stake
            .map(|Amount(wei)| {
                if wei.is_zero() {
                    return Err(("worker.stake", "must be greater than zero".into()));
                }
                U96::checked_from_limbs_slice(wei.as_limbs())
                    .ok_or_else(|| ("worker.stake", format!("must be at most {} wei (96 bits)", U96::MAX)))
            })
            .transpose()?;

        let payout_address = self
            .payout_address
            .map(|a| {
                let a = address("worker.payout_address", &a)?;
                if a.is_zero() {
                    return Err(("worker.payout_address", "must not be the zero address".into()));
                }
                Ok(a)
            })
            .transpose()?;

        let arch = self
            .arch
            .map(|a| {
                Arch::from_name(&a).ok_or_else(|| {
                    (
                        "worker.arch",
                        format!("unknown architecture {a:?}: expected one of amd64, arm64, armhf"),
                    )
                })
            })
            .transpose()?;

        Ok(WorkerConfig {
            price_per_second,
            max_duration,
            slots,
            stake,
            payout_address,
            cpu_millis: self.cpus.map(|Cpus(m)| m),
            memory_mib: self.memory.map(|s| s.mib("worker.memory")).transpose()?,
            disk_mib: self.disk.map(|s| s.mib("worker.disk")).transpose()?,
            arch,
        })
    }
}

impl RawApi {
    fn validate(self) -> Result<ApiConfig, Invalid> {
        const LISTEN: &str = "api.http_listen";
        let control_socket = absolute("api.control_socket", self.control_socket, DEFAULT_CONTROL_SOCKET)?;
        let listen = self.http_listen.as_deref().unwrap_or(DEFAULT_HTTP_LISTEN);
        let http_listen: SocketAddr = listen.parse().map_err(|_| {
            (LISTEN, format!("{listen:?} is not an IP address and port, such as \"127.0.0.1:9465\""))
        })?;
        if http_listen.port() == 0 {
            return Err((LISTEN, "the port must not be 0".into()));
        }
        let http_allow_remote = self.http_allow_remote.unwrap_or(false);
        if !http_allow_remote && !http_listen.ip().to_canonical().is_loopback() {
            return Err((
                LISTEN,
                format!(
                    "{http_listen} is not a loopback address; the endpoint has no \
                     authentication, so set api.http_allow_remote = true to serve it beyond \
                     this machine"
                ),
            ));
        }
        Ok(ApiConfig { control_socket, http_listen, http_allow_remote })
    }
}

// ---------------------------------------------------------------------------------------------
// Rules shared by several keys.
// ---------------------------------------------------------------------------------------------

fn in_range(key: &'static str, n: i64, min: i64, max: i64) -> Result<i64, Invalid> {
    if (min..=max).contains(&n) { Ok(n) } else { Err((key, format!("must be between {min} and {max}"))) }
}

fn positive(key: &'static str, n: i64) -> Result<u64, Invalid> {
    u64::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| (key, "must be greater than zero".into()))
}

fn absolute(key: &'static str, path: Option<PathBuf>, default: &str) -> Result<PathBuf, Invalid> {
    let path = path.unwrap_or_else(|| PathBuf::from(default));
    if path.is_absolute() {
        Ok(path)
    } else {
        Err((key, format!("must be an absolute path, not {:?}", path.display().to_string())))
    }
}

fn url(key: &'static str, text: &str, schemes: &[&str]) -> Result<Url, Invalid> {
    let url = Url::parse(text).map_err(|e| (key, format!("{text:?} is not a valid URL: {e}")))?;
    if !schemes.contains(&url.scheme()) {
        return Err((key, format!("scheme must be {}, not {:?}", schemes.join(" or "), url.scheme())));
    }
    Ok(url)
}

fn duration_in(
    key: &'static str,
    value: Option<HumanDuration>,
    default: Duration,
    (min, max): (Duration, Duration),
) -> Result<Duration, Invalid> {
    let d = value.map_or(default, |HumanDuration(d)| d);
    if d < min || d > max {
        return Err((key, format!("must be between {} and {}", short(min), short(max))));
    }
    Ok(d)
}

/// A bound written the way the file would write it: `100ms`, `5m`, `365d`.
fn short(d: Duration) -> String {
    let (s, ms) = (d.as_secs(), d.subsec_millis());
    match () {
        _ if ms != 0 || s == 0 => format!("{}ms", d.as_millis()),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// Parses a 20-byte hex address. Mixed case must be a valid EIP-55 checksum, so a mistyped
/// address is caught rather than paid.
fn address(key: &'static str, text: &str) -> Result<Address, Invalid> {
    let bad = || (key, format!("{text:?} is not an address: expected 0x followed by 40 hex digits"));
    let hex = text.strip_prefix("0x").ok_or_else(bad)?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mixed_case =
        hex.bytes().any(|b| b.is_ascii_uppercase()) && hex.bytes().any(|b| b.is_ascii_lowercase());
    if mixed_case {
        Address::parse_checksummed(text, None).map_err(|_| {
            (
                key,
                format!(
                    "{text:?} has a wrong EIP-55 checksum (mistyped?); write it in one case to \
                     skip the check"
                ),
            )
        })
    } else {
        text.parse().map_err(|_| bad())
    }
}

// ---------------------------------------------------------------------------------------------
// Value parsers. They run inside deserialization, so their errors carry the key's path.
// ---------------------------------------------------------------------------------------------

/// Parses an amount of the chain's currency into wei: `"<decimal> <unit>"` with unit `wei`,
/// `gwei` or `ether`, at most as many decimals as the unit has (no silent rounding).
pub fn parse_amount(text: &str) -> Result<U256, String> {
    let expected = "expected an amount such as \"100 gwei\", \"0.000001 ether\" or \"1000 wei\"";
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit_name) = (&text[..split], text[split..].trim_start());
    if number.is_empty() {
        return Err(format!("{text:?} is not a valid amount: {expected}"));
    }
    let (unit, decimals) = match unit_name {
        "wei" => (Unit::WEI, 0),
        "gwei" => (Unit::GWEI, 9),
        "ether" => (Unit::ETHER, 18),
        "" => return Err(format!("{text:?} has no unit: {expected}")),
        other => {
            return Err(format!("unknown unit {other:?}: expected wei, gwei or ether"));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || number.ends_with('.') {
        return Err(format!("{text:?} is not a valid amount: {expected}"));
    }
    if fraction.len() > decimals {
        return Err(format!("{text:?} has more decimals than {unit_name} allows ({decimals})"));
    }
    parse_units(number, unit.get()).map(|p| p.get_absolute()).map_err(|_| format!("{text:?} is too large"))
}

/// Parses a size into MiB: `"<decimal> <unit>"` with unit `MiB`, `GiB` or `TiB` (powers of
/// 1024); the result must be a whole number of MiB.
pub fn parse_size_mib(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit_name) = (&text[..split], text[split..].trim_start());
    let invalid = || format!("{text:?} is not a valid size: expected one such as \"2 GiB\"");
    if number.is_empty() {
        return Err(invalid());
    }
    let factor: u64 = match unit_name {
        "MiB" => 1,
        "GiB" => 1024,
        "TiB" => 1024 * 1024,
        "" => {
            return Err(format!("{text:?} has no unit: expected MiB, GiB or TiB, or an integer of MiB"));
        }
        other => {
            return Err(format!("unknown unit {other:?}: expected MiB, GiB or TiB (powers of 1024)"));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || number.ends_with('.') {
        return Err(invalid());
    }
    let too_large = || format!("{text:?} is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut mib = whole.checked_mul(factor).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Exact: fraction/10^len * factor must be a whole number of MiB.
        let len = u32::try_from(fraction.len()).map_err(|_| too_large())?;
        let scale = 10u128.checked_pow(len).ok_or_else(too_large)?;
        let frac: u128 = fraction.parse().map_err(|_| too_large())?;
        let scaled = frac * u128::from(factor);
        if !scaled.is_multiple_of(scale) {
            return Err(format!("{text:?} is not a whole number of MiB"));
        }
        let extra = u64::try_from(scaled / scale).map_err(|_| too_large())?;
        mib = mib.checked_add(extra).ok_or_else(too_large)?;
    }
    Ok(mib)
}

/// Converts a CPU count (fractional allowed) into millicores: `1.5` is 1500.
pub fn cpus_to_millis(cpus: f64) -> Result<NonZeroU32, String> {
    let millis = cpus * 1000.0;
    let rounded = millis.round();
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err("must be greater than zero".into());
    }
    if (millis - rounded).abs() > 1e-6 {
        return Err(format!("{cpus} has more than three decimals (millicores)"));
    }
    if rounded > f64::from(u32::MAX) {
        return Err(format!("must be at most {}", u32::MAX / 1000));
    }
    NonZeroU32::new(rounded as u32).ok_or_else(|| "must be greater than zero".into())
}

/// An amount in wei, from a TOML integer (wei) or a string with a unit.
#[derive(Debug)]
struct Amount(U256);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount such as \"100 gwei\", or an integer of wei")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                u64::try_from(v).map(|v| Amount(U256::from(v))).map_err(|_| E::custom("must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount(U256::from(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                parse_amount(v).map(Amount).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in MiB, from a TOML integer (MiB) or a string with a unit.
#[derive(Debug)]
struct Size(u64);

impl Size {
    fn mib(self, key: &'static str) -> Result<NonZeroU32, Invalid> {
        let n = u32::try_from(self.0).map_err(|_| (key, format!("must be at most {} MiB", u32::MAX)))?;
        NonZeroU32::new(n).ok_or_else(|| (key, "must be at least 1 MiB".into()))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512 MiB\" or \"2 GiB\", or an integer of MiB")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v).map(Size).map_err(|_| E::custom("must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size_mib(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A CPU count in millicores, from a TOML integer or float.
#[derive(Debug)]
struct Cpus(NonZeroU32);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Cpus;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of CPUs such as 2 or 1.5")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cpus, E> {
                self.visit_f64(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Cpus, E> {
                cpus_to_millis(v).map(Cpus).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written for humans (`"2s"`, `"24h"`).
#[derive(Debug)]
struct HumanDuration(Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"2s\", \"500ms\" or \"24h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                humantime::parse_duration(v).map(HumanDuration).map_err(|e| {
                    E::custom(format!(
                        "{v:?} is not a duration ({e}): expected one such as \"2s\", \"500ms\" or \"24h\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// An optional TOML integer, with "expected an integer" rather than "expected i64".
fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom("integer too large"))
        }
    }
    d.deserialize_i64(V).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[worker]\nprice_per_second = \"1 gwei\"\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    /// The minimal file plus `extra` lines in `[section]`.
    fn with(section: &str, extra: &str) -> Result<Config, ConfigError> {
        if section == "worker" {
            load(&format!("{MIN}{extra}\n"))
        } else {
            load(&format!("{MIN}[{section}]\n{extra}\n"))
        }
    }

    fn err(section: &str, extra: &str) -> String {
        with(section, extra).expect_err("must be rejected").to_string()
    }

    #[test]
    fn minimal_file_gets_every_default() {
        let c = load(MIN).unwrap();
        assert_eq!(c.chain.rpc_url.as_str(), "http://127.0.0.1:8545/");
        assert_eq!(c.chain.ws_url, None);
        assert_eq!(c.chain.chain_id, None);
        assert_eq!(c.chain.contracts, Contracts::DeploymentFile(DEFAULT_DEPLOYMENT_FILE.into()));
        assert_eq!(c.chain.confirmations, 2);
        assert_eq!(c.chain.poll_interval, Duration::from_secs(2));
        assert_eq!(c.chain.max_fee_per_gas, None);
        assert_eq!(c.worker.price_per_second, U80::from(1_000_000_000u64));
        assert_eq!(c.worker.max_duration, Duration::from_secs(86_400));
        assert_eq!(c.worker.slots.get(), 1);
        assert_eq!(c.worker.stake, None);
        assert_eq!(c.worker.payout_address, None);
        assert_eq!(c.worker.cpu_millis, None);
        assert_eq!(c.worker.memory_mib, None);
        assert_eq!(c.worker.disk_mib, None);
        assert_eq!(c.worker.arch, None);
        assert_eq!(c.state.dir, Path::new("/var/lib/zeppelin"));
        assert_eq!(c.api.control_socket, Path::new("/run/zeppelin/control.sock"));
        assert_eq!(c.api.http_listen, "127.0.0.1:9465".parse().unwrap());
        assert!(!c.api.http_allow_remote);
        assert_eq!(Config::default_path(), Path::new("/etc/zeppelin/zeppelin.toml"));
    }

    #[test]
    fn nat_modes() {
        use crate::nat::Method;
        let c = load(MIN).unwrap();
        assert_eq!((c.nat.mode.clone(), c.nat.ports.clone()), (NatMode::Auto, vec![7070]));
        assert_eq!(c.nat.mode.methods(), [Method::Upnp, Method::Pcp, Method::NatPmp]);
        let c =
            with("nat", "mode = \"pcp\"\nlease = \"30s\"\nrefresh = \"5s\"\nports = [7070, 9000]").unwrap();
        assert_eq!(c.nat.mode, NatMode::Only(Method::Pcp));
        assert_eq!(c.nat.mode.name(), "pcp");
        assert_eq!((c.nat.lease, c.nat.refresh), (Duration::from_secs(30), Duration::from_secs(5)));
        assert_eq!(c.nat.ports, [7070, 9000]);
        let c = with("nat", "mode = \"manual\"\nexternal_address = \"81.2.69.160\"").unwrap();
        assert_eq!(c.nat.mode, NatMode::Manual { external_address: "81.2.69.160".parse().unwrap() });
        assert!(c.nat.mode.methods().is_empty());
        assert_eq!(with("nat", "mode = \"off\"").unwrap().nat.mode, NatMode::Off);
        assert_eq!(
            err("nat", "mode = \"manual\"\nexternal_address = \"example.org\""),
            "test.toml: nat.external_address: \"example.org\" is not an IPv4 address"
        );
        assert_eq!(err("nat", "refresh = \"2h\""), "test.toml: nat.refresh: must be between 1s and 1h");
    }

    #[test]
    fn price_is_required_and_named() {
        assert_eq!(
            load("").unwrap_err().to_string(),
            "test.toml: worker.price_per_second: required: there is no safe default, as what to \
             charge depends on the chain's currency (for example \"1 gwei\")"
        );
    }

    #[test]
    fn error_shape_is_file_key_reason() {
        let e = load("[worker]\nprice_per_second = \"1 gwie\"\n").unwrap_err();
        assert_eq!(e.key(), Some("worker.price_per_second"));
        assert_eq!(
            e.to_string(),
            "test.toml: worker.price_per_second: unknown unit \"gwie\": expected wei, gwei or ether"
        );
        assert_eq!(err("worker", "slots = 0"), "test.toml: worker.slots: must be between 1 and 255");
    }

    #[test]
    fn unknown_keys_are_named() {
        assert!(err("worker", "slotz = 2").starts_with("test.toml: worker.slotz: unknown field `slotz`"));
        assert!(err("chian", "").starts_with("test.toml: chian: unknown field `chian`"));
        assert!(err("api", "http_lisen = \"127.0.0.1:1\"").starts_with("test.toml: api.http_lisen: "));
    }

    #[test]
    fn type_errors_are_named() {
        assert_eq!(
            err("worker", "slots = \"two\""),
            "test.toml: worker.slots: invalid type: string \"two\", expected an integer"
        );
        assert_eq!(
            err("chain", "poll_interval = 2"),
            "test.toml: chain.poll_interval: invalid type: integer `2`, expected a duration such \
             as \"2s\", \"500ms\" or \"24h\""
        );
        assert_eq!(
            err("api", "http_allow_remote = \"yes\""),
            "test.toml: api.http_allow_remote: invalid type: string \"yes\", expected a boolean"
        );
        assert_eq!(
            load("worker = 3\n").unwrap_err().to_string(),
            "test.toml: worker: invalid type: integer `3`, expected struct RawWorker"
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let e = load("[worker]\nprice_per_second = \"1 gwei\"\nslots = = 2\n").unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { line: 3, .. }), "{e}");
        assert!(e.to_string().starts_with("test.toml: line 3, column "), "{e}");
    }

    #[test]
    fn amounts() {
        let ok = |s: &str| parse_amount(s).unwrap();
        assert_eq!(ok("1000 wei"), U256::from(1000));
        assert_eq!(ok("100 gwei"), U256::from(100_000_000_000u64));
        assert_eq!(ok("0.000001 ether"), U256::from(1_000_000_000_000u64));
        assert_eq!(ok("1.5gwei"), U256::from(1_500_000_000u64));
        assert_eq!(ok("0.000000001 gwei"), U256::from(1));
        assert_eq!(ok("2 ether"), U256::from(2_000_000_000_000_000_000u128));
        let bad = |s: &str| parse_amount(s).unwrap_err();
        assert_eq!(
            bad("1000"),
            "\"1000\" has no unit: expected an amount such as \"100 gwei\", \"0.000001 ether\" or \"1000 wei\""
        );
        assert_eq!(bad("1 eth"), "unknown unit \"eth\": expected wei, gwei or ether");
        assert_eq!(bad("1.5 wei"), "\"1.5 wei\" has more decimals than wei allows (0)");
        assert_eq!(bad("0.0000000001 gwei"), "\"0.0000000001 gwei\" has more decimals than gwei allows (9)");
        assert!(bad("-1 gwei").contains("is not a valid amount"));
        assert!(bad("1e9 wei").contains("unknown unit"));
        assert!(bad(". gwei").contains("is not a valid amount"));
        assert!(bad("1. gwei").contains("is not a valid amount"));
        assert!(bad("1_000 wei").contains("unknown unit"));
        assert!(bad(&format!("{} ether", "9".repeat(80))).ends_with("is too large"));
    }

    #[test]
    fn amount_as_integer_is_wei() {
        let c = load("[worker]\nprice_per_second = 1000\n").unwrap();
        assert_eq!(c.worker.price_per_second, U80::from(1000));
        assert_eq!(
            load("[worker]\nprice_per_second = -1\n").unwrap_err().to_string(),
            "test.toml: worker.price_per_second: must not be negative"
        );
    }

    #[test]
    fn price_rules() {
        assert_eq!(
            load("[worker]\nprice_per_second = \"0 wei\"\n").unwrap_err().to_string(),
            "test.toml: worker.price_per_second: must be greater than zero"
        );
        let e = load("[worker]\nprice_per_second = \"2000000 ether\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "test.toml: worker.price_per_second: must be at most 1208925819614629174706175 wei (80 \
             bits)"
        );
        assert!(load("[worker]\nprice_per_second = \"1208925819614629174706175 wei\"\n").is_ok());
    }

    #[test]
    fn stake_rules() {
        let c = with("worker", "stake = \"0.01 ether\"").unwrap();
        assert_eq!(c.worker.stake, Some(U96::from(10_000_000_000_000_000u64)));
        assert_eq!(err("worker", "stake = 0"), "test.toml: worker.stake: must be greater than zero");
        assert!(err("worker", "stake = \"100000000000 ether\"").starts_with(
            "test.toml: worker.stake: must be at most 79228162514264337593543950335 wei (96 bits)"
        ));
    }

    #[test]
    fn sizes() {
        let ok = |s: &str| parse_size_mib(s).unwrap();
        assert_eq!(ok("512 MiB"), 512);
        assert_eq!(ok("512MiB"), 512);
        assert_eq!(ok("2 GiB"), 2048);
        assert_eq!(ok("1.5 GiB"), 1536);
        assert_eq!(ok("0.5 TiB"), 512 * 1024);
        let bad = |s: &str| parse_size_mib(s).unwrap_err();
        assert_eq!(bad("2 GB"), "unknown unit \"GB\": expected MiB, GiB or TiB (powers of 1024)");
        assert_eq!(bad("2 gib"), "unknown unit \"gib\": expected MiB, GiB or TiB (powers of 1024)");
        assert_eq!(bad("512"), "\"512\" has no unit: expected MiB, GiB or TiB, or an integer of MiB");
        assert_eq!(bad("0.1 GiB"), "\"0.1 GiB\" is not a whole number of MiB");
        assert_eq!(bad("1.5 MiB"), "\"1.5 MiB\" is not a whole number of MiB");
        assert!(bad("-1 GiB").contains("is not a valid size"));
        assert!(bad(&format!("{} TiB", "9".repeat(30))).ends_with("is too large"));
    }

    #[test]
    fn size_keys() {
        let c = with("worker", "memory = \"2 GiB\"\ndisk = 4096").unwrap();
        assert_eq!(c.worker.memory_mib.map(NonZeroU32::get), Some(2048));
        assert_eq!(c.worker.disk_mib.map(NonZeroU32::get), Some(4096));
        assert_eq!(err("worker", "memory = 0"), "test.toml: worker.memory: must be at least 1 MiB");
        assert_eq!(
            err("worker", "disk = \"5000 TiB\""),
            "test.toml: worker.disk: must be at most 4294967295 MiB"
        );
        assert_eq!(err("worker", "disk = -5"), "test.toml: worker.disk: must not be negative");
    }

    #[test]
    fn cpus() {
        assert_eq!(cpus_to_millis(1.5).unwrap().get(), 1500);
        assert_eq!(cpus_to_millis(0.001).unwrap().get(), 1);
        assert_eq!(cpus_to_millis(1.001).unwrap().get(), 1001);
        assert_eq!(cpus_to_millis(4.0).unwrap().get(), 4000);
        assert_eq!(cpus_to_millis(0.0).unwrap_err(), "must be greater than zero");
        assert_eq!(cpus_to_millis(-1.0).unwrap_err(), "must be greater than zero");
        assert_eq!(cpus_to_millis(f64::NAN).unwrap_err(), "must be greater than zero");
        assert_eq!(cpus_to_millis(0.0005).unwrap_err(), "0.0005 has more than three decimals (millicores)");
        assert_eq!(cpus_to_millis(1e7).unwrap_err(), "must be at most 4294967");
        let c = with("worker", "cpus = 2").unwrap();
        assert_eq!(c.worker.cpu_millis.map(NonZeroU32::get), Some(2000));
        assert_eq!(
            err("worker", "cpus = 0.5e-3"),
            "test.toml: worker.cpus: 0.0005 has more than three decimals (millicores)"
        );
        assert_eq!(
            err("worker", "cpus = \"2\""),
            "test.toml: worker.cpus: invalid type: string \"2\", expected a number of CPUs such as 2 or 1.5"
        );
    }

    #[test]
    fn durations() {
        let c = with("worker", "max_duration = \"1h 30m\"").unwrap();
        assert_eq!(c.worker.max_duration, Duration::from_secs(5400));
        assert_eq!(
            err("worker", "max_duration = \"30s\""),
            "test.toml: worker.max_duration: must be between 1m and 365d"
        );
        assert_eq!(
            err("worker", "max_duration = \"90s 500ms\""),
            "test.toml: worker.max_duration: must be a whole number of seconds"
        );
        let c = with("chain", "poll_interval = \"500ms\"").unwrap();
        assert_eq!(c.chain.poll_interval, Duration::from_millis(500));
        assert_eq!(
            err("chain", "poll_interval = \"10ms\""),
            "test.toml: chain.poll_interval: must be between 100ms and 5m"
        );
        assert!(
            err("chain", "poll_interval = \"2 secs please\"")
                .starts_with("test.toml: chain.poll_interval: \"2 secs please\" is not a duration (")
        );
    }

    #[test]
    fn slots_bounds() {
        let many = load(&format!("{MIN}slots = 255\n[work]\nports = \"7100-7354\"\n")).unwrap();
        assert_eq!(many.worker.slots.get(), 255);
        assert_eq!(
            err("worker", "slots = 65"),
            "test.toml: worker.slots: 65 agreements at once need as many ports, and work.ports \"7100-7163\" has 64"
        );
        assert_eq!(err("worker", "slots = 256"), "test.toml: worker.slots: must be between 1 and 255");
        assert_eq!(err("worker", "slots = -1"), "test.toml: worker.slots: must be between 1 and 255");
    }

    #[test]
    fn urls() {
        let c = with("chain", "rpc_url = \"https://rpc.example:8545/x\"\nws_url = \"wss://rpc.example/ws\"")
            .unwrap();
        assert_eq!(c.chain.rpc_url.as_str(), "https://rpc.example:8545/x");
        assert_eq!(c.chain.ws_url.unwrap().as_str(), "wss://rpc.example/ws");
        assert_eq!(
            err("chain", "rpc_url = \"ws://127.0.0.1:8545\""),
            "test.toml: chain.rpc_url: scheme must be http or https, not \"ws\""
        );
        assert_eq!(
            err("chain", "ws_url = \"http://127.0.0.1:8546\""),
            "test.toml: chain.ws_url: scheme must be ws or wss, not \"http\""
        );
        assert_eq!(
            err("chain", "rpc_url = \"127.0.0.1:8545\""),
            "test.toml: chain.rpc_url: \"127.0.0.1:8545\" is not a valid URL: relative URL \
             without a base"
        );
        assert_eq!(
            err("chain", "rpc_url = \"localhost:8545\""),
            "test.toml: chain.rpc_url: scheme must be http or https, not \"localhost\""
        );
        assert_eq!(
            err("chain", "rpc_url = \"not a url\""),
            "test.toml: chain.rpc_url: \"not a url\" is not a valid URL: relative URL without a base"
        );
    }

    #[test]
    fn chain_id_and_confirmations() {
        assert_eq!(with("chain", "chain_id = 31337").unwrap().chain.chain_id, Some(31337));
        assert_eq!(err("chain", "chain_id = 0"), "test.toml: chain.chain_id: must be greater than zero");
        assert_eq!(with("chain", "confirmations = 0").unwrap().chain.confirmations, 0);
        assert_eq!(with("chain", "confirmations = 64").unwrap().chain.confirmations, 64);
        assert_eq!(
            err("chain", "confirmations = 65"),
            "test.toml: chain.confirmations: must be between 0 and 64"
        );
    }

    #[test]
    fn contracts_file_or_dispatcher() {
        const D: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
        let c = with("chain", &format!("dispatcher = \"{D}\"\ndeploy_block = 7")).unwrap();
        assert_eq!(c.chain.contracts, Contracts::Dispatcher { address: D.parse().unwrap(), deploy_block: 7 });
        let c = with("chain", &format!("dispatcher = \"{D}\"")).unwrap();
        assert!(matches!(c.chain.contracts, Contracts::Dispatcher { deploy_block: 0, .. }));
        let c = with("chain", "deployment_file = \"/srv/d.json\"").unwrap();
        assert_eq!(c.chain.contracts, Contracts::DeploymentFile("/srv/d.json".into()));
        assert_eq!(
            err("chain", &format!("dispatcher = \"{D}\"\ndeployment_file = \"/srv/d.json\"")),
            "test.toml: chain.dispatcher: set either chain.dispatcher or chain.deployment_file, not both"
        );
        assert_eq!(
            err("chain", "deploy_block = 3"),
            "test.toml: chain.deploy_block: only meaningful with chain.dispatcher (the deployment \
             file has its own)"
        );
        assert_eq!(
            err("chain", &format!("dispatcher = \"{D}\"\ndeploy_block = -1")),
            "test.toml: chain.deploy_block: must not be negative"
        );
        assert_eq!(
            err("chain", "deployment_file = \"deployment.json\""),
            "test.toml: chain.deployment_file: must be an absolute path, not \"deployment.json\""
        );
    }

    #[test]
    fn addresses() {
        let lower = "0x5fbdb2315678afecb367f032d93f642f64180aa3";
        assert!(address("k", lower).is_ok());
        assert!(address("k", &lower.to_uppercase().replace("0X", "0x")).is_ok());
        assert!(address("k", "0x5FbDB2315678afecb367f032d93F642f64180aa3").is_ok());
        assert_eq!(
            address("k", "0x5FbDB2315678afecb367f032d93F642f64180aA3").unwrap_err().1,
            "\"0x5FbDB2315678afecb367f032d93F642f64180aA3\" has a wrong EIP-55 checksum \
             (mistyped?); write it in one case to skip the check"
        );
        assert_eq!(
            address("k", "0x1234").unwrap_err().1,
            "\"0x1234\" is not an address: expected 0x followed by 40 hex digits"
        );
        assert!(address("k", &lower[2..]).is_err());
        assert_eq!(
            err("worker", "payout_address = \"0x0000000000000000000000000000000000000000\""),
            "test.toml: worker.payout_address: must not be the zero address"
        );
        let c = with("worker", &format!("payout_address = \"{lower}\"")).unwrap();
        assert_eq!(c.worker.payout_address, Some(lower.parse().unwrap()));
    }

    #[test]
    fn arch() {
        assert_eq!(with("worker", "arch = \"armhf\"").unwrap().worker.arch, Some(Arch::Armhf));
        assert_eq!(
            err("worker", "arch = \"aarch64\""),
            "test.toml: worker.arch: unknown architecture \"aarch64\": expected one of amd64, \
             arm64, armhf"
        );
        for name in Arch::NAMES {
            let a = Arch::from_name(name).unwrap();
            assert_eq!(a.name(), name);
        }
        assert_eq!(
            [Arch::Amd64, Arch::Arm64, Arch::Armhf].map(Arch::code),
            [1, 2, 3],
            "the contract's codes"
        );
    }

    #[test]
    fn paths_must_be_absolute() {
        assert_eq!(
            err("state", "dir = \"state\""),
            "test.toml: state.dir: must be an absolute path, not \"state\""
        );
        assert_eq!(
            err("api", "control_socket = \"c.sock\""),
            "test.toml: api.control_socket: must be an absolute path, not \"c.sock\""
        );
    }

    #[test]
    fn http_listen_is_loopback_unless_allowed() {
        assert!(with("api", "http_listen = \"[::1]:9465\"").is_ok());
        assert!(with("api", "http_listen = \"[::ffff:127.0.0.1]:9465\"").is_ok());
        assert_eq!(
            err("api", "http_listen = \"0.0.0.0:9465\""),
            "test.toml: api.http_listen: 0.0.0.0:9465 is not a loopback address; the endpoint has \
             no authentication, so set api.http_allow_remote = true to serve it beyond this \
             machine"
        );
        let c = with("api", "http_listen = \"0.0.0.0:9465\"\nhttp_allow_remote = true").unwrap();
        assert_eq!(c.api.http_listen, "0.0.0.0:9465".parse().unwrap());
        assert_eq!(
            err("api", "http_listen = \"localhost:9465\""),
            "test.toml: api.http_listen: \"localhost:9465\" is not an IP address and port, such \
             as \"127.0.0.1:9465\""
        );
        assert_eq!(
            err("api", "http_listen = \"127.0.0.1:0\""),
            "test.toml: api.http_listen: the port must not be 0"
        );
    }

    #[test]
    fn max_fee_per_gas() {
        let c = with("chain", "max_fee_per_gas = \"50 gwei\"").unwrap();
        assert_eq!(c.chain.max_fee_per_gas, Some(50_000_000_000));
        assert_eq!(
            err("chain", "max_fee_per_gas = \"0 gwei\""),
            "test.toml: chain.max_fee_per_gas: must be greater than zero"
        );
        assert_eq!(
            err("chain", "max_fee_per_gas = \"1000000000000000000000 ether\""),
            "test.toml: chain.max_fee_per_gas: must fit in 128 bits of wei"
        );
    }

    #[test]
    fn registration_terms_follow_only_the_on_chain_keys() {
        let a = load(MIN).unwrap();
        let same = with("chain", "confirmations = 5\npoll_interval = \"10s\"").unwrap();
        assert_eq!(a.registration_terms(), same.registration_terms());
        let stake = with("worker", "stake = \"1 ether\"").unwrap();
        assert_eq!(a.registration_terms(), stake.registration_terms());
        for change in [
            "slots = 2",
            "cpus = 1",
            "memory = 512",
            "disk = 512",
            "arch = \"arm64\"",
            "max_duration = \"1h\"",
        ] {
            let b = with("worker", change).unwrap();
            assert_ne!(a.registration_terms(), b.registration_terms(), "{change}");
        }
        let b = load("[worker]\nprice_per_second = \"2 gwei\"\n").unwrap();
        assert_ne!(a.registration_terms(), b.registration_terms());
        assert_eq!(a.registration_terms().max_duration_secs, 86_400);
    }

    #[test]
    fn load_names_the_path_when_the_file_is_missing() {
        let e = Config::load(Path::new("/nonexistent/zeppelin.toml")).unwrap_err();
        assert!(e.to_string().starts_with("reading config file /nonexistent/zeppelin.toml: "), "{e}");
    }
}
