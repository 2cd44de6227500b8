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

use crate::config::Inputs;

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
    /// Agent type → task queue name (`<cluster_name>-<type>-tasks`).
    pub task_queues: BTreeMap<String, String>,
    /// `<cluster_name>-tasks-dlq`
    pub dlq: String,
    /// `<cluster_name>-results`
    pub results: String,
    /// `<cluster_name>-agent-tasks`
    pub table: String,
}

impl AwsNames {
    /// The module's names for `cluster_name` and these agent types.
    pub fn for_cluster<'a>(
        cluster_name: &str,
        agent_types: impl IntoIterator<Item = &'a str>,
    ) -> AwsNames {
        AwsNames {
            task_queues: agent_types
                .into_iter()
                .map(|t| (t.to_owned(), format!("{cluster_name}-{t}-tasks")))
                .collect(),
            dlq: format!("{cluster_name}-tasks-dlq"),
            results: format!("{cluster_name}-results"),
            table: format!("{cluster_name}-agent-tasks"),
        }
    }

    /// The names for the inputs' cluster and agent types, with the explicit overrides of the
    /// environment: `AO_TABLE_NAME`, `AO_DLQ_NAME`, `AO_RESULT_QUEUE_NAME`.
    pub fn from_inputs(inputs: &Inputs) -> AwsNames {
        let mut names = AwsNames::for_cluster(
            &inputs.cluster_name,
            inputs.agent_types.keys().map(String::as_str),
        );
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
/// for a task queue (type upper-cased, `-` as `_`), `AO_SQS_DLQ_URL` for the DLQ and
/// `AO_SQS_RESULT_QUEUE_URL` for the result queue. Queues without one are resolved by name.
pub fn queue_url_overrides(names: &AwsNames) -> Vec<(String, String)> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let mut out: Vec<(String, String)> = names
        .task_queues
        .iter()
        .filter_map(|(agent_type, queue)| {
            let var = format!(
                "AO_SQS_QUEUE_URL_{}",
                agent_type.to_uppercase().replace('-', "_")
            );
            env(&var).map(|url| (queue.clone(), url))
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
        queues = ?names.task_queues.values().collect::<Vec<_>>(), "bootstrap: AWS resources present");
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
    }
}
