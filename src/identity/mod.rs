//! The worker's identity: its Ethereum key, kept in a V3 keystore file, and the X25519 key of
//! its private channel.
//!
//! # Files and modes
//!
//! ```text
//! <state_dir>/                 0700 when we create it; refused if group/others can write it
//!   keystore.json              V3 keystore (scrypt, aes-128-ctr, geth's `address` field), 0600
//! ```
//!
//! On first start [`Identity::load_or_create`] generates a key and writes `keystore.json`
//! atomically: the file is created 0600, fsynced, linked into place only if the name is free,
//! and the directory is fsynced. Later starts load it. An existing keystore is never
//! overwritten: one that group or others can access, that is not ours, or that is a symlink is
//! refused; one that does not parse or decrypt is an error naming the path, left untouched.
//! The file is an ordinary geth/Foundry keystore:
//! `cast wallet address --keystore <state_dir>/keystore.json` prints the worker's address.
//!
//! # Password
//!
//! [`Password::from_systemd_credentials`] reads the systemd credential `keystore-password`
//! (`$CREDENTIALS_DIRECTORY/keystore-password`, one trailing newline removed). Without it the
//! keystore is encrypted with the empty password, and **the file mode (0600, owned by the
//! service user) is the only protection**: anyone who can read the file, or a backup of it, has
//! the key. To encrypt it, give the service the credential, encrypted on disk by systemd:
//!
//! ```text
//! # once, as root:  systemd-ask-password -n | systemd-creds encrypt --name=keystore-password - \
//! #                     /etc/credstore.encrypted/zeppelin-keystore-password
//! [Service]
//! LoadCredentialEncrypted=keystore-password:/etc/credstore.encrypted/zeppelin-keystore-password
//! # or, for testing only (the password is then in the unit file):
//! # SetCredential=keystore-password:correct horse battery staple
//! ```
//!
//! The password is fixed when the key is created. Adding (or changing) the credential later
//! does not re-encrypt the existing key: the daemon refuses to start with an error that says
//! so, and the operator re-encrypts it with the service stopped:
//!
//! ```text
//! cast wallet change-password --keystore-dir /var/lib/zeppelin keystore.json
//! chmod 600 /var/lib/zeppelin/keystore.json    # in case a tool wrote it with the default umask
//! ```
//!
//! (`cast` drops geth's `address` field when it rewrites the file; the daemon does not need it,
//! only geth's account list does.)
//!
//! # The private channel key
//!
//! Clients send a worker secrets (connection details, tokens) sealed to the `bytes32
//! encryptionKey` it registered on chain. That X25519 key is **derived from the Ethereum
//! secret** with HKDF-SHA256 (fixed salt, versioned `info` string for domain separation) rather
//! than kept in a second file, because:
//! - there is one secret to back up and restore: restoring `keystore.json` restores the channel
//!   key the contract already holds, so a restored worker does not have to re-register;
//! - a second file would sit next to the first with the same mode and owner, so it would add
//!   no protection, only a way for the two to get out of step;
//! - HKDF with a dedicated `info` makes the two keys independent as far as anyone without the
//!   secret can tell, and the secp256k1 scalar is never used as an X25519 scalar directly.
//!
//! The cost: rotating the channel key means rotating the Ethereum key (a new worker identity).
//!
//! Sealed boxes are libsodium's `crypto_box_seal` (X25519, XSalsa20-Poly1305, nonce from
//! BLAKE2b), from RustCrypto's `crypto_box` with its `seal` feature: a maintained, audited-family
//! implementation whose wire format any libsodium binding (a browser or Python client) can
//! produce. Plaintexts are bounded by [`MAX_PLAINTEXT_LEN`]; [`seal`] refuses small-order
//! recipient keys as libsodium does.
//!
//! # Secrets in memory
//!
//! [`Identity`]'s `Debug` shows the address and the public encryption key only; nothing here
//! implements `Display` or `Serialize` for a secret. The secp256k1 key (k256's `SigningKey`
//! inside alloy's signer), the password and our intermediate copies are zeroized on drop.
//! Known gaps, from the crates: `eth-keystore` returns the decrypted key in a plain `Vec` it
//! does not wipe, and `crypto_box` 0.9's `SecretKey` wipes its scalar but not its byte copy.
//!
//! Only this module and `chain/` know alloy: the identity hands `chain/` a
//! [`PrivateKeySigner`] for its wallet.

