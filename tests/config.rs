//! The configuration files the project ships and promises to keep loading, and one fixture per
//! documented error (`tests/fixtures/config/bad/*.toml`, each naming its expected error in a
//! first-line comment `# expect: <substring>`).
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::aliases::U80;
use zeppelin::config::{Config, Contracts};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn shipped_default_loads_with_the_documented_defaults() {
    let path = repo("packaging/zeppelin.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.chain.rpc_url.as_str(), "http://127.0.0.1:8545/");
    assert_eq!(c.chain.ws_url, None);
    assert_eq!(c.chain.chain_id, None);
    assert_eq!(c.chain.contracts, Contracts::DeploymentFile("/etc/zeppelin/deployment.json".into()));
    assert_eq!(c.chain.confirmations, 2);
    assert_eq!(c.chain.poll_interval, Duration::from_secs(2));
    assert_eq!(c.chain.max_fee_per_gas, None);
    assert_eq!(c.worker.price_per_second, U80::from(1_000_000_000u64));
    assert_eq!(c.worker.max_duration, Duration::from_secs(24 * 3600));
    assert_eq!(c.worker.slots.get(), 1);
    assert_eq!(c.worker.stake, None);
    assert_eq!(c.worker.payout_address, None);
    assert_eq!((c.worker.cpu_millis, c.worker.memory_mib, c.worker.disk_mib), (None, None, None));
    assert_eq!(c.worker.arch, None);
    assert_eq!(c.state.dir, Path::new("/var/lib/zeppelin"));
    assert_eq!(c.api.control_socket, Path::new("/run/zeppelin/control.sock"));
    assert_eq!(c.api.http_listen, "127.0.0.1:9465".parse().unwrap());
    assert!(!c.api.http_allow_remote);
    assert_eq!(c.nat.mode, zeppelin::config::NatMode::Auto);
    assert_eq!((c.nat.lease, c.nat.refresh), (Duration::from_secs(3600), Duration::from_secs(60)));
    assert_eq!(c.nat.ports, [7070]);
    assert_eq!(c.work.transfer_listen, "0.0.0.0:7070".parse().unwrap());
    assert_eq!((c.work.announce_host.as_deref(), c.work.ports), (None, (7100, 7163)));
    assert_eq!(c.work.publish_ip, "0.0.0.0".parse::<std::net::IpAddr>().unwrap());
    assert_eq!(c.work.docker_socket, Path::new("/var/run/docker.sock"));
    assert_eq!((c.work.pids_limit, c.work.tmp_mib), (256, 64));

    // Uncommenting a documented default changes nothing.
    let text = std::fs::read_to_string(&path).unwrap();
    let defaults = [
        "#rpc_url = ",
        "#confirmations = ",
        "#poll_interval = ",
        "#deployment_file = ",
        "#max_duration = ",
        "#slots = ",
        "#dir = ",
        "#control_socket = ",
        "#http_listen = ",
        "#http_allow_remote = ",
        "#mode = ",
        "#lease = ",
        "#refresh = ",
        "#ports = ",
        "#transfer_listen = ",
        "#publish_ip = ",
        "#docker_socket = ",
        "#pids_limit = ",
        "#tmp_size = ",
    ];
    let mut uncommented = text.clone();
    for d in defaults {
        assert!(text.contains(d), "the shipped file documents {d}");
        uncommented = uncommented.replace(d, &d[1..]);
    }
    assert_eq!(Config::from_toml_str(&uncommented, "uncommented").unwrap(), c);
}

/// Every other commented example in the shipped file is a valid value for its key.
#[test]
fn shipped_examples_are_valid() {
    let text = std::fs::read_to_string(repo("packaging/zeppelin.toml")).unwrap();
    let mut section = "";
    let mut checked = 0;
    for line in text.lines() {
        if let Some(s) = line.strip_prefix('[') {
            section = s.trim_end_matches(']');
            continue;
        }
        let Some(example) = line.strip_prefix('#').filter(|l| l.contains(" = ")) else {
            continue;
        };
        if example.starts_with(' ') || example.starts_with("payout_address") {
            continue; // prose, or a placeholder to fill in
        }
        let mut file = format!("[worker]\nprice_per_second = \"1 gwei\"\n[{section}]\n{example}\n");
        if example.starts_with("deploy_block") {
            file.push_str("dispatcher = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n");
        }
        if section == "worker" {
            file = format!("[worker]\nprice_per_second = \"1 gwei\"\n{example}\n");
        }
        Config::from_toml_str(&file, "example").unwrap_or_else(|e| panic!("{example}: {e}"));
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} examples found");
}

#[test]
fn minimal_file_is_only_the_price() {
    let c = Config::from_toml_str("[worker]\nprice_per_second = 1000\n", "minimal").unwrap();
    assert_eq!(c.worker.price_per_second, U80::from(1000));
    assert_eq!(c.worker.slots.get(), 1);
}

#[test]
fn old_config_keeps_loading_v0_1_minimal() {
    let c = Config::load(&repo("tests/fixtures/config/v0.1-minimal.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.chain.rpc_url.as_str(), "http://192.168.1.10:8545/");
    assert_eq!(c.worker.price_per_second, U80::from(100_000_000_000u64));
    assert_eq!(c.worker.slots.get(), 2);
    assert_eq!(c.worker.memory_mib, NonZeroU32::new(1024));
}

#[test]
fn every_bad_fixture_fails_with_its_expected_error() {
    let dir = repo("tests/fixtures/config/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "only {} bad fixtures", files.len());
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: <substring>`", path.display()));
        match Config::load(path) {
            Ok(_) => failures.push(format!("{}: loaded, expected an error", path.display())),
            Err(e) => {
                let msg = e.to_string();
                let prefix = format!("{}: ", path.display());
                if !msg.starts_with(&prefix) {
                    failures.push(format!("{msg:?} does not start with the file name"));
                } else if !msg[prefix.len()..].starts_with(expect) {
                    failures.push(format!("{}: got {msg:?}, expected {expect:?}", path.display()));
                }
                if msg.contains('\n') || msg.ends_with('.') {
                    failures.push(format!("{msg:?} must be one line without a trailing period"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
