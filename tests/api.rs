//! The daemon's API over real sockets: the control server and its client, the health and
//! metrics endpoints, and the human status output.
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use zeppelin::api::client::{self, ClientError};
use zeppelin::api::control::{ControlError, Limits};
use zeppelin::api::http::{HttpLimits, HttpServer};
use zeppelin::api::status::*;
use zeppelin::api::{Command, ControlCommand, ControlServer, Metrics, Request, Response, render_human};

const ETH: u128 = 1_000_000_000_000_000_000;
const ME: &str = "0x1111111111111111111111111111111111111111";
const CLIENT: &str = "0x2222222222222222222222222222222222222222";
const OTHER: &str = "0x3333333333333333333333333333333333333333";

fn sample() -> StatusReport {
    StatusReport {
        version: "0.1.0 (rev 0123456789ab, target x86_64-unknown-linux-gnu)".into(),
        address: ME.into(),
        state_dir: "/var/lib/zeppelin".into(),
        started_at: 1_000_000_000,
        registration: RegistrationStatus {
            state: RegistrationState::Active,
            terms: Some(TermsStatus {
                arch: "arm64".into(),
                cpu_millis: 4000,
                memory_mib: 8192,
                disk_mib: 20480,
                price_per_second_wei: 1_000_000_000_000,
                slots: 2,
            }),
            stake_wei: 3 * ETH / 2,
        },
        balance_wei: 2_250_000_000_000_000_000,
        credits_wei: 12_345_678_900_000_000,
        agreements: vec![
            AgreementStatus {
                id: 3,
                role: AgreementRole::Worker,
                stage: AgreementStage::Running,
                client: CLIENT.into(),
                worker: ME.into(),
                work: Some("running on port 7100".into()),
            },
            AgreementStatus {
                id: 17,
                role: AgreementRole::Verifier,
                stage: AgreementStage::Accepted,
                client: CLIENT.into(),
                worker: OTHER.into(),
                work: None,
            },
        ],
        chain: ChainStatus {
            rpc_url: "http://127.0.0.1:8545".into(),
            chain_id: 31337,
            head_block: Some(1234),
            processed_block: 1232,
            connected: true,
            last_sync: Some(1_000_003_700),
            poll_interval_secs: 2,
            lag_blocks: None,
        },
        transactions_in_flight: vec!["answer:3".into(), "withdraw".into()],
        last_error: Some(LastError {
            message: "transaction register reverted in block 7".into(),
            at: 1_000_003_400,
        }),
        problems: vec![],
        ..StatusReport::default()
    }
}

/// A live report: its last sync is now, so it is healthy whenever the test runs.
fn live() -> StatusReport {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut r = sample();
    r.started_at = now - 60;
    r.chain.last_sync = Some(now);
    r
}

struct Daemon {
    _dir: tempfile::TempDir,
    path: PathBuf,
    status: watch::Sender<StatusReport>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    /// Every command the "event loop" received.
    received: mpsc::UnboundedReceiver<Command>,
}

/// A control server on a temporary socket, with a task standing in for the app's event loop:
/// it refuses `pause` and accepts everything else.
fn start(limits: Limits) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/zeppelin/control.sock");
    let server = ControlServer::bind(&path, limits).unwrap();
    let (status, status_rx) = watch::channel(live());
    let (commands, mut commands_rx) = mpsc::channel::<ControlCommand>(8);
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(ControlCommand { command, reply }) = commands_rx.recv().await {
            seen.send(command).unwrap();
            let _ = reply.send(match command {
                Command::Pause => Err("cannot pause: not registered".into()),
                other => Ok(format!("{other:?} started")),
            });
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(server.serve(status_rx, commands, async {
        let _ = stopped.await;
    }));
    Daemon { _dir: dir, path, status, stop: Some(stop), server, received }
}

impl Daemon {
    async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.server.await.unwrap();
    }
}

