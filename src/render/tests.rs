//! Tests of the generator as a whole: the golden files in `jobs/`, escaping end to end through
//! the real jobspec parser, determinism, and template failures.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::files::{self, Difference, OutputFile};
use super::*;
use crate::config::{decode, source::Format};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn repo_templates() -> Templates {
    match load_templates(&repo().join("templates")) {
        Ok(t) => t,
        Err(e) => panic!("templates/ does not load: {e}"),
    }
}

fn render_ok(inputs: &Inputs) -> Vec<CheckedJob> {
    match render_checked(inputs, &repo_templates(), "jobs") {
        Ok(jobs) => jobs,
        Err(e) => panic!("render failed:\n{e}"),
    }
}

fn inputs_from_json(json: &str) -> Inputs {
    match decode(json, Format::Json, "test.tfvars.json") {
        Ok(inputs) => inputs,
        Err(e) => panic!("test inputs are invalid:\n{e}"),
    }
}

fn job<'a>(jobs: &'a [CheckedJob], name: &str) -> &'a Value {
    match jobs.iter().find(|j| j.job.name == name) {
        Some(j) => &j.api_json["Job"],
        None => panic!("no job {name}"),
    }
}

/// `render --check` as a test: `jobs/` is exactly what the default inputs and `templates/`
/// render to. After changing either, run `cargo run -- render` and review the diff.
#[test]
fn golden_jobs_match_the_default_inputs() {
    let inputs = match config::load_inputs(&repo().join(crate::cli::default_inputs())) {
        Ok(inputs) => inputs,
        Err(e) => panic!("default inputs are invalid:\n{e}"),
    };
    let jobs = render_ok(&inputs);
    assert_eq!(jobs.len(), 1 + inputs.agent_types.len());
    let files: Vec<OutputFile> = jobs
        .iter()
        .map(|j| OutputFile {
            name: j.job.hcl_file_name(),
            contents: j.job.hcl.clone(),
        })
        .collect();
    let differences = match files::compare(&repo().join("jobs"), &files, "-agent.nomad.hcl") {
        Ok(d) => d,
        Err(e) => panic!("cannot read jobs/: {e}"),
    };
    assert_eq!(
        differences,
        Vec::<(String, Difference)>::new(),
        "jobs/ is out of date: run `cargo run -- render` and review the diff"
    );
}

const HOSTILE: &str =
    "x ${attr.kernel.name} \"q\" %{if} \\ \n}\njob \"evil\" { <<EOT $${y} %%{z} \u{1}";

/// Every operator string that reaches a job comes back from parse(render(...)) unchanged.
#[test]
fn hostile_strings_round_trip_byte_for_byte() {
    let hostile = serde_json::to_string(HOSTILE).unwrap_or_default();
    let inputs = inputs_from_json(&format!(
        r#"{{"cluster_name": "c", "environment": {hostile}, "datacenters": [{hostile}, "dc2"],
            "webhook_url": {hostile}, "github_private_key_secret_arn": {hostile},
            "coordinator_image": {hostile},
            "agent_types": {{"coder": {{"image": {hostile}, "cpu_limit": 1, "memory_limit": "64MB",
                "max_instances": 1, "capabilities": [{hostile}, "b"], "env_vars": {{"V": {hostile}}}}}}}}}"#
    ));
    let jobs = render_ok(&inputs);
    let agent = job(&jobs, "coder-agent");
    let task = &agent["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Config"]["image"], HOSTILE);
    assert_eq!(task["Env"]["V"], HOSTILE);
    assert_eq!(agent["Datacenters"], serde_json::json!([HOSTILE, "dc2"]));
    assert_eq!(agent["Meta"]["environment"], HOSTILE);
    assert_eq!(agent["Meta"]["capabilities"], format!("{HOSTILE},b"));

    let coordinator = job(&jobs, "coordinator");
    let task = &coordinator["TaskGroups"][0]["Tasks"][0];
    assert_eq!(task["Config"]["image"], HOSTILE);
    assert_eq!(task["Env"]["AO_GITHUB_WEBHOOK_URL"], HOSTILE);
    assert_eq!(task["Env"]["AO_GITHUB_PRIVATE_KEY_SECRET_ARN"], HOSTILE);
    // The coordinator's inputs file is the inputs, and carries no interpolation.
    let data = task["Templates"][0]["EmbeddedTmpl"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !data.contains("${") && !data.contains("%{") && !data.contains("<<"),
        "{data}"
    );
    assert_eq!(decode(data, Format::Json, "inputs.json").ok(), Some(inputs));
}

