//! Backend throughput: tasks/s of the coordinator's per-task backend cycle — create (store),
//! send (queue), receive, claim (store update, compare-and-set), ack — on SQLite and on
//! SQS + DynamoDB through moto server, with several workers at once.
//!
//! `cargo bench --features aws --bench backends`. The AWS half needs moto: set
//! `AO_TEST_MOTO_URL` (tests/run.sh shows how to start it) or it is skipped with a message.
//! `AO_BENCH_CYCLES` (default 2000 SQLite / 300 moto) and `AO_BENCH_WORKERS` (default 8) tune
//! it. Through moto every call costs milliseconds of Python: the figure measures moto, not
//! AWS (real SQS/DynamoDB answer in single-digit ms and scale out).
//!
//! Then, on DynamoDB, the first page (50) of each listing (`GET /tasks` by agent type, by
//! status, unfiltered) once `AO_BENCH_LIST_TASKS` (default 1000) more tasks are in the table:
//! what a status-page view or an API client pays as the table grows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_orchestrator::aws::{sdk_config, AwsNames, AwsSettings};
use agent_orchestrator::queue::sqs::{bootstrap_queues, SqsOptions, SqsQueue};
use agent_orchestrator::queue::{SqliteBackend, TaskQueue};
use agent_orchestrator::store::conformance::{moved, sample_task};
use agent_orchestrator::store::dynamodb::{bootstrap_table, DynamoStore};
use agent_orchestrator::store::{TaskFilter, TaskStore};
use agent_orchestrator::task::Status;

const AGENT_TYPE: &str = "bench";

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One worker's loop: create + send, then receive one message, claim its task, ack.
async fn worker(
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    remaining: Arc<AtomicUsize>,
) -> Result<usize, String> {
    let mut done = 0;
    while remaining
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let task = sample_task(AGENT_TYPE, None);
        store.create(&task).await.map_err(|e| e.to_string())?;
        queue
            .send(AGENT_TYPE, &task.id, 0, Duration::ZERO)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let message = loop {
            let got = queue
                .receive(AGENT_TYPE, 1, Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?;
            if let Some(m) = got.into_iter().next() {
                break m;
            }
            if Instant::now() > deadline {
                return Err("no message within 30 s".into());
            }
        };
        let current = store
            .get(&message.task_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("received a task that is not stored")?;
        store
            .update(&moved(&current, Status::Dispatched), current.version)
            .await
            .map_err(|e| e.to_string())?;
        queue
            .ack(AGENT_TYPE, &message.receipt)
            .await
            .map_err(|e| e.to_string())?;
        done += 1;
    }
    Ok(done)
}

async fn measure(
    name: &str,
    store: Arc<dyn TaskStore>,
    queue: Arc<dyn TaskQueue>,
    cycles: usize,
    workers: usize,
) {
    let remaining = Arc::new(AtomicUsize::new(cycles));
    let began = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(store.clone(), queue.clone(), remaining.clone())))
        .collect();
    let mut done = 0;
    for h in handles {
        match h.await {
            Ok(Ok(n)) => done += n,
            Ok(Err(e)) => println!("{name}: a worker failed: {e}"),
            Err(e) => println!("{name}: a worker panicked: {e}"),
        }
    }
    let took = began.elapsed();
    println!(
        "{name:<28} {done:>6} cycles, {workers} workers, {:>8.2?}: {:>8.1} tasks/s",
        took,
        done as f64 / took.as_secs_f64()
    );
}

fn main() {
    let workers = env_usize("AO_BENCH_WORKERS").unwrap_or(8);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("backend cycle: create + send + receive + claim (update) + ack");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let sqlite =
            Arc::new(SqliteBackend::open(&dir.path().join("bench.db")).expect("open sqlite"));
        measure(
            "sqlite (file, WAL)",
            sqlite.clone(),
            sqlite,
            env_usize("AO_BENCH_CYCLES").unwrap_or(2000),
            workers,
        )
        .await;

        let Some(moto) = std::env::var("AO_TEST_MOTO_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            println!("sqs + dynamodb: skipped, AO_TEST_MOTO_URL is not set (start moto server)");
            return;
        };
        let config = sdk_config(&AwsSettings {
            endpoint_url: Some(moto),
            region: Some("us-east-1".into()),
            static_credentials: Some(("test".into(), "test".into())),
        })
        .await;
        let cluster = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let names = AwsNames::for_cluster(&cluster, [AGENT_TYPE]);
        if let Err(e) = bootstrap_queues(&aws_sdk_sqs::Client::new(&config), &names).await {
            println!("sqs + dynamodb: cannot create queues: {e}");
            return;
        }
        if let Err(e) = bootstrap_table(&aws_sdk_dynamodb::Client::new(&config), &names.table).await
        {
            println!("sqs + dynamodb: cannot create the table: {e}");
            return;
        }
        let store = Arc::new(DynamoStore::new(&config, &names.table));
        let queue = Arc::new(SqsQueue::new(&config, &names, SqsOptions::default()));
        measure(
            "sqs + dynamodb (moto)",
            store.clone(),
            queue,
            env_usize("AO_BENCH_CYCLES").unwrap_or(300),
            workers,
        )
        .await;
        measure_listing(
            store,
            env_usize("AO_BENCH_LIST_TASKS").unwrap_or(1000),
            workers,
        )
        .await;
    });
}

/// Adds `extra` queued tasks, then times first pages of 50 of each listing.
async fn measure_listing(store: Arc<DynamoStore>, extra: usize, workers: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let adders = (0..workers.max(1)).map(|_| {
        let (store, next) = (store.clone(), next.clone());
        tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < extra {
                store.create(&sample_task(AGENT_TYPE, None)).await?;
            }
            Ok::<(), agent_orchestrator::store::StoreError>(())
        })
    });
    for added in futures::future::join_all(adders).await {
        if !matches!(added, Ok(Ok(()))) {
            println!("listing: could not add tasks: {added:?}");
            return;
        }
    }
    let filters = [
        ("by agent type", Some(AGENT_TYPE), None),
        ("by status (queued)", None, Some(Status::Queued)),
        ("unfiltered", None, None),
    ];
    for (name, agent_type, status) in filters {
        let filter = TaskFilter {
            status,
            agent_type: agent_type.map(String::from),
        };
        let rounds = 10;
        let began = Instant::now();
        for _ in 0..rounds {
            if let Err(e) = store.list(&filter, 50, None).await {
                println!("listing {name}: {e}");
                return;
            }
        }
        println!(
            "dynamodb (moto) listing {name}, first page of 50 with {extra}+ tasks in the table: {:.1} ms a page",
            began.elapsed().as_secs_f64() * 1000.0 / rounds as f64
        );
    }
}