fn short_limits() -> Limits {
    Limits { connection_timeout: Duration::from_millis(500), ..Limits::default() }
}

/// Sends raw bytes and reads one response line.
async fn raw_exchange(path: &Path, bytes: &[u8]) -> Response {
    let mut stream = UnixStream::connect(path).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn error_message(response: Response) -> String {
    match response {
        Response::Error { message } => message,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn status_of(path: &Path) -> StatusReport {
    match client::request(path, Request::Status).await.unwrap() {
        Response::Status { report } => *report,
        other => panic!("expected a status, got {other:?}"),
    }
}

#[tokio::test]
async fn status_returns_the_published_report_stamped_with_the_time() {
    let daemon = start(Limits::default());
    let report = status_of(&daemon.path).await;
    assert_eq!(report.address, ME);
    assert_eq!(report.chain.lag_blocks, Some(2));
    assert_eq!(report.uptime_secs, report.now - report.started_at);
    assert!(report.health.is_ok(), "{:?}", report.health);

    // The latest report is what the next request sees.
    daemon.status.send_modify(|r| r.credits_wei = 7);
    assert_eq!(status_of(&daemon.path).await.credits_wei, 7);
    daemon.shutdown().await;
}

#[tokio::test]
async fn commands_reach_the_event_loop_and_its_answers_come_back() {
    let mut daemon = start(Limits::default());
    assert_eq!(
        client::request(&daemon.path, Request::Leave).await.unwrap(),
        Response::Done { message: "Leave started".into() }
    );
    assert_eq!(daemon.received.recv().await, Some(Command::Leave));
    assert_eq!(
        client::request(&daemon.path, Request::Pause).await.unwrap(),
        Response::Error { message: "cannot pause: not registered".into() }
    );
    assert_eq!(daemon.received.recv().await, Some(Command::Pause));
    for (request, command) in [(Request::Resume, Command::Resume), (Request::Reload, Command::Reload)] {
        assert!(matches!(client::request(&daemon.path, request).await.unwrap(), Response::Done { .. }));
        assert_eq!(daemon.received.recv().await, Some(command));
    }
    // The wire format the CLI of another version would also speak.
    let answer = raw_exchange(&daemon.path, b"{\"request\":\"leave\"}\n").await;
    assert_eq!(answer, Response::Done { message: "Leave started".into() });
    daemon.shutdown().await;
}

#[tokio::test]
async fn several_requests_on_one_connection_are_answered_in_order() {
    let daemon = start(Limits::default());
    let stream = UnixStream::connect(&daemon.path).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(b"{\"request\":\"status\"}\nnot json\n{\"request\":\"resume\"}\n").await.unwrap();
    let mut lines = BufReader::new(read).lines();
    let first: Response = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(matches!(first, Response::Status { .. }));
    let second: Response = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert!(error_message(second).starts_with("malformed request"));
    let third: Response = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(third, Response::Done { message: "Resume started".into() });
    daemon.shutdown().await;
}

#[tokio::test]
async fn malformed_oversized_and_silent_clients_get_errors_and_others_are_still_served() {
    let daemon = start(short_limits());

    // A client that connects and says nothing holds its connection until the time limit...
    let mut silent = UnixStream::connect(&daemon.path).await.unwrap();

    let malformed = error_message(raw_exchange(&daemon.path, b"{\"request\":\"explode\"}\n").await);
    assert!(malformed.starts_with("malformed request: unknown variant `explode`"), "{malformed}");
    let not_json = error_message(raw_exchange(&daemon.path, b"\xff\xfe garbage\n").await);
    assert!(not_json.starts_with("malformed request"), "{not_json}");

    let oversized = vec![b'x'; 70 * 1024];
    let too_long = error_message(raw_exchange(&daemon.path, &oversized).await);
    assert_eq!(too_long, "request longer than 65536 bytes");
    // A line of exactly the limit is read (and is merely malformed).
    let mut at_limit = vec![b' '; 64 * 1024];
    at_limit.push(b'\n');
    assert!(error_message(raw_exchange(&daemon.path, &at_limit).await).starts_with("malformed request"));

    // ...while the others are served meanwhile.
    assert_eq!(status_of(&daemon.path).await.address, ME);

    // Then it is told why and closed.
    let mut answer = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_string(&mut answer)).await;
    read.expect("the server closes a silent connection").unwrap();
    let answer: Response = serde_json::from_str(&answer).unwrap();
    assert_eq!(error_message(answer), "timed out waiting for a request");

    assert_eq!(status_of(&daemon.path).await.address, ME);
    daemon.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_are_told_the_daemon_is_busy() {
    let daemon = start(Limits { max_connections: 1, ..short_limits() });
    let _occupying = UnixStream::connect(&daemon.path).await.unwrap();
    // Let the server accept the first one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let busy = error_message(raw_exchange(&daemon.path, b"{\"request\":\"status\"}\n").await);
    assert!(busy.starts_with("the daemon is busy"), "{busy}");
    daemon.shutdown().await;
}

#[tokio::test]
async fn the_socket_is_0660_in_a_0750_directory_and_removed_at_shutdown() {
    let Daemon { _dir: dir, path, stop, server, .. } = start(Limits::default());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&path), 0o660);
    assert_eq!(mode(path.parent().unwrap()), 0o750);
    stop.unwrap().send(()).unwrap();
    server.await.unwrap();
    assert!(!path.exists(), "the socket file is removed at shutdown");
    drop(dir);
}

#[tokio::test]
async fn a_second_daemon_refuses_to_start_while_the_first_answers() {
    let daemon = start(Limits::default());
    let inode = std::fs::metadata(&daemon.path).unwrap().ino();
    let err = ControlServer::bind(&daemon.path, Limits::default()).unwrap_err();
    assert!(matches!(err, ControlError::InUse { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("another zeppelin daemon is already listening on {}", daemon.path.display())
    );
    // The first one's socket is untouched and still answers.
    assert_eq!(std::fs::metadata(&daemon.path).unwrap().ino(), inode);
    assert_eq!(status_of(&daemon.path).await.address, ME);
    daemon.shutdown().await;
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced_and_anything_else_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    // A socket file whose listener is gone (a daemon killed with -9).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    assert!(matches!(client::request(&path, Request::Status).await, Err(ClientError::NoDaemon { .. })));

    let server = ControlServer::bind(&path, Limits::default()).unwrap();
    let (_status, status_rx) = watch::channel(live());
    let (commands, _commands_rx) = mpsc::channel(1);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(status_rx, commands, async {
        let _ = stopped.await;
    }));
    assert_eq!(status_of(&path).await.address, ME);
    stop.send(()).unwrap();
    serving.await.unwrap();

    // A regular file where the socket should be is not ours to delete.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let err = ControlServer::bind(&file, Limits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{} exists and is not a socket: refusing to replace it", file.display())
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[tokio::test]
async fn client_errors_tell_the_user_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent/control.sock");
    let err = client::request(&missing, Request::Status).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no daemon is listening on {}: is zeppelin running? (systemctl status zeppelin)",
            missing.display()
        )
    );

    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let inside = locked.join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&inside).unwrap());
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    let err = client::request(&inside, Request::Status).await.unwrap_err();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
    if rustix::process::geteuid().is_root() {
        // Root passes every permission check: the socket is simply stale. The message for
        // permission denied is still pinned below.
        assert!(matches!(err, ClientError::NoDaemon { .. }), "{err:?}");
    } else {
        assert!(matches!(err, ClientError::PermissionDenied { .. }), "{err:?}");
    }
    let denied = ClientError::PermissionDenied { path: "/run/zeppelin/control.sock".into() };
    assert_eq!(
        denied.to_string(),
        "permission denied on /run/zeppelin/control.sock: add yourself to the zeppelin group \
         (sudo adduser $USER zeppelin, then log in again) or use sudo"
    );
}

