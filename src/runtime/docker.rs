//! [`Runtime`] over the Docker Engine API (bollard, unix socket only).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, HostConfigLogConfig, NetworkCreateRequest,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ImportImageOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder,
    StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{ClientVersion, Docker};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    AgreementId, ContainerSpec, ContainerState, EngineInfo, LABEL_AGREEMENT, LABEL_SCOPE, Running, Runtime,
    RuntimeError, check_scope, object_name,
};

/// Where the engine listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The longest an ordinary request may wait for the engine's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest an image load may take: the engine answers only once it has read (and unpacked)
/// the whole archive, which comes from the network at the client's pace.
const LOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// A stopped container gets this long between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// A crashing container is restarted by the engine (with its doubling back-off) this many times,
/// then left exited. See [`DockerRuntime`] for why the policy is `on-failure`.
pub const RESTART_MAX_RETRIES: i64 = 5;
/// json-file log rotation: at most `LOG_MAX_FILES` files of `LOG_MAX_SIZE` per container, so a
/// chatty container cannot fill a Pi's SD card.
pub const LOG_MAX_SIZE: &str = "10m";
pub const LOG_MAX_FILES: &str = "3";
/// The newest API version this client knows (bollard's); older engines are spoken to in theirs.
const CLIENT_API: (usize, usize) = (1, 53);
/// Docker 20.10 speaks 1.41: the oldest engine this code is tested with.
const OLDEST_API: (usize, usize) = (1, 41);

/// [`Runtime`] over the Docker engine's unix socket.
///
/// The API version is agreed with the engine on first use (the lower of the engine's and
/// bollard's, never below 1.41), so the daemon may start before the engine does: until it
/// answers, every call is [`RuntimeError::Unreachable`].
///
/// Restart policy: `on-failure` with at most [`RESTART_MAX_RETRIES`] retries, not
/// `unless-stopped`. A crash (or an OOM kill) is retried a few times with the engine's back-off,
/// but a container that keeps failing stops burning the worker's CPU, and one that exits 0 has
/// finished its work and stays exited. Nothing relies on the policy across an engine or host
/// restart: the daemon re-adopts its containers with [`Runtime::list`] and [`Runtime::run`]
/// starts any that is not running.
#[derive(Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    socket: PathBuf,
    docker: OnceLock<Docker>,
}

