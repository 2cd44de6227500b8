//! `serve`: resolves the coordinator's settings (flag > environment > config file > default),
//! builds the backends the settings name, and runs the API, the metrics endpoint and the
//! scheduler until SIGTERM/SIGINT.
//!
//! Backends are chosen here and only here; everything past [`Context`] sees traits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::source::{Node, Value};
use crate::config::{self, units, Inputs};
use crate::executor::local::{retention, LocalExecutor, LocalExecutorConfig};
use crate::executor::Executor;
use crate::http::{self, AppState};
use crate::queue::TaskQueue;
use crate::results::ResultQueue;
use crate::scheduler::{self, Context, Settings};
use crate::store::sqlite::SqliteBackend;
use crate::store::TaskStore;
use crate::workflow::store::WorkflowStore;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExecutorKind {
    Local,
    Nomad,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueKind {
    Sqlite,
    Sqs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Dynamodb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegisterKind {
    Consul,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Flags of `serve` (DESIGN.md §3). Each is also an `AO_*` environment variable and a key of
/// the config file's `serve` block; unset ones take the defaults in [`ServeSettings::resolve`].
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Config file (HCL or JSON): input fields at the top level, serve settings in `serve`.
    #[arg(long, env = "AO_CONFIG")]
    pub config: Option<PathBuf>,
    /// API address [default: 127.0.0.1:8080].
    #[arg(long, env = "AO_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus metrics address [default: 127.0.0.1:9090].
    #[arg(long, env = "AO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Directory of the embedded backends' files [default: ./.agent-orchestrator].
    #[arg(long, env = "AO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Inputs file with the agent types (same schema as `render`) [default: built-in `echo`].
    #[arg(long, env = "AO_INPUTS")]
    pub inputs: Option<PathBuf>,
    /// Where agents run [default: local].
    #[arg(long, env = "AO_EXECUTOR", value_enum)]
    pub executor: Option<ExecutorKind>,
    /// Task queue backend [default: sqlite].
    #[arg(long, env = "AO_QUEUE", value_enum)]
    pub queue: Option<QueueKind>,
    /// Task store backend [default: sqlite].
    #[arg(long, env = "AO_STORE", value_enum)]
    pub store: Option<StoreKind>,
    /// Register the coordinator in a service catalog.
    #[arg(long, env = "AO_REGISTER", value_enum)]
    pub register: Option<RegisterKind>,
    /// Directory of the rendered agent jobs the Nomad executor registers [default: jobs].
    #[arg(long, env = "AO_NOMAD_JOB_DIR")]
    pub nomad_job_dir: Option<PathBuf>,
    /// Create missing queues and tables (cluster backends).
    #[arg(long, env = "AO_BOOTSTRAP")]
    pub bootstrap: bool,
    /// File holding the bearer token the task API requires (none: open API).
    #[arg(long, env = "AO_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    /// File holding the GitHub webhook secret (or GITHUB_WEBHOOK_SECRET).
    #[arg(long, env = "AO_GITHUB_WEBHOOK_SECRET_FILE")]
    pub github_webhook_secret_file: Option<PathBuf>,
    /// GitHub App id (or GITHUB_APP_ID); with the private key, progress is reported on issues.
    #[arg(long, env = "AO_GITHUB_APP_ID")]
    pub github_app_id: Option<u64>,
    /// File holding the GitHub App's private key, PEM (or GITHUB_PRIVATE_KEY).
    #[arg(long, env = "AO_GITHUB_PRIVATE_KEY_FILE")]
    pub github_private_key_file: Option<PathBuf>,
    /// AWS Secrets Manager secret holding the GitHub App's private key (PEM), read at start
    /// (the Terraform module's `github_private_key_secret_arn`; needs --features aws).
    #[arg(long, env = "AO_GITHUB_PRIVATE_KEY_SECRET_ARN")]
    pub github_private_key_secret_arn: Option<String>,
    /// GitHub REST API base URL [default: https://api.github.com].
    #[arg(long, env = "AO_GITHUB_API_URL")]
    pub github_api_url: Option<String>,
    /// GitHub routing rules and budgets, JSON (see `github::GithubOptions`).
    #[arg(long, env = "AO_GITHUB_CONFIG")]
    pub github_config: Option<PathBuf>,
    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "AO_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long SIGTERM waits for running attempts to be recorded [default: 10s].
    #[arg(long, env = "AO_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// First retry delay after a failed attempt, doubling per attempt [default: 1s].
    #[arg(long, env = "AO_RETRY_BASE")]
    pub retry_base: Option<String>,
    /// Local executor: remove finished attempts' run directories (and their logs) this long
    /// after they ended, e.g. 12h or 30d; at least 1m; 0 or off keeps them [default: 7d].
    #[arg(long, env = "AO_RUNS_RETENTION")]
    pub runs_retention: Option<String>,
    /// Log format [default: json].
    #[arg(long, env = "AO_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// The resolved settings `serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub inputs: Inputs,
    pub executor: ExecutorKind,
    pub queue: QueueKind,
    pub store: StoreKind,
    pub register: Option<RegisterKind>,
    /// Where the Nomad executor finds `<type>-agent.nomad.hcl`.
    pub nomad_job_dir: PathBuf,
    /// `--bootstrap`: create missing AWS queues and the table before starting.
    pub bootstrap: bool,
    pub api_token: Option<String>,
    /// GitHub App / webhook settings; `None` when no webhook secret is configured.
    pub github: Option<crate::github::GithubSettings>,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// How long the local executor's finished run directories are kept; `None`: forever
    /// (see [`retention`]).
    pub runs_retention: Option<Duration>,
    pub scheduler: Settings,
    pub log_format: LogFormat,
}

/// A setting or the environment is wrong: exit 2 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServeConfigError(pub String);

impl ServeSettings {
    /// Merges flags (clap already folded in `AO_*` variables) over the config file over defaults.
    pub fn resolve(args: &ServeArgs) -> Result<ServeSettings, ServeConfigError> {
        let mut merged = ServeArgs {
            ..Default::default()
        };
        let mut config_inputs = None;
        if let Some(path) = &args.config {
            let (root, file) =
                config::load_document(path).map_err(|e| ServeConfigError(e.to_string()))?;
            merged = serve_block(&root, &file)?;
            let has_inputs = matches!(&root.value, Value::Map(entries) if entries.iter().any(|(k, _)| k != "serve"));
            if has_inputs {
                config_inputs = Some(
                    config::decode_node(&root, &file, &["serve"])
                        .map_err(|e| ServeConfigError(e.to_string()))?,
                );
            }
        }
        let inputs_path = args.inputs.clone().or(merged.inputs.take());
        let inputs = match (inputs_path, config_inputs) {
            (Some(path), _) => {
                config::load_inputs(&path).map_err(|e| ServeConfigError(e.to_string()))?
            }
            (None, Some(inputs)) => inputs,
            (None, None) => Inputs::embedded_default(),
        };
        let duration = |flag: &Option<String>, file: &Option<String>, name, default| {
            setting(flag, file, name, default, units::parse_duration)
        };
        let mut scheduler = Settings::default();
        scheduler.retry_base = duration(
            &args.retry_base,
            &merged.retry_base,
            "retry-base",
            scheduler.retry_base,
        )?;
        let token_file = args.api_token_file.clone().or(merged.api_token_file.take());
        let api_token = match token_file {
            None => None,
            Some(path) => Some(read_secret(&path, "--api-token-file")?),
        };
        let github = crate::github::GithubSettings::resolve(&crate::github::GithubSources {
            webhook_secret_file: args
                .github_webhook_secret_file
                .clone()
                .or(merged.github_webhook_secret_file.take()),
            app_id: args.github_app_id.or(merged.github_app_id),
            private_key_file: args
                .github_private_key_file
                .clone()
                .or(merged.github_private_key_file.take()),
            private_key_secret_arn: args
                .github_private_key_secret_arn
                .clone()
                .or(merged.github_private_key_secret_arn.take()),
            api_url: args.github_api_url.clone().or(merged.github_api_url.take()),
            config: args.github_config.clone().or(merged.github_config.take()),
        })
        .map_err(ServeConfigError)?;
        let settings = ServeSettings {
            listen: args
                .listen
                .or(merged.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            metrics_listen: args
                .metrics_listen
                .or(merged.metrics_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9090))),
            data_dir: args
                .data_dir
                .clone()
                .or(merged.data_dir)
                .unwrap_or_else(|| PathBuf::from(".agent-orchestrator")),
            inputs,
            executor: args
                .executor
                .or(merged.executor)
                .unwrap_or(ExecutorKind::Local),
            queue: args.queue.or(merged.queue).unwrap_or(QueueKind::Sqlite),
            store: args.store.or(merged.store).unwrap_or(StoreKind::Sqlite),
            register: args.register.or(merged.register),
            bootstrap: args.bootstrap,
            api_token,
            github,
            max_body_bytes: args
                .max_body_bytes
                .or(merged.max_body_bytes)
                .unwrap_or(1024 * 1024),
            nomad_job_dir: args
                .nomad_job_dir
                .clone()
                .or(merged.nomad_job_dir.take())
                .unwrap_or_else(|| PathBuf::from("jobs")),
            shutdown_grace: duration(
                &args.shutdown_grace,
                &merged.shutdown_grace,
                "shutdown-grace",
                Duration::from_secs(10),
            )?,
            runs_retention: setting(
                &args.runs_retention,
                &merged.runs_retention,
                "runs-retention",
                Some(retention::DEFAULT_RETENTION),
                retention::parse_retention,
            )?,
            scheduler,
            log_format: args
                .log_format
                .or(merged.log_format)
                .unwrap_or(LogFormat::Json),
        };
        settings.check_agent_commands()?;
        Ok(settings)
    }

    /// The local executor needs a program for every agent type but the built-in `echo`.
    fn check_agent_commands(&self) -> Result<(), ServeConfigError> {
        if self.executor != ExecutorKind::Local {
            return Ok(());
        }
        for agent in self.inputs.agent_types.values() {
            if agent.command.is_none() && agent.name != "echo" {
                return Err(ServeConfigError(format!(
                    "agent_types.{}.command: the local executor needs a command to run for agent type `{}` (only `echo` is built in)",
                    agent.name, agent.name
                )));
            }
        }
        Ok(())
    }
}

/// A setting from the flag (or its environment variable), else the config file, else
/// `default`; a value `parse` refuses is an error naming `--<name>`.
fn setting<T>(
    flag: &Option<String>,
    file: &Option<String>,
    name: &str,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ServeConfigError> {
    match flag.as_ref().or(file.as_ref()) {
        None => Ok(default),
        Some(text) => parse(text).map_err(|e| ServeConfigError(format!("--{name}: {e}"))),
    }
}

fn read_secret(path: &Path, flag: &str) -> Result<String, ServeConfigError> {
    // The error names the file, never its contents.
    let bytes = std::fs::read(path)
        .map_err(|e| ServeConfigError(format!("{flag} {}: cannot read: {e}", path.display())))?;
    let secret = crate::config::trimmed_secret(&bytes)
        .ok_or_else(|| ServeConfigError(format!("{flag} {}: file is empty", path.display())))?;
    Ok(String::from_utf8_lossy(&secret).into_owned())
}

/// Reads the config file's `serve` block into the same shape as the flags.
fn serve_block(root: &Node, file: &str) -> Result<ServeArgs, ServeConfigError> {
    let mut args = ServeArgs::default();
    let Value::Map(entries) = &root.value else {
        return Ok(args);
    };
    let Some((_, block)) = entries.iter().find(|(k, _)| k == "serve") else {
        return Ok(args);
    };
    let Value::Map(settings) = &block.value else {
        return Err(located(file, block, "serve", "expected an object".into()));
    };
    for (key, node) in settings {
        let path = format!("serve.{key}");
        let text = match &node.value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(located(
                    file,
                    node,
                    &path,
                    format!("expected a string, found {}", other.kind()),
                ))
            }
        };
        let bad = |what: &str| located(file, node, &path, format!("`{text}` is not {what}"));
        match key.as_str() {
            "listen" => {
                args.listen = Some(
                    text.parse()
                        .map_err(|_| bad("an address like 127.0.0.1:8080"))?,
                )
            }
            "metrics_listen" => {
                args.metrics_listen = Some(
                    text.parse()
                        .map_err(|_| bad("an address like 127.0.0.1:9090"))?,
                )
            }
            "data_dir" => args.data_dir = Some(text.into()),
            "inputs" => args.inputs = Some(text.into()),
            "executor" => {
                args.executor = Some(
                    clap::ValueEnum::from_str(&text, true).map_err(|_| bad("local or nomad"))?,
                )
            }
            "queue" => {
                args.queue =
                    Some(clap::ValueEnum::from_str(&text, true).map_err(|_| bad("sqlite or sqs"))?)
            }
            "store" => {
                args.store = Some(
                    clap::ValueEnum::from_str(&text, true)
                        .map_err(|_| bad("sqlite or dynamodb"))?,
                )
            }
            "register" => {
                args.register =
                    Some(clap::ValueEnum::from_str(&text, true).map_err(|_| bad("consul"))?)
            }
            "api_token_file" => args.api_token_file = Some(text.into()),
            "github_webhook_secret_file" => args.github_webhook_secret_file = Some(text.into()),
            "github_app_id" => {
                args.github_app_id = Some(text.parse().map_err(|_| bad("a GitHub App id"))?)
            }
            "github_private_key_file" => args.github_private_key_file = Some(text.into()),
            "github_private_key_secret_arn" => args.github_private_key_secret_arn = Some(text),
            "github_api_url" => args.github_api_url = Some(text),
            "github_config" => args.github_config = Some(text.into()),
            "max_body_bytes" => {
                args.max_body_bytes = Some(text.parse().map_err(|_| bad("a number of bytes"))?)
            }
            "shutdown_grace" => args.shutdown_grace = Some(text),
            "retry_base" => args.retry_base = Some(text),
            "runs_retention" => args.runs_retention = Some(text),
            "nomad_job_dir" => args.nomad_job_dir = Some(text.into()),
            "log_format" => {
                args.log_format =
                    Some(clap::ValueEnum::from_str(&text, true).map_err(|_| bad("json or text"))?)
            }
            _ => {
                return Err(located(
                    file,
                    node,
                    &path,
                    format!("unknown setting `{key}`"),
                ))
            }
        }
    }
    Ok(args)
}

