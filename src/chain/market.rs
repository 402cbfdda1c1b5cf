//! The client's view of the market: find a worker class that fits, buy, talk over the private
//! channel, follow an agreement, cancel. Interactive (a person waits), so calls are sent and
//! awaited directly; the daemon's exactly-once outbox is not needed here.
use alloy::network::EthereumWallet;
use alloy::primitives::{Address as EthAddress, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;

use super::bindings::WorkerDispatcher::{self, WorkerDispatcherErrors};
use super::decode;
use super::deployment::Deployment;
use crate::core::types::{Address, AgreementId, Arch};

/// Logs are asked for in ranges of at most this many blocks.
const LOG_RANGE: u64 = 5_000;

#[derive(Debug, thiserror::Error)]
pub enum MarketError {
    #[error("chain at {url}: {message}")]
    Rpc { url: String, message: String },
    #[error("no worker fits: no registered class offers {what}")]
    NoWorkerFits { what: String },
    #[error(
        "price too low: the cheapest fitting worker class asks up to {ceiling} wei/s, over your highest price of {max} wei/s"
    )]
    PriceTooLow { ceiling: U256, max: U256 },
    #[error("{action} reverted: {reason}")]
    Reverted { action: String, reason: String },
    #[error("{0}")]
    Other(String),
}

/// What a client asks for.
#[derive(Clone, Copy, Debug)]
pub struct Wants {
    pub arch: Arch,
    pub cpu_millis: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
    pub duration: u64,
    pub max_price_per_second: U256,
    pub verifiers: u8,
}

/// A class a client can buy from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub class: u64,
    pub ceiling: U256,
    pub pool: U256,
}

/// A bought agreement.
#[derive(Clone, Copy, Debug)]
pub struct Bought {
    pub id: AgreementId,
    pub worker: Address,
    pub escrow: U256,
    pub block: u64,
}

/// The contract's agreement states, by name.
pub const STATES: [&str; 8] =
    ["none", "created", "accepted", "running", "terminated", "finished", "cancelled", "aborted"];

pub struct Market {
    provider: DynProvider,
    url: String,
    pub deployment: Deployment,
    me: EthAddress,
}

impl Market {
    pub fn new(rpc: url::Url, deployment: Deployment, signer: PrivateKeySigner) -> Self {
        crate::tls::install_crypto_provider();
        let me = signer.address();
        let url = rpc.to_string();
        let provider = ProviderBuilder::new().wallet(EthereumWallet::from(signer)).connect_http(rpc).erased();
        Market { provider, url, deployment, me }
    }

    /// The chain's JSON-RPC endpoint.
    pub fn rpc_url(&self) -> &str {
        &self.url
    }

    pub fn me(&self) -> Address {
        decode::address(self.me)
    }

    fn rpc(&self, e: impl std::fmt::Display) -> MarketError {
        MarketError::Rpc { url: self.url.clone(), message: e.to_string() }
    }

    fn dispatcher(&self) -> WorkerDispatcher::WorkerDispatcherInstance<&DynProvider> {
        WorkerDispatcher::new(self.deployment.dispatcher, &self.provider)
    }

    fn revert(&self, action: &str, e: alloy::contract::Error) -> MarketError {
        if let Some(decoded) = e.as_decoded_interface_error::<WorkerDispatcherErrors>() {
            return MarketError::Reverted { action: action.into(), reason: format!("{decoded:?}") };
        }
        match e {
            alloy::contract::Error::TransportError(t) if t.as_error_resp().is_none() => self.rpc(t),
            other => MarketError::Reverted { action: action.into(), reason: other.to_string() },
        }
    }

    pub async fn head(&self) -> Result<u64, MarketError> {
        self.provider.get_block_number().await.map_err(|e| self.rpc(e))
    }

    pub async fn balance(&self) -> Result<U256, MarketError> {
        self.provider.get_balance(self.me).await.map_err(|e| self.rpc(e))
    }

    /// Logs of the dispatcher matching `filter`, from its deployment to the head, in ranges.
    async fn logs(&self, filter: Filter, from: u64) -> Result<Vec<alloy::rpc::types::Log>, MarketError> {
        let head = self.head().await?;
        let mut out = Vec::new();
        let mut start = from.max(self.deployment.deploy_block);
        while start <= head {
            let end = (start + LOG_RANGE - 1).min(head);
            let f = filter.clone().address(self.deployment.dispatcher).from_block(start).to_block(end);
            out.extend(self.provider.get_logs(&f).await.map_err(|e| self.rpc(e))?);
            start = end + 1;
        }
        Ok(out)
    }

