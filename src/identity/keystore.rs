//! The keystore file: checks before use, decryption, atomic no-clobber creation (the I/O half
//! of the module; the checks themselves are pure functions tested beside it).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use alloy::signers::local::{LocalSignerError, PrivateKeySigner};
use crypto_box::aead::OsRng;
use crypto_box::aead::rand_core::RngCore;
use rustix::fs::OFlags;
use zeroize::Zeroizing;

use super::{IdentityError, Password};

/// The keystore's file name in the state directory.
pub const KEYSTORE_FILE: &str = "keystore.json";

/// Largest keystore file read: a V3 keystore is about 500 bytes.
const MAX_KEYSTORE_LEN: u64 = 64 * 1024;
/// Largest scrypt memory (128 * n * r * p bytes) accepted: geth's "standard" parameters.
/// Anything above would exhaust a Raspberry Pi's memory before failing.
const MAX_SCRYPT_BYTES: u64 = 256 * 1024 * 1024;
/// Largest PBKDF2 iteration count accepted (geth writes 262144).
const MAX_PBKDF2_ROUNDS: u64 = 10_000_000;

fn no_follow() -> i32 {
    (OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32
}

/// Creates the state directory (mode 0700) if it is missing; refuses one that others can write.
pub(crate) fn prepare_state_dir(dir: &Path) -> Result<(), IdentityError> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| IdentityError::StateDir { path: dir.to_owned(), source });
        }
        Err(source) => {
            return Err(IdentityError::StateDir { path: dir.to_owned(), source });
        }
    };
    check_state_dir(dir, meta.is_dir(), meta.uid(), meta.mode(), our_uid())
}

/// Pure check of an existing state directory: a directory, owned by us or root, writable by
/// no one else (anyone who can write it could swap the key file).
pub(crate) fn check_state_dir(
    path: &Path,
    is_dir: bool,
    owner: u32,
    mode: u32,
    our_uid: u32,
) -> Result<(), IdentityError> {
    let path = path.to_owned();
    if !is_dir {
        return Err(IdentityError::StateDirUnsafe { path, reason: "not a directory".to_owned() });
    }
    if owner != our_uid && owner != 0 {
        return Err(IdentityError::StateDirUnsafe {
            path,
            reason: format!("owned by uid {owner}, not by this user (uid {our_uid}) or root"),
        });
    }
    if mode & 0o022 != 0 {
        return Err(IdentityError::StateDirUnsafe {
            path,
            reason: format!("writable by group or others (mode {:04o})", mode & 0o7777),
        });
    }
    Ok(())
}

/// Pure check of the keystore file's metadata: a regular file, owned by us, mode 0600 or
/// stricter.
pub(crate) fn check_key_file(
    path: &Path,
    is_file: bool,
    owner: u32,
    mode: u32,
    our_uid: u32,
) -> Result<(), IdentityError> {
    let path = path.to_owned();
    if !is_file {
        return Err(IdentityError::KeystoreUnsafe { path, reason: "not a regular file".to_owned() });
    }
    if owner != our_uid {
        return Err(IdentityError::KeystoreUnsafe {
            path,
            reason: format!("owned by uid {owner}, not by this user (uid {our_uid})"),
        });
    }
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeystoreUnsafe {
            reason: format!(
                "group or others have access (mode {:04o}); if this is the right key, `chmod 600 {}`",
                mode & 0o7777,
                path.display()
            ),
            path,
        });
    }
    Ok(())
}

fn our_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Opens the keystore without following a symlink, checks the opened file (not the path, so
/// nothing can be swapped in between) and reads it. `None` when there is no keystore yet.
pub(crate) fn read_checked(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, IdentityError> {
    let read_error = |source| IdentityError::ReadKeystore { path: path.to_owned(), source };
    let file = match OpenOptions::new().read(true).custom_flags(no_follow()).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err(IdentityError::KeystoreUnsafe {
                path: path.to_owned(),
                reason: "a symbolic link".to_owned(),
            });
        }
        Err(e) => return Err(read_error(e)),
    };
    let meta = file.metadata().map_err(read_error)?;
    check_key_file(path, meta.file_type().is_file(), meta.uid(), meta.mode(), our_uid())?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEYSTORE_LEN + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_KEYSTORE_LEN {
        return Err(corrupt(path, "too large for a keystore"));
    }
    Ok(Some(bytes))
}