impl DockerRuntime {
    /// A runtime for the engine at `socket`; without one, `DOCKER_HOST` if it is a `unix://`
    /// address, otherwise `/var/run/docker.sock`. Nothing is contacted yet.
    pub fn connect(socket: Option<&Path>) -> Result<Self, RuntimeError> {
        let socket = match socket {
            Some(s) => s.to_path_buf(),
            None => match std::env::var("DOCKER_HOST") {
                Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
                    Some(path) => PathBuf::from(path),
                    None => {
                        return Err(RuntimeError::Unreachable {
                            socket: host.clone(),
                            message: format!(
                                "DOCKER_HOST={host:?} is not a unix:// address; only the engine's unix socket is supported"
                            ),
                        });
                    }
                },
                _ => PathBuf::from(DEFAULT_SOCKET),
            },
        };
        Ok(DockerRuntime { inner: Arc::new(Inner { socket, docker: OnceLock::new() }) })
    }

    /// The engine's socket.
    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// The last `tail` lines of the agreement's container's output (stdout and stderr
    /// interleaved); empty if there is no such container.
    pub async fn logs(
        &self,
        scope: &str,
        agreement: AgreementId,
        tail: usize,
    ) -> Result<String, RuntimeError> {
        let Some(c) = self.our_container(scope, agreement).await? else { return Ok(String::new()) };
        let docker = self.client().await?;
        let id = c.id.unwrap_or_default();
        let options =
            LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&tail.to_string()).follow(false).build();
        let mut lines = docker.logs(&id, Some(options));
        let mut out = String::new();
        while let Some(item) = lines.next().await {
            let item = item
                .map_err(|e| self.err(format!("reading the logs of agreement {agreement}'s container"), e))?;
            out.push_str(&String::from_utf8_lossy(&item.into_bytes()));
        }
        Ok(out)
    }

    /// The image ID (`sha256:...`) of a local image named by tag or ID; `None` if there is none.
    pub async fn image_id(&self, reference: &str) -> Result<Option<String>, RuntimeError> {
        let docker = self.client().await?;
        match docker.inspect_image(reference).await {
            Ok(image) => Ok(image.id),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.err(format!("looking up image {reference}"), e)),
        }
    }

    /// `docker save` of one image (by ID or tag), streamed as the engine writes it: the engine's
    /// own archive format (Docker 20.10: the legacy `<id>/layer.tar` layout; 25 and later add the
    /// OCI layout), which [`Runtime::load_image`] takes back.
    pub async fn save_image(
        &self,
        image: &str,
    ) -> Result<impl Stream<Item = Result<Bytes, RuntimeError>> + Send + 'static, RuntimeError> {
        let docker = self.client().await?.clone().with_timeout(LOAD_TIMEOUT);
        let this = self.clone();
        let context = format!("saving image {image}");
        Ok(docker.export_image(image).map(move |chunk| chunk.map_err(|e| this.err(context.clone(), e))))
    }

    /// The bollard client, for this module's siblings (the image builder); the API version is
    /// agreed on first use.
    pub(crate) async fn client(&self) -> Result<&Docker, RuntimeError> {
        if let Some(docker) = self.inner.docker.get() {
            return Ok(docker);
        }
        let (major, minor) = self.engine_api_version().await?;
        let version = std::cmp::min((major, minor), CLIENT_API);
        if version < OLDEST_API {
            return Err(self.unreachable(format!(
                "the engine speaks API {major}.{minor}; at least {}.{} (Docker 20.10) is needed",
                OLDEST_API.0, OLDEST_API.1
            )));
        }
        let docker = Docker::connect_with_unix(
            &self.inner.socket.to_string_lossy(),
            REQUEST_TIMEOUT.as_secs(),
            &ClientVersion { major_version: version.0, minor_version: version.1 },
        )
        .map_err(|e| self.unreachable(e.to_string()))?;
        let _ = self.inner.docker.set(docker);
        Ok(self.inner.docker.get().expect("set just above"))
    }

    /// `GET /version` without a version prefix (which every engine answers in its own version),
    /// over a plain HTTP/1.0 exchange: bollard always prefixes its own version, which engines
    /// older than it refuse.
    async fn engine_api_version(&self) -> Result<(usize, usize), RuntimeError> {
        let exchange = async {
            let mut stream = tokio::net::UnixStream::connect(&self.inner.socket).await?;
            stream.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n").await?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = match tokio::time::timeout(Duration::from_secs(10), exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(self.unreachable(e.to_string())),
            Err(_) => return Err(self.unreachable("no answer to GET /version within 10 s".into())),
        };
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status_ok = head.lines().next().is_some_and(|l| l.split(' ').nth(1) == Some("200"));
        #[derive(serde::Deserialize)]
        struct Version {
            #[serde(rename = "ApiVersion")]
            api_version: String,
        }
        let parsed = status_ok.then(|| serde_json::from_str::<Version>(body).ok()).flatten();
        let Some(version) = parsed else {
            let first = head.lines().next().unwrap_or("");
            return Err(self.unreachable(format!("GET /version answered {first:?}, not an engine's version")));
        };
        parse_api_version(&version.api_version).ok_or_else(|| {
            self.unreachable(format!(
                "the engine's API version {:?} is not <major>.<minor>",
                version.api_version
            ))
        })
    }

    fn unreachable(&self, message: String) -> RuntimeError {
        RuntimeError::Unreachable { socket: self.inner.socket.display().to_string(), message }
    }

    /// Turns a bollard error into ours: transport failures are [`RuntimeError::Unreachable`],
    /// what the engine said is [`RuntimeError::Engine`] with `context`.
    pub(super) fn err(&self, context: impl Into<String>, e: BollardError) -> RuntimeError {
        let context = context.into();
        match e {
            BollardError::DockerResponseServerError { status_code, message } => {
                RuntimeError::Engine { context, message, status: Some(status_code) }
            }
            BollardError::DockerStreamError { error } => {
                RuntimeError::Engine { context, message: error, status: None }
            }
            BollardError::RequestTimeoutError => RuntimeError::Engine {
                context,
                message: "the engine did not answer in time".into(),
                status: None,
            },
            e @ (BollardError::SocketNotFoundError(_)
            | BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }) => self.unreachable(format!("{context}: {e}")),
            e => RuntimeError::Engine { context, message: e.to_string(), status: None },
        }
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        let docker = self.client().await?;
        match docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.err(format!("inspecting container {name}"), e)),
        }
    }

    /// The agreement's container, if there is one; a container that took the name but is not
    /// labelled as ours is an error (it is never touched).
    async fn our_container(
        &self,
        scope: &str,
        agreement: AgreementId,
    ) -> Result<Option<ContainerInspectResponse>, RuntimeError> {
        let name = object_name(scope, agreement);
        let Some(c) = self.inspect_container(&name).await? else { return Ok(None) };
        let labels = c.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        if !is_ours(&labels, scope, agreement) {
            return Err(RuntimeError::Engine {
                context: format!("container {name}"),
                message: "exists but is not labelled as this agreement's; left alone".into(),
                status: None,
            });
        }
        Ok(Some(c))
    }

    /// Creates the agreement's bridge network unless it exists.
    async fn ensure_network(&self, scope: &str, agreement: AgreementId) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let name = object_name(scope, agreement);
        match docker.inspect_network(&name, None).await {
            Ok(n) => {
                if !is_ours(&n.labels.unwrap_or_default(), scope, agreement) {
                    return Err(RuntimeError::Engine {
                        context: format!("network {name}"),
                        message: "exists but is not labelled as this agreement's; left alone".into(),
                        status: None,
                    });
                }
                return Ok(());
            }
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(self.err(format!("inspecting network {name}"), e)),
        }
        let request = NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".into()),
            internal: Some(false),
            attachable: Some(false),
            // One container per network: nothing to talk to, but say so anyway.
            options: Some(HashMap::from([("com.docker.network.bridge.enable_icc".into(), "false".into())])),
            labels: Some(labels(scope, agreement)),
            ..Default::default()
        };
        docker
            .create_network(request)
            .await
            .map_err(|e| self.err(format!("creating network {name} for agreement {agreement}"), e))?;
        Ok(())
    }

    async fn remove_network(&self, scope: &str, agreement: AgreementId) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let name = object_name(scope, agreement);
        match docker.inspect_network(&name, None).await {
            Ok(n) if is_ours(&n.labels.clone().unwrap_or_default(), scope, agreement) => {}
            Ok(_) => return Ok(()), // not ours: left alone
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) => return Err(self.err(format!("inspecting network {name}"), e)),
        }
        match docker.remove_network(&name).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(self.err(format!("removing network {name} of agreement {agreement}"), e)),
        }
    }

    async fn remove_container(&self, scope: &str, agreement: AgreementId) -> Result<(), RuntimeError> {
        let Some(c) = self.our_container(scope, agreement).await? else { return Ok(()) };
        let docker = self.client().await?;
        let id = c.id.unwrap_or_else(|| object_name(scope, agreement));
        let stop = StopContainerOptionsBuilder::new().t(STOP_GRACE.as_secs() as i32).build();
        // A failed stop is not the end: the forced removal below kills what is left. 304:
        // already stopped.
        let stopped = match docker.stop_container(&id, Some(stop)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(self.err(format!("stopping container of agreement {agreement}"), e)),
        };
        let remove = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match docker.remove_container(&id, Some(remove)).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            // 409 "removal already in progress": done by someone else.
            Err(e) if is_status(&e, 409) => Ok(()),
            Err(e) => {
                let removing = self.err(format!("removing container of agreement {agreement}"), e);
                Err(match stopped {
                    Err(stopping) => RuntimeError::Engine {
                        context: format!("removing container of agreement {agreement}"),
                        message: format!("{removing}; before that, {stopping}"),
                        status: None,
                    },
                    Ok(()) => removing,
                })
            }
        }
    }

    /// Creates and starts the container; on failure removes what it made. `false`: someone else
    /// created it meanwhile.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        let name = spec.name();
        let agreement = spec.agreement;
        self.ensure_network(&spec.scope, agreement).await?;
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        match docker.create_container(Some(options), container_body(spec)).await {
            Ok(_) => {}
            // Created meanwhile (another call for the same agreement): adopt it.
            Err(e) if is_status(&e, 409) => return Ok(false),
            Err(e) => {
                let error = self.err(format!("creating container for agreement {agreement}"), e);
                let _ = self.remove_network(&spec.scope, agreement).await;
                return Err(error);
            }
        }
        if let Err(e) = docker.start_container(&name, None).await {
            let error = self.err(format!("starting container for agreement {agreement}"), e);
            let _ = self.remove_container(&spec.scope, agreement).await;
            let _ = self.remove_network(&spec.scope, agreement).await;
            return Err(error);
        }
        Ok(true)
    }
}

