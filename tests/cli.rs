//! The binary's own surface: version and the local marketplace, run as a user would.
mod common;

use std::process::Command;

#[test]
fn version_reports_version_revision_and_target() {
    let out = Command::new(common::zeppelin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected_target = format!("target {}-", std::env::consts::ARCH);
    assert!(text.starts_with(&format!("zeppelin {} (rev ", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains(&expected_target), "{text} should name {expected_target}");
}

#[test]
fn dev_once_brings_up_the_marketplace_with_registered_workers() {
    // Run from a directory of its own with a relative --dir, as a user typing the README's
    // command would (the workers' configs need absolute paths: dev makes them so).
    let base = std::env::temp_dir().join(format!("zeppelin-dev-test-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let out = Command::new(common::zeppelin())
        .current_dir(&base)
        .args(["dev", "--once", "--block-time", "0", "--workers", "2", "--dir", "market"])
        .env("ZEPPELIN_ANVIL", common::anvil())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("chain id 31337"), "{stdout}");
    let dir = base.join("market");
    let deployment =
        zeppelin::chain::deployment::Deployment::load(&dir.join("deployments/31337.json")).unwrap();
    assert_eq!(deployment.chain_id, 31337);
    // dev reads the parameters back from the dispatcher before it names it.
    assert!(stdout.contains(&format!("WorkerDispatcher at {}", deployment.dispatcher)), "{stdout}");
    for i in 1..=2 {
        assert!(stdout.contains(&format!("worker {i}  registered: ")), "{stdout}");
        assert!(dir.join(format!("worker{i}/state/keystore.json")).is_file());
    }
    // The demo agreement ends, is settled, and the money flow adds up (dev checks the books).
    for step in ["settled by", "  money     agreement 1", "got back", "the dispatcher holds nothing for it"] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    std::fs::remove_dir_all(base).unwrap();
}

#[test]
fn dev_without_anvil_says_what_is_missing_and_fails() {
    let out = Command::new(common::zeppelin())
        .args(["dev", "--once"])
        .env("ZEPPELIN_ANVIL", "/nonexistent/anvil")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("starting the local chain with `/nonexistent/anvil`")
            && stderr.contains("tools/setup.sh"),
        "{stderr}"
    );
}
