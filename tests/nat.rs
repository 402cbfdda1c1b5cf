//! NAT traversal against a real router: Debian's miniupnpd (UPnP IGD, NAT-PMP, PCP) in a
//! network namespace between a LAN namespace, where `zeppelin nat check` runs, and a WAN
//! namespace, the internet (`tools/nat-rig.sh`). Each test builds its own rig (a unique
//! `ZP_RIG` suffix) and tears it down. The mapped port belongs to a real TCP listener in the
//! LAN namespace (`tools/nat-rig/tcp_banner.py`), reached from the WAN namespace through the
//! router's external address.
//!
//! Needs root and the rig's packages (`tools/setup.sh`). Without them the tests say so and pass,
//! except under `CI=true`, where they fail.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_zeppelin");

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Whether this machine can build the rig; if not, panics under CI and returns false otherwise.
fn rig_possible() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = ["ip", "iptables-legacy", "miniupnpd", "upnpc", "python3"].iter().all(|t| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    });
    if root && tools {
        return true;
    }
    let why = if root { "the rig's tools are missing (run tools/setup.sh)" } else { "not root" };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but the NAT rig cannot be built: {why}");
    }
    eprintln!("skipping: the NAT rig cannot be built here: {why}");
    false
}

/// One rig, removed on drop.
struct Rig {
    suffix: String,
    env: HashMap<String, String>,
    children: Vec<Child>,
}