    /// The cheapest class with workers that satisfies `wants` (ties: the largest pool).
    pub async fn choose_class(&self, wants: &Wants) -> Result<Choice, MarketError> {
        let filter = Filter::new().event_signature(vec![
            WorkerDispatcher::WorkerRegistered::SIGNATURE_HASH,
            WorkerDispatcher::WorkerUpdated::SIGNATURE_HASH,
        ]);
        let mut classes: Vec<u64> = self
            .logs(filter, 0)
            .await?
            .iter()
            .filter_map(|l| l.topics().get(2).map(|t| U256::from_be_bytes(t.0).to::<u64>()))
            .collect();
        classes.sort_unstable();
        classes.dedup();
        let mut fitting = Vec::new();
        for class in classes {
            let req = self.requirements(wants, class);
            let d = self.dispatcher();
            let fits = d
                .classSatisfies(req, U256::from(wants.duration), U256::MAX)
                .call()
                .await
                .map_err(|e| self.rpc(e))?;
            if !fits {
                continue;
            }
            let pool = d.poolSize(class).call().await.map_err(|e| self.rpc(e))?;
            if pool.is_zero() {
                continue;
            }
            let ceiling = d.classPriceCeiling(class).call().await.map_err(|e| self.rpc(e))?;
            fitting.push(Choice { class, ceiling, pool });
        }
        fitting.sort_by(|a, b| a.ceiling.cmp(&b.ceiling).then(b.pool.cmp(&a.pool)));
        let Some(cheapest) = fitting.first().copied() else {
            return Err(MarketError::NoWorkerFits {
                what: format!(
                    "{} with {} mCPU, {} MiB memory, {} MiB disk for {} s (with free slots)",
                    wants.arch, wants.cpu_millis, wants.memory_mib, wants.disk_mib, wants.duration
                ),
            });
        };
        if cheapest.ceiling > wants.max_price_per_second {
            return Err(MarketError::PriceTooLow {
                ceiling: cheapest.ceiling,
                max: wants.max_price_per_second,
            });
        }
        Ok(cheapest)
    }

    fn requirements(&self, wants: &Wants, class: u64) -> WorkerDispatcher::Requirements {
        WorkerDispatcher::Requirements {
            workerClass: class,
            arch: wants.arch.code(),
            cpuMillis: wants.cpu_millis,
            memoryMiB: wants.memory_mib,
            diskMiB: wants.disk_mib,
        }
    }

    /// Buys an agreement in `choice`'s class, escrowing the quoted amount.
    pub async fn buy(
        &self,
        wants: &Wants,
        choice: Choice,
        image: [u8; 32],
        probe: [u8; 32],
    ) -> Result<Bought, MarketError> {
        let d = self.dispatcher();
        let duration = U256::from(wants.duration);
        let verifiers = U256::from(wants.verifiers);
        let escrow = d.quote(choice.class, duration, verifiers).call().await.map_err(|e| self.rpc(e))?;
        let work = WorkerDispatcher::WorkCommitment {
            imageDigest: B256::from(image),
            probeSpecHash: B256::from(probe),
        };
        let call = d
            .buyContract(
                self.requirements(wants, choice.class),
                duration,
                wants.max_price_per_second,
                verifiers,
                work,
            )
            .value(escrow);
        // The draw depends on the block's randomness: the mined block may take a longer path
        // than the estimate's (contracts/README.md), so send it with the estimate plus 25%.
        let estimate = call.estimate_gas().await.map_err(|e| self.revert("buyContract", e))?;
        let receipt = call
            .gas(estimate + estimate / 4 + 20_000)
            .send()
            .await
            .map_err(|e| self.revert("buyContract", e))?
            .get_receipt()
            .await
            .map_err(|e| self.rpc(e))?;
        if !receipt.status() {
            return Err(MarketError::Reverted {
                action: "buyContract".into(),
                reason: format!(
                    "reverted on chain (gas used {} of {}): the market changed since the estimate; try again",
                    receipt.gas_used,
                    estimate + estimate / 4 + 20_000
                ),
            });
        }
        let created = receipt
            .inner
            .logs()
            .iter()
            .find_map(|l| l.log_decode::<WorkerDispatcher::AgreementCreated>().ok())
            .ok_or_else(|| MarketError::Other("buyContract mined without an AgreementCreated log".into()))?;
        let e = created.inner.data;
        Ok(Bought {
            id: e.id.to::<u64>(),
            worker: decode::address(e.worker),
            escrow,
            block: receipt.block_number.unwrap_or_default(),
        })
    }

