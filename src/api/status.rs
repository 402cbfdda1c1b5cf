//! What `zeppelin status` shows: plain data, independent of the core's types. The app fills a
//! [`StatusReport`] as its state changes and publishes it on a `watch` channel; the control
//! socket and the HTTP endpoints read the latest one and [`StatusReport::stamp`] it with the
//! time of the answer, which fills the derived fields (uptime, lag, health).
//!
//! Amounts are wei, written in JSON as decimal strings (they overflow JSON's safe integers).
//! Times are Unix seconds.
use serde::{Deserialize, Serialize};

/// How many poll intervals without a processed block make the daemon degraded.
pub const STALE_AFTER_POLL_INTERVALS: u64 = 3;

/// The daemon's state as shown to the operator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// `crate::version::LONG` of the daemon.
    pub version: String,
    /// The worker's Ethereum address, `0x...`.
    pub address: String,
    pub state_dir: String,
    /// When the daemon started.
    pub started_at: u64,
    pub registration: RegistrationStatus,
    #[serde(with = "wei")]
    pub balance_wei: u128,
    /// Credits in the dispatcher that `withdraw()` would pay out.
    #[serde(with = "wei")]
    pub credits_wei: u128,
    pub agreements: Vec<AgreementStatus>,
    pub chain: ChainStatus,
    /// Keys of the transactions decided and not yet seen settled (`register`, `answer:3`, ...).
    pub transactions_in_flight: Vec<String>,
    pub last_error: Option<LastError>,
    /// Problems the app knows of that make the daemon degraded (say, "docker engine
    /// unreachable"); [`StatusReport::stamp`] adds the ones it can derive.
    pub problems: Vec<String>,
    /// NAT traversal: the protocol in use, the external address, each mapping, or why the
    /// worker is not reachable (none before the NAT task starts).
    #[serde(default)]
    pub nat: Option<crate::nat::NatStatus>,

    // Derived by `stamp`; whatever the app puts here is overwritten.
    /// When this report was taken.
    pub now: u64,
    pub uptime_secs: u64,
    pub health: Health,
}

/// The registration in the dispatcher.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationStatus {
    /// In JSON, `"state": "leaving", "unbond_at": ...` beside the other fields.
    #[serde(flatten)]
    pub state: RegistrationState,
    /// The registered terms (none when not registered or leaving).
    pub terms: Option<TermsStatus>,
    #[serde(with = "wei")]
    pub stake_wei: u128,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum RegistrationState {
    /// Not read from the chain yet.
    #[default]
    Unknown,
    NotRegistered,
    Active,
    Paused,
    /// Leaving; the stake can be withdrawn from `unbond_at` (chain time).
    Leaving {
        unbond_at: u64,
    },
}

impl RegistrationState {
    /// A short name: "active", "leaving", ...
    pub fn name(&self) -> &'static str {
        match self {
            RegistrationState::Unknown => "unknown",
            RegistrationState::NotRegistered => "not registered",
            RegistrationState::Active => "active",
            RegistrationState::Paused => "paused",
            RegistrationState::Leaving { .. } => "leaving",
        }
    }
}

/// What the worker offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermsStatus {
    /// Debian's name: amd64, arm64, armhf.
    pub arch: String,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    #[serde(with = "wei")]
    pub price_per_second_wei: u128,
    pub slots: u8,
}

/// One agreement the daemon takes part in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementStatus {
    pub id: u64,
    pub role: AgreementRole,
    pub stage: AgreementStage,
    pub client: String,
    pub worker: String,
    /// Where the work stands on this worker ("awaiting image", "running on port 7100"...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgreementRole {
    Worker,
    Verifier,
}

impl AgreementRole {
    pub const ALL: [AgreementRole; 2] = [AgreementRole::Worker, AgreementRole::Verifier];

    pub fn name(self) -> &'static str {
        match self {
            AgreementRole::Worker => "worker",
            AgreementRole::Verifier => "verifier",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgreementStage {
    Created,
    Accepted,
    Running,
    Terminated,
    Finished,
    Cancelled,
    Aborted,
}

impl AgreementStage {
    pub const ALL: [AgreementStage; 7] = [
        AgreementStage::Created,
        AgreementStage::Accepted,
        AgreementStage::Running,
        AgreementStage::Terminated,
        AgreementStage::Finished,
        AgreementStage::Cancelled,
        AgreementStage::Aborted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AgreementStage::Created => "created",
            AgreementStage::Accepted => "accepted",
            AgreementStage::Running => "running",
            AgreementStage::Terminated => "terminated",
            AgreementStage::Finished => "finished",
            AgreementStage::Cancelled => "cancelled",
            AgreementStage::Aborted => "aborted",
        }
    }
}

/// The chain connection and the follower's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub rpc_url: String,
    pub chain_id: u64,
    /// The latest block the RPC endpoint reported (none before the first answer).
    pub head_block: Option<u64>,
    /// Every confirmed block up to this one has been processed.
    pub processed_block: u64,
    /// Whether the last RPC request succeeded.
    pub connected: bool,
    /// When the follower last completed a poll.
    pub last_sync: Option<u64>,
    /// How often the follower polls.
    pub poll_interval_secs: u64,
    /// Derived by `stamp`: head minus processed.
    pub lag_blocks: Option<u64>,
}

