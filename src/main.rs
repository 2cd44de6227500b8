//! The `agent-orchestrator` binary: parses the command line and runs one subcommand.

use std::process::ExitCode;

use clap::Parser;

use agent_orchestrator::cli::{Cli, Command};
use agent_orchestrator::{executor, render, serve, submit};

/// mimalloc instead of glibc's malloc: the webhook path allocates and frees many small buffers
/// across threads, where glibc's arenas spent ~10 % of the CPU in `malloc`/`free`/consolidation
/// (perf, `benches/webhooks.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Render(_) | Command::Parse(_) | Command::Validate(_) | Command::Submit(_)
    ) {
        // Commands that print for a pipeline end quietly when the reader goes away (`… | head`),
        // as Unix tools do, instead of panicking on the broken pipe. Not `serve`: a peer closing
        // a socket must not end the coordinator.
        // SAFETY: sets a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match &cli.command {
        Command::Render(args) => {
            report(render::run_render(args).map_err(|e| (e.exit_code, e.to_string())))
        }
        Command::Parse(args) => {
            report(render::run_parse(args).map_err(|e| (e.exit_code, e.to_string())))
        }
        Command::Validate(args) => {
            report(render::run_validate(args).map_err(|e| (e.exit_code, e.to_string())))
        }
        Command::Supervise(args) => {
            ExitCode::from(executor::supervisor::run(args).clamp(0, 255) as u8)
        }
        Command::Serve(args) => report(run_serve(args)),
        Command::Submit(args) => report(runtime().and_then(|rt| {
            rt.block_on(submit::run(args))
                .map_err(|e| (e.exit_code, e.to_string()))
        })),
    }
}

fn run_serve(args: &serve::ServeArgs) -> Result<(), (u8, String)> {
    let settings = serve::ServeSettings::resolve(args).map_err(|e| (2, e.to_string()))?;
    let _flush_logs_on_exit = serve::init_logging(settings.log_format);
    runtime()?
        .block_on(serve::run(settings))
        .map_err(|e| (e.exit_code(), e.to_string()))
}

fn runtime() -> Result<tokio::runtime::Runtime, (u8, String)> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the async runtime: {e}")))
}

fn report(result: Result<(), (u8, String)>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("error: {message}");
            ExitCode::from(code)
        }
    }
}
