//! What the AWS backends share (feature `aws`): the SDK configuration, the AWS names derived
//! from the inputs (DESIGN.md §3, the same ones `terragrunt/modules/agent-orchestrator/naming`
//! derives), the queue/table settings the module applies, error classification, and
//! `serve --bootstrap`, which creates whichever queues and tables are missing.
//!
//! The SQS queue lives in [`crate::queue::sqs`], the DynamoDB store in [`crate::store::dynamodb`].
//!
//! Configuration: the SDK's default chain (`AWS_REGION`, profiles, `AWS_ENDPOINT_URL`,
//! credentials), with an optional explicit endpoint (local emulators such as moto). Retries are
//! the SDK's standard mode; every error that survives them maps to `Unavailable`, which the
//! scheduler retries, so an outage delays work and loses nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use tracing::info;

use crate::config::{task_queue_name, tier_queue_name, Inputs, PriorityTier};

/// Queue settings of the Terraform module (`naming/main.tf`, `queue_settings`).
pub mod queue_settings {
    pub const VISIBILITY_TIMEOUT_SECONDS: u32 = 120;
    pub const RECEIVE_WAIT_TIME_SECONDS: u32 = 20;
    pub const MESSAGE_RETENTION_SECONDS: u32 = 345_600;
    pub const MAX_RECEIVE_COUNT: u32 = 5;
    pub const DLQ_MESSAGE_RETENTION_SECONDS: u32 = 1_209_600;
}

/// Table layout of the module (`dynamodb.tf`).
pub mod table_layout {
    pub const HASH_KEY: &str = "id";
    /// `status` + `updated_at`: the scheduler's queries (active, stale queued).
    pub const STATUS_INDEX: &str = "status-index";
    /// `status` + `id`: listings by status, newest first, paged by id.
    pub const STATUS_ID_INDEX: &str = "status-id-index";
    /// `agent_type` + `id`: listings by agent type (and workflows), paged by id.
    pub const AGENT_TYPE_INDEX: &str = "agent-type-index";
    pub const TTL_ATTRIBUTE: &str = "expires_at";
}

/// Names of the AWS resources of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsNames {
    /// Agent type → task queue name (`<cluster_name>-<type>-tasks`); with priority tiers, the
    /// base queue, which takes the tasks below every tier's minimum.
    pub task_queues: BTreeMap<String, String>,
    /// Agent type → its priority tiers' queues, highest minimum first. Types without tiers
    /// have no entry.
    pub priority_queues: BTreeMap<String, Vec<TierQueue>>,
    /// `<cluster_name>-tasks-dlq`
    pub dlq: String,
    /// `<cluster_name>-results`
    pub results: String,
    /// `<cluster_name>-agent-tasks`
    pub table: String,
}

/// The queue of one priority tier of an agent type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierQueue {
    /// The tier's name, as in the inputs' `priority_queues`.
    pub tier: String,
    /// Lowest task priority the tier takes.
    pub min_priority: i64,
    /// `<cluster_name>-<type>-tasks-<tier>`
    pub queue: String,
}

