//! `render`, `parse` and `validate`: inputs + handlebars templates → Nomad job files.
//!
//! This module owns the job generator (DESIGN.md §3, §5):
//!
//! * `escape` — [`hcl_string`], the only way operator text reaches a rendered job;
//! * `context` — the serde structs the templates see, built from validated [`Inputs`];
//! * `engine` — the handlebars registry (strict, no HTML escaping, the `hcl` / `hcl_key`
//!   helpers) and [`render_jobs`];
//! * `checks` — structural checks on a job's API JSON ([`check_agent_job`]);
//! * `files` — the only I/O: reading templates, comparing and atomically writing `jobs/`;
//! * this file — the three commands and [`render_checked`], the pipeline they share:
//!   render every job in memory, parse each with [`crate::jobspec::parse_jobspec`], check it,
//!   and only then write anything.
//!
//! Exit codes: 2 when the inputs file is invalid (or `parse` gets an invalid jobspec); 1 for
//! everything else (unreadable or broken templates, a template that renders an invalid job,
//! I/O errors, `--check` finding differences).

mod checks;
mod context;
mod engine;
mod escape;
mod files;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde_json::Value;

pub use checks::{check_agent_job, check_coordinator_job, AGENT_CONTRACT_ENV};
pub use context::{
    agent_job_id, coordinator_job_id, inputs_document, inputs_json, AgentContext,
    CoordinatorContext,
};
pub use engine::{render_jobs, RenderedJob, Templates, AGENT_TEMPLATE, COORDINATOR_TEMPLATE};
pub use escape::hcl_string;
pub use files::load_templates;

use crate::config::{self, Inputs};
use crate::jobspec::parse_jobspec;
use files::{Difference, OutputFile};

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
    /// hcl writes NAME.nomad.hcl; json writes NAME.json in Nomad's API form.
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

/// Why jobs could not be rendered. Every variant's message names the template or file.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template is missing, does not compile, or fails to render (strict mode, bad helper
    /// argument); `message` is `template:line:column: what`.
    #[error("{message}")]
    Template { template: String, message: String },
    /// Rendering worked but produced jobs that do not parse or lack what dispatch needs: one
    /// line per problem, each naming the rendered file (and line) and the template.
    #[error("{}", problems.join("\n"))]
    InvalidJobs { problems: Vec<String> },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A rendered job that parsed and passed the structural checks.
#[derive(Debug, Clone)]
pub struct CheckedJob {
    pub job: RenderedJob,
    /// `{"Job": {...}}` in Nomad API form.
    pub api_json: Value,
}

/// Renders every job, parses each rendered jobspec and checks it (agent jobs with
/// [`check_agent_job`], the coordinator with [`check_coordinator_job`], and every job's `ID`).
/// Pure: `out_dir` only names the files in messages. All problems of all jobs are reported.
pub fn render_checked(
    inputs: &Inputs,
    templates: &Templates,
    out_dir: &str,
) -> Result<Vec<CheckedJob>, RenderError> {
    let jobs = render_jobs(inputs, templates, out_dir)?;
    let mut checked = Vec::with_capacity(jobs.len());
    let mut problems = Vec::new();
    for job in jobs {
        let file = engine::join(out_dir, &job.hcl_file_name());
        let from = format!("(rendered from {})", templates.path_of(job.template));
        let api_json = match parse_jobspec(&job.hcl, &file) {
            Ok(json) => json,
            Err(e) => {
                problems.push(format!("{e} {from}"));
                continue;
            }
        };
        let mut found = match job.agent_type {
            Some(_) => check_agent_job(&api_json, &file),
            None => check_coordinator_job(&api_json, &file),
        };
        let id = api_json
            .get("Job")
            .and_then(|j| j.get("ID"))
            .and_then(Value::as_str);
        if id != Some(job.job_id.as_str()) {
            let what = if job.agent_type.is_some() {
                "the coordinator dispatches"
            } else {
                "expected"
            };
            found.push(format!(
                "{file}: Job.ID: is {}; {what} {:?}",
                id.map_or_else(|| "not set".to_string(), |id| format!("{id:?}")),
                job.job_id
            ));
        }
        if found.is_empty() {
            checked.push(CheckedJob { job, api_json });
        } else {
            problems.extend(found.into_iter().map(|p| format!("{p} {from}")));
        }
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(RenderError::InvalidJobs { problems })
    }
}

impl From<RenderError> for CommandError {
    fn from(e: RenderError) -> CommandError {
        CommandError {
            exit_code: 1,
            message: e.to_string(),
        }
    }
}

fn load_inputs(path: &Path) -> Result<Inputs, CommandError> {
    config::load_inputs(path).map_err(|e| CommandError {
        exit_code: 2,
        message: e.to_string(),
    })
}

