//! The SQLite backend: the shared conformance suites, plus what only a file can show
//! (reopening, two backends on one file, crashes).

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_orchestrator::queue::{Depth, SqliteBackend, TaskQueue};
use agent_orchestrator::store::conformance::{self, moved, sample_task};
use agent_orchestrator::store::{Created, StoreError, TaskFilter, TaskStore};
use agent_orchestrator::task::Status;

const TEST_TIMEOUT: Duration = Duration::from_secs(180);

async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("test timed out")
}

fn file_backend(path: &Path) -> SqliteBackend {
    SqliteBackend::open(path).expect("open sqlite file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_conformance_in_memory() {
    within(conformance::run_store_suite(|| {
        SqliteBackend::open_in_memory().expect("open in memory")
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_conformance_on_a_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data/ao.db");
    // Every check gets its own connection to the same file.
    within(conformance::run_store_suite(|| file_backend(&path))).await;
    file_backend(&path).integrity_check().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_conformance_in_memory() {
    within(conformance::run_queue_suite(|| {
        SqliteBackend::open_in_memory().expect("open in memory")
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_conformance_on_a_shared_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ao.db");
    within(conformance::run_queue_suite(|| file_backend(&path))).await;
    file_backend(&path).integrity_check().unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn suites_also_pass_on_a_current_thread_runtime() {
    within(async {
        let b = SqliteBackend::open_in_memory().unwrap();
        conformance::run_store_suite(|| b.clone()).await;
        conformance::run_queue_suite(|| b.clone()).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_keeps_everything() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ao.db");
        let b = file_backend(&path);
        assert_eq!(b.path(), Some(path.as_path()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let t = sample_task("reopen", Some(&format!("key-{i}")));
            b.create(&t).await.unwrap();
            tasks.push(t);
        }
        tasks[0] = b
            .update(&moved(&tasks[0], Status::Dispatched), tasks[0].version)
            .await
            .unwrap();
        for t in &tasks {
            b.send("reopen", &t.id, t.priority, Duration::ZERO)
                .await
                .unwrap();
        }
        b.send("reopen", "delayed", 0, Duration::from_secs(3600))
            .await
            .unwrap();
        let in_flight = b
            .receive("reopen", 1, Duration::from_secs(3600))
            .await
            .unwrap();
        let before = b.depth("reopen").await.unwrap();
        assert_eq!(
            before,
            Depth {
                visible: 4,
                in_flight: 1,
                delayed: 1
            }
        );
        let counts = b.counts().await.unwrap();
        drop(b);

        let b = file_backend(&path);
        b.integrity_check().unwrap();
        for t in &tasks {
            assert_eq!(b.get(&t.id).await.unwrap().as_ref(), Some(t));
        }
        assert_eq!(b.counts().await.unwrap(), counts);
        assert_eq!(b.depth("reopen").await.unwrap(), before);
        match b
            .create(&sample_task("reopen", Some("key-3")))
            .await
            .unwrap()
        {
            Created::Existing(t) => assert_eq!(t, tasks[3]),
            other => panic!("idempotency key forgotten across reopen: {other:?}"),
        }
        // The in-flight receipt is still good after the reopen.
        b.ack("reopen", &in_flight[0].receipt).await.unwrap();
        assert_eq!(
            b.depth("reopen").await.unwrap(),
            Depth {
                visible: 4,
                in_flight: 0,
                delayed: 1
            }
        );
        let page = b.list(&TaskFilter::default(), 10, None).await.unwrap();
        assert_eq!(page.tasks.len(), 5);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_backends_on_one_file_never_both_win() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ao.db");
        let a = file_backend(&path);
        let b = file_backend(&path);
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let t = sample_task("two", None);
            a.create(&t).await.unwrap();
            tasks.push(t);
        }
        let mut handles = Vec::new();
        for t in tasks.clone() {
            let (a, b) = (a.clone(), b.clone());
            handles.push(tokio::spawn(async move {
                // Both coordinators read the task, then both claim it.
                let seen_a = a.get(&t.id).await.unwrap().unwrap();
                let seen_b = b.get(&t.id).await.unwrap().unwrap();
                let mut claim_a = moved(&seen_a, Status::Dispatched);
                claim_a.executor_handle = Some("a".into());
                let mut claim_b = moved(&seen_b, Status::Dispatched);
                claim_b.executor_handle = Some("b".into());
                let (ra, rb) = tokio::join!(
                    a.update(&claim_a, seen_a.version),
                    b.update(&claim_b, seen_b.version)
                );
                match (ra, rb) {
                    (Ok(w), Err(StoreError::Conflict { .. }))
                    | (Err(StoreError::Conflict { .. }), Ok(w)) => w,
                    other => panic!("expected exactly one winner: {other:?}"),
                }
            }));
        }
        for (h, t) in handles.into_iter().zip(&tasks) {
            let winner = h.await.unwrap();
            assert_eq!(a.get(&t.id).await.unwrap().unwrap(), winner);
            assert_eq!(b.get(&t.id).await.unwrap().unwrap(), winner);
        }

        // Two receivers on one file share the queue without double delivery.
        for t in &tasks {
            a.send("two", &t.id, 0, Duration::ZERO).await.unwrap();
        }
        let mut receivers = Vec::new();
        for backend in [a.clone(), b.clone(), a.clone(), b.clone()] {
            receivers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = backend
                        .receive("two", 7, Duration::from_secs(3600))
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    for m in batch {
                        backend.ack("two", &m.receipt).await.unwrap();
                        got.push(m.task_id);
                    }
                }
            }));
        }
        let mut all = Vec::new();
        for r in receivers {
            all.extend(r.await.unwrap());
        }
        let unique: BTreeSet<_> = all.iter().cloned().collect();
        assert_eq!(all.len(), tasks.len(), "each message delivered once");
        assert_eq!(unique, tasks.iter().map(|t| t.id.clone()).collect());
        a.integrity_check().unwrap();
    })
    .await;
}

/// Semantics the generic suite leaves to the backend, pinned for SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_queue_details() {
    within(async {
        let q = SqliteBackend::open_in_memory().unwrap();
        // A superseded receipt does not delete the newer delivery.
        q.send("d", "x", 0, Duration::ZERO).await.unwrap();
        let first = q.receive("d", 1, Duration::from_millis(50)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        let second = q.receive("d", 1, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(second[0].task_id, "x");
        q.ack("d", &first[0].receipt).await.unwrap();
        assert_eq!(
            q.depth("d").await.unwrap(),
            Depth {
                visible: 0,
                in_flight: 1,
                delayed: 0
            }
        );
        // A receipt is bound to its agent type.
        q.ack("other", &second[0].receipt).await.unwrap();
        assert_eq!(q.depth("d").await.unwrap().in_flight, 1);
        // Sending a task that is in flight keeps the in-flight row as it is.
        q.send("d", "x", 9, Duration::ZERO).await.unwrap();
        assert_eq!(
            q.depth("d").await.unwrap(),
            Depth {
                visible: 0,
                in_flight: 1,
                delayed: 0
            }
        );
        // Nacked with a delay counts as in flight (as SQS does), not delayed.
        q.nack("d", &second[0].receipt, Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(
            q.depth("d").await.unwrap(),
            Depth {
                visible: 0,
                in_flight: 1,
                delayed: 0
            }
        );
        q.ack("d", &second[0].receipt).await.unwrap();
        assert_eq!(q.depth("d").await.unwrap(), Depth::default());
        // Receive never picks more than exists, and huge max/visibility values are fine.
        q.send("d", "y", i64::MAX, Duration::MAX).await.unwrap();
        assert_eq!(q.depth("d").await.unwrap().delayed, 1);
        q.send("d", "z", i64::MIN, Duration::ZERO).await.unwrap();
        let got = q.receive("d", usize::MAX, Duration::MAX).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].priority, i64::MIN);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_details() {
    within(async {
        let s = SqliteBackend::open_in_memory().unwrap();
        // A retried create of the same task is answered with the stored task.
        let t = sample_task("s", None);
        s.create(&t).await.unwrap();
        let dispatched = s
            .update(&moved(&t, Status::Dispatched), t.version)
            .await
            .unwrap();
        assert_eq!(
            s.create(&t).await.unwrap(),
            Created::Existing(dispatched.clone())
        );
        // Taking another task's idempotency key is refused as a conflict.
        let keyed = sample_task("s", Some("k"));
        s.create(&keyed).await.unwrap();
        let mut steal = moved(&dispatched, Status::Running);
        steal.idempotency_key = Some("k".into());
        assert!(matches!(
            s.update(&steal, dispatched.version).await,
            Err(StoreError::Conflict { .. })
        ));
        // Limits are capped, zero means one.
        for _ in 0..3 {
            s.create(&sample_task("s", None)).await.unwrap();
        }
        let filter = TaskFilter {
            status: None,
            agent_type: Some("s".into()),
        };
        assert_eq!(s.list(&filter, 0, None).await.unwrap().tasks.len(), 1);
        assert_eq!(
            s.list(&filter, usize::MAX, None).await.unwrap().tasks.len(),
            5
        );
        assert!(matches!(
            s.list(&filter, 10, Some("")).await,
            Err(StoreError::BadCursor)
        ));
        assert!(s.stale_queued("s", i64::MAX, 0).await.unwrap().is_empty());
        s.ping().await.unwrap();
        s.integrity_check().unwrap();
    })
    .await;
}

/// Child half of `a_killed_writer_loses_nothing_it_reported`: writes until killed.
#[tokio::test(flavor = "current_thread")]
#[ignore = "run by a_killed_writer_loses_nothing_it_reported"]
async fn crash_child_writer() {
    let Ok(path) = std::env::var("AO_SQLITE_CRASH_DB") else {
        return;
    };
    let b = file_backend(Path::new(&path));
    loop {
        let t = sample_task("crash", None);
        b.create(&t).await.unwrap();
        b.send("crash", &t.id, 0, Duration::ZERO).await.unwrap();
        let t = b
            .update(&moved(&t, Status::Dispatched), t.version)
            .await
            .unwrap();
        // Printed only after the writes returned: the parent holds us to it.
        println!("committed {} {}", t.id, t.version);
    }
}

#[test]
fn a_killed_writer_loses_nothing_it_reported() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    drop(SqliteBackend::open(&path).unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AO_SQLITE_CRASH_DB", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut committed = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix("committed ") {
                let (id, version) = rest.split_once(' ').unwrap();
                committed.push((id.to_owned(), version.parse::<u64>().unwrap()));
            }
        }
        committed
    });
    // Let it write for a while, then SIGKILL it mid-stream.
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    child.kill().unwrap();
    child.wait().unwrap();
    let committed = reader.join().unwrap();
    assert!(
        committed.len() > 10,
        "child wrote too little in {:?}: {}",
        started.elapsed(),
        committed.len()
    );

    let b = SqliteBackend::open(&path).unwrap();
    b.integrity_check().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(within(async {
        for (id, version) in &committed {
            let t = b
                .get(id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("reported task {id} lost"));
            assert_eq!(t.version, *version);
            assert_eq!(t.status, Status::Dispatched);
        }
        let d = b.depth("crash").await.unwrap();
        assert!(
            d.visible >= committed.len() as u64,
            "reported messages lost: {d:?}"
        );
    }));
}

/// Not an assertion: prints create+send+receive+update+ack cycles per second
/// (`cargo test --release --test backend_sqlite throughput -- --nocapture`).
/// `AO_SQLITE_BENCH_TASKS` sets the number of tasks (default 2,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn throughput_report() {
    within(async {
        let n: usize = std::env::var("AO_SQLITE_BENCH_TASKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2_000);
        let dir = tempfile::tempdir().unwrap();
        let b = file_backend(&dir.path().join("bench.db"));

        // Sequential: one task at a time, create+send+receive+update+ack (5 calls).
        let start = Instant::now();
        for _ in 0..n {
            cycle(&b, "seq").await;
        }
        let seq = n as f64 / start.elapsed().as_secs_f64();

        // Full lifecycle, 7 calls (6 writes + receive): create, send, receive, dispatched,
        // ack, running, succeeded; 32 tasks in flight at once, as a busy coordinator would.
        let workers = 32;
        let start = Instant::now();
        let b2 = Arc::new(b.clone());
        let mut handles = Vec::new();
        for w in 0..workers {
            let b = Arc::clone(&b2);
            let per = n / workers;
            handles.push(tokio::spawn(async move {
                let agent_type = format!("par-{w}");
                for _ in 0..per {
                    let t = cycle(&b, &agent_type).await;
                    let t = b
                        .update(&moved(&t, Status::Running), t.version)
                        .await
                        .unwrap();
                    b.update(&moved(&t, Status::Succeeded), t.version)
                        .await
                        .unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        let par = (n / workers * workers) as f64 / start.elapsed().as_secs_f64();
        println!(
            "sqlite throughput: {seq:.0} cycles/s sequential (5 calls each), \
             {par:.0} full lifecycles/s with {workers} concurrent tasks (7 calls each)"
        );
        b.integrity_check().unwrap();
    })
    .await;
}

async fn cycle(b: &SqliteBackend, agent_type: &str) -> agent_orchestrator::task::Task {
    let t = sample_task(agent_type, None);
    b.create(&t).await.unwrap();
    b.send(agent_type, &t.id, t.priority, Duration::ZERO)
        .await
        .unwrap();
    let m = b
        .receive(agent_type, 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(m.len(), 1);
    let t = b
        .update(&moved(&t, Status::Dispatched), t.version)
        .await
        .unwrap();
    b.ack(agent_type, &m[0].receipt).await.unwrap();
    t
}
