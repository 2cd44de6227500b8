//! The input schema shared by `render`, `validate`, `serve` and the Terragrunt module
//! (DESIGN.md §4), read from a `terragrunt.hcl`, a `*.tfvars(.json)` or a config file.
//!
//! [`INPUT_FIELDS`] and [`AGENT_TYPE_FIELDS`] are the schema: names, Terraform types, defaults
//! and descriptions. Decoding fills absent fields from those defaults and checks every value,
//! collecting all errors, each naming the file, the line (HCL) and the field path.

pub mod source;
pub mod units;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use source::{Format, Node, Value};

/// Validated inputs: everything the generator and the coordinator read from the operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    pub cluster_name: String,
    pub environment: String,
    pub datacenters: Vec<String>,
    /// The cluster's Nomad version, when known; `max_run_duration` needs ≥ 2.0.3.
    pub nomad_version: Option<(u64, u64, u64)>,
    pub webhook_url: Option<String>,
    pub github_app_id: Option<u64>,
    pub github_installation_id: Option<u64>,
    pub github_private_key_secret_arn: Option<String>,
    pub coordinator_image: String,
    pub coordinator_cpu_limit: u64,
    pub coordinator_memory_limit_mb: u64,
    /// Most tasks one agent type may hold queued; submits beyond it answer 429.
    pub task_queue_size: u64,
    /// Default run-time limit of one attempt, unless the agent type sets `timeout`.
    pub agent_timeout: Duration,
    pub max_attempts: u32,
    pub agent_types: BTreeMap<String, AgentType>,
}

/// One agent type: what runs, with which limits, how many at once.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentType {
    pub name: String,
    pub image: String,
    /// CPU in MHz, as Nomad's `cpu`.
    pub cpu_limit: u64,
    pub memory_limit_mb: u64,
    pub max_instances: u32,
    pub capabilities: Vec<String>,
    pub env_vars: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// Nomad job priority (1–100) of this type's child jobs.
    pub priority: u32,
    /// Program the local executor runs; `None` for `echo` means the built-in echo agent.
    pub command: Option<String>,
    pub args: Vec<String>,
    pub max_attempts: Option<u32>,
    /// SQS priority tiers (`priority_queues`), highest minimum first; empty for one queue.
    pub priority_queues: Vec<PriorityTier>,
}

/// One SQS priority tier of an agent type: a queue of its own
/// (`<cluster_name>-<type>-tasks-<name>`) for the tasks whose priority is at least
/// `min_priority` and below the next higher tier's minimum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityTier {
    pub name: String,
    pub min_priority: i64,
}

impl AgentType {
    /// The run-time limit of one attempt of this type.
    pub fn effective_timeout(&self, inputs_default: Duration) -> Duration {
        self.timeout.unwrap_or(inputs_default)
    }
}

impl Inputs {
    pub fn max_attempts_for(&self, agent_type: &AgentType) -> u32 {
        agent_type.max_attempts.unwrap_or(self.max_attempts)
    }

    /// Whether the cluster's Nomad enforces a group's `max_run_duration` (Nomad ≥ 2.0.3).
    pub fn nomad_supports_max_run_duration(&self) -> bool {
        self.nomad_version.is_some_and(|v| v >= (2, 0, 3))
    }

    /// The inputs the zero-setup `serve` runs with: one built-in `echo` agent type.
    pub fn embedded_default() -> Inputs {
        let src = r#"{"cluster_name": "local", "agent_types": {"echo": {
            "image": "builtin:echo", "cpu_limit": 100, "memory_limit": "64MB", "max_instances": 4}}}"#;
        match decode(src, Format::Json, "<built-in defaults>") {
            Ok(inputs) => inputs,
            // The literal above is part of the program; failing here is a bug in this file.
            Err(err) => unreachable!("built-in default inputs are invalid: {err}"),
        }
    }
}

/// How a schema field is typed, in our decoder and in Terraform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Number,
    /// A memory size string such as `"512MB"`.
    Size,
    /// A duration string such as `"30m"` (a number means seconds).
    Duration,
    StringList,
    StringMap,
    /// An object of numbers keyed by name (`priority_queues`).
    NumberMap,
    AgentTypes,
}

