//! # Zeppelin
//!
//! A worker appliance for a decentralized compute marketplace. A Raspberry Pi or any Linux box
//! runs `zeppelin daemon`, registers its CPU and memory with the on-chain `WorkerDispatcher`,
//! runs clients' containers under limits, verifies other workers, and collects its pay from
//! escrow. Clients use the same binary to buy time and push their image. The protocol is
//! described in `contracts/README.md` and the contracts' NatSpec.
//!
//! ## Bird's-eye view
//!
//! ```text
//!            chain (anvil / any EVM)            Docker engine         home router
//!                  |  logs, txs                      |  containers          |  UPnP / NAT-PMP / PCP
//!        +---------+---------+            +----------+------+     +--------+--------+
//!        | chain/ (alloy)    |            | runtime/ (bollard)|     | nat/            |
//!        +---------+---------+            +----------+------+     +--------+--------+
//!                  |  core events                    |                     |
//!                  +--------------> app: one event loop <------------------+
//!                                        |   ^
//!                               actions  v   |  events
//!                                   core/: pure state machines (no I/O, no clock)
//! ```
//!
//! Data flows one way: adapters turn the outside world into core events, the core returns
//! actions, and the application loop carries them out through one small trait per outside
//! system. Only the adapter for a system knows its library.
//!
//! ## Code map (what exists today; the diagram above is where it is going)
//!
//! - `main.rs`: thin entry: parse the command line, set up logging, map errors to an exit code.
//! - [`api`]: observing and steering the running daemon: the `StatusReport` the app publishes,
//!   the unix control socket (JSON lines: status, leave, pause, resume, reload) and its client,
//!   `/health` and `/metrics` over HTTP on localhost, the human `zeppelin status` output.
//! - [`cli`]: the subcommands; each one parses options and calls into the library.
//! - [`config`]: `/etc/zeppelin/zeppelin.toml` -> validated `Config` (pure; `load` is thin I/O).
//! - [`core`]: the pure state machine: registration reconciliation and the agreement lifecycle
//!   (events in, transactions out; no I/O, no clock).
//! - [`dev`]: `zeppelin dev`, the local marketplace behind the README's main command.
//! - [`identity`]: the worker's Ethereum key (V3 keystore in the state dir, 0600) and its
//!   private-channel X25519 key derived from it; sealed boxes.
//! - [`logging`]: tracing subscriber set-up (text or journald format).
//! - [`store`]: trait `Store`; the embedded database (redb) holding the daemon's snapshot.
//! - [`systemd`]: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING); a no-op outside systemd.
//! - [`tls`]: the one TLS policy: rustls with `ring`.
//! - [`version`]: version, git revision and target triple.
//!
//! ## Architecture invariants
//!
//! - Only `cli::run` builds the async runtime; library code is `async` and runtime-agnostic.
//! - No TLS provider but `ring`: `cargo tree -i aws-lc-sys` stays empty (CI checks it), because
//!   aws-lc-rs does not cross-build for armv7.
//! - Errors carry context (`what was being done: why`) and become an exit code only in `main`.

pub mod api;
pub mod app;
pub mod chain;
pub mod cli;
pub mod config;
pub mod core;
pub mod dev;
pub mod host;
pub mod identity;
pub mod logging;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod version;