fn corrupt(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::CorruptKeystore { path: path.to_owned(), reason: reason.into() }
}

/// Pure structural check of a V3 keystore, before the decryption library sees it: that library
/// panics on short fields and would happily try a KDF that needs gigabytes. Returns the
/// `address` field (geth writes it; we do too).
pub(crate) fn validate_v3(path: &Path, bytes: &[u8]) -> Result<Option<Address>, IdentityError> {
    use serde_json::Value;
    let json: Value = serde_json::from_slice(bytes).map_err(|e| corrupt(path, format!("not JSON: {e}")))?;
    if json.get("version").and_then(Value::as_u64) != Some(3) {
        return Err(corrupt(path, "not a version 3 keystore"));
    }
    let crypto = json.get("crypto").ok_or_else(|| corrupt(path, "no `crypto` object"))?;
    let str_field = |obj: &Value, name: &str| -> Result<String, IdentityError> {
        obj.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| corrupt(path, format!("no string field `{name}`")))
    };
    let hex_len = |obj: &Value, name: &str, len: std::ops::RangeInclusive<usize>| {
        let value = str_field(obj, name)?;
        match alloy::primitives::hex::decode(&value) {
            Ok(bytes) if len.contains(&bytes.len()) => Ok(()),
            _ => Err(corrupt(path, format!("`{name}` is not {len:?} bytes of hex"))),
        }
    };
    let int = |obj: &Value, name: &str| {
        obj.get(name)
            .and_then(Value::as_u64)
            .ok_or_else(|| corrupt(path, format!("no integer field `{name}`")))
    };
    if str_field(crypto, "cipher")? != "aes-128-ctr" {
        return Err(corrupt(path, "cipher is not aes-128-ctr"));
    }
    let cipherparams = crypto.get("cipherparams").ok_or_else(|| corrupt(path, "no `cipherparams` object"))?;
    hex_len(cipherparams, "iv", 16..=16)?;
    hex_len(crypto, "ciphertext", 32..=32)?;
    hex_len(crypto, "mac", 32..=32)?;
    let params = crypto.get("kdfparams").ok_or_else(|| corrupt(path, "no `kdfparams` object"))?;
    if int(params, "dklen")? != 32 {
        return Err(corrupt(path, "kdf dklen is not 32"));
    }
    hex_len(params, "salt", 1..=256)?;
    match str_field(crypto, "kdf")?.as_str() {
        "scrypt" => {
            let (n, r, p) = (int(params, "n")?, int(params, "r")?, int(params, "p")?);
            let memory = 128u64.saturating_mul(n).saturating_mul(r).saturating_mul(p);
            if !n.is_power_of_two() || n < 2 || r == 0 || p == 0 || memory > MAX_SCRYPT_BYTES {
                return Err(corrupt(
                    path,
                    format!("scrypt parameters n={n} r={r} p={p} are invalid or too costly"),
                ));
            }
        }
        "pbkdf2" => {
            let c = int(params, "c")?;
            if c == 0 || c > MAX_PBKDF2_ROUNDS || str_field(params, "prf")? != "hmac-sha256" {
                return Err(corrupt(path, "pbkdf2 parameters are invalid or too costly"));
            }
        }
        other => return Err(corrupt(path, format!("unknown kdf `{other}`"))),
    }
    match json.get("address").and_then(Value::as_str) {
        None => Ok(None),
        Some(text) => {
            let text = text.strip_prefix("0x").unwrap_or(text);
            text.parse::<Address>().map(Some).map_err(|_| corrupt(path, "`address` is not an address"))
        }
    }
}

/// Why a structurally valid keystore did not decrypt.
pub(crate) enum DecryptError {
    /// The MAC does not match: wrong password (or an altered file).
    WrongPassword,
    /// Anything else: the file is unusable.
    Corrupt(IdentityError),
}

