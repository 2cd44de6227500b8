//! `serve`: builds the coordinator from its configuration and runs it.

/// Flags of `serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}
