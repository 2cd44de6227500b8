//! agent-orchestrator: a coordinator and Nomad job generator for AI coding agents.
//!
//! See `ARCHITECTURE.md` for the code map. The binary (`src/main.rs`) is a thin shell over
//! this library.
#[cfg(feature = "aws")]
pub mod aws;
pub mod cli;
pub mod config;
pub mod consul;
pub mod executor;
pub mod github;
pub mod http;
pub mod intake;
pub mod jobspec;
pub mod metrics;
pub mod queue;
pub mod render;
pub mod results;
pub mod scheduler;
pub mod serve;
pub mod sqlite_worker;
pub mod store;
pub mod submit;
pub mod task;
pub mod workflow;