impl AwsNames {
    /// The module's names for `cluster_name` and these agent types, without priority tiers
    /// (add them with [`AwsNames::with_priority_tiers`]).
    pub fn for_cluster<'a>(
        cluster_name: &str,
        agent_types: impl IntoIterator<Item = &'a str>,
    ) -> AwsNames {
        AwsNames {
            task_queues: agent_types
                .into_iter()
                .map(|t| (t.to_owned(), task_queue_name(cluster_name, t)))
                .collect(),
            priority_queues: BTreeMap::new(),
            dlq: format!("{cluster_name}-tasks-dlq"),
            results: format!("{cluster_name}-results"),
            table: format!("{cluster_name}-agent-tasks"),
        }
    }

    /// These names with `tiers` as `agent_type`'s priority tiers (replacing any it had; none
    /// when `tiers` is empty). The tier queues are named after the type's task queue, so a
    /// renamed base queue carries its tiers along.
    pub fn with_priority_tiers(mut self, agent_type: &str, tiers: &[PriorityTier]) -> AwsNames {
        let Some(base) = self.task_queues.get(agent_type) else {
            return self;
        };
        let mut queues: Vec<TierQueue> = tiers
            .iter()
            .map(|t| TierQueue {
                tier: t.name.clone(),
                min_priority: t.min_priority,
                queue: tier_queue_name(base, &t.name),
            })
            .collect();
        // Highest first: the order routing looks them up in and receives take them in.
        queues.sort_by_key(|t| std::cmp::Reverse(t.min_priority));
        if queues.is_empty() {
            self.priority_queues.remove(agent_type);
        } else {
            self.priority_queues.insert(agent_type.to_owned(), queues);
        }
        self
    }

    /// Every task queue: each type's base queue and its tier queues.
    pub fn all_task_queues(&self) -> impl Iterator<Item = &str> + '_ {
        self.task_queues.values().map(String::as_str).chain(
            self.priority_queues
                .values()
                .flatten()
                .map(|t| t.queue.as_str()),
        )
    }

    /// The names for the inputs' cluster, agent types and priority tiers, with the explicit
    /// overrides of the environment: `AO_TABLE_NAME`, `AO_DLQ_NAME`, `AO_RESULT_QUEUE_NAME`.
    pub fn from_inputs(inputs: &Inputs) -> AwsNames {
        let mut names = AwsNames::for_cluster(
            &inputs.cluster_name,
            inputs.agent_types.keys().map(String::as_str),
        );
        for (name, agent_type) in &inputs.agent_types {
            names = names.with_priority_tiers(name, &agent_type.priority_queues);
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if let Some(table) = env("AO_TABLE_NAME") {
            names.table = table;
        }
        if let Some(dlq) = env("AO_DLQ_NAME") {
            names.dlq = dlq;
        }
        if let Some(results) = env("AO_RESULT_QUEUE_NAME") {
            names.results = results;
        }
        names
    }
}

/// Explicit queue URLs from the environment, as (queue name, URL): `AO_SQS_QUEUE_URL_<TYPE>`
/// for a task queue and `AO_SQS_QUEUE_URL_<TYPE>_<TIER>` for a priority tier's (upper-cased,
/// `-` as `_`), `AO_SQS_DLQ_URL` for the DLQ and `AO_SQS_RESULT_QUEUE_URL` for the result
/// queue. Queues without one are resolved by name.
///
/// Spelled that way, two queues can share a variable (type `a-b` and type `a` with tier `b`
/// both read `AO_SQS_QUEUE_URL_A_B`): such a variable is ignored, with a warning, and both
/// queues are resolved by name, since one URL for two queues would mix their tasks.
pub fn queue_url_overrides(names: &AwsNames) -> Vec<(String, String)> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut out: Vec<(String, String)> = task_queue_url_variables(names)
        .into_iter()
        .filter_map(|(var, queues)| {
            let url = env(&var)?;
            match <[String; 1]>::try_from(queues) {
                Ok([queue]) => Some((queue, url)),
                Err(queues) => {
                    tracing::warn!(variable = %var, ?queues, "one URL variable names several task queues: ignored, each queue is resolved by name");
                    None
                }
            }
        })
        .collect();
    if let Some(url) = env("AO_SQS_DLQ_URL") {
        out.push((names.dlq.clone(), url));
    }
    if let Some(url) = env("AO_SQS_RESULT_QUEUE_URL") {
        out.push((names.results.clone(), url));
    }
    out
}

/// Each task queue's URL variable, with the queues it names (more than one when spellings
/// collide).
fn task_queue_url_variables(names: &AwsNames) -> BTreeMap<String, Vec<String>> {
    let var = |parts: &[&str]| {
        let suffix = parts.join("_").to_uppercase().replace('-', "_");
        format!("AO_SQS_QUEUE_URL_{suffix}")
    };
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (agent_type, queue) in &names.task_queues {
        out.entry(var(&[agent_type]))
            .or_default()
            .push(queue.clone());
    }
    for (agent_type, tiers) in &names.priority_queues {
        for tier in tiers {
            out.entry(var(&[agent_type, &tier.tier]))
                .or_default()
                .push(tier.queue.clone());
        }
    }
    out
}