fn located(file: &str, node: &Node, path: &str, message: String) -> ServeConfigError {
    match node.line {
        Some(line) => ServeConfigError(format!("{file}:{line}: {path}: {message}")),
        None => ServeConfigError(format!("{file}: {path}: {message}")),
    }
}

/// Why `serve` stopped with an error: bad configuration (exit 2) or a runtime failure (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ServeConfigError),
    #[error("{0}")]
    Runtime(String),
}

impl ServeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 2,
            ServeError::Runtime(_) => 1,
        }
    }
}

/// The backends a [`Context`] is built from.
struct Backends {
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    executor: Arc<dyn Executor>,
    /// Beside the tasks: `workflows.db` in the data dir, or the DynamoDB task table.
    workflows: Arc<dyn WorkflowStore>,
    /// Where agents under Nomad report their results (`--queue sqs`); none embedded.
    results: Option<Arc<dyn ResultQueue>>,
    /// The local executor's run directories (whose retention `run` enforces); none for Nomad.
    runs_root: Option<PathBuf>,
    /// Keeps the data dir's single-instance lock for the process lifetime.
    _instance_lock: Option<std::fs::File>,
}

async fn build_backends(
    settings: &ServeSettings,
    notifier: crate::executor::ChangeNotifier,
) -> Result<Backends, ServeError> {
    let unavailable = |what: &str| {
        ServeError::Config(ServeConfigError(format!(
            "{what} is not available in this build yet; use the embedded default"
        )))
    };
    let AwsParts {
        store: aws_store,
        queue: aws_queue,
        workflows: aws_workflows,
        results,
        result_queue_url,
    } = aws_backends(settings).await?;
    let needs_sqlite = settings.store == StoreKind::Sqlite || settings.queue == QueueKind::Sqlite;
    let mut instance_lock = None;
    let mut sqlite = None;
    if needs_sqlite {
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            ServeError::Runtime(format!(
                "cannot create data dir {}: {e}",
                settings.data_dir.display()
            ))
        })?;
        instance_lock = Some(lock_data_dir(&settings.data_dir)?);
        let db = settings.data_dir.join("agent-orchestrator.db");
        sqlite =
            Some(Arc::new(SqliteBackend::open(&db).map_err(|e| {
                ServeError::Runtime(format!("{}: {e}", db.display()))
            })?));
    }
    let (store, workflows): (Arc<dyn TaskStore>, Arc<dyn WorkflowStore>) =
        match (settings.store, &sqlite, aws_store, aws_workflows) {
            (StoreKind::Sqlite, Some(backend), _, _) => {
                let path = settings.data_dir.join("workflows.db");
                let workflows = crate::workflow::sqlite::SqliteWorkflowStore::open(&path)
                    .map_err(|e| ServeError::Runtime(format!("{}: {e}", path.display())))?;
                // Store and queue in one file: a task and its queue row in one transaction.
                let store = match settings.queue {
                    QueueKind::Sqlite => Arc::new(backend.enqueuing()),
                    QueueKind::Sqs => backend.clone(),
                };
                (store, Arc::new(workflows))
            }
            (StoreKind::Dynamodb, _, Some(store), Some(workflows)) => (store, workflows),
            _ => return Err(unavailable("this --store")),
        };
    let queue: Arc<dyn TaskQueue> = match (settings.queue, &sqlite, aws_queue) {
        (QueueKind::Sqlite, Some(backend), _) => backend.clone(),
        (QueueKind::Sqs, _, Some(queue)) => queue,
        _ => return Err(unavailable("this --queue")),
    };
    let mut runs_root = None;
    let executor: Arc<dyn Executor> = match settings.executor {
        ExecutorKind::Local => {
            let config = LocalExecutorConfig::new(settings.data_dir.join("runs"));
            let local = LocalExecutor::new(config, notifier)
                .map_err(|e| ServeError::Runtime(e.to_string()))?;
            runs_root = Some(local.config().runs_root.clone());
            Arc::new(local)
        }
        ExecutorKind::Nomad => {
            use crate::executor::nomad::client::NomadClientConfig;
            use crate::executor::nomad::{NomadExecutor, NomadExecutorConfig, NomadStartError};
            let mut config = NomadExecutorConfig::new(
                NomadClientConfig::from_env(),
                settings.nomad_job_dir.clone(),
            );
            config.result_queue_url = result_queue_url;
            let executor = NomadExecutor::start(config, &settings.inputs, notifier)
                .await
                .map_err(|e| match e {
                    NomadStartError::Client(client) if !client.is_transient() => {
                        ServeError::Config(ServeConfigError(format!("--executor nomad: {client}")))
                    }
                    NomadStartError::Client(client) => {
                        ServeError::Runtime(format!("--executor nomad: {client}"))
                    }
                    other => {
                        ServeError::Config(ServeConfigError(format!("--executor nomad: {other}")))
                    }
                })?;
            Arc::new(executor)
        }
    };
    Ok(Backends {
        store,
        queue,
        executor,
        workflows,
        results,
        runs_root,
        _instance_lock: instance_lock,
    })
}

