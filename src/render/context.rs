//! The data the templates see: built from validated [`Inputs`], nothing else.
//!
//! Pure, no I/O. Every map is a `BTreeMap` and every list keeps the inputs' order, so the same
//! inputs always give the same context and the same bytes. Values a template needs in a
//! derived form (job ids, the timeout as a Nomad duration, memory in MB) are computed here
//! rather than in template logic. Strings stay raw here: templates must pass them through the
//! `hcl` helper (see [`super::escape`]).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::config::units::format_duration;
use crate::config::{AgentType, Inputs};
use crate::render::engine::{join, RenderedJob, AGENT_TEMPLATE};
use crate::render::RenderError;

/// Context of `coordinator.nomad.hcl.hbs`.
#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorContext {
    pub cluster: ClusterContext,
    /// `<cluster_name>-agent-coordinator`: the job id and the API's Consul service name.
    pub job_id: String,
    /// Consul service name of the metrics endpoint: `<job_id>-metrics`.
    pub metrics_service: String,
    pub image: String,
    /// CPU in MHz.
    pub cpu: u64,
    pub memory_mb: u64,
    /// Environment of the coordinator: names and values from the inputs, never secrets.
    pub env: BTreeMap<String, String>,
    /// The inputs as the coordinator's `--inputs` file (pretty JSON); see [`inputs_json`].
    pub inputs_json: String,
    /// With a GitHub App: the template (`[[ ]]` delimiters) that puts the webhook secret into
    /// the task's environment from the Nomad variable `nomad/jobs/<job_id>`, so the secret is in
    /// neither the job nor the inputs.
    pub github_secret_template: Option<String>,
    /// The agent jobs, written into the task for `--nomad-job-dir`.
    pub agent_jobs: Vec<ShippedJob>,
    pub shipped_left_delimiter: &'static str,
    pub shipped_right_delimiter: &'static str,
}

/// An agent job as the coordinator job carries it: a Nomad `template` that writes the
/// rendered file into the task's `local/jobs/`, where `serve --nomad-job-dir` reads it.
#[derive(Debug, Clone, Serialize)]
pub struct ShippedJob {
    /// `local/jobs/<type>-agent.nomad.hcl`.
    pub destination: String,
    /// The rendered jobspec, exactly as written to `jobs/`.
    pub hcl: String,
}

/// Template delimiters of the shipped agent jobs: chosen so rendered HCL never holds them
/// (checked: an input that does is refused rather than run as a template directive).
pub const SHIPPED_LEFT_DELIMITER: &str = "[[ao:";
pub const SHIPPED_RIGHT_DELIMITER: &str = ":ao]]";

impl ShippedJob {
    pub fn new(job: &RenderedJob, out_dir: &str) -> Result<ShippedJob, RenderError> {
        for delimiter in [SHIPPED_LEFT_DELIMITER, SHIPPED_RIGHT_DELIMITER] {
            if job.hcl.contains(delimiter) {
                return Err(RenderError::Template {
                    template: AGENT_TEMPLATE.to_string(),
                    message: format!(
                        "{}: contains `{delimiter}`, which the coordinator job uses to ship it as a Nomad template; remove it from the inputs of agent type `{}`",
                        join(out_dir, &job.hcl_file_name()),
                        job.agent_type.as_deref().unwrap_or("?")
                    ),
                });
            }
        }
        Ok(ShippedJob {
            destination: format!("local/jobs/{}", job.hcl_file_name()),
            hcl: job.hcl.clone(),
        })
    }
}

/// Key of the webhook secret in the coordinator job's Nomad variable.
pub const WEBHOOK_SECRET_VAR_KEY: &str = "github_webhook_secret";