    /// A worker's registered channel key.
    pub async fn worker_key(&self, worker: Address) -> Result<[u8; 32], MarketError> {
        let w =
            self.dispatcher().getWorker(decode::eth_address(worker)).call().await.map_err(|e| self.rpc(e))?;
        Ok(w.encryptionKey.0)
    }

    pub async fn send_message(
        &self,
        id: AgreementId,
        to: Address,
        ciphertext: Vec<u8>,
    ) -> Result<(), MarketError> {
        let receipt = self
            .dispatcher()
            .sendMessage(U256::from(id), decode::eth_address(to), ciphertext.into())
            .send()
            .await
            .map_err(|e| self.revert("sendMessage", e))?
            .get_receipt()
            .await
            .map_err(|e| self.rpc(e))?;
        if !receipt.status() {
            return Err(MarketError::Reverted {
                action: "sendMessage".into(),
                reason: "reverted on chain".into(),
            });
        }
        Ok(())
    }

    /// Cancels agreement `id` (`cancelAgreement`); returns the refund and the accept penalty
    /// taken from the worker's stake, both credited to us.
    pub async fn cancel(&self, id: AgreementId) -> Result<(Sent, Settlement), MarketError> {
        let (sent, receipt) =
            self.transact("cancelAgreement", self.dispatcher().cancelAgreement(U256::from(id))).await?;
        let mut s = Settlement::default();
        for log in receipt.inner.logs() {
            s.absorb(log);
        }
        Ok((sent, s))
    }

    pub async fn agreement(
        &self,
        id: AgreementId,
    ) -> Result<super::bindings::WorkAgreement::Record, MarketError> {
        self.dispatcher().getAgreement(U256::from(id)).call().await.map_err(|e| self.rpc(e))
    }

    /// Letters sent to us in agreement `id` since block `from`: (sender, ciphertext).
    pub async fn letters_to_me(
        &self,
        id: AgreementId,
        from: u64,
    ) -> Result<Vec<(Address, Vec<u8>)>, MarketError> {
        let filter = Filter::new()
            .event_signature(WorkerDispatcher::MessageSent::SIGNATURE_HASH)
            .topic1(B256::from(U256::from(id)))
            .topic3(self.me.into_word());
        Ok(self
            .logs(filter, from)
            .await?
            .iter()
            .filter_map(|l| l.log_decode::<WorkerDispatcher::MessageSent>().ok())
            .map(|l| (decode::address(l.inner.data.from), l.inner.data.ciphertext.to_vec()))
            .collect())
    }

    /// Agreements we bought, oldest first: (id, block).
    pub async fn my_agreements(&self) -> Result<Vec<(AgreementId, u64)>, MarketError> {
        let filter = Filter::new()
            .event_signature(WorkerDispatcher::AgreementCreated::SIGNATURE_HASH)
            .topic2(self.me.into_word());
        Ok(self
            .logs(filter, 0)
            .await?
            .iter()
            .filter_map(|l| Some((U256::from_be_bytes(l.topics().get(1)?.0).to::<u64>(), l.block_number?)))
            .collect())
    }

    /// The block timestamp of the head.
    pub async fn now(&self) -> Result<u64, MarketError> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .map_err(|e| self.rpc(e))?
            .ok_or_else(|| MarketError::Other("the node has no latest block".into()))?;
        Ok(block.header.timestamp)
    }
}

/// An epoch's outcome as `reportsOf` gives it (the contract's `WorkAgreement` constants).
pub const OUTCOME_SERVED: u8 = 1;
pub const OUTCOME_FAILED: u8 = 2;

