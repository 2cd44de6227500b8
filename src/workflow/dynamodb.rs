//! [`DynamoWorkflowStore`]: workflows in the cluster's task table (feature `aws`), so every
//! coordinator sees them and a workflow outlives the instance that accepted it.
//!
//! # Items
//!
//! One item per workflow in the task table (`<cluster_name>-agent-tasks`): `id` =
//! `wf#<workflow id>`, `agent_type` = [`PARTITION`] (no agent type can be named so: names are
//! lowercase letters, digits and dashes), `updated_at` (N, epoch ms), `version` (N, the
//! compare-and-set key), `open` (BOOL), `body` (S, the workflow as JSON, the source of truth on
//! read) and, once closed, `expires_at` for the table's TTL (finish + [`DEFAULT_TTL`], as tasks).
//! With no `status` attribute a workflow item is in no `status-index` query and no task scan;
//! the task store's `get` refuses `wf#` ids.
//!
//! # Operations
//!
//! - `create`: PutItem conditional on `attribute_not_exists(id)`.
//! - `get`: strongly consistent GetItem.
//! - `update`: PutItem conditional on `version = :expected`; a failed condition is `Conflict`
//!   when the workflow exists (read back) and `NotFound` otherwise.
//! - `list_open` / `list_recent`: Query `agent-type-index` (ranged by id, UUIDv7: creation
//!   order) for [`PARTITION`]: every open one (`open` as a filter), or the newest `limit`. GSI reads are eventually consistent
//!   on the real service: a workflow created a moment ago may be missing from a listing, never
//!   from `get`; the engine picks it up on its next pass.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::store::{bumped, WorkflowStore, WorkflowStoreError};
use super::Workflow;
use crate::aws::{dynamodb_failure, is_condition_failed, table_layout};

/// The `agent_type` value under which workflows sit in `agent-type-index`.
pub const PARTITION: &str = "#workflow";
/// Prefix of a workflow item's `id`.
pub const ID_PREFIX: &str = "wf#";
/// How long a finished workflow stays before DynamoDB's TTL deletes it, by default.
pub const DEFAULT_TTL: Duration = crate::store::dynamodb::DEFAULT_TTL;
/// Most workflows `list_recent` returns.
pub const MAX_LIST: usize = 1000;

type Item = HashMap<String, AttributeValue>;

/// Workflow store on the task table.
#[derive(Clone)]
pub struct DynamoWorkflowStore {
    client: Client,
    table: String,
    /// Time a finished workflow is kept (its `expires_at`).
    pub ttl: Duration,
}

impl std::fmt::Debug for DynamoWorkflowStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoWorkflowStore")
            .field("table", &self.table)
            .finish()
    }
}

fn unavailable(message: impl Into<String>) -> WorkflowStoreError {
    WorkflowStoreError::Unavailable {
        message: message.into(),
    }
}

fn sdk_err<E>(what: &str, table: &str, err: &E) -> WorkflowStoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    unavailable(dynamodb_failure(what, table, err))
}

fn key(id: &str) -> AttributeValue {
    AttributeValue::S(format!("{ID_PREFIX}{id}"))
}

fn decode(item: &Item) -> Result<Workflow, WorkflowStoreError> {
    let id = match item.get("id") {
        Some(AttributeValue::S(id)) => id.as_str(),
        _ => "?",
    };
    match item.get("body") {
        Some(AttributeValue::S(body)) => serde_json::from_str(body)
            .map_err(|e| unavailable(format!("corrupt workflow item {id}: {e}"))),
        _ => Err(unavailable(format!("corrupt workflow item {id}: no body"))),
    }
}

impl DynamoWorkflowStore {
    pub fn new(config: &SdkConfig, table: &str) -> DynamoWorkflowStore {
        DynamoWorkflowStore {
            client: Client::new(config),
            table: table.to_owned(),
            ttl: DEFAULT_TTL,
        }
    }

