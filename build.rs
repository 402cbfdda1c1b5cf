//! Records the git revision and the target triple for `zeppelin --version`.
use std::process::Command;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=ZEPPELIN_TARGET={target}");

    // Packagers building from a tarball (no .git) can pass the revision in.
    println!("cargo:rerun-if-env-changed=ZEPPELIN_GIT_REV");
    let rev = std::env::var("ZEPPELIN_GIT_REV").ok().or_else(git_rev).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=ZEPPELIN_GIT_REV={rev}");
    // Rebuild when HEAD moves (a commit or a checkout), not on every file change.
    for path in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

fn git_rev() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let rev = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}