impl Rig {
    /// Builds rig `suffix` with the router's `flags` (`--no-upnp` ...). None: not possible here.
    fn up(suffix: &str, flags: &[&str]) -> Option<Rig> {
        if !rig_possible() {
            return None;
        }
        let mut rig = Rig { suffix: suffix.into(), env: HashMap::new(), children: Vec::new() };
        // A rig left over by an interrupted run.
        let _ = rig.script(&["down"]);
        let out = rig.script(&[&["up"], flags].concat());
        assert!(out.status.success(), "nat-rig.sh up: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(format!("/run/zeppelin-nat-rig-{suffix}.env")).unwrap();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.split_once('=') {
                rig.env.insert(k.into(), v.trim_matches('\'').into());
            }
        }
        Some(rig)
    }

    fn var(&self, key: &str) -> &str {
        self.env.get(key).unwrap_or_else(|| panic!("{key} missing from the rig's facts"))
    }

    fn script(&self, args: &[&str]) -> Output {
        run(Command::new(repo("tools/nat-rig.sh")).args(args).env("ZP_RIG", &self.suffix))
    }

    fn restart_router(&self, flags: &[&str]) {
        let out = self.script(&[&["restart-router"], flags].concat());
        assert!(out.status.success(), "restart-router: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn stop_router(&self) {
        let out = self.script(&["stop-router"]);
        assert!(out.status.success(), "stop-router: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn in_ns(&self, ns: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.var(ns)]);
        c
    }

    /// A TCP server on the worker side answering `zp-banner <port> <peer>`.
    fn listen(&mut self, port: u16) {
        let child = self
            .in_ns("ZP_NS_LAN")
            .args([
                "python3",
                repo("tools/nat-rig/tcp_banner.py").to_str().unwrap(),
                self.var("ZP_LAN_IP"),
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        std::thread::sleep(Duration::from_millis(300));
    }

    /// What a host on the internet gets from `external` (`ip:port`), if it connects.
    fn reach_from_wan(&self, external: &str) -> Option<String> {
        let (ip, port) = external.rsplit_once(':').unwrap();
        let out = run(self.in_ns("ZP_NS_WAN").args([
            "python3",
            "-c",
            "import socket,sys\n\
             s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)\n\
             print(s.makefile().readline().strip())",
            ip,
            port,
        ]));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Whether the router holds a port forwarding for `port` (miniupnpd's iptables chain).
    fn router_forwards(&self, port: u16) -> bool {
        let out =
            run(self.in_ns("ZP_NS_ROUTER").args(["iptables-legacy", "-w", "-t", "nat", "-S", "MINIUPNPD"]));
        String::from_utf8_lossy(&out.stdout).contains(&format!("--dport {port} "))
    }

    /// `zeppelin nat check` in the LAN namespace.
    fn check(&self, args: &[&str]) -> Output {
        run(self.in_ns("ZP_NS_LAN").arg(BIN).args(["nat", "check"]).args(args))
    }

    /// `zeppelin nat check --hold --json` in the LAN namespace, its events on a channel.
    fn hold(&self, args: &[&str]) -> Holder {
        let mut child = self
            .in_ns("ZP_NS_LAN")
            .arg(BIN)
            .args(["nat", "check", "--hold", "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Holder { child, rx, seen: Vec::new() }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.script(&["down"]);
    }
}

/// A running `nat check --hold`.
struct Holder {
    child: Child,
    rx: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Holder {
    /// The next event for which `pred` holds, within `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return v;
                    }
                }
                Err(_) => panic!("no {what} within {timeout:?}; events: {:#?}", self.seen),
            }
        }
    }

    fn event(&mut self, name: &str, timeout: Duration) -> Value {
        self.wait_for(name, timeout, |v| v["event"] == name)
    }

    /// SIGINT, then every remaining event; the last is the final status.
    fn stop(mut self) -> Vec<Value> {
        let pid = self.child.id().to_string();
        assert!(run(Command::new("kill").args(["-INT", &pid])).status.success());
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nat check did not stop within 10 s of SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "nat check --hold exited with {status}");
        let mut rest = Vec::new();
        while let Ok(v) = self.rx.recv_timeout(Duration::from_secs(2)) {
            rest.push(v);
        }
        rest
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn each_protocol_alone_maps_a_port_reached_from_the_wan_and_removes_it_at_shutdown() {
    let Some(mut rig) = Rig::up("nat1", &[]) else { return };
    let port = 7071;
    rig.listen(port);
    let external_ip = rig.var("ZP_EXTERNAL_IP").to_owned();
    for (method, flags) in [
        ("upnp", ["--no-natpmp", "--no-pcp"]),
        ("pcp", ["--no-upnp", "--no-natpmp"]),
        ("nat-pmp", ["--no-upnp", "--no-pcp"]),
    ] {
        rig.restart_router(&flags);
        let mut h = rig.hold(&["--port", &port.to_string(), "--lease", "60s"]);
        let chosen = h.event("chosen", secs(15));
        assert_eq!(chosen["method"], method, "{chosen}");
        let mapped = h.event("mapped", secs(10));
        let external = mapped["external"].as_str().unwrap().to_owned();
        assert_eq!(external, format!("{external_ip}:{port}"), "{mapped}");
        assert_eq!(mapped["lease_secs"], 60, "{mapped}");
        assert!(rig.router_forwards(port), "{method}: the router holds no forwarding");
        let banner = rig
            .reach_from_wan(&external)
            .unwrap_or_else(|| panic!("{method}: {external} unreachable from the WAN"));
        assert_eq!(banner, format!("zp-banner {port} {}", rig.var("ZP_WAN_IP")));

        let rest = h.stop();
        let removed = rest.iter().find(|v| v["event"] == "removed").unwrap_or_else(|| panic!("{rest:#?}"));
        assert_eq!(
            (removed["ok"].as_bool(), removed["internal_port"].as_u64()),
            (Some(true), Some(port.into()))
        );
        let last = rest.last().unwrap();
        assert_eq!(last["event"], "status");
        assert_eq!(last["status"]["reachable"], true, "{last}");
        assert!(!rig.router_forwards(port), "{method}: the forwarding outlived the shutdown");
        assert_eq!(rig.reach_from_wan(&external), None, "{method}: still reachable after the shutdown");
    }

    // The one-shot check with only NAT-PMP: the others say why not, and the test mapping is gone.
    let out = rig.check(&["--port", &port.to_string(), "--lease", "30s"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("UPnP IGD  no   no answer: no UPnP IGD answered an SSDP search"), "{text}");
    assert!(text.contains("PCP       no   no answer"), "{text}");
    assert!(
        text.contains(&format!("NAT-PMP   ok   tcp {port} -> {external_ip}:{port} (lease 30s)")),
        "{text}"
    );
    assert!(text.contains("reachable: the daemon would use NAT-PMP"), "{text}");
    assert!(!rig.router_forwards(port));
}

#[test]
fn short_leases_are_renewed_before_they_expire_and_the_port_stays_reachable() {
    let Some(mut rig) = Rig::up("nat2", &[]) else { return };
    let port = 7072;
    rig.listen(port);
    for method in ["upnp", "pcp"] {
        let mut h = rig.hold(&["--port", &port.to_string(), "--lease", "4s", "--method", method]);
        let mapped = h.event("mapped", secs(15));
        let external = mapped["external"].as_str().unwrap().to_owned();
        // Three lease periods: renewals at half the lease, each before the old lease ran out.
        let started = Instant::now();
        let mut renewals = 0;
        while started.elapsed() < secs(12) {
            let r = h.event("renewed", secs(5));
            let margin = r["margin_ms"].as_i64().unwrap();
            assert!(margin > 500, "{method}: renewal only {margin} ms before expiry: {r}");
            assert_eq!(r["lease_secs"], 4, "{r}");
            renewals += 1;
        }
        assert!(renewals >= 5, "{method}: {renewals} renewals in 12 s of 4 s leases");
        assert!(rig.router_forwards(port));
        assert!(
            rig.reach_from_wan(&external).is_some(),
            "{method}: {external} unreachable after {renewals} renewals"
        );
        let rest = h.stop();
        let status = &rest.last().unwrap()["status"];
        assert_eq!(status["failures"], 0, "{status}");
        assert_eq!(status["mappings"][0]["late_renewals"], 0, "{status}");
        assert!(status["renewals"].as_u64().unwrap() >= renewals, "{status}");
    }
}

#[test]
fn a_restarted_router_that_lost_its_mappings_gets_them_back() {
    let Some(mut rig) = Rig::up("nat3", &[]) else { return };
    let port = 7073;
    rig.listen(port);
    for method in ["upnp", "pcp", "natpmp"] {
        // A long lease: only the refresh (2 s) notices the restart.
        let mut h =
            rig.hold(&["--port", &port.to_string(), "--lease", "1h", "--refresh", "2s", "--method", method]);
        let external = h.event("mapped", secs(15))["external"].as_str().unwrap().to_owned();
        let before = h.seen.len();
        // The rig's restart flushes miniupnpd's chains and deletes its lease file (state lost).
        rig.restart_router(&[]);
        let restarted = Instant::now();
        // The next request after the restart re-creates the mapping on the new router.
        h.wait_for("a renewal after the restart", secs(15), |v| {
            v["event"] == "renewed" || v["event"] == "mapped"
        });
        assert!(h.seen[before..].iter().any(|v| v["event"] == "renewed" || v["event"] == "mapped"));
        while !rig.router_forwards(port) {
            assert!(
                restarted.elapsed() < secs(15),
                "{method}: not restored within 15 s; events {:#?}",
                h.seen
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("{method}: restored {:?} after the router restart", restarted.elapsed());
        assert!(
            rig.reach_from_wan(&external).is_some(),
            "{method}: {external} unreachable after the restore"
        );
        h.stop();
    }
}

#[test]
fn when_the_router_turns_upnp_off_pcp_takes_over() {
    let Some(mut rig) = Rig::up("nat4", &[]) else { return };
    let port = 7074;
    rig.listen(port);
    let mut h = rig.hold(&["--port", &port.to_string(), "--lease", "1h", "--refresh", "2s"]);
    assert_eq!(h.event("chosen", secs(15))["method"], "upnp");
    h.event("mapped", secs(10));
    rig.restart_router(&["--no-upnp"]);
    let switched = Instant::now();
    let dropped = h.event("dropped", secs(20));
    assert_eq!(dropped["method"], "upnp");
    assert_eq!(h.event("chosen", secs(10))["method"], "pcp");
    let mapped = h.event("mapped", secs(10));
    assert_eq!(mapped["method"], "pcp");
    eprintln!("PCP took over {:?} after UPnP was turned off", switched.elapsed());
    let external = mapped["external"].as_str().unwrap();
    assert!(rig.reach_from_wan(external).is_some(), "{external} unreachable through PCP");
    let rest = h.stop();
    assert_eq!(rest.last().unwrap()["status"]["method"], "PCP");
    assert!(!rig.router_forwards(port));
}

#[test]
fn with_no_router_answering_the_status_says_the_worker_is_not_reachable_and_why() {
    let Some(rig) = Rig::up("nat5", &[]) else { return };
    rig.stop_router();
    let mut h = rig.hold(&["--port", "7075", "--lease", "30s"]);
    let none = h.event("no-gateway", secs(15));
    let explanation = none["explanation"].as_str().unwrap().to_owned();
    let gateway = rig.var("ZP_ROUTER_LAN_IP");
    assert!(
        explanation.starts_with(&format!(
            "not reachable: no gateway answered UPnP IGD, PCP or NAT-PMP (default gateway {gateway}; UPnP IGD: "
        )),
        "{explanation}"
    );
    assert!(
        explanation.contains("PCP: no answer") && explanation.contains("NAT-PMP: no answer"),
        "{explanation}"
    );
    assert!(explanation.contains("set [nat] mode = \"manual\""), "{explanation}");
    let rest = h.stop();
    let status = &rest.last().unwrap()["status"];
    assert_eq!(status["reachable"], false, "{status}");
    assert_eq!(status["method"], Value::Null, "{status}");
    assert_eq!(status["mappings"][0]["state"], "pending", "{status}");
    assert!(
        status["explanation"].as_str().unwrap().starts_with("not reachable: no gateway answered"),
        "{status}"
    );

    // The one-shot check fails with the same reason.
    let out = rig.check(&["--port", "7075"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not reachable: no gateway answered UPnP IGD, PCP or NAT-PMP"), "{err}");
}

/// `zeppelin status --json` of the daemon at `socket`, if it answers.
fn daemon_status(socket: &std::path::Path) -> Option<Value> {
    let out = run(Command::new(BIN).args(["status", "--json", "--socket"]).arg(socket));
    out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap())
}

fn wait_status(
    socket: &std::path::Path,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        if let Some(s) = daemon_status(socket) {
            if pred(&s) {
                return s;
            }
            last = Some(s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no {what} within {timeout:?}; last status: {last:#?}");
}

#[test]
fn the_daemon_maps_its_port_reports_it_in_status_and_removes_it_at_shutdown() {
    let Some(mut rig) = Rig::up("nat6", &[]) else { return };
    let port = 7076;
    rig.listen(port);
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = (dir.path().join("zeppelin.toml"), dir.path().join("control.sock"));
    // No chain in the rig: the daemon keeps retrying it, which does not concern the NAT task.
    std::fs::write(
        &config,
        format!(
            "[chain]\nrpc_url = \"http://127.0.0.1:9\"\ndispatcher = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n\
             [worker]\nprice_per_second = \"1 gwei\"\n[state]\ndir = \"{}\"\n[api]\ncontrol_socket = \"{}\"\n\
             [nat]\nlease = \"30s\"\nrefresh = \"2s\"\nports = [{port}]\n",
            dir.path().join("state").display(),
            socket.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = rig
        .in_ns("ZP_NS_LAN")
        .arg(BIN)
        .args(["daemon", "--config"])
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    let external = format!("{}:{port}", rig.var("ZP_EXTERNAL_IP"));
    let s = wait_status(&socket, "a reachable worker", secs(30), |s| s["nat"]["reachable"] == true);
    let nat = &s["nat"];
    assert_eq!((nat["mode"].as_str(), nat["method"].as_str()), (Some("auto"), Some("UPnP IGD")), "{nat}");
    // Its transfer server's own port (7070) is mapped too; find the configured one.
    let mapping =
        nat["mappings"].as_array().unwrap().iter().find(|m| m["internal_port"] == port).expect("mapped");
    assert_eq!(mapping["external"], external.as_str(), "{nat}");
    assert_eq!(mapping["label"], "transfer", "{nat}");
    assert!(
        nat["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["internal_port"] == 7070 && m["state"] == "mapped"),
        "the transfer server's port is mapped: {nat}"
    );
    assert!(rig.reach_from_wan(&external).is_some(), "{external} unreachable from the WAN");
    let human = run(Command::new(BIN).args(["status", "--socket"]).arg(&socket));
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.contains(&format!(
            "nat           reachable: ports mapped through UPnP IGD on {}",
            rig.var("ZP_ROUTER_LAN_IP")
        )),
        "{human}"
    );
    assert!(
        human.contains(&format!("tcp {port} (transfer) -> {external}, mapped, lease 30s, expires in ")),
        "{human}"
    );

    // The router goes away: the status says the worker is not reachable, and why.
    rig.stop_router();
    let s = wait_status(&socket, "the router's absence explained", secs(40), |s| {
        s["nat"]["explanation"].as_str().is_some_and(|e| e.starts_with("not reachable: no gateway answered"))
    });
    assert_eq!(s["nat"]["reachable"], false);
    let reasons = s["health"]["reasons"].as_array().unwrap();
    assert!(
        reasons.iter().any(|r| r.as_str().unwrap().starts_with("NAT: not reachable: no gateway answered")),
        "{reasons:?}"
    );

    // It comes back (state lost): the mapping is restored.
    rig.restart_router(&[]);
    wait_status(&socket, "the mapping restored", secs(60), |s| s["nat"]["reachable"] == true);
    assert!(rig.router_forwards(port));

    // SIGTERM: the mapping leaves the router with the daemon.
    assert!(run(Command::new("kill").args(["-TERM", &daemon.id().to_string()])).status.success());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = daemon.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < secs(15), "the daemon did not stop within 15 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "daemon exited with {status}");
    assert!(!rig.router_forwards(port), "the mapping outlived the daemon");
    assert_eq!(rig.reach_from_wan(&external), None);
}