/// The reports on one epoch: bit i of `reported` (`ok`) is set if verifier i reported (ok).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reports {
    pub reported: u8,
    pub ok: u8,
    /// 0 unjudged, [`OUTCOME_SERVED`], [`OUTCOME_FAILED`].
    pub outcome: u8,
}

/// What the chain's logs say happened to an agreement's money.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Escrowed by the client when it bought (`AgreementCreated`), and the block.
    pub escrow: Option<(U256, u64)>,
    /// `AgreementCancelled`: the escrow returned.
    pub cancelled: Option<U256>,
    /// `AgreementAborted`: (worker compensation, client refund).
    pub aborted: Option<(U256, U256)>,
    /// `AgreementTerminated`: epochs from this one on are refunded.
    pub terminated_at: Option<u64>,
    pub redeemed: Option<Redeemed>,
    /// `VerifierPaid`: (verifier, reports, fee).
    pub verifier_fees: Vec<(Address, u64, U256)>,
    /// `StakeSlashed` in this agreement: taken from the worker's stake, credited to the client.
    pub slashed: U256,
}

/// `PaymentRedeemed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redeemed {
    pub worker_pay: U256,
    /// The client's share of the escrow plus the slash.
    pub client_refund: U256,
    pub served: u64,
    pub failed: u64,
    pub block: u64,
    /// The settling transaction (anyone may send it).
    pub tx: B256,
}

impl Settlement {
    /// Whether the money of the agreement has been shared out.
    pub fn settled(&self) -> bool {
        self.cancelled.is_some() || self.aborted.is_some() || self.redeemed.is_some()
    }

    /// Everything credited back to the client (slash included), once settled.
    pub fn client_back(&self) -> Option<U256> {
        if let Some(r) = &self.redeemed {
            return Some(r.client_refund);
        }
        if let Some((_, refund)) = self.aborted {
            return Some(refund + self.slashed);
        }
        self.cancelled.map(|refund| refund + self.slashed)
    }

    /// What the worker was credited, once settled.
    pub fn worker_earned(&self) -> Option<U256> {
        if let Some(r) = &self.redeemed {
            return Some(r.worker_pay);
        }
        if let Some((compensation, _)) = self.aborted {
            return Some(compensation);
        }
        self.cancelled.map(|_| U256::ZERO)
    }

    pub fn verifiers_earned(&self) -> U256 {
        self.verifier_fees.iter().map(|(_, _, fee)| *fee).sum()
    }

    /// What the contract still holds of the escrow: zero once settled (the slash comes from the
    /// worker's stake, not from the escrow). `None` before settlement or without the escrow.
    pub fn still_held(&self) -> Option<U256> {
        let (escrow, _) = self.escrow?;
        let back = self.client_back()?;
        let out = self.worker_earned()? + self.verifiers_earned() + back - self.slashed;
        Some(escrow.saturating_sub(out))
    }

    /// Folds one dispatcher log into the settlement of its agreement (other logs are ignored).
    fn absorb(&mut self, log: &alloy::rpc::types::Log) {
        use WorkerDispatcher::WorkerDispatcherEvents as Ev;
        use alloy::sol_types::SolEventInterface;
        let block = log.block_number.unwrap_or_default();
        let Ok(event) = Ev::decode_log(&log.inner) else { return };
        match event.data {
            Ev::AgreementCreated(e) => self.escrow = Some((e.escrow, block)),
            Ev::AgreementCancelled(e) => self.cancelled = Some(e.refund),
            Ev::AgreementAborted(e) => self.aborted = Some((e.workerCompensation, e.clientRefund)),
            Ev::AgreementTerminated(e) => self.terminated_at = Some(e.endEpoch.saturating_to()),
            Ev::PaymentRedeemed(e) => {
                self.redeemed = Some(Redeemed {
                    worker_pay: e.workerPay,
                    client_refund: e.clientRefund,
                    served: e.servedEpochs.saturating_to(),
                    failed: e.failedEpochs.saturating_to(),
                    block,
                    tx: log.transaction_hash.unwrap_or_default(),
                })
            }
            Ev::VerifierPaid(e) => {
                self.verifier_fees.push((decode::address(e.verifier), e.reports.saturating_to(), e.fee))
            }
            Ev::StakeSlashed(e) => self.slashed += e.amount,
            _ => {}
        }
    }
}

