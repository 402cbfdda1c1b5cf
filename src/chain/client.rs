//! The `Chain` trait (what the daemon needs from an Ethereum node) and its alloy implementation.
//!
//! Every RPC the daemon makes goes through here, so the per-block cost is visible in one place:
//! following the chain costs one `eth_blockNumber` per poll and, per new range of blocks, three
//! `eth_getLogs` filtered on our own address (its topic position differs by event) plus one
//! `eth_getBlockByNumber`. Nothing here asks about other workers, so the cost does not grow with
//! the size of the market.
use std::future::Future;

use alloy::eips::{BlockId, BlockNumberOrTag, Encodable2718};
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address as EthAddress, B256, Bytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use serde::{Deserialize, Serialize};
use url::Url;

use super::bindings::WorkerDispatcher::{self, WorkerDispatcherErrors};
use super::decode;
use crate::api::Metrics;
use crate::core::node::{ChainEvent, Intent, ProtocolParams};
use crate::core::types::{Address, AgreementId, Wei};

/// The longest one RPC request may take.
pub const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A block, as far as the follower cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef {
    pub number: u64,
    pub hash: [u8; 32],
    pub timestamp: u64,
}

/// A transaction signed and ready to broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedTx {
    pub hash: [u8; 32],
    /// EIP-2718 encoding, as `eth_sendRawTransaction` takes it.
    pub raw: Vec<u8>,
    pub nonce: u64,
}

/// Where a transaction ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub block: u64,
    pub success: bool,
    pub gas_used: u64,
}

/// An RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached or answered garbage: worth retrying.
    #[error("rpc {method} at {url}: {message}")]
    Rpc { method: &'static str, url: String, message: String },
    /// The transaction would revert: retrying the same call will not help.
    #[error("{intent} would revert: {reason}")]
    Revert { intent: String, reason: String },
    /// The node answered but would not take it (out of funds for value and gas, say): other
    /// transactions may still go through; this one is tried again later.
    #[error("{intent} refused by the node: {reason}")]
    Refused { intent: String, reason: String },
}

