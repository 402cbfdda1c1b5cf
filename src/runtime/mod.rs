//! Running clients' work: the [`Runtime`] trait (what the daemon needs from a container engine)
//! and its Docker implementation, [`DockerRuntime`], the only code that knows bollard.
//!
//! Every container belongs to one agreement and one *scope* (`"<chain id>-<dispatcher>"`): it is
//! named and labelled after both, so a restarted daemon finds its own containers again
//! ([`Runtime::list`]) and never touches those of another devnet or dispatcher sharing the engine.
//! Each container gets its own bridge network, the agreement's CPU, memory (no swap) and pids
//! limits, no capabilities, no new privileges, a read-only root with a small `/tmp`, and no
//! mounts at all: nothing of the host (the Docker socket, the daemon's control socket, its state)
//! is visible inside. [`images`] builds the small test images the tests and benchmarks use.
//!
//! Limits worth knowing:
//! - Each agreement's network takes one subnet from the engine's address pools; with Docker's
//!   default pools that is about 30 networks in all (fewer if others exist). A worker selling
//!   more slots needs smaller subnets in the engine's `default-address-pools` (daemon.json).
//! - Calls for the same agreement must not overlap (the daemon's one loop ensures it): Docker
//!   20.10 may create two networks of the same name when two creations race.
//! - Containers run as the image's user (often root inside), without capabilities, under the
//!   engine's default seccomp profile; there are no user namespaces.
use std::future::Future;
use std::net::IpAddr;

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

mod docker;
pub mod images;

pub use docker::{DockerRuntime, LOG_MAX_FILES, LOG_MAX_SIZE, RESTART_MAX_RETRIES, STOP_GRACE};

/// Same as [`crate::core::types::AgreementId`].
pub type AgreementId = crate::core::types::AgreementId;

/// Label naming the scope (`"<chain id>-<dispatcher>"`) a container or network belongs to.
pub const LABEL_SCOPE: &str = "org.zeppelin.scope";
/// Label naming the agreement (decimal) a container or network belongs to.
pub const LABEL_AGREEMENT: &str = "org.zeppelin.agreement";

/// What to run for one agreement, and under which limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// `"<chain_id>-<dispatcher hex>"`: containers of another devnet or dispatcher on the same
    /// engine are never adopted or touched.
    pub scope: String,
    pub agreement: AgreementId,
    /// Image ID, `"sha256:<64 hex>"` (the digest of the image config).
    pub image: String,
    /// CPU in billionths of a CPU (`1_500_000_000` = 1.5 CPUs).
    pub nano_cpus: i64,
    /// Memory limit; swap is off (memory + swap = memory).
    pub memory_bytes: i64,
    pub pids_limit: i64,
    /// The TCP port the work listens on inside the container.
    pub container_port: u16,
    /// Where the port is published on the worker.
    pub host_ip: IpAddr,
    /// `0`: the engine picks a free port ([`Running::host_port`] tells which).
    pub host_port: u16,
    /// Size of the writable `/tmp` (tmpfs; it counts against the memory limit).
    pub tmpfs_bytes: u64,
}

/// Docker's lower bound for a container's memory limit.
pub const MIN_MEMORY_BYTES: i64 = 6 * 1024 * 1024;

impl ContainerSpec {
    /// Checks what the engine would refuse (or misread) before asking it, naming the field.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let bad = |field: &'static str, reason: String| Err(RuntimeError::InvalidSpec { field, reason });
        if let Err(reason) = check_scope(&self.scope) {
            return bad("scope", reason);
        }
        if !is_image_id(&self.image) {
            return bad(
                "image",
                format!("must be an image ID \"sha256:<64 hex digits>\", not {:?}", self.image),
            );
        }
        if self.nano_cpus <= 0 {
            return bad("nano_cpus", format!("must be positive, not {}", self.nano_cpus));
        }
        if self.memory_bytes < MIN_MEMORY_BYTES {
            return bad(
                "memory_bytes",
                format!(
                    "must be at least {MIN_MEMORY_BYTES} (6 MiB, the engine's minimum), not {}",
                    self.memory_bytes
                ),
            );
        }
        if self.pids_limit <= 0 {
            return bad(
                "pids_limit",
                format!("must be positive (0 or less means unlimited), not {}", self.pids_limit),
            );
        }
        if self.container_port == 0 {
            return bad("container_port", "must not be 0".into());
        }
        if self.tmpfs_bytes == 0 {
            return bad("tmpfs_bytes", "must be positive (0 would mean half the host's memory)".into());
        }
        if self.tmpfs_bytes > self.memory_bytes as u64 {
            return bad(
                "tmpfs_bytes",
                format!(
                    "{} exceeds memory_bytes {} (tmpfs pages count against it)",
                    self.tmpfs_bytes, self.memory_bytes
                ),
            );
        }
        Ok(())
    }

    /// Name of the container (and of its network).
    pub fn name(&self) -> String {
        object_name(&self.scope, self.agreement)
    }
}