/// The agent contract's Nomad interpolations are written by the template and stay verbatim.
#[test]
fn agent_jobs_carry_the_contract_and_the_inputs() {
    let inputs = inputs_from_json(
        r#"{"cluster_name": "prod", "agent_timeout": "45m", "agent_types": {
            "coder": {"image": "img:1", "cpu_limit": 1500, "memory_limit": "3GB", "max_instances": 2,
                      "capabilities": ["code", "git"], "env_vars": {"B": "2", "A": "1"}, "priority": 80}}}"#,
    );
    let jobs = render_ok(&inputs);
    let agent = job(&jobs, "coder-agent");
    assert_eq!(agent["ID"], "prod-coder-agent");
    assert_eq!(agent["Type"], "batch");
    assert_eq!(agent["Priority"], 80);
    assert_eq!(agent["ParameterizedJob"]["Payload"], "required");
    assert_eq!(
        agent["ParameterizedJob"]["MetaRequired"],
        serde_json::json!(["task_id"])
    );
    assert_eq!(
        agent["ParameterizedJob"]["MetaOptional"],
        serde_json::json!(["attempt", "result_queue_url"])
    );
    // Defaulted so the interpolation below is empty when the dispatch carries no URL.
    assert_eq!(agent["Meta"]["result_queue_url"], "");
    let group = &agent["TaskGroups"][0];
    assert_eq!(group["RestartPolicy"]["Attempts"], 0);
    assert_eq!(group["RestartPolicy"]["Mode"], "fail");
    assert_eq!(group["ReschedulePolicy"]["Attempts"], 0);
    assert_eq!(group["ReschedulePolicy"]["Unlimited"], false);
    let task = &group["Tasks"][0];
    assert_eq!(task["DispatchPayload"]["File"], "task.json");
    assert_eq!(task["Resources"]["CPU"], 1500);
    assert_eq!(task["Resources"]["MemoryMB"], 3072);
    assert_eq!(
        task["Env"],
        serde_json::json!({
            "A": "1", "AO_AGENT_TYPE": "coder", "AO_ATTEMPT": "${NOMAD_META_attempt}",
            "AO_RESULT_FILE": "${NOMAD_TASK_DIR}/result.json", "AO_TASK_FILE": "${NOMAD_TASK_DIR}/task.json",
            "AO_RESULT_QUEUE_URL": "${NOMAD_META_result_queue_url}",
            "AO_TASK_ID": "${NOMAD_META_task_id}", "B": "2"
        })
    );
    assert!(
        group.get("MaxRunDuration").is_none(),
        "no nomad_version: the watchdog alone enforces it"
    );
    assert!(jobs[1]
        .job
        .hcl
        .contains("# Timeout \"45m\": enforced by the coordinator's watchdog"));
}

