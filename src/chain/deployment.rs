//! The deployment file: where the protocol contracts live on one chain.
//!
//! Written by `contracts/script/Deploy.s.sol` (any EVM chain) and by `zeppelin dev` (the local
//! chain); read by the daemon and the client. JSON, with these keys (others are ignored, so the
//! deploy script may record more, such as the protocol parameters):
//!
//! ```json
//! { "chainId": 31337, "dispatcher": "0x5FbD…0aa3", "deployBlock": 1 }
//! ```
//!
//! `deployBlock` is where a chain follower starts looking for the dispatcher's events.
use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

/// Where the protocol lives on one chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    /// EIP-155 chain id the contracts were deployed on.
    pub chain_id: u64,
    /// The `WorkerDispatcher` contract.
    pub dispatcher: Address,
    /// Block of the deployment transaction.
    pub deploy_block: u64,
}

/// Reading or writing a deployment file failed.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    #[error("reading deployment file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("deployment file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("writing deployment file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

impl Deployment {
    /// Reads and parses a deployment file.
    pub fn load(path: &Path) -> Result<Self, DeploymentError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| DeploymentError::Read { path: path.to_owned(), source })?;
        serde_json::from_str(&text).map_err(|source| DeploymentError::Parse { path: path.to_owned(), source })
    }

    /// Writes the file atomically (a temporary file renamed over the target), so a reader never
    /// sees half of it.
    pub fn save(&self, path: &Path) -> Result<(), DeploymentError> {
        let write_err = |source| DeploymentError::Write { path: path.to_owned(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("a deployment always serializes") + "\n";
        std::fs::write(&tmp, text).map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_format_and_ignores_extra_keys() {
        let json = r#"{"chainId": 31337, "dispatcher": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
                       "deployBlock": 7, "params": {"minStake": "1"}}"#;
        let d: Deployment = serde_json::from_str(json).unwrap();
        assert_eq!(d.chain_id, 31337);
        assert_eq!(d.deploy_block, 7);
        assert_eq!(d.dispatcher, "0x5FbDB2315678afecb367f032d93F642f64180aa3".parse::<Address>().unwrap());
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("zeppelin-deployment-{}", std::process::id()));
        let path = dir.join("nested/31337.json");
        let d = Deployment { chain_id: 5, dispatcher: Address::repeat_byte(0xab), deploy_block: 42 };
        d.save(&path).unwrap();
        assert_eq!(Deployment::load(&path).unwrap(), d);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_malformed_file_names_the_path() {
        let dir = std::env::temp_dir().join(format!("zeppelin-deployment-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.json");
        std::fs::write(&path, r#"{"chainId": "x"}"#).unwrap();
        let err = Deployment::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&format!("deployment file {} is not valid", path.display())), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
