//! sd_notify(3): telling systemd that the daemon is ready, what it is doing, that it is alive,
//! that it reloads and that it stops.
//!
//! [`Notifier`] is a value holding the notification socket and the watchdog interval, read once
//! from the environment ([`Notifier::from_env`]) or given explicitly ([`Notifier::to_socket`],
//! what the tests use: no process environment is touched). Without `NOTIFY_SOCKET` every call
//! is a no-op, so the daemon runs the same outside systemd.
//!
//! The `sd-notify` crate provides the wire encoding ([`NotifyState`]), the monotonic clock for
//! `MONOTONIC_USEC` and the `WATCHDOG_USEC`/`WATCHDOG_PID` rules; the datagram is sent here so
//! that the socket can be named explicitly.
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;

/// A notification could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifying the service manager at {socket} ({message:?}): {source}")]
    Send { socket: String, message: String, source: io::Error },
    #[error("reading the monotonic clock for RELOADING=1: {0}")]
    Clock(io::Error),
}

/// Sends state changes to the service manager (systemd's `Type=notify` / `Type=notify-reload`).
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    socket: Option<OsString>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The socket and watchdog systemd passed in the environment (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC` when `WATCHDOG_PID` is absent or ours).
    pub fn from_env() -> Self {
        Notifier {
            socket: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// Notifications to this socket (a path, or `@name` for the abstract namespace), with the
    /// watchdog timeout systemd would pass as `WATCHDOG_USEC`.
    pub fn to_socket(socket: impl Into<OsString>, watchdog_timeout: Option<Duration>) -> Self {
        Notifier { socket: Some(socket.into()), watchdog: watchdog_timeout }
    }

    /// A notifier that does nothing (not under systemd).
    pub fn disabled() -> Self {
        Notifier::default()
    }

    /// Whether there is a service manager to notify.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Whether systemd expects `WATCHDOG=1` pings (`WatchdogSec=` in the unit).
    pub fn watchdog_enabled(&self) -> bool {
        self.socket.is_some() && self.watchdog.is_some()
    }

    /// How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) advises.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.socket.is_some()).map(|timeout| timeout / 2)
    }

    /// `READY=1`: listeners are bound and state is loaded (start-up, or the end of a reload).
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Ready])
    }

    /// `STATUS=...`: one line for `systemctl status`, e.g. "registered, 0 agreements".
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        // A newline would start another assignment.
        let line = status.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&line)])
    }

    /// `WATCHDOG=1`: still alive. A no-op unless the watchdog is enabled.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        if !self.watchdog_enabled() {
            return Ok(());
        }
        self.send(&[NotifyState::Watchdog])
    }

    /// `STOPPING=1`: shutting down.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.send(&[NotifyState::Stopping])
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`, which systemd 253 and later require for
    /// `Type=notify-reload`. Call [`Notifier::ready`] once the reload is done.
    pub fn reloading(&self) -> Result<(), NotifyError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let now = NotifyState::monotonic_usec_now().map_err(NotifyError::Clock)?;
        self.send(&[NotifyState::Reloading, now])
    }

    fn send(&self, states: &[NotifyState]) -> Result<(), NotifyError> {
        let Some(socket) = &self.socket else { return Ok(()) };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        send_datagram(socket, message.as_bytes()).map_err(|source| NotifyError::Send {
            socket: socket.to_string_lossy().into_owned(),
            message: message.trim_end().to_owned(),
            source,
        })
    }
}

fn send_datagram(socket: &OsString, message: &[u8]) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => connect_abstract(&sock, name)?,
        None => sock.connect(Path::new(socket))?,
    }
    let sent = sock.send(message)?;
    if sent != message.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "notification truncated"));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn connect_abstract(sock: &UnixDatagram, name: &[u8]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    sock.connect_addr(&std::os::unix::net::SocketAddr::from_abstract_name(name)?)
}

#[cfg(not(target_os = "linux"))]
fn connect_abstract(_: &UnixDatagram, _: &[u8]) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "abstract sockets exist only on Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixDatagram) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (dir, path, sock)
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_the_exact_datagrams_systemd_expects() {
        let (_dir, path, sock) = listener();
        let notifier = Notifier::to_socket(&path, Some(Duration::from_secs(30)));
        assert!(notifier.watchdog_enabled());
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));

        notifier.ready().unwrap();
        assert_eq!(recv(&sock), "READY=1\n");
        notifier.status("registered, 0 agreements").unwrap();
        assert_eq!(recv(&sock), "STATUS=registered, 0 agreements\n");
        notifier.status("RPC unreachable,\nretrying").unwrap();
        assert_eq!(recv(&sock), "STATUS=RPC unreachable, retrying\n");
        notifier.watchdog().unwrap();
        assert_eq!(recv(&sock), "WATCHDOG=1\n");
        notifier.stopping().unwrap();
        assert_eq!(recv(&sock), "STOPPING=1\n");

        notifier.reloading().unwrap();
        let reloading = recv(&sock);
        let usec =
            reloading.strip_prefix("RELOADING=1\nMONOTONIC_USEC=").unwrap().strip_suffix('\n').unwrap();
        assert!(usec.parse::<u64>().unwrap() > 0, "{reloading:?}");
    }

    #[test]
    fn watchdog_pings_are_skipped_when_systemd_did_not_ask_for_them() {
        let (_dir, path, sock) = listener();
        let notifier = Notifier::to_socket(&path, None);
        assert!(!notifier.watchdog_enabled());
        assert_eq!(notifier.watchdog_interval(), None);
        notifier.watchdog().unwrap();
        notifier.ready().unwrap();
        // The first datagram to arrive is READY: no WATCHDOG=1 went before it.
        assert_eq!(recv(&sock), "READY=1\n");
    }

    #[test]
    fn without_a_socket_everything_is_a_no_op() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready().unwrap();
        notifier.status("x").unwrap();
        notifier.reloading().unwrap();
        notifier.stopping().unwrap();
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let notifier = Notifier::to_socket("/nonexistent/zeppelin-notify.sock", None);
        let err = notifier.ready().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/zeppelin-notify.sock") && err.contains("READY=1"), "{err}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_namespace_sockets_work() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("zeppelin-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Notifier::to_socket(format!("@{name}"), None).ready().unwrap();
        assert_eq!(recv(&sock), "READY=1\n");
    }
}
