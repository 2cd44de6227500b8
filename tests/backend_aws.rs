//! The AWS backends against moto server (feature `aws`): the shared conformance suites for
//! [`SqsQueue`] and [`DynamoStore`], poison messages going to the dead-letter queue, and an
//! outage (a proxy in front of moto stops answering) that delays work and loses nothing.
//!
//! Needs `AO_TEST_MOTO_URL` (tests/run.sh starts moto and sets it); without it every test
//! prints why it skips and passes. Each test works in its own queues and table.
#![cfg(feature = "aws")]

mod common;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_orchestrator::aws::{sdk_config, AwsNames, AwsSettings};
use agent_orchestrator::config::PriorityTier;
use agent_orchestrator::queue::sqs::{bootstrap_queues, SqsOptions, SqsQueue};
use agent_orchestrator::queue::{QueueError, TaskQueue};
use agent_orchestrator::store::conformance::{self, sample_task, SuiteOptions};
use agent_orchestrator::store::dynamodb::{bootstrap_table, DynamoStore};
use agent_orchestrator::store::{Created, StoreError, TaskStore};
use aws_config::SdkConfig;
use common::moto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const TEST_TIMEOUT: Duration = Duration::from_secs(300);

async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("test timed out")
}

async fn config_for(endpoint: &str) -> SdkConfig {
    sdk_config(&AwsSettings {
        endpoint_url: Some(endpoint.to_owned()),
        region: Some("us-east-1".into()),
        static_credentials: Some(("test".into(), "test".into())),
    })
    .await
}

fn unique(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &random[..8])
}

async fn sqs_for(config: &SdkConfig, agent_types: &[String]) -> (SqsQueue, AwsNames) {
    let names = AwsNames::for_cluster(&unique("q"), agent_types.iter().map(String::as_str));
    sqs_with(config, names).await
}

/// Creates the queues `names` name (tier queues included) and a queue over them.
async fn sqs_with(config: &SdkConfig, names: AwsNames) -> (SqsQueue, AwsNames) {
    bootstrap_queues(&aws_sdk_sqs::Client::new(config), &names)
        .await
        .expect("create queues");
    (SqsQueue::new(config, &names, SqsOptions::default()), names)
}

/// Tiers named `p<min>` (`m` for a minus sign), one per minimum.
fn tiers(minimums: &[i64]) -> Vec<PriorityTier> {
    minimums
        .iter()
        .map(|&min_priority| PriorityTier {
            name: format!("p{min_priority}").replace('-', "m"),
            min_priority,
        })
        .collect()
}

/// The URL of queue `name`.
async fn queue_url(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .expect("queue url")
        .queue_url()
        .expect("url")
        .to_owned()
}