/// `zeppelin-<scope>-<agreement>`: the name of an agreement's container and of its network.
pub fn object_name(scope: &str, agreement: AgreementId) -> String {
    format!("zeppelin-{scope}-{agreement}")
}

/// A scope becomes part of container and network names: `[A-Za-z0-9_.-]`, 1 to 100 characters.
pub fn check_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() || scope.len() > 100 {
        return Err(format!("must be 1 to 100 characters, not {}", scope.len()));
    }
    if let Some(c) = scope.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("{scope:?} has {c:?}; only letters, digits, '_', '.' and '-' are allowed"));
    }
    Ok(())
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// An agreement's container as found on the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub agreement: AgreementId,
    pub container_id: String,
    /// Where the work's port is published on the worker (0 while the container is not running).
    pub host_port: u16,
    /// Running and not waiting to be restarted.
    pub running: bool,
}

/// What the engine says about an agreement's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub container_id: String,
    pub image: String,
    /// The engine's word: `created`, `running`, `restarting`, `exited`, ...
    pub status: String,
    /// Running and not waiting to be restarted.
    pub running: bool,
    /// Exit code of the last run (0 while it has not exited).
    pub exit_code: i64,
    /// The last run was killed by the kernel's OOM killer at the memory limit.
    pub oom_killed: bool,
    /// Restarts by the engine after a failure (the restart policy).
    pub restart_count: i64,
    /// RFC 3339, as the engine gives it.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub host_port: u16,
    /// CPU time used by the container since it started, in nanoseconds (`None` when not running).
    pub cpu_usage_ns: Option<u64>,
    /// Memory charged to the container now (page cache and tmpfs included).
    pub memory_bytes: Option<u64>,
    pub memory_limit: Option<u64>,
    /// Tasks (processes and threads) in the container now.
    pub pids: Option<u64>,
}

/// The engine, as far as the worker's offer and the logs care.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// Engine version, e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// The engine's API version, e.g. `1.41`.
    pub api_version: String,
    /// The API version this client speaks to it.
    pub client_api_version: String,
    /// `1` or `2`.
    pub cgroup_version: String,
    pub cpus: u64,
    pub memory_bytes: u64,
    pub storage_driver: String,
    /// `amd64`, `arm64`, `arm`, ...
    pub arch: String,
}

/// A container-engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Nothing answers on the engine's socket: it is not running, or not there.
    #[error("Docker engine unreachable at {socket}: {message}")]
    Unreachable { socket: String, message: String },
    /// The engine answered with an error, or a stream it sent reported one.
    #[error("{context}: {message}")]
    Engine {
        /// What was being done, e.g. "starting container for agreement 7".
        context: String,
        message: String,
        /// The HTTP status the engine answered with, if it did.
        status: Option<u16>,
    },
    /// The spec was refused before the engine was asked.
    #[error("container spec: {field}: {reason}")]
    InvalidSpec { field: &'static str, reason: String },
    /// A test-image recipe ([`images::ImageRecipe`]) was refused before the engine was asked.
    #[error("image recipe: {field}: {reason}")]
    InvalidRecipe { field: &'static str, reason: String },
}

impl RuntimeError {
    /// The engine could not be reached at all (worth retrying later).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, RuntimeError::Unreachable { .. })
    }
}

