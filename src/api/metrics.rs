//! Prometheus metrics. Counters are incremented by whoever does the work (cheap: atomics behind
//! an `Arc`); gauges are read from the latest [`StatusReport`] at each scrape, so the report
//! stays the one place the app publishes its state.
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use super::status::{AgreementRole, AgreementStage, RegistrationState, StatusReport};

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NatLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgreementLabels {
    role: &'static str,
    stage: &'static str,
}

/// Wei overflows i64 (9.2 ETH); these gauges are floats.
type WeiGauge = Gauge<f64, AtomicU64>;

/// The daemon's metrics. Clones share them.
#[derive(Clone, Debug)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// Held while setting the gauges and encoding, so that a scrape sees one report.
    registry: Mutex<Registry>,
    rpc_requests: Family<MethodLabels, Counter>,
    rpc_errors: Counter,
    transactions_sent: Counter,
    head_block: Gauge,
    processed_block: Gauge,
    lag_blocks: Gauge,
    registered: Gauge,
    transactions_in_flight: Gauge,
    agreements: Family<AgreementLabels, Gauge>,
    stake: WeiGauge,
    credits: WeiGauge,
    balance: WeiGauge,
    nat_reachable: Gauge,
    nat_mappings: Family<NatLabels, Gauge>,
    /// Totals kept by the NAT task, carried into counters at each scrape.
    nat_renewals: Counter,
    nat_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let inner = Inner {
            registry: Mutex::new(Registry::with_prefix("zeppelin")),
            rpc_requests: Family::default(),
            rpc_errors: Counter::default(),
            transactions_sent: Counter::default(),
            head_block: Gauge::default(),
            processed_block: Gauge::default(),
            lag_blocks: Gauge::default(),
            registered: Gauge::default(),
            transactions_in_flight: Gauge::default(),
            agreements: Family::default(),
            stake: WeiGauge::default(),
            credits: WeiGauge::default(),
            balance: WeiGauge::default(),
            nat_reachable: Gauge::default(),
            nat_mappings: Family::default(),
            nat_renewals: Counter::default(),
            nat_failures: Counter::default(),
        };
        {
            let mut r = inner.registry.lock().unwrap();
            r.register(
                "chain_head_block",
                "Latest block reported by the RPC endpoint",
                inner.head_block.clone(),
            );
            r.register(
                "chain_processed_block",
                "Last block the follower processed",
                inner.processed_block.clone(),
            );
            r.register(
                "chain_lag_blocks",
                "Blocks between the head and the last processed",
                inner.lag_blocks.clone(),
            );
            r.register("rpc_requests", "RPC requests sent, by method", inner.rpc_requests.clone());
            r.register("rpc_errors", "RPC requests that failed", inner.rpc_errors.clone());
            r.register("transactions_sent", "Transactions sent", inner.transactions_sent.clone());
            r.register(
                "transactions_in_flight",
                "Transactions decided and not yet seen settled",
                inner.transactions_in_flight.clone(),
            );
            r.register("agreements", "Agreements by our role and their stage", inner.agreements.clone());
            r.register(
                "registered",
                "1 if registered in the dispatcher (active, paused or leaving)",
                inner.registered.clone(),
            );
            r.register("stake_wei", "Stake in the dispatcher, in wei", inner.stake.clone());
            r.register(
                "credits_wei",
                "Withdrawable credits in the dispatcher, in wei",
                inner.credits.clone(),
            );
            r.register("balance_wei", "Wallet balance, in wei", inner.balance.clone());
            r.register(
                "nat_reachable",
                "1 if the worker's ports are mapped on the router and its external address is public",
                inner.nat_reachable.clone(),
            );
            r.register(
                "nat_mappings",
                "Wanted port mappings by state (mapped, pending, failing, forwarded)",
                inner.nat_mappings.clone(),
            );
            r.register("nat_renewals", "Port mapping leases renewed", inner.nat_renewals.clone());
            r.register("nat_failures", "Port mapping requests that failed", inner.nat_failures.clone());
            r.register(
                "build",
                "Build information",
                Info::new([
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("revision", env!("ZEPPELIN_GIT_REV")),
                    ("target", crate::version::TARGET),
                ]),
            );
        }
        Metrics(Arc::new(inner))
    }

    /// One RPC request sent (`eth_getLogs`, ...).
    pub fn rpc_request(&self, method: &str) {
        self.0.rpc_requests.get_or_create(&MethodLabels { method: method.to_owned() }).inc();
    }

    /// One RPC request failed.
    pub fn rpc_error(&self) {
        self.0.rpc_errors.inc();
    }

    /// One transaction sent.
    pub fn transaction_sent(&self) {
        self.0.transactions_sent.inc();
    }

    /// The metrics in the OpenMetrics text format, gauges as of `report`.
    pub fn render(&self, report: &StatusReport) -> String {
        let m = &self.0;
        let registry = m.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let chain = &report.chain;
        m.head_block.set(chain.head_block.unwrap_or(0).try_into().unwrap_or(i64::MAX));
        m.processed_block.set(chain.processed_block.try_into().unwrap_or(i64::MAX));
        m.lag_blocks.set(chain.lag_blocks.unwrap_or(0).try_into().unwrap_or(i64::MAX));
        let registered = matches!(
            report.registration.state,
            RegistrationState::Active | RegistrationState::Paused | RegistrationState::Leaving { .. }
        );
        m.registered.set(registered.into());
        m.transactions_in_flight.set(report.transactions_in_flight.len().try_into().unwrap_or(i64::MAX));
        // Every combination, zeros included, so that dashboards see series drop to 0.
        for role in AgreementRole::ALL {
            for stage in AgreementStage::ALL {
                let count = report.agreements.iter().filter(|a| a.role == role && a.stage == stage).count();
                let labels = AgreementLabels { role: role.name(), stage: stage.name() };
                m.agreements.get_or_create(&labels).set(count.try_into().unwrap_or(i64::MAX));
            }
        }
        m.stake.set(report.registration.stake_wei as f64);
        m.credits.set(report.credits_wei as f64);
        m.balance.set(report.balance_wei as f64);
        if let Some(nat) = &report.nat {
            m.nat_reachable.set(nat.reachable.into());
            for state in ["mapped", "pending", "failing", "forwarded"] {
                let count = nat.mappings.iter().filter(|x| x.state == state).count();
                m.nat_mappings.get_or_create(&NatLabels { state }).set(count.try_into().unwrap_or(i64::MAX));
            }
            // The task's totals only grow; carry the difference into the counters.
            m.nat_renewals.inc_by(nat.renewals.saturating_sub(m.nat_renewals.get()));
            m.nat_failures.inc_by(nat.failures.saturating_sub(m.nat_failures.get()));
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{MappingStatus, NatStatus, Transport};

    #[test]
    fn nat_gauges_and_counters_follow_the_report() {
        let metrics = Metrics::new();
        let mapping = |state: &str| MappingStatus {
            label: "transfer".into(),
            transport: Transport::Tcp,
            internal_port: 7070,
            external: None,
            state: state.into(),
            lease_secs: None,
            expires_at: None,
            renewals: 0,
            late_renewals: 0,
            last_error: None,
        };
        let mut report = StatusReport {
            nat: Some(NatStatus {
                reachable: true,
                mappings: vec![mapping("mapped"), mapping("failing")],
                renewals: 3,
                failures: 1,
                ..NatStatus::default()
            }),
            ..StatusReport::default()
        };
        let text = metrics.render(&report);
        for line in [
            "zeppelin_nat_reachable 1\n",
            "zeppelin_nat_mappings{state=\"mapped\"} 1\n",
            "zeppelin_nat_mappings{state=\"failing\"} 1\n",
            "zeppelin_nat_mappings{state=\"pending\"} 0\n",
            "zeppelin_nat_renewals_total 3\n",
            "zeppelin_nat_failures_total 1\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // Counters carry the task's totals, not a sum of scrapes.
        report.nat.as_mut().unwrap().renewals = 5;
        let text = metrics.render(&report);
        assert!(text.contains("zeppelin_nat_renewals_total 5\n"), "{text}");
        let text = metrics.render(&report);
        assert!(text.contains("zeppelin_nat_renewals_total 5\n"), "{text}");
    }
}