/// Decrypts the keystore at `path` (already checked and validated) and checks its `address`
/// field against the key.
pub(crate) fn decrypt(
    path: &Path,
    address_field: Option<Address>,
    password: &[u8],
) -> Result<PrivateKeySigner, DecryptError> {
    let signer = PrivateKeySigner::decrypt_keystore(path, password).map_err(|e| match e {
        LocalSignerError::EthKeystoreError(eth_keystore::KeystoreError::MacMismatch) => {
            DecryptError::WrongPassword
        }
        other => DecryptError::Corrupt(corrupt(path, format!("cannot decrypt: {other}"))),
    })?;
    match address_field {
        Some(address) if address != signer.address() => Err(DecryptError::Corrupt(corrupt(
            path,
            format!("its `address` field {address} does not match its key ({})", signer.address()),
        ))),
        _ => Ok(signer),
    }
}

/// What [`create`] did.
pub(crate) enum Creation {
    /// A new keystore was written at the path.
    Created(PrivateKeySigner),
    /// Another process created the keystore first; nothing was written.
    LostRace,
}

/// Generates a key and publishes it as `<state_dir>/keystore.json` without ever replacing an
/// existing file.
///
/// The keystore library only writes files with default permissions, so it writes into a fresh
/// 0700 staging directory; the bytes are checked (they decrypt to the same key) and then
/// written to a temporary file created 0600 in the state directory, fsynced, hard-linked to the
/// final name (which, unlike `rename`, fails if the name exists), and the directory is fsynced.
pub(crate) fn create(state_dir: &Path, path: &Path, password: &Password) -> Result<Creation, IdentityError> {
    let write_error = |source| IdentityError::WriteKeystore { path: path.to_owned(), source };
    let signer = PrivateKeySigner::random_with(&mut OsRng);
    let bytes = {
        let staging = TempPath::new(state_dir.join(format!(".keystore-staging-{}", suffix())));
        DirBuilder::new().mode(0o700).create(&staging.0).map_err(write_error)?;
        let secret = Zeroizing::new(signer.to_bytes().0);
        PrivateKeySigner::encrypt_keystore(
            &staging.0,
            &mut OsRng,
            secret.as_slice(),
            password.as_bytes(),
            Some(KEYSTORE_FILE),
        )
        .map_err(|e| write_error(std::io::Error::other(e)))?;
        let staged = staging.0.join(KEYSTORE_FILE);
        let bytes = with_address(&fs::read(&staged).map_err(write_error)?, signer.address())
            .map_err(|e| write_error(std::io::Error::other(e)))?;
        fs::write(&staged, &bytes).map_err(write_error)?;
        // Publish only what we can read back.
        let address = validate_v3(&staged, &bytes)?;
        match decrypt(&staged, address, password.as_bytes()) {
            Ok(back) if back.address() == signer.address() => {}
            _ => {
                return Err(write_error(std::io::Error::other(
                    "the keystore just written does not decrypt to the generated key",
                )));
            }
        }
        bytes
    };

    let temp = TempPath::new(state_dir.join(format!(".{KEYSTORE_FILE}.{}.tmp", suffix())));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(&temp.0)
        .map_err(write_error)?;
    file.write_all(&bytes).map_err(write_error)?;
    file.sync_all().map_err(write_error)?;
    drop(file);
    match fs::hard_link(&temp.0, path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(Creation::LostRace),
        Err(e) => return Err(write_error(e)),
    }
    drop(temp);
    File::open(state_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| IdentityError::StateDir { path: state_dir.to_owned(), source })?;
    Ok(Creation::Created(signer))
}

/// Adds geth's `address` field (lowercase hex, no `0x`) to a keystore: geth's account list skips
/// keystores without it. We write it, but do not require it when reading (the keystore library
/// ignores it; [`validate_v3`] checks it against the key when present), because other tools,
/// `cast wallet change-password` among them, rewrite the file without it.
fn with_address(keystore: &[u8], address: Address) -> serde_json::Result<Zeroizing<Vec<u8>>> {
    let mut json: serde_json::Value = serde_json::from_slice(keystore)?;
    if let Some(object) = json.as_object_mut() {
        let hex = alloy::primitives::hex::encode(address);
        object.insert("address".to_owned(), hex.into());
    }
    serde_json::to_vec(&json).map(Zeroizing::new)
}

/// A unique suffix for temporary names: the process id and 64 random bits.
fn suffix() -> String {
    format!("{}-{:016x}", std::process::id(), OsRng.next_u64())
}

/// A temporary file or directory, removed on drop (best effort: nothing to report it to).
struct TempPath(PathBuf);