/// The cluster's task store, task queue and workflow store, where the settings name them.
#[derive(Default)]
struct AwsParts {
    store: Option<Arc<dyn TaskStore>>,
    queue: Option<Arc<dyn TaskQueue>>,
    workflows: Option<Arc<dyn WorkflowStore>>,
    results: Option<Arc<dyn ResultQueue>>,
    /// Handed to agents under Nomad as `AO_RESULT_QUEUE_URL` (dispatch meta).
    result_queue_url: Option<String>,
}

/// The AWS backends the settings name (`--store dynamodb`, `--queue sqs`), after `--bootstrap`
/// created whatever was missing. Names follow the inputs' `cluster_name` (DESIGN.md §3); the
/// SDK's default chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, credentials) says where.
/// `AO_SQS_WAIT_SECONDS` sets the receive long-poll (default 0, at most 20); explicit names and
/// URLs: `AO_TABLE_NAME`, `AO_DLQ_NAME`, `AO_RESULT_QUEUE_NAME`, `AO_SQS_QUEUE_URL_<TYPE>`,
/// `AO_SQS_QUEUE_URL_<TYPE>_<TIER>`, `AO_SQS_DLQ_URL`.
#[cfg(feature = "aws")]
async fn aws_backends(settings: &ServeSettings) -> Result<AwsParts, ServeError> {
    use crate::aws::{AwsNames, AwsSettings};
    use crate::queue::sqs::{SqsOptions, SqsQueue};
    use crate::store::dynamodb::DynamoStore;
    let wants_store = settings.store == StoreKind::Dynamodb;
    let wants_queue = settings.queue == QueueKind::Sqs;
    if !wants_store && !wants_queue {
        if settings.bootstrap {
            warn!("--bootstrap has nothing to create: the embedded backends need no setup");
        }
        return Ok(AwsParts::default());
    }
    let config = crate::aws::sdk_config(&AwsSettings::default()).await;
    let names = AwsNames::from_inputs(&settings.inputs);
    if settings.bootstrap {
        crate::aws::bootstrap(&config, &names)
            .await
            .map_err(|e| ServeError::Runtime(format!("--bootstrap: {e}")))?;
    }
    let store: Option<Arc<dyn TaskStore>> = wants_store
        .then(|| Arc::new(DynamoStore::new(&config, &names.table)) as Arc<dyn TaskStore>);
    let workflows: Option<Arc<dyn WorkflowStore>> = wants_store.then(|| {
        Arc::new(crate::workflow::dynamodb::DynamoWorkflowStore::new(
            &config,
            &names.table,
        )) as Arc<dyn WorkflowStore>
    });
    let mut parts = AwsParts {
        store,
        workflows,
        ..AwsParts::default()
    };
    if wants_queue {
        let wait = match std::env::var("AO_SQS_WAIT_SECONDS") {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                ServeError::Config(ServeConfigError(format!(
                    "AO_SQS_WAIT_SECONDS: `{text}` is not a whole number of seconds"
                )))
            })?,
            Err(_) => 0,
        };
        let queue = SqsQueue::new(
            &config,
            &names,
            SqsOptions {
                wait_time: Duration::from_secs(wait.min(20)),
            },
        );
        for (queue_name, url) in crate::aws::queue_url_overrides(&names) {
            queue.set_queue_url(&queue_name, &url);
        }
        if let Err(e) = queue.resolve_all().await {
            warn!(error = %e, "SQS queues not reachable yet; the scheduler retries");
        }
        match queue.result_queue_url().await {
            Ok(url) => parts.result_queue_url = Some(url),
            Err(e) => {
                warn!(error = %e, "result queue URL unknown (set AO_SQS_RESULT_QUEUE_URL): agents dispatched to Nomad get no AO_RESULT_QUEUE_URL")
            }
        }
        let queue = Arc::new(queue);
        parts.results = Some(queue.clone());
        parts.queue = Some(queue);
    }
    Ok(parts)
}