    fn item(&self, workflow: &Workflow) -> Result<Item, WorkflowStoreError> {
        let body = serde_json::to_string(workflow)
            .map_err(|e| unavailable(format!("cannot encode workflow {}: {e}", workflow.id)))?;
        let number = |v: i64| AttributeValue::N(v.to_string());
        let version = i64::try_from(workflow.version)
            .map_err(|_| unavailable(format!("version overflow on workflow {}", workflow.id)))?;
        let open = workflow.is_open();
        let mut item: Item = HashMap::from([
            ("id".to_owned(), key(&workflow.id)),
            ("agent_type".to_owned(), AttributeValue::S(PARTITION.into())),
            ("updated_at".to_owned(), number(workflow.updated_at)),
            ("version".to_owned(), number(version)),
            ("open".to_owned(), AttributeValue::Bool(open)),
            ("body".to_owned(), AttributeValue::S(body)),
        ]);
        if !open {
            let finished = workflow.finished_at.unwrap_or(workflow.updated_at);
            let expires = finished.max(0) / 1000 + self.ttl.as_secs() as i64;
            item.insert(table_layout::TTL_ATTRIBUTE.to_owned(), number(expires));
        }
        Ok(item)
    }

    async fn get_item(&self, id: &str) -> Result<Option<Item>, WorkflowStoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", key(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("GetItem", &self.table, &e))?;
        Ok(out.item().cloned())
    }

    /// A Query of the workflows' partition of `agent-type-index` (ranged by id).
    fn partition_query(&self) -> aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder {
        self.client
            .query()
            .table_name(&self.table)
            .index_name(table_layout::AGENT_TYPE_INDEX)
            .key_condition_expression("#at = :p")
            .expression_attribute_names("#at", "agent_type")
            .expression_attribute_values(":p", AttributeValue::S(PARTITION.into()))
    }

    /// Every workflow (only the open ones with `open_only`), sorted by id.
    async fn query(&self, open_only: bool) -> Result<Vec<Workflow>, WorkflowStoreError> {
        let mut request = self.partition_query();
        if open_only {
            request = request
                .filter_expression("#open = :t")
                .expression_attribute_names("#open", "open")
                .expression_attribute_values(":t", AttributeValue::Bool(true));
        }
        let items: Vec<Item> = request
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Query", &self.table, &e))?;
        let mut workflows = items.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        workflows.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(workflows)
    }
}

#[async_trait]
impl WorkflowStore for DynamoWorkflowStore {
    async fn create(&self, workflow: &Workflow) -> Result<Workflow, WorkflowStoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(workflow)?))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(workflow.clone()),
            Err(e) if is_condition_failed(&e) => Err(WorkflowStoreError::Conflict {
                id: workflow.id.clone(),
            }),
            Err(e) => Err(sdk_err("PutItem", &self.table, &e)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Workflow>, WorkflowStoreError> {
        self.get_item(id).await?.as_ref().map(decode).transpose()
    }

    async fn update(
        &self,
        next: &Workflow,
        expected_version: u64,
    ) -> Result<Workflow, WorkflowStoreError> {
        let written = bumped(next, expected_version)?;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(&written)?))
            .condition_expression("#v = :expected")
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(
                ":expected",
                AttributeValue::N(expected_version.to_string()),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(written),
            Err(e) if is_condition_failed(&e) => match self.get_item(&next.id).await? {
                Some(_) => Err(WorkflowStoreError::Conflict {
                    id: next.id.clone(),
                }),
                None => Err(WorkflowStoreError::NotFound {
                    id: next.id.clone(),
                }),
            },
            Err(e) => Err(sdk_err("PutItem", &self.table, &e)),
        }
    }

    async fn list_recent(&self, limit: usize) -> Result<Vec<Workflow>, WorkflowStoreError> {
        // The index is ranged by id (creation order): the newest are its last items.
        let limit = limit.clamp(1, MAX_LIST);
        let answer = self
            .partition_query()
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| sdk_err("Query", &self.table, &e))?;
        let mut recent = answer
            .items()
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        // Eventually consistent reads may interleave; the trait promises newest first.
        recent.sort_by(|a, b| b.id.cmp(&a.id));
        Ok(recent)
    }

    async fn list_open(&self) -> Result<Vec<Workflow>, WorkflowStoreError> {
        self.query(true).await
    }
}