/// Context of `agent.nomad.hcl.hbs`, one per agent type.
#[derive(Debug, Clone, Serialize)]
pub struct AgentContext {
    pub cluster: ClusterContext,
    /// `<cluster_name>-<type>-agent`: what the coordinator dispatches.
    pub job_id: String,
    /// The agent type's name (`coder`).
    pub agent_type: String,
    pub image: String,
    /// CPU in MHz.
    pub cpu: u64,
    pub memory_mb: u64,
    /// Nomad job priority, 1–100.
    pub priority: u32,
    pub max_instances: u32,
    pub capabilities: Vec<String>,
    /// `capabilities` joined with `,` (Nomad meta values are strings).
    pub capabilities_csv: String,
    /// The type's `env_vars` (the agent contract's `AO_*` variables are written by the template).
    pub env: BTreeMap<String, String>,
    /// The run-time limit of one attempt as a Nomad duration (`"30m"`).
    pub timeout: String,
    pub timeout_seconds: u64,
}

/// Cluster-wide values every template sees.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterContext {
    pub name: String,
    pub environment: String,
    pub datacenters: Vec<String>,
    /// The cluster's Nomad version, `null` when the inputs do not say.
    pub nomad_version: Option<Version>,
    /// Nomad ≥ 2.0.3: the group's `max_run_duration` is rendered and enforced by Nomad.
    pub supports_max_run_duration: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl ClusterContext {
    pub fn new(inputs: &Inputs) -> ClusterContext {
        ClusterContext {
            name: inputs.cluster_name.clone(),
            environment: inputs.environment.clone(),
            datacenters: inputs.datacenters.clone(),
            nomad_version: inputs.nomad_version.map(|(major, minor, patch)| Version {
                major,
                minor,
                patch,
            }),
            supports_max_run_duration: inputs.nomad_supports_max_run_duration(),
        }
    }
}

/// The Nomad job id of the coordinator.
pub fn coordinator_job_id(inputs: &Inputs) -> String {
    format!("{}-agent-coordinator", inputs.cluster_name)
}

/// The Nomad job id of an agent type's parameterized job.
pub fn agent_job_id(inputs: &Inputs, agent_type: &AgentType) -> String {
    format!("{}-{}-agent", inputs.cluster_name, agent_type.name)
}

impl CoordinatorContext {
    pub fn new(inputs: &Inputs, agent_jobs: Vec<ShippedJob>) -> CoordinatorContext {
        let job_id = coordinator_job_id(inputs);
        let mut env = BTreeMap::new();
        env.insert("AO_CLUSTER_NAME".to_string(), inputs.cluster_name.clone());
        env.insert("AO_ENVIRONMENT".to_string(), inputs.environment.clone());
        if let Some(url) = &inputs.webhook_url {
            env.insert("AO_GITHUB_WEBHOOK_URL".to_string(), url.clone());
        }
        if let Some(id) = inputs.github_app_id {
            env.insert("AO_GITHUB_APP_ID".to_string(), id.to_string());
        }
        if let Some(id) = inputs.github_installation_id {
            env.insert("AO_GITHUB_INSTALLATION_ID".to_string(), id.to_string());
        }
        // Only the ARN: the coordinator fetches the private key itself at run time.
        if let Some(arn) = &inputs.github_private_key_secret_arn {
            env.insert("AO_GITHUB_PRIVATE_KEY_SECRET_ARN".to_string(), arn.clone());
        }
        let github_secret_template = inputs.github_app_id.map(|_| {
            format!(
                "[[ with nomadVar \"nomad/jobs/{job_id}\" ]]GITHUB_WEBHOOK_SECRET=[[ .{WEBHOOK_SECRET_VAR_KEY} ]][[ end ]]\n"
            )
        });
        CoordinatorContext {
            github_secret_template,
            agent_jobs,
            shipped_left_delimiter: SHIPPED_LEFT_DELIMITER,
            shipped_right_delimiter: SHIPPED_RIGHT_DELIMITER,
            cluster: ClusterContext::new(inputs),
            metrics_service: format!("{job_id}-metrics"),
            job_id,
            image: inputs.coordinator_image.clone(),
            cpu: inputs.coordinator_cpu_limit,
            memory_mb: inputs.coordinator_memory_limit_mb,
            env,
            inputs_json: inputs_json(inputs),
        }
    }
}