async fn dynamo_for(config: &SdkConfig) -> DynamoStore {
    let table = format!("{}-agent-tasks", unique("s"));
    bootstrap_table(&aws_sdk_dynamodb::Client::new(config), &table)
        .await
        .expect("create table");
    DynamoStore::new(config, &table)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqs_queue_conformance() {
    let Some(url) = moto("sqs_queue_conformance") else {
        return;
    };
    let options = SuiteOptions {
        tick: Duration::from_secs(1),
        priority_order: true,
        fifo_within_priority: false,
        dedup_waiting_sends: false,
        ..SuiteOptions::default()
    };
    let config = config_for(&url).await;
    // SQS orders only across queues: a tier for each priority the priority check sends but
    // the lowest, which the base queue takes.
    let (lowest, tiered) = conformance::PRIORITY_CHECK_PRIORITIES
        .split_last()
        .expect("the priority check sends priorities");
    let names = AwsNames::for_cluster(
        &unique("q"),
        conformance::queue_agent_types(&options)
            .iter()
            .map(String::as_str),
    )
    .with_priority_tiers(&options.agent_type("priority"), &tiers(tiered));
    assert!(tiered.iter().all(|min| min > lowest));
    let (queue, _) = sqs_with(&config, names).await;
    within(conformance::run_queue_suite_with(
        || queue.clone(),
        &options,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_store_conformance() {
    let Some(url) = moto("dynamodb_store_conformance") else {
        return;
    };
    let config = config_for(&url).await;
    let store = dynamo_for(&config).await;
    within(conformance::run_store_suite(|| store.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_receive_loops_past_ten_and_unknown_types_are_refused() {
    let Some(url) = moto("sqs_receive_loops_past_ten") else {
        return;
    };
    let config = config_for(&url).await;
    let (queue, _) = sqs_for(&config, &["many".to_owned()]).await;
    within(async {
        for i in 0..25 {
            queue
                .send("many", &format!("task-{i}"), i, Duration::ZERO)
                .await
                .expect("send");
        }
        let got = queue
            .receive("many", 25, Duration::from_secs(60))
            .await
            .expect("receive");
        assert_eq!(got.len(), 25, "receive loops over SQS's 10 per call");
        let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
        queue.ack_many("many", &receipts).await.expect("ack batch");
        let depth = queue.depth("many").await.expect("depth");
        assert_eq!((depth.visible, depth.in_flight), (0, 0), "{depth:?}");
        assert!(matches!(
            queue.send("nope", "x", 0, Duration::ZERO).await,
            Err(QueueError::UnknownQueue { .. })
        ));
    })
    .await;
}

/// `ApproximateNumberOfMessages` of one queue, read past the `SqsQueue`.
async fn visible_in(client: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName;
    client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .expect("queue attributes")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
        .and_then(|v| v.parse().ok())
        .expect("message count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_priority_tiers_route_by_priority_and_receipts_find_their_queue() {
    let Some(url) = moto("sqs_priority_tiers") else {
        return;
    };
    let config = config_for(&url).await;
    let names = AwsNames::for_cluster(&unique("q"), ["coder"]).with_priority_tiers(
        "coder",
        &[
            PriorityTier {
                name: "urgent".into(),
                min_priority: 10,
            },
            PriorityTier {
                name: "normal".into(),
                min_priority: 0,
            },
        ],
    );
    let (queue, names) = sqs_with(&config, names).await;
    let client = aws_sdk_sqs::Client::new(&config);
    let base = queue_url(&client, &names.task_queues["coder"]).await;
    let urgent = queue_url(&client, &format!("{}-urgent", names.task_queues["coder"])).await;
    let normal = queue_url(&client, &format!("{}-normal", names.task_queues["coder"])).await;
    within(async {
        queue.resolve_all().await.expect("every queue resolves");
        for (task, priority) in [("u-1", 50), ("u-2", 10), ("n-1", 3), ("b-1", -2)] {
            queue
                .send("coder", task, priority, Duration::ZERO)
                .await
                .expect("send");
        }
        assert_eq!(
            [
                visible_in(&client, &urgent).await,
                visible_in(&client, &normal).await,
                visible_in(&client, &base).await
            ],
            [2, 1, 1],
            "each task in the tier with the highest minimum at or below its priority"
        );
        assert_eq!(queue.depth("coder").await.expect("depth").visible, 4);

        let first = queue
            .receive("coder", 3, Duration::from_secs(60))
            .await
            .expect("receive");
        let mut got: Vec<(&str, i64)> = first
            .iter()
            .map(|m| (m.task_id.as_str(), m.priority))
            .collect();
        got[..2].sort();
        assert_eq!(
            got,
            [("u-1", 50), ("u-2", 10), ("n-1", 3)],
            "tiers highest first"
        );
        assert!(first[..2].iter().all(|m| m.receipt.starts_with("urgent~")));
        assert!(first[2].receipt.starts_with("normal~"));
        let last = queue
            .receive("coder", 10, Duration::from_secs(60))
            .await
            .expect("receive the base queue");
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].task_id, "b-1");
        assert!(
            !last[0].receipt.contains('~'),
            "base receipts are SQS's own"
        );
        let depth = queue.depth("coder").await.expect("depth");
        assert_eq!((depth.visible, depth.in_flight), (0, 4), "{depth:?}");

        // A nack reaches the tier the message is in.
        queue
            .nack("coder", &first[2].receipt, Duration::ZERO)
            .await
            .expect("nack");
        assert_eq!(visible_in(&client, &normal).await, 1, "back in its tier");
        let again = queue
            .receive("coder", 10, Duration::from_secs(60))
            .await
            .expect("receive after nack");
        assert_eq!(again.len(), 1);
        assert_eq!(
            (again[0].task_id.as_str(), again[0].receive_count),
            ("n-1", 2)
        );

        // Bogus receipts, tagged or not, are no error and delete nothing.
        for bogus in ["urgent~nope", "gone~nope", "normal~", "~", "nope"] {
            queue.ack("coder", bogus).await.expect("ack bogus");
            queue
                .nack("coder", bogus, Duration::ZERO)
                .await
                .expect("nack bogus");
        }
        let bogus: Vec<String> = ["urgent~nope", "gone~nope", "nope"]
            .map(String::from)
            .to_vec();
        queue
            .ack_many("coder", &bogus)
            .await
            .expect("ack_many bogus");
        assert_eq!(queue.depth("coder").await.expect("depth").in_flight, 4);

        // One ack, then one batch over three queues.
        queue.ack("coder", &first[0].receipt).await.expect("ack");
        let receipts = vec![
            first[1].receipt.clone(),
            again[0].receipt.clone(),
            last[0].receipt.clone(),
        ];
        queue.ack_many("coder", &receipts).await.expect("ack_many");
        let depth = queue.depth("coder").await.expect("depth");
        assert_eq!(
            (depth.visible, depth.in_flight, depth.delayed),
            (0, 0, 0),
            "every queue is empty: {depth:?}"
        );

        // Poison in a tier goes to the DLQ like poison anywhere.
        client
            .send_message()
            .queue_url(&urgent)
            .message_body("not json at all")
            .send()
            .await
            .expect("send poison");
        let none = queue
            .receive("coder", 10, Duration::from_secs(60))
            .await
            .expect("receive poison");
        assert!(none.is_empty(), "{none:?}");
        let dlq = queue_url(&client, &names.dlq).await;
        let dead = client
            .receive_message()
            .queue_url(&dlq)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive DLQ");
        let [m] = dead.messages() else {
            panic!("one message in the DLQ: {:?}", dead.messages())
        };
        let source = m
            .message_attributes()
            .and_then(|a| a.get("source_queue"))
            .and_then(|v| v.string_value());
        assert_eq!(source, Some(urgent.as_str()), "the DLQ copy names its tier");
        assert_eq!(visible_in(&client, &urgent).await, 0);

        // A queue over a tier nobody created reports it at start.
        let missing = names.clone().with_priority_tiers("coder", &tiers(&[50]));
        let err = SqsQueue::new(&config, &missing, SqsOptions::default())
            .resolve_all()
            .await
            .expect_err("the p50 queue does not exist");
        assert!(err.to_string().contains("-tasks-p50"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiered_receive_long_polls_only_when_every_queue_is_empty() {
    let Some(url) = moto("sqs_tier_wait") else {
        return;
    };
    let config = config_for(&url).await;
    let names =
        AwsNames::for_cluster(&unique("q"), ["coder"]).with_priority_tiers("coder", &tiers(&[5]));
    let (_, names) = sqs_with(&config, names).await;
    let queue = SqsQueue::new(
        &config,
        &names,
        SqsOptions {
            wait_time: Duration::from_secs(3),
        },
    );
    within(async {
        queue
            .send("coder", "low-1", 0, Duration::ZERO)
            .await
            .expect("send");
        let began = Instant::now();
        let got = queue
            .receive("coder", 10, Duration::from_secs(60))
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "the base queue's message came without waiting out the empty tier: {:?}",
            began.elapsed()
        );
        // With every queue empty, the receive long-polls the top tier.
        let sender = queue.clone();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sender.send("coder", "high-1", 9, Duration::ZERO).await
        });
        let began = Instant::now();
        let got = queue
            .receive("coder", 10, Duration::from_secs(60))
            .await
            .expect("receive");
        late.await.expect("sender").expect("send");
        let ids: Vec<&str> = got.iter().map(|m| m.task_id.as_str()).collect();
        assert_eq!(ids, ["high-1"], "the wait caught the late message");
        assert!(
            began.elapsed() < Duration::from_millis(2500),
            "{:?}",
            began.elapsed()
        );
    })
    .await;
}

/// A `tracing` writer into a shared buffer, to assert on log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn a_message_that_is_not_a_task_goes_to_the_dlq_and_nothing_else_is_affected() {
    let Some(url) = moto("dlq") else {
        return;
    };
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let config = config_for(&url).await;
    let (queue, names) = sqs_for(&config, &["coder".to_owned()]).await;
    let client = aws_sdk_sqs::Client::new(&config);
    let url_of = |name: String| {
        let client = client.clone();
        async move {
            client
                .get_queue_url()
                .queue_name(name)
                .send()
                .await
                .expect("queue url")
                .queue_url()
                .expect("url")
                .to_owned()
        }
    };
    let task_queue = url_of(names.task_queues["coder"].clone()).await;
    let dlq = url_of(names.dlq.clone()).await;
    within(async {
        queue
            .send("coder", "good-1", 0, Duration::ZERO)
            .await
            .expect("send");
        for bad in ["not json at all", r#"{"task_id": "has spaces"}"#] {
            client
                .send_message()
                .queue_url(&task_queue)
                .message_body(bad)
                .send()
                .await
                .expect("send poison");
        }
        queue
            .send("coder", "good-2", 0, Duration::ZERO)
            .await
            .expect("send");

        let got = queue
            .receive("coder", 10, Duration::from_secs(60))
            .await
            .expect("receive with poison");
        let mut ids: Vec<String> = got.iter().map(|m| m.task_id.clone()).collect();
        ids.sort();
        assert_eq!(ids, vec!["good-1", "good-2"], "good messages are delivered");
        for m in &got {
            queue.ack("coder", &m.receipt).await.expect("ack");
        }
        let depth = queue.depth("coder").await.expect("depth");
        assert_eq!(
            (depth.visible, depth.in_flight, depth.delayed),
            (0, 0, 0),
            "poison messages left the task queue: {depth:?}"
        );

        let dead = client
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive DLQ");
        let mut bodies: Vec<String> = dead
            .messages()
            .iter()
            .map(|m| m.body().unwrap_or("").to_owned())
            .collect();
        bodies.sort();
        assert_eq!(
            bodies,
            vec!["not json at all", r#"{"task_id": "has spaces"}"#],
            "both poison messages are in the DLQ, bodies intact"
        );
        for m in dead.messages() {
            let reason = m
                .message_attributes()
                .and_then(|a| a.get("reason"))
                .and_then(|v| v.string_value())
                .unwrap_or("");
            assert!(!reason.is_empty(), "the DLQ copy carries its reason");
        }
    })
    .await;
    let text = logs.text();
    assert!(
        text.matches("dead-letter queue").count() >= 2,
        "each move is logged with its reason: {text}"
    );
    assert!(text.contains("not a task reference"), "{text}");
}

/// A TCP proxy on a fixed loopback port that can stop answering (refusing connections and
/// cutting open ones) and come back on the same port.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        Proxy {
            addr,
            upstream,
            task: Some(tokio::spawn(Self::serve(listener, upstream))),
        }
    }

    async fn serve(listener: TcpListener, upstream: SocketAddr) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            connections.spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            while connections.try_join_next().is_some() {}
        }
    }

    /// Closes the listener and every open connection (dropping the task drops the JoinSet).
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind proxy");
        self.task = Some(tokio::spawn(Self::serve(listener, self.upstream)));
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn socket_of(url: &str) -> SocketAddr {
    let host_port = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    host_port.parse().expect("moto URL is http://IP:PORT")
}

/// How long the outage test keeps the services away.
const OUTAGE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_returns_unavailable_and_loses_nothing() {
    let Some(url) = moto("outage") else {
        return;
    };
    let direct = config_for(&url).await;
    let store_direct = dynamo_for(&direct).await;
    let (_, names) = sqs_for(&direct, &["coder".to_owned()]).await;
    let mut proxy = Proxy::start(socket_of(&url)).await;
    let through = config_for(&proxy.url()).await;
    let store = DynamoStore::new(&through, store_direct.table());
    let queue = SqsQueue::new(&through, &names, SqsOptions::default());

    within(async {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let task = sample_task("coder", None);
            assert!(matches!(store.create(&task).await, Ok(Created::New(_))));
            queue
                .send("coder", &task.id, 0, Duration::ZERO)
                .await
                .expect("send before the outage");
            ids.push(task.id);
        }

        proxy.stop().await;
        let began = Instant::now();
        let lost = sample_task("coder", None);
        match store.create(&lost).await {
            Err(StoreError::Unavailable { message }) => {
                eprintln!("create during outage: {message}")
            }
            other => panic!("create during the outage: expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            store.get(&ids[0]).await,
            Err(StoreError::Unavailable { .. })
        ));
        assert!(matches!(
            queue.send("coder", &lost.id, 0, Duration::ZERO).await,
            Err(QueueError::Unavailable { .. })
        ));
        assert!(matches!(
            queue.receive("coder", 10, Duration::from_secs(60)).await,
            Err(QueueError::Unavailable { .. })
        ));
        assert!(matches!(
            queue.depth("coder").await,
            Err(QueueError::Unavailable { .. })
        ));
        eprintln!(
            "five failing calls during the outage took {:?}",
            began.elapsed()
        );

        // A caller that retries on Unavailable (as the scheduler does) gets through once the
        // service is back.
        let retrying = {
            let store = store.clone();
            let queue = queue.clone();
            let task = lost.clone();
            tokio::spawn(async move {
                let mut tries = 0;
                loop {
                    tries += 1;
                    match store.create(&task).await {
                        Ok(_) => break,
                        Err(StoreError::Unavailable { .. }) => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        Err(e) => panic!("create: {e}"),
                    }
                }
                loop {
                    match queue.send("coder", &task.id, 0, Duration::ZERO).await {
                        Ok(()) => break,
                        Err(QueueError::Unavailable { .. }) => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        Err(e) => panic!("send: {e}"),
                    }
                }
                tries
            })
        };
        // The service stays away for the 10 s the issue asks for, however long the failing
        // calls above took.
        tokio::time::sleep_until((began + OUTAGE).into()).await;
        proxy.restart().await;
        eprintln!("outage lasted {:?}", began.elapsed());
        let tries = retrying.await.expect("retrying task");
        eprintln!("the retrying create needed {tries} tries");
        ids.push(lost.id.clone());

        for id in &ids {
            assert!(
                store.get(id).await.expect("get after outage").is_some(),
                "task {id} survived"
            );
        }
        let mut got: Vec<String> = queue
            .receive("coder", 20, Duration::from_secs(60))
            .await
            .expect("receive after outage")
            .into_iter()
            .map(|m| m.task_id)
            .collect();
        got.sort();
        got.dedup();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(got, want, "every message is still there");
    })
    .await;
    proxy.stop().await;
}

/// A coordinator binary on SQS + DynamoDB (moto), with `env` on top of ours.
struct AwsCoordinator {
    child: std::process::Child,
    base: String,
    log: std::path::PathBuf,
}

impl AwsCoordinator {
    fn start(dir: &std::path::Path, moto: &str, inputs: &std::path::Path) -> AwsCoordinator {
        AwsCoordinator::start_binary(common::BIN, dir, moto, inputs)
    }

    fn start_binary(
        bin: &str,
        dir: &std::path::Path,
        moto: &str,
        inputs: &std::path::Path,
    ) -> AwsCoordinator {
        // `free_port` only finds a port that was free a moment ago: retry on fresh ones when
        // another process took it before serve bound it.
        for _ in 0..5 {
            if let Some(c) = AwsCoordinator::start_once(bin, dir, moto, inputs) {
                return c;
            }
        }
        panic!("serve never found a free port");
    }

    fn start_once(
        bin: &str,
        dir: &std::path::Path,
        moto: &str,
        inputs: &std::path::Path,
    ) -> Option<AwsCoordinator> {
        let api = common::free_port();
        let metrics = common::free_port();
        let log = dir.join("serve.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = std::process::Command::new(bin)
            .args([
                "serve",
                "--queue",
                "sqs",
                "--store",
                "dynamodb",
                "--bootstrap",
            ])
            .arg("--listen")
            .arg(format!("127.0.0.1:{api}"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{metrics}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--inputs")
            .arg(inputs)
            .env("AWS_ENDPOINT_URL", moto)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn serve");
        let mut c = AwsCoordinator {
            child,
            base: format!("http://127.0.0.1:{api}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                let log = c.log_text();
                if log.contains("Address already in use") {
                    eprintln!("serve lost its port to another process, retrying: {log}");
                    return None;
                }
                panic!("serve exited early with {status}: {log}");
            }
            if common::blocking_client()
                .get(format!("{}/health", c.base))
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                return Some(c);
            }
            assert!(
                Instant::now() < deadline,
                "serve not healthy: {}",
                c.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The task as `GET /tasks/{id}` shows it (null when it cannot be read).
    fn task(&self, id: &str) -> serde_json::Value {
        common::blocking_client()
            .get(format!("{}/tasks/{id}", self.base))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .unwrap_or_default()
    }

    /// Submits a task; its id.
    fn submit(&self, agent_type: &str, payload: serde_json::Value) -> String {
        let response = common::blocking_client()
            .post(format!("{}/tasks", self.base))
            .json(&serde_json::json!({"agent_type": agent_type, "payload": payload}))
            .send()
            .expect("submit");
        assert_eq!(response.status().as_u16(), 201, "{}", self.log_text());
        let body: serde_json::Value = response.json().expect("json");
        body["id"].as_str().expect("id").to_owned()
    }

    fn status_of(&self, id: &str) -> String {
        common::blocking_client()
            .get(format!("{}/tasks/{id}", self.base))
            .send()
            .and_then(|r| r.json::<serde_json::Value>())
            .map(|v| v["status"].as_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
}

impl Drop for AwsCoordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Time-weighted fraction of [`from`, last start] (every task submitted, backlog not empty)
/// during which fewer than `limit` agents ran. Times are `date +%s%N` nanoseconds.
/// Also returns the time-weighted mean number running over the same window.
fn fraction_below(events: &[common::Event], limit: usize, from: u128) -> (f64, f64) {
    let mut points: Vec<(u128, i32)> = events
        .iter()
        .map(|e| (e.at, if e.start { 1 } else { -1 }))
        .collect();
    points.sort();
    let Some(last_start) = events.iter().filter(|e| e.start).map(|e| e.at).max() else {
        return (0.0, 0.0);
    };
    if last_start <= from {
        return (0.0, limit as f64);
    }
    let (mut running, mut below, mut prev, mut area) = (0i64, 0u128, from, 0u128);
    for (at, delta) in points {
        if at > last_start {
            break;
        }
        if at > from {
            if running < limit as i64 {
                below += at - prev;
            }
            area += (at - prev) * running.max(0) as u128;
            prev = at;
        }
        running += i64::from(delta);
    }
    let span = (last_start - from) as f64;
    (below as f64 / span, area as f64 / span)
}

/// Refill latencies in ms: for every agent that ended after `from` (backlog waiting), the time
/// until the next start, matching ends to starts first come first served. Sorted.
fn refill_latencies(events: &[common::Event], from: u128) -> Vec<f64> {
    let mut points: Vec<(u128, bool)> = events.iter().map(|e| (e.at, e.start)).collect();
    points.sort();
    let mut waiting = std::collections::VecDeque::new();
    let mut out = Vec::new();
    for (at, start) in points {
        if start {
            if let Some(ended) = waiting.pop_front() {
                out.push((at - ended) as f64 / 1e6);
            }
        } else if at > from {
            waiting.push_back(at);
        }
    }
    out.sort_by(f64::total_cmp);
    out
}

fn wall_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Default run time of each agent in the end-to-end test, in seconds.
///
/// The issue's figure, the time the type sits below 10 running while backlog remains, is
/// about 10 · L / T for agents of T seconds when each freed slot takes L to refill (the ten
/// slots drift apart, so their gaps add up). L is what the scheduler controls; T only scales
/// it. With a no-op agent the figure measured moto's throughput instead (~10 AWS calls per
/// task at ~65 calls/s: 88-100 %), so the agent sleeps: 2 s keeps the test near a minute.
const E2E_AGENT_SECS: &str = "2";

#[test]
fn three_hundred_tasks_through_sqs_and_dynamodb_never_exceed_ten_and_run_once() {
    let Some(url) = moto("e2e") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let events_log = dir.path().join("events.log");
    // `AO_TEST_E2E_AGENT_SLEEP=<secs>` sets how long each agent runs (0: a no-op agent).
    let secs = std::env::var("AO_TEST_E2E_AGENT_SLEEP")
        .ok()
        .filter(|s| s.parse::<f64>().is_ok())
        .unwrap_or_else(|| E2E_AGENT_SECS.to_owned());
    let body = if secs.parse::<f64>().is_ok_and(|s| s > 0.0) {
        format!("sleep {secs}")
    } else {
        "true".to_owned()
    };
    let script = common::logging_script(&events_log, &body);
    let inputs = dir.path().join("inputs.json");
    let inputs_json = serde_json::json!({
        "cluster_name": unique("e"),
        "task_queue_size": 100000,
        "agent_types": {"worker": {"image": "local", "cpu_limit": 100, "memory_limit": "64MB",
            "max_instances": 10, "command": "sh", "args": ["-c", script]}},
    });
    std::fs::write(&inputs, inputs_json.to_string()).expect("write inputs");
    // The figure is the product's: measured on the release build when tests/run.sh built one
    // (a debug build spends most of a refill in the AWS SDK's own code).
    let (bin, build) = match std::env::var("AO_TEST_RELEASE_BIN") {
        Ok(bin) if std::path::Path::new(&bin).is_file() => (bin, "release"),
        _ => (common::BIN.to_owned(), "debug"),
    };
    let coordinator = AwsCoordinator::start_binary(&bin, dir.path(), &url, &inputs);

    let began = Instant::now();
    let client = common::blocking_client();
    let mut ids = Vec::new();
    for i in 0..300 {
        let response = client
            .post(format!("{}/tasks", coordinator.base))
            .json(&serde_json::json!({"agent_type": "worker", "payload": {"n": i}}))
            .send()
            .expect("submit");
        assert_eq!(
            response.status().as_u16(),
            201,
            "{}",
            coordinator.log_text()
        );
        let body: serde_json::Value = response.json().expect("json");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    let submitted = began.elapsed();
    let submitted_at = wall_nanos();
    let deadline = Instant::now() + Duration::from_secs(400);
    for id in &ids {
        loop {
            let status = coordinator.status_of(id);
            if ["succeeded", "failed", "cancelled", "timed_out"].contains(&status.as_str()) {
                assert_eq!(status, "succeeded", "task {id}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} still {status}: {}",
                coordinator.log_text()
            );
            // Each look is a DynamoDB read in moto, which the run shares.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let finished = began.elapsed();
    let events = common::read_events(&events_log);
    let mut starts: std::collections::HashMap<&str, usize> = Default::default();
    for e in events.iter().filter(|e| e.start) {
        *starts.entry(e.task_id.as_str()).or_default() += 1;
    }
    assert_eq!(starts.len(), 300, "every task ran");
    assert!(starts.values().all(|&n| n == 1), "no task ran twice");
    let max = common::max_concurrency(&events, "worker");
    assert!(max <= 10, "max_instances exceeded: {max} at once");
    let (below, mean) = fraction_below(&events, 10, submitted_at);
    let refills = refill_latencies(&events, submitted_at);
    let pct = |p: usize| {
        refills
            .get((refills.len() * p / 100).min(refills.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    let average = refills.iter().sum::<f64>() / refills.len().max(1) as f64;
    // Ten slots each idle `average` per agent of a minute (the order of real agents' runs).
    let minute_agents = 1.0 - (1.0 - average / (60_000.0 + average)).powi(10);
    let report = format!(
        "sqs+dynamodb on moto, {build} build, agent `{body}`: 300 tasks submitted in {submitted:?}, all succeeded after {finished:?}; \
         at most {max} running; from the last submit to the last start (backlog waiting) below 10 running {:.1}% of the time \
         (target < 5 %), {mean:.1} running on average\n\
         refill latency (an agent's end to the next start, {} refills): mean {average:.1} ms, p50 {:.1} ms, p90 {:.1} ms, \
         max {:.1} ms; with agents of a minute the type would sit below 10 about {:.2}% of the time\n",
        100.0 * below,
        refills.len(),
        pct(50),
        pct(90),
        refills.last().copied().unwrap_or(0.0),
        100.0 * minute_agents
    );
    eprint!("{report}");
    // cargo test shows a passing test's output only with --nocapture: tests/run.sh prints this.
    let report_file =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sqs-burst-report.txt");
    if let Err(e) = std::fs::write(&report_file, &report) {
        eprintln!("cannot write {}: {e}", report_file.display());
    }
    let agent_secs: f64 = secs.parse().unwrap_or(0.0);
    if agent_secs > 0.0 {
        // A regression guard, not the issue's 5 % (the figure above is the report). A refill is
        // the executor's start of a task claimed ahead, its supervisor primed: ~6 ms mean with
        // the release build (~3 % below 10 with 2 s agents), ~15 ms with the debug one (~8 %),
        // on 2 cores shared with moto. Before claim-ahead and primed supervisors (a claim in
        // moto and a supervisor's start per refill) it was ~35 ms and 15-18 %; before the loop
        // handed its bookkeeping to jobs, 27-37 %. The bounds, 10 slots × 15 ms (release) or
        // 30 ms (debug) per agent run, fail a refill that waits on moto again.
        let per_run = if build == "release" { 0.3 } else { 0.6 };
        let bound = (per_run / agent_secs).min(1.0);
        assert!(
            below < bound,
            "below 10 running {:.1}% of the time, over {:.0}% (refill p50 {:.1} ms)",
            100.0 * below,
            100.0 * bound,
            pct(50)
        );
    }
}

#[tokio::test]
async fn terminal_tasks_get_a_ttl_and_an_expired_tasks_key_is_free_again() {
    let Some(url) = moto("ttl") else {
        return;
    };
    let config = config_for(&url).await;
    let store = dynamo_for(&config).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    within(async {
        let task = sample_task("coder", Some("delivery-7"));
        assert!(matches!(store.create(&task).await, Ok(Created::New(_))));
        let raw = |id: String| {
            let client = client.clone();
            let table = store.table().to_owned();
            async move {
                client
                    .get_item()
                    .table_name(table)
                    .key("id", aws_sdk_dynamodb::types::AttributeValue::S(id))
                    .send()
                    .await
                    .expect("get raw item")
                    .item()
                    .cloned()
            }
        };
        let item = raw(task.id.clone()).await.expect("stored");
        assert!(
            !item.contains_key("expires_at"),
            "a live task never expires"
        );
        let mut t = task.clone();
        for status in [
            agent_orchestrator::task::Status::Dispatched,
            agent_orchestrator::task::Status::Running,
            agent_orchestrator::task::Status::Succeeded,
        ] {
            t = store
                .update(&conformance::moved(&t, status), t.version)
                .await
                .expect("update");
        }
        let item = raw(task.id.clone()).await.expect("stored");
        let expires: i64 = match item.get("expires_at") {
            Some(aws_sdk_dynamodb::types::AttributeValue::N(n)) => n.parse().expect("number"),
            other => panic!("terminal task without expires_at: {other:?}"),
        };
        let want = t.finished_at.expect("finished") / 1000 + 30 * 24 * 3600;
        assert!(
            (expires - want).abs() <= 1,
            "expires_at {expires}, want {want}"
        );

        // DynamoDB's TTL deletes the task item; its key record stays behind.
        client
            .delete_item()
            .table_name(store.table())
            .key(
                "id",
                aws_sdk_dynamodb::types::AttributeValue::S(task.id.clone()),
            )
            .send()
            .await
            .expect("delete item");
        let again = sample_task("coder", Some("delivery-7"));
        match store.create(&again).await {
            Ok(Created::New(t)) => assert_eq!(t.id, again.id),
            other => panic!("key of an expired task: expected New, got {other:?}"),
        }
        match store
            .create(&sample_task("coder", Some("delivery-7")))
            .await
        {
            Ok(Created::Existing(t)) => assert_eq!(t.id, again.id),
            other => panic!("expected Existing, got {other:?}"),
        }
    })
    .await;
}

/// Agents under Nomad report their results on the result queue. Here the test plays the
/// agent's part while a local agent runs, against the real binary: a report of the running
/// attempt lands on the task and stays through its success, one sent after the success lands
/// too, and reports that cannot be recorded go to the dead-letter queue with the reason.
#[test]
fn results_sent_to_the_result_queue_land_on_their_tasks() {
    let Some(url) = moto("results") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = unique("r");
    // Each agent runs until the test lets it go.
    let gate = dir.path().join("go");
    let script = format!(
        "while [ ! -e {}-$AO_TASK_ID ]; do sleep 0.05; done",
        gate.display()
    );
    let inputs = dir.path().join("inputs.json");
    let inputs_json = serde_json::json!({
        "cluster_name": cluster,
        "agent_types": {"worker": {"image": "local", "cpu_limit": 100, "memory_limit": "64MB",
            "max_instances": 2, "command": "sh", "args": ["-c", script]}},
    });
    std::fs::write(&inputs, inputs_json.to_string()).expect("write inputs");
    let coordinator = AwsCoordinator::start(dir.path(), &url, &inputs);
    let release = |id: &str| std::fs::write(format!("{}-{id}", gate.display()), "").expect("gate");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let config = rt.block_on(config_for(&url));
    let sqs = aws_sdk_sqs::Client::new(&config);
    let names = AwsNames::for_cluster(&cluster, ["worker"]);
    let queue_url = |name: &str| {
        rt.block_on(sqs.get_queue_url().queue_name(name).send())
            .expect("queue url")
            .queue_url()
            .expect("url")
            .to_owned()
    };
    let (results, dlq) = (queue_url(&names.results), queue_url(&names.dlq));
    let report = |body: String| {
        rt.block_on(
            sqs.send_message()
                .queue_url(&results)
                .message_body(body)
                .send(),
        )
        .expect("send a report");
    };
    let submit = || coordinator.submit("worker", serde_json::json!({}));
    let wait_for = |id: &str, what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let task = coordinator.task(id);
            if done(&task) {
                return task;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never {what}: {task}\n{}",
                coordinator.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

    // While the attempt runs.
    let running = submit();
    wait_for(&running, "ran", &|t| t["status"] == "running");
    report(format!(
        r#"{{"task_id": "{running}", "attempt": 1, "result": {{"pr": 1}}}}"#
    ));
    let task = wait_for(&running, "got its result", &|t| !t["result"].is_null());
    assert_eq!(task["result"], serde_json::json!({"pr": 1}));
    assert_eq!(task["status"], "running", "only the result changed");
    release(&running);
    let task = wait_for(&running, "succeeded", &|t| t["status"] == "succeeded");
    assert_eq!(
        task["result"],
        serde_json::json!({"pr": 1}),
        "a success without a result file keeps the reported result"
    );

    // After the success.
    let done = submit();
    release(&done);
    let task = wait_for(&done, "succeeded", &|t| t["status"] == "succeeded");
    assert!(task["result"].is_null(), "{task}");
    report(format!(
        r#"{{"task_id": "{done}", "attempt": 1, "result": "late"}}"#
    ));
    wait_for(&done, "got its late result", &|t| t["result"] == "late");

    // Reports that cannot be recorded.
    let poison = [
        ("not json".to_owned(), "not a result report"),
        (
            r#"{"task_id": "no-such-task", "attempt": 1, "result": 1}"#.to_owned(),
            "there is no task",
        ),
        (
            format!(r#"{{"task_id": "{done}", "attempt": 2, "result": 1}}"#),
            "never dispatched",
        ),
    ];
    for (body, _) in &poison {
        report(body.clone());
    }
    let mut dead: Vec<(String, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dead.len() < poison.len() && Instant::now() < deadline {
        let answer = rt
            .block_on(
                sqs.receive_message()
                    .queue_url(&dlq)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .send(),
            )
            .expect("receive DLQ");
        for m in answer.messages() {
            let reason = m
                .message_attributes()
                .and_then(|a| a.get("reason"))
                .and_then(|v| v.string_value())
                .unwrap_or("")
                .to_owned();
            dead.push((m.body().unwrap_or("").to_owned(), reason));
        }
    }
    for (body, why) in &poison {
        assert!(
            dead.iter()
                .any(|(b, reason)| b == body && reason.contains(why)),
            "{body:?} in the DLQ because {why:?}: {dead:?}"
        );
    }
    assert_eq!(dead.len(), poison.len(), "{dead:?}");
    // Every report leaves the result queue (a poison one is deleted after its copy), and the
    // late result still stands.
    use aws_sdk_sqs::types::QueueAttributeName as Q;
    let left = || {
        let attrs = rt
            .block_on(
                sqs.get_queue_attributes()
                    .queue_url(&results)
                    .attribute_names(Q::All)
                    .send(),
            )
            .expect("attributes");
        let count = |name: Q| {
            attrs
                .attributes()
                .and_then(|a| a.get(&name))
                .cloned()
                .unwrap_or_default()
        };
        (
            count(Q::ApproximateNumberOfMessages),
            count(Q::ApproximateNumberOfMessagesNotVisible),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while left() != ("0".to_owned(), "0".to_owned()) {
        assert!(
            Instant::now() < deadline,
            "result queue not drained: {:?}",
            left()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(coordinator.task(&done)["result"], "late");
}

/// A listing page reads only its own tasks: an unreadable item older than the first page
/// cannot break it (a listing that read the whole index partition would fail on it), and the
/// page that holds it names it. Checked on every id-paged listing: by agent type, by status,
/// and unfiltered.
#[tokio::test]
async fn a_listing_page_reads_only_its_own_tasks() {
    let Some(url) = moto("list-pages") else {
        return;
    };
    let config = config_for(&url).await;
    let store = dynamo_for(&config).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    within(async {
        use aws_sdk_dynamodb::types::AttributeValue::{N, S};
        // Older than every real task (UUIDv7 ids grow with time), queued, no readable body.
        let broken = "00000000-0000-7000-8000-000000000000";
        client
            .put_item()
            .table_name(store.table())
            .item("id", S(broken.into()))
            .item("status", S("queued".into()))
            .item("agent_type", S("lister".into()))
            .item("updated_at", N("1".into()))
            .item("version", N("1".into()))
            .item("body", S("{not json".into()))
            .send()
            .await
            .expect("put the broken item");
        let mut ids = Vec::new();
        for _ in 0..5 {
            let task = sample_task("lister", None);
            assert!(matches!(
                store.create(&task).await.expect("create"),
                Created::New(_)
            ));
            ids.push(task.id);
        }
        ids.reverse();
        let filters = [
            agent_orchestrator::store::TaskFilter {
                status: None,
                agent_type: Some("lister".into()),
            },
            agent_orchestrator::store::TaskFilter {
                status: Some(agent_orchestrator::task::Status::Queued),
                agent_type: None,
            },
            agent_orchestrator::store::TaskFilter::default(),
        ];
        for filter in &filters {
            let first = store.list(filter, 3, None).await.unwrap_or_else(|e| {
                panic!("{filter:?}: the newest page does not touch the old item: {e}")
            });
            let got: Vec<&str> = first.tasks.iter().map(|t| t.id.as_str()).collect();
            assert_eq!(got, ids[..3], "{filter:?}");
            let cursor = first.next_cursor.expect("a second page");
            match store.list(filter, 3, Some(&cursor)).await {
                Err(StoreError::Unavailable { message }) => {
                    assert!(message.contains("corrupt task item"), "{message}")
                }
                other => panic!("{filter:?}: the page holding the broken item: {other:?}"),
            }
        }
    })
    .await;
}
