//! Workflows on the cluster backend (feature `aws`): the DynamoDB workflow store passes the
//! same suite as the SQLite one, lives in the task table without showing up as tasks, and a
//! coordinator with `--store dynamodb` keeps its workflows there (not in the data dir).
//!
//! Needs `AO_TEST_MOTO_URL` (tests/run.sh starts moto and sets it); skips with a message without.
#![cfg(feature = "aws")]

mod common;

use std::time::{Duration, Instant};

use agent_orchestrator::aws::{sdk_config, AwsSettings};
use agent_orchestrator::store::dynamodb::{bootstrap_table, DynamoStore};
use agent_orchestrator::store::{TaskFilter, TaskStore};
use agent_orchestrator::workflow::conformance;
use agent_orchestrator::workflow::dynamodb::DynamoWorkflowStore;
use agent_orchestrator::workflow::store::WorkflowStore;
use common::{moto, Coordinator};
use serde_json::json;

fn unique(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &random[..8])
}

#[tokio::test]
async fn the_dynamodb_workflow_store_passes_the_suite_and_its_items_are_not_tasks() {
    let Some(url) = moto("workflow store suite") else {
        return;
    };
    let config = sdk_config(&AwsSettings {
        endpoint_url: Some(url),
        region: Some("us-east-1".into()),
        static_credentials: Some(("test".into(), "test".into())),
    })
    .await;
    let table = format!("{}-agent-tasks", unique("wf"));
    bootstrap_table(&aws_sdk_dynamodb::Client::new(&config), &table)
        .await
        .expect("bootstrap table");
    let workflows = DynamoWorkflowStore::new(&config, &table);
    tokio::time::timeout(Duration::from_secs(120), conformance::run(&workflows))
        .await
        .expect("suite timed out");

    // Same table, task side: no listing, count or lookup sees the workflow items.
    let tasks = DynamoStore::new(&config, &table);
    let stored = workflows.list_recent(10).await.expect("list");
    assert_eq!(stored.len(), 2);
    assert!(tasks.counts().await.expect("counts").is_empty());
    let page = tasks
        .list(&TaskFilter::default(), 100, None)
        .await
        .expect("list tasks");
    assert!(page.tasks.is_empty(), "{:?}", page.tasks);
    assert_eq!(
        tasks.get(&format!("wf#{}", stored[0].id)).await.ok(),
        Some(None)
    );
}

#[test]
fn a_coordinator_on_dynamodb_keeps_its_workflows_in_the_table() {
    let Some(url) = moto("workflows on dynamodb e2e") else {
        return;
    };
    // The coordinator inherits the SDK's settings from the environment.
    std::env::set_var("AWS_ENDPOINT_URL", &url);
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = dir.path().join("inputs.json");
    let inputs_json = json!({
        "cluster_name": unique("w"),
        "agent_types": {"work": {"image": "local", "cpu_limit": 100, "memory_limit": "64MB",
            "max_instances": 2, "command": "true"}},
    });
    std::fs::write(&inputs, inputs_json.to_string()).expect("write inputs");
    let flags = [
        "--store",
        "dynamodb",
        "--bootstrap",
        "--inputs",
        inputs.to_str().expect("utf-8 path"),
    ];
    let mut c = Coordinator::start(dir.path(), &flags);
    let (status, created) = c.post(
        "/workflows",
        &json!({"name": "on-dynamodb", "tasks": [
            {"id": "a", "agent_type": "work", "payload": {}},
            {"id": "b", "agent_type": "work", "payload": {}, "depends_on": ["a"]},
        ]})
        .to_string(),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, wf) = c.get(&format!("/workflows/{id}"));
        assert_eq!(status, 200, "{wf}");
        if wf["status"] == "succeeded" {
            break;
        }
        assert!(Instant::now() < deadline, "{wf}\n{}", c.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !c.data_dir.join("workflows.db").exists(),
        "workflows must not go to the data dir with --store dynamodb"
    );
    // A new coordinator with an empty data dir still knows the workflow: it is in the table.
    c.terminate();
    let other = tempfile::tempdir().expect("tempdir");
    let c = Coordinator::start(other.path(), &flags);
    let (status, wf) = c.get(&format!("/workflows/{id}"));
    assert_eq!(status, 200, "{wf}");
    assert_eq!(wf["status"], "succeeded", "{wf}");
    let (_, list) = c.get("/workflows");
    assert_eq!(list["workflows"][0]["id"], id.as_str(), "{list}");
}