/// What the daemon needs from the chain. One real implementation ([`AlloyChain`]); the
/// integration tests run it against a real anvil.
pub trait Chain {
    fn chain_id(&self) -> impl Future<Output = Result<u64, ChainError>> + Send;
    fn head(&self) -> impl Future<Output = Result<BlockRef, ChainError>> + Send;
    fn block(&self, number: u64) -> impl Future<Output = Result<Option<BlockRef>, ChainError>> + Send;
    /// The dispatcher's events that name `who` in blocks `from..=to`, in chain order.
    fn events_for(
        &self,
        who: Address,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<ChainEvent>, ChainError>> + Send;
    fn params(&self) -> impl Future<Output = Result<ProtocolParams, ChainError>> + Send;
    /// `(stake, withdrawable credits)` of `who` as of block `at`.
    fn stake_and_credits(
        &self,
        who: Address,
        at: u64,
    ) -> impl Future<Output = Result<(Wei, Wei), ChainError>> + Send;
    fn balance(&self, who: Address) -> impl Future<Output = Result<Wei, ChainError>> + Send;
    /// Transactions of `who` mined so far (the next nonce if none is pending).
    fn mined_nonce(&self, who: Address) -> impl Future<Output = Result<u64, ChainError>> + Send;
    /// Estimates, prices (EIP-1559) and signs `intent` with `nonce`. A call that would revert
    /// is [`ChainError::Revert`], with the contract's custom error decoded.
    fn sign(&self, intent: &Intent, nonce: u64) -> impl Future<Output = Result<SignedTx, ChainError>> + Send;
    /// Broadcasts; a node that already has the transaction is not an error.
    fn broadcast(&self, tx: &SignedTx) -> impl Future<Output = Result<(), ChainError>> + Send;
    fn receipt(&self, hash: [u8; 32]) -> impl Future<Output = Result<Option<Receipt>, ChainError>> + Send;
    /// The verifiers drawn for agreement `id`.
    fn verifiers(&self, id: AgreementId) -> impl Future<Output = Result<Vec<Address>, ChainError>> + Send;
    /// The X25519 key `who` registered (our letters to it are sealed to this).
    fn encryption_key(&self, who: Address) -> impl Future<Output = Result<[u8; 32], ChainError>> + Send;
    /// What the client of agreement `id` committed to (from its `AgreementCreated` log, searched
    /// from block `from`); `None` if there is no such agreement.
    fn commitment(
        &self,
        id: AgreementId,
        from: u64,
    ) -> impl Future<Output = Result<Option<crate::core::work::Work>, ChainError>> + Send;
}

/// [`Chain`] over alloy's HTTP provider, signing with the worker's key.
#[derive(Clone)]
pub struct AlloyChain {
    provider: DynProvider,
    url: String,
    dispatcher: EthAddress,
    signer: PrivateKeySigner,
    max_fee_per_gas: Option<u128>,
    metrics: Metrics,
}

impl AlloyChain {
    /// Every request is counted in `metrics` (by method), every failure too. Requests time out
    /// after [`RPC_TIMEOUT`], so a hung endpoint cannot stall the daemon's loop.
    pub fn new(
        rpc: Url,
        dispatcher: EthAddress,
        signer: PrivateKeySigner,
        max_fee_per_gas: Option<u128>,
        metrics: Metrics,
    ) -> Result<Self, ChainError> {
        // reqwest's rustls has no built-in provider (see `tls`): make sure ring is installed.
        crate::tls::install_crypto_provider();
        let url = rpc.to_string();
        // Fails only when the system's CA certificates cannot be loaded (none installed).
        let http =
            reqwest::Client::builder().timeout(RPC_TIMEOUT).connect_timeout(RPC_TIMEOUT).build().map_err(
                |e| ChainError::Rpc {
                    method: "(client set-up)",
                    url: url.clone(),
                    message: format!(
                        "{e} (are the system's CA certificates installed? apt install ca-certificates)"
                    ),
                },
            )?;
        let is_local =
            rpc.host_str().is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]");
        let client = alloy::rpc::client::RpcClient::new(
            alloy::transports::http::Http::with_client(http, rpc),
            is_local,
        );
        let provider = ProviderBuilder::new().connect_client(client).erased();
        Ok(AlloyChain { provider, url, dispatcher, signer, max_fee_per_gas, metrics })
    }

    fn rpc_err(&self, method: &'static str, e: impl std::fmt::Display) -> ChainError {
        self.metrics.rpc_error();
        ChainError::Rpc { method, url: self.url.clone(), message: e.to_string() }
    }

    fn count(&self, method: &str) {
        self.metrics.rpc_request(method);
    }

    fn call(&self) -> WorkerDispatcher::WorkerDispatcherInstance<&DynProvider> {
        WorkerDispatcher::new(self.dispatcher, &self.provider)
    }

    /// Recipient, calldata and value of an intent.
    fn encode(&self, intent: &Intent) -> (EthAddress, Vec<u8>, U256) {
        match intent {
            Intent::Forward { to, amount } => (decode::eth_address(*to), Vec::new(), U256::from(*amount)),
            other => {
                let (input, value) = Self::dispatcher_call(other);
                (self.dispatcher, input, value)
            }
        }
    }

