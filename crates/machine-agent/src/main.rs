//! `ccr-agent`: parse the command line, run the subcommand, and turn how it ended into the
//! exit code — here and nowhere else: 0 success, 2 a missing or malformed setting, 1 any other
//! failure. (A hook always exits 0: it must never fail Claude.)

use std::process::ExitCode;

use clap::Parser;
use machine_agent::cli::Cli;
use machine_agent::AppError;

fn main() -> ExitCode {
    match machine_agent::run_cli(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(AppError::Config(e)) => {
            eprintln!("ccr-agent: {e}");
            ExitCode::from(2)
        }
        Err(AppError::Failed(e)) => {
            eprintln!("ccr-agent: {e:#}");
            ExitCode::FAILURE
        }
        Err(AppError::Daemon(e)) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
        Err(AppError::ChecksFailed) => ExitCode::FAILURE,
    }
}