impl Runtime for DockerRuntime {
    async fn ping(&self) -> Result<EngineInfo, RuntimeError> {
        let docker = self.client().await?;
        let version = docker.version().await.map_err(|e| self.err("asking the engine's version", e))?;
        let info = docker.info().await.map_err(|e| self.err("asking the engine's info", e))?;
        let client = docker.client_version();
        Ok(EngineInfo {
            version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            client_api_version: format!("{}.{}", client.major_version, client.minor_version),
            cgroup_version: info.cgroup_version.map(|v| v.to_string()).unwrap_or_default(),
            cpus: info.ncpu.unwrap_or(0).max(0) as u64,
            memory_bytes: info.mem_total.unwrap_or(0).max(0) as u64,
            storage_driver: info.driver.unwrap_or_default(),
            arch: version.arch.unwrap_or_default(),
        })
    }

    async fn present_prefix(&self, diff_ids: &[String]) -> Result<usize, RuntimeError> {
        if diff_ids.is_empty() {
            return Ok(0);
        }
        let docker = self.client().await?;
        // `all`: intermediate images of local builds hold layer chains too.
        let options = ListImagesOptionsBuilder::new().all(true).build();
        let images = docker.list_images(Some(options)).await.map_err(|e| self.err("listing images", e))?;
        let mut best = 0;
        for image in images {
            let inspect = match docker.inspect_image(&image.id).await {
                Ok(i) => i,
                // Removed since the listing.
                Err(e) if is_status(&e, 404) => continue,
                Err(e) => return Err(self.err(format!("inspecting image {}", image.id), e)),
            };
            let layers = inspect.root_fs.and_then(|r| r.layers).unwrap_or_default();
            let common = layers.iter().zip(diff_ids).take_while(|(a, b)| a == b).count();
            best = best.max(common);
            if best == diff_ids.len() {
                break;
            }
        }
        Ok(best)
    }