    /// Calldata and value of an intent addressed to the dispatcher.
    fn dispatcher_call(intent: &Intent) -> (Vec<u8>, U256) {
        use WorkerDispatcher as W;
        let id = |id: &u64| U256::from(*id);
        match intent {
            Intent::Register { terms, stake } => {
                (W::registerWorkerCall { caps: decode::capabilities(terms) }.abi_encode(), U256::from(*stake))
            }
            Intent::Update { terms } => {
                (W::updateWorkerCall { caps: decode::capabilities(terms) }.abi_encode(), U256::ZERO)
            }
            Intent::AddStake { amount } => (W::addStakeCall {}.abi_encode(), U256::from(*amount)),
            Intent::Pause => (W::pauseWorkerCall {}.abi_encode(), U256::ZERO),
            Intent::Resume => (W::resumeWorkerCall {}.abi_encode(), U256::ZERO),
            Intent::RequestLeave => (W::requestLeaveCall {}.abi_encode(), U256::ZERO),
            Intent::WithdrawStake => (W::withdrawStakeCall {}.abi_encode(), U256::ZERO),
            Intent::Accept(i) => (W::acceptAgreementCall { id: id(i) }.abi_encode(), U256::ZERO),
            Intent::Decline(i) => (W::declineAgreementCall { id: id(i) }.abi_encode(), U256::ZERO),
            Intent::Abort(i) => (W::abortAgreementCall { id: id(i) }.abi_encode(), U256::ZERO),
            Intent::Redeem(i) => (W::redeemPaymentCall { id: id(i) }.abi_encode(), U256::ZERO),
            Intent::Withdraw => (W::withdrawCall {}.abi_encode(), U256::ZERO),
            Intent::Offer { id: i, to, ciphertext } => (
                W::sendMessageCall {
                    id: id(i),
                    to: decode::eth_address(*to),
                    ciphertext: ciphertext.clone().into(),
                }
                .abi_encode(),
                U256::ZERO,
            ),
            Intent::DeclareReady(i) => (W::declareReadyCall { id: id(i) }.abi_encode(), U256::ZERO),
            Intent::Watch { id: i, to, ciphertext } => (
                W::sendMessageCall {
                    id: id(i),
                    to: decode::eth_address(*to),
                    ciphertext: ciphertext.clone().into(),
                }
                .abi_encode(),
                U256::ZERO,
            ),
            Intent::Verify { id: i, epoch, ok } => (
                W::provideVerificationCall { id: id(i), epoch: U256::from(*epoch), ok: *ok }.abi_encode(),
                U256::ZERO,
            ),
            Intent::Terminate { id: i, first_failed_epoch } => (
                W::terminateAgreementCall { id: id(i), firstFailedEpoch: U256::from(*first_failed_epoch) }
                    .abi_encode(),
                U256::ZERO,
            ),
            Intent::Forward { .. } => unreachable!("a transfer, not a dispatcher call"),
        }
    }

    fn block_ref(block: &alloy::rpc::types::Block) -> BlockRef {
        BlockRef { number: block.header.number, hash: block.header.hash.0, timestamp: block.header.timestamp }
    }
}

/// A topic holding an address.
fn topic(a: Address) -> B256 {
    B256::left_padding_from(&a.0)
}

impl Chain for AlloyChain {
    async fn chain_id(&self) -> Result<u64, ChainError> {
        self.count("eth_chainId");
        self.provider.get_chain_id().await.map_err(|e| self.rpc_err("eth_chainId", e))
    }

    async fn head(&self) -> Result<BlockRef, ChainError> {
        self.count("eth_getBlockByNumber");
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(|e| self.rpc_err("eth_getBlockByNumber", e))?
            .ok_or_else(|| self.rpc_err("eth_getBlockByNumber", "no latest block"))?;
        Ok(Self::block_ref(&block))
    }

    async fn block(&self, number: u64) -> Result<Option<BlockRef>, ChainError> {
        self.count("eth_getBlockByNumber");
        let block = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .await
            .map_err(|e| self.rpc_err("eth_getBlockByNumber", e))?;
        Ok(block.as_ref().map(Self::block_ref))
    }

    async fn events_for(&self, who: Address, from: u64, to: u64) -> Result<Vec<ChainEvent>, ChainError> {
        let me = topic(who);
        let base = Filter::new().address(self.dispatcher).from_block(from).to_block(to);
        // Our address stands in topic 1 (worker events, withdrawals), topic 2 (verifier
        // assignments, payments to verifiers) or topic 3 (agreements where we are the worker).
        let filters = [base.clone().topic1(me), base.clone().topic2(me), base.topic3(me)];
        let mut logs = Vec::new();
        for filter in &filters {
            self.count("eth_getLogs");
            logs.extend(self.provider.get_logs(filter).await.map_err(|e| self.rpc_err("eth_getLogs", e))?);
        }
        logs.sort_by_key(|l| (l.block_number, l.log_index));
        logs.dedup_by_key(|l| (l.block_number, l.log_index));
        Ok(logs.iter().filter_map(|l| decode::chain_event(&l.inner)).collect())
    }

