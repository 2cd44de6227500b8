//! The `agent-orchestrator` binary: parses the command line and runs one subcommand.

use std::process::ExitCode;

use clap::Parser;

use agent_orchestrator::cli::{Cli, Command};
use agent_orchestrator::{executor, render};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Render(args) => render::run_render(args),
        Command::Parse(args) => render::run_parse(args),
        Command::Validate(args) => render::run_validate(args),
        Command::Supervise(args) => return ExitCode::from(executor::supervisor::run(args) as u8),
        Command::Serve(_) | Command::Submit(_) => Err(render::CommandError { exit_code: 1, message: "not implemented yet".into() }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code)
        }
    }
}
