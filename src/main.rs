//! The `strangler` command: parse arguments, call the library, report errors.

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = strangler::cli::Cli::parse();
    match strangler::cli::execute(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            let mut cause = err.source();
            while let Some(c) = cause {
                eprintln!("  caused by: {c}");
                cause = c.source();
            }
            ExitCode::FAILURE
        }
    }
}