    async fn params(&self) -> Result<ProtocolParams, ChainError> {
        self.count("eth_call");
        let p = self.call().params().call().await.map_err(|e| self.rpc_err("eth_call params", e))?;
        Ok(decode::params(&p))
    }

    async fn stake_and_credits(&self, who: Address, at: u64) -> Result<(Wei, Wei), ChainError> {
        let me = decode::eth_address(who);
        let block = BlockId::number(at);
        self.count("eth_call");
        let worker = self
            .call()
            .getWorker(me)
            .block(block)
            .call()
            .await
            .map_err(|e| self.rpc_err("eth_call getWorker", e))?;
        self.count("eth_call");
        let credits = self
            .call()
            .credits(me)
            .block(block)
            .call()
            .await
            .map_err(|e| self.rpc_err("eth_call credits", e))?;
        Ok((worker.stake.to::<u128>(), credits.try_into().unwrap_or(Wei::MAX)))
    }

    async fn balance(&self, who: Address) -> Result<Wei, ChainError> {
        self.count("eth_getBalance");
        let b = self
            .provider
            .get_balance(decode::eth_address(who))
            .await
            .map_err(|e| self.rpc_err("eth_getBalance", e))?;
        Ok(b.try_into().unwrap_or(Wei::MAX))
    }

    async fn mined_nonce(&self, who: Address) -> Result<u64, ChainError> {
        self.count("eth_getTransactionCount");
        self.provider
            .get_transaction_count(decode::eth_address(who))
            .latest()
            .await
            .map_err(|e| self.rpc_err("eth_getTransactionCount", e))
    }

