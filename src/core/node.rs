//! The daemon's state machine: `on_event(event) -> actions`.
//!
//! It holds what the daemon knows of its own registration and of every agreement it takes part
//! in, and decides which transactions to send. It reconciles: the goal (from the config and the
//! operator: serve, pause, leave) against what the chain says, the way a controller does, so a
//! restart, a lost transaction or a reorg all end in the same place.
//!
//! Transactions are *intents* with a stable [`Intent::key`]. An intent stays in flight from the
//! moment the core asks for it until the chain follower has processed the block that mined it
//! ([`Event::Synced`] at or past that block): only then does the core see the effect (or its
//! absence) and decide again. That is what keeps a transaction from ever being sent twice for
//! one decision, even when the receipt arrives before the follower's confirmations.
//!
//! Time is the chain's: every deadline in the contract is a block timestamp, so the core only
//! moves on block timestamps it is given, never on a wall clock.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::types::{Address, AgreementId, Terms, Wei};
use super::work::{Deployment, Phase, WatchSpec, Work, WorkEvent};

/// The protocol parameters the dispatcher was deployed with (`WorkerDispatcher.params()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolParams {
    pub min_stake: Wei,
    pub accept_window: u64,
    pub ready_window: u64,
    pub epoch_length: u64,
    pub report_grace: u64,
    /// Failed epochs in a row after which a party may terminate the agreement.
    #[serde(default)]
    pub max_consecutive_failures: u64,
}

/// What the operator wants this worker to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Goal {
    /// Registered with these terms and at least this stake, taking work.
    Serve { terms: Terms, stake: Wei },
    /// Registered with these terms but not drawn for new work.
    Pause { terms: Terms, stake: Wei },
    /// Out of the market: no new work, the stake back once the running agreements close.
    Leave,
}

/// The worker's registration as the chain reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Registration {
    /// Not read from the chain yet.
    Unknown,
    NotRegistered,
    Active {
        terms: Terms,
        stake: Wei,
    },
    Paused {
        terms: Terms,
        stake: Wei,
    },
    Leaving {
        stake: Wei,
        unbond_at: u64,
    },
}

/// A transaction the core wants sent. The shell signs, sends and tracks it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Intent {
    Register {
        terms: Terms,
        stake: Wei,
    },
    Update {
        terms: Terms,
    },
    AddStake {
        amount: Wei,
    },
    Pause,
    Resume,
    RequestLeave,
    WithdrawStake,
    Accept(AgreementId),
    Decline(AgreementId),
    Abort(AgreementId),
    Redeem(AgreementId),
    Withdraw,
    /// Send withdrawn pay on to the operator's payout address.
    Forward {
        to: Address,
        amount: Wei,
    },
    /// Our offer to the client (transfer endpoint, certificate fingerprint, work endpoint),
    /// sealed to its key by the shell.
    Offer {
        id: AgreementId,
        to: Address,
        ciphertext: Vec<u8>,
    },
    /// The work is deployed and answers its probe: epochs start.
    DeclareReady(AgreementId),
    /// Our watch letter to one of the agreement's verifiers (endpoint, probe, health endpoint),
    /// sealed to its key by the shell.
    Watch {
        id: AgreementId,
        to: Address,
        ciphertext: Vec<u8>,
    },
    /// As a verifier: our report on one epoch.
    Verify {
        id: AgreementId,
        epoch: u64,
        ok: bool,
    },
    /// End a running agreement after a run of failed epochs starting at `first_failed_epoch`.
    Terminate {
        id: AgreementId,
        first_failed_epoch: u64,
    },
}

impl Intent {
    /// Identifies the decision: one intent of a key is in flight at a time.
    pub fn key(&self) -> String {
        match self {
            Intent::Register { .. } => "register".into(),
            Intent::Update { .. } => "update".into(),
            Intent::AddStake { .. } => "add-stake".into(),
            Intent::Pause => "pause".into(),
            Intent::Resume => "resume".into(),
            Intent::RequestLeave => "request-leave".into(),
            Intent::WithdrawStake => "withdraw-stake".into(),
            // One answer per offer: accepting and declining share a key, so a goal that changes
            // while an answer is in flight cannot send the other answer too.
            Intent::Accept(id) | Intent::Decline(id) => format!("answer:{id}"),
            Intent::Abort(id) => format!("abort:{id}"),
            Intent::Redeem(id) => format!("redeem:{id}"),
            Intent::Withdraw => "withdraw".into(),
            Intent::Forward { .. } => "forward".into(),
            Intent::Offer { id, .. } => format!("offer:{id}"),
            Intent::DeclareReady(id) => format!("ready:{id}"),
            Intent::Watch { id, to, .. } => format!("watch:{id}:{to}"),
            Intent::Verify { id, epoch, .. } => format!("verify:{id}:{epoch}"),
            Intent::Terminate { id, .. } => format!("terminate:{id}"),
        }
    }
}

/// Our part in an agreement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Worker,
    Verifier,
}

/// Where an agreement is in its lifecycle (the contract's `WorkAgreement.State`, with the
/// deadlines the daemon acts on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    Created { accept_deadline: u64 },
    Accepted { ready_deadline: u64 },
    Running { started_at: u64, epochs: u64 },
    Terminated { started_at: u64, end_epoch: u64 },
    Finished,
    Cancelled,
    Aborted,
}

impl Stage {
    /// Whether the agreement still holds a slot (not closed on chain).
    pub fn is_open(self) -> bool {
        !matches!(self, Stage::Finished | Stage::Cancelled | Stage::Aborted)
    }
}

/// What the daemon knows of one agreement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementView {
    pub id: AgreementId,
    pub role: Role,
    pub client: Address,
    pub worker: Address,
    pub price_per_second: Wei,
    pub duration: u64,
    pub stage: Stage,
    /// What the client committed to (for agreements where we are the worker).
    #[serde(default)]
    pub work: Option<Work>,
    /// The deployment agreed with the client over the private channel.
    #[serde(default)]
    pub deployment: Option<Deployment>,
    /// The agreement's verifiers (where we are the worker: they get our watch letters).
    #[serde(default)]
    pub verifiers: Vec<Address>,
    /// Reports seen on chain, per epoch: (said served, said failed). Where we are the worker
    /// that is every verifier's; where we verify, only ours.
    #[serde(default)]
    pub reports: BTreeMap<u64, (u8, u8)>,
    /// Our side of the verification, where we are a verifier.
    #[serde(default)]
    pub verification: Option<Verification>,
}

/// A verifier's progress on one agreement.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// What to check, from the worker's watch letter (none yet: nothing to probe).
    pub spec: Option<WatchSpec>,
    /// The first epoch not probed yet.
    pub next_epoch: u64,
    /// The epoch being probed now.
    pub probing: Option<u64>,
    /// Probed epochs whose report is not seen on chain yet: epoch -> served.
    pub verdicts: BTreeMap<u64, bool>,
    /// Our reports seen on chain.
    pub reported: u64,
    /// The last probe: (epoch, served, what it saw), for the status.
    pub last: Option<(u64, bool, String)>,
}

impl AgreementView {
    fn new(id: AgreementId, role: Role, client: Address, worker: Address, stage: Stage) -> Self {
        AgreementView {
            id,
            role,
            client,
            worker,
            price_per_second: 0,
            duration: 0,
            stage,
            work: None,
            deployment: None,
            verifiers: Vec::new(),
            reports: BTreeMap::new(),
            verification: None,
        }
    }
}

/// A decoded chain log that concerns this daemon (the follower asks only for those).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainEvent {
    WorkerRegistered {
        worker: Address,
        stake: Wei,
        terms: Terms,
    },
    WorkerUpdated {
        worker: Address,
        terms: Terms,
    },
    WorkerPaused {
        worker: Address,
    },
    WorkerResumed {
        worker: Address,
    },
    StakeChanged {
        worker: Address,
        stake: Wei,
    },
    LeaveRequested {
        worker: Address,
        unbond_at: u64,
    },
    StakeWithdrawn {
        worker: Address,
    },
    AgreementCreated {
        id: AgreementId,
        client: Address,
        worker: Address,
        price_per_second: Wei,
        duration: u64,
        accept_deadline: u64,
        work: Work,
    },
    /// A private-channel letter of an agreement we are part of was relayed (its content, if it
    /// is for us, is opened by the shell and arrives as a [`WorkEvent`]).
    MessageSent {
        id: AgreementId,
        from: Address,
        to: Address,
        ciphertext: Vec<u8>,
    },
    VerifierAssigned {
        id: AgreementId,
        verifier: Address,
        worker: Address,
    },
    AgreementAccepted {
        id: AgreementId,
        ready_deadline: u64,
    },
    AgreementCancelled {
        id: AgreementId,
    },
    AgreementAborted {
        id: AgreementId,
    },
    AgreementStarted {
        id: AgreementId,
        started_at: u64,
        epochs: u64,
    },
    /// A verifier reported on an epoch of an agreement we work or verify.
    VerificationProvided {
        id: AgreementId,
        verifier: Address,
        epoch: u64,
        ok: bool,
    },
    AgreementTerminated {
        id: AgreementId,
        end_epoch: u64,
    },
    PaymentRedeemed {
        id: AgreementId,
    },
    /// Our withdrawable credits changed (read from the contract after a block that touched them).
    Credits {
        amount: Wei,
    },
    /// We were paid for our reports on an agreement we verified: it is over for us.
    VerifierPaid {
        id: AgreementId,
    },
    /// We withdrew our credits.
    Withdrawn {
        amount: Wei,
    },
    /// A log naming us that moved money (a slash, a verifier fee) and carries
    /// nothing else for the core: the shell re-reads our stake and credits after it.
    BalancesMoved,
}

