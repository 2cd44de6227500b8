//! Consul registration and the leader lock against a fake Consul that follows the API docs'
//! samples (`../shared/fixtures/consul-api`); two coordinators (real scheduler, SQLite in
//! memory, Nomad executor against the fake Nomad) share one lock; `serve --register consul`
//! registers and deregisters. Every await has a timeout.

mod fakes;

use std::sync::Arc;
use std::time::Duration;

use agent_orchestrator::consul::{
    self, ConsulClient, ConsulConfig, Leadership, LockConfig, RegistrationConfig, Token,
};
use agent_orchestrator::scheduler::Context;
use agent_orchestrator::store::sqlite::SqliteBackend;
use agent_orchestrator::task::Status;
use fakes::consul::FakeConsul;
use fakes::harness::{self, client_config, inputs, Core};
use fakes::nomad::{FakeNomad, Mode};
use fakes::within;
use tokio::sync::watch;

const CONSUL_TOKEN: &str = "consul-acl-token-9d2e";
const KEY: &str = "service/dev-agent-coordinator/leader";

fn consul_client(addr: &str, token: Option<&str>) -> ConsulClient {
    ConsulClient::new(&ConsulConfig {
        addr: addr.to_string(),
        token: token.map(Token::new),
        request_timeout: Duration::from_secs(3),
    })
    .expect("consul client")
}

fn lock_config(holder: &str) -> LockConfig {
    let mut config = LockConfig::new(KEY, holder);
    config.ttl = Duration::from_secs(10);
    config.lock_delay = Duration::ZERO;
    config.check_interval = Duration::from_millis(100);
    config
}

/// Feeds the lock's leadership into a scheduler context (as `serve` does).
fn bridge(
    ctx: Arc<Context>,
    mut leadership: watch::Receiver<Leadership>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = *leadership.borrow_and_update();
            ctx.set_leadership(now.leader, now.fence);
            if leadership.changed().await.is_err() {
                ctx.set_leadership(false, 0);
                return;
            }
        }
    })
}