    async fn sign(&self, intent: &Intent, nonce: u64) -> Result<SignedTx, ChainError> {
        let (to, input, value) = self.encode(intent);
        let from = self.signer.address();
        let request = TransactionRequest::default()
            .with_from(from)
            .with_to(to)
            .with_input(Bytes::from(input))
            .with_value(value)
            .with_nonce(nonce);
        self.count("eth_estimateGas");
        let gas = match self.provider.estimate_gas(request.clone()).await {
            Ok(gas) => gas,
            Err(e) => {
                if let Some(reason) = e.as_error_resp().and_then(|r| {
                    let decoded = r.as_decoded_interface_error::<WorkerDispatcherErrors>();
                    match decoded {
                        Some(err) => Some(format!("{err:?}")),
                        None => r.as_revert_data().map(|d| format!("revert data {d}")),
                    }
                }) {
                    return Err(ChainError::Revert { intent: intent.key(), reason });
                }
                if let Some(response) = e.as_error_resp() {
                    return Err(ChainError::Refused {
                        intent: intent.key(),
                        reason: response.message.to_string(),
                    });
                }
                return Err(self.rpc_err("eth_estimateGas", e));
            }
        };
        self.count("eth_feeHistory");
        let fees =
            self.provider.estimate_eip1559_fees().await.map_err(|e| self.rpc_err("eth_feeHistory", e))?;
        let max_fee = match self.max_fee_per_gas {
            Some(cap) => fees.max_fee_per_gas.min(cap),
            None => fees.max_fee_per_gas,
        };
        let chain_id = self.chain_id().await?;
        let request = request
            .with_chain_id(chain_id)
            // 20% headroom over the estimate: state can move between estimate and inclusion.
            .with_gas_limit(gas + gas / 5)
            .with_max_fee_per_gas(max_fee)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas.min(max_fee));
        let wallet = EthereumWallet::from(self.signer.clone());
        let envelope = request.build(&wallet).await.map_err(|e| self.rpc_err("sign", e))?;
        Ok(SignedTx { hash: envelope.tx_hash().0, raw: envelope.encoded_2718(), nonce })
    }

    async fn broadcast(&self, tx: &SignedTx) -> Result<(), ChainError> {
        self.count("eth_sendRawTransaction");
        match self.provider.send_raw_transaction(&tx.raw).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = e.to_string().to_lowercase();
                // Sent before (a restart, a retry): the node has it or has mined it.
                if text.contains("already known")
                    || text.contains("nonce too low")
                    || text.contains("already imported")
                {
                    Ok(())
                } else {
                    Err(self.rpc_err("eth_sendRawTransaction", e))
                }
            }
        }
    }

    async fn receipt(&self, hash: [u8; 32]) -> Result<Option<Receipt>, ChainError> {
        self.count("eth_getTransactionReceipt");
        let receipt = self
            .provider
            .get_transaction_receipt(B256::from(hash))
            .await
            .map_err(|e| self.rpc_err("eth_getTransactionReceipt", e))?;
        Ok(receipt.and_then(|r| {
            Some(Receipt { block: r.block_number?, success: r.status(), gas_used: r.gas_used })
        }))
    }

    async fn verifiers(&self, id: AgreementId) -> Result<Vec<Address>, ChainError> {
        self.count("eth_call");
        let v = self
            .call()
            .verifiersOf(U256::from(id))
            .call()
            .await
            .map_err(|e| self.rpc_err("eth_call verifiersOf", e))?;
        Ok(v.accounts.into_iter().map(decode::address).collect())
    }

    async fn encryption_key(&self, who: Address) -> Result<[u8; 32], ChainError> {
        self.count("eth_call");
        let worker = self
            .call()
            .getWorker(decode::eth_address(who))
            .call()
            .await
            .map_err(|e| self.rpc_err("eth_call getWorker", e))?;
        Ok(worker.encryptionKey.0)
    }

    async fn commitment(
        &self,
        id: AgreementId,
        from: u64,
    ) -> Result<Option<crate::core::work::Work>, ChainError> {
        use alloy::sol_types::SolEvent;
        let filter = Filter::new()
            .address(self.dispatcher)
            .event_signature(WorkerDispatcher::AgreementCreated::SIGNATURE_HASH)
            .topic1(B256::from(U256::from(id)))
            .from_block(from)
            .to_block(BlockNumberOrTag::Latest);
        self.count("eth_getLogs");
        let logs = self.provider.get_logs(&filter).await.map_err(|e| self.rpc_err("eth_getLogs", e))?;
        Ok(logs.iter().find_map(|l| match decode::chain_event(&l.inner)? {
            ChainEvent::AgreementCreated { work, .. } => Some(work),
            _ => None,
        }))
    }
}

/// Follows new heads over a WebSocket and pokes `poke` at each one, so the daemon polls as soon
/// as a block arrives instead of at its next timer tick. Reconnects with backoff (1 s doubling
/// to 30 s) until `cancel`. The timer keeps running, so a dead WebSocket costs latency, never
/// correctness; the logs are still read over HTTP with the confirmations applied.
pub async fn watch_heads(
    url: Url,
    poke: tokio::sync::mpsc::Sender<()>,
    cancel: tokio_util::sync::CancellationToken,
) {
    use alloy::providers::WsConnect;
    const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(30);
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        let connect = async {
            let provider = ProviderBuilder::new().connect_ws(WsConnect::new(url.as_str())).await?;
            let subscription = provider.subscribe_blocks().await?;
            Ok::<_, alloy::transports::TransportError>((provider, subscription))
        };
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            result = tokio::time::timeout(RPC_TIMEOUT, connect) => result,
        };
        match connected {
            Ok(Ok((_provider, mut subscription))) => {
                tracing::info!(%url, "following new heads over the WebSocket");
                backoff = std::time::Duration::from_secs(1);
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        header = subscription.recv() => match header {
                            // A full channel means a poll is already due: nothing is lost.
                            Ok(_) => { let _ = poke.try_send(()); }
                            Err(error) => {
                                tracing::warn!(%url, %error, "WebSocket subscription ended; reconnecting");
                                break;
                            }
                        },
                    }
                }
            }
            Ok(Err(error)) => tracing::warn!(%url, %error, "WebSocket connection failed; polling meanwhile"),
            Err(_) => tracing::warn!(%url, "WebSocket connection timed out; polling meanwhile"),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
