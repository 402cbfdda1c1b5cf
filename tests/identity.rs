//! The worker's identity on a real filesystem: the keystore file, its modes and checks, the
//! password credential, and Foundry's `cast` reading what we wrote. No test mutates the process
//! environment: credentials directories are passed explicitly.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use zeppelin::identity::{
    ChannelError, Identity, IdentityError, KEYSTORE_FILE, KeyOrigin, PASSWORD_CREDENTIAL, Password, seal,
};

/// A fresh state directory that does not exist yet, inside a temporary directory.
fn state_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    (tmp, dir)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

/// A credentials directory holding `keystore-password` with these contents.
fn credentials(contents: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(PASSWORD_CREDENTIAL), contents).unwrap();
    dir
}

/// The pinned `cast` that `tools/setup.sh` installs. Missing is a failure with the fix.
fn cast() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tools/node_modules/@foundry-rs/cast-linux-amd64/bin/cast");
    assert!(path.is_file(), "cast not found at {}: run `bash tools/setup.sh --no-cross`", path.display());
    path
}

fn cast_address(keystore: &Path, password: &str) -> String {
    let out = Command::new(cast())
        .args(["wallet", "address", "--keystore"])
        .arg(keystore)
        .args(["--password", password])
        .output()
        .unwrap();
    assert!(out.status.success(), "cast failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn first_start_creates_a_private_keystore_and_later_starts_load_it() {
    let (_tmp, dir) = state_dir();
    let (first, origin) = Identity::load_or_create(&dir, &Password::none()).unwrap();
    assert_eq!(origin, KeyOrigin::Created);

    let keystore = dir.join(KEYSTORE_FILE);
    assert_eq!(Identity::keystore_path(&dir), keystore);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&keystore), 0o600);
    // Nothing left behind but the keystore.
    let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [KEYSTORE_FILE]);

    let (second, origin) = Identity::load_or_create(&dir, &Password::none()).unwrap();
    assert_eq!(origin, KeyOrigin::Loaded);
    assert_eq!(second.address(), first.address());
    assert_eq!(second.encryption_public_key(), first.encryption_public_key());
    assert_eq!(second.signer().address(), first.address());
}

#[test]
fn an_existing_state_dir_keeps_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    Identity::load_or_create(tmp.path(), &Password::none()).unwrap();
    assert_eq!(mode(tmp.path()), 0o755);
    assert_eq!(mode(&tmp.path().join(KEYSTORE_FILE)), 0o600);
}

#[test]
fn a_state_dir_others_can_write_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let err = Identity::load_or_create(tmp.path(), &Password::none()).unwrap_err();
    assert!(matches!(err, IdentityError::StateDirUnsafe { .. }), "{err}");
    assert!(err.to_string().contains(&tmp.path().display().to_string()));
    assert!(!tmp.path().join(KEYSTORE_FILE).exists());
}

