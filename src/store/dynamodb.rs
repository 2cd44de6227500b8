//! [`DynamoStore`]: the cluster's [`TaskStore`] on Amazon DynamoDB (feature `aws`).
//!
//! Owns the task table `<cluster_name>-agent-tasks` as the Terraform module lays it out
//! (`terragrunt/modules/agent-orchestrator/dynamodb.tf`) and the table half of
//! `serve --bootstrap` ([`bootstrap_table`]).
//!
//! # Items
//!
//! One item per task: `id` (S, hash key), the indexed `status` (S), `agent_type` (S) and
//! `updated_at` (N, epoch ms), the compare-and-set keys `version` (N) and `fence` (N),
//! `priority`, `created_at`, `idempotency_key` when set, `body` (S, the whole task as JSON: the
//! source of truth on read) and, on terminal tasks, `expires_at` (N, epoch seconds, finish +
//! [`DynamoStore::ttl`], default 30 days) for DynamoDB's TTL.
//!
//! An idempotency key is an item of its own, `id = "idem#<agent_type>#<key>"` with `task_id`,
//! written in the same TransactWriteItems as the task (both or neither, each conditional on
//! `attribute_not_exists(id)`). It has no `status`/`updated_at`, so it is in neither GSI, and
//! scans skip it. A key record whose task has expired (TTL) is removed on the next create with
//! that key, which then succeeds.
//!
//! # Operations
//!
//! - `update`: PutItem of the whole item with `version = :expected AND fence <= :fence AND
//!   status IN (<legal predecessors of the new status, and itself>)`; a failed condition is
//!   `Conflict` if the task exists (read back, strongly consistent) and `NotFound` otherwise.
//! - `get`: strongly consistent GetItem.
//! - `list`: pages newest first *by id* (UUIDv7, creation order), which stays stable while
//!   tasks keep changing (an `updated_at` order would not), on the GSIs ranged by `id`: by
//!   agent type on `agent-type-index` (status as a filter), by status on `status-id-index`,
//!   and unfiltered as the newest of every status's partition merged. Each is a Query
//!   `id < <cursor>`, descending, limited to a page plus one, so a page reads its own tasks
//!   (and, with both filters, the other statuses' tasks between them), never the whole
//!   partition. The cursor is the trait's (`t1:<last id>`), not a `LastEvaluatedKey`.
//! - `active`: Query `status-index` for `dispatched` and `running`, filtered by agent type.
//! - `stale_queued`: Query `status-index` for `queued` with `updated_at < before`, oldest first,
//!   filtered by agent type.
//! - `counts`: a Scan projecting `agent_type` and `status` (fine at ledger sizes).
//! - `ping`: DescribeTable.
//!
//! GSI reads are eventually consistent on the real service (moto answers at once): `active`,
//! `list` and `stale_queued` may miss a write made a moment ago. The scheduler keeps its own
//! in-memory ledger of what it claimed, so `max_instances` does not rest on them alone.
//!
//! Every SDK error that survives the SDK's retries (throttling included) is
//! [`StoreError::Unavailable`]; the scheduler retries those.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, Put, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TransactWriteItem,
};
use aws_sdk_dynamodb::Client;
use futures::future::join_all;
use tracing::{debug, info};

use crate::aws::{describe, dynamodb_failure, is_condition_failed, table_layout};
use crate::store::{
    decode_cursor, encode_cursor, Created, Page, StoreError, TaskFilter, TaskStore,
};
use crate::task::{Millis, Status, Task};

/// Largest page `list` returns, whatever the caller asks for.
pub const MAX_PAGE: usize = 1000;
/// How long a terminal task stays before DynamoDB's TTL deletes it, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

const IDEM_PREFIX: &str = "idem#";
/// Rounds of a create whose transaction collided with another one on the same key.
const CREATE_ROUNDS: usize = 8;

type Item = HashMap<String, AttributeValue>;

/// Task store on one DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Time a terminal task is kept (its `expires_at`).
    pub ttl: Duration,
}

impl std::fmt::Debug for DynamoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoStore")
            .field("table", &self.table)
            .finish()
    }
}

fn unavailable(message: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        message: message.into(),
    }
}

fn sdk_err<E>(what: &str, table: &str, err: &E) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    unavailable(dynamodb_failure(what, table, err))
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn idem_id(agent_type: &str, key: &str) -> String {
    format!("{IDEM_PREFIX}{agent_type}#{key}")
}

