//! The command line's side of the control socket.
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::control::{Request, Response};

/// The default control socket (systemd's `RuntimeDirectory=zeppelin`).
pub const DEFAULT_SOCKET: &str = "/run/zeppelin/control.sock";

/// How long to wait for the daemon's answer (a little longer than the server's own limit).
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Talking to the daemon failed; each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no daemon is listening on {path}: is zeppelin running? (systemctl status zeppelin)")]
    NoDaemon { path: PathBuf },
    #[error(
        "permission denied on {path}: add yourself to the zeppelin group \
         (sudo adduser $USER zeppelin, then log in again) or use sudo"
    )]
    PermissionDenied { path: PathBuf },
    #[error("talking to the daemon on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon on {path} did not answer within {}s", .timeout.as_secs())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("the daemon on {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("the daemon on {path} sent an answer this zeppelin cannot read (a different version?): {source}")]
    BadResponse { path: PathBuf, source: serde_json::Error },
}

/// Sends one request to the daemon listening on `path` and returns its answer.
pub async fn request(path: &Path, request: Request) -> Result<Response, ClientError> {
    tokio::time::timeout(TIMEOUT, exchange(path, request))
        .await
        .unwrap_or_else(|_| Err(ClientError::Timeout { path: path.to_owned(), timeout: TIMEOUT }))
}

async fn exchange(path: &Path, request: Request) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(path).await.map_err(|source| match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused | io::ErrorKind::NotADirectory => {
            ClientError::NoDaemon { path: path.to_owned() }
        }
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: path.to_owned() },
        _ => ClientError::Io { path: path.to_owned(), source },
    })?;
    let io_err = |source| ClientError::Io { path: path.to_owned(), source };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(&request).expect("requests serialize");
    line.push(b'\n');
    write.write_all(&line).await.map_err(io_err)?;
    let mut answer = String::new();
    if BufReader::new(read).read_line(&mut answer).await.map_err(io_err)? == 0 {
        return Err(ClientError::Closed { path: path.to_owned() });
    }
    serde_json::from_str(&answer).map_err(|source| ClientError::BadResponse { path: path.to_owned(), source })
}