#[test]
fn a_world_readable_keystore_is_refused() {
    let (_tmp, dir) = state_dir();
    Identity::load_or_create(&dir, &Password::none()).unwrap();
    let keystore = dir.join(KEYSTORE_FILE);
    for loose in [0o644, 0o640, 0o604] {
        fs::set_permissions(&keystore, fs::Permissions::from_mode(loose)).unwrap();
        let err = Identity::load_or_create(&dir, &Password::none()).unwrap_err();
        assert!(matches!(err, IdentityError::KeystoreUnsafe { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&keystore.display().to_string()), "{message}");
        assert!(message.contains("chmod 600"), "{message}");
    }
}

#[test]
fn a_keystore_owned_by_someone_else_is_refused() {
    if rustix::process::geteuid().as_raw() != 0 {
        // Only root can give a file away; the check itself is unit-tested in keystore.rs.
        eprintln!("not root: chown is not possible, ownership covered by unit tests only");
        return;
    }
    let (_tmp, dir) = state_dir();
    Identity::load_or_create(&dir, &Password::none()).unwrap();
    let keystore = dir.join(KEYSTORE_FILE);
    std::os::unix::fs::chown(&keystore, Some(65534), Some(65534)).unwrap();
    let err = Identity::load_or_create(&dir, &Password::none()).unwrap_err();
    assert!(matches!(err, IdentityError::KeystoreUnsafe { .. }), "{err}");
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
}

#[test]
fn a_symlinked_keystore_is_refused() {
    let (_tmp, dir) = state_dir();
    Identity::load_or_create(&dir, &Password::none()).unwrap();
    let keystore = dir.join(KEYSTORE_FILE);
    let elsewhere = dir.join("real.json");
    fs::rename(&keystore, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &keystore).unwrap();
    let err = Identity::load_or_create(&dir, &Password::none()).unwrap_err();
    assert!(matches!(err, IdentityError::KeystoreUnsafe { .. }), "{err}");
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

#[test]
fn a_corrupt_keystore_is_refused_and_left_untouched() {
    let (_tmp, dir) = state_dir();
    Identity::load_or_create(&dir, &Password::none()).unwrap();
    let keystore = dir.join(KEYSTORE_FILE);
    let good = fs::read_to_string(&keystore).unwrap();
    let cases = [
        "not json at all".to_owned(),
        String::new(),
        good[..good.len() / 2].to_owned(),
        good.replace("aes-128-ctr", "aes-256-ctr"),
    ];
    for garbage in cases {
        fs::write(&keystore, &garbage).unwrap();
        let err = Identity::load_or_create(&dir, &Password::none()).unwrap_err();
        assert!(matches!(err, IdentityError::CorruptKeystore { .. }), "{err}");
        assert!(err.to_string().contains(&keystore.display().to_string()), "{err}");
        assert_eq!(fs::read_to_string(&keystore).unwrap(), garbage);
        assert_eq!(mode(&keystore), 0o600);
    }
}

#[test]
fn a_keystore_with_a_flipped_mac_is_a_wrong_password_and_left_untouched() {
    let (_tmp, dir) = state_dir();
    Identity::load_or_create(&dir, &Password::none()).unwrap();
    let keystore = dir.join(KEYSTORE_FILE);
    let mut json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&keystore).unwrap()).unwrap();
    json["crypto"]["mac"] = "00".repeat(32).into();
    let altered = json.to_string();
    fs::write(&keystore, &altered).unwrap();
    let err = Identity::load_or_create(&dir, &Password::none()).unwrap_err();
    // Indistinguishable from a password set elsewhere; the message says both.
    assert!(matches!(err, IdentityError::PasswordMissing { .. }), "{err}");
    assert_eq!(fs::read_to_string(&keystore).unwrap(), altered);
}