fn decode(item: &Item) -> Result<Task, StoreError> {
    let body = match item.get("body") {
        Some(AttributeValue::S(body)) => body,
        _ => {
            let id = match item.get("id") {
                Some(AttributeValue::S(id)) => id.as_str(),
                _ => "?",
            };
            return Err(unavailable(format!("corrupt task item {id}: no body")));
        }
    };
    serde_json::from_str(body).map_err(|e| unavailable(format!("corrupt task item: {e}")))
}

fn decode_all(items: &[Item]) -> Result<Vec<Task>, StoreError> {
    items.iter().map(decode).collect()
}

/// The stored statuses from which `next` may be written: legal predecessors plus itself.
fn allowed_from(next: Status) -> Vec<Status> {
    Status::ALL
        .into_iter()
        .filter(|st| *st == next || st.can_become(next))
        .collect()
}

impl DynamoStore {
    pub fn new(config: &SdkConfig, table: &str) -> DynamoStore {
        DynamoStore::with_client(Client::new(config), table)
    }

    pub fn with_client(client: Client, table: &str) -> DynamoStore {
        DynamoStore {
            client,
            table: table.to_owned(),
            ttl: DEFAULT_TTL,
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn item(&self, task: &Task) -> Result<Item, StoreError> {
        let body = serde_json::to_string(task)
            .map_err(|e| unavailable(format!("cannot encode task {}: {e}", task.id)))?;
        let mut item: Item = HashMap::from([
            ("id".to_owned(), s(&task.id)),
            ("status".to_owned(), s(task.status.as_str())),
            ("agent_type".to_owned(), s(&task.agent_type)),
            ("updated_at".to_owned(), n(task.updated_at)),
            ("created_at".to_owned(), n(task.created_at)),
            ("version".to_owned(), n(task.version)),
            ("fence".to_owned(), n(task.fence)),
            ("priority".to_owned(), n(task.priority)),
            ("body".to_owned(), s(body)),
        ]);
        if let Some(key) = &task.idempotency_key {
            item.insert("idempotency_key".to_owned(), s(key));
        }
        if task.status.is_terminal() {
            let finished: Millis = task.finished_at.unwrap_or(task.updated_at);
            let expires = finished.max(0) / 1000 + self.ttl.as_secs() as i64;
            item.insert(table_layout::TTL_ATTRIBUTE.to_owned(), n(expires));
        }
        Ok(item)
    }

    async fn get_item(&self, id: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("id", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_err("GetItem", &self.table, &e))?;
        Ok(out.item().cloned())
    }

    /// The task an idempotency key points at, if the key is recorded.
    async fn task_of_key(&self, agent_type: &str, key: &str) -> Result<Option<Task>, StoreError> {
        let Some(record) = self.get_item(&idem_id(agent_type, key)).await? else {
            return Ok(None);
        };
        let Some(AttributeValue::S(task_id)) = record.get("task_id") else {
            return Err(unavailable(format!(
                "corrupt idempotency record for key {key:?} of `{agent_type}`"
            )));
        };
        if let Some(task) = self.get(task_id).await? {
            return Ok(Some(task));
        }
        // The task expired (TTL) while its key record stayed: the key is free again. Remove
        // the record only if it still points at that task.
        let removed = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("id", s(idem_id(agent_type, key)))
            .condition_expression("task_id = :t")
            .expression_attribute_values(":t", s(task_id))
            .send()
            .await;
        match removed {
            Ok(_) => Ok(None),
            Err(e) if is_condition_failed(&e) => Ok(None),
            Err(e) => Err(sdk_err("DeleteItem", &self.table, &e)),
        }
    }

    async fn create_plain(&self, task: &Task) -> Result<Created, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(task)?))
            .condition_expression("attribute_not_exists(id)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(Created::New(task.clone())),
            Err(e) if is_condition_failed(&e) => self.existing_by_id(task).await,
            Err(e) => Err(sdk_err("PutItem", &self.table, &e)),
        }
    }

    /// The id is taken: a retried create sees what it wrote.
    async fn existing_by_id(&self, task: &Task) -> Result<Created, StoreError> {
        match self.get(&task.id).await? {
            Some(stored) => Ok(Created::Existing(stored)),
            None => Err(StoreError::Conflict {
                id: task.id.clone(),
            }),
        }
    }

    async fn create_keyed(&self, task: &Task, key: &str) -> Result<Created, StoreError> {
        let task_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.item(task)?))
            .condition_expression("attribute_not_exists(id)")
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        let mut record: Item = HashMap::from([
            ("id".to_owned(), s(idem_id(&task.agent_type, key))),
            ("task_id".to_owned(), s(&task.id)),
            ("created_at".to_owned(), n(task.created_at)),
        ]);
        if let Some(expires) = self.item(task)?.remove(table_layout::TTL_ATTRIBUTE) {
            record.insert(table_layout::TTL_ATTRIBUTE.to_owned(), expires);
        }
        let key_put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(id)")
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        for round in 0..CREATE_ROUNDS {
            let result = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(task_put.clone()).build())
                .transact_items(TransactWriteItem::builder().put(key_put.clone()).build())
                .send()
                .await;
            let err = match result {
                Ok(_) => return Ok(Created::New(task.clone())),
                Err(e) => e,
            };
            let cancelled = err.code() == Some("TransactionCanceledException");
            let conflict = err.code() == Some("TransactionConflictException");
            if !cancelled && !conflict {
                return Err(sdk_err("TransactWriteItems", &self.table, &err));
            }
            // Someone holds the key (or the id), or another transaction on the same items
            // was in progress: look at what is stored.
            if let Some(existing) = self.task_of_key(&task.agent_type, key).await? {
                return Ok(Created::Existing(existing));
            }
            let id_taken = err
                .as_service_error()
                .and_then(|e| match e {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(c) => {
                        Some(c.cancellation_reasons().first().and_then(|r| r.code()) == Some("ConditionalCheckFailed"))
                    }
                    _ => None,
                })
                .unwrap_or(false);
            if id_taken {
                return self.existing_by_id(task).await;
            }
            debug!(task_id = %task.id, round, "create collided with another transaction; retrying");
            tokio::time::sleep(Duration::from_millis(20 * (round as u64 + 1))).await;
        }
        Err(unavailable(format!(
            "create of task {} kept colliding with other transactions",
            task.id
        )))
    }

    /// Every item of a query on an index, all pages.
    async fn query_index(
        &self,
        index: &str,
        key_condition: &str,
        filter: Option<&str>,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
    ) -> Result<Vec<Item>, StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression(key_condition);
        if let Some(filter) = filter {
            request = request.filter_expression(filter);
        }
        for (k, v) in names {
            request = request.expression_attribute_names(*k, *v);
        }
        for (k, v) in values {
            request = request.expression_attribute_values(*k, v.clone());
        }
        request
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Query", &self.table, &e))
    }

    /// Up to `want` tasks of one partition of an id-ranged index (`hash_attr = value`), newest
    /// id first, ids below `after` only, with `status` as a filter. Reads only what it returns
    /// (plus what the status filter skips): `Limit` counts items before the filter, so it goes
    /// on until it has `want` or the partition ends.
    async fn newest(
        &self,
        index: &str,
        (hash_attr, value): (&str, &str),
        status: Option<Status>,
        after: Option<&str>,
        want: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let condition = if after.is_some() {
            "#h = :h AND #id < :after"
        } else {
            "#h = :h"
        };
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let mut request = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression(condition)
                .expression_attribute_names("#h", hash_attr)
                .expression_attribute_values(":h", s(value))
                .scan_index_forward(false)
                .limit(i32::try_from(want - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take());
            if let Some(after) = after {
                request = request
                    .expression_attribute_names("#id", table_layout::HASH_KEY)
                    .expression_attribute_values(":after", s(after));
            }
            if let Some(status) = status {
                request = request
                    .filter_expression("#st = :s")
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":s", s(status.as_str()));
            }
            let answer = request
                .send()
                .await
                .map_err(|e| sdk_err("Query", &self.table, &e))?;
            out.extend(decode_all(answer.items())?);
            start = answer.last_evaluated_key().cloned();
            if out.len() >= want || start.is_none() {
                return Ok(out);
            }
        }
    }

    /// Agent type and status of every task (a Scan: `counts` only, which tests use).
    async fn scan_types_and_statuses(&self) -> Result<Vec<Item>, StoreError> {
        self.client
            .scan()
            .table_name(&self.table)
            .filter_expression("attribute_exists(#st)")
            .projection_expression("#at, #st")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#at", "agent_type")
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| sdk_err("Scan", &self.table, &e))
    }
}