#[test]
fn max_run_duration_needs_nomad_2_0_3() {
    for (version, expected) in [
        ("1.10.5", None),
        ("2.0.2", None),
        ("2.0.3", Some(1_800_000_000_000_i64)),
        ("2.1.0", Some(1_800_000_000_000)),
    ] {
        let inputs = inputs_from_json(&format!(
            r#"{{"cluster_name": "c", "nomad_version": "{version}", "agent_types": {{
                "a": {{"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1, "timeout": "30m"}}}}}}"#
        ));
        let jobs = render_ok(&inputs);
        let group = &job(&jobs, "a-agent")["TaskGroups"][0];
        assert_eq!(
            group.get("MaxRunDuration").and_then(Value::as_i64),
            expected,
            "nomad {version}"
        );
        assert!(
            jobs[1].job.hcl.contains("max_run_duration"),
            "the comment names it either way"
        );
    }
}

#[test]
fn coordinator_job_has_services_ports_and_no_secrets() {
    let inputs = inputs_from_json(
        r#"{"cluster_name": "c", "github_app_id": 5, "github_installation_id": 6,
            "webhook_url": "https://h/w", "github_private_key_secret_arn": "arn:k",
            "coordinator_cpu_limit": 700, "coordinator_memory_limit": "1GB",
            "agent_types": {"a": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1}}}"#,
    );
    let jobs = render_ok(&inputs);
    let c = job(&jobs, "coordinator");
    assert_eq!(c["ID"], "c-agent-coordinator");
    assert_eq!(c["Type"], "service");
    let group = &c["TaskGroups"][0];
    let ports: Vec<(&str, i64)> = group["Networks"][0]["DynamicPorts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["Label"].as_str().unwrap_or_default(),
                p["To"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(ports, [("http", 8080), ("metrics", 9090)]);
    let services = group["Services"].as_array().cloned().unwrap_or_default();
    assert_eq!(services[0]["Name"], "c-agent-coordinator");
    assert_eq!(services[0]["Checks"][0]["Path"], "/health");
    assert_eq!(services[1]["PortLabel"], "metrics");
    assert!(services[1]["Tags"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t == "prometheus.io/scrape=true"));
    let task = &group["Tasks"][0];
    assert_eq!(task["Resources"]["CPU"], 700);
    assert_eq!(task["Resources"]["MemoryMB"], 1024);
    let args: Vec<&str> = task["Config"]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for pair in [
        ["--executor", "nomad"],
        ["--queue", "sqs"],
        ["--store", "dynamodb"],
        ["--register", "consul"],
        ["--metrics-listen", "0.0.0.0:9090"],
    ] {
        assert!(args.windows(2).any(|w| w == pair), "{pair:?} in {args:?}");
    }
    assert_eq!(task["Env"]["AO_GITHUB_APP_ID"], "5");
    assert_eq!(task["Env"]["AO_GITHUB_INSTALLATION_ID"], "6");
    assert_eq!(task["Env"]["AO_GITHUB_WEBHOOK_URL"], "https://h/w");
    assert_eq!(task["Env"]["AO_GITHUB_PRIVATE_KEY_SECRET_ARN"], "arn:k");
    let env_keys: Vec<&String> = task["Env"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert!(
        env_keys
            .iter()
            .all(|k| !k.contains("SECRET") || k.ends_with("_ARN")),
        "{env_keys:?}"
    );
    // The webhook secret reaches the environment at run time, from the job's own Nomad
    // variable; the job holds only the template that reads it.
    let secret_templates: Vec<&Value> = task["Templates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["Envvars"] == true)
        .collect();
    assert_eq!(secret_templates.len(), 1, "{:#}", task["Templates"]);
    let t = secret_templates[0];
    assert_eq!(
        t["EmbeddedTmpl"],
        "[[ with nomadVar \"nomad/jobs/c-agent-coordinator\" ]]GITHUB_WEBHOOK_SECRET=[[ .github_webhook_secret ]][[ end ]]\n"
    );
    assert_eq!(
        (&t["LeftDelim"], &t["RightDelim"]),
        (&Value::from("[["), &Value::from("]]"))
    );
    assert!(t["DestPath"].as_str().unwrap_or("").starts_with("secrets/"));

    // The agent jobs travel inside the coordinator job, byte for byte as `render` writes them,
    // to where --nomad-job-dir points.
    let shipped: Vec<(&str, &str)> = task["Templates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["DestPath"].as_str()?, t["EmbeddedTmpl"].as_str()?)))
        .filter(|(dest, _)| dest.starts_with("local/jobs/"))
        .collect();
    let agent = jobs
        .iter()
        .find(|j| j.job.name == "a-agent")
        .expect("agent job");
    assert_eq!(
        shipped,
        [("local/jobs/a-agent.nomad.hcl", agent.job.hcl.as_str())]
    );
    assert!(
        args.windows(2)
            .any(|w| w == ["--nomad-job-dir", "${NOMAD_TASK_DIR}/jobs"]),
        "{args:?}"
    );

    // Without a GitHub App there is no secret to read.
    let plain = inputs_from_json(
        r#"{"cluster_name": "c", "agent_types": {"a": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1}}}"#,
    );
    let jobs = render_ok(&plain);
    let task = &job(&jobs, "coordinator")["TaskGroups"][0]["Tasks"][0];
    assert!(
        task["Templates"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|t| t["Envvars"] != true),
        "{:#}",
        task["Templates"]
    );
}

#[test]
fn rendering_is_deterministic_whatever_the_input_order() {
    let a = inputs_from_json(
        r#"{"cluster_name": "c", "agent_types": {
            "b": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1, "env_vars": {"Y": "1", "X": "2"}},
            "a": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1}}}"#,
    );
    let b = inputs_from_json(
        r#"{"agent_types": {
            "a": {"max_instances": 1, "memory_limit": "64MB", "cpu_limit": 1, "image": "i"},
            "b": {"env_vars": {"X": "2", "Y": "1"}, "image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1}},
            "cluster_name": "c"}"#,
    );
    let hcl = |inputs: &Inputs| {
        render_ok(inputs)
            .into_iter()
            .map(|j| (j.job.name, j.job.hcl))
            .collect::<Vec<_>>()
    };
    let first = hcl(&a);
    assert_eq!(first, hcl(&a));
    assert_eq!(first, hcl(&b));
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["coordinator", "a-agent", "b-agent"]);
}