    async fn has_image(&self, image_id: &str) -> Result<bool, RuntimeError> {
        let docker = self.client().await?;
        match docker.inspect_image(image_id).await {
            Ok(i) => Ok(i.id.as_deref() == Some(image_id) || !super::is_image_id(image_id)),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(self.err(format!("inspecting image {image_id}"), e)),
        }
    }

    async fn load_image<S>(&self, archive: S) -> Result<(), RuntimeError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        const CONTEXT: &str = "loading an image archive";
        let docker = self.client().await?.clone().with_timeout(LOAD_TIMEOUT);
        // An error of the archive itself (the sender went away, a digest did not match) breaks
        // the upload; remember it so it is reported as such and not as the engine's fault.
        let archive_error: Arc<Mutex<Option<String>>> = Arc::default();
        let seen = archive_error.clone();
        let archive = archive.map(move |item| {
            if let Err(e) = &item {
                seen.lock().expect("not poisoned").get_or_insert_with(|| e.to_string());
            }
            item
        });
        let options = ImportImageOptionsBuilder::new().quiet(true).build();
        let mut progress = docker.import_image_stream(options, archive, None);
        let mut loaded = false;
        let mut failure = None;
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if info.stream.as_deref().is_some_and(|s| s.starts_with("Loaded image")) {
                        loaded = true;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = archive_error.lock().expect("not poisoned").take() {
            return Err(RuntimeError::Engine {
                context: CONTEXT.into(),
                message: format!("the archive stream failed: {e}"),
                status: None,
            });
        }
        if let Some(e) = failure {
            return Err(self.err(CONTEXT, e));
        }
        if !loaded {
            return Err(RuntimeError::Engine {
                context: CONTEXT.into(),
                message: "the engine reported no loaded image".into(),
                status: None,
            });
        }
        Ok(())
    }