impl AgentContext {
    pub fn new(inputs: &Inputs, agent_type: &AgentType) -> AgentContext {
        let timeout = agent_type.effective_timeout(inputs.agent_timeout);
        AgentContext {
            cluster: ClusterContext::new(inputs),
            job_id: agent_job_id(inputs, agent_type),
            agent_type: agent_type.name.clone(),
            image: agent_type.image.clone(),
            cpu: agent_type.cpu_limit,
            memory_mb: agent_type.memory_limit_mb,
            priority: agent_type.priority,
            max_instances: agent_type.max_instances,
            capabilities: agent_type.capabilities.clone(),
            capabilities_csv: agent_type.capabilities.join(","),
            env: agent_type.env_vars.clone(),
            timeout: format_duration(timeout),
            timeout_seconds: timeout.as_secs(),
        }
    }
}

/// The inputs written back in the inputs schema (a `*.tfvars.json` document), so the
/// coordinator task reads the same agent types and limits the jobs were rendered from.
///
/// Pretty JSON ending in a newline, in which `$`, `%`, `<` and `>` are written as `\u0024`, `\u0025`, `\u003c`
/// and `\u003e` (they only ever occur inside JSON strings, where the escape means the same
/// character). The text therefore contains no HCL or Nomad interpolation (`${`, `%{`) and no
/// consul-template delimiter (the template block uses `<<` / `>>`), whatever the inputs say.
pub fn inputs_json(inputs: &Inputs) -> String {
    let document = inputs_document(inputs);
    // Serializing a `Value` cannot fail (its keys are strings); fall back to compact anyway.
    let text = serde_json::to_string_pretty(&document).unwrap_or_else(|_| document.to_string());
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '$' => out.push_str("\\u0024"),
            '%' => out.push_str("\\u0025"),
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// The inputs as a JSON object in the schema's spelling (`memory_limit = "512MB"`, ...).
/// Unset optional fields are left out.
pub fn inputs_document(inputs: &Inputs) -> Value {
    let mut doc = Map::new();
    doc.insert("cluster_name".into(), json!(inputs.cluster_name));
    doc.insert("environment".into(), json!(inputs.environment));
    doc.insert("datacenters".into(), json!(inputs.datacenters));
    if let Some((major, minor, patch)) = inputs.nomad_version {
        doc.insert(
            "nomad_version".into(),
            json!(format!("{major}.{minor}.{patch}")),
        );
    }
    if let Some(url) = &inputs.webhook_url {
        doc.insert("webhook_url".into(), json!(url));
    }
    if let Some(id) = inputs.github_app_id {
        doc.insert("github_app_id".into(), json!(id));
    }
    if let Some(id) = inputs.github_installation_id {
        doc.insert("github_installation_id".into(), json!(id));
    }
    if let Some(arn) = &inputs.github_private_key_secret_arn {
        doc.insert("github_private_key_secret_arn".into(), json!(arn));
    }
    doc.insert("coordinator_image".into(), json!(inputs.coordinator_image));
    doc.insert(
        "coordinator_cpu_limit".into(),
        json!(inputs.coordinator_cpu_limit),
    );
    doc.insert(
        "coordinator_memory_limit".into(),
        json!(format!("{}MB", inputs.coordinator_memory_limit_mb)),
    );
    doc.insert("task_queue_size".into(), json!(inputs.task_queue_size));
    doc.insert(
        "agent_timeout".into(),
        json!(format_duration(inputs.agent_timeout)),
    );
    doc.insert("max_attempts".into(), json!(inputs.max_attempts));
    let types: Map<String, Value> = inputs
        .agent_types
        .iter()
        .map(|(name, t)| (name.clone(), agent_type_document(t)))
        .collect();
    doc.insert("agent_types".into(), Value::Object(types));
    Value::Object(doc)
}

fn agent_type_document(t: &AgentType) -> Value {
    let mut doc = Map::new();
    doc.insert("image".into(), json!(t.image));
    doc.insert("cpu_limit".into(), json!(t.cpu_limit));
    doc.insert(
        "memory_limit".into(),
        json!(format!("{}MB", t.memory_limit_mb)),
    );
    doc.insert("max_instances".into(), json!(t.max_instances));
    doc.insert("capabilities".into(), json!(t.capabilities));
    doc.insert("env_vars".into(), json!(t.env_vars));
    if let Some(timeout) = t.timeout {
        doc.insert("timeout".into(), json!(format_duration(timeout)));
    }
    doc.insert("priority".into(), json!(t.priority));
    if let Some(command) = &t.command {
        doc.insert("command".into(), json!(command));
    }
    doc.insert("args".into(), json!(t.args));
    if let Some(n) = t.max_attempts {
        doc.insert("max_attempts".into(), json!(n));
    }
    // Left out when empty, like the unset optional fields: the rendered coordinator job of a
    // type without tiers stays as it was.
    if !t.priority_queues.is_empty() {
        let tiers: Map<String, Value> = t
            .priority_queues
            .iter()
            .map(|tier| (tier.name.clone(), json!(tier.min_priority)))
            .collect();
        doc.insert("priority_queues".into(), Value::Object(tiers));
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{decode, source::Format};

    const INPUTS: &str = r#"{
        "cluster_name": "c1", "environment": "prod", "datacenters": ["a", "b"],
        "nomad_version": "2.0.3", "webhook_url": "https://x/y?a=%41&b=${z}",
        "github_app_id": 1, "github_installation_id": 2,
        "github_private_key_secret_arn": "arn:aws:secretsmanager:r:1:secret:k",
        "coordinator_memory_limit": "1GB", "agent_timeout": "45m", "max_attempts": 4,
        "agent_types": {
            "zeta": {"image": "z", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": 1},
            "alpha": {"image": "a<b>", "cpu_limit": 2000, "memory_limit": "2GB", "max_instances": 3,
                      "capabilities": ["x", "y"], "env_vars": {"B": "2", "A": "$${q} %{r}"},
                      "timeout": "90s", "priority": 70, "command": "run", "args": ["-v"],
                      "max_attempts": 2, "priority_queues": {"urgent": 10, "low_1": -5}}
        }
    }"#;

    fn inputs() -> Inputs {
        decode(INPUTS, Format::Json, "inputs.json").expect("test inputs are valid")
    }

    #[test]
    fn inputs_json_decodes_back_to_the_same_inputs() {
        let inputs = inputs();
        let text = inputs_json(&inputs);
        let again = decode(&text, Format::Json, "inputs.json").expect("round trip decodes");
        assert_eq!(again, inputs);
    }

    #[test]
    fn inputs_json_has_no_interpolation_or_delimiters() {
        let text = inputs_json(&inputs());
        for needle in ["$", "%", "<", ">"] {
            assert!(!text.contains(needle), "{needle:?} in {text}");
        }
    }

    #[test]
    fn agent_context_derives_ids_timeout_and_sorted_env() {
        let inputs = inputs();
        let alpha = AgentContext::new(&inputs, &inputs.agent_types["alpha"]);
        assert_eq!(alpha.job_id, "c1-alpha-agent");
        assert_eq!(alpha.timeout, "90s");
        assert_eq!(alpha.memory_mb, 2048);
        assert_eq!(alpha.capabilities_csv, "x,y");
        assert_eq!(alpha.env.keys().collect::<Vec<_>>(), ["A", "B"]);
        assert!(alpha.cluster.supports_max_run_duration);
        let zeta = AgentContext::new(&inputs, &inputs.agent_types["zeta"]);
        assert_eq!(zeta.timeout, "45m", "falls back to agent_timeout");
    }

    #[test]
    fn coordinator_env_never_carries_more_than_the_secret_arn() {
        let ctx = CoordinatorContext::new(&inputs(), Vec::new());
        assert_eq!(ctx.job_id, "c1-agent-coordinator");
        assert_eq!(ctx.metrics_service, "c1-agent-coordinator-metrics");
        assert_eq!(ctx.env["AO_GITHUB_APP_ID"], "1");
        assert_eq!(
            ctx.env["AO_GITHUB_PRIVATE_KEY_SECRET_ARN"],
            "arn:aws:secretsmanager:r:1:secret:k"
        );
        assert!(ctx
            .env
            .keys()
            .all(|k| !k.contains("PRIVATE_KEY") || k.ends_with("_ARN")));
    }
}
