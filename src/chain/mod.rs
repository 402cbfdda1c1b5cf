//! The chain adapter: the only module that knows alloy.
//!
//! - [`bindings`]: typed bindings generated at compile time by alloy's `sol!` from
//!   `contracts/abi/*.json`, which `contracts/export-abi.sh` extracts from the Foundry build
//!   (CI regenerates them and fails if the committed files differ).
//! - [`client`]: the `Chain` trait (every RPC the daemon makes) and `AlloyChain`, its alloy
//!   implementation: logs filtered on our own address, EIP-1559 signing with explicit nonces,
//!   reverts decoded to the contract's custom errors before anything is sent.
//! - [`decode`]: dispatcher logs and structs -> core events and terms (pure).
//! - [`deployment`]: the deployment file that says where the protocol lives on a chain, written
//!   by the deploy script (`contracts/script/Deploy.s.sol`) or by `zeppelin dev`, read by the
//!   daemon and the client.
//! - [`market`]: the client's side: choose a worker class that fits, buy, send and read
//!   private-channel letters, follow and cancel agreements.
pub mod bindings;
pub mod client;
pub mod decode;
pub mod deployment;
pub mod market;