impl Kind {
    /// The Terraform type constraint of a variable of this kind.
    pub fn terraform_type(self) -> String {
        match self {
            Kind::String | Kind::Size | Kind::Duration => "string".into(),
            Kind::Number => "number".into(),
            Kind::StringList => "list(string)".into(),
            Kind::StringMap => "map(string)".into(),
            Kind::NumberMap => "map(number)".into(),
            Kind::AgentTypes => {
                let fields: Vec<String> = AGENT_TYPE_FIELDS
                    .iter()
                    .map(|f| {
                        let ty = f.kind.terraform_type();
                        let ty = match f.default {
                            Default::Required => ty,
                            Default::Null => format!("optional({ty})"),
                            Default::Json(v) => format!("optional({ty}, {v})"),
                        };
                        format!("{} = {ty}", f.name)
                    })
                    .collect();
                format!("map(object({{ {} }}))", fields.join(", "))
            }
        }
    }
}

/// A field's default: required, absent (`null`), or a value written as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    Required,
    Null,
    Json(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: Kind,
    pub default: Default,
    pub description: &'static str,
}

const fn field(
    name: &'static str,
    kind: Kind,
    default: Default,
    description: &'static str,
) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        default,
        description,
    }
}

/// Top-level inputs, in the order the module's `variables.tf` declares them.
pub const INPUT_FIELDS: &[FieldSpec] = &[
    field("cluster_name", Kind::String, Default::Required, "Name prefix of every job, queue, table and role (lowercase letters, digits, '-')."),
    field("environment", Kind::String, Default::Json("\"dev\""), "Deployment environment, e.g. dev, staging, prod."),
    field("datacenters", Kind::StringList, Default::Json("[\"dc1\"]"), "Nomad datacenters the jobs may run in."),
    field("nomad_version", Kind::String, Default::Null, "Nomad version of the cluster; from 2.0.3 on, agent timeouts are also rendered as max_run_duration."),
    field("webhook_url", Kind::String, Default::Null, "Public URL GitHub delivers App webhooks to."),
    field("github_app_id", Kind::Number, Default::Null, "GitHub App id."),
    field("github_installation_id", Kind::Number, Default::Null, "GitHub App installation id."),
    field("github_private_key_secret_arn", Kind::String, Default::Null, "ARN of the Secrets Manager secret holding the App's private key."),
    field("coordinator_image", Kind::String, Default::Json("\"ghcr.io/agent-orchestrator/agent-orchestrator:0.1.0\""), "Container image of the coordinator."),
    field("coordinator_cpu_limit", Kind::Number, Default::Json("500"), "Coordinator CPU in MHz."),
    field("coordinator_memory_limit", Kind::Size, Default::Json("\"512MB\""), "Coordinator memory, e.g. \"512MB\"."),
    field("task_queue_size", Kind::Number, Default::Json("1000"), "Most tasks one agent type may hold queued; more are refused with 429."),
    field("agent_timeout", Kind::Duration, Default::Json("\"30m\""), "Default run-time limit of one agent attempt."),
    field("max_attempts", Kind::Number, Default::Json("3"), "Default attempts per task before it ends failed."),
    field("agent_types", Kind::AgentTypes, Default::Required, "Agent types: image, limits and concurrency of each."),
];