#[test]
fn a_password_from_the_credentials_directory_protects_the_key() {
    let (_tmp, dir) = state_dir();
    let creds = credentials("correct horse\n");
    let password = Password::from_credentials_dir(Some(creds.path())).unwrap();
    assert!(!password.is_empty());
    let (created, _) = Identity::load_or_create(&dir, &password).unwrap();

    // The trailing newline is not part of the password: cast agrees without it.
    assert_eq!(cast_address(&dir.join(KEYSTORE_FILE), "correct horse"), created.address().to_checksum(None));

    let again = Password::from_credentials_dir(Some(creds.path())).unwrap();
    let (loaded, origin) = Identity::load_or_create(&dir, &again).unwrap();
    assert_eq!((loaded.address(), origin), (created.address(), KeyOrigin::Loaded));

    let wrong = credentials("battery staple");
    let err = Identity::load_or_create(&dir, &Password::from_credentials_dir(Some(wrong.path())).unwrap())
        .unwrap_err();
    assert!(matches!(err, IdentityError::WrongPassword { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("does not decrypt keystore"), "{message}");
    assert!(message.contains(&dir.join(KEYSTORE_FILE).display().to_string()));
    assert!(message.contains(PASSWORD_CREDENTIAL), "{message}");
    assert!(!message.contains("battery staple"), "{message}");

    let err = Identity::load_or_create(&dir, &Password::none()).unwrap_err();
    assert!(matches!(err, IdentityError::PasswordMissing { .. }), "{err}");
    assert!(err.to_string().contains("LoadCredentialEncrypted"), "{err}");
}

#[test]
fn adding_a_password_later_explains_how_to_re_encrypt() {
    let (_tmp, dir) = state_dir();
    Identity::load_or_create(&dir, &Password::none()).unwrap();
    let creds = credentials("new password");
    let err = Identity::load_or_create(&dir, &Password::from_credentials_dir(Some(creds.path())).unwrap())
        .unwrap_err();
    assert!(matches!(err, IdentityError::PasswordAdded { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("cast wallet change-password"), "{message}");
    assert!(message.contains("chmod 600"), "{message}");
}

#[test]
fn credentials_directory_without_the_password_means_no_password() {
    let creds = tempfile::tempdir().unwrap();
    fs::write(creds.path().join("something-else"), "x").unwrap();
    assert!(Password::from_credentials_dir(Some(creds.path())).unwrap().is_empty());
}

#[test]
fn an_unreadable_credential_is_an_error_naming_it() {
    let creds = tempfile::tempdir().unwrap();
    // A directory where the file should be: reading it fails whoever we are.
    fs::create_dir(creds.path().join(PASSWORD_CREDENTIAL)).unwrap();
    let err = Password::from_credentials_dir(Some(creds.path())).unwrap_err();
    assert!(matches!(err, IdentityError::ReadCredential { .. }), "{err}");
    assert!(err.to_string().contains(PASSWORD_CREDENTIAL), "{err}");
}

#[test]
fn cast_reads_the_keystore_we_write() {
    let (_tmp, dir) = state_dir();
    let (identity, _) = Identity::load_or_create(&dir, &Password::none()).unwrap();
    assert_eq!(cast_address(&dir.join(KEYSTORE_FILE), ""), identity.address().to_checksum(None));
}

#[test]
fn two_workers_talk_over_sealed_boxes() {
    let (_a, dir_a) = state_dir();
    let (_b, dir_b) = state_dir();
    let (alice, _) = Identity::load_or_create(&dir_a, &Password::none()).unwrap();
    let (bob, _) = Identity::load_or_create(&dir_b, &Password::none()).unwrap();
    assert_ne!(alice.encryption_public_key(), bob.encryption_public_key());

    let sealed = seal(&bob.encryption_public_key(), b"ssh -p 2222 worker").unwrap();
    assert_eq!(bob.open(&sealed).unwrap(), b"ssh -p 2222 worker");
    assert_eq!(alice.open(&sealed), Err(ChannelError::Open));

    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert_eq!(bob.open(&tampered), Err(ChannelError::Open));

    // The channel key survives a restart (it is derived from the keystore).
    let (bob_again, _) = Identity::load_or_create(&dir_b, &Password::none()).unwrap();
    assert_eq!(bob_again.open(&sealed).unwrap(), b"ssh -p 2222 worker");
}

#[test]
fn the_documented_re_encryption_with_cast_works() {
    let (_tmp, dir) = state_dir();
    let (created, _) = Identity::load_or_create(&dir, &Password::none()).unwrap();
    let keystore = dir.join(KEYSTORE_FILE);
    // geth's account list needs the `address` field: we write it.
    let json: serde_json::Value = serde_json::from_str(&fs::read_to_string(&keystore).unwrap()).unwrap();
    assert_eq!(json["address"], alloy::primitives::hex::encode(created.address()));

    let out = Command::new(cast())
        .args(["wallet", "change-password", "--keystore-dir"])
        .arg(&dir)
        .arg(KEYSTORE_FILE)
        .args(["--unsafe-password", "", "--unsafe-new-password", "new password"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    fs::set_permissions(&keystore, fs::Permissions::from_mode(0o600)).unwrap();

    let creds = credentials("new password\n");
    let password = Password::from_credentials_dir(Some(creds.path())).unwrap();
    let (loaded, origin) = Identity::load_or_create(&dir, &password).unwrap();
    assert_eq!((loaded.address(), origin), (created.address(), KeyOrigin::Loaded));
    assert_eq!(loaded.encryption_public_key(), created.encryption_public_key());
}