// ---- HTTP ----

struct Web {
    addr: std::net::SocketAddr,
    status: watch::Sender<StatusReport>,
    metrics: Metrics,
    _stop: oneshot::Sender<()>,
}

async fn start_http() -> Web {
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), HttpLimits::default()).await.unwrap();
    let addr = server.local_addr().unwrap();
    let (status, status_rx) = watch::channel(live());
    let metrics = Metrics::new();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(status_rx, metrics.clone(), async {
        let _ = stopped.await;
    }));
    Web { addr, status, metrics, _stop: stop }
}

/// One HTTP/1.1 request; returns the status code and the body.
async fn get(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_owned(), body.to_owned())
}

#[tokio::test]
async fn health_is_200_when_ok_and_503_with_reasons_when_degraded() {
    let web = start_http().await;
    let (code, head, body) = get(web.addr, "GET", "/health").await;
    assert_eq!(code, 200, "{body}");
    assert!(head.to_lowercase().contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["reasons"], serde_json::json!([]));
    assert_eq!(json["registration"], "active");
    assert_eq!(json["agreements"], 2);
    assert_eq!(json["chain"]["lag_blocks"], 2);

    web.status.send_modify(|r| {
        r.chain.connected = false;
        r.problems.push("docker engine unreachable".into());
    });
    let (code, _, body) = get(web.addr, "GET", "/health").await;
    assert_eq!(code, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "degraded");
    assert_eq!(
        json["reasons"],
        serde_json::json!(["RPC endpoint http://127.0.0.1:8545 unreachable", "docker engine unreachable"])
    );

    // A sync older than three poll intervals.
    web.status.send_modify(|r| {
        *r = live();
        r.chain.last_sync = Some(r.started_at);
    });
    let (code, _, body) = get(web.addr, "GET", "/health").await;
    assert_eq!(code, 503);
    assert!(body.contains("more than 3 poll intervals of 2s"), "{body}");
}

