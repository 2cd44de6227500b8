//! `render`, `parse` and `validate`: inputs + handlebars templates → Nomad job files.

use std::path::PathBuf;

/// Flags of `render` (DESIGN.md §3).
#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    /// Inputs file: a terragrunt.hcl, *.tfvars(.json) or config file.
    #[arg(long, default_value_os_t = crate::cli::default_inputs())]
    pub inputs: PathBuf,
    /// Directory of handlebars templates.
    #[arg(long, default_value = "templates")]
    pub templates: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "jobs")]
    pub out: PathBuf,
    /// hcl writes <name>.nomad.hcl; json writes <name>.json in Nomad's API form.
    #[arg(long, value_enum, default_value_t = OutputFormat::Hcl)]
    pub format: OutputFormat,
    /// Write nothing; exit non-zero listing the files that differ from what would be written.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Hcl,
    Json,
}

/// Flags of `parse`.
#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// A Nomad jobspec (HCL).
    pub file: PathBuf,
}

/// Flags of `validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[arg(long, default_value_os_t = crate::cli::default_inputs())]
    pub inputs: PathBuf,
    #[arg(long, default_value = "templates")]
    pub templates: PathBuf,
}

/// A command's failure, with the exit code DESIGN.md §3 assigns (2 bad input, 1 runtime).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub exit_code: u8,
    pub message: String,
}

pub fn run_render(_args: &RenderArgs) -> Result<(), CommandError> {
    Err(CommandError { exit_code: 1, message: "render: not implemented yet".into() })
}

pub fn run_parse(_args: &ParseArgs) -> Result<(), CommandError> {
    Err(CommandError { exit_code: 1, message: "parse: not implemented yet".into() })
}

pub fn run_validate(_args: &ValidateArgs) -> Result<(), CommandError> {
    Err(CommandError { exit_code: 1, message: "validate: not implemented yet".into() })
}
