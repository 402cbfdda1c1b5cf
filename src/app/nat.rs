//! The daemon's NAT task: started from [`super::run`] with the `[nat]` config, it keeps the
//! configured ports mapped on the home router (see [`crate::nat`]); its state reaches the event
//! loop as `Trigger::Nat` and goes into the status report. Cancelling the daemon's token makes
//! it remove its mappings (bounded by [`crate::nat::service::RELEASE_TIMEOUT`]).
use std::collections::BTreeMap;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{NatConfig, NatMode};
use crate::nat::{Manual, NatHandle, NatService, NatStatus, ServiceConfig, Transport};

/// What the NAT task does for `config`.
pub fn service_config(config: &NatConfig) -> ServiceConfig {
    ServiceConfig {
        mode: config.mode.name().to_owned(),
        methods: config.mode.methods(),
        lease: config.lease,
        refresh: config.refresh,
        manual: match config.mode {
            NatMode::Manual { external_address } => {
                Some(Manual { external_ip: external_address, ports: BTreeMap::new() })
            }
            _ => None,
        },
    }
}

/// Starts the NAT task on `tracker`, wanting `nat.ports` (TCP). Returns the handle and its
/// state's changes.
pub fn start(
    config: &NatConfig,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> (NatHandle, watch::Receiver<NatStatus>) {
    let (service, handle, commands) = NatService::for_host(service_config(config));
    for port in &config.ports {
        handle.want(Transport::Tcp, *port, "transfer");
    }
    tracker.spawn(service.run(commands, cancel));
    let changes = handle.subscribe();
    (handle, changes)
}
