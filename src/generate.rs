//! `zeppelin generate`: the man pages and shell completions the Debian package installs, made
//! from the clap definition of the command line so they cannot drift from it.
//!
//! The output does not depend on the architecture, so the packaging script runs the host build
//! once and ships the same files in the amd64, arm64 and armhf packages. The version shown is
//! the crate version alone (not the target triple of the binary that generated it), which keeps
//! the files identical across architectures.
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

use crate::cli::Cli;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Artifact {
    /// Man pages in section 1: `zeppelin.1` and one `zeppelin-<subcommand>.1` per subcommand.
    Man,
    /// Completions: `zeppelin.bash`, `_zeppelin` (zsh) and `zeppelin.fish`. clap_complete
    /// offers hidden subcommands too, so they complete `generate` (it is only left out of
    /// `--help` and the man pages).
    Completions,
}

/// The command line as the generated files describe it.
fn command() -> clap::Command {
    Cli::command().version(env!("CARGO_PKG_VERSION"))
}

/// Writes `what` into `dir` (created if missing) and returns the files written, sorted.
pub fn run(what: Artifact, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    match what {
        Artifact::Man => {
            let mut cmd = command().disable_help_subcommand(true);
            cmd.build();
            write_man_pages(&cmd, dir, &mut files)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
        Artifact::Completions => {
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                let file = clap_complete::generate_to(shell, &mut command(), "zeppelin", dir)
                    .with_context(|| format!("writing {shell} completions into {}", dir.display()))?;
                files.push(file);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// One page for the command and one per visible subcommand, as `clap_mangen::generate_to`
/// does, keeping the paths.
fn write_man_pages(cmd: &clap::Command, dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir, files)?;
    }
    files.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[PathBuf]) -> Vec<String> {
        files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn man_pages_cover_every_visible_subcommand_and_no_hidden_one() {
        let dir = tempfile::tempdir().unwrap();
        let files = run(Artifact::Man, dir.path()).unwrap();
        let names = names(&files);
        for page in ["zeppelin.1", "zeppelin-daemon.1", "zeppelin-status.1", "zeppelin-reload.1"] {
            assert!(names.iter().any(|n| n == page), "{page} missing from {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("generate")), "hidden subcommand documented: {names:?}");
        let main = fs::read_to_string(dir.path().join("zeppelin.1")).unwrap();
        assert!(main.starts_with(".ie \\n(.g .ds Aq") || main.contains(".TH zeppelin 1"), "{main}");
        assert!(main.contains(env!("CARGO_PKG_VERSION")));
        assert!(!main.contains(crate::version::TARGET), "the page names the build target");
    }

    #[test]
    fn completions_for_three_shells_know_the_subcommands() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("unrelated"), "").unwrap();
        let files = run(Artifact::Completions, dir.path()).unwrap();
        assert_eq!(names(&files), ["_zeppelin", "zeppelin.bash", "zeppelin.fish"]);
        for file in &files {
            let text = fs::read_to_string(file).unwrap();
            for sub in ["daemon", "status", "pause", "resume", "leave", "reload", "dev"] {
                assert!(text.contains(sub), "{} does not offer {sub}", file.display());
            }
        }
    }
}