#[tokio::test]
async fn registration_and_lock_requests_carry_the_token_only_when_configured() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeConsul::start(&fixtures).await;
    let registration = RegistrationConfig {
        name: "dev-agent-coordinator".into(),
        id: "dev-agent-coordinator-a".into(),
        address: Some("10.0.0.5".into()),
        port: 8080,
        metrics_port: 9090,
        tags: vec!["agent-orchestrator".into()],
        meta: Default::default(),
        check_interval: Duration::from_secs(10),
        deregister_after: Duration::from_secs(600),
    };
    for token in [Some(CONSUL_TOKEN), None] {
        let before = fake.requests().len();
        let client = consul_client(&fake.url(), token);
        let reg = within(5, "register", consul::register(&client, &registration))
            .await
            .expect("register");
        {
            let state = fake.state.lock().unwrap();
            let api = &state.services["dev-agent-coordinator-a"];
            assert_eq!(api["Port"], 8080);
            assert_eq!(api["Check"]["HTTP"], "http://10.0.0.5:8080/health");
            assert!(api["Check"]["DeregisterCriticalServiceAfter"].is_string());
            let metrics = &state.services["dev-agent-coordinator-a-metrics"];
            assert_eq!(metrics["Port"], 9090);
            assert!(metrics["Tags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t == "prometheus"));
        }
        let session = within(
            5,
            "session",
            client.create_session("s", Duration::from_secs(10), Duration::ZERO),
        )
        .await
        .unwrap();
        assert!(within(5, "acquire", client.acquire(KEY, &session, "a"))
            .await
            .unwrap());
        let entry = within(5, "read", client.read_key(KEY))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(entry.session.as_deref(), Some(session.as_str()));
        assert!(entry.lock_index >= 1);
        assert!(within(5, "renew", client.renew_session(&session))
            .await
            .unwrap());
        assert!(within(5, "release", client.release(KEY, &session))
            .await
            .unwrap());
        within(5, "destroy", client.destroy_session(&session))
            .await
            .unwrap();
        assert!(!within(5, "renew gone", client.renew_session(&session))
            .await
            .unwrap());
        within(5, "deregister", reg.deregister()).await.unwrap();
        let requests = fake.requests();
        for r in &requests[before..] {
            assert_eq!(r.header("X-Consul-Token"), token, "{} {}", r.method, r.path);
        }
        let deregistered = fake.state.lock().unwrap().deregistered.clone();
        assert!(deregistered.contains(&"dev-agent-coordinator-a".to_string()));
        assert!(deregistered.contains(&"dev-agent-coordinator-a-metrics".to_string()));
    }
    assert!(
        !format!("{:?}", consul_client(&fake.url(), Some(CONSUL_TOKEN))).contains(CONSUL_TOKEN)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_coordinators_one_leader_dispatches_and_a_killed_session_hands_over() {
    let fixtures = fixtures_or_skip!();
    let consul_fake = FakeConsul::start(&fixtures).await;
    let nomad = FakeNomad::start(
        &fixtures,
        Mode::Complete {
            run_for: Duration::from_millis(50),
        },
    )
    .await;
    let store = Arc::new(SqliteBackend::open_in_memory().unwrap());
    let mut cores = Vec::new();
    let mut locks = Vec::new();
    let (stop_locks, stop_rx) = watch::channel(false);
    for name in ["coord-a", "coord-b"] {
        let core = Core::start(
            store.clone(),
            client_config(&nomad.url(), Some(name)),
            inputs(4, 4),
            harness::fast_settings(),
            false,
        )
        .await;
        let (leadership, handle) = consul::spawn_leader_lock(
            consul_client(&consul_fake.url(), Some(CONSUL_TOKEN)),
            lock_config(name),
            stop_rx.clone(),
        );
        locks.push((handle, bridge(core.ctx.clone(), leadership)));
        cores.push(core);
    }
    let leader_index = || -> Vec<usize> {
        cores
            .iter()
            .enumerate()
            .filter(|(_, c)| c.ctx.is_leader())
            .map(|(i, _)| i)
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while leader_index().len() != 1 {
        assert!(std::time::Instant::now() < deadline, "no single leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = leader_index()[0];
    let first_token = ["coord-a", "coord-b"][first];
    let first_fence = cores[first].ctx.fence();
    assert_eq!(first_fence, consul_fake.lock_index(KEY));

    let ids = harness::submit(&cores[1 - first].ctx, "coder", 20, None).await;
    let tasks = harness::wait_terminal(&cores[first].ctx, &ids, 30).await;
    assert_eq!(harness::count(&tasks, Status::Succeeded), 20);
    for id in &ids {
        let children = nomad.children_of_task(id);
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].dispatched_with.as_deref(), Some(first_token));
    }

    // The leader's session dies (TTL ran out): the other one takes over with a newer fence.
    let holder = consul_fake.holder(KEY).expect("a holder");
    consul_fake.kill_session(&holder);
    let second = 1 - first;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cores[second].ctx.is_leader() || cores[first].ctx.is_leader() {
        assert!(std::time::Instant::now() < deadline, "no handover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second_token = ["coord-a", "coord-b"][second];
    assert!(cores[second].ctx.fence() > first_fence);
    let more = harness::submit(&cores[first].ctx, "tester", 20, None).await;
    let tasks = harness::wait_terminal(&cores[second].ctx, &more, 30).await;
    assert_eq!(harness::count(&tasks, Status::Succeeded), 20);
    for task in &tasks {
        let children = nomad.children_of_task(&task.id);
        assert_eq!(children.len(), 1, "no task dispatched by both");
        assert_eq!(children[0].dispatched_with.as_deref(), Some(second_token));
        assert_eq!(task.fence, cores[second].ctx.fence());
    }
    // The leader watched the key with blocking queries.
    assert!(consul_fake
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path.starts_with("/v1/kv/") && r.param("index").is_some()));
    // Every Consul request carried the token.
    assert!(consul_fake
        .requests()
        .iter()
        .all(|r| r.header("X-Consul-Token") == Some(CONSUL_TOKEN)));

    let _ = stop_locks.send(true);
    for (handle, bridge) in locks {
        let _ = within(5, "lock stops", handle).await;
        bridge.abort();
    }
    assert_eq!(consul_fake.holder(KEY), None, "released on shutdown");
    for core in cores {
        core.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_register_consul_registers_and_deregisters_on_sigterm() {
    let fixtures = fixtures_or_skip!();
    let fake = FakeConsul::start(&fixtures).await;
    let dir = tempfile::tempdir().unwrap();
    let port = |_: ()| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    };
    let (api, metrics) = (port(()), port(()));
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_agent-orchestrator"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{api}"))
        .arg("--metrics-listen")
        .arg(format!("127.0.0.1:{metrics}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--register")
        .arg("consul")
        .env("CONSUL_HTTP_ADDR", fake.url())
        .env("CONSUL_HTTP_TOKEN", CONSUL_TOKEN)
        .env("HOSTNAME", "test-host")
        .env_remove("AO_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start serve");
    // The embedded default inputs name the cluster `local`.
    let key = "service/local-agent-coordinator/leader";
    let registered = || fake.state.lock().unwrap().registered.len() >= 2;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !registered() || fake.holder(key).is_none() {
        if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
            panic!("serve did not register and take the lock: {log}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let services: Vec<String> = fake
        .state
        .lock()
        .unwrap()
        .services
        .keys()
        .cloned()
        .collect();
    assert!(
        services.contains(&format!("local-agent-coordinator-test-host-{api}")),
        "{services:?}"
    );
    assert!(
        services.contains(&format!("local-agent-coordinator-test-host-{api}-metrics")),
        "{services:?}"
    );
    // `serve` installs its SIGTERM handler once it logs that it started.
    let log_path = dir.path().join("serve.log");
    let started = || {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("coordinator started")
    };
    while !started() {
        assert!(std::time::Instant::now() < deadline, "serve never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIGTERM: deregisters both services and releases the lock.
    let pid = child.id() as i32;
    // SAFETY: signalling our own child process by its pid.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop on SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let state = fake.state.lock().unwrap();
    assert_eq!(state.deregistered.len(), 2, "{:?}", state.deregistered);
    assert!(state.services.is_empty());
    assert!(state
        .requests
        .iter()
        .all(|r| r.header("X-Consul-Token") == Some(CONSUL_TOKEN)));
    drop(state);
    assert_eq!(fake.holder(key), None);
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
    assert!(!log.contains(CONSUL_TOKEN), "token in logs");
}