/// Everything that can happen to the core.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The registration as read from the contract (at start-up and after a deep reorg).
    RegistrationRead(Registration),
    /// A confirmed log concerning us.
    Chain(ChainEvent),
    /// The follower has processed every confirmed block up to `block`, whose timestamp is
    /// `timestamp`: the chain's clock. `at_head` says it has caught up with the confirmed head;
    /// while it replays older blocks the core only learns, it does not decide (deadlines judged
    /// on an old clock would send transactions that can only revert).
    Synced { block: u64, timestamp: u64, at_head: bool },
    /// A transaction for `key` was mined in `block` (successfully or reverted).
    TxMined { key: String, block: u64, success: bool },
    /// A transaction for `key` could not be sent at all (signing or a permanent RPC refusal);
    /// nothing is on chain. It will be decided again after `retry_at` (chain time).
    TxAbandoned { key: String, reason: String, retry_at: u64 },
    /// The operator's goal changed (config reload, `zeppelin leave`).
    GoalChanged(Goal),
    /// Something happened to an agreement's work (private channel, transfer, container).
    Work(WorkEvent),
}

/// What the shell must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Sign and send this transaction; report `TxMined` or `TxAbandoned` for its key.
    Send(Intent),
    /// Start (or adopt) the agreement's container from its loaded image, wait for its probe,
    /// and report `WorkEvent::Started` or `WorkEvent::Failed`.
    Start(AgreementId),
    /// Stop and remove the agreement's container (idempotent).
    Stop(AgreementId),
    /// As a verifier: probe the work of `id` now, for `epoch`, and report
    /// `WorkEvent::Probed`.
    Probe { id: AgreementId, epoch: u64 },
}

/// The state of an intent between the decision and its observed effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum InFlight {
    /// Handed to the shell; no receipt yet.
    Sent,
    /// Mined in this block; the effect is visible once the follower has processed it.
    Mined { block: u64, success: bool },
    /// Refused or reverted: do not decide it again before `retry_at`.
    Backoff { retry_at: u64 },
}

/// Closed agreements remembered for the status.
pub const KEEP_CLOSED: usize = 32;

/// How long a reverted or refused intent waits before it is decided again (chain seconds).
pub const RETRY_AFTER_SECS: u64 = 60;

/// The daemon's state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    me: Address,
    params: ProtocolParams,
    goal: Goal,
    registration: Registration,
    agreements: BTreeMap<AgreementId, AgreementView>,
    in_flight: BTreeMap<String, InFlight>,
    credits: Wei,
    /// Where withdrawn pay goes (none: it stays in the worker's account).
    payout: Option<Address>,
    /// Withdrawn and not yet forwarded to `payout`.
    to_forward: Wei,
    /// The amount of the forward in flight.
    #[serde(default)]
    forwarding: Option<Wei>,
    synced_block: u64,
    now: u64,
    at_head: bool,
    last_error: Option<String>,
    /// Sealed offers waiting to be sent (kept until our letter is seen on chain).
    #[serde(default)]
    pending_offers: BTreeMap<AgreementId, Vec<u8>>,
    /// Where in each epoch a verifier probes is drawn from this secret (set by the shell), so
    /// the worker cannot know when to be up.
    #[serde(default)]
    probe_seed: [u8; 32],
}

impl Node {
    /// A node that knows nothing of the chain yet.
    pub fn new(me: Address, params: ProtocolParams, goal: Goal) -> Self {
        Node {
            me,
            params,
            goal,
            registration: Registration::Unknown,
            agreements: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            credits: 0,
            payout: None,
            to_forward: 0,
            forwarding: None,
            synced_block: 0,
            now: 0,
            at_head: false,
            last_error: None,
            pending_offers: BTreeMap::new(),
            probe_seed: [0; 32],
        }
    }

    /// The secret the verifier's probe moments are drawn from.
    pub fn set_probe_seed(&mut self, seed: [u8; 32]) {
        self.probe_seed = seed;
    }

