//! The behaviour every [`WorkflowStore`] backend must show, as one suite each backend's tests
//! run (the SQLite store in its unit tests, the DynamoDB store against moto).

use super::store::{WorkflowStore, WorkflowStoreError};
use super::{plan, NodeRequest, NodeState, OnFailure, Workflow, WorkflowRequest, WorkflowStatus};

/// A one-node workflow on the embedded `echo` agent type, created at `now`.
pub fn sample_workflow(name: &str, now: crate::task::Millis) -> Workflow {
    let request = WorkflowRequest {
        name: name.into(),
        tasks: vec![NodeRequest {
            id: "a".into(),
            agent_type: "echo".into(),
            payload: serde_json::json!({"x": 1}),
            depends_on: vec![],
            on_failure: OnFailure::Skip,
            priority: None,
            timeout_seconds: None,
        }],
    };
    match plan(request, &crate::config::Inputs::embedded_default(), now) {
        Ok(workflow) => workflow,
        Err(e) => panic!("the sample workflow must plan: {e:?}"),
    }
}

/// Create (and a second create of the same id), get, compare-and-set update (a stale writer
/// loses, an unknown id is `NotFound`), `list_open` oldest first and `list_recent` newest first.
/// Panics on the first difference. The store must hold no workflows yet.
pub async fn run(store: &dyn WorkflowStore) {
    let first = sample_workflow("first", 1_000);
    let second = sample_workflow("second", 2_000);
    assert!(first.id < second.id, "ids sort by creation");
    assert_eq!(store.create(&first).await.ok(), Some(first.clone()));
    assert!(matches!(
        store.create(&first).await,
        Err(WorkflowStoreError::Conflict { .. })
    ));
    assert_eq!(store.create(&second).await.ok(), Some(second.clone()));
    assert_eq!(store.get(&first.id).await.ok(), Some(Some(first.clone())));
    assert_eq!(store.get("no-such-workflow").await.ok(), Some(None));
    let open = store.list_open().await.ok();
    assert_eq!(
        open,
        Some(vec![first.clone(), second.clone()]),
        "oldest first"
    );

    let mut next = first.clone();
    next.status = WorkflowStatus::Cancelled;
    next.nodes[0].state = NodeState::Cancelled;
    let stored = match store.update(&next, first.version).await {
        Ok(stored) => stored,
        Err(e) => panic!("update: {e}"),
    };
    assert_eq!(stored.version, first.version + 1);
    assert!(
        matches!(
            store.update(&next, first.version).await,
            Err(WorkflowStoreError::Conflict { .. })
        ),
        "a stale writer loses"
    );
    assert_eq!(store.get(&first.id).await.ok(), Some(Some(stored.clone())));
    assert_eq!(store.list_open().await.ok(), Some(vec![second.clone()]));
    assert_eq!(
        store.list_recent(10).await.ok(),
        Some(vec![second.clone(), stored.clone()]),
        "newest first"
    );
    assert_eq!(store.list_recent(1).await.ok(), Some(vec![second.clone()]));
    let mut missing = first.clone();
    missing.id = "no-such-workflow".into();
    assert!(matches!(
        store.update(&missing, 1).await,
        Err(WorkflowStoreError::NotFound { .. })
    ));
}
