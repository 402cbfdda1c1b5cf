//! The pure core: what the daemon decides, with no I/O, no clock, no async and no library types
//! from the outside systems (alloy, bollard, serde stay out).
//!
//! The I/O shell (`app`) turns the outside world into [`Event`]s, feeds them to [`Node`], and
//! carries out the [`Action`]s it returns. Everything here is deterministic: the same events in
//! the same order give the same actions, which is what lets a restarted daemon rebuild its
//! state from the store and the chain, and what the unit tests exercise without a runtime.
//!
//! - [`types`]: addresses, amounts, the worker's on-chain terms.
//! - [`node`]: the daemon's state machine: registration and the agreements it takes part in.
//! - [`work`]: an agreement's work: the client's commitment and the deployment's phases.
pub mod node;
pub mod types;
pub mod work;

pub use node::{
    Action, AgreementView, ChainEvent, Event, Goal, Intent, Node, ProtocolParams, Registration, Role, Stage,
};
pub use types::{Address, AgreementId, Arch, Terms, Wei};
pub use work::{Deployment, Phase, Probe, Work, WorkEvent};
