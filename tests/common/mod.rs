//! Helpers shared by the integration tests: where the real parts are.
#![allow(dead_code)]

use std::path::PathBuf;

/// The `zeppelin` binary under test.
pub fn zeppelin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_zeppelin"))
}

/// The real `anvil` the tests run: `ZEPPELIN_ANVIL`, or the pinned one that `tools/setup.sh`
/// installs. A missing anvil fails the test with the fix, rather than skipping it.
pub fn anvil() -> PathBuf {
    let path = std::env::var_os("ZEPPELIN_ANVIL").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
    });
    assert!(
        path.is_file(),
        "anvil not found at {}: run tools/setup.sh (or set ZEPPELIN_ANVIL)",
        path.display()
    );
    path
}