/// What the daemon needs from a container engine. One real implementation ([`DockerRuntime`]);
/// the integration tests (`tests/runtime.rs`) run it against a real dockerd.
pub trait Runtime {
    fn ping(&self) -> impl Future<Output = Result<EngineInfo, RuntimeError>> + Send;
    /// Length of the longest prefix of `diff_ids` (image config `rootfs.diff_ids`, `"sha256:.."`)
    /// that already exists in the engine as a layer chain, i.e. is a prefix of some present
    /// image's `RootFS.Layers`. A layer is only reusable with the same parents.
    fn present_prefix(&self, diff_ids: &[String])
    -> impl Future<Output = Result<usize, RuntimeError>> + Send;
    fn has_image(&self, image_id: &str) -> impl Future<Output = Result<bool, RuntimeError>> + Send;
    /// Streams a `docker save`-format tar into the engine (`POST /images/load`), never holding
    /// it whole. An error item in `archive`, or an error the engine reports in its progress
    /// stream (it answers 200 and reports errors in-stream), makes this an error carrying the
    /// engine's message; the engine then keeps nothing of the archive.
    fn load_image<S>(&self, archive: S) -> impl Future<Output = Result<(), RuntimeError>> + Send
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static;
    /// Removes the image (and its layers no other image uses). Absent is not an error.
    fn remove_image(&self, image_id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    /// Creates (own bridge network, labels, all the limits) and starts the agreement's
    /// container. Idempotent: an existing container of `(scope, agreement)` is adopted, not
    /// duplicated, and started again if it is not running (whatever it exited with: the caller
    /// decides, [`Runtime::state`] tells why it stopped). An existing container of another image
    /// is an error: remove it first.
    fn run(&self, spec: &ContainerSpec) -> impl Future<Output = Result<Running, RuntimeError>> + Send;
    /// The containers of `scope`, running or not (re-adoption after a restart).
    fn list(&self, scope: &str) -> impl Future<Output = Result<Vec<Running>, RuntimeError>> + Send;
    fn state(
        &self,
        scope: &str,
        agreement: AgreementId,
    ) -> impl Future<Output = Result<Option<ContainerState>, RuntimeError>> + Send;
    /// Stops (short grace), removes the container and its network. Idempotent.
    fn remove(
        &self,
        scope: &str,
        agreement: AgreementId,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            scope: "31337-0x5fbdb2315678afecb367f032d93f642f64180aa3".into(),
            agreement: 7,
            image: format!("sha256:{}", "ab".repeat(32)),
            nano_cpus: 500_000_000,
            memory_bytes: 64 << 20,
            pids_limit: 64,
            container_port: 8080,
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: 0,
            tmpfs_bytes: 8 << 20,
        }
    }

    fn refused(s: ContainerSpec) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_good_spec_passes_and_names_its_objects() {
        spec().validate().unwrap();
        assert_eq!(spec().name(), "zeppelin-31337-0x5fbdb2315678afecb367f032d93f642f64180aa3-7");
    }

    #[test]
    fn bad_fields_are_named() {
        assert!(
            refused(ContainerSpec { scope: "a/b".into(), ..spec() }).starts_with("container spec: scope: ")
        );
        assert!(
            refused(ContainerSpec { scope: String::new(), ..spec() }).starts_with("container spec: scope: ")
        );
        assert!(
            refused(ContainerSpec { image: "busybox".into(), ..spec() })
                .starts_with("container spec: image: ")
        );
        assert!(
            refused(ContainerSpec { image: format!("sha256:{}", "AB".repeat(32)), ..spec() })
                .starts_with("container spec: image: ")
        );
        assert!(refused(ContainerSpec { nano_cpus: 0, ..spec() }).starts_with("container spec: nano_cpus: "));
        assert!(
            refused(ContainerSpec { memory_bytes: 1 << 20, ..spec() })
                .starts_with("container spec: memory_bytes: ")
        );
        assert!(
            refused(ContainerSpec { pids_limit: -1, ..spec() }).starts_with("container spec: pids_limit: ")
        );
        assert!(
            refused(ContainerSpec { container_port: 0, ..spec() })
                .starts_with("container spec: container_port: ")
        );
        assert!(
            refused(ContainerSpec { tmpfs_bytes: 0, ..spec() }).starts_with("container spec: tmpfs_bytes: ")
        );
        assert!(
            refused(ContainerSpec { tmpfs_bytes: 128 << 20, ..spec() })
                .starts_with("container spec: tmpfs_bytes: ")
        );
    }

    #[test]
    fn image_ids() {
        assert!(is_image_id(&format!("sha256:{}", "0f".repeat(32))));
        assert!(!is_image_id(&format!("sha256:{}", "0f".repeat(31))));
        assert!(!is_image_id(&format!("sha512:{}", "0f".repeat(32))));
        assert!(!is_image_id("0f"));
    }
}