/// The last error the daemon met.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    pub at: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthStatus {
    #[default]
    Ok,
    Degraded,
}

/// Whether the daemon is doing its job, and if not why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub reasons: Vec<String>,
}

impl Health {
    pub fn is_ok(&self) -> bool {
        self.status == HealthStatus::Ok
    }
}

impl StatusReport {
    /// The report as of `now`: fills uptime, lag and health.
    pub fn stamp(mut self, now: u64) -> Self {
        self.now = now;
        self.uptime_secs = now.saturating_sub(self.started_at);
        self.chain.lag_blocks =
            self.chain.head_block.map(|head| head.saturating_sub(self.chain.processed_block));
        self.health = self.assess();
        self
    }

    /// Health from the report's own facts (pure; `now` is the report's).
    fn assess(&self) -> Health {
        let mut reasons = Vec::new();
        if !self.chain.connected {
            reasons.push(format!("RPC endpoint {} unreachable", self.chain.rpc_url));
        }
        let stale_after = self.chain.poll_interval_secs.max(1) * STALE_AFTER_POLL_INTERVALS;
        match self.chain.last_sync {
            None if self.uptime_secs > stale_after => {
                reasons.push(format!("no chain sync since start-up {}s ago", self.uptime_secs))
            }
            Some(at) if self.now.saturating_sub(at) > stale_after => reasons.push(format!(
                "last chain sync {}s ago (more than {STALE_AFTER_POLL_INTERVALS} poll intervals of {}s)",
                self.now.saturating_sub(at),
                self.chain.poll_interval_secs
            )),
            _ => {}
        }
        reasons.extend(self.problems.iter().cloned());
        if let Some(nat) = &self.nat
            && !nat.reachable
            && nat.mode != "off"
        {
            reasons.push(format!("NAT: {}", nat.explanation));
        }
        let status = if reasons.is_empty() { HealthStatus::Ok } else { HealthStatus::Degraded };
        Health { status, reasons }
    }
}

/// Wei as a decimal string in JSON.
mod wei {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(amount: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(amount)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(|_| D::Error::custom(format!("{text:?} is not an amount of wei")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> StatusReport {
        StatusReport {
            started_at: 1000,
            chain: ChainStatus {
                rpc_url: "http://127.0.0.1:8545".into(),
                head_block: Some(110),
                processed_block: 108,
                connected: true,
                last_sync: Some(1090),
                poll_interval_secs: 2,
                ..ChainStatus::default()
            },
            ..StatusReport::default()
        }
    }

    #[test]
    fn stamping_derives_uptime_lag_and_health() {
        let r = report().stamp(1095);
        assert_eq!((r.now, r.uptime_secs, r.chain.lag_blocks), (1095, 95, Some(2)));
        assert!(r.health.is_ok(), "{:?}", r.health);
    }

    #[test]
    fn a_stale_sync_an_unreachable_rpc_and_app_problems_degrade() {
        let mut r = report();
        r.chain.connected = false;
        r.problems.push("docker engine unreachable".into());
        let r = r.stamp(1097);
        assert_eq!(r.health.status, HealthStatus::Degraded);
        assert_eq!(
            r.health.reasons,
            [
                "RPC endpoint http://127.0.0.1:8545 unreachable",
                "last chain sync 7s ago (more than 3 poll intervals of 2s)",
                "docker engine unreachable",
            ]
        );
    }

    #[test]
    fn no_sync_at_all_is_fine_only_just_after_start_up() {
        let mut r = report();
        r.chain.last_sync = None;
        assert!(r.clone().stamp(1006).health.is_ok());
        assert_eq!(r.stamp(1007).health.reasons, ["no chain sync since start-up 7s ago"]);
    }

    #[test]
    fn an_unreachable_worker_is_degraded_unless_nat_is_off() {
        let mut r = report();
        r.nat = Some(crate::nat::NatStatus {
            mode: "auto".into(),
            explanation: "not reachable: no gateway answered".into(),
            ..Default::default()
        });
        assert_eq!(r.clone().stamp(1095).health.reasons, ["NAT: not reachable: no gateway answered"]);
        r.nat.as_mut().unwrap().mode = "off".into();
        assert!(r.clone().stamp(1095).health.is_ok());
        r.nat.as_mut().unwrap().mode = "auto".into();
        r.nat.as_mut().unwrap().reachable = true;
        assert!(r.stamp(1095).health.is_ok());
    }

    #[test]
    fn wei_is_a_decimal_string_in_json() {
        let mut r = report();
        r.balance_wei = u128::MAX;
        r.registration.state = RegistrationState::Leaving { unbond_at: 5 };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["balance_wei"], u128::MAX.to_string());
        assert_eq!(json["registration"]["state"], "leaving");
        assert_eq!(json["registration"]["unbond_at"], 5);
        assert_eq!(serde_json::from_value::<StatusReport>(json).unwrap(), r);
    }
}