/// Fields of one `agent_types` entry.
pub const AGENT_TYPE_FIELDS: &[FieldSpec] = &[
    field(
        "image",
        Kind::String,
        Default::Required,
        "Container image of the agent.",
    ),
    field("cpu_limit", Kind::Number, Default::Required, "CPU in MHz."),
    field(
        "memory_limit",
        Kind::Size,
        Default::Required,
        "Memory, e.g. \"2GB\".",
    ),
    field(
        "max_instances",
        Kind::Number,
        Default::Required,
        "Most attempts of this type running at once.",
    ),
    field(
        "capabilities",
        Kind::StringList,
        Default::Json("[]"),
        "Free-form capability tags, passed to the agent.",
    ),
    field(
        "env_vars",
        Kind::StringMap,
        Default::Json("{}"),
        "Environment of the agent (never secrets).",
    ),
    field(
        "timeout",
        Kind::Duration,
        Default::Null,
        "Run-time limit of one attempt; defaults to agent_timeout.",
    ),
    field(
        "priority",
        Kind::Number,
        Default::Json("50"),
        "Nomad job priority (1-100) of this type's jobs.",
    ),
    field(
        "command",
        Kind::String,
        Default::Null,
        "Program the local executor runs (embedded deployment).",
    ),
    field(
        "args",
        Kind::StringList,
        Default::Json("[]"),
        "Arguments of command.",
    ),
    field(
        "max_attempts",
        Kind::Number,
        Default::Null,
        "Attempts per task; defaults to max_attempts.",
    ),
    field(
        "priority_queues",
        Kind::NumberMap,
        Default::Json("{}"),
        "SQS priority tiers: tier name -> lowest task priority it takes, each tier its own queue <cluster_name>-<type>-tasks-<tier>, received highest first (the embedded queue ignores it: it is strictly ordered already).",
    ),
];

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Everything wrong with one inputs file. Display prints one line per problem:
/// `FILE:LINE: PATH: MESSAGE`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct InputError {
    pub file: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
            }
            if e.path.is_empty() {
                write!(f, ": {}", e.message)?;
            } else {
                write!(f, ": {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl InputError {
    fn single(file: &str, line: Option<usize>, path: &str, message: String) -> InputError {
        InputError {
            file: file.to_string(),
            errors: vec![FieldError {
                path: path.to_string(),
                line,
                message,
            }],
        }
    }
}

/// Reads and validates an inputs file (format by extension: `.json` or HCL).
pub fn load_inputs(path: &Path) -> Result<Inputs, InputError> {
    let (root, file) = load_document(path)?;
    decode_node(&root, &file, &[])
}

/// Reads a document into its located tree, for callers that take extra keys (the config file).
pub fn load_document(path: &Path) -> Result<(Node, String), InputError> {
    let file = path.display().to_string();
    let source = std::fs::read_to_string(path)
        .map_err(|e| InputError::single(&file, None, "", format!("cannot read file: {e}")))?;
    let root = source::read_document(&source, Format::from_path(&file))
        .map_err(|e| InputError::single(&file, e.line, "", e.message))?;
    Ok((root, file))
}

/// Decodes inputs from text; `file` names the source in errors.
pub fn decode(source: &str, format: Format, file: &str) -> Result<Inputs, InputError> {
    let root = source::read_document(source, format)
        .map_err(|e| InputError::single(file, e.line, "", e.message))?;
    decode_node(&root, file, &[])
}

/// Decodes an already-read document. Keys in `other_keys` belong to the caller (e.g. the
/// config file's `serve` block) and are skipped instead of reported as unknown.
pub fn decode_node(root: &Node, file: &str, other_keys: &[&str]) -> Result<Inputs, InputError> {
    let mut decoder = Decoder::default();
    let inputs = decoder.inputs(root, other_keys);
    match inputs {
        Some(inputs) if decoder.errors.is_empty() => Ok(inputs),
        _ => Err(InputError {
            file: file.to_string(),
            errors: decoder.errors,
        }),
    }
}

#[derive(Default)]
struct Decoder {
    errors: Vec<FieldError>,
}

/// The fields of one object after schema checks: each known field's node, defaults filled in.
struct Fields {
    values: BTreeMap<&'static str, Node>,
}

impl Fields {
    fn take(&mut self, name: &str) -> Node {
        self.values.remove(name).unwrap_or(Node {
            value: Value::Null,
            line: None,
        })
    }
}

impl Decoder {
    fn error(&mut self, path: &str, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    fn inputs(&mut self, root: &Node, other_keys: &[&str]) -> Option<Inputs> {
        let mut f = self.fields(root, "", INPUT_FIELDS, other_keys)?;
        let cluster_name = self.name(&f.take("cluster_name"), "cluster_name");
        let environment = self.string(&f.take("environment"), "environment");
        let datacenters = self.string_list(&f.take("datacenters"), "datacenters");
        let nomad_version = self.optional(&f.take("nomad_version"), "nomad_version", |d, n, p| {
            let text = d.string(n, p)?;
            units::parse_version(&text)
                .map_err(|e| d.error(p, n.line, e))
                .ok()
        });
        let webhook_url = self.optional(&f.take("webhook_url"), "webhook_url", Self::string);
        let github_app_id = self.optional(&f.take("github_app_id"), "github_app_id", |d, n, p| {
            d.integer(n, p, 1, u64::MAX)
        });
        let github_installation_id = self.optional(
            &f.take("github_installation_id"),
            "github_installation_id",
            |d, n, p| d.integer(n, p, 1, u64::MAX),
        );
        let github_private_key_secret_arn = self.optional(
            &f.take("github_private_key_secret_arn"),
            "github_private_key_secret_arn",
            Self::string,
        );
        let coordinator_image =
            self.non_empty_string(&f.take("coordinator_image"), "coordinator_image");
        let coordinator_cpu_limit = self.integer(
            &f.take("coordinator_cpu_limit"),
            "coordinator_cpu_limit",
            1,
            1_000_000,
        );
        let coordinator_memory_limit_mb = self.size(
            &f.take("coordinator_memory_limit"),
            "coordinator_memory_limit",
        );
        let task_queue_size = self.integer(
            &f.take("task_queue_size"),
            "task_queue_size",
            1,
            100_000_000,
        );
        let agent_timeout = self.duration(&f.take("agent_timeout"), "agent_timeout");
        let max_attempts = self.integer(&f.take("max_attempts"), "max_attempts", 1, 100);
        let agent_types = self.agent_types(&f.take("agent_types"), cluster_name.as_deref());
        Some(Inputs {
            cluster_name: cluster_name?,
            environment: environment?,
            datacenters: datacenters?,
            nomad_version: nomad_version?,
            webhook_url: webhook_url?,
            github_app_id: github_app_id?,
            github_installation_id: github_installation_id?,
            github_private_key_secret_arn: github_private_key_secret_arn?,
            coordinator_image: coordinator_image?,
            coordinator_cpu_limit: coordinator_cpu_limit?,
            coordinator_memory_limit_mb: coordinator_memory_limit_mb?,
            task_queue_size: task_queue_size?,
            agent_timeout: agent_timeout?,
            max_attempts: max_attempts? as u32,
            agent_types: agent_types?,
        })
    }

    fn agent_types(
        &mut self,
        node: &Node,
        cluster_name: Option<&str>,
    ) -> Option<BTreeMap<String, AgentType>> {
        let entries = self.map(node, "agent_types")?;
        if entries.is_empty() {
            self.error("agent_types", node.line, "needs at least one agent type");
            return None;
        }
        let mut types = BTreeMap::new();
        let mut ok = true;
        for (name, entry) in entries {
            let path = format!("agent_types.{name}");
            if types.contains_key(name) {
                self.error(&path, entry.line, format!("duplicate agent type `{name}`"));
                ok = false;
                continue;
            }
            if !is_name(name) {
                self.error(&path, entry.line, format!("agent type name `{name}` must be lowercase letters, digits and '-' (it names jobs and queues)"));
                ok = false;
                continue;
            }
            if let Some(cluster) = cluster_name {
                let queue = task_queue_name(cluster, name);
                if queue.len() > MAX_QUEUE_NAME {
                    self.error(&path, entry.line, format!("queue name `{queue}` is longer than SQS's 80 characters: shorten cluster_name or the type name"));
                    ok = false;
                }
            }
            match self.agent_type(name, entry, &path, cluster_name) {
                Some(agent) => {
                    types.insert(name.clone(), agent);
                }
                None => ok = false,
            }
        }
        ok.then_some(types)
    }

    fn agent_type(
        &mut self,
        name: &str,
        node: &Node,
        path: &str,
        cluster_name: Option<&str>,
    ) -> Option<AgentType> {
        let mut f = self.fields(node, path, AGENT_TYPE_FIELDS, &[])?;
        let p = |field: &str| format!("{path}.{field}");
        let image = self.non_empty_string(&f.take("image"), &p("image"));
        let cpu_limit = self.integer(&f.take("cpu_limit"), &p("cpu_limit"), 1, 1_000_000);
        let memory_node = f.take("memory_limit");
        let memory_limit_mb = self.size(&memory_node, &p("memory_limit"));
        if memory_limit_mb.is_some_and(|mb| mb < 10) {
            self.error(
                &p("memory_limit"),
                memory_node.line,
                "Nomad needs at least 10MB",
            );
        }
        let max_instances = self.integer(&f.take("max_instances"), &p("max_instances"), 1, 100_000);
        let capabilities = self.string_list(&f.take("capabilities"), &p("capabilities"));
        let env_vars = self.env_vars(&f.take("env_vars"), &p("env_vars"));
        let timeout = self.optional(&f.take("timeout"), &p("timeout"), Self::duration);
        let priority = self.integer(&f.take("priority"), &p("priority"), 1, 100);
        let command = self.optional(&f.take("command"), &p("command"), Self::non_empty_string);
        let args = self.string_list(&f.take("args"), &p("args"));
        let max_attempts = self.optional(&f.take("max_attempts"), &p("max_attempts"), |d, n, p| {
            d.integer(n, p, 1, 100)
        });
        let queue_prefix = cluster_name.map(|cluster| task_queue_name(cluster, name));
        let priority_queues = self.priority_tiers(
            &f.take("priority_queues"),
            &p("priority_queues"),
            queue_prefix.as_deref(),
        );
        Some(AgentType {
            name: name.to_string(),
            image: image?,
            cpu_limit: cpu_limit?,
            memory_limit_mb: memory_limit_mb.filter(|mb| *mb >= 10)?,
            max_instances: max_instances? as u32,
            capabilities: capabilities?,
            env_vars: env_vars?,
            timeout: timeout?,
            priority: priority? as u32,
            command: command?,
            args: args?,
            max_attempts: max_attempts?.map(|n| n as u32),
            priority_queues: priority_queues?,
        })
    }

    /// `priority_queues`: tier name → minimum task priority, decoded as tiers sorted by
    /// minimum, highest first (the order a receive takes them in). `queue_prefix` is the
    /// type's task queue name, when the cluster name is known, to check the tiers' queue names.
    fn priority_tiers(
        &mut self,
        node: &Node,
        path: &str,
        queue_prefix: Option<&str>,
    ) -> Option<Vec<PriorityTier>> {
        let entries = self.map(node, path)?;
        let mut tiers: Vec<PriorityTier> = Vec::new();
        let mut ok = true;
        for (name, value) in entries {
            let p = format!("{path}.{name}");
            match self.priority_tier(name, value, &p, &tiers, queue_prefix) {
                Some(tier) => tiers.push(tier),
                None => ok = false,
            }
        }
        tiers.sort_by_key(|t| std::cmp::Reverse(t.min_priority));
        ok.then_some(tiers)
    }

    /// One tier, checked against the tiers before it: a name that can end a queue name, a
    /// whole minimum in the task priority range, no minimum shared (routing by priority
    /// needs one tier per minimum).
    fn priority_tier(
        &mut self,
        name: &str,
        value: &Node,
        path: &str,
        earlier: &[PriorityTier],
        queue_prefix: Option<&str>,
    ) -> Option<PriorityTier> {
        if !is_tier_name(name) {
            self.error(path, value.line, format!("tier name `{name}` must be 1-{MAX_TIER_NAME} lowercase letters, digits, '_' and '-' (it ends a queue name)"));
            return None;
        }
        if earlier.iter().any(|t| t.name == name) {
            self.error(path, value.line, format!("`{name}` is set twice"));
            return None;
        }
        let min_priority = self.signed_integer(value, path, crate::task::PRIORITY_RANGE)?;
        if let Some(other) = earlier.iter().find(|t| t.min_priority == min_priority) {
            self.error(
                path,
                value.line,
                format!(
                    "tiers `{}` and `{name}` share the minimum {min_priority}: each tier needs its own",
                    other.name
                ),
            );
            return None;
        }
        if let Some(prefix) = queue_prefix {
            let queue = tier_queue_name(prefix, name);
            if queue.len() > MAX_QUEUE_NAME {
                self.error(path, value.line, format!("queue name `{queue}` is longer than SQS's {MAX_QUEUE_NAME} characters: shorten the tier, type or cluster name"));
                return None;
            }
        }
        Some(PriorityTier {
            name: name.to_owned(),
            min_priority,
        })
    }

    /// Checks an object against a field table: unknown and duplicate keys, missing required
    /// fields; fills defaults.
    fn fields(
        &mut self,
        node: &Node,
        path: &str,
        specs: &[FieldSpec],
        other_keys: &[&str],
    ) -> Option<Fields> {
        let entries = self.map(node, if path.is_empty() { "inputs" } else { path })?;
        let join = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        let mut values = BTreeMap::new();
        let mut ok = true;
        for (key, value) in entries {
            let Some(spec) = specs.iter().find(|s| s.name == key) else {
                if !other_keys.contains(&key.as_str()) {
                    let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                    self.error(
                        &join(key),
                        value.line,
                        format!("unknown field `{key}` (known: {})", known.join(", ")),
                    );
                    ok = false;
                }
                continue;
            };
            if values.insert(spec.name, value.clone()).is_some() {
                self.error(&join(key), value.line, format!("`{key}` is set twice"));
                ok = false;
            }
        }
        for spec in specs {
            if values.contains_key(spec.name) {
                continue;
            }
            match spec.default {
                Default::Required => {
                    self.error(
                        &join(spec.name),
                        node.line,
                        format!("required field `{}` is missing", spec.name),
                    );
                    ok = false;
                }
                Default::Null => {}
                Default::Json(text) => {
                    match source::read_document(&format!("{{\"v\": {text}}}"), Format::Json) {
                        Ok(Node {
                            value: Value::Map(mut entries),
                            ..
                        }) if entries.len() == 1 => {
                            if let Some((_, default)) = entries.pop() {
                                values.insert(spec.name, default);
                            }
                        }
                        _ => unreachable!(
                            "default of `{}` in the schema table is not JSON",
                            spec.name
                        ),
                    }
                }
            }
        }
        ok.then_some(Fields { values })
    }

    // ---- typed readers: each records an error and returns None when the node is wrong ----

    fn resolved<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n Value> {
        if let Value::Unresolved(expr) = &node.value {
            self.error(path, node.line, format!("`{expr}` is only known to Terragrunt; the generator needs a literal value here"));
            return None;
        }
        Some(&node.value)
    }

    fn optional<T>(
        &mut self,
        node: &Node,
        path: &str,
        read: impl FnOnce(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Option<T>> {
        if node.value == Value::Null {
            return Some(None);
        }
        read(self, node, path).map(Some)
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str) {
        self.error(
            path,
            node.line,
            format!("expected {what}, found {}", node.value.kind()),
        );
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match self.resolved(node, path)? {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.expected(node, path, "a string");
                None
            }
        }
    }

    fn non_empty_string(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if s.trim().is_empty() {
            self.error(path, node.line, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn name(&mut self, node: &Node, path: &str) -> Option<String> {
        let s = self.string(node, path)?;
        if !is_name(&s) || s.len() > 40 {
            self.error(path, node.line, format!("`{s}` must be 1-40 lowercase letters, digits and '-' (it prefixes AWS and Nomad names)"));
            return None;
        }
        Some(s)
    }

    fn number(&mut self, node: &Node, path: &str) -> Option<f64> {
        match self.resolved(node, path)? {
            Value::Number(n) => Some(*n),
            // Terraform converts numeric strings; so do we.
            Value::String(s) if s.trim().parse::<f64>().is_ok() => s.trim().parse::<f64>().ok(),
            _ => {
                self.expected(node, path, "a number");
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        let n = self.number(node, path)?;
        if n.fract() != 0.0 || n < min as f64 || n > max as f64 {
            let range = if max == u64::MAX {
                format!("at least {min}")
            } else {
                format!("from {min} to {max}")
            };
            self.error(
                path,
                node.line,
                format!("{n} is out of range: expected a whole number {range}"),
            );
            return None;
        }
        Some(n as u64)
    }

    /// A whole number within `range`, which may be negative.
    fn signed_integer(
        &mut self,
        node: &Node,
        path: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Option<i64> {
        let n = self.number(node, path)?;
        if n.fract() != 0.0 || n < *range.start() as f64 || n > *range.end() as f64 {
            self.error(
                path,
                node.line,
                format!(
                    "{n} is out of range: expected a whole number from {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            return None;
        }
        Some(n as i64)
    }

    fn size(&mut self, node: &Node, path: &str) -> Option<u64> {
        let result = match self.resolved(node, path)? {
            Value::String(s) => units::parse_size_mb(s),
            Value::Number(n) => units::parse_size_mb(&n.to_string()),
            _ => {
                self.expected(node, path, "a size such as \"512MB\"");
                return None;
            }
        };
        result.map_err(|e| self.error(path, node.line, e)).ok()
    }

    fn duration(&mut self, node: &Node, path: &str) -> Option<Duration> {
        let result = match self.resolved(node, path)? {
            Value::String(s) => units::parse_duration(s),
            Value::Number(n) if *n >= 0.0 => {
                Duration::try_from_secs_f64(*n).map_err(|e| e.to_string())
            }
            _ => {
                self.expected(node, path, "a duration such as \"30m\"");
                return None;
            }
        };
        match result {
            Ok(d) if d.is_zero() => {
                self.error(path, node.line, "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(path, node.line, e);
                None
            }
        }
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [(String, Node)]> {
        match self.resolved(node, path)? {
            Value::Map(entries) => Some(entries),
            _ => {
                self.expected(node, path, "an object");
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, path: &str) -> Option<Vec<String>> {
        let items = match self.resolved(node, path)? {
            Value::List(items) => items,
            _ => {
                self.expected(node, path, "a list of strings");
                return None;
            }
        };
        let strings: Vec<Option<String>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| self.string(item, &format!("{path}[{i}]")))
            .collect();
        strings.into_iter().collect()
    }

    fn env_vars(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        let entries = self.map(node, path)?;
        let mut vars = BTreeMap::new();
        let mut ok = true;
        for (key, value) in entries {
            let p = format!("{path}.{key}");
            let valid = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                self.error(
                    &p,
                    value.line,
                    format!("`{key}` is not a valid environment variable name"),
                );
                ok = false;
            } else if key.starts_with("AO_") || key.starts_with("NOMAD_") {
                self.error(
                    &p,
                    value.line,
                    format!("`{key}` is reserved: AO_* and NOMAD_* are set by the executor"),
                );
                ok = false;
            } else if vars.contains_key(key) {
                self.error(&p, value.line, format!("`{key}` is set twice"));
                ok = false;
            }
            let text = match self.resolved(value, &p) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                Some(_) => {
                    self.expected(value, &p, "a string");
                    None
                }
                None => None,
            };
            match text {
                Some(text) => {
                    vars.insert(key.clone(), text);
                }
                None => ok = false,
            }
        }
        ok.then_some(vars)
    }
}

/// A secret as read from a file or a secret store: surrounding whitespace (the newline editors
/// add) dropped; `None` when nothing is left.
pub fn trimmed_secret(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.as_bytes().to_vec())
}

/// Lowercase letters, digits and inner dashes: safe in Nomad job ids and AWS names.
pub fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `<cluster_name>-<type>-tasks`: an agent type's task queue (its base queue when it has tiers).
pub fn task_queue_name(cluster_name: &str, agent_type: &str) -> String {
    format!("{cluster_name}-{agent_type}-tasks")
}

/// `<cluster_name>-<type>-tasks-<tier>`: the queue of one priority tier, named after its
/// type's task queue.
pub fn tier_queue_name(task_queue: &str, tier: &str) -> String {
    format!("{task_queue}-{tier}")
}

/// SQS's longest queue name.
const MAX_QUEUE_NAME: usize = 80;
/// Longest tier name: short enough to leave room for the rest of a queue name.
const MAX_TIER_NAME: usize = 20;

/// A priority tier's name: 1-20 lowercase letters, digits, `_` and `-`, all of which SQS allows
/// in a queue name.
fn is_tier_name(s: &str) -> bool {
    (1..=MAX_TIER_NAME).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests;
