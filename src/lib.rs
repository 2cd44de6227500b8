//! agent-orchestrator: a coordinator and Nomad job generator for AI coding agents.
//!
//! See `ARCHITECTURE.md` for the code map. The binary (`src/main.rs`) is a thin shell over
//! this library.
pub mod config;
pub mod jobspec;