mod channel;
mod keystore;
mod password;

use std::path::{Path, PathBuf};

use alloy::primitives::Address;
pub use alloy::signers::local::PrivateKeySigner;
use zeroize::Zeroizing;

pub use channel::{ChannelError, MAX_PLAINTEXT_LEN, SEAL_OVERHEAD, seal};
use channel::{ChannelKey, Hex};
pub use keystore::KEYSTORE_FILE;
use keystore::{Creation, DecryptError};
pub use password::{PASSWORD_CREDENTIAL, Password};

/// What went wrong loading or creating the identity; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The state directory could not be created, read or synced.
    #[error("state directory {path}: {source}")]
    StateDir {
        /// The state directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The state directory exists but others could replace the key in it.
    #[error("refusing state directory {path}: {reason}")]
    StateDirUnsafe {
        /// The state directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The keystore file exists but is not private to us.
    #[error("refusing keystore {path}: {reason}")]
    KeystoreUnsafe {
        /// The keystore file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The keystore file could not be read.
    #[error("reading keystore {path}: {source}")]
    ReadKeystore {
        /// The keystore file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The keystore file is not a usable V3 keystore. It is left as it is.
    #[error(
        "keystore {path} is corrupt: {reason} (it was left untouched: restore it from a backup, or move it away to create a new identity)"
    )]
    CorruptKeystore {
        /// The keystore file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key was stored without a password, and a password credential is now set.
    #[error("keystore {path} was created without a password, but {given} is now set: the key is not re-encrypted automatically; stop the daemon, run `cast wallet change-password --keystore-dir {dir} {KEYSTORE_FILE}` (current password empty), then `chmod 600 {path}`", dir = .path.parent().unwrap_or(Path::new(".")).display())]
    PasswordAdded {
        /// The keystore file.
        path: PathBuf,
        /// Where the password came from.
        given: String,
    },
    /// The keystore needs a password and none was given.
    #[error(
        "keystore {path} is encrypted with a password, but no `keystore-password` credential was found (set LoadCredentialEncrypted=keystore-password:... in the unit)"
    )]
    PasswordMissing {
        /// The keystore file.
        path: PathBuf,
    },
    /// The password given does not decrypt the keystore.
    #[error(
        "{given} does not decrypt keystore {path}: wrong password, or the file was altered (to change the password: `cast wallet change-password`)"
    )]
    WrongPassword {
        /// The keystore file.
        path: PathBuf,
        /// Where the password came from.
        given: String,
    },
    /// The new keystore could not be written.
    #[error("writing keystore {path}: {source}")]
    WriteKeystore {
        /// The keystore file being created.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The password credential exists but could not be read.
    #[error("reading keystore password credential {path}: {source}")]
    ReadCredential {
        /// The credential file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Whether [`Identity::load_or_create`] found a key or made one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The keystore was loaded.
    Loaded,
    /// There was no keystore: a new key was generated and saved (the daemon should register).
    Created,
}

/// The worker's keys: its Ethereum account and its private-channel key pair.
///
/// `Debug` shows only the address and the public encryption key.
#[derive(Clone)]
pub struct Identity {
    signer: PrivateKeySigner,
    channel: ChannelKey,
}

impl Identity {
    /// Loads the identity from `<state_dir>/keystore.json`, or on first start creates the state
    /// directory (0700) and a new key. See the module docs for the checks and the layout.
    pub fn load_or_create(state_dir: &Path, password: &Password) -> Result<(Self, KeyOrigin), IdentityError> {
        keystore::prepare_state_dir(state_dir)?;
        let path = Self::keystore_path(state_dir);
        if let Some(bytes) = keystore::read_checked(&path)? {
            return Ok((load(&path, &bytes, password)?, KeyOrigin::Loaded));
        }
        match keystore::create(state_dir, &path, password)? {
            Creation::Created(signer) => Ok((Self::from_signer(signer), KeyOrigin::Created)),
            // Another process created it between our look and our link: use theirs.
            Creation::LostRace => {
                let bytes = keystore::read_checked(&path)?.ok_or_else(|| IdentityError::ReadKeystore {
                    path: path.clone(),
                    source: std::io::ErrorKind::NotFound.into(),
                })?;
                Ok((load(&path, &bytes, password)?, KeyOrigin::Loaded))
            }
        }
    }

    /// Where the keystore of a state directory is.
    pub fn keystore_path(state_dir: &Path) -> PathBuf {
        state_dir.join(KEYSTORE_FILE)
    }

    /// The identity of an existing signer (a dev chain's account, tests). The channel key is
    /// derived from it exactly as for a keystore-backed identity.
    pub fn from_signer(signer: PrivateKeySigner) -> Self {
        let secret = Zeroizing::new(signer.to_bytes().0);
        let channel = ChannelKey::derive(&secret);
        Self { signer, channel }
    }

    /// The worker's Ethereum address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }

    /// The signer, for an alloy `EthereumWallet`.
    pub fn signer(&self) -> &PrivateKeySigner {
        &self.signer
    }

    /// The X25519 public key to register as the worker's `encryptionKey`.
    pub fn encryption_public_key(&self) -> [u8; 32] {
        self.channel.public_key()
    }

    /// Opens a sealed box sent to [`Identity::encryption_public_key`].
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, ChannelError> {
        self.channel.open(sealed)
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("address", &self.address())
            .field("encryption_public_key", &Hex(&self.encryption_public_key()))
            .finish()
    }
}

/// Validates and decrypts a keystore read by [`keystore::read_checked`], turning a MAC mismatch
/// into the most useful password error.
fn load(path: &Path, bytes: &[u8], password: &Password) -> Result<Identity, IdentityError> {
    let address = keystore::validate_v3(path, bytes)?;
    match keystore::decrypt(path, address, password.as_bytes()) {
        Ok(signer) => Ok(Identity::from_signer(signer)),
        Err(DecryptError::Corrupt(e)) => Err(e),
        Err(DecryptError::WrongPassword) if password.is_empty() => {
            Err(IdentityError::PasswordMissing { path: path.to_owned() })
        }
        Err(DecryptError::WrongPassword) => {
            // One more KDF run, on the failure path only, to tell "a password was added after
            // the key was created" from "wrong password".
            let given = password.describe();
            match keystore::decrypt(path, address, b"") {
                Ok(_) => Err(IdentityError::PasswordAdded { path: path.to_owned(), given }),
                Err(_) => Err(IdentityError::WrongPassword { path: path.to_owned(), given }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_address_and_public_key_only() {
        let signer = PrivateKeySigner::random();
        let secret_hex = alloy::primitives::hex::encode(signer.to_bytes());
        let identity = Identity::from_signer(signer);
        let debug = format!("{identity:?} {identity:#?}");
        assert!(!debug.contains(&secret_hex), "{debug}");
        assert!(!debug.to_lowercase().contains(&secret_hex[..16].to_lowercase()), "{debug}");
        assert!(debug.contains(&format!("{:?}", identity.address())), "{debug}");
        let public_hex = alloy::primitives::hex::encode(identity.encryption_public_key());
        assert!(debug.contains(&public_hex), "{debug}");
    }

    #[test]
    fn identities_seal_to_each_other() {
        let alice = Identity::from_signer(PrivateKeySigner::random());
        let bob = Identity::from_signer(PrivateKeySigner::random());
        let sealed = seal(&bob.encryption_public_key(), b"for bob").unwrap();
        assert_eq!(bob.open(&sealed).unwrap(), b"for bob");
        assert_eq!(alice.open(&sealed), Err(ChannelError::Open));
    }

    #[test]
    fn the_channel_key_follows_the_ethereum_key() {
        let signer = PrivateKeySigner::random();
        let again = PrivateKeySigner::from_bytes(&signer.to_bytes()).unwrap();
        assert_eq!(
            Identity::from_signer(signer).encryption_public_key(),
            Identity::from_signer(again).encryption_public_key()
        );
    }
}
