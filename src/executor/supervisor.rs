//! The `supervise` subcommand: the parent of one local agent attempt.

/// Flags of the hidden `supervise` subcommand.
#[derive(Debug, clap::Args)]
pub struct SuperviseArgs {
    /// The attempt's run directory.
    #[arg(long)]
    pub run_dir: std::path::PathBuf,
}

pub fn run(_args: &SuperviseArgs) -> i32 {
    2
}