/// Reads the GitHub App's private key from Secrets Manager when it was given as an ARN: a
/// secret that does not exist or may not be read is a configuration error (exit 2), an
/// unreachable service a runtime one.
#[cfg(feature = "aws")]
async fn with_github_key(mut settings: ServeSettings) -> Result<ServeSettings, ServeError> {
    use crate::aws::{AwsSettings, SecretError};
    let Some(github) = settings.github.as_mut() else {
        return Ok(settings);
    };
    let Some(arn) = github.private_key_secret_arn.clone() else {
        return Ok(settings);
    };
    let config = crate::aws::sdk_config(&AwsSettings::default()).await;
    github.load_private_key(&config, &arn).await.map_err(|e| {
        let message = format!("--github-private-key-secret-arn: {e}");
        match e {
            SecretError::Invalid { .. } => ServeError::Config(ServeConfigError(message)),
            SecretError::Unavailable { .. } => ServeError::Runtime(message),
        }
    })?;
    Ok(settings)
}

/// Without the `aws` feature the cluster backends are not compiled in.
#[cfg(not(feature = "aws"))]
async fn aws_backends(settings: &ServeSettings) -> Result<AwsParts, ServeError> {
    let missing = |flag: &str| {
        Err(ServeError::Config(ServeConfigError(format!(
            "{flag} needs the AWS backends, which this binary was built without: rebuild with --features aws (cargo build --features aws)"
        ))))
    };
    if settings.store == StoreKind::Dynamodb {
        return missing("--store dynamodb");
    }
    if settings.queue == QueueKind::Sqs {
        return missing("--queue sqs");
    }
    Ok(AwsParts::default())
}

