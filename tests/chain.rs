//! The chain adapter against a real anvil running our compiled contracts.
mod common;

use alloy::network::EthereumWallet;
use alloy::node_bindings::{Anvil, AnvilInstance};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use zeppelin::api::Metrics;
use zeppelin::chain::bindings::WorkerDispatcher;
use zeppelin::chain::client::{AlloyChain, Chain, ChainError};
use zeppelin::chain::decode;
use zeppelin::core::node::{ChainEvent, Intent};
use zeppelin::core::types::{Arch, Terms};

const ETH: u128 = 1_000_000_000_000_000_000;

async fn devnet() -> (AnvilInstance, alloy::primitives::Address) {
    zeppelin::tls::install_crypto_provider();
    let anvil = Anvil::at(common::anvil()).spawn();
    let deployer = PrivateKeySigner::from(anvil.keys()[0].clone());
    let provider =
        ProviderBuilder::new().wallet(EthereumWallet::from(deployer)).connect_http(anvil.endpoint_url());
    let dispatcher = WorkerDispatcher::deploy(&provider, zeppelin::dev::dev_params()).await.unwrap();
    (anvil, *dispatcher.address())
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

async fn mine(chain: &AlloyChain, me: zeppelin::core::Address, intent: Intent) -> u64 {
    let nonce = chain.mined_nonce(me).await.unwrap();
    let tx = chain.sign(&intent, nonce).await.unwrap();
    chain.broadcast(&tx).await.unwrap();
    // Broadcasting the same bytes again (a restart, a retry) is harmless.
    chain.broadcast(&tx).await.unwrap();
    // Anvil mines on arrival, but may answer before the block is sealed.
    let mut receipt = None;
    for _ in 0..100 {
        receipt = chain.receipt(tx.hash).await.unwrap();
        if receipt.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let receipt = receipt.expect("mined within 5 s");
    assert!(receipt.success);
    receipt.block
}

#[tokio::test]
async fn a_registration_is_signed_sent_mined_and_followed_back_as_our_event() {
    let (anvil, dispatcher) = devnet().await;
    let signer = PrivateKeySigner::from(anvil.keys()[1].clone());
    let me = decode::address(signer.address());
    let chain = AlloyChain::new(anvil.endpoint_url(), dispatcher, signer, None, Metrics::new()).unwrap();

    assert_eq!(chain.chain_id().await.unwrap(), 31337);
    assert_eq!(chain.params().await.unwrap().min_stake, ETH);
    let block = mine(&chain, me, Intent::Register { terms: terms(), stake: 2 * ETH }).await;

    let events = chain.events_for(me, 0, block).await.unwrap();
    assert_eq!(events, vec![ChainEvent::WorkerRegistered { worker: me, stake: 2 * ETH, terms: terms() }]);
    assert_eq!(chain.stake_and_credits(me, block).await.unwrap(), (2 * ETH, 0));
    assert_eq!(chain.mined_nonce(me).await.unwrap(), 1, "the duplicate broadcast was not mined twice");

    // Another worker's registration is not ours to see.
    let other = PrivateKeySigner::from(anvil.keys()[2].clone());
    let other_me = decode::address(other.address());
    let other_chain = AlloyChain::new(anvil.endpoint_url(), dispatcher, other, None, Metrics::new()).unwrap();
    let later = mine(&other_chain, other_me, Intent::Register { terms: terms(), stake: ETH }).await;
    assert!(chain.events_for(me, block + 1, later).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_call_that_would_revert_is_refused_before_sending_with_the_contract_error() {
    let (anvil, dispatcher) = devnet().await;
    let signer = PrivateKeySigner::from(anvil.keys()[1].clone());
    let me = decode::address(signer.address());
    let chain = AlloyChain::new(anvil.endpoint_url(), dispatcher, signer, None, Metrics::new()).unwrap();
    mine(&chain, me, Intent::Register { terms: terms(), stake: ETH }).await;

    let err = chain.sign(&Intent::Register { terms: terms(), stake: ETH }, 1).await.unwrap_err();
    match err {
        ChainError::Revert { intent, reason } => {
            assert_eq!(intent, "register");
            assert!(reason.contains("AlreadyRegistered"), "{reason}");
        }
        other => panic!("expected a decoded revert, got {other}"),
    }
    let err = chain.sign(&Intent::Resume, 1).await.unwrap_err().to_string();
    assert!(err.starts_with("resume would revert: ") && err.contains("WrongWorkerStatus"), "{err}");
    assert_eq!(
        ProviderBuilder::new().connect_http(anvil.endpoint_url()).get_block_number().await.unwrap(),
        1 + 1,
        "nothing but the deployment and the registration was mined"
    );
}

#[tokio::test]
async fn an_unreachable_node_is_an_rpc_error_naming_the_url() {
    let dead: url::Url = "http://127.0.0.1:9/".parse().unwrap();
    let metrics = Metrics::new();
    let chain = AlloyChain::new(
        dead,
        alloy::primitives::Address::ZERO,
        PrivateKeySigner::random(),
        None,
        metrics.clone(),
    )
    .unwrap();
    let err = chain.head().await.unwrap_err().to_string();
    assert!(err.starts_with("rpc eth_getBlockByNumber at http://127.0.0.1:9/: "), "{err}");
    let text = metrics.render(&Default::default());
    assert!(text.contains("zeppelin_rpc_errors_total 1"), "{text}");
    assert!(text.contains(r#"zeppelin_rpc_requests_total{method="eth_getBlockByNumber"} 1"#), "{text}");
}