fn agent_template() -> String {
    std::fs::read_to_string(repo().join("templates").join(AGENT_TEMPLATE)).unwrap_or_default()
}

fn coordinator_template() -> String {
    std::fs::read_to_string(repo().join("templates").join(COORDINATOR_TEMPLATE)).unwrap_or_default()
}

fn small_inputs() -> Inputs {
    inputs_from_json(
        r#"{"cluster_name": "c", "agent_types": {"a": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB", "max_instances": 1}}}"#,
    )
}

/// Renders with the repository's coordinator template and `agent` as the agent template.
fn render_with_agent_template(agent: &str) -> String {
    let templates = match Templates::from_sources(&coordinator_template(), agent, "tpl") {
        Ok(t) => t,
        Err(e) => return e.to_string(),
    };
    match render_checked(&small_inputs(), &templates, "out") {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn template_bugs_name_the_template_the_file_and_the_line() {
    let template = agent_template();
    assert_eq!(render_with_agent_template(&template), "ok");
    let cases: [(String, &[&str]); 5] = [
        // A misspelt variable (strict mode).
        (
            template.replacen("{{hcl image}}", "{{hcl imaeg}}", 1),
            &[
                "tpl/agent.nomad.hcl.hbs:",
                "imaeg",
                "rendering out/a-agent.nomad.hcl",
            ],
        ),
        // Handlebars syntax.
        (
            template.replacen("{{/each}}", "", 1),
            &["tpl/agent.nomad.hcl.hbs:", "broken template"],
        ),
        // Renders, but is not a valid jobspec.
        (
            template.replacen("dispatch_payload {", "dispatch_payload", 1),
            &[
                "out/a-agent.nomad.hcl:",
                "rendered from tpl/agent.nomad.hcl.hbs",
            ],
        ),
        // Valid jobspec, but not dispatchable.
        (
            template.replacen("meta_required = [\"task_id\"]", "meta_required = []", 1),
            &["out/a-agent.nomad.hcl: Job.ParameterizedJob.MetaRequired"],
        ),
        (
            template.replacen("job {{hcl job_id}}", "job \"other\"", 1),
            &["out/a-agent.nomad.hcl: Job.ID: is \"other\""],
        ),
    ];
    for (source, needles) in cases {
        let error = render_with_agent_template(&source);
        for needle in needles {
            assert!(error.contains(needle), "expected {needle:?} in:\n{error}");
        }
    }
}

#[test]
fn missing_template_is_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-templates");
    let error = load_templates(&dir)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("no-such-templates/coordinator.nomad.hcl.hbs: cannot read template"),
        "{error}"
    );
}

#[test]
fn an_agent_job_holding_the_shipping_delimiter_is_refused() {
    let inputs = inputs_from_json(
        r#"{"cluster_name": "c", "agent_types": {"a": {"image": "i", "cpu_limit": 1, "memory_limit": "64MB",
            "max_instances": 1, "env_vars": {"X": "[[ao: env \"AWS_SECRET_ACCESS_KEY\" :ao]]"}}}}"#,
    );
    let error = render_jobs(&inputs, &repo_templates(), "jobs")
        .expect_err("a template directive in an input")
        .to_string();
    assert!(
        error.contains("jobs/a-agent.nomad.hcl") && error.contains("agent type `a`"),
        "{error}"
    );
}