    async fn remove_image(&self, image_id: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let options = RemoveImageOptionsBuilder::new().force(false).noprune(false).build();
        match docker.remove_image(image_id, Some(options), None).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(self.err(format!("removing image {image_id}"), e)),
        }
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<Running, RuntimeError> {
        spec.validate()?;
        let agreement = spec.agreement;
        let docker = self.client().await?;
        let (existing, started_now) = match self.our_container(&spec.scope, agreement).await? {
            Some(c) => (c, false),
            None => {
                let started_now = self.create_and_start(spec).await?;
                let c = self.our_container(&spec.scope, agreement).await?.ok_or_else(|| {
                    RuntimeError::Engine {
                        context: format!("starting container for agreement {agreement}"),
                        message: "it vanished right after it was started".into(),
                        status: None,
                    }
                })?;
                (c, started_now)
            }
        };
        let image = existing.image.clone().unwrap_or_default();
        if image != spec.image {
            return Err(RuntimeError::Engine {
                context: format!("adopting container for agreement {agreement}"),
                message: format!("it runs image {image}, not {}; remove it first", spec.image),
                status: None,
            });
        }
        let id = existing.id.clone().unwrap_or_default();
        let state = existing.state.as_ref();
        let up = state.and_then(|s| s.running).unwrap_or(false);
        // Just started here: it may well have exited already (a short job); that run counts.
        let inspect = if up || started_now {
            existing
        } else {
            // Created but not started (a crash between the two), or stopped: start it.
            match docker.start_container(&id, None).await {
                Ok(()) => {}
                Err(e) if is_status(&e, 304) => {}
                Err(e) => return Err(self.err(format!("starting container for agreement {agreement}"), e)),
            }
            self.inspect_container(&id).await?.unwrap_or(existing)
        };
        Ok(Running {
            agreement,
            container_id: id,
            host_port: published_port(&inspect, spec.container_port),
            running: is_running(&inspect),
        })
    }

    async fn list(&self, scope: &str) -> Result<Vec<Running>, RuntimeError> {
        check_scope(scope).map_err(|reason| RuntimeError::InvalidSpec { field: "scope", reason })?;
        let docker = self.client().await?;
        let filters = HashMap::from([("label", vec![format!("{LABEL_SCOPE}={scope}")])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err(format!("listing containers of {scope}"), e))?;
        let mut found = Vec::new();
        for c in containers {
            let labels = c.labels.unwrap_or_default();
            let Some(agreement) = labels.get(LABEL_AGREEMENT).and_then(|a| a.parse::<AgreementId>().ok())
            else {
                continue;
            };
            if labels.get(LABEL_SCOPE).map(String::as_str) != Some(scope) {
                continue;
            }
            let host_port = c.ports.unwrap_or_default().iter().find_map(|p| p.public_port).unwrap_or(0);
            let running = c.state.is_some_and(|s| s.to_string() == "running");
            found.push(Running { agreement, container_id: c.id.unwrap_or_default(), host_port, running });
        }
        found.sort_by_key(|r| r.agreement);
        Ok(found)
    }

    async fn state(
        &self,
        scope: &str,
        agreement: AgreementId,
    ) -> Result<Option<ContainerState>, RuntimeError> {
        check_scope(scope).map_err(|reason| RuntimeError::InvalidSpec { field: "scope", reason })?;
        let Some(c) = self.our_container(scope, agreement).await? else { return Ok(None) };
        let docker = self.client().await?;
        let id = c.id.clone().unwrap_or_default();
        let s = c.state.clone().unwrap_or_default();
        let running = is_running(&c);
        let mut state = ContainerState {
            container_id: id.clone(),
            image: c.image.clone().unwrap_or_default(),
            status: s.status.map(|s| s.to_string()).unwrap_or_default(),
            running,
            exit_code: s.exit_code.unwrap_or(0),
            oom_killed: s.oom_killed.unwrap_or(false),
            restart_count: c.restart_count.unwrap_or(0),
            started_at: s.started_at.filter(|t| !t.starts_with("0001-")),
            finished_at: s.finished_at.filter(|t| !t.starts_with("0001-")),
            host_port: published_port(&c, 0),
            cpu_usage_ns: None,
            memory_bytes: None,
            memory_limit: None,
            pids: None,
        };
        if s.running.unwrap_or(false) {
            let options = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
            let mut stats = docker.stats(&id, Some(options));
            match stats.next().await {
                Some(Ok(st)) => {
                    state.cpu_usage_ns = st.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage);
                    let memory = st.memory_stats.unwrap_or_default();
                    state.memory_bytes = memory.usage;
                    state.memory_limit = memory.limit;
                    state.pids = st.pids_stats.and_then(|p| p.current);
                }
                // Stopped meanwhile.
                Some(Err(e)) if is_status(&e, 404) || is_status(&e, 409) => {}
                Some(Err(e)) => {
                    return Err(
                        self.err(format!("reading statistics of agreement {agreement}'s container"), e)
                    );
                }
                None => {}
            }
        }
        Ok(Some(state))
    }

    async fn remove(&self, scope: &str, agreement: AgreementId) -> Result<(), RuntimeError> {
        check_scope(scope).map_err(|reason| RuntimeError::InvalidSpec { field: "scope", reason })?;
        // Both are attempted; the first failure is reported.
        let container = self.remove_container(scope, agreement).await;
        let network = self.remove_network(scope, agreement).await;
        container.and(network)
    }
}

