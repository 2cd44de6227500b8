//! `submit`: a client of `POST /tasks`.

/// Flags of `submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {}
