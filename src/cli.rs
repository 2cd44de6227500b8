//! Command line: the subcommands of DESIGN.md §3 and their flags. Every `serve` flag is also
//! an environment variable (`AO_*`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::render::{ParseArgs, RenderArgs, ValidateArgs};
use crate::serve::ServeArgs;
use crate::submit::SubmitArgs;

#[derive(Debug, Parser)]
#[command(
    name = "agent-orchestrator",
    version,
    about = "Runs AI coding agents as Nomad batch jobs, and renders their job specs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render the coordinator job and one job per agent type from the inputs and templates.
    Render(RenderArgs),
    /// Print a Nomad jobspec (HCL) as Nomad API JSON `{"Job": {...}}`.
    Parse(ParseArgs),
    /// Check the inputs and the rendered jobs.
    Validate(ValidateArgs),
    /// Run the coordinator.
    Serve(Box<ServeArgs>),
    /// Submit a task to a running coordinator.
    Submit(SubmitArgs),
    /// Internal: runs one agent attempt for the local executor (see executor/local.rs).
    #[command(hide = true)]
    Supervise(crate::executor::supervisor::SuperviseArgs),
}

/// Default inputs file of `render`, `validate` and `serve --inputs`.
pub fn default_inputs() -> PathBuf {
    PathBuf::from("terragrunt/live/dev/agent-orchestrator/terragrunt.hcl")
}