/// Where and how to reach AWS.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// Overrides the endpoint of every service (`AWS_ENDPOINT_URL` does the same through the
    /// SDK's own chain).
    pub endpoint_url: Option<String>,
    /// Overrides the region (default chain otherwise; `us-east-1` when nothing sets one).
    pub region: Option<String>,
    /// Static credentials (tests against emulators); the default chain otherwise.
    pub static_credentials: Option<(String, String)>,
}

/// Loads the SDK configuration: default chain, standard retries (3 attempts), bounded
/// connect and attempt timeouts so an unreachable endpoint fails as `Unavailable` quickly.
pub async fn sdk_config(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                // Longer than the longest long poll (20 s).
                .operation_attempt_timeout(Duration::from_secs(30))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint_url {
        loader = loader.endpoint_url(endpoint.clone());
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some((key, secret)) = &settings.static_credentials {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            key.clone(),
            secret.clone(),
            None,
            None,
            "agent-orchestrator-static",
        ));
    }
    let config = loader.load().await;
    if config.region().is_none() {
        // No region anywhere: SQS and DynamoDB refuse to build requests. Pick the SDK's
        // usual default rather than failing every call.
        let mut builder = config.into_builder();
        builder.set_region(Some(Region::new("us-east-1")));
        return builder.build();
    }
    config
}

/// Why a secret could not be read from Secrets Manager. Never carries the secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The ARN names nothing readable (missing, not allowed, malformed): fix the configuration.
    #[error("secret {arn}: {message}")]
    Invalid { arn: String, message: String },
    /// Secrets Manager could not be reached or failed: try again later.
    #[error("secret {arn}: Secrets Manager unavailable: {message}")]
    Unavailable { arn: String, message: String },
}

/// The value of the secret `arn` (its string, or its binary), trimmed of surrounding
/// whitespace. Errors name the ARN and the service's error code, never the value.
pub async fn secret_value(config: &SdkConfig, arn: &str) -> Result<Vec<u8>, SecretError> {
    use aws_sdk_secretsmanager::error::ProvideErrorMetadata as _;
    let client = aws_sdk_secretsmanager::Client::new(config);
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| {
            let (arn, message) = (arn.to_owned(), describe(&e));
            match e.code() {
                Some(
                    "ResourceNotFoundException"
                    | "AccessDeniedException"
                    | "ValidationException"
                    | "InvalidParameterException"
                    | "InvalidRequestException"
                    | "DecryptionFailure",
                ) => SecretError::Invalid { arn, message },
                _ => SecretError::Unavailable { arn, message },
            }
        })?;
    let bytes = match (out.secret_string(), out.secret_binary()) {
        (Some(text), _) => text.as_bytes(),
        (None, Some(blob)) => blob.as_ref(),
        (None, None) => &[],
    };
    crate::config::trimmed_secret(bytes).ok_or_else(|| SecretError::Invalid {
        arn: arn.to_owned(),
        message: "the secret has no value".into(),
    })
}

/// The error text of an SDK error, with its causes (the SDK's `Display` alone says only
/// "service error").
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What a failed DynamoDB call on `table` says, with the fix when the table is missing.
pub fn dynamodb_failure<E>(what: &str, table: &str, err: &E) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    if err.code() == Some("ResourceNotFoundException") {
        return format!(
            "{what}: DynamoDB table `{table}` does not exist (apply the Terraform module or run `serve --bootstrap`)"
        );
    }
    format!("{what} on {table}: {}", describe(err))
}

/// Whether a DynamoDB call failed only because its condition expression did not hold.
pub fn is_condition_failed<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(err: &E) -> bool {
    err.code() == Some("ConditionalCheckFailedException")
}

