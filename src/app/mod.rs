//! The daemon: wiring, the one event loop, and shutdown.
//!
//! Everything that can make the daemon do work is in `Trigger` and handled in one `select!`
//! in [`run`]: the poll timer (follow the chain, settle transactions, act), a new head over the
//! WebSocket (the same, sooner), commands from the
//! control socket, SIGHUP (reload the config), the watchdog timer, and SIGTERM/SIGINT.
//!
//! One poll (`Daemon::poll`) is: read the head; check that the last processed block is still
//! canonical (else rewind to the newest checkpoint that is, restoring the core's state from it);
//! feed the confirmed blocks' events to the core; feed it the receipts of the transactions in
//! flight; sign what it decided into the outbox; **save the snapshot**; then broadcast. Saving
//! before broadcasting is what makes a transaction survive `kill -9` exactly once (see
//! [`outbox`]).
pub mod nat;
pub mod outbox;
pub mod verify;
pub mod work;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::outbox::Outbox;
use crate::api::status::{
    AgreementRole, AgreementStage, AgreementStatus, ChainStatus, LastError, RegistrationState,
    RegistrationStatus, StatusReport, TermsStatus,
};
use crate::api::{Command, ControlCommand, ControlServer, Metrics};
use crate::chain::client::{AlloyChain, BlockRef, Chain, ChainError};
use crate::chain::decode;
use crate::chain::deployment::Deployment;
use crate::config::{Config, Contracts};
use crate::core::node::{Action, ChainEvent, Event, Goal, Node, RETRY_AFTER_SECS, Registration, Role, Stage};
use crate::core::types::{Address, Terms, Wei};
use crate::core::work::{Phase, WorkEvent};
use crate::identity::{Identity, KeyOrigin, Password};
use crate::store::{DbStore, Store};
use crate::systemd::Notifier;

/// The most blocks asked for in one `eth_getLogs` range.
const MAX_RANGE: u64 = 5_000;
/// The most ranges processed in one poll (catching up yields to the rest of the loop).
const MAX_RANGES_PER_POLL: usize = 8;
/// Checkpoints of the core's state kept for rewinding after a reorg.
const CHECKPOINTS: usize = 64;
/// Current snapshot format.
const SNAPSHOT_VERSION: u32 = 1;

/// Everything the daemon keeps across restarts, saved as one value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub chain_id: u64,
    pub dispatcher: [u8; 20],
    /// The core's state (none before the first contact with the chain).
    pub node: Option<Node>,
    /// The last processed block.
    pub cursor: Option<BlockRef>,
    /// The core's state after recent processed blocks, newest last. Kept in memory only: a
    /// reorg right after a restart follows the chain again from the deployment instead.
    #[serde(skip)]
    pub checkpoints: VecDeque<(BlockRef, Node)>,
    pub outbox: Outbox,
    /// Decisions the core counts as in flight that are not signed yet (a refused estimate, an
    /// RPC failure): signed at the next poll, after a restart too.
    #[serde(default)]
    pub queued: Vec<Action>,
    /// What the operator asked for (`pause`, `leave`): survives restarts, rewinds and resyncs.
    #[serde(default)]
    pub mode: Mode,
}

/// The operator's choice, kept apart from the core so a reorg cannot undo it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    #[default]
    Serve,
    Pause,
    Leave,
}

/// What wakes the event loop.
enum Trigger {
    Poll,
    /// A new head arrived over the WebSocket: poll now, even while backing off.
    Head,
    Command(ControlCommand),
    Reload,
    Watchdog,
    /// Something happened to an agreement's work (a push loaded, a container up or failed).
    Work(WorkEvent),
    /// The NAT task's state changed.
    Nat,
    Shutdown,
}

/// The running daemon's state and outside systems.
struct Daemon<C, S> {
    chain: C,
    store: S,
    config: Config,
    config_path: PathBuf,
    me: Address,
    encryption_key: [u8; 32],
    deployment: Deployment,
    snapshot: Snapshot,
    status: StatusReport,
    metrics: Metrics,
    /// The goal from the config; the operator's pause/leave is kept in the core's goal.
    desired_terms: Terms,
    head: Option<BlockRef>,
    balance: Option<Wei>,
    polls: u64,
    consecutive_failures: u32,
    /// No poll before this after a failure (backoff).
    next_attempt: tokio::time::Instant,
    /// Whether the last poll completed.
    healthy: bool,
    /// The last snapshot written, to skip writes that would change nothing.
    saved: Option<Vec<u8>>,
    /// Receiving images and running containers (none when the Docker engine is not set up).
    work: Option<work::Work>,
    /// Containers to start or stop, decided by the core and not carried out yet.
    work_actions: Vec<Action>,
    /// Whether the containers found at start-up were reconciled with the state.
    reconciled: bool,
    /// Our side as a verifier of others' work.
    verifier: verify::Verifier,
    /// The secret our probe moments are drawn from.
    probe_seed: [u8; 32],
}

/// The secret a verifier's probe moments are drawn from: derived from its key, so it is the
/// same after a restart and unknown to the workers it verifies.
fn probe_seed(identity: &Identity) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"zeppelin: verifier probe moments\n");
    h.update(identity.signer().to_bytes());
    h.finalize().into()
}

