//! The control socket: a unix socket where `zeppelin status`, `leave`, `pause`, `resume` and
//! `reload` talk to the running daemon.
//!
//! Protocol: one JSON [`Request`] per line, answered by one JSON [`Response`] per line, any number
//! per connection within the connection's time limit.
//!
//! ```text
//! -> {"request":"status"}
//! <- {"response":"status","report":{...}}
//! -> {"request":"leave"}
//! <- {"response":"done","message":"leaving: ..."}
//! -> nonsense
//! <- {"response":"error","message":"malformed request: ..."}
//! ```
//!
//! `status` is answered from the latest [`StatusReport`] on a `watch` channel; the other requests
//! become [`ControlCommand`]s on an `mpsc` channel, so the app's one event loop receives them as
//! events and answers through the enclosed `oneshot`. The server is bounded: lines longer than
//! [`Limits::max_line`] are refused and the connection closed, at most
//! [`Limits::max_connections`] are served at once (others get a "busy" error), and each
//! connection is closed after [`Limits::connection_timeout`].
//!
//! Access is the file system's: the socket is mode 0660 in a 0750 directory, so the daemon's
//! user and the members of its group (`zeppelin`) may use it.
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};
use tracing::{Instrument, debug, info_span, warn};

use super::status::StatusReport;

/// A request from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case")]
pub enum Request {
    Status,
    Leave,
    Pause,
    Resume,
    Reload,
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "kebab-case")]
pub enum Response {
    Status {
        report: Box<StatusReport>,
    },
    /// The command was carried out (or started); the message says what happened.
    Done {
        message: String,
    },
    /// The request was refused or failed; the message says why.
    Error {
        message: String,
    },
}

/// A request that changes something, for the app's event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Leave,
    Pause,
    Resume,
    Reload,
}

/// What the app answers to a command: a message for the operator, or why it was refused.
pub type CommandReply = Result<String, String>;

/// A command with the channel for its answer.
#[derive(Debug)]
pub struct ControlCommand {
    pub command: Command,
    pub reply: oneshot::Sender<CommandReply>,
}

/// The server's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest request line, newline excluded.
    pub max_line: usize,
    pub max_connections: usize,
    /// How long one connection may stay open, whatever it does.
    pub connection_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_line: 64 * 1024, max_connections: 16, connection_timeout: Duration::from_secs(10) }
    }
}

/// The control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("creating the control socket directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("another zeppelin daemon is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("checking the existing control socket {path}: {source}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("removing the stale control socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("binding the control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("setting the mode of the control socket {path}: {source}")]
    Mode { path: PathBuf, source: io::Error },
}

/// A bound control socket, ready to [`serve`](ControlServer::serve).
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of our socket file, to remove it at the end only if it is still ours.
    file: (u64, u64),
    limits: Limits,
}