/// Creates the cluster's queues (DLQ first, task queues with a redrive policy to it, result
/// queue) and the task table with its GSIs and TTL, whichever are missing. Existing ones are
/// left as they are.
pub async fn bootstrap(config: &SdkConfig, names: &AwsNames) -> Result<(), String> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let dynamo = aws_sdk_dynamodb::Client::new(config);
    crate::queue::sqs::bootstrap_queues(&sqs, names).await?;
    crate::store::dynamodb::bootstrap_table(&dynamo, &names.table).await?;
    info!(table = %names.table, dlq = %names.dlq, results = %names.results,
        queues = ?names.all_task_queues().collect::<Vec<_>>(), "bootstrap: AWS resources present");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_module() {
        let names = AwsNames::for_cluster("prod", ["coder", "tester"]);
        assert_eq!(names.task_queues["coder"], "prod-coder-tasks");
        assert_eq!(names.task_queues["tester"], "prod-tester-tasks");
        assert_eq!(names.dlq, "prod-tasks-dlq");
        assert_eq!(names.results, "prod-results");
        assert_eq!(names.table, "prod-agent-tasks");
        assert!(names.priority_queues.is_empty());
    }

    fn tier(name: &str, min_priority: i64) -> PriorityTier {
        PriorityTier {
            name: name.into(),
            min_priority,
        }
    }

    #[test]
    fn tier_queues_follow_the_module_highest_first() {
        let names = AwsNames::for_cluster("prod", ["coder", "tester"])
            .with_priority_tiers("coder", &[tier("low", -5), tier("urgent", 100)])
            .with_priority_tiers("tester", &[])
            .with_priority_tiers("nope", &[tier("x", 1)]);
        let coder: Vec<(&str, i64, &str)> = names.priority_queues["coder"]
            .iter()
            .map(|t| (t.tier.as_str(), t.min_priority, t.queue.as_str()))
            .collect();
        assert_eq!(
            coder,
            [
                ("urgent", 100, "prod-coder-tasks-urgent"),
                ("low", -5, "prod-coder-tasks-low")
            ]
        );
        assert_eq!(
            names.priority_queues.keys().collect::<Vec<_>>(),
            ["coder"],
            "no tiers, or an unknown type, add nothing"
        );
        assert_eq!(
            names.all_task_queues().collect::<Vec<_>>(),
            [
                "prod-coder-tasks",
                "prod-tester-tasks",
                "prod-coder-tasks-urgent",
                "prod-coder-tasks-low"
            ]
        );
    }

    #[test]
    fn names_from_inputs_carry_the_tiers() {
        let inputs = crate::config::decode(
            r#"{"cluster_name": "c", "agent_types": {"a-b": {"image": "i", "cpu_limit": 1,
                "memory_limit": "64MB", "max_instances": 1, "priority_queues": {"hi": 5, "top": 9}}}}"#,
            crate::config::source::Format::Json,
            "t.json",
        )
        .expect("valid inputs");
        let names = AwsNames::from_inputs(&inputs);
        let queues: Vec<&str> = names.priority_queues["a-b"]
            .iter()
            .map(|t| t.queue.as_str())
            .collect();
        assert_eq!(queues, ["c-a-b-tasks-top", "c-a-b-tasks-hi"]);
    }

    #[test]
    fn url_variables_name_tier_queues_and_report_collisions() {
        let names = AwsNames::for_cluster("c", ["a", "a-b", "x"])
            .with_priority_tiers("a", &[tier("b", 5)])
            .with_priority_tiers("x", &[tier("urgent-1", 5)]);
        let vars = task_queue_url_variables(&names);
        assert_eq!(vars["AO_SQS_QUEUE_URL_X_URGENT_1"], ["c-x-tasks-urgent-1"]);
        assert_eq!(vars["AO_SQS_QUEUE_URL_X"], ["c-x-tasks"]);
        assert_eq!(vars["AO_SQS_QUEUE_URL_A"], ["c-a-tasks"]);
        assert_eq!(
            vars["AO_SQS_QUEUE_URL_A_B"],
            ["c-a-b-tasks", "c-a-tasks-b"],
            "type a-b and type a's tier b share a spelling"
        );
    }
}
