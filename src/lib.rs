//! agent-orchestrator: a coordinator and Nomad job generator for AI coding agents.
//!
//! See `ARCHITECTURE.md` for the code map. The binary (`src/main.rs`) is a thin shell over
//! this library.
pub mod cli;
pub mod config;
pub mod executor;
pub mod jobspec;
pub mod queue;
pub mod render;
pub mod serve;
pub mod store;
pub mod submit;
pub mod task;
pub mod http;
pub mod intake;
pub mod metrics;
pub mod scheduler;
