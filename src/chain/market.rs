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

    pub async fn cancel(&self, id: AgreementId) -> Result<(), MarketError> {
        let receipt = self
            .dispatcher()
            .cancelAgreement(U256::from(id))
            .send()
            .await
            .map_err(|e| self.revert("cancelAgreement", e))?
            .get_receipt()
            .await
            .map_err(|e| self.rpc(e))?;
        if !receipt.status() {
            return Err(MarketError::Reverted {
                action: "cancelAgreement".into(),
                reason: "reverted on chain".into(),
            });
        }
        Ok(())
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