#[async_trait]
impl TaskStore for DynamoStore {
    async fn create(&self, task: &Task) -> Result<Created, StoreError> {
        match &task.idempotency_key {
            None => self.create_plain(task).await,
            Some(key) => self.create_keyed(task, key).await,
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Task>, StoreError> {
        // Key records and workflows share the table; neither is a task.
        if id.starts_with(IDEM_PREFIX) || id.starts_with(crate::workflow::dynamodb::ID_PREFIX) {
            return Ok(None);
        }
        self.get_item(id).await?.as_ref().map(decode).transpose()
    }

    async fn update(&self, next: &Task, expected_version: u64) -> Result<Task, StoreError> {
        let mut written = next.clone();
        written.version = expected_version
            .checked_add(1)
            .ok_or_else(|| unavailable(format!("version overflow on task {}", next.id)))?;
        let allowed = allowed_from(next.status);
        let placeholders: Vec<String> = (0..allowed.len()).map(|i| format!(":s{i}")).collect();
        let condition = format!(
            "#v = :expected AND #f <= :fence AND #st IN ({})",
            placeholders.join(", ")
        );
        let mut request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.item(&written)?))
            .condition_expression(condition)
            .expression_attribute_names("#v", "version")
            .expression_attribute_names("#f", "fence")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":expected", n(expected_version))
            .expression_attribute_values(":fence", n(next.fence));
        for (placeholder, status) in placeholders.iter().zip(&allowed) {
            request = request.expression_attribute_values(placeholder, s(status.as_str()));
        }
        match request.send().await {
            Ok(_) => Ok(written),
            Err(e) if is_condition_failed(&e) => match self.get_item(&next.id).await? {
                Some(_) => Err(StoreError::Conflict {
                    id: next.id.clone(),
                }),
                None => Err(StoreError::NotFound {
                    id: next.id.clone(),
                }),
            },
            Err(e) => Err(sdk_err("PutItem", &self.table, &e)),
        }
    }

    async fn list(
        &self,
        filter: &TaskFilter,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let after = cursor.map(decode_cursor).transpose()?;
        let after = after.as_deref();
        // One more than a page tells whether another page follows.
        let want = limit + 1;
        let mut tasks = match (&filter.agent_type, filter.status) {
            (Some(agent_type), status) => {
                let partition = ("agent_type", agent_type.as_str());
                let index = table_layout::AGENT_TYPE_INDEX;
                self.newest(index, partition, status, after, want).await?
            }
            (None, Some(status)) => {
                let partition = ("status", status.as_str());
                let index = table_layout::STATUS_ID_INDEX;
                self.newest(index, partition, None, after, want).await?
            }
            (None, None) => {
                // Every task has one status: the newest of all are the newest of each status.
                let pages = Status::ALL.iter().map(|status| {
                    let partition = ("status", status.as_str());
                    self.newest(table_layout::STATUS_ID_INDEX, partition, None, after, want)
                });
                let mut all = Vec::new();
                for page in join_all(pages).await {
                    all.extend(page?);
                }
                all
            }
        };
        tasks.sort_by(|a, b| b.id.cmp(&a.id));
        // A task that changed status between two of the reads shows up once.
        tasks.dedup_by(|a, b| a.id == b.id);
        let next_cursor = if tasks.len() > limit {
            tasks.truncate(limit);
            tasks.last().map(|t| encode_cursor(&t.id))
        } else {
            None
        };
        Ok(Page { tasks, next_cursor })
    }

    async fn active(&self, agent_type: &str) -> Result<Vec<Task>, StoreError> {
        let mut out = Vec::new();
        for status in [Status::Dispatched, Status::Running] {
            let items = self
                .query_index(
                    table_layout::STATUS_INDEX,
                    "#st = :s",
                    Some("#at = :a"),
                    &[("#st", "status"), ("#at", "agent_type")],
                    &[(":s", s(status.as_str())), (":a", s(agent_type))],
                )
                .await?;
            let mut tasks = decode_all(&items)?;
            tasks.sort_by(|a, b| a.id.cmp(&b.id));
            out.extend(tasks);
        }
        Ok(out)
    }

    async fn stale_queued(
        &self,
        agent_type: &str,
        before: Millis,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(table_layout::STATUS_INDEX)
            .key_condition_expression("#st = :s AND #u < :before")
            .filter_expression("#at = :a")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#u", "updated_at")
            .expression_attribute_names("#at", "agent_type")
            .expression_attribute_values(":s", s(Status::Queued.as_str()))
            .expression_attribute_values(":before", n(before))
            .expression_attribute_values(":a", s(agent_type))
            .scan_index_forward(true)
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("Query", &self.table, &e))?;
            for item in page.items() {
                out.push(decode(item)?);
                if out.len() >= limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    async fn counts(&self) -> Result<Vec<(String, Status, u64)>, StoreError> {
        let items = self.scan_types_and_statuses().await?;
        let mut counts: BTreeMap<(String, Status), u64> = BTreeMap::new();
        for item in &items {
            let (Some(AttributeValue::S(agent_type)), Some(AttributeValue::S(status))) =
                (item.get("agent_type"), item.get("status"))
            else {
                continue;
            };
            let status = Status::parse(status)
                .ok_or_else(|| unavailable(format!("corrupt status `{status}`")))?;
            *counts.entry((agent_type.clone(), status)).or_default() += 1;
        }
        Ok(counts
            .into_iter()
            .map(|((agent_type, status), count)| (agent_type, status, count))
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(|e| sdk_err("DescribeTable", &self.table, &e))?;
        Ok(())
    }
}

/// `serve --bootstrap`, table half: creates the task table with the module's key, GSIs
/// (`status-index` ranged by `updated_at`, `status-id-index` and `agent-type-index` ranged by
/// `id`, all projecting everything),
/// on-demand billing and TTL on `expires_at`, unless it exists.
pub async fn bootstrap_table(client: &Client, table: &str) -> Result<(), String> {
    match client.describe_table().table_name(table).send().await {
        Ok(_) => {
            debug!(%table, "bootstrap: table exists");
            return Ok(());
        }
        Err(e) if e.code() == Some("ResourceNotFoundException") => {}
        Err(e) => return Err(format!("DescribeTable {table}: {}", describe(&e))),
    }
    let attribute = |name: &str, kind: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
            .map_err(|e| e.to_string())
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| e.to_string())
    };
    let gsi = |name: &str, hash: &str, range: &str| -> Result<GlobalSecondaryIndex, String> {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash)?)
            .key_schema(key(range, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .map_err(|e| e.to_string())
    };
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(table_layout::HASH_KEY, ScalarAttributeType::S)?)
        .attribute_definitions(attribute("status", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("agent_type", ScalarAttributeType::S)?)
        .attribute_definitions(attribute("updated_at", ScalarAttributeType::N)?)
        .key_schema(key(table_layout::HASH_KEY, KeyType::Hash)?)
        .global_secondary_indexes(gsi(table_layout::STATUS_INDEX, "status", "updated_at")?)
        .global_secondary_indexes(gsi(table_layout::STATUS_ID_INDEX, "status", "id")?)
        .global_secondary_indexes(gsi(table_layout::AGENT_TYPE_INDEX, "agent_type", "id")?)
        .send()
        .await;
    match created {
        Ok(_) => info!(%table, "bootstrap: created table"),
        // Another coordinator created it a moment ago.
        Err(e) if e.code() == Some("ResourceInUseException") => {}
        Err(e) => return Err(format!("CreateTable {table}: {}", describe(&e))),
    }
    // Wait for ACTIVE (immediate on emulators, seconds on AWS).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let out = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| format!("DescribeTable {table}: {}", describe(&e)))?;
        let status = out.table().and_then(|t| t.table_status().cloned());
        if status == Some(TableStatus::Active) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("table {table} not ACTIVE after 120 s: {status:?}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(table_layout::TTL_ATTRIBUTE)
                .enabled(true)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .send()
        .await
        .map_err(|e| format!("UpdateTimeToLive {table}: {}", describe(&e)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predecessors_include_self() {
        let from = allowed_from(Status::Running);
        assert!(from.contains(&Status::Dispatched) && from.contains(&Status::Running));
        assert!(!from.contains(&Status::Queued));
    }
}