impl TempPath {
    fn new(path: PathBuf) -> Self {
        Self(path)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0).or_else(|_| fs::remove_dir_all(&self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u32 = 1000;

    fn key_file(owner: u32, mode: u32) -> Result<(), IdentityError> {
        check_key_file(Path::new("/s/keystore.json"), true, owner, mode, ME)
    }

    #[test]
    fn key_file_must_be_private_and_ours() {
        assert!(key_file(ME, 0o100600).is_ok());
        assert!(key_file(ME, 0o100400).is_ok());
        for mode in [0o100644, 0o100640, 0o100604, 0o100620, 0o100660] {
            let err = key_file(ME, mode).unwrap_err().to_string();
            assert!(err.contains("/s/keystore.json"), "{err}");
            assert!(err.contains("chmod 600"), "{err}");
        }
        let err = key_file(0, 0o100600).unwrap_err().to_string();
        assert!(err.contains("owned by uid 0"), "{err}");
        assert!(check_key_file(Path::new("/s/k"), false, ME, 0o600, ME).is_err());
    }

    #[test]
    fn state_dir_must_not_be_writable_by_others() {
        let check = |owner, mode| check_state_dir(Path::new("/s"), true, owner, mode, ME);
        assert!(check(ME, 0o40700).is_ok());
        assert!(check(ME, 0o40755).is_ok(), "systemd's default StateDirectoryMode");
        assert!(check(0, 0o40755).is_ok());
        assert!(check(ME, 0o40775).is_err());
        assert!(check(ME, 0o40777).is_err());
        assert!(check(ME + 1, 0o40700).is_err());
        assert!(check_state_dir(Path::new("/s"), false, ME, 0o700, ME).is_err());
    }

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "address": "0x00000398232e2064f896018496b4b44b3d62751f",
            "crypto": {
                "cipher": "aes-128-ctr",
                "ciphertext": "4f784cd629a7caf34b488e36fb96aad8a8f943a6ce31c7deab950c5e3a5b1c43",
                "cipherparams": { "iv": "76f07196b3c94f25b8f34d869493f640" },
                "kdf": "scrypt",
                "kdfparams": {
                    "dklen": 32, "n": 262144, "p": 1, "r": 8,
                    "salt": "1e7be4ce8351dd1710b0885438414b1748a81f1af510eda11e4d1f99c8d43975"
                },
                "mac": "5b5433575a2418c1c813337a88b4099baa2f534e5dabeba86979d538c1f594d8"
            },
            "id": "6c4485f3-3cc0-4081-848e-8bf489f2c262",
            "version": 3
        })
    }

    fn validate(json: &serde_json::Value) -> Result<Option<Address>, IdentityError> {
        validate_v3(Path::new("/s/keystore.json"), json.to_string().as_bytes())
    }

    #[test]
    fn a_geth_keystore_validates() {
        let address = validate(&sample()).unwrap().unwrap();
        assert_eq!(address, "0x00000398232e2064f896018496b4b44b3d62751f".parse::<Address>().unwrap());
    }

    #[test]
    fn malformed_keystores_are_corrupt_not_panics() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("/version", 4.into()),
            ("/crypto/cipher", "aes-256-gcm".into()),
            ("/crypto/cipherparams/iv", "76f0".into()),
            ("/crypto/ciphertext", "zz".into()),
            ("/crypto/mac", "".into()),
            ("/crypto/kdfparams/dklen", 16.into()),
            ("/crypto/kdfparams/n", 262143.into()),
            ("/crypto/kdfparams/n", (1u64 << 30).into()),
            ("/crypto/kdfparams/r", 0.into()),
            ("/crypto/kdf", "argon2".into()),
            ("/address", "0x1234".into()),
        ];
        for (pointer, value) in cases {
            let mut json = sample();
            *json.pointer_mut(pointer).unwrap() = value;
            let err = validate(&json).unwrap_err();
            assert!(matches!(err, IdentityError::CorruptKeystore { .. }), "{pointer}: {err}");
            assert!(err.to_string().contains("/s/keystore.json"), "{err}");
        }
        let err = validate_v3(Path::new("/s/k"), b"\0garbage").unwrap_err();
        assert!(err.to_string().starts_with("keystore /s/k is corrupt"), "{err}");
    }
}
