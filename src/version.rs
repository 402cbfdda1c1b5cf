//! Build identity, reported by `zeppelin --version` and in logs and status.

/// Crate version, git revision and target triple, e.g.
/// `0.1.0 (rev 1a2b3c4d5e6f, target aarch64-unknown-linux-gnu)`.
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("ZEPPELIN_GIT_REV"),
    ", target ",
    env!("ZEPPELIN_TARGET"),
    ")"
);

/// The target triple this binary was compiled for.
pub const TARGET: &str = env!("ZEPPELIN_TARGET");

#[cfg(test)]
mod tests {
    #[test]
    fn long_version_names_the_compile_target() {
        // Cargo sets TARGET for build scripts; on a native build it equals the host triple that
        // rustc was asked to compile for, which std exposes piecemeal.
        assert!(super::LONG.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(super::LONG.contains(super::TARGET));
        assert!(super::TARGET.contains(std::env::consts::ARCH.trim_end_matches("eabihf")));
    }
}