/// `render`: writes `coordinator` and one `<type>-agent` job file per agent type into `--out`
/// (or, with `--check`, writes nothing and fails listing what differs).
pub fn run_render(args: &RenderArgs) -> Result<(), CommandError> {
    let inputs = load_inputs(&args.inputs)?;
    let templates = load_templates(&args.templates)?;
    let out_label = args.out.display().to_string();
    let jobs = render_checked(&inputs, &templates, &out_label)?;
    let (files, stale_suffix) = output_files(&jobs, args.format)?;

    if args.check {
        let differences = files::compare(&args.out, &files, stale_suffix)?;
        if differences.is_empty() {
            println!("ok: {} is up to date ({} jobs)", out_label, files.len());
            return Ok(());
        }
        let mut message = format!(
            "{} file(s) in {} differ from the inputs and templates:",
            differences.len(),
            out_label
        );
        for (name, difference) in &differences {
            let path = engine::join(&out_label, name);
            let what = match difference {
                Difference::Missing => "missing".to_string(),
                Difference::Differs { line } => format!("differs (from line {line})"),
                Difference::Stale => "stale: no agent type produces it any more".to_string(),
            };
            message.push_str(&format!("\n  {path}: {what}"));
        }
        message.push_str(&format!("\nrun `{}` to update them", render_command(args)));
        return Err(CommandError {
            exit_code: 1,
            message,
        });
    }

    files::create_dir(&args.out)?;
    let (mut written, mut unchanged) = (0, 0);
    for file in &files {
        let path = args.out.join(&file.name);
        if files::is_unchanged(&path, &file.contents) {
            unchanged += 1;
            continue;
        }
        files::write_atomically(&path, &file.contents)?;
        written += 1;
        println!("wrote {}", path.display());
    }
    let stale = files::stale_files(&args.out, &files, stale_suffix)?;
    for name in &stale {
        let path = args.out.join(name);
        files::remove(&path)?;
        println!(
            "removed {} (no agent type produces it any more)",
            path.display()
        );
    }
    println!(
        "rendered {} jobs into {}: {written} written, {unchanged} unchanged, {} removed",
        files.len(),
        out_label,
        stale.len()
    );
    Ok(())
}

/// The files `render` writes for `jobs` in `format`, and the suffix of stale agent job files.
fn output_files(
    jobs: &[CheckedJob],
    format: OutputFormat,
) -> Result<(Vec<OutputFile>, &'static str), CommandError> {
    let mut files = Vec::with_capacity(jobs.len());
    for checked in jobs {
        let file = match format {
            OutputFormat::Hcl => OutputFile {
                name: checked.job.hcl_file_name(),
                contents: checked.job.hcl.clone(),
            },
            OutputFormat::Json => {
                let mut contents =
                    serde_json::to_string_pretty(&checked.api_json).map_err(|e| CommandError {
                        exit_code: 1,
                        message: format!("cannot encode {}: {e}", checked.job.json_file_name()),
                    })?;
                contents.push('\n');
                OutputFile {
                    name: checked.job.json_file_name(),
                    contents,
                }
            }
        };
        files.push(file);
    }
    let suffix = match format {
        OutputFormat::Hcl => "-agent.nomad.hcl",
        OutputFormat::Json => "-agent.json",
    };
    Ok((files, suffix))
}

/// The `render` command line that rewrites what `--check` compared (default flags left out).
fn render_command(args: &RenderArgs) -> String {
    let mut command = "agent-orchestrator render".to_string();
    if args.inputs != crate::cli::default_inputs() {
        command.push_str(&format!(" --inputs {}", args.inputs.display()));
    }
    if args.templates != Path::new("templates") {
        command.push_str(&format!(" --templates {}", args.templates.display()));
    }
    if args.out != Path::new("jobs") {
        command.push_str(&format!(" --out {}", args.out.display()));
    }
    if args.format == OutputFormat::Json {
        command.push_str(" --format json");
    }
    command
}

/// `parse FILE`: prints the jobspec as Nomad API JSON, pretty.
pub fn run_parse(args: &ParseArgs) -> Result<(), CommandError> {
    let file = args.file.display().to_string();
    let source = std::fs::read_to_string(&args.file).map_err(|e| CommandError {
        exit_code: 1,
        message: format!("{file}: cannot read file: {e}"),
    })?;
    let json = parse_jobspec(&source, &file).map_err(|e| CommandError {
        exit_code: 2,
        message: e.to_string(),
    })?;
    let text = serde_json::to_string_pretty(&json).map_err(|e| CommandError {
        exit_code: 1,
        message: format!("{file}: cannot encode JSON: {e}"),
    })?;
    println!("{text}");
    Ok(())
}

/// `validate`: checks the inputs, renders every job in memory, parses and checks each.
pub fn run_validate(args: &ValidateArgs) -> Result<(), CommandError> {
    let inputs = load_inputs(&args.inputs)?;
    let templates = load_templates(&args.templates)?;
    let jobs = render_checked(&inputs, &templates, "")?;
    println!("ok: {} jobs", jobs.len());
    Ok(())
}