/// The agreement id a settlement log is about (topic 1, or topic 2 for `StakeSlashed`).
fn log_agreement(log: &alloy::rpc::types::Log) -> Option<AgreementId> {
    let topics = log.topics();
    let at = if topics.first() == Some(&WorkerDispatcher::StakeSlashed::SIGNATURE_HASH) { 2 } else { 1 };
    Some(U256::from_be_bytes(topics.get(at)?.0).saturating_to())
}

/// What a settling transaction did.
#[derive(Clone, Copy, Debug)]
pub struct Sent {
    pub tx: B256,
    pub block: u64,
    /// Gas used times the effective gas price: what the sender paid for it.
    pub fee: U256,
}

impl Market {
    /// Sends `call` the way every client transaction goes: the gas estimated first (so a revert
    /// is reported with the contract's decoded error before anything is signed), a margin over
    /// the estimate, and the receipt awaited.
    async fn transact<D: alloy::contract::CallDecoder>(
        &self,
        action: &str,
        call: alloy::contract::CallBuilder<&&DynProvider, D>,
    ) -> Result<(Sent, alloy::rpc::types::TransactionReceipt), MarketError> {
        let estimate = call.estimate_gas().await.map_err(|e| self.revert(action, e))?;
        let limit = estimate + estimate / 5 + 10_000;
        let receipt = call
            .gas(limit)
            .send()
            .await
            .map_err(|e| self.revert(action, e))?
            .get_receipt()
            .await
            .map_err(|e| self.rpc(e))?;
        if !receipt.status() {
            return Err(MarketError::Reverted {
                action: action.into(),
                reason: format!(
                    "reverted on chain (gas used {} of {limit}): the agreement changed since the estimate; look at `zeppelin client status`",
                    receipt.gas_used
                ),
            });
        }
        let sent = Sent {
            tx: receipt.transaction_hash,
            block: receipt.block_number.unwrap_or_default(),
            fee: U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price),
        };
        Ok((sent, receipt))
    }

    /// The protocol parameters.
    pub async fn params(&self) -> Result<WorkerDispatcher::Params, MarketError> {
        self.dispatcher().params().call().await.map_err(|e| self.rpc(e))
    }

    /// An agreement's verifiers and their on-time report counts.
    pub async fn verifiers_of(&self, id: AgreementId) -> Result<Vec<(Address, u64)>, MarketError> {
        let v = self.dispatcher().verifiersOf(U256::from(id)).call().await.map_err(|e| self.rpc(e))?;
        Ok(v.accounts.iter().zip(&v.reports).map(|(a, r)| (decode::address(*a), r.saturating_to())).collect())
    }

    /// The reports on epochs `0..count` of agreement `id`, a few calls at a time.
    pub async fn reports_of(&self, id: AgreementId, count: u64) -> Result<Vec<Reports>, MarketError> {
        use futures_util::{StreamExt, TryStreamExt};
        futures_util::stream::iter(0..count)
            .map(|epoch| async move {
                let r = self
                    .dispatcher()
                    .reportsOf(U256::from(id), U256::from(epoch))
                    .call()
                    .await
                    .map_err(|e| self.rpc(e))?;
                Ok::<_, MarketError>(Reports { reported: r.reported, ok: r.ok, outcome: r.outcome })
            })
            .buffered(16)
            .try_collect()
            .await
    }

    /// What `who` may withdraw from the dispatcher.
    pub async fn credits(&self, who: Address) -> Result<U256, MarketError> {
        self.dispatcher().credits(decode::eth_address(who)).call().await.map_err(|e| self.rpc(e))
    }

    /// The settlement logs of agreement `id`.
    pub async fn settlement(&self, id: AgreementId) -> Result<Settlement, MarketError> {
        let topic = B256::from(U256::from(id));
        let by_id = Filter::new()
            .event_signature(vec![
                WorkerDispatcher::AgreementCreated::SIGNATURE_HASH,
                WorkerDispatcher::AgreementCancelled::SIGNATURE_HASH,
                WorkerDispatcher::AgreementAborted::SIGNATURE_HASH,
                WorkerDispatcher::AgreementTerminated::SIGNATURE_HASH,
                WorkerDispatcher::PaymentRedeemed::SIGNATURE_HASH,
                WorkerDispatcher::VerifierPaid::SIGNATURE_HASH,
            ])
            .topic1(topic);
        let slashed =
            Filter::new().event_signature(WorkerDispatcher::StakeSlashed::SIGNATURE_HASH).topic2(topic);
        let mut s = Settlement::default();
        for filter in [by_id, slashed] {
            for log in self.logs(filter, 0).await? {
                s.absorb(&log);
            }
        }
        Ok(s)
    }

    /// The settlements of every agreement we bought (without the verifiers' fees), by id.
    pub async fn my_settlements(
        &self,
    ) -> Result<std::collections::BTreeMap<AgreementId, Settlement>, MarketError> {
        let mine = self.me.into_word();
        let as_client = Filter::new()
            .event_signature(vec![
                WorkerDispatcher::AgreementCreated::SIGNATURE_HASH,
                WorkerDispatcher::AgreementCancelled::SIGNATURE_HASH,
                WorkerDispatcher::AgreementAborted::SIGNATURE_HASH,
                WorkerDispatcher::AgreementTerminated::SIGNATURE_HASH,
                WorkerDispatcher::PaymentRedeemed::SIGNATURE_HASH,
            ])
            .topic2(mine);
        let slashed_to_me =
            Filter::new().event_signature(WorkerDispatcher::StakeSlashed::SIGNATURE_HASH).topic3(mine);
        let mut out = std::collections::BTreeMap::<AgreementId, Settlement>::new();
        for filter in [as_client, slashed_to_me] {
            for log in self.logs(filter, 0).await? {
                if let Some(id) = log_agreement(&log) {
                    out.entry(id).or_default().absorb(&log);
                }
            }
        }
        Ok(out)
    }

    /// Settles agreement `id` (`redeemPayment`).
    pub async fn redeem(&self, id: AgreementId) -> Result<(Sent, Settlement), MarketError> {
        let (sent, receipt) =
            self.transact("redeemPayment", self.dispatcher().redeemPayment(U256::from(id))).await?;
        let mut s = Settlement::default();
        for log in receipt.inner.logs() {
            s.absorb(log);
        }
        Ok((sent, s))
    }

    /// Ends agreement `id` after the failed run starting at epoch `first` (`terminateAgreement`);
    /// returns the epoch from which the rest is refunded.
    pub async fn terminate(&self, id: AgreementId, first: u64) -> Result<(Sent, u64), MarketError> {
        let d = self.dispatcher();
        let call = d.terminateAgreement(U256::from(id), U256::from(first));
        let (sent, receipt) = self.transact("terminateAgreement", call).await?;
        let end = receipt
            .inner
            .logs()
            .iter()
            .find_map(|l| l.log_decode::<WorkerDispatcher::AgreementTerminated>().ok())
            .map(|l| l.inner.data.endEpoch.saturating_to())
            .ok_or_else(|| {
                MarketError::Other("terminateAgreement mined without an AgreementTerminated log".into())
            })?;
        Ok((sent, end))
    }

    /// Withdraws all our credits; returns the amount (from the `Withdrawn` log).
    pub async fn withdraw(&self) -> Result<(Sent, U256), MarketError> {
        let (sent, receipt) = self.transact("withdraw", self.dispatcher().withdraw()).await?;
        let amount = receipt
            .inner
            .logs()
            .iter()
            .find_map(|l| l.log_decode::<WorkerDispatcher::Withdrawn>().ok())
            .map(|l| l.inner.data.amount)
            .ok_or_else(|| MarketError::Other("withdraw mined without a Withdrawn log".into()))?;
        Ok((sent, amount))
    }

    /// Who sent transaction `tx`.
    pub async fn sender_of(&self, tx: B256) -> Result<Address, MarketError> {
        use alloy::network::TransactionResponse;
        let found = self
            .provider
            .get_transaction_by_hash(tx)
            .await
            .map_err(|e| self.rpc(e))?
            .ok_or_else(|| MarketError::Other(format!("the node does not know transaction {tx}")))?;
        Ok(decode::address(found.from()))
    }

    /// The timestamp of block `number`.
    pub async fn block_time(&self, number: u64) -> Result<u64, MarketError> {
        let block = self
            .provider
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| self.rpc(e))?
            .ok_or_else(|| MarketError::Other(format!("the node has no block {number}")))?;
        Ok(block.header.timestamp)
    }
}