    /// When, within `epoch`, we probe agreement `id` (seconds from the epoch's start): in the
    /// first three quarters, so the report has time to be mined before the window closes.
    pub fn probe_offset(&self, id: AgreementId, epoch: u64) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.probe_seed);
        h.update(id.to_be_bytes());
        h.update(epoch.to_be_bytes());
        let draw = u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"));
        draw % (self.params.epoch_length * 3 / 4).max(1)
    }

    /// Where withdrawn pay is sent on to (`None` or our own address: it stays here).
    pub fn set_payout(&mut self, payout: Option<Address>) {
        self.payout = payout.filter(|p| *p != self.me);
    }

    pub fn address(&self) -> Address {
        self.me
    }
    /// Whether the core is deciding (caught up with the chain).
    pub fn is_at_head(&self) -> bool {
        self.at_head
    }
    pub fn params(&self) -> ProtocolParams {
        self.params
    }
    pub fn goal(&self) -> Goal {
        self.goal
    }
    pub fn registration(&self) -> Registration {
        self.registration
    }
    pub fn agreements(&self) -> impl Iterator<Item = &AgreementView> {
        self.agreements.values()
    }
    pub fn credits(&self) -> Wei {
        self.credits
    }
    pub fn synced_block(&self) -> u64 {
        self.synced_block
    }
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    /// Keys of the transactions decided and not yet seen settled.
    pub fn in_flight(&self) -> impl Iterator<Item = &str> {
        self.in_flight.keys().map(String::as_str)
    }
    /// Open agreements in which we are the worker (they hold our slots).
    pub fn running_as_worker(&self) -> usize {
        self.agreements.values().filter(|a| a.role == Role::Worker && a.stage.is_open()).count()
    }

    /// After a restart the saved clock is old: decide nothing until the follower has caught up
    /// again (the next `Synced` with `at_head`).
    pub fn resume(&mut self) {
        self.at_head = false;
        // A probe that was under way when the daemon stopped will never report back.
        for v in self.agreements.values_mut().filter_map(|a| a.verification.as_mut()) {
            v.probing = None;
        }
    }

    /// After the shell restored an older state (a reorg), what is in flight is exactly what the
    /// shell still holds: those keys are never decided again, and anything else the old state
    /// remembered (sent from a timeline that no longer exists) is decided afresh.
    pub fn reset_in_flight<'a>(&mut self, keys: impl IntoIterator<Item = &'a str>) {
        self.in_flight = keys.into_iter().map(|key| (key.to_owned(), InFlight::Sent)).collect();
    }

    /// Feeds one event; returns the transactions to send.
    pub fn on_event(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::RegistrationRead(registration) => self.registration = registration,
            Event::Chain(event) => self.apply(event),
            Event::Synced { block, timestamp, at_head } => {
                self.at_head = at_head;
                self.synced_block = self.synced_block.max(block);
                self.now = self.now.max(timestamp);
                // Intents mined at or before this block have had their effect applied.
                self.in_flight.retain(|_, state| match *state {
                    InFlight::Mined { block: mined, success: true } => mined > block,
                    InFlight::Mined { block: mined, success: false } => {
                        if mined <= block {
                            // Reverted: the chain state now says why. Decide again only after a
                            // pause, so a persistent refusal (say, too little stake) cannot spin.
                            *state = InFlight::Backoff { retry_at: timestamp + RETRY_AFTER_SECS };
                        }
                        true
                    }
                    InFlight::Backoff { retry_at } => retry_at > timestamp,
                    InFlight::Sent => true,
                });
            }
            Event::TxMined { key, block, success } => {
                // A plain transfer leaves no log: its receipt is all there is to see.
                if key == "forward"
                    && success
                    && let Some(InFlight::Sent) = self.in_flight.get(&key)
                    && let Some(amount) = self.forwarding.take()
                {
                    // Only what that transaction carried: pay withdrawn meanwhile still goes.
                    self.to_forward -= amount.min(self.to_forward);
                }
                if let Some(state) = self.in_flight.get_mut(&key) {
                    *state = InFlight::Mined { block, success };
                }
                if !success {
                    self.last_error = Some(format!("transaction {key} reverted in block {block}"));
                }
            }
            Event::TxAbandoned { key, reason, retry_at } => {
                // A verifier's redeem the contract refuses: settled by someone else already, or
                // nothing of ours to claim (no report agreed with the verdicts). Either way the
                // agreement is over for us.
                if let Some(id) = key.strip_prefix("redeem:").and_then(|id| id.parse().ok())
                    && self.agreements.get(&id).is_some_and(|a| a.role == Role::Verifier)
                {
                    self.in_flight.remove(&key);
                    self.set_stage(id, Stage::Finished);
                    return self.decide();
                }
                self.in_flight.insert(key.clone(), InFlight::Backoff { retry_at });
                self.last_error = Some(format!("transaction {key} not sent: {reason}"));
            }
            Event::GoalChanged(goal) => self.goal = goal,
            Event::Work(event) => {
                if let Some(action) = self.on_work(event) {
                    let mut actions = vec![action];
                    actions.extend(self.decide());
                    return actions;
                }
            }
        }
        self.decide()
    }

    fn on_work(&mut self, event: WorkEvent) -> Option<Action> {
        match event {
            WorkEvent::Hello { id, client_key, container_port, host_port, probe, offer, watches } => {
                let a = self.agreements.get_mut(&id)?;
                let waiting = matches!(a.stage, Stage::Created { .. } | Stage::Accepted { .. });
                if a.role != Role::Worker || a.deployment.is_some() || !waiting {
                    return None;
                }
                a.deployment = Some(Deployment {
                    client_key,
                    container_port,
                    host_port,
                    probe,
                    offer_sent: false,
                    phase: Phase::AwaitingImage,
                    pending_watches: watches,
                });
                self.pending_offers.insert(id, offer);
                None
            }
            WorkEvent::Watch { id, spec } => {
                let a = self.agreements.get_mut(&id)?;
                if a.role != Role::Verifier || !a.stage.is_open() {
                    return None;
                }
                let v = a.verification.get_or_insert_with(Verification::default);
                if v.spec.is_none() {
                    v.spec = Some(spec);
                }
                None
            }
            WorkEvent::Probed { id, epoch, ok, detail } => {
                let p = self.params;
                let now = self.now;
                let a = self.agreements.get_mut(&id)?;
                let started_at = match a.stage {
                    Stage::Running { started_at, .. } | Stage::Terminated { started_at, .. } => started_at,
                    _ => return None,
                };
                let v = a.verification.as_mut()?;
                if v.probing == Some(epoch) {
                    v.probing = None;
                }
                // Too late to report is not reported (the contract would refuse it).
                if now < started_at + (epoch + 1) * p.epoch_length + p.report_grace {
                    v.verdicts.insert(epoch, ok);
                }
                v.last = Some((epoch, ok, detail));
                None
            }
            WorkEvent::ImageLoaded { id } => {
                let d = self.deployment_mut(id)?;
                if d.phase != Phase::AwaitingImage {
                    return None;
                }
                d.phase = Phase::Loaded;
                Some(Action::Start(id))
            }
            WorkEvent::Started { id } => {
                let d = self.deployment_mut(id)?;
                if d.phase == Phase::Loaded {
                    d.phase = Phase::Started;
                }
                None
            }
            WorkEvent::Failed { id, reason } => {
                let d = self.deployment_mut(id)?;
                if matches!(d.phase, Phase::Loaded | Phase::Started) {
                    d.phase = Phase::Failed { reason: reason.clone() };
                    self.last_error = Some(format!("agreement {id}: {reason}"));
                    return Some(Action::Stop(id));
                }
                None
            }
        }
    }

    fn deployment_mut(&mut self, id: AgreementId) -> Option<&mut Deployment> {
        self.agreements.get_mut(&id)?.deployment.as_mut()
    }

    /// One agreement.
    pub fn agreement(&self, id: AgreementId) -> Option<&AgreementView> {
        self.agreements.get(&id)
    }

    /// Host ports held by deployments that are not over.
    pub fn ports_in_use(&self) -> impl Iterator<Item = u16> + '_ {
        self.agreements.values().filter_map(|a| {
            let d = a.deployment.as_ref()?;
            (!matches!(d.phase, Phase::Stopped)).then_some(d.host_port)
        })
    }

    /// Deployments whose container should be running now (for re-adoption after a restart).
    pub fn should_run(&self) -> impl Iterator<Item = AgreementId> + '_ {
        self.agreements.values().filter_map(|a| {
            let d = a.deployment.as_ref()?;
            matches!(d.phase, Phase::Loaded | Phase::Started).then_some(a.id)
        })
    }

    fn apply(&mut self, event: ChainEvent) {
        use ChainEvent::*;
        let me = self.me;
        match event {
            WorkerRegistered { worker, stake, terms } if worker == me => {
                self.registration = Registration::Active { terms, stake };
            }
            WorkerUpdated { worker, terms: new } if worker == me => match &mut self.registration {
                Registration::Active { terms, .. } | Registration::Paused { terms, .. } => *terms = new,
                _ => {}
            },
            WorkerPaused { worker } if worker == me => {
                if let Registration::Active { terms, stake } = self.registration {
                    self.registration = Registration::Paused { terms, stake };
                }
            }
            WorkerResumed { worker } if worker == me => {
                if let Registration::Paused { terms, stake } = self.registration {
                    self.registration = Registration::Active { terms, stake };
                }
            }
            StakeChanged { worker, stake: new } if worker == me => match &mut self.registration {
                Registration::Active { stake, .. }
                | Registration::Paused { stake, .. }
                | Registration::Leaving { stake, .. } => *stake = new,
                _ => {}
            },
            LeaveRequested { worker, unbond_at } if worker == me => {
                let stake = match self.registration {
                    Registration::Active { stake, .. } | Registration::Paused { stake, .. } => stake,
                    _ => 0,
                };
                self.registration = Registration::Leaving { stake, unbond_at };
            }
            StakeWithdrawn { worker } if worker == me => self.registration = Registration::NotRegistered,
            AgreementCreated { id, client, worker, price_per_second, duration, accept_deadline, work }
                if worker == me =>
            {
                let a = self.agreements.entry(id).or_insert_with(|| {
                    AgreementView::new(id, Role::Worker, client, worker, Stage::Created { accept_deadline })
                });
                a.price_per_second = price_per_second;
                a.duration = duration;
                a.work = Some(work);
            }
            MessageSent { id, from, to, .. } if from == me => {
                let Some(a) = self.agreements.get_mut(&id) else { return };
                let to_client = to == a.client;
                if let Some(d) = a.deployment.as_mut() {
                    if to_client {
                        d.offer_sent = true;
                    } else {
                        d.pending_watches.retain(|(verifier, _)| *verifier != to);
                    }
                }
                if to_client {
                    self.pending_offers.remove(&id);
                }
            }
            VerifierAssigned { id, verifier, worker } if verifier == me => {
                // The verifier learns no deadlines from its logs: if the agreement has not
                // started by the latest moment it could, it was cancelled or aborted.
                let never_started_by = self.now + self.params.accept_window + self.params.ready_window;
                let a = self.agreements.entry(id).or_insert_with(|| {
                    AgreementView::new(
                        id,
                        Role::Verifier,
                        Address::default(),
                        worker,
                        Stage::Created { accept_deadline: never_started_by },
                    )
                });
                a.verification.get_or_insert_with(Verification::default);
            }
            // Ours as the worker: our watch letters go to each.
            VerifierAssigned { id, verifier, worker } if worker == me => {
                if let Some(a) = self.agreements.get_mut(&id)
                    && !a.verifiers.contains(&verifier)
                {
                    a.verifiers.push(verifier);
                }
            }
            VerificationProvided { id, verifier, epoch, ok } => {
                let Some(a) = self.agreements.get_mut(&id) else { return };
                let tally = a.reports.entry(epoch).or_default();
                if ok {
                    tally.0 = tally.0.saturating_add(1);
                } else {
                    tally.1 = tally.1.saturating_add(1);
                }
                if verifier == me
                    && let Some(v) = a.verification.as_mut()
                {
                    v.verdicts.remove(&epoch);
                    v.reported += 1;
                }
            }
            AgreementAccepted { id, ready_deadline } => {
                self.set_stage(id, Stage::Accepted { ready_deadline })
            }
            AgreementCancelled { id } => self.set_stage(id, Stage::Cancelled),
            AgreementAborted { id } => self.set_stage(id, Stage::Aborted),
            AgreementStarted { id, started_at, epochs } => {
                self.set_stage(id, Stage::Running { started_at, epochs })
            }
            AgreementTerminated { id, end_epoch } => {
                if let Some(a) = self.agreements.get_mut(&id) {
                    let started_at = match a.stage {
                        Stage::Running { started_at, .. } => started_at,
                        _ => 0,
                    };
                    a.stage = Stage::Terminated { started_at, end_epoch };
                }
            }
            PaymentRedeemed { id } => self.set_stage(id, Stage::Finished),
            Credits { amount } => self.credits = amount,
            VerifierPaid { id } => self.set_stage(id, Stage::Finished),
            Withdrawn { amount } if self.payout.is_some() => self.to_forward += amount,
            // Events about other workers (the follower should not deliver them).
            _ => {}
        }
    }

    fn set_stage(&mut self, id: AgreementId, stage: Stage) {
        if let Some(a) = self.agreements.get_mut(&id) {
            a.stage = stage;
        }
        if !stage.is_open() {
            self.prune_closed();
        }
    }

    /// Keeps the newest [`KEEP_CLOSED`] closed agreements (for `zeppelin status`); older ones
    /// are forgotten, so a daemon running for years does not grow.
    fn prune_closed(&mut self) {
        let closed: Vec<AgreementId> =
            self.agreements.values().filter(|a| !a.stage.is_open()).map(|a| a.id).collect();
        for id in closed.iter().take(closed.len().saturating_sub(KEEP_CLOSED)) {
            self.agreements.remove(id);
            self.pending_offers.remove(id);
        }
    }

    /// The reconciliation: every rule that turns state into a transaction.
    fn decide(&mut self) -> Vec<Action> {
        // Containers stop when their agreement is over, whether or not we are deciding
        // transactions yet (a restarted daemon stops what ended while it was down).
        let mut actions = self.decide_stops();
        if !self.at_head {
            return actions;
        }
        let mut intents = Vec::new();
        if self.registration != Registration::Unknown {
            self.decide_registration(&mut intents);
        }
        self.decide_agreements(&mut intents);
        self.decide_verification(&mut intents, &mut actions);
        if self.credits > 0 {
            intents.push(Intent::Withdraw);
        }
        if let Some(to) = self.payout
            && self.to_forward > 0
            && !self.in_flight.contains_key("forward")
        {
            self.forwarding = Some(self.to_forward);
            intents.push(Intent::Forward { to, amount: self.to_forward });
        }
        for intent in intents {
            let key = intent.key();
            if self.in_flight.contains_key(&key) {
                continue;
            }
            self.in_flight.insert(key, InFlight::Sent);
            actions.push(Action::Send(intent));
        }
        actions
    }

    /// Work whose agreement is over (closed, terminated, or past its last epoch) is stopped.
    fn decide_stops(&mut self) -> Vec<Action> {
        let (now, epoch) = (self.now, self.params.epoch_length);
        let mut actions = Vec::new();
        for a in self.agreements.values_mut() {
            let over = match a.stage {
                Stage::Running { started_at, epochs } => now >= started_at + epochs * epoch,
                Stage::Terminated { .. } | Stage::Finished | Stage::Cancelled | Stage::Aborted => true,
                Stage::Created { .. } | Stage::Accepted { .. } => false,
            };
            // Whatever the phase, the shell releases what the deployment holds (a container, a
            // port mapping on the router); stopping is idempotent there.
            if let Some(d) = a.deployment.as_mut()
                && over
                && d.phase != Phase::Stopped
            {
                actions.push(Action::Stop(a.id));
                d.phase = Phase::Stopped;
            }
        }
        actions
    }

    fn decide_registration(&self, out: &mut Vec<Intent>) {
        let goal_terms = match self.goal {
            Goal::Serve { terms, stake } | Goal::Pause { terms, stake } => Some((terms, stake)),
            Goal::Leave => None,
        };
        match (self.registration, goal_terms) {
            (Registration::NotRegistered, Some((terms, stake))) => {
                out.push(Intent::Register { terms, stake: stake.max(self.params.min_stake) })
            }
            (
                Registration::Active { terms, stake } | Registration::Paused { terms, stake },
                Some((want, want_stake)),
            ) => {
                if terms != want {
                    out.push(Intent::Update { terms: want });
                }
                if stake < want_stake.max(self.params.min_stake) {
                    out.push(Intent::AddStake { amount: want_stake.max(self.params.min_stake) - stake });
                }
                let paused = matches!(self.registration, Registration::Paused { .. });
                match self.goal {
                    Goal::Serve { .. } if paused => out.push(Intent::Resume),
                    Goal::Pause { .. } if !paused => out.push(Intent::Pause),
                    _ => {}
                }
            }
            (Registration::Active { .. } | Registration::Paused { .. }, None) => {
                out.push(Intent::RequestLeave)
            }
            (Registration::Leaving { unbond_at, .. }, None) => {
                if self.now >= unbond_at && self.running_as_worker() == 0 {
                    out.push(Intent::WithdrawStake);
                }
            }
            // Leaving while the goal is to serve again: the contract has no way back but to
            // finish leaving and register anew.
            (Registration::Leaving { unbond_at, .. }, Some(_)) => {
                if self.now >= unbond_at && self.running_as_worker() == 0 {
                    out.push(Intent::WithdrawStake);
                }
            }
            (Registration::NotRegistered, None) | (Registration::Unknown, _) => {}
        }
    }

    /// The first epoch of a run of `max_consecutive_failures` epochs judged failed (by the
    /// reports seen, counted as the contract counts them) whose reporting windows have closed.
    fn terminable_run(&self, a: &AgreementView, started_at: u64, epochs: u64) -> Option<u64> {
        let p = self.params;
        let run = p.max_consecutive_failures;
        if run == 0 {
            return None;
        }
        let failed = |e: u64| a.reports.get(&e).is_some_and(|(ok, bad)| bad > ok);
        a.reports.keys().copied().filter(|&e| failed(e)).find(|&first| {
            first + run <= epochs
                && (first..first + run).all(failed)
                && self.now >= started_at + (first + run) * p.epoch_length + p.report_grace
        })
    }

    /// The verifier's side: probe each epoch once at a moment the worker cannot predict, report
    /// each verdict while its window is open, collect the fees if the worker does not settle.
    fn decide_verification(&mut self, out: &mut Vec<Intent>, actions: &mut Vec<Action>) {
        let p = self.params;
        let now = self.now;
        let mut probes = Vec::new();
        let mut closed = Vec::new();
        for a in self.agreements.values_mut().filter(|a| a.role == Role::Verifier) {
            let id = a.id;
            let Some(v) = a.verification.as_mut() else { continue };
            let (started_at, epochs) = match a.stage {
                Stage::Created { accept_deadline: never_started_by } => {
                    if now >= never_started_by {
                        closed.push((id, Stage::Cancelled));
                    }
                    continue;
                }
                Stage::Running { started_at, epochs } => (started_at, epochs),
                _ => continue,
            };
            let closes = |e: u64| started_at + (e + 1) * p.epoch_length + p.report_grace;
            v.verdicts.retain(|&e, _| now < closes(e));
            for (&epoch, &ok) in &v.verdicts {
                out.push(Intent::Verify { id, epoch, ok });
            }
            let end = started_at + epochs * p.epoch_length + p.report_grace;
            if now >= end {
                if v.verdicts.is_empty() && v.probing.is_none() {
                    if v.reported == 0 {
                        // Nothing of ours to claim.
                        closed.push((id, Stage::Finished));
                    } else if now >= end + p.epoch_length {
                        // The worker settles first; if it has not an epoch later, we do.
                        out.push(Intent::Redeem(id));
                    }
                }
                continue;
            }
            if v.spec.is_none() || now < started_at || v.probing.is_some() {
                continue;
            }
            let current = (now - started_at) / p.epoch_length;
            // Epochs missed while the daemon was down are not reported: we did not see them.
            v.next_epoch = v.next_epoch.max(current);
            if v.next_epoch < epochs {
                probes.push((id, v.next_epoch, started_at));
            }
        }
        for (id, epoch, started_at) in probes {
            let at = started_at + epoch * p.epoch_length + self.probe_offset(id, epoch);
            if now >= at
                && let Some(v) = self.agreements.get_mut(&id).and_then(|a| a.verification.as_mut())
            {
                v.probing = Some(epoch);
                v.next_epoch = epoch + 1;
                actions.push(Action::Probe { id, epoch });
            }
        }
        for (id, stage) in closed {
            self.set_stage(id, stage);
        }
    }

    fn decide_agreements(&self, out: &mut Vec<Intent>) {
        let p = self.params;
        for (&id, ciphertext) in &self.pending_offers {
            let Some(a) = self.agreements.get(&id) else { continue };
            let open =
                matches!(a.stage, Stage::Created { .. } | Stage::Accepted { .. } | Stage::Running { .. });
            if open && a.deployment.as_ref().is_some_and(|d| !d.offer_sent) {
                out.push(Intent::Offer { id, to: a.client, ciphertext: ciphertext.clone() });
            }
        }
        for a in self.agreements.values().filter(|a| a.role == Role::Worker) {
            let open =
                matches!(a.stage, Stage::Created { .. } | Stage::Accepted { .. } | Stage::Running { .. });
            if let Some(d) = &a.deployment
                && open
            {
                for (to, ciphertext) in &d.pending_watches {
                    out.push(Intent::Watch { id: a.id, to: *to, ciphertext: ciphertext.clone() });
                }
            }
            // A run of failed epochs: end it, so later epochs are refunded rather than failed
            // (each failed epoch costs our stake).
            if let Stage::Running { started_at, epochs } = a.stage
                && let Some(first) = self.terminable_run(a, started_at, epochs)
            {
                out.push(Intent::Terminate { id: a.id, first_failed_epoch: first });
            }
        }
        // Slots in use by agreements already accepted or running.
        let offered_slots = match self.goal {
            Goal::Serve { terms, .. } | Goal::Pause { terms, .. } => terms.slots as usize,
            Goal::Leave => 0,
        };
        let mut committed = self
            .agreements
            .values()
            .filter(|a| {
                a.role == Role::Worker
                    && matches!(
                        a.stage,
                        Stage::Accepted { .. } | Stage::Running { .. } | Stage::Terminated { .. }
                    )
            })
            .count();
        for a in self.agreements.values().filter(|a| a.role == Role::Worker) {
            match a.stage {
                Stage::Created { accept_deadline } if self.now < accept_deadline => {
                    if committed < offered_slots && matches!(self.goal, Goal::Serve { .. }) {
                        committed += 1;
                        out.push(Intent::Accept(a.id));
                    } else {
                        out.push(Intent::Decline(a.id));
                    }
                }
                Stage::Accepted { ready_deadline }
                    if self.now < ready_deadline
                        && a.deployment.as_ref().is_some_and(|d| d.phase == Phase::Started) =>
                {
                    out.push(Intent::DeclareReady(a.id))
                }
                // Accepted but never declared ready (no image, or it would not run): close it
                // so the slot is not held forever; the contract splits the cost.
                Stage::Accepted { ready_deadline } if self.now >= ready_deadline => {
                    out.push(Intent::Abort(a.id))
                }
                Stage::Running { started_at, epochs }
                    if self.now >= started_at + epochs * p.epoch_length + p.report_grace =>
                {
                    out.push(Intent::Redeem(a.id))
                }
                Stage::Terminated { started_at, end_epoch }
                    if self.now >= started_at + end_epoch * p.epoch_length + p.report_grace =>
                {
                    out.push(Intent::Redeem(a.id))
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::types::Arch;

    const ME: Address = Address([0xaa; 20]);
    const CLIENT: Address = Address([0xcc; 20]);
    const OTHER: Address = Address([0x77; 20]);
    const ETH: Wei = 1_000_000_000_000_000_000;

    fn params() -> ProtocolParams {
        ProtocolParams {
            min_stake: ETH,
            accept_window: 60,
            ready_window: 300,
            epoch_length: 30,
            report_grace: 15,
            max_consecutive_failures: 2,
        }
    }

    fn terms() -> Terms {
        Terms {
            arch: Arch::Arm64,
            cpu_millis: 4000,
            memory_mib: 3800,
            disk_mib: 20_000,
            price_per_second: 1_000_000_000,
            max_duration_secs: 86_400,
            slots: 1,
            encryption_key: [7; 32],
        }
    }

    /// A node that has caught up with the chain at time 0.
    fn serving() -> Node {
        let mut node = Node::new(ME, params(), Goal::Serve { terms: terms(), stake: ETH });
        node.on_event(Event::Synced { block: 0, timestamp: 0, at_head: true });
        node
    }

    fn registered() -> Node {
        let mut node = serving();
        node.on_event(Event::RegistrationRead(Registration::Active { terms: terms(), stake: ETH }));
        node
    }

    fn sends(actions: &[Action]) -> Vec<Intent> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(i) => Some(i.clone()),
                _ => None,
            })
            .collect()
    }

    fn created(id: AgreementId, worker: Address, accept_deadline: u64) -> Event {
        Event::Chain(ChainEvent::AgreementCreated {
            id,
            client: CLIENT,
            worker,
            price_per_second: 1_000_000_000,
            duration: 90,
            accept_deadline,
            work: WORK,
        })
    }

    const WORK: Work =
        Work { cpu_millis: 500, memory_mib: 256, disk_mib: 512, image: [1; 32], probe: [2; 32] };

    #[test]
    fn nothing_is_decided_before_the_registration_is_read() {
        let mut node = serving();
        assert!(node.on_event(Event::Synced { block: 1, timestamp: 10, at_head: true }).is_empty());
    }

    #[test]
    fn an_unregistered_worker_registers_once_with_at_least_the_minimum_stake() {
        let mut node = Node::new(ME, params(), Goal::Serve { terms: terms(), stake: 1 });
        node.on_event(Event::Synced { block: 0, timestamp: 0, at_head: true });
        let actions = node.on_event(Event::RegistrationRead(Registration::NotRegistered));
        assert_eq!(sends(&actions), vec![Intent::Register { terms: terms(), stake: ETH }]);
        // Blocks pass without the registration showing: still in flight, never sent again.
        assert!(node.on_event(Event::Synced { block: 5, timestamp: 50, at_head: true }).is_empty());
        assert!(node.on_event(Event::TxMined { key: "register".into(), block: 6, success: true }).is_empty());
        // The receipt came before the follower reached block 6: still nothing new.
        assert!(node.on_event(Event::Synced { block: 5, timestamp: 55, at_head: true }).is_empty());
        node.on_event(Event::Chain(ChainEvent::WorkerRegistered { worker: ME, stake: ETH, terms: terms() }));
        assert!(node.on_event(Event::Synced { block: 6, timestamp: 60, at_head: true }).is_empty());
        assert_eq!(node.in_flight().count(), 0);
        assert_eq!(node.registration(), Registration::Active { terms: terms(), stake: ETH });
    }

    #[test]
    fn a_reverted_registration_is_retried_only_after_the_backoff() {
        let mut node = serving();
        node.on_event(Event::RegistrationRead(Registration::NotRegistered));
        node.on_event(Event::TxMined { key: "register".into(), block: 3, success: false });
        assert!(node.last_error().unwrap().contains("register reverted"));
        assert!(node.on_event(Event::Synced { block: 3, timestamp: 100, at_head: true }).is_empty());
        assert!(
            node.on_event(Event::Synced { block: 4, timestamp: 100 + RETRY_AFTER_SECS - 1, at_head: true })
                .is_empty()
        );
        let again =
            node.on_event(Event::Synced { block: 5, timestamp: 100 + RETRY_AFTER_SECS, at_head: true });
        assert_eq!(sends(&again), vec![Intent::Register { terms: terms(), stake: ETH }]);
    }

    #[test]
    fn changed_terms_update_the_registration_and_equal_terms_do_nothing() {
        let mut node = registered();
        assert!(node.on_event(Event::GoalChanged(Goal::Serve { terms: terms(), stake: ETH })).is_empty());
        let cheaper = Terms { price_per_second: 500, ..terms() };
        let actions = node.on_event(Event::GoalChanged(Goal::Serve { terms: cheaper, stake: ETH }));
        assert_eq!(sends(&actions), vec![Intent::Update { terms: cheaper }]);
        node.on_event(Event::TxMined { key: "update".into(), block: 2, success: true });
        node.on_event(Event::Chain(ChainEvent::WorkerUpdated { worker: ME, terms: cheaper }));
        assert!(node.on_event(Event::Synced { block: 2, timestamp: 20, at_head: true }).is_empty());
    }

    #[test]
    fn a_stake_below_the_goal_is_topped_up() {
        let mut node = registered();
        let actions = node.on_event(Event::Chain(ChainEvent::StakeChanged { worker: ME, stake: ETH / 4 }));
        assert_eq!(sends(&actions), vec![Intent::AddStake { amount: ETH - ETH / 4 }]);
    }

    #[test]
    fn pause_and_resume_follow_the_goal() {
        let mut node = registered();
        let actions = node.on_event(Event::GoalChanged(Goal::Pause { terms: terms(), stake: ETH }));
        assert_eq!(sends(&actions), vec![Intent::Pause]);
        node.on_event(Event::TxMined { key: "pause".into(), block: 2, success: true });
        node.on_event(Event::Chain(ChainEvent::WorkerPaused { worker: ME }));
        node.on_event(Event::Synced { block: 2, timestamp: 20, at_head: true });
        let actions = node.on_event(Event::GoalChanged(Goal::Serve { terms: terms(), stake: ETH }));
        assert_eq!(sends(&actions), vec![Intent::Resume]);
    }

    #[test]
    fn leaving_waits_for_the_unbonding_delay_and_the_running_agreements() {
        let mut node = registered();
        node.on_event(Event::Synced { block: 1, timestamp: 100, at_head: true });
        // An offer answered just before the goal changes is not answered twice.
        assert_eq!(sends(&node.on_event(created(1, ME, 160))), vec![Intent::Accept(1)]);
        let actions = node.on_event(Event::GoalChanged(Goal::Leave));
        assert_eq!(sends(&actions), vec![Intent::RequestLeave]);
        node.on_event(Event::TxMined { key: "request-leave".into(), block: 2, success: true });
        node.on_event(Event::Chain(ChainEvent::LeaveRequested { worker: ME, unbond_at: 300 }));
        node.on_event(Event::Synced { block: 2, timestamp: 110, at_head: true });
        // The open agreement and the unbonding delay both hold the stake back.
        assert!(
            node.on_event(Event::Synced { block: 3, timestamp: 400, at_head: true })
                .iter()
                .all(|a| !matches!(a, Action::Send(Intent::WithdrawStake)))
        );
        let actions = node.on_event(Event::Chain(ChainEvent::AgreementCancelled { id: 1 }));
        assert_eq!(sends(&actions), vec![Intent::WithdrawStake]);
    }

    #[test]
    fn the_worker_accepts_within_its_slots_and_declines_beyond_them() {
        let mut node = registered();
        node.on_event(Event::Synced { block: 1, timestamp: 100, at_head: true });
        assert_eq!(sends(&node.on_event(created(1, ME, 160))), vec![Intent::Accept(1)]);
        node.on_event(Event::Chain(ChainEvent::AgreementAccepted { id: 1, ready_deadline: 400 }));
        // One slot, taken: a second draw (a race with our own accept) is declined.
        assert_eq!(sends(&node.on_event(created(2, ME, 170))), vec![Intent::Decline(2)]);
    }

    #[test]
    fn agreements_of_other_workers_are_ignored_and_expired_offers_left_alone() {
        let mut node = registered();
        node.on_event(Event::Synced { block: 1, timestamp: 500, at_head: true });
        assert!(node.on_event(created(1, OTHER, 560)).is_empty());
        assert_eq!(node.agreements().count(), 0);
        // Past its accept deadline: nothing to send (the client cancels it).
        assert!(node.on_event(created(2, ME, 400)).is_empty());
    }

    #[test]
    fn an_agreement_never_made_ready_is_aborted_after_the_ready_window() {
        let mut node = registered();
        node.on_event(Event::Synced { block: 1, timestamp: 100, at_head: true });
        node.on_event(created(1, ME, 160));
        node.on_event(Event::Chain(ChainEvent::AgreementAccepted { id: 1, ready_deadline: 400 }));
        assert!(node.on_event(Event::Synced { block: 2, timestamp: 399, at_head: true }).is_empty());
        assert_eq!(
            sends(&node.on_event(Event::Synced { block: 3, timestamp: 400, at_head: true })),
            vec![Intent::Abort(1)]
        );
    }

    #[test]
    fn a_finished_agreement_is_redeemed_once_and_the_credits_withdrawn() {
        let mut node = registered();
        node.on_event(created(1, ME, 160));
        node.on_event(Event::Chain(ChainEvent::AgreementStarted { id: 1, started_at: 200, epochs: 3 }));
        // Last epoch ends at 290, its reporting window at 305.
        assert!(node.on_event(Event::Synced { block: 9, timestamp: 304, at_head: true }).is_empty());
        assert_eq!(
            sends(&node.on_event(Event::Synced { block: 10, timestamp: 305, at_head: true })),
            vec![Intent::Redeem(1)]
        );
        assert!(node.on_event(Event::Synced { block: 11, timestamp: 306, at_head: true }).is_empty());
        node.on_event(Event::TxMined { key: "redeem:1".into(), block: 12, success: true });
        node.on_event(Event::Chain(ChainEvent::PaymentRedeemed { id: 1 }));
        assert_eq!(
            sends(&node.on_event(Event::Chain(ChainEvent::Credits { amount: 90 }))),
            vec![Intent::Withdraw]
        );
        node.on_event(Event::Synced { block: 12, timestamp: 310, at_head: true });
        assert_eq!(node.agreements().next().unwrap().stage, Stage::Finished);
        assert!(node.in_flight().all(|k| k != "redeem:1"), "{:?}", node.in_flight().collect::<Vec<_>>());
    }

    #[test]
    fn while_replaying_old_blocks_the_core_learns_but_does_not_decide() {
        let mut node = Node::new(ME, params(), Goal::Serve { terms: terms(), stake: ETH });
        assert!(node.on_event(Event::RegistrationRead(Registration::NotRegistered)).is_empty());
        assert!(node.on_event(created(1, ME, 160)).is_empty());
        assert!(node.on_event(Event::Synced { block: 5, timestamp: 100, at_head: false }).is_empty());
        // Caught up: the registration is due; the offer's window has not closed yet at 150.
        let actions = node.on_event(Event::Synced { block: 9, timestamp: 150, at_head: true });
        assert_eq!(sends(&actions), vec![Intent::Register { terms: terms(), stake: ETH }, Intent::Accept(1)]);
    }

    #[test]
    fn a_resumed_node_waits_for_the_chain_before_deciding() {
        let mut node = registered();
        node.on_event(created(1, ME, 160));
        node.resume();
        assert!(node.on_event(Event::GoalChanged(Goal::Leave)).is_empty());
        let actions = node.on_event(Event::Synced { block: 2, timestamp: 100, at_head: true });
        assert!(actions.contains(&Action::Send(Intent::RequestLeave)), "{actions:?}");
    }

    #[test]
    fn after_a_rewind_in_flight_is_what_the_shell_still_holds() {
        let mut node = serving();
        node.reset_in_flight(["register"]);
        assert!(node.on_event(Event::RegistrationRead(Registration::NotRegistered)).is_empty());
        // A decision from the abandoned timeline that the shell no longer holds is made again.
        node.reset_in_flight([]);
        let actions = node.on_event(Event::Synced { block: 1, timestamp: 1, at_head: true });
        assert_eq!(sends(&actions), vec![Intent::Register { terms: terms(), stake: ETH }]);
    }

    #[test]
    fn withdrawn_pay_is_forwarded_once_to_the_payout_address() {
        const PAYOUT: Address = Address([0x99; 20]);
        let mut node = registered();
        node.set_payout(Some(PAYOUT));
        assert_eq!(
            sends(&node.on_event(Event::Chain(ChainEvent::Credits { amount: 90 }))),
            vec![Intent::Withdraw]
        );
        node.on_event(Event::TxMined { key: "withdraw".into(), block: 2, success: true });
        let actions = node.on_event(Event::Chain(ChainEvent::Withdrawn { amount: 90 }));
        assert_eq!(sends(&actions), vec![Intent::Forward { to: PAYOUT, amount: 90 }]);
        node.on_event(Event::Chain(ChainEvent::Credits { amount: 0 }));
        assert!(node.on_event(Event::Synced { block: 2, timestamp: 20, at_head: true }).is_empty());
        node.on_event(Event::TxMined { key: "forward".into(), block: 3, success: true });
        assert!(node.on_event(Event::Synced { block: 3, timestamp: 30, at_head: true }).is_empty());
        assert!(node.in_flight().next().is_none());
    }

    #[test]
    fn without_a_payout_address_or_with_our_own_pay_stays_here() {
        let mut node = registered();
        node.set_payout(Some(ME));
        node.on_event(Event::Chain(ChainEvent::Withdrawn { amount: 90 }));
        assert!(node.on_event(Event::Synced { block: 3, timestamp: 30, at_head: true }).is_empty());
    }

    #[test]
    fn only_the_newest_closed_agreements_are_kept() {
        let mut node = registered();
        for id in 1..=(KEEP_CLOSED as u64 + 10) {
            node.on_event(created(id, ME, 0));
            node.on_event(Event::Chain(ChainEvent::AgreementCancelled { id }));
        }
        node.on_event(created(1000, ME, 0));
        assert_eq!(node.agreements().count(), KEEP_CLOSED + 1);
        assert_eq!(node.agreements().next().unwrap().id, 11, "the oldest closed ones went first");
        assert!(node.agreements().any(|a| a.id == 1000), "open agreements are never pruned");
    }

    #[test]
    fn a_verifier_assignment_is_tracked_with_its_role() {
        let mut node = registered();
        node.on_event(Event::Chain(ChainEvent::VerifierAssigned { id: 4, verifier: ME, worker: OTHER }));
        let a = node.agreements().next().unwrap();
        assert_eq!((a.id, a.role, a.worker), (4, Role::Verifier, OTHER));
        // The worker's lifecycle is not ours to drive.
        node.on_event(Event::Chain(ChainEvent::AgreementAccepted { id: 4, ready_deadline: 10 }));
        assert!(node.on_event(Event::Synced { block: 2, timestamp: 1000, at_head: true }).is_empty());
    }

    #[test]
    fn the_same_events_give_the_same_state() {
        let events = vec![
            Event::RegistrationRead(Registration::NotRegistered),
            Event::TxMined { key: "register".into(), block: 2, success: true },
            Event::Chain(ChainEvent::WorkerRegistered { worker: ME, stake: ETH, terms: terms() }),
            Event::Synced { block: 2, timestamp: 20, at_head: true },
            created(1, ME, 80),
        ];
        let (mut a, mut b) = (serving(), serving());
        let out_a: Vec<_> = events.iter().cloned().flat_map(|e| a.on_event(e)).collect();
        let out_b: Vec<_> = events.into_iter().flat_map(|e| b.on_event(e)).collect();
        assert_eq!(out_a, out_b);
        assert_eq!(a, b);
    }

    fn hello(id: AgreementId, host_port: u16) -> Event {
        Event::Work(WorkEvent::Hello {
            id,
            client_key: [9; 32],
            container_port: 8080,
            host_port,
            probe: crate::core::work::Probe::Tcp,
            offer: vec![1, 2, 3],
            watches: vec![(V1, vec![4]), (V2, vec![5])],
        })
    }

    const V1: Address = Address([0x01; 20]);
    const V2: Address = Address([0x02; 20]);
    const WORKER: Address = Address([0x88; 20]);

    fn at(node: &mut Node, block: u64, timestamp: u64) -> Vec<Action> {
        node.on_event(Event::Synced { block, timestamp, at_head: true })
    }

    fn probes(actions: &[Action]) -> Vec<(AgreementId, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Probe { id, epoch } => Some((*id, *epoch)),
                _ => None,
            })
            .collect()
    }

    fn watch_spec() -> WatchSpec {
        WatchSpec {
            work: "203.0.113.7:7100".into(),
            probe: crate::core::work::Probe::Tcp,
            transfer: "203.0.113.7:7070".into(),
            fingerprint: "ab".into(),
        }
    }

    /// We verify agreement 5 (worker WORKER), started at t=100 for 4 epochs of 30 s.
    fn verifying() -> Node {
        let mut node = registered();
        node.set_probe_seed([3; 32]);
        node.on_event(Event::Chain(ChainEvent::VerifierAssigned { id: 5, verifier: ME, worker: WORKER }));
        node.on_event(Event::Work(WorkEvent::Watch { id: 5, spec: watch_spec() }));
        node.on_event(Event::Chain(ChainEvent::AgreementStarted { id: 5, started_at: 100, epochs: 4 }));
        node
    }

    #[test]
    fn a_verifier_probes_each_epoch_once_at_a_drawn_moment_and_reports_the_verdict_in_time() {
        let mut node = verifying();
        let offsets: Vec<u64> = (0..4).map(|e| node.probe_offset(5, e)).collect();
        assert!(offsets.iter().all(|&o| o < 22), "within the first three quarters: {offsets:?}");
        // Another secret draws other moments (the worker cannot compute ours).
        let mut other = node.clone();
        other.set_probe_seed([4; 32]);
        assert_ne!(offsets, (0..4).map(|e| other.probe_offset(5, e)).collect::<Vec<_>>());

        let mut block = 1;
        let mut probed = Vec::new();
        for t in 100..130 {
            block += 1;
            let actions = at(&mut node, block, t);
            if !probes(&actions).is_empty() {
                probed.push((t, probes(&actions)));
            }
        }
        assert_eq!(probed, vec![(100 + offsets[0], vec![(5, 0)])], "one probe in epoch 0, at its moment");
        let actions =
            node.on_event(Event::Work(WorkEvent::Probed { id: 5, epoch: 0, ok: true, detail: "ok".into() }));
        assert_eq!(sends(&actions), vec![Intent::Verify { id: 5, epoch: 0, ok: true }]);
        // Mined and seen: the verdict is not sent again.
        node.on_event(Event::TxMined { key: "verify:5:0".into(), block: 40, success: true });
        node.on_event(Event::Chain(ChainEvent::VerificationProvided {
            id: 5,
            verifier: ME,
            epoch: 0,
            ok: true,
        }));
        assert!(sends(&at(&mut node, 40, 131)).is_empty());
        assert_eq!(node.agreement(5).unwrap().verification.as_ref().unwrap().reported, 1);
    }

    #[test]
    fn a_verifier_skips_epochs_it_missed_and_drops_verdicts_too_late_to_report() {
        let mut node = verifying();
        // Down until epoch 2: epochs 0 and 1 are not probed after the fact.
        let mut epochs_probed = Vec::new();
        for t in 160..190 {
            epochs_probed.extend(probes(&at(&mut node, t, t)));
        }
        assert_eq!(epochs_probed, vec![(5, 2)]);
        // The probe's answer comes back after the epoch's window closed (160 + 30 + 15).
        at(&mut node, 200, 205);
        let actions =
            node.on_event(Event::Work(WorkEvent::Probed { id: 5, epoch: 2, ok: false, detail: "x".into() }));
        assert!(sends(&actions).is_empty(), "too late: {actions:?}");
    }

    #[test]
    fn a_restart_mid_probe_does_not_stall_the_verifier() {
        let mut node = verifying();
        let mut first = Vec::new();
        for t in 100..130 {
            first.extend(probes(&at(&mut node, t, t)));
        }
        assert_eq!(first, vec![(5, 0)]);
        // The daemon died before the probe reported back.
        node.resume();
        let mut next = Vec::new();
        for t in 130..160 {
            next.extend(probes(&at(&mut node, t, t)));
        }
        assert_eq!(next, vec![(5, 1)]);
    }

    #[test]
    fn a_verifier_without_the_watch_letter_probes_nothing() {
        let mut node = registered();
        node.on_event(Event::Chain(ChainEvent::VerifierAssigned { id: 5, verifier: ME, worker: WORKER }));
        node.on_event(Event::Chain(ChainEvent::AgreementStarted { id: 5, started_at: 100, epochs: 4 }));
        for t in 100..220 {
            assert!(probes(&at(&mut node, t, t)).is_empty());
        }
    }

    #[test]
    fn a_verifier_collects_its_fees_if_the_worker_does_not_settle_and_closes_otherwise() {
        let mut node = verifying();
        node.on_event(Event::Chain(ChainEvent::VerificationProvided {
            id: 5,
            verifier: ME,
            epoch: 0,
            ok: true,
        }));
        // Last window closes at 100 + 4*30 + 15 = 235; the worker has one more epoch to settle.
        assert!(!sends(&at(&mut node, 300, 240)).contains(&Intent::Redeem(5)));
        assert!(sends(&at(&mut node, 301, 265)).contains(&Intent::Redeem(5)));
        // Someone settled first (or none of our reports agreed): the redeem is refused.
        node.on_event(Event::TxAbandoned {
            key: "redeem:5".into(),
            reason: "WrongState".into(),
            retry_at: 400,
        });
        assert_eq!(node.agreement(5).unwrap().stage, Stage::Finished);
        assert!(sends(&at(&mut node, 302, 500)).is_empty());

        // A verifier with no reports has nothing to claim: closed at the end.
        let mut silent = verifying();
        at(&mut silent, 300, 240);
        assert_eq!(silent.agreement(5).unwrap().stage, Stage::Finished);
        // An agreement that never starts is closed once it no longer can.
        let mut idle = registered();
        idle.on_event(Event::Chain(ChainEvent::VerifierAssigned { id: 6, verifier: ME, worker: WORKER }));
        at(&mut idle, 10, 359);
        assert_eq!(idle.agreement(6).unwrap().stage, Stage::Created { accept_deadline: 360 });
        at(&mut idle, 11, 360);
        assert_eq!(idle.agreement(6).unwrap().stage, Stage::Cancelled);
    }

    #[test]
    fn the_worker_sends_each_verifier_its_watch_letter_once() {
        let mut node = registered();
        node.on_event(created(1, ME, 60));
        let actions = node.on_event(hello(1, 7100));
        let w1 = Intent::Watch { id: 1, to: V1, ciphertext: vec![4] };
        let w2 = Intent::Watch { id: 1, to: V2, ciphertext: vec![5] };
        assert!(sends(&actions).contains(&w1) && sends(&actions).contains(&w2), "{actions:?}");
        node.on_event(Event::TxMined {
            key: "watch:1:0x0101010101010101010101010101010101010101".into(),
            block: 2,
            success: true,
        });
        node.on_event(Event::Chain(ChainEvent::MessageSent { id: 1, from: ME, to: V1, ciphertext: vec![4] }));
        node.on_event(Event::TxMined {
            key: "watch:1:0x0202020202020202020202020202020202020202".into(),
            block: 2,
            success: false,
        });
        // The reverted one is decided again after the pause; the delivered one never.
        assert!(sends(&at(&mut node, 3, 100)).is_empty());
        let later = sends(&at(&mut node, 4, 100 + RETRY_AFTER_SECS));
        assert!(later.contains(&w2) && !later.contains(&w1), "{later:?}");
    }

    #[test]
    fn the_worker_terminates_after_a_closed_run_of_failed_epochs_and_not_before() {
        let mut node = registered();
        node.on_event(created(1, ME, 60));
        node.on_event(Event::Chain(ChainEvent::AgreementStarted { id: 1, started_at: 100, epochs: 6 }));
        let report = |epoch, verifier, ok| {
            Event::Chain(ChainEvent::VerificationProvided { id: 1, verifier, epoch, ok })
        };
        node.on_event(report(0, V1, true));
        node.on_event(report(0, V2, true));
        // Epoch 1: a split vote is not a failure.
        node.on_event(report(1, V1, false));
        node.on_event(report(1, V2, true));
        node.on_event(report(2, V1, false));
        node.on_event(report(2, V2, false));
        node.on_event(report(3, V1, false));
        let terminate = Intent::Terminate { id: 1, first_failed_epoch: 2 };
        // Epoch 3's window is still open at 100 + 4*30 + 15 = 235.
        assert!(!sends(&at(&mut node, 10, 234)).contains(&terminate));
        assert!(sends(&at(&mut node, 11, 235)).contains(&terminate));
    }

    fn phase(node: &Node, id: AgreementId) -> Option<Phase> {
        node.agreement(id)?.deployment.as_ref().map(|d| d.phase.clone())
    }

    #[test]
    fn a_hello_is_answered_with_one_offer_until_the_offer_is_seen_on_chain() {
        let mut node = registered();
        node.on_event(created(1, ME, 60));
        let actions = node.on_event(hello(1, 7100));
        let offer = Intent::Offer { id: 1, to: CLIENT, ciphertext: vec![1, 2, 3] };
        assert!(sends(&actions).contains(&offer), "{actions:?}");
        assert_eq!(phase(&node, 1), Some(Phase::AwaitingImage));
        assert_eq!(node.ports_in_use().collect::<Vec<_>>(), vec![7100]);
        // A second hello (a replay) changes nothing; the offer stays in flight.
        assert!(!sends(&node.on_event(hello(1, 7101))).contains(&offer));
        node.on_event(Event::TxMined { key: "offer:1".into(), block: 2, success: true });
        node.on_event(Event::Chain(ChainEvent::MessageSent {
            id: 1,
            from: ME,
            to: CLIENT,
            ciphertext: vec![],
        }));
        let later = node.on_event(Event::Synced { block: 2, timestamp: 20, at_head: true });
        assert!(!sends(&later).iter().any(|i| matches!(i, Intent::Offer { .. })), "{later:?}");
    }

    #[test]
    fn a_hello_for_someone_elses_or_a_running_agreement_is_ignored() {
        let mut node = registered();
        node.on_event(created(1, OTHER, 60));
        node.on_event(hello(1, 7100));
        assert_eq!(node.agreement(1), None);
        node.on_event(created(2, ME, 60));
        node.on_event(Event::Chain(ChainEvent::AgreementStarted { id: 2, started_at: 10, epochs: 3 }));
        node.on_event(hello(2, 7100));
        assert_eq!(phase(&node, 2), None);
    }

    #[test]
    fn a_loaded_image_starts_the_container_and_a_started_one_is_declared_ready_once() {
        let mut node = registered();
        node.on_event(created(1, ME, 60));
        node.on_event(hello(1, 7100));
        node.on_event(Event::Chain(ChainEvent::AgreementAccepted { id: 1, ready_deadline: 300 }));
        let actions = node.on_event(Event::Work(WorkEvent::ImageLoaded { id: 1 }));
        assert!(actions.contains(&Action::Start(1)), "{actions:?}");
        // The same image loaded twice starts nothing twice.
        assert!(!node.on_event(Event::Work(WorkEvent::ImageLoaded { id: 1 })).contains(&Action::Start(1)));
        let actions = node.on_event(Event::Work(WorkEvent::Started { id: 1 }));
        assert!(sends(&actions).contains(&Intent::DeclareReady(1)), "{actions:?}");
        assert_eq!(node.should_run().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn work_that_fails_to_start_is_stopped_and_never_declared_ready() {
        let mut node = registered();
        node.on_event(created(1, ME, 60));
        node.on_event(hello(1, 7100));
        node.on_event(Event::Chain(ChainEvent::AgreementAccepted { id: 1, ready_deadline: 300 }));
        node.on_event(Event::Work(WorkEvent::ImageLoaded { id: 1 }));
        let actions = node.on_event(Event::Work(WorkEvent::Failed { id: 1, reason: "no probe".into() }));
        assert!(actions.contains(&Action::Stop(1)));
        assert!(!sends(&actions).contains(&Intent::DeclareReady(1)));
        assert!(node.last_error().unwrap().contains("no probe"));
        // The ready window passes: the agreement is aborted, as for a client that never pushed.
        let late = node.on_event(Event::Synced { block: 9, timestamp: 300, at_head: true });
        assert!(sends(&late).contains(&Intent::Abort(1)), "{late:?}");
    }

    #[test]
    fn the_container_stops_when_the_agreement_is_over_and_its_port_is_free_again() {
        let mut node = registered();
        node.on_event(created(1, ME, 60));
        node.on_event(hello(1, 7100));
        node.on_event(Event::Chain(ChainEvent::AgreementAccepted { id: 1, ready_deadline: 300 }));
        node.on_event(Event::Work(WorkEvent::ImageLoaded { id: 1 }));
        node.on_event(Event::Work(WorkEvent::Started { id: 1 }));
        node.on_event(Event::Chain(ChainEvent::AgreementStarted { id: 1, started_at: 100, epochs: 3 }));
        // Three 30 s epochs from 100: still running at 189, over at 190.
        assert!(
            !node
                .on_event(Event::Synced { block: 5, timestamp: 189, at_head: true })
                .contains(&Action::Stop(1))
        );
        let over = node.on_event(Event::Synced { block: 6, timestamp: 190, at_head: true });
        assert!(over.contains(&Action::Stop(1)), "{over:?}");
        assert!(
            !node
                .on_event(Event::Synced { block: 7, timestamp: 200, at_head: true })
                .contains(&Action::Stop(1))
        );
        assert_eq!(node.ports_in_use().count(), 0);
        assert_eq!(node.should_run().count(), 0);
    }

    #[test]
    fn an_image_never_pushed_releases_its_port_when_the_agreement_closes() {
        let mut node = registered();
        node.on_event(created(1, ME, 60));
        node.on_event(hello(1, 7100));
        let closed = node.on_event(Event::Chain(ChainEvent::AgreementAborted { id: 1 }));
        assert!(closed.contains(&Action::Stop(1)), "{closed:?}");
        assert_eq!(node.ports_in_use().count(), 0);
    }
}
