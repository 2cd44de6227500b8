//! How long the generator takes for a large cluster: 1,000 agent types rendered from the
//! repository's templates, then rendered and parsed back (what `render` and `validate` do
//! before writing anything). Plain `std::time::Instant`, best of a few rounds.
//!
//! Run with `cargo bench --bench render`.

use std::path::Path;
use std::time::{Duration, Instant};

use agent_orchestrator::config::{decode, source::Format, Inputs};
use agent_orchestrator::jobspec::parse_jobspec;
use agent_orchestrator::render::{load_templates, render_checked, render_jobs, Templates};

const AGENT_TYPES: usize = 1_000;
const ROUNDS: usize = 5;

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let inputs = inputs(AGENT_TYPES)?;
    let templates = load_templates(&Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"))?;
    let jobs = AGENT_TYPES + 1;
    println!("render bench: {AGENT_TYPES} agent types + coordinator = {jobs} jobs, best of {ROUNDS} rounds");

    let render = best_of(
        || render_jobs(&inputs, &templates, "jobs").map(|j| j.len()),
        jobs,
    )?;
    report("render (templates -> HCL)", render, jobs);

    let render_parse = best_of(|| render_and_parse(&inputs, &templates), jobs)?;
    report("render + parse_jobspec", render_parse, jobs);

    let checked = best_of(
        || render_checked(&inputs, &templates, "jobs").map(|j| j.len()),
        jobs,
    )?;
    report("render + parse + checks (render_checked)", checked, jobs);
    Ok(())
}

fn render_and_parse(
    inputs: &Inputs,
    templates: &Templates,
) -> Result<usize, Box<dyn std::error::Error>> {
    let jobs = render_jobs(inputs, templates, "jobs")?;
    for job in &jobs {
        parse_jobspec(&job.hcl, &job.hcl_file_name())?;
    }
    Ok(jobs.len())
}

/// Runs `f` `ROUNDS` times (after one warm-up) and returns the fastest round.
fn best_of<E: Into<Box<dyn std::error::Error>>>(
    mut f: impl FnMut() -> Result<usize, E>,
    expected: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let produced = f().map_err(Into::into)?;
    if produced != expected {
        return Err(format!("rendered {produced} jobs, expected {expected}").into());
    }
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        std::hint::black_box(f().map_err(Into::into)?);
        best = best.min(start.elapsed());
    }
    Ok(best)
}

fn report(what: &str, total: Duration, jobs: usize) {
    let ms = total.as_secs_f64() * 1e3;
    let per_job_us = total.as_secs_f64() * 1e6 / jobs as f64;
    println!("  {what:<42} {ms:>9.1} ms total  {per_job_us:>8.1} µs/job");
}

/// Inputs with `n` agent types, each with a few capabilities and env vars.
fn inputs(n: usize) -> Result<Inputs, Box<dyn std::error::Error>> {
    let mut types = serde_json::Map::new();
    for i in 0..n {
        types.insert(
            format!("agent-{i:04}"),
            serde_json::json!({
                "image": format!("ghcr.io/example/agent-{i}:1.0.{i}"),
                "cpu_limit": 500 + i,
                "memory_limit": format!("{}MB", 256 + i),
                "max_instances": 1 + i % 10,
                "capabilities": ["code", "git", format!("cap-{i}")],
                "env_vars": {"LOG_LEVEL": "info", "MODEL": format!("model-{}", i % 7), "NOTE": "a ${not} %{interpolated} \"value\""},
                "timeout": format!("{}m", 10 + i % 50),
                "priority": 1 + i % 100,
            }),
        );
    }
    let doc = serde_json::json!({"cluster_name": "bench", "nomad_version": "2.0.3", "agent_types": types});
    Ok(decode(&doc.to_string(), Format::Json, "bench.tfvars.json")?)
}