/// The container's configuration: the agreement's limits and every hardening option.
fn container_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let port = format!("{}/tcp", spec.container_port);
    let host_port = if spec.host_port == 0 { String::new() } else { spec.host_port.to_string() };
    let host_config = HostConfig {
        nano_cpus: Some(spec.nano_cpus),
        memory: Some(spec.memory_bytes),
        // Memory + swap = memory: no swap at all.
        memory_swap: Some(spec.memory_bytes),
        pids_limit: Some(spec.pids_limit),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        readonly_rootfs: Some(true),
        privileged: Some(false),
        tmpfs: Some(HashMap::from([(
            "/tmp".into(),
            format!("rw,nosuid,nodev,size={},mode=1777", spec.tmpfs_bytes),
        )])),
        // /dev/shm is a tmpfs too; keep it as small as /tmp (it also counts against memory).
        shm_size: Some(spec.tmpfs_bytes as i64),
        ipc_mode: Some("private".into()),
        // No binds, volumes or mounts: nothing of the host is visible inside.
        binds: None,
        mounts: None,
        network_mode: Some(spec.name()),
        port_bindings: Some(HashMap::from([(
            port.clone(),
            Some(vec![PortBinding { host_ip: Some(spec.host_ip.to_string()), host_port: Some(host_port) }]),
        )])),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(RESTART_MAX_RETRIES),
        }),
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".into(), LOG_MAX_SIZE.into()),
                ("max-file".into(), LOG_MAX_FILES.into()),
            ])),
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        labels: Some(labels(&spec.scope, spec.agreement)),
        exposed_ports: Some(vec![port]),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn labels(scope: &str, agreement: AgreementId) -> HashMap<String, String> {
    HashMap::from([(LABEL_SCOPE.into(), scope.into()), (LABEL_AGREEMENT.into(), agreement.to_string())])
}

fn is_ours(labels: &HashMap<String, String>, scope: &str, agreement: AgreementId) -> bool {
    labels.get(LABEL_SCOPE).map(String::as_str) == Some(scope)
        && labels.get(LABEL_AGREEMENT) == Some(&agreement.to_string())
}

fn is_running(c: &ContainerInspectResponse) -> bool {
    c.state.as_ref().is_some_and(|s| s.running == Some(true) && s.restarting != Some(true))
}

/// The host port the container's `port`/tcp is published on (any published port if `port` is 0).
fn published_port(c: &ContainerInspectResponse, port: u16) -> u16 {
    let Some(ports) = c.network_settings.as_ref().and_then(|n| n.ports.as_ref()) else { return 0 };
    ports
        .iter()
        .filter(|(key, _)| port == 0 || key.as_str() == format!("{port}/tcp"))
        .flat_map(|(_, bindings)| bindings.iter().flatten())
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
        .unwrap_or(0)
}

fn is_status(e: &BollardError, status: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == status)
}

/// `"1.41"` -> `(1, 41)`.
fn parse_api_version(s: &str) -> Option<(usize, usize)> {
    let (major, minor) = s.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        assert_eq!(parse_api_version("1.41"), Some((1, 41)));
        assert_eq!(parse_api_version("1.x"), None);
        assert_eq!(parse_api_version("141"), None);
    }

    #[test]
    fn the_container_body_carries_every_hardening_option() {
        let spec = ContainerSpec {
            scope: "1-0xab".into(),
            agreement: 3,
            image: format!("sha256:{}", "cd".repeat(32)),
            nano_cpus: 250_000_000,
            memory_bytes: 32 << 20,
            pids_limit: 16,
            container_port: 80,
            host_ip: "127.0.0.1".parse().unwrap(),
            host_port: 0,
            tmpfs_bytes: 1 << 20,
        };
        let body = container_body(&spec);
        let h = body.host_config.unwrap();
        assert_eq!(h.memory, h.memory_swap);
        assert_eq!(h.cap_drop.unwrap(), ["ALL"]);
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.network_mode.as_deref(), Some("zeppelin-1-0xab-3"));
        assert_eq!(h.tmpfs.unwrap()["/tmp"], "rw,nosuid,nodev,size=1048576,mode=1777");
        let binding = &h.port_bindings.unwrap()["80/tcp"].clone().unwrap()[0];
        assert_eq!(binding.host_port.as_deref(), Some(""));
        assert_eq!(body.labels.unwrap()[LABEL_AGREEMENT], "3");
    }
}
