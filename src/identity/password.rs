//! The keystore password: a systemd credential, or none.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::IdentityError;

/// The name of the systemd credential that holds the keystore password.
pub const PASSWORD_CREDENTIAL: &str = "keystore-password";

/// The keystore password, wiped on drop. `Debug` never shows it.
#[derive(Clone)]
pub struct Password {
    secret: Zeroizing<Vec<u8>>,
    /// The credential file it came from, for error messages.
    source: Option<PathBuf>,
}

impl Password {
    /// No password: the keystore's file mode is its only protection.
    pub fn none() -> Self {
        Self { secret: Zeroizing::new(Vec::new()), source: None }
    }

    /// A password given directly (tests, tools). One trailing newline is not removed here.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self { secret: Zeroizing::new(secret.into()), source: None }
    }

    /// The password from systemd's credentials: `$CREDENTIALS_DIRECTORY/keystore-password` if
    /// the variable is set and the file exists, otherwise [`Password::none`].
    pub fn from_systemd_credentials() -> Result<Self, IdentityError> {
        let dir = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::from_credentials_dir(dir.as_deref())
    }

    /// [`Password::from_systemd_credentials`] with the directory given rather than read from the
    /// environment (what tests use). The file's contents, less one trailing `\n` or `\r\n`, are
    /// the password; a missing file (or no directory) means no password.
    pub fn from_credentials_dir(dir: Option<&Path>) -> Result<Self, IdentityError> {
        let Some(dir) = dir else {
            return Ok(Self::none());
        };
        let path = dir.join(PASSWORD_CREDENTIAL);
        let mut secret = match std::fs::read(&path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::none()),
            Err(source) => return Err(IdentityError::ReadCredential { path, source }),
        };
        if secret.ends_with(b"\n") {
            secret.pop();
            if secret.ends_with(b"\r") {
                secret.pop();
            }
        }
        Ok(Self { secret, source: Some(path) })
    }

    /// True for no password (or an empty one).
    pub fn is_empty(&self) -> bool {
        self.secret.is_empty()
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.secret
    }

    /// Where the password came from, for error messages.
    pub(crate) fn describe(&self) -> String {
        match (&self.source, self.is_empty()) {
            (_, true) => "no password".to_owned(),
            (Some(path), false) => format!("the password in {}", path.display()),
            (None, false) => "the password given".to_owned(),
        }
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Password")
            .field("empty", &self.is_empty())
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let debug = format!("{:?}", Password::new("hunter2"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn no_directory_means_no_password() {
        assert!(Password::from_credentials_dir(None).unwrap().is_empty());
    }
}
