//! TLS policy: rustls with the `ring` provider everywhere (aws-lc-rs does not cross-build for
//! armv7, and the dependency graph keeps it out: CI checks `cargo tree -i aws-lc-sys` is empty).

/// Makes `ring` the process-wide rustls provider. Idempotent; call before any TLS is used
/// (HTTPS RPC endpoints, the transfer server).
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
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