#[tokio::test]
async fn metrics_expose_the_chain_the_registration_the_money_and_the_counters() {
    let web = start_http().await;
    web.metrics.rpc_request("eth_getLogs");
    web.metrics.rpc_request("eth_getLogs");
    web.metrics.rpc_request("eth_blockNumber");
    web.metrics.rpc_error();
    web.metrics.transaction_sent();
    let (code, head, body) = get(web.addr, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    for line in [
        "zeppelin_chain_head_block 1234",
        "zeppelin_chain_processed_block 1232",
        "zeppelin_chain_lag_blocks 2",
        "zeppelin_rpc_requests_total{method=\"eth_getLogs\"} 2",
        "zeppelin_rpc_requests_total{method=\"eth_blockNumber\"} 1",
        "zeppelin_rpc_errors_total 1",
        "zeppelin_transactions_sent_total 1",
        "zeppelin_transactions_in_flight 2",
        "zeppelin_agreements{role=\"worker\",stage=\"running\"} 1",
        "zeppelin_agreements{role=\"verifier\",stage=\"accepted\"} 1",
        "zeppelin_agreements{role=\"worker\",stage=\"created\"} 0",
        "zeppelin_registered 1",
        "zeppelin_stake_wei 1500000000000000000.0",
        "zeppelin_credits_wei 12345678900000000.0",
        "zeppelin_balance_wei 2250000000000000000.0",
    ] {
        assert!(body.lines().any(|l| l == line), "no line {line:?} in:\n{body}");
    }
    let build = body.lines().find(|l| l.starts_with("zeppelin_build_info{")).unwrap();
    assert!(build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{build}");
    assert!(build.contains(&format!("target=\"{}\"", zeppelin::version::TARGET)), "{build}");
    assert!(body.ends_with("# EOF\n"));

    // Gauges follow the report.
    web.status.send_modify(|r| {
        r.registration.state = RegistrationState::NotRegistered;
        r.agreements.clear();
    });
    let (_, _, body) = get(web.addr, "GET", "/metrics").await;
    assert!(body.lines().any(|l| l == "zeppelin_registered 0"), "{body}");
    assert!(body.lines().any(|l| l == "zeppelin_agreements{role=\"worker\",stage=\"running\"} 0"), "{body}");
}

#[tokio::test]
async fn anything_else_is_404_and_other_methods_405() {
    let web = start_http().await;
    assert_eq!(get(web.addr, "GET", "/").await.0, 404);
    assert_eq!(get(web.addr, "GET", "/healthz").await.0, 404);
    assert_eq!(get(web.addr, "POST", "/metrics").await.0, 405);
    assert_eq!(get(web.addr, "GET", "/health").await.0, 200);
}

#[tokio::test]
async fn oversized_request_headers_are_refused() {
    let web = start_http().await;
    let mut stream = TcpStream::connect(web.addr).await.unwrap();
    let request =
        format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Junk: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.is_empty() || response.starts_with("HTTP/1.1 431"), "{response}");
    // And the server goes on.
    assert_eq!(get(web.addr, "GET", "/health").await.0, 200);
}

// ---- human output ----

#[test]
fn human_status_output() {
    let report = sample().stamp(1_000_003_705);
    let expected = "\
zeppelin 0.1.0 (rev 0123456789ab, target x86_64-unknown-linux-gnu)

health        ok
address       0x1111111111111111111111111111111111111111
uptime        1h 1m 45s
state dir     /var/lib/zeppelin

registration  active
terms         arm64, 4 CPUs, 8192 MiB memory, 20480 MiB disk, 2 slots
price         1000000000000 wei/s (0.0036 ETH/hour)
stake         1.5 ETH
balance       2.25 ETH
credits       0.012345 ETH withdrawable

chain         connected, chain id 31337, http://127.0.0.1:8545
blocks        head 1234, processed 1232, lag 2 blocks
last sync     5s ago, 2001-09-09T02:48:20Z

in flight     answer:3, withdraw
last error    transaction register reverted in block 7 (5m 5s ago, 2001-09-09T02:43:20Z)
agreements    2
  ID  ROLE      STAGE     CLIENT                                      WORKER                                      WORK
  3   worker    running   0x2222222222222222222222222222222222222222  0x1111111111111111111111111111111111111111  running on port 7100
  17  verifier  accepted  0x2222222222222222222222222222222222222222  0x3333333333333333333333333333333333333333  -
";
    assert_eq!(render_human(&report), expected, "got:\n{}", render_human(&report));
}

#[test]
fn human_status_output_when_leaving_degraded_and_idle() {
    let mut report = sample();
    report.registration = RegistrationStatus {
        state: RegistrationState::Leaving { unbond_at: 1_000_090_000 },
        terms: None,
        stake_wei: ETH,
    };
    report.agreements.clear();
    report.transactions_in_flight.clear();
    report.last_error = None;
    report.chain.connected = false;
    report.chain.head_block = None;
    let text = render_human(&report.stamp(1_000_003_705));
    for line in [
        "health        degraded: RPC endpoint http://127.0.0.1:8545 unreachable",
        "registration  leaving, stake withdrawable in 23h 58m 15s, 2001-09-10T02:46:40Z",
        "stake         1 ETH",
        "chain         NOT connected, chain id 31337, http://127.0.0.1:8545",
        "blocks        head unknown, processed 1232",
        "in flight     none",
        "last error    none",
        "agreements    none",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
    }
    assert!(!text.contains("terms"), "{text}");
}

#[test]
fn json_output_is_the_report() {
    let report = sample().stamp(1_000_003_705);
    let json = serde_json::to_string_pretty(&report).unwrap();
    assert!(json.contains("\"balance_wei\": \"2250000000000000000\""), "{json}");
    assert_eq!(serde_json::from_str::<StatusReport>(&json).unwrap(), report);
}