/// Unix seconds now.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: &Path, config: Config) -> anyhow::Result<()> {
    let notifier = Notifier::from_env();
    let state_dir = config.state.dir.clone();
    let password = Password::from_systemd_credentials()?;
    let (identity, origin) = Identity::load_or_create(&state_dir, &password)?;
    let me = decode::address(identity.address());
    match origin {
        KeyOrigin::Created => info!(address = %me, dir = %state_dir.display(), "generated the worker key"),
        KeyOrigin::Loaded => info!(address = %me, "loaded the worker key"),
    }

    let deployment = match &config.chain.contracts {
        Contracts::DeploymentFile(path) => Deployment::load(path)?,
        Contracts::Dispatcher { address, deploy_block } => Deployment {
            chain_id: config.chain.chain_id.unwrap_or(0),
            dispatcher: *address,
            deploy_block: *deploy_block,
        },
    };
    if let Some(expected) = config.chain.chain_id
        && deployment.chain_id != 0
        && expected != deployment.chain_id
    {
        anyhow::bail!(
            "chain.chain_id is {expected} but the deployment is on chain {}: which one is meant?",
            deployment.chain_id
        );
    }

    let db_path = state_dir.join("state.redb");
    let store = DbStore::open(&db_path)?;
    let snapshot = match Store::<Snapshot>::load(&store)? {
        Some(s) => {
            anyhow::ensure!(
                s.version == SNAPSHOT_VERSION,
                "{} holds state format {} and this daemon reads {SNAPSHOT_VERSION}",
                db_path.display(),
                s.version
            );
            anyhow::ensure!(
                s.chain_id == 0 || deployment.chain_id == 0 || s.chain_id == deployment.chain_id,
                "the state in {} belongs to chain {} but the deployment is on chain {}; move the state \
                 directory aside to start afresh there",
                db_path.display(),
                s.chain_id,
                deployment.chain_id
            );
            anyhow::ensure!(
                s.dispatcher == deployment.dispatcher.0.0,
                "the state in {} belongs to dispatcher {} but the config points to {}; move the state \
                 directory aside to start afresh on the new deployment",
                db_path.display(),
                Address(s.dispatcher),
                deployment.dispatcher
            );
            let mut s = s;
            if let Some(node) = s.node.as_mut() {
                node.resume();
                node.set_probe_seed(probe_seed(&identity));
            }
            info!(
                block = s.cursor.map(|c| c.number),
                transactions = s.outbox.len(),
                "resuming from the saved state"
            );
            s
        }
        None => Snapshot {
            version: SNAPSHOT_VERSION,
            chain_id: deployment.chain_id,
            dispatcher: deployment.dispatcher.0.0,
            node: None,
            cursor: None,
            checkpoints: VecDeque::new(),
            outbox: Outbox::default(),
            queued: Vec::new(),
            mode: Mode::Serve,
        },
    };

    let capacity = crate::host::measure(&state_dir)?;
    let desired_terms = crate::host::terms(&capacity, &config.worker, identity.encryption_public_key())?;
    info!(
        arch = %desired_terms.arch, cpu_millis = desired_terms.cpu_millis, memory_mib = desired_terms.memory_mib,
        disk_mib = desired_terms.disk_mib, price_per_second = desired_terms.price_per_second, "offering"
    );

    let metrics = Metrics::new();
    let chain = AlloyChain::new(
        config.chain.rpc_url.clone(),
        deployment.dispatcher,
        identity.signer().clone(),
        config.chain.max_fee_per_gas,
        metrics.clone(),
    )?;

    // Listeners before READY: a client that sees the unit started can talk to it.
    let control = ControlServer::bind(&config.api.control_socket, Default::default())?;
    let http = crate::api::http::HttpServer::bind(config.api.http_listen, Default::default()).await?;
    let status = StatusReport {
        version: crate::version::LONG.to_owned(),
        address: me.to_string(),
        state_dir: state_dir.display().to_string(),
        started_at: unix_now(),
        chain: ChainStatus {
            rpc_url: config.chain.rpc_url.to_string(),
            chain_id: deployment.chain_id,
            poll_interval_secs: config.chain.poll_interval.as_secs().max(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let (status_tx, status_rx) = watch::channel(status.clone());
    let (command_tx, mut command_rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    // New heads over the WebSocket, if configured, wake the loop early.
    let (head_tx, mut head_rx) = mpsc::channel(1);
    if let Some(ws) = config.chain.ws_url.clone() {
        tracker.spawn(crate::chain::client::watch_heads(ws, head_tx, cancel.clone()));
    }
    tracker.spawn(control.serve(status_rx.clone(), command_tx, cancel.clone().cancelled_owned()));
    tracker.spawn(http.serve(status_rx, metrics.clone(), cancel.clone().cancelled_owned()));
    // Keeps the ports mapped on the home router; removes the mappings when `cancel` fires.
    let (nat_handle, mut nat_rx) = nat::start(&config.nat, &tracker, cancel.clone());

    // The work: the Docker engine, the transfer server, and what connects them to the loop.
    let (work_tx, mut work_rx) = mpsc::channel::<WorkEvent>(64);
    let (delivered_tx, mut delivered_rx) = mpsc::channel(16);
    let verifier = verify::Verifier {
        identity: identity.clone(),
        chain_id: deployment.chain_id,
        dispatcher: decode::address(deployment.dispatcher),
        me,
        events: work_tx.clone(),
    };
    let work =
        start_work(&config, &identity, &deployment, me, nat_handle, work_tx, delivered_tx, &tracker, &cancel)
            .await
            .context("setting up the work (transfer server, Docker engine)")?;

    let mut daemon = Daemon {
        chain,
        store,
        config: config.clone(),
        config_path: config_path.to_owned(),
        me,
        encryption_key: identity.encryption_public_key(),
        deployment,
        snapshot,
        status,
        metrics,
        desired_terms,
        head: None,
        balance: None,
        polls: 0,
        consecutive_failures: 0,
        next_attempt: tokio::time::Instant::now(),
        healthy: true,
        saved: None,
        work: Some(work),
        work_actions: Vec::new(),
        reconciled: false,
        verifier,
        probe_seed: probe_seed(&identity),
    };
    // The config may have changed while the daemon was stopped.
    daemon.apply_config_goal();
    daemon.status.nat = Some(nat_rx.borrow_and_update().clone());
    // Signal handlers before READY: a stop or reload right after start must not kill us.
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    notifier.ready().ok();
    notifier.status("starting: contacting the chain").ok();
    info!(socket = %config.api.control_socket.display(), http = %config.api.http_listen, "ready");

    let mut poll = tokio::time::interval(config.chain.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog =
        tokio::time::interval(notifier.watchdog_interval().unwrap_or(Duration::from_secs(3600)));
    loop {
        let trigger = tokio::select! {
            _ = poll.tick() => Trigger::Poll,
            Some(()) = head_rx.recv() => Trigger::Head,
            Some(command) = command_rx.recv() => Trigger::Command(command),
            _ = sighup.recv() => Trigger::Reload,
            _ = watchdog.tick() => Trigger::Watchdog,
            Some(event) = work_rx.recv() => Trigger::Work(event),
            Some(delivery) = delivered_rx.recv() => {
                let delivery: crate::transfer::server::Delivery = delivery;
                Trigger::Work(WorkEvent::ImageLoaded { id: delivery.agreement })
            }
            Ok(()) = nat_rx.changed() => Trigger::Nat,
            _ = sigterm.recv() => Trigger::Shutdown,
            _ = tokio::signal::ctrl_c() => Trigger::Shutdown,
        };
        match trigger {
            Trigger::Poll | Trigger::Head => {
                if matches!(trigger, Trigger::Head) {
                    daemon.next_attempt = tokio::time::Instant::now();
                }
                daemon.poll_and_report().await;
                notifier.status(&daemon.status_line()).ok();
                status_tx.send_replace(daemon.status.clone());
            }
            Trigger::Command(ControlCommand { command, reply }) => {
                let answer = daemon.command(command);
                daemon.next_attempt = tokio::time::Instant::now();
                // The next poll acts on it; answer now.
                let _ = reply.send(answer);
                status_tx.send_replace(daemon.status.clone());
                poll.reset_immediately();
            }
            Trigger::Reload => {
                notifier.reloading().ok();
                match daemon.reload() {
                    Ok(message) => info!("{message}"),
                    Err(error) => {
                        warn!(error = %format!("{error:#}"), "reload refused; keeping the running config")
                    }
                }
                notifier.ready().ok();
                poll.reset_immediately();
            }
            // The loop is turning and the state can be saved: tell systemd we are alive.
            Trigger::Watchdog => {
                if daemon.healthy {
                    notifier.watchdog().ok();
                }
            }
            Trigger::Work(event) => {
                daemon.on_work(event);
                status_tx.send_replace(daemon.status.clone());
                // Decisions (an offer, declareReady) are signed by the next poll: now.
                daemon.next_attempt = tokio::time::Instant::now();
                poll.reset_immediately();
            }
            Trigger::Nat => {
                daemon.status.nat = Some(nat_rx.borrow_and_update().clone());
                status_tx.send_replace(daemon.status.clone());
            }
            Trigger::Shutdown => break,
        }
    }
    notifier.stopping().ok();
    info!("stopping");
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
        warn!("control and HTTP servers and the NAT task did not stop within 5 s");
    }
    daemon.save().context("saving the state at shutdown")?;
    Ok(())
}

impl<C: Chain, S: Store<Snapshot>> Daemon<C, S> {
    /// Saves the snapshot if it changed since the last save: an idle daemon writes nothing
    /// (an SD card lives longer).
    fn save(&mut self) -> Result<(), crate::store::StoreError> {
        let bytes = serde_json::to_vec(&self.snapshot).expect("snapshots always serialize");
        if self.saved.as_deref() == Some(bytes.as_slice()) {
            return Ok(());
        }
        self.store.save(&self.snapshot)?;
        self.saved = Some(bytes);
        Ok(())
    }

    /// One poll, with its outcome in the status and the logs.
    async fn poll_and_report(&mut self) {
        // After failures, wait longer between attempts: 1, 2, 4 ... up to 32 poll intervals,
        // so an endpoint that is down is not hammered; a new head over the WebSocket or an
        // operator's command brings the next attempt forward.
        if self.consecutive_failures > 0 && tokio::time::Instant::now() < self.next_attempt {
            return;
        }
        self.polls += 1;
        match self.poll().await {
            Ok(()) => {
                if self.consecutive_failures > 0 {
                    info!(after = self.consecutive_failures, "chain reachable again");
                }
                self.consecutive_failures = 0;
                self.status.chain.connected = true;
                self.status.chain.last_sync = Some(unix_now());
                self.healthy = true;
            }
            Err(error) => {
                self.consecutive_failures += 1;
                let backoff = self.config.chain.poll_interval
                    * (1u32 << self.consecutive_failures.min(6).saturating_sub(1));
                self.next_attempt = tokio::time::Instant::now() + backoff;
                let message = format!("{error:#}");
                // Every failure is counted; the first of a run and every tenth are logged.
                if self.consecutive_failures == 1 || self.consecutive_failures.is_multiple_of(10) {
                    warn!(failures = self.consecutive_failures, error = %message, "poll failed; retrying");
                }
                self.status.chain.connected = false;
                self.status.last_error = Some(LastError { message, at: unix_now() });
                // A store that cannot save is worth a restart; an unreachable RPC is not.
                self.healthy = error.downcast_ref::<crate::store::StoreError>().is_none();
            }
        }
        self.refresh_status();
    }

    async fn poll(&mut self) -> anyhow::Result<()> {
        let head = self.chain.head().await?;
        self.head = Some(head);
        // What the core decides goes to `self.snapshot.queued` at once, so that an error later in this
        // poll cannot lose a decision the core already counts as in flight.

        if self.snapshot.node.is_none() {
            let chain_id = self.chain.chain_id().await?;
            anyhow::ensure!(
                self.deployment.chain_id == 0 || chain_id == self.deployment.chain_id,
                "the RPC endpoint serves chain {chain_id} but the deployment is on chain {}",
                self.deployment.chain_id
            );
            let params = self.chain.params().await?;
            let mut node = Node::new(self.me, params, self.goal());
            node.set_probe_seed(self.probe_seed);
            node.set_payout(self.config.worker.payout_address.map(decode::address));
            // Following starts at the deployment block: before it, nobody is registered.
            node.on_event(Event::RegistrationRead(Registration::NotRegistered));
            self.snapshot.node = Some(node);
            self.snapshot.chain_id = chain_id;
            self.snapshot.cursor = None;
        }

        // A reorg deeper than the confirmations replaced a block we processed: rewind.
        if let Some(cursor) = self.snapshot.cursor {
            match self.chain.block(cursor.number).await? {
                Some(canonical) if canonical.hash == cursor.hash => {}
                // A backend that has not seen the block yet is no reorg: ask again next poll.
                None if head.number >= cursor.number => {
                    anyhow::bail!("the RPC endpoint does not know block {} yet", cursor.number)
                }
                _ => self.rewind(head).await?,
            }
        }

        let confirmations = u64::from(self.config.chain.confirmations);
        let target = head.number.saturating_sub(confirmations);
        let mut processed =
            self.snapshot.cursor.map_or(self.deployment.deploy_block.saturating_sub(1), |c| c.number);
        let mut touched = false;
        for _ in 0..MAX_RANGES_PER_POLL {
            if processed >= target {
                break;
            }
            let from = processed + 1;
            let to = target.min(from + MAX_RANGE - 1);
            let chain_events = self.chain.events_for(self.me, from, to).await?;
            let block = self.chain.block(to).await?.with_context(|| format!("block {to} vanished"))?;
            // Every read first, then the core: a failed read leaves the core untouched and
            // the range is asked for again at the next poll.
            let balances = if chain_events.is_empty() {
                None
            } else {
                Some(self.chain.stake_and_credits(self.me, to).await?)
            };
            // Letters to us: what reading them needs from the chain (the client's commitment;
            // where we are the worker, the verifiers' keys to seal our watch letters to).
            let mut letter_reads = std::collections::BTreeMap::new();
            for event in &chain_events {
                if let ChainEvent::MessageSent { id, to, .. } = event
                    && *to == self.me
                    && !letter_reads.contains_key(id)
                {
                    let committed = self.chain.commitment(*id, self.deployment.deploy_block).await?;
                    let mut keys = Vec::new();
                    for verifier in self.chain.verifiers(*id).await? {
                        keys.push((verifier, self.chain.encryption_key(verifier).await?));
                    }
                    letter_reads.insert(*id, (committed, keys));
                }
            }
            let node = self.snapshot.node.as_mut().expect("set above");
            for event in &chain_events {
                debug!(?event, "chain event");
                self.snapshot.queued.extend(node.on_event(Event::Chain(event.clone())));
                if let ChainEvent::MessageSent { id, from, to, ciphertext } = event
                    && *to == self.me
                    && let Some((committed, keys)) = letter_reads.get(id)
                {
                    let read = match node.agreement(*id).map(|a| a.role) {
                        Some(Role::Worker) => {
                            self.work.as_ref().and_then(|w| w.letter(node, *id, *from, ciphertext, keys))
                        }
                        Some(Role::Verifier) => {
                            self.verifier.letter(node, *id, *from, ciphertext, *committed)
                        }
                        None => None,
                    };
                    if let Some(event) = read {
                        self.snapshot.queued.extend(node.on_event(Event::Work(event)));
                    }
                }
            }
            if let Some((stake, credits)) = balances {
                touched = true;
                self.snapshot
                    .queued
                    .extend(node.on_event(Event::Chain(ChainEvent::StakeChanged { worker: self.me, stake })));
                self.snapshot
                    .queued
                    .extend(node.on_event(Event::Chain(ChainEvent::Credits { amount: credits })));
            }
            self.snapshot.queued.extend(node.on_event(Event::Synced {
                block: to,
                timestamp: block.timestamp,
                at_head: to == target,
            }));
            self.snapshot.cursor = Some(block);
            self.snapshot.checkpoints.push_back((block, node.clone()));
            while self.snapshot.checkpoints.len() > CHECKPOINTS {
                self.snapshot.checkpoints.pop_front();
            }
            processed = to;
        }

        // Already at the head when the poll started (a restart on a quiet chain): say so, or a
        // resumed core would wait for the next block to decide anything.
        if processed >= target
            && let (Some(cursor), Some(node)) = (self.snapshot.cursor, self.snapshot.node.as_mut())
            && !node.is_at_head()
        {
            self.snapshot.queued.extend(node.on_event(Event::Synced {
                block: cursor.number,
                timestamp: cursor.timestamp,
                at_head: true,
            }));
        }

        // Receipts of what is in flight, counted only once their block is confirmed (a receipt
        // in a block that a reorg may still drop would let the core decide again too early).
        let unmined: Vec<(String, [u8; 32], u64)> =
            self.snapshot.outbox.unmined().map(|(k, tx)| (k.to_owned(), tx.hash, tx.nonce)).collect();
        let mut mined_nonce = None;
        for (key, hash, nonce) in unmined {
            match self.chain.receipt(hash).await? {
                Some(receipt) if receipt.block <= target => {
                    if self.snapshot.outbox.mark_mined(&key, receipt.block, receipt.success) {
                        info!(tx = %key, block = receipt.block, success = receipt.success, gas = receipt.gas_used, "mined");
                        let node = self.snapshot.node.as_mut().expect("set above");
                        self.snapshot.queued.extend(node.on_event(Event::TxMined {
                            key: key.clone(),
                            block: receipt.block,
                            success: receipt.success,
                        }));
                    }
                }
                Some(_) => {}
                None => {
                    // No receipt, yet the account has mined past this nonce: another
                    // transaction took it (the key used elsewhere, a lagging RPC backend). This
                    // one can never be mined: drop it, and let the core decide again later.
                    let chain_nonce = match mined_nonce {
                        Some(n) => n,
                        None => *mined_nonce.insert(self.chain.mined_nonce(self.me).await?),
                    };
                    if chain_nonce > nonce {
                        warn!(tx = %key, nonce, chain_nonce, "nonce used by another transaction; dropping it");
                        self.snapshot.outbox.drop_key(&key);
                        let retry_at = self.head.map_or(0, |h| h.timestamp) + RETRY_AFTER_SECS;
                        let node = self.snapshot.node.as_mut().expect("set above");
                        self.snapshot.queued.extend(node.on_event(Event::TxAbandoned {
                            key,
                            reason: format!("nonce {nonce} was used by another transaction"),
                            retry_at,
                        }));
                    }
                }
            }
        }
        self.snapshot.outbox.settle(processed);

        // Sign what the core decided, in order, with consecutive nonces. What the node refuses
        // waits for the next poll without holding up the rest; an unreachable node stops the
        // signing until the next poll.
        self.take_work_actions();
        let mut deferred = Vec::new();
        while let Some(Action::Send(intent)) = self.snapshot.queued.first().cloned() {
            let key = intent.key();
            if self.snapshot.outbox.contains(&key) {
                self.snapshot.queued.remove(0);
                continue;
            }
            let chain_nonce = match mined_nonce {
                Some(n) => n,
                None => *mined_nonce.insert(self.chain.mined_nonce(self.me).await?),
            };
            let nonce = self.snapshot.outbox.next_nonce(chain_nonce);
            match self.chain.sign(&intent, nonce).await {
                Ok(tx) => {
                    self.snapshot.queued.remove(0);
                    info!(tx = %key, nonce, hash = %alloy::primitives::B256::from(tx.hash), "sending");
                    self.snapshot.outbox.insert(intent, tx);
                }
                // The call would revert: the core decides again after a pause (chain time).
                Err(error @ ChainError::Revert { .. }) => {
                    self.snapshot.queued.remove(0);
                    warn!(tx = %key, error = %error, "not sent");
                    let retry_at = self.head.map_or(0, |h| h.timestamp) + RETRY_AFTER_SECS;
                    let node = self.snapshot.node.as_mut().expect("set above");
                    self.snapshot.queued.extend(node.on_event(Event::TxAbandoned {
                        key,
                        reason: error.to_string(),
                        retry_at,
                    }));
                }
                Err(error) => {
                    let message = format!("transaction {key} not sent: {error}");
                    if self.status.last_error.as_ref().is_none_or(|e| e.message != message) {
                        warn!(tx = %key, error = %error, "not sent; retrying at the next poll");
                    }
                    self.status.last_error = Some(LastError { message, at: unix_now() });
                    if matches!(error, ChainError::Refused { .. }) {
                        deferred.push(self.snapshot.queued.remove(0));
                        continue;
                    }
                    break;
                }
            }
        }
        // Refused ones go back first in line, in their order.
        self.snapshot.queued.splice(0..0, deferred);

        // Durable before anything leaves this machine.
        self.save()?;
        let unmined: Vec<_> =
            self.snapshot.outbox.unmined().map(|(k, tx)| (k.to_owned(), tx.clone())).collect();
        for (key, tx) in unmined {
            if let Err(error) = self.chain.broadcast(&tx).await {
                warn!(tx = %key, %error, "broadcast failed; retrying next poll");
            } else {
                self.metrics.transaction_sent();
            }
        }

        self.carry_out_work().await;

        if touched || self.balance.is_none() || self.polls.is_multiple_of(30) {
            self.balance = Some(self.chain.balance(self.me).await?);
        }
        Ok(())
    }

    /// Moves the container actions out of the queue of transactions.
    fn take_work_actions(&mut self) {
        let (work, sends): (Vec<Action>, Vec<Action>) = std::mem::take(&mut self.snapshot.queued)
            .into_iter()
            .partition(|a| !matches!(a, Action::Send(_)));
        self.snapshot.queued = sends;
        self.work_actions.extend(work);
    }

    /// Starts and stops containers as decided (after the decision was saved), and tells the
    /// transfer server who may push now. The first time the core has caught up after a start,
    /// the containers found in the engine are reconciled with the state.
    async fn carry_out_work(&mut self) {
        let (Some(work), Some(node)) = (&self.work, &self.snapshot.node) else { return };
        if !self.reconciled && node.is_at_head() {
            self.reconciled = true;
            work.reconcile(node).await;
        }
        for action in std::mem::take(&mut self.work_actions) {
            match action {
                Action::Start(id) => work.start(node, id),
                Action::Stop(id) => work.stop(node, id),
                Action::Probe { id, epoch } => self.verifier.probe(node, id, epoch),
                Action::Send(_) => {}
            }
        }
        work.publish_gate(node);
    }

    /// A report from the work: to the core, saved, carried out.
    fn on_work(&mut self, event: WorkEvent) {
        let Some(node) = self.snapshot.node.as_mut() else { return };
        match &event {
            WorkEvent::Failed { id, reason } => warn!(agreement = id, "work failed: {reason}"),
            WorkEvent::ImageLoaded { id } => info!(agreement = id, "image received and loaded"),
            WorkEvent::Started { id } => info!(agreement = id, "work started and answering its probe"),
            WorkEvent::Hello { .. } | WorkEvent::Watch { .. } | WorkEvent::Probed { .. } => {}
        }
        self.snapshot.queued.extend(node.on_event(Event::Work(event)));
        self.take_work_actions();
        if let Err(error) = self.save() {
            warn!(%error, "saving the state after a work event failed; retrying at the next poll");
            return;
        }
        if let (Some(work), Some(node)) = (&self.work, &self.snapshot.node) {
            for action in std::mem::take(&mut self.work_actions) {
                match action {
                    Action::Start(id) => work.start(node, id),
                    Action::Stop(id) => work.stop(node, id),
                    Action::Probe { id, epoch } => self.verifier.probe(node, id, epoch),
                    Action::Send(_) => {}
                }
            }
            work.publish_gate(node);
        }
        self.refresh_status();
    }

    /// Goes back to the newest checkpoint still on the canonical chain.
    /// Decisions queued from the abandoned timeline are dropped (the restored core decides
    /// again); the operator's mode and the config are applied to the restored core.
    async fn rewind(&mut self, head: BlockRef) -> anyhow::Result<()> {
        let from = self.snapshot.cursor.map(|c| c.number);
        self.snapshot.queued.clear();
        while let Some((block, node)) = self.snapshot.checkpoints.back().cloned() {
            match self.chain.block(block.number).await? {
                Some(canonical) if canonical.hash == block.hash => {
                    let mut node = node;
                    self.snapshot.outbox.unmark_mined_after(block.number);
                    node.reset_in_flight(self.snapshot.outbox.keys());
                    self.snapshot.node = Some(node);
                    self.snapshot.cursor = Some(block);
                    self.apply_config_goal();
                    warn!(from, to = block.number, "chain reorganised: rewound to the last common block");
                    return Ok(());
                }
                None if head.number >= block.number => {
                    anyhow::bail!("the RPC endpoint does not know block {} yet", block.number)
                }
                _ => {
                    self.snapshot.checkpoints.pop_back();
                }
            }
        }
        // Deeper than every checkpoint: start over from the deployment.
        warn!(
            from,
            "chain reorganised deeper than the saved checkpoints: following again from the deployment"
        );
        self.snapshot.outbox.unmark_mined_after(0);
        self.snapshot.node = None;
        self.snapshot.cursor = None;
        self.snapshot.checkpoints.clear();
        anyhow::bail!("reorg deeper than {CHECKPOINTS} checkpoints: resynchronising")
    }

    /// Feeds the config's terms and stake to the core, keeping the operator's pause or leave.
    fn apply_config_goal(&mut self) {
        let goal = self.goal();
        let payout = self.config.worker.payout_address.map(decode::address);
        if let Some(node) = self.snapshot.node.as_mut() {
            node.set_payout(payout);
            self.snapshot.queued.extend(node.on_event(Event::GoalChanged(goal)));
        }
    }

    /// The core's goal: the operator's mode with the config's terms and stake.
    fn goal(&self) -> Goal {
        let (terms, stake) = (self.desired_terms, self.desired_stake());
        match self.snapshot.mode {
            Mode::Serve => Goal::Serve { terms, stake },
            Mode::Pause => Goal::Pause { terms, stake },
            Mode::Leave => Goal::Leave,
        }
    }

    fn desired_stake(&self) -> Wei {
        self.config.worker.stake.map_or(0, |s| s.to::<u128>())
    }

    /// A control command; the answer for the operator.
    fn command(&mut self, command: Command) -> Result<String, String> {
        if self.snapshot.node.is_none() {
            return Err("the daemon has not reached the chain yet; try again shortly".into());
        }
        let (mode, message) = match command {
            Command::Leave => (
                Mode::Leave,
                "leaving: no new work from now; the stake comes back after the unbonding delay, once the \
                 running agreements have closed (zeppelin status shows the progress)",
            ),
            Command::Pause => (Mode::Pause, "pausing: no new work until `zeppelin resume`"),
            Command::Resume => (Mode::Serve, "resuming: taking new work again"),
            Command::Reload => return self.reload().map_err(|e| format!("{e:#}")),
        };
        info!(?command, "operator command");
        self.snapshot.mode = mode;
        // Signed and sent at the next poll (which the loop starts at once).
        self.apply_config_goal();
        Ok(message.to_owned())
    }

    /// Re-reads the config file and applies what can change while running.
    fn reload(&mut self) -> anyhow::Result<String> {
        let config = Config::load(&self.config_path)?;
        let capacity = crate::host::measure(&config.state.dir)?;
        let terms = crate::host::terms(&capacity, &config.worker, self.encryption_key)?;
        let mut restart_needed = Vec::new();
        if config.chain != self.config.chain {
            restart_needed.push("[chain]");
        }
        if config.state != self.config.state {
            restart_needed.push("[state]");
        }
        if config.api != self.config.api {
            restart_needed.push("[api]");
        }
        if config.nat != self.config.nat {
            restart_needed.push("[nat]");
        }
        self.desired_terms = terms;
        self.config.worker = config.worker;
        self.apply_config_goal();
        let mut message = format!("reloaded {}", self.config_path.display());
        if !restart_needed.is_empty() {
            message += &format!("; changes in {} take effect after a restart", restart_needed.join(", "));
        }
        Ok(message)
    }

    /// The one-line STATUS= for systemd.
    fn status_line(&self) -> String {
        if !self.status.chain.connected {
            return format!("RPC {} unreachable, retrying", self.config.chain.rpc_url);
        }
        let Some(node) = &self.snapshot.node else { return "contacting the chain".into() };
        let open = node.agreements().filter(|a| a.stage.is_open()).count();
        let lag = self.status.chain.head_block.unwrap_or(0).saturating_sub(self.status.chain.processed_block);
        let state = match node.registration() {
            Registration::Unknown => "starting".to_owned(),
            Registration::NotRegistered if node.in_flight().any(|k| k == "register") => "registering".into(),
            Registration::NotRegistered => "not registered".into(),
            Registration::Active { .. } => "registered".into(),
            Registration::Paused { .. } => "registered, paused".into(),
            Registration::Leaving { .. } => "leaving".into(),
        };
        if lag > u64::from(self.config.chain.confirmations) + 5 {
            format!("{state}, {open} agreements, catching up ({lag} blocks behind)")
        } else {
            format!("{state}, {open} agreements")
        }
    }

    /// Brings the published status up to date with the daemon's state.
    fn refresh_status(&mut self) {
        let s = &mut self.status;
        s.chain.head_block = self.head.map(|h| h.number);
        s.chain.processed_block = self.snapshot.cursor.map_or(0, |c| c.number);
        s.chain.chain_id = self.snapshot.chain_id;
        s.balance_wei = self.balance.unwrap_or(0);
        s.transactions_in_flight = self.snapshot.outbox.keys().map(str::to_owned).collect();
        let Some(node) = &self.snapshot.node else { return };
        s.credits_wei = node.credits();
        let terms_status = |t: &Terms| TermsStatus {
            arch: t.arch.name().to_owned(),
            cpu_millis: t.cpu_millis,
            memory_mib: t.memory_mib,
            disk_mib: t.disk_mib,
            price_per_second_wei: t.price_per_second,
            slots: t.slots,
        };
        s.registration = match node.registration() {
            Registration::Unknown => RegistrationStatus::default(),
            Registration::NotRegistered => {
                RegistrationStatus { state: RegistrationState::NotRegistered, terms: None, stake_wei: 0 }
            }
            Registration::Active { terms, stake } => RegistrationStatus {
                state: RegistrationState::Active,
                terms: Some(terms_status(&terms)),
                stake_wei: stake,
            },
            Registration::Paused { terms, stake } => RegistrationStatus {
                state: RegistrationState::Paused,
                terms: Some(terms_status(&terms)),
                stake_wei: stake,
            },
            Registration::Leaving { stake, unbond_at } => RegistrationStatus {
                state: RegistrationState::Leaving { unbond_at },
                terms: None,
                stake_wei: stake,
            },
        };
        s.agreements = node
            .agreements()
            .map(|a| AgreementStatus {
                id: a.id,
                role: match a.role {
                    Role::Worker => AgreementRole::Worker,
                    Role::Verifier => AgreementRole::Verifier,
                },
                stage: match a.stage {
                    Stage::Created { .. } => AgreementStage::Created,
                    Stage::Accepted { .. } => AgreementStage::Accepted,
                    Stage::Running { .. } => AgreementStage::Running,
                    Stage::Terminated { .. } => AgreementStage::Terminated,
                    Stage::Finished => AgreementStage::Finished,
                    Stage::Cancelled => AgreementStage::Cancelled,
                    Stage::Aborted => AgreementStage::Aborted,
                },
                client: a.client.to_string(),
                worker: a.worker.to_string(),
                work: describe_work(a),
            })
            .collect();
        // A worker that cannot pay its stake says so plainly, rather than failing estimates.
        s.problems.clear();
        let needed = match node.goal() {
            Goal::Serve { stake, .. } | Goal::Pause { stake, .. } => stake.max(node.params().min_stake),
            Goal::Leave => 0,
        };
        if node.registration() == Registration::NotRegistered
            && let Some(balance) = self.balance
            && balance < needed
        {
            s.problems.push(format!(
                "account {} holds {} but registering needs {} plus gas: send ETH to it",
                self.me,
                crate::api::render::format_eth(balance),
                crate::api::render::format_eth(needed)
            ));
        }
        if let Some(error) = node.last_error() {
            let known = s.last_error.as_ref().is_some_and(|e| e.message == error);
            if !known && s.chain.connected {
                s.last_error = Some(LastError { message: error.to_owned(), at: unix_now() });
            }
        }
    }
}

/// The label of this worker's containers on this deployment: another daemon (or devnet) on the
/// same engine never adopts or removes them.
/// The WORK column of `zeppelin status`: where the work stands on this worker and how the
/// verifiers judged its epochs; for a verifier, what it last saw and what it reported.
fn describe_work(a: &crate::core::node::AgreementView) -> Option<String> {
    let judged = |reports: &std::collections::BTreeMap<u64, (u8, u8)>| {
        let served = reports.values().filter(|(ok, bad)| ok > bad).count();
        let failed = reports.values().filter(|(ok, bad)| bad > ok).count();
        (served + failed > 0).then(|| format!("epochs judged: {served} served, {failed} failed"))
    };
    if let Some(v) = &a.verification {
        let mut text = match (&v.spec, &v.last) {
            (None, _) => "waiting for the worker's watch letter".to_owned(),
            (Some(_), None) => "watching; no probe yet".to_owned(),
            (Some(_), Some((epoch, ok, detail))) => {
                format!("epoch {epoch} {}: {detail}", if *ok { "served" } else { "failed" })
            }
        };
        text.push_str(&format!("; {} reports on chain", v.reported));
        return Some(text);
    }
    let phase = a.deployment.as_ref().map(|d| match &d.phase {
        Phase::AwaitingImage => "awaiting the image".to_owned(),
        Phase::Loaded => format!("image loaded, starting on port {}", d.host_port),
        Phase::Started => format!("running on port {}", d.host_port),
        Phase::Failed { reason } => format!("failed: {reason}"),
        Phase::Stopped => "stopped".to_owned(),
    });
    match (phase, judged(&a.reports)) {
        (Some(p), Some(j)) => Some(format!("{p}; {j}")),
        (p, j) => p.or(j),
    }
}

pub fn work_scope(deployment: &Deployment, worker: Address) -> String {
    format!(
        "{}-{}-{}",
        deployment.chain_id,
        &alloy::hex::encode(deployment.dispatcher.0.0)[..12],
        &alloy::hex::encode(worker.0)[..12]
    )
}

/// Connects the Docker engine, loads or creates the transfer certificate, binds the transfer
/// server and starts it.
#[allow(clippy::too_many_arguments)]
async fn start_work(
    config: &Config,
    identity: &Identity,
    deployment: &Deployment,
    me: Address,
    nat: crate::nat::NatHandle,
    events: mpsc::Sender<WorkEvent>,
    delivered: mpsc::Sender<crate::transfer::server::Delivery>,
    tracker: &tokio_util::task::TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<work::Work> {
    use std::sync::Arc;

    use crate::runtime::{DockerRuntime, Runtime};
    let runtime = Arc::new(DockerRuntime::connect(Some(&config.work.docker_socket))?);
    match runtime.ping().await {
        Ok(engine) => {
            info!(version = %engine.version, cgroup = %engine.cgroup_version, "Docker engine reachable")
        }
        // Not fatal: the engine may come up after us. Pushes and starts fail until it does.
        Err(error) => warn!(%error, "Docker engine not reachable yet; work cannot run until it is"),
    }
    let cert = crate::tls::TransferCert::load_or_create(&config.state.dir)?;
    let listener = tokio::net::TcpListener::bind(config.work.transfer_listen)
        .await
        .with_context(|| format!("work.transfer_listen: binding {}", config.work.transfer_listen))?;
    let port = listener.local_addr()?.port();
    // Clients reach the transfer server through the home router too.
    nat.want(crate::nat::Transport::Tcp, port, "transfer");
    let announce_host = match &config.work.announce_host {
        Some(host) => host.clone(),
        None => work::default_route_ip().map_or_else(|| "127.0.0.1".to_owned(), |ip| ip.to_string()),
    };
    let fingerprint = cert.fingerprint();
    info!(listen = %listener.local_addr()?, announce = %announce_host, %fingerprint, "transfer server listening");
    let (gate_tx, gate_rx) = watch::channel(crate::transfer::server::Gate::default());
    tracker.spawn(crate::transfer::server::serve(
        listener,
        cert.server_config()?,
        gate_rx,
        runtime.clone(),
        Arc::new(work::WorkerHealth {
            runtime: runtime.clone(),
            scope: work_scope(deployment, me),
            signer: identity.signer().clone(),
            chain_id: deployment.chain_id,
            dispatcher: decode::address(deployment.dispatcher),
        }),
        delivered,
        Default::default(),
        cancel.clone(),
    ));
    let scope = work_scope(deployment, me);
    Ok(work::Work {
        runtime,
        identity: identity.clone(),
        scope,
        chain_id: deployment.chain_id,
        dispatcher: decode::address(deployment.dispatcher),
        me,
        config: config.work.clone(),
        transfer_port: port,
        announce_host,
        nat,
        fingerprint,
        events,
        gate: gate_tx,
    })
}