/// How long `serve` waits for a previous coordinator to release the data dir.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// One coordinator per data dir: a second one would run every task twice.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, ServeError> {
    use fs2::FileExt;
    let path = dir.join("coordinator.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServeError::Runtime(format!("{}: {e}", path.display())))?;
    // A coordinator killed a moment ago may still hold the lock through a child it was forking
    // (the fd is close-on-exec, so it goes away at the child's exec): wait a little for it.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        if file.try_lock_exclusive().is_ok() {
            return Ok(file);
        }
        if std::time::Instant::now() >= deadline {
            return Err(ServeError::Runtime(format!(
                "another coordinator is running on {} (lock {} is held)",
                dir.display(),
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the coordinator until SIGTERM or SIGINT.
pub async fn run(settings: ServeSettings) -> Result<(), ServeError> {
    // Listen for SIGTERM/SIGINT before anything starts, so a stop that arrives during start-up
    // is still handled as a clean shutdown (deregistration, drain) once start-up is done.
    let shutdown = shutdown_signal();
    #[cfg(feature = "aws")]
    let settings = with_github_key(settings).await?;
    let (notifier, changes) = mpsc::unbounded_channel();
    let backends = build_backends(&settings, notifier).await?;
    let ctx = Context::new(
        backends.store,
        backends.queue,
        backends.executor,
        Arc::new(settings.inputs.clone()),
        settings.scheduler.clone(),
    );
    let metrics_handle = crate::metrics::install();

    let api_listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot listen on {}: {e}", settings.listen)))?;
    let metrics_listener = tokio::net::TcpListener::bind(settings.metrics_listen)
        .await
        .map_err(|e| {
            ServeError::Runtime(format!("cannot listen on {}: {e}", settings.metrics_listen))
        })?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let consul = match settings.register {
        Some(RegisterKind::Consul) => {
            Some(start_consul(&settings, &ctx, shutdown_rx.clone()).await?)
        }
        None => None,
    };

    let state = AppState {
        ctx: ctx.clone(),
        api_token: settings.api_token.clone().map(Into::into),
        max_body_bytes: settings.max_body_bytes,
        webhook: match &settings.github {
            Some(github) => Some(
                github
                    .start(
                        Some(&settings.data_dir),
                        settings.store == StoreKind::Sqlite,
                        ctx.clone(),
                        shutdown_rx.clone(),
                    )
                    .await
                    .map_err(ServeError::Runtime)?,
            ),
            None => None,
        },
    };
    // Workflows live beside the tasks (the engine loop is below).
    let workflows = crate::workflow::Workflows::new(backends.workflows.clone());
    let router = http::app(state)
        .layer(axum::Extension(workflows.clone()))
        .layer(axum::extract::DefaultBodyLimit::max(
            settings.max_body_bytes,
        ));
    let api = tokio::spawn(serve_until(api_listener, router, shutdown_rx.clone()));
    let metrics_router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(metrics_handle.render())),
    );
    let metrics = tokio::spawn(serve_until(
        metrics_listener,
        metrics_router,
        shutdown_rx.clone(),
    ));
    let workflow_engine = tokio::spawn(crate::workflow::engine::run(
        ctx.clone(),
        workflows,
        shutdown_rx.clone(),
    ));
    // Agents under Nomad report their results on the result queue (the local executor reads
    // result files itself).
    let result_consumer = backends.results.clone().map(|results| {
        tokio::spawn(crate::results::run(
            ctx.clone(),
            results,
            shutdown_rx.clone(),
        ))
    });
    // Removes old run directories, asking the task store which attempts are over.
    let pruner = backends.runs_root.clone().map(|root| {
        tokio::spawn(retention::run(
            root,
            settings.runs_retention,
            ctx.store.clone(),
            shutdown_rx.clone(),
        ))
    });
    let mut scheduler = tokio::spawn(scheduler::run(ctx.clone(), changes, shutdown_rx));
    info!(listen = %settings.listen, metrics_listen = %settings.metrics_listen, data_dir = %settings.data_dir.display(),
        agent_types = ?settings.inputs.agent_types.keys().collect::<Vec<_>>(), "coordinator started");

    tokio::select! {
        _ = shutdown => {}
        result = &mut scheduler => {
            return Err(ServeError::Runtime(format!("scheduler stopped unexpectedly: {result:?}")));
        }
    }
    info!(
        grace_ms = settings.shutdown_grace.as_millis() as u64,
        "shutting down"
    );
    let _ = shutdown_tx.send(true);
    if let Some(consul) = consul {
        consul.stop().await;
    }
    if tokio::time::timeout(settings.shutdown_grace, &mut scheduler)
        .await
        .is_err()
    {
        warn!("shutdown grace over: attempts still running are left to the next start (they keep running and are re-adopted)");
        scheduler.abort();
    }
    // The engine only stops between passes; every write it makes is a single CAS.
    if tokio::time::timeout(Duration::from_secs(2), workflow_engine)
        .await
        .is_err()
    {
        warn!("workflow engine did not stop in time");
    }
    if let Some(pruner) = pruner {
        // Between two removals; one cut short by the exit is finished at the next start.
        pruner.abort();
    }
    if let Some(consumer) = result_consumer {
        // It stops at once: a result received and not yet recorded comes back later.
        let _ = consumer.await;
    }
    let _ = api.await;
    let _ = metrics.await;
    info!("stopped");
    Ok(())
}

/// The coordinator's Consul parts: its service registrations and the leader lock, whose
/// leadership gates the scheduler and whose `LockIndex` is the fencing token.
struct ConsulParts {
    registration: crate::consul::Registration,
    lock: tokio::task::JoinHandle<()>,
    bridge: tokio::task::JoinHandle<()>,
}

impl ConsulParts {
    /// Deregisters (SIGTERM) and releases the lock.
    async fn stop(self) {
        if let Err(e) = self.registration.deregister().await {
            warn!(error = %e, "consul deregistration failed");
        }
        if tokio::time::timeout(Duration::from_secs(3), self.lock)
            .await
            .is_err()
        {
            warn!("leader lock did not release in time");
        }
        self.bridge.abort();
    }
}

async fn start_consul(
    settings: &ServeSettings,
    ctx: &Arc<Context>,
    shutdown: watch::Receiver<bool>,
) -> Result<ConsulParts, ServeError> {
    use crate::consul::{self, ConsulClient, ConsulConfig, LockConfig, RegistrationConfig};
    let client = ConsulClient::new(&ConsulConfig::from_env())
        .map_err(|e| ServeError::Config(ServeConfigError(format!("--register consul: {e}"))))?;
    let name = format!("{}-agent-coordinator", settings.inputs.cluster_name);
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".into());
    let id = format!("{name}-{host}-{}", settings.listen.port());
    let ip = settings.listen.ip();
    let registration = RegistrationConfig {
        name: name.clone(),
        id: id.clone(),
        address: (!ip.is_unspecified()).then(|| ip.to_string()),
        port: settings.listen.port(),
        metrics_port: settings.metrics_listen.port(),
        tags: vec![
            "agent-orchestrator".into(),
            format!("environment={}", settings.inputs.environment),
        ],
        meta: [
            ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
            ("cluster".to_string(), settings.inputs.cluster_name.clone()),
        ]
        .into_iter()
        .collect(),
        check_interval: Duration::from_secs(10),
        deregister_after: Duration::from_secs(600),
    };
    let registration = consul::register(&client, &registration)
        .await
        .map_err(|e| ServeError::Runtime(format!("--register consul: {e}")))?;
    // Dispatch nothing until the lock says so.
    ctx.set_leadership(false, 0);
    let lock = LockConfig::new(format!("service/{name}/leader"), id);
    let (mut leadership, lock) = consul::spawn_leader_lock(client, lock, shutdown);
    let bridge_ctx = ctx.clone();
    let bridge = tokio::spawn(async move {
        loop {
            let now = *leadership.borrow_and_update();
            bridge_ctx.set_leadership(now.leader, now.fence);
            if leadership.changed().await.is_err() {
                bridge_ctx.set_leadership(false, 0);
                return;
            }
        }
    });
    Ok(ConsulParts {
        registration,
        lock,
        bridge,
    })
}

async fn serve_until(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!(error = %e, "HTTP server stopped");
    }
}

/// Registers the SIGTERM/SIGINT handlers now; the returned future ends at the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        match streams {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Sets up structured logs (JSON by default) on stderr; `RUST_LOG` filters.
///
/// Lines are written by a background thread: a request thread only formats its line and hands
/// it over, instead of queueing on stderr's lock behind every other thread's `write(2)` (that
/// contention cost the webhook endpoint a fifth of its throughput). The hand-over never drops a
/// line (it blocks when 128k lines are waiting). Keep the returned guard alive until exit: its
/// drop flushes what is still queued. A SIGKILL loses the lines not yet written, as it would
/// lose a buffered writer's.
pub fn init_logging(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("ao-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: ServeArgs) -> Result<ServeSettings, ServeConfigError> {
        ServeSettings::resolve(&args)
    }

    #[test]
    fn runs_retention_resolves_flag_over_file_over_default() {
        let day = Duration::from_secs(86400);
        let default = resolve(ServeArgs::default()).unwrap();
        assert_eq!(default.runs_retention, Some(7 * day));

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("serve.hcl");
        std::fs::write(&config, "serve = {\n  runs_retention = \"30d\"\n}\n").unwrap();
        let from_file = ServeArgs {
            config: Some(config.clone()),
            ..ServeArgs::default()
        };
        assert_eq!(resolve(from_file).unwrap().runs_retention, Some(30 * day));
        let flag_wins = ServeArgs {
            config: Some(config),
            runs_retention: Some("off".into()),
            ..ServeArgs::default()
        };
        assert_eq!(resolve(flag_wins).unwrap().runs_retention, None);

        let too_short = ServeArgs {
            runs_retention: Some("10s".into()),
            ..ServeArgs::default()
        };
        let error = resolve(too_short).unwrap_err().to_string();
        assert!(
            error.starts_with("--runs-retention: `10s` is shorter than the minimum"),
            "{error}"
        );
    }
}
