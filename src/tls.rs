//! TLS policy: rustls with the `ring` provider everywhere (aws-lc-rs does not cross-build for
//! armv7, and the dependency graph keeps it out: CI checks `cargo tree -i aws-lc-sys` is empty).

/// Makes `ring` the process-wide rustls provider. Idempotent; call before any TLS is used
/// (HTTPS RPC endpoints, the transfer server).
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// The transfer server's certificate: generated at first start, kept in the state directory,
/// and pinned by clients through its SHA-256 fingerprint (sent over the private channel), so no
/// certificate authority is involved.
pub struct TransferCert {
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("generating the transfer certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

impl TransferCert {
    /// Loads `transfer-cert.der` / `transfer-key.der` from `dir`, or creates them (key 0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join("transfer-cert.der");
        let key_path = dir.join("transfer-key.der");
        if cert_path.exists() && key_path.exists() {
            let read = |p: &Path| {
                std::fs::read(p).map_err(|source| TlsError::Io { what: "reading", path: p.into(), source })
            };
            return Ok(TransferCert {
                cert: CertificateDer::from(read(&cert_path)?),
                key: PrivatePkcs8KeyDer::from(read(&key_path)?),
            });
        }
        let generated = Self::generate()?;
        write_private(&key_path, generated.key.secret_pkcs8_der())?;
        std::fs::write(&cert_path, generated.cert.as_ref()).map_err(|source| TlsError::Io {
            what: "writing",
            path: cert_path,
            source,
        })?;
        Ok(generated)
    }

    /// A fresh self-signed certificate (ECDSA P-256), held in memory only.
    pub fn generate() -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec!["zeppelin-worker".to_owned()])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let cert = params.self_signed(&key).map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(TransferCert { cert: cert.der().clone(), key: PrivatePkcs8KeyDer::from(key.serialize_der()) })
    }

    /// SHA-256 of the certificate, lower-case hex: what clients pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// The worker (the receiver, often a Raspberry Pi) chooses the cipher: its own order, not
    /// the client's (see [`transfer_provider`]).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        install_crypto_provider();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(transfer_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        config.ignore_client_order = true;
        Ok(Arc::new(config))
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes).map(|()| f))
        .map_err(|source| TlsError::Io { what: "writing", path: path.into(), source })?;
    f.flush().map_err(|source| TlsError::Io { what: "writing", path: path.into(), source })
}

/// Whether this CPU has AES instructions (AES-NI, or the ARMv8 crypto extension). A Raspberry
/// Pi 4 (Cortex-A72 in the BCM2711) and every armv7 Pi have none.
pub fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// ring's provider with the cipher suites ordered for bulk transfer on this CPU: AES-128-GCM
/// first where the CPU has AES instructions, ChaCha20-Poly1305 first where it has not (it is
/// several times faster than software AES there). Every suite stays available.
pub fn transfer_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite as S;
    let mut provider = rustls::crypto::ring::default_provider();
    let order: &[S] = if has_aes_instructions() {
        &[S::TLS13_AES_128_GCM_SHA256, S::TLS13_AES_256_GCM_SHA384, S::TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        &[S::TLS13_CHACHA20_POLY1305_SHA256, S::TLS13_AES_128_GCM_SHA256, S::TLS13_AES_256_GCM_SHA384]
    };
    let rank =
        |s: &rustls::SupportedCipherSuite| order.iter().position(|o| *o == s.suite()).unwrap_or(order.len());
    provider.cipher_suites.sort_by_key(rank);
    provider
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A client configuration that trusts exactly one certificate: the one whose fingerprint was
/// received over the private channel. The handshake signature is still verified with that
/// certificate's key, so a server that merely copied the certificate cannot complete it.
pub fn pinned_client_config(fingerprint: &str) -> Arc<rustls::ClientConfig> {
    install_crypto_provider();
    let provider = Arc::new(transfer_provider());
    let verifier =
        Arc::new(Pinned { fingerprint: fingerprint.to_ascii_lowercase(), provider: provider.clone() });
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the worker's certificate is not the one it announced (fingerprint {got}, expected {})",
                self.fingerprint
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_transfer_ciphers_are_ordered_for_this_cpu_and_none_is_dropped() {
        let provider = super::transfer_provider();
        let first = provider.cipher_suites[0].suite();
        if super::has_aes_instructions() {
            assert_eq!(first, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        } else {
            assert_eq!(first, rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        }
        assert_eq!(
            provider.cipher_suites.len(),
            rustls::crypto::ring::default_provider().cipher_suites.len()
        );
    }

    #[test]
    fn ring_is_the_installed_provider() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        let provider = rustls::crypto::CryptoProvider::get_default().expect("a provider is installed");
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(provider.cipher_suites.len(), ring.cipher_suites.len());
        assert_eq!(
            provider.cipher_suites.iter().map(|s| s.suite()).collect::<Vec<_>>(),
            ring.cipher_suites.iter().map(|s| s.suite()).collect::<Vec<_>>()
        );
    }
}
