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
//! ## Code map
//!
//! - `main.rs`: thin entry: parse the command line, set up logging, map errors to an exit code.
//! - [`cli`]: the subcommands (`daemon`, `status`, `leave`, `pause`, `resume`, `reload`, `dev`,
//!   `client buy|status|list|cancel|redeem|terminate|withdraw`, `nat check`); each one parses options and calls into the
//!   library.
//! - [`app`]: the daemon's wiring and its one event loop ([`app::run`]): the `Trigger` enum
//!   (poll timer, new head over WebSocket, control command, SIGHUP, watchdog, SIGTERM), one poll
//!   (follow confirmed blocks, rewind on reorg, settle receipts, sign decisions, **save**, then
//!   broadcast), [`app::outbox`], the exactly-once transaction outbox, [`app::nat`], which
//!   starts the NAT task (its state changes are a `Trigger` too), and [`app::work`], which
//!   carries out the core's work decisions: opens the client's hello and seals the offer,
//!   publishes the transfer server's gate (who may push what), starts containers (then probes
//!   them) and stops them, and re-adopts them after a restart; its reports (image loaded,
//!   started, failed) come back as `Trigger::Work`. [`app::verify`] is the verifier's side:
//!   it opens the worker's watch letter (checking its probe against the client's commitment
//!   on chain) and carries out the core's `Action::Probe`: the client's probe at the work's
//!   endpoint plus the worker's signed [`health`] report, fetched over the pinned TLS of the
//!   worker's transfer server; the verdict comes back as `WorkEvent::Probed`, which the core
//!   turns into a `provideVerification` intent.
//! - [`health`]: the worker's health report (container state, restarts, uptime, CPU, memory,
//!   tasks) bound to chain, dispatcher, agreement and the verifier's nonce, signed (EIP-191)
//!   with the worker's key; the verifier's fetch and check.
//! - [`transfer`]: the image push: the wire protocol, [`transfer::server`] (TLS, the signed
//!   challenge, layers reused by prefix, digests checked while streaming into an `ImageSink`,
//!   every size and silence bounded) and [`transfer::push`] (the client side);
//!   [`transfer::archive`] reads and writes `docker save` archives.
//! - [`letters`]: the private channel's letters (hello, offer, watch), sealed to the recipient and
//!   bound to their chain, dispatcher, agreement, sender and recipient.
//! - [`client`]: `zeppelin client ...`: export the image, buy, write the hello, read the offer,
//!   push, wait for `declareReady`; follow each epoch's verdict (`reportsOf`), settle
//!   (`redeem`, `terminate`, `cancel`) and withdraw refunds, each refusing clearly before the
//!   contract would and saying "already settled" on a second run; stateless (all it shows is
//!   read back from the chain, the money flow from the settlement logs).
//! - [`probe`]: checking that work answers its probe (HTTP status and body hash, or TCP).
//! - [`core`]: the pure state machine `Node::on_event(event) -> actions`: registration
//!   reconciled against the operator's goal, the agreement lifecycle, intents in flight, and
//!   [`core::work`]: each agreement's deployment (awaiting image, loaded, started, stopped);
//!   as a verifier, one probe per epoch at a moment drawn from a secret of its own (so the
//!   worker cannot be up only then), each verdict reported while its window is open, its fees
//!   collected if the worker does not settle; as a worker, watch letters to its verifiers,
//!   termination after a closed run of failed epochs, settlement and withdrawal.
//! - [`chain`]: the only module that speaks Ethereum: the `Chain` trait and `AlloyChain`,
//!   bindings generated from `contracts/abi/`, log decoding, the deployment file, and
//!   [`chain::market`], the client's side (choose a class, buy, letters, follow, settle,
//!   withdraw; every transaction estimated first so a revert names the contract's error).
//! - [`runtime`]: the only module that knows bollard: the `Runtime` trait and `DockerRuntime`
//!   (unix socket; containers named and labelled by scope and agreement, each on its own bridge
//!   network with the agreement's CPU, memory without swap and pids limits, no capabilities, no
//!   new privileges, a read-only root with a small `/tmp`, no mounts), image loading from a
//!   stream, layer-prefix lookup; [`runtime::images`] builds busybox test images.
//! - [`nat`]: NAT traversal: the `PortMapper` trait and its adapters (the only code that knows
//!   `igd-next` and `crab_nat`): UPnP IGD, PCP, NAT-PMP; the pure lease/fallback/CGNAT logic;
//!   the service task the daemon and `zeppelin nat check` run (discover, map, renew, re-map,
//!   release) behind a `NatHandle`.
//! - [`store`]: trait `Store`; the embedded database (redb) holding the daemon's snapshot.
//! - [`api`]: observing and steering the running daemon: the `StatusReport` the app publishes,
//!   the unix control socket (JSON lines) and its client, `/health` and `/metrics` over HTTP on
//!   localhost, the human `zeppelin status` output.
//! - [`systemd`]: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING); a no-op outside systemd.
//! - [`config`]: `/etc/zeppelin/zeppelin.toml` -> validated `Config` (pure; `load` is thin I/O).
//! - [`identity`]: the worker's Ethereum key (V3 keystore in the state dir, 0600) and its
//!   private-channel X25519 key derived from it; sealed boxes.
//! - [`host`]: what this machine offers (CPUs, memory, free disk), capped by the config.
//! - [`dev`]: `zeppelin dev`, the local marketplace behind the README's main command, and
//!   `DevWorker`, which the integration tests use to run real daemons.
//! - [`generate`]: the man pages and shell completions of the Debian package, from the CLI
//!   definition (`zeppelin generate man|completions DIR`, a hidden subcommand).
//! - [`logging`], [`tls`] (rustls with `ring` only), [`version`].
//!
//! ## Architecture invariants
//!
//! - **The core never does I/O.** No async, no clock, no sockets: chain time arrives in events.
//!   Its types derive serde so the store can persist them; nothing in it calls serde.
//! - **Only `runtime/` knows bollard**, and nothing a container gets is chosen outside
//!   `runtime/docker.rs`: the hardening is in one function (`container_body`).
//! - **Only `nat/`'s adapters know the port-mapping libraries**, and every router request is
//!   bounded in time; a router's answer never panics the daemon.
//! - **Only `chain/` knows alloy's providers and contracts.** `config` and `identity` use
//!   alloy's plain value types (addresses, amounts, the signer); the core uses its own.
//! - **A decision is saved before it leaves the machine.** The app signs into the outbox, saves
//!   the snapshot, then broadcasts; a restart rebroadcasts the same signed bytes. The core keeps
//!   an intent in flight until the follower has processed the block that mined it.
//! - **The daemon asks only about itself.** Logs are filtered on its own address in an indexed
//!   topic; nothing scans the market, so the cost per block does not grow with it.
//! - **One event loop.** Every trigger of work is a `Trigger` in `app::run`'s `select!`; the
//!   transfer server and container starts run as tasks that report back into it.
//! - **A verdict is the verifier's own observation**: probed within the epoch it reports on,
//!   never after the fact (epochs missed while the daemon was down are not reported).
//! - **A container runs only for an agreement the core says is running**: started on the
//!   core's `Action::Start` after the pushed image matched the digest committed on chain, and
//!   stopped on `Action::Stop` when the agreement is over; the transfer server accepts pushes
//!   only for what the core's gate lists.
//! - Only `cli::run` builds the async runtime; library code is `async` and runtime-agnostic.
//! - No TLS provider but `ring`: `cargo tree -i aws-lc-sys` stays empty (CI checks it), because
//!   aws-lc-rs does not cross-build for armv7.
//! - Errors carry context (`what was being done: why`) and become an exit code only in `main`.

pub mod api;
pub mod app;
pub mod chain;
pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod dev;
pub mod generate;
pub mod health;
pub mod host;
pub mod identity;
pub mod letters;
pub mod logging;
pub mod nat;
pub mod probe;
pub mod runtime;
pub mod store;
pub mod systemd;
pub mod tls;
pub mod transfer;
pub mod version;
