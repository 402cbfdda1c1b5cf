//! How the outside observes and steers the running daemon.
//!
//! - [`status`]: the [`StatusReport`] the app publishes on a `watch` channel (plain data, not the
//!   core's types), with the health verdict derived from it.
//! - [`control`]: the unix control socket (`zeppelin status`, `leave`, `pause`, `resume`,
//!   `reload`): JSON lines; commands reach the app's event loop as [`ControlCommand`]s.
//! - [`client`]: the command line's side of it, with errors that say what to do.
//! - [`http`]: `GET /health` and `GET /metrics` on localhost.
//! - [`metrics`]: the Prometheus [`Metrics`] the app's adapters count into.
//! - [`render`]: the human `zeppelin status` output.
pub mod client;
pub mod control;
pub mod http;
pub mod metrics;
pub mod render;
pub mod status;

pub use control::{Command, CommandReply, ControlCommand, ControlServer, Request, Response};
pub use metrics::Metrics;
pub use render::render_human;
pub use status::StatusReport;

/// Unix seconds now; the servers stamp reports with it.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