impl ControlServer {
    /// Binds the socket at `path` (within a tokio runtime). Creates the parent directory (0750)
    /// if missing, replaces a stale socket file that nobody listens on, and refuses to start if
    /// another daemon answers there.
    pub fn bind(path: &Path, limits: Limits) -> Result<Self, ControlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|source| ControlError::CreateDir { path: dir.to_owned(), source })?;
        }
        remove_stale(path)?;
        let bind_err = |source| ControlError::Bind { path: path.to_owned(), source };
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        // Between bind and chmod the socket has the umask's mode; the 0750 directory keeps
        // others out meanwhile.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|source| ControlError::Mode { path: path.to_owned(), source })?;
        let meta = std::fs::metadata(path).map_err(bind_err)?;
        Ok(ControlServer { listener, path: path.to_owned(), file: (meta.dev(), meta.ino()), limits })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves until `shutdown` completes, then closes open connections and removes the socket
    /// file (if it is still the one this server created).
    pub async fn serve(
        self,
        status: watch::Receiver<StatusReport>,
        commands: mpsc::Sender<ControlCommand>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut tasks = JoinSet::new();
        let mut next_id = 0u64;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        while tasks.try_join_next().is_some() {}
                        if tasks.len() >= self.limits.max_connections {
                            warn!(path = %self.path.display(), "control socket busy: connection refused");
                            // Best effort and never blocking: a short line fits the socket buffer.
                            let _ = stream.try_write(&encode(&Response::Error {
                                message: "the daemon is busy: too many control connections, try again".into(),
                            }));
                            continue;
                        }
                        next_id += 1;
                        let conn = Connection {
                            status: status.clone(),
                            commands: commands.clone(),
                            limits: self.limits,
                        };
                        tasks.spawn(conn.run(stream).instrument(info_span!("control", conn = next_id)));
                    }
                    Err(error) => {
                        // Out of file descriptors and the like: do not spin.
                        warn!(%error, "accepting a control connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tasks.shutdown().await;
        if std::fs::metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket file nobody listens on; refuses if a daemon answers or the file is not a
/// socket.
fn remove_stale(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ControlError::Probe { path: path.to_owned(), source }),
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket { path: path.to_owned() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ControlError::InUse { path: path.to_owned() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ControlError::RemoveStale { path: path.to_owned(), source }),
        Err(source) => Err(ControlError::Probe { path: path.to_owned(), source }),
    }
}

/// One response line.
fn encode(response: &Response) -> Vec<u8> {
    let mut line = serde_json::to_vec(response).expect("responses serialize");
    line.push(b'\n');
    line
}

/// How long writing one response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

struct Connection {
    status: watch::Receiver<StatusReport>,
    commands: mpsc::Sender<ControlCommand>,
    limits: Limits,
}

impl Connection {
    async fn run(self, stream: UnixStream) {
        let deadline = Instant::now() + self.limits.connection_timeout;
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        loop {
            let mut line = Vec::new();
            let limit = self.limits.max_line as u64 + 1;
            let read = timeout_at(deadline, (&mut reader).take(limit).read_until(b'\n', &mut line)).await;
            let (response, close) = match read {
                Err(_) => (error("timed out waiting for a request"), true),
                Ok(Err(error)) => {
                    debug!(%error, "reading a control request");
                    return;
                }
                Ok(Ok(0)) => return,
                Ok(Ok(_)) if line.last() != Some(&b'\n') && line.len() > self.limits.max_line => {
                    (error(&format!("request longer than {} bytes", self.limits.max_line)), true)
                }
                Ok(Ok(_)) => (self.answer(&line, deadline).await, false),
            };
            // Its own short limit, so that a request that used up the deadline still gets its
            // answer.
            match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&encode(&response))).await {
                Ok(Ok(())) if !close => {}
                _ => return,
            }
        }
    }

    async fn answer(&self, line: &[u8], deadline: Instant) -> Response {
        let request = match serde_json::from_slice::<Request>(line.trim_ascii()) {
            Ok(request) => request,
            Err(e) => {
                return error(&format!(
                    "malformed request: {e}; expected one JSON object per line, e.g. {{\"request\":\"status\"}}"
                ));
            }
        };
        debug!(?request, "control request");
        let command = match request {
            Request::Status => {
                let report = self.status.borrow().clone().stamp(super::unix_now());
                return Response::Status { report: Box::new(report) };
            }
            Request::Leave => Command::Leave,
            Request::Pause => Command::Pause,
            Request::Resume => Command::Resume,
            Request::Reload => Command::Reload,
        };
        let (reply, answer) = oneshot::channel();
        let shutting_down = || error("the daemon is shutting down");
        match timeout_at(deadline, self.commands.send(ControlCommand { command, reply })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return shutting_down(),
            Err(_) => return error("the daemon is too busy to take the command, try again"),
        }
        match timeout_at(deadline, answer).await {
            Ok(Ok(Ok(message))) => Response::Done { message },
            Ok(Ok(Err(message))) => Response::Error { message },
            Ok(Err(_)) => shutting_down(),
            Err(_) => error("the daemon did not answer in time; the command may still take effect"),
        }
    }
}

fn error(message: &str) -> Response {
    Response::Error { message: message.to_owned() }
}
