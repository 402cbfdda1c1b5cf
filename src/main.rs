//! The `zeppelin` binary: parse the command line, set up logging, run, and turn errors into an
//! exit code. Everything else lives in the library (see `lib.rs` for the map).
use std::process::ExitCode;

use clap::Parser;
use zeppelin::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    zeppelin::logging::init(cli.log_format);
    match zeppelin::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "deploying contracts: ...: ...".
            eprintln!("zeppelin: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
