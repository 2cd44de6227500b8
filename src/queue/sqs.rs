//! [`SqsQueue`]: the cluster's [`TaskQueue`] on Amazon SQS (feature `aws`).
//!
//! Owns the SQS side of the cluster deployment: one standard queue per agent type
//! (`<cluster_name>-<type>-tasks`, URLs resolved once by name with GetQueueUrl, or given), plus
//! one per priority tier where the inputs configure tiers (`priority_queues`:
//! `<cluster_name>-<type>-tasks-<tier>`, see [`tiers`]), the dead-letter queue poison messages
//! are moved to, and the queue half of `serve --bootstrap` ([`bootstrap_queues`]).
//!
//! # Mapping of the trait
//!
//! - `send`: SendMessage to the task's queue (the tier with the highest minimum at or below
//!   its priority, else the type's base queue) with the body `{"task_id": "<id>"}`, the
//!   priority as the `priority` message attribute (Number) and the delay as `DelaySeconds`
//!   (whole seconds, rounded up). SQS delays at most 900 s: a longer delay is capped, the
//!   message arrives early and the scheduler, which checks the task's `not_before`, nacks it
//!   for the rest of the wait.
//! - `receive`: ReceiveMessage, at most 10 a call, looped for more: from the tiers highest
//!   first, topping up from lower tiers and finally the base queue until `max`. Calls use a
//!   short `WaitTimeSeconds` ([`SqsOptions::wait_time`], 0 by default, at most 20) because the
//!   scheduler calls it from its loop; the explicit value overrides the queues' 20 s default.
//!   At most one call of a receive waits, and only while nothing has been received: the first
//!   one for a type without tiers; with tiers every queue is short-polled first (a long poll
//!   on an empty top tier would hold back the lower tiers' visible messages for the whole
//!   wait), and only when all were empty is the top tier long-polled, then the others topped
//!   up again. The visibility timeout is rounded up to whole seconds. `receive_count` is
//!   `ApproximateReceiveCount`. A message from a tier carries the receipt `<tier>~<handle>`,
//!   so ack and nack find its queue; the base queue's receipts are SQS's handles unchanged.
//! - `ack`: DeleteMessage; `ack_many`: DeleteMessageBatch per queue; `nack`:
//!   ChangeMessageVisibility (which also extends the visibility of a message being held). An
//!   unknown, malformed or expired receipt is not an error (the message is simply delivered
//!   again: at-least-once).
//! - `depth`: `ApproximateNumberOfMessages`, `…NotVisible`, `…Delayed`, summed over the
//!   type's queues.
//!
//! # Differences from the embedded queue
//!
//! SQS standard queues have no priorities and no strict order. With priority tiers, receive
//! is strictly ordered across tiers (a tier's messages before any lower tier's) but only
//! roughly FIFO inside one, where messages of different priorities also mix; give each
//! priority that must come first a tier of its own. Without tiers, receive returns messages in
//! roughly the order they were sent, whatever their priority. The conformance suite runs on
//! SQS with `priority_order` (with a tier per priority it sends) and without
//! `fifo_within_priority`. Sending a task id that is already waiting adds a second message
//! (`dedup_waiting_sends: false`); consumers already treat duplicates as harmless. Times are
//! whole seconds.
//!
//! # Poison messages
//!
//! A message whose body is not a task reference is copied to the dead-letter queue (with the
//! reason and the source queue as message attributes), deleted from the task or tier queue it
//! was in and logged; the receive goes on with the other messages. If the copy fails the
//! message stays where it is and SQS's redrive policy moves it after `maxReceiveCount`
//! receives.
//!
//! # The result queue
//!
//! [`SqsQueue`] is also the cluster's [`ResultQueue`] (`<cluster_name>-results`, see
//! [`crate::results`]): long-polled receives of up to 10 reports, deletes, and the same DLQ
//! (without the `agent_type` attribute) for reports that cannot be recorded.
//!
//! Every SDK error that survives the SDK's retries is [`QueueError::Unavailable`].

mod tiers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};
use aws_sdk_sqs::Client;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::aws::{describe, queue_settings, AwsNames};
use crate::queue::{Depth, Message, QueueError, TaskQueue};
use crate::results::{Delivery, ResultQueue};
use tiers::{tag_receipt, QueueRef, TypeQueues};

/// Most messages one ReceiveMessage returns.
pub const MAX_RECEIVE_BATCH: usize = 10;
/// Longest long poll SQS accepts (`WaitTimeSeconds`), also the queues' default.
const MAX_WAIT: Duration = Duration::from_secs(queue_settings::RECEIVE_WAIT_TIME_SECONDS as u64);
/// Longest `DelaySeconds` SQS accepts.
pub const MAX_DELAY: Duration = Duration::from_secs(900);
/// Longest visibility timeout SQS accepts (12 h).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// Name of the priority message attribute.
pub const PRIORITY_ATTRIBUTE: &str = "priority";

/// Tunables of [`SqsQueue`].
#[derive(Debug, Clone)]
pub struct SqsOptions {
    /// `WaitTimeSeconds` of each receive (whole seconds, at most 20). Short, because the
    /// scheduler's loop waits on it; 0 makes every receive a short poll.
    pub wait_time: Duration,
}

impl Default for SqsOptions {
    fn default() -> Self {
        SqsOptions {
            wait_time: Duration::ZERO,
        }
    }
}

/// The body of a task message.
#[derive(Debug, Serialize, Deserialize)]
struct Body {
    task_id: String,
}

/// Task queues on SQS, one per agent type and priority tier. Cheap to clone: clones share the
/// URL cache.
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    /// Agent type → its queues' names.
    names: BTreeMap<String, TypeQueues>,
    dlq_name: String,
    /// The result queue agents report to (`<cluster_name>-results`).
    results_name: String,
    /// Queue name → URL, filled once per queue.
    urls: Arc<Mutex<HashMap<String, String>>>,
    options: SqsOptions,
}

impl std::fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsQueue")
            .field("queues", &self.names)
            .field("dlq", &self.dlq_name)
            .finish()
    }
}

fn unavailable(message: impl Into<String>) -> QueueError {
    QueueError::Unavailable {
        message: message.into(),
    }
}

/// Whole seconds, rounded up, within `0..=max`.
fn whole_seconds(d: Duration, max: Duration) -> i32 {
    let d = d.min(max);
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// Why a message body is not a task reference, or the task id it names.
fn parse_body(body: Option<&str>) -> Result<String, String> {
    let body = body.ok_or("message has no body")?;
    let parsed: Body =
        serde_json::from_str(body).map_err(|e| format!("body is not a task reference: {e}"))?;
    if crate::task::is_task_id_shaped(&parsed.task_id) {
        Ok(parsed.task_id)
    } else {
        Err(format!("invalid task id {:?}", parsed.task_id))
    }
}

/// The receipt was not issued, is malformed, or no longer valid: SQS's error codes for it.
fn is_receipt_error(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.contains("ReceiptHandleIsInvalid")
            || c.contains("InvalidReceiptHandle")
            || c.contains("MessageNotInflight")
            || c.contains("InvalidParameterValue")
            || c.contains("InvalidIdFormat")
    })
}

fn is_missing_queue(code: Option<&str>) -> bool {
    code.is_some_and(|c| c.contains("NonExistentQueue") || c.contains("QueueDoesNotExist"))
}

/// A message on its way to the dead-letter queue.
#[derive(Clone, Copy)]
struct Poison<'a> {
    /// The task queue's agent type; `None` for the result queue.
    agent_type: Option<&'a str>,
    /// The queue it came from.
    url: &'a str,
    message_id: &'a str,
    body: &'a str,
    receipt: Option<&'a str>,
}

/// What one `receive` asks of each of its ReceiveMessage calls.
#[derive(Clone, Copy)]
struct ReceiveRequest<'a> {
    agent_type: &'a str,
    max: usize,
    /// Whole seconds.
    visibility: i32,
}

/// A type's queue with its URL, as a receive walks them.
type ResolvedQueue<'a> = (QueueRef<'a>, String);

impl SqsQueue {
    /// A queue over the module's names; URLs are resolved on first use.
    pub fn new(config: &SdkConfig, names: &AwsNames, options: SqsOptions) -> SqsQueue {
        SqsQueue::with_client(Client::new(config), names, options)
    }

    pub fn with_client(client: Client, names: &AwsNames, options: SqsOptions) -> SqsQueue {
        let queues = names
            .task_queues
            .iter()
            .map(|(agent_type, base)| {
                let tiers = names
                    .priority_queues
                    .get(agent_type)
                    .cloned()
                    .unwrap_or_default();
                (agent_type.clone(), TypeQueues::new(base.clone(), tiers))
            })
            .collect();
        SqsQueue {
            client,
            names: queues,
            dlq_name: names.dlq.clone(),
            results_name: names.results.clone(),
            urls: Arc::new(Mutex::new(HashMap::new())),
            options,
        }
    }

    /// Uses `url` for a queue name instead of resolving it (explicit configuration).
    pub fn set_queue_url(&self, queue_name: &str, url: &str) {
        if let Ok(mut urls) = self.urls.lock() {
            urls.insert(queue_name.to_owned(), url.to_owned());
        }
    }

    /// Resolves every task and tier queue, the DLQ and the result queue now, so a missing
    /// queue is reported at start.
    pub async fn resolve_all(&self) -> Result<(), QueueError> {
        let names: Vec<String> = self
            .names
            .values()
            .flat_map(|queues| queues.receive_order())
            .map(|queue| queue.name.to_owned())
            .chain([self.dlq_name.clone(), self.results_name.clone()])
            .collect();
        for name in names {
            self.url_of(&name).await?;
        }
        Ok(())
    }

    async fn url_of(&self, queue_name: &str) -> Result<String, QueueError> {
        if let Some(url) = self
            .urls
            .lock()
            .ok()
            .and_then(|urls| urls.get(queue_name).cloned())
        {
            return Ok(url);
        }
        let out = self
            .client
            .get_queue_url()
            .queue_name(queue_name)
            .send()
            .await
            .map_err(|e| {
                if is_missing_queue(e.code()) {
                    unavailable(format!(
                        "SQS queue `{queue_name}` does not exist (apply the Terraform module or run `serve --bootstrap`)"
                    ))
                } else {
                    unavailable(format!("GetQueueUrl {queue_name}: {}", describe(&e)))
                }
            })?;
        let url = out
            .queue_url()
            .ok_or_else(|| unavailable(format!("GetQueueUrl {queue_name}: no URL in the answer")))?
            .to_owned();
        if let Ok(mut urls) = self.urls.lock() {
            urls.insert(queue_name.to_owned(), url.clone());
        }
        Ok(url)
    }

    fn queues_of(&self, agent_type: &str) -> Result<&TypeQueues, QueueError> {
        self.names
            .get(agent_type)
            .ok_or_else(|| QueueError::UnknownQueue {
                agent_type: agent_type.to_owned(),
            })
    }

    /// The URLs of an agent type's queues, in receive order.
    async fn resolved<'q>(
        &self,
        queues: &'q TypeQueues,
    ) -> Result<Vec<ResolvedQueue<'q>>, QueueError> {
        let mut out = Vec::new();
        for queue in queues.receive_order() {
            out.push((queue, self.url_of(queue.name).await?));
        }
        Ok(out)
    }

    /// Takes messages from `queues` in order until `request.max`: each queue until it runs
    /// dry, then the next. Only the pass's first call waits `first_wait`: later calls only top
    /// up. A failure after messages were received ends the pass with them: they are already
    /// hidden, so hand them out rather than leave them invisible for the whole visibility
    /// timeout.
    async fn receive_pass(
        &self,
        request: ReceiveRequest<'_>,
        queues: &[ResolvedQueue<'_>],
        first_wait: i32,
        out: &mut Vec<Message>,
    ) -> Result<(), QueueError> {
        let mut wait = first_wait;
        for (queue, url) in queues {
            while out.len() < request.max {
                let ran_dry = match self.receive_batch(request, *queue, url, wait, out).await {
                    Ok(ran_dry) => ran_dry,
                    Err(error) if !out.is_empty() => {
                        warn!(agent_type = %request.agent_type, queue = %queue.name, %error, "ReceiveMessage failed after a partial receive");
                        return Ok(());
                    }
                    Err(error) => return Err(unavailable(format!("ReceiveMessage: {error}"))),
                };
                wait = 0;
                if ran_dry {
                    break;
                }
            }
        }
        Ok(())
    }

    /// One ReceiveMessage on `queue`, for what `out` still lacks of `request.max`; the task
    /// messages are appended to `out` (poison goes to the DLQ). Returns whether the queue ran
    /// dry (fewer messages than asked for), or the error's text.
    async fn receive_batch(
        &self,
        request: ReceiveRequest<'_>,
        queue: QueueRef<'_>,
        url: &str,
        wait: i32,
        out: &mut Vec<Message>,
    ) -> Result<bool, String> {
        let agent_type = request.agent_type;
        let asked = (request.max - out.len()).min(MAX_RECEIVE_BATCH);
        let answer = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(asked as i32)
            .wait_time_seconds(wait)
            .visibility_timeout(request.visibility)
            .message_attribute_names(PRIORITY_ATTRIBUTE)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let messages = answer.messages();
        for m in messages {
            let task_id = match parse_body(m.body()) {
                Ok(id) => id,
                Err(reason) => {
                    self.dead_letter(agent_type, url, m, &reason).await;
                    continue;
                }
            };
            let Some(handle) = m.receipt_handle() else {
                warn!(%agent_type, %task_id, "received a message without a receipt handle; skipping it");
                continue;
            };
            let priority = m
                .message_attributes()
                .and_then(|a| a.get(PRIORITY_ATTRIBUTE))
                .and_then(|v| v.string_value())
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            out.push(Message {
                task_id,
                receipt: tag_receipt(queue, handle),
                priority,
                receive_count: receive_count(m),
            });
        }
        Ok(messages.len() < asked)
    }

    /// DeleteMessageBatch of `handles` on one queue, 10 a call. Handles SQS refuses as invalid
    /// count as deleted, like [`TaskQueue::ack`].
    async fn delete_batch(&self, url: &str, handles: &[&str]) -> Result<(), QueueError> {
        for chunk in handles.chunks(MAX_RECEIVE_BATCH) {
            let mut request = self.client.delete_message_batch().queue_url(url);
            for (i, handle) in chunk.iter().enumerate() {
                let entry = DeleteMessageBatchRequestEntry::builder()
                    .id(format!("m{i}"))
                    .receipt_handle(*handle)
                    .build()
                    .map_err(|e| unavailable(e.to_string()))?;
                request = request.entries(entry);
            }
            let out = request
                .send()
                .await
                .map_err(|e| unavailable(format!("DeleteMessageBatch: {}", describe(&e))))?;
            for failed in out.failed() {
                if failed.sender_fault() && is_receipt_error(Some(failed.code())) {
                    continue;
                }
                return Err(unavailable(format!(
                    "DeleteMessageBatch entry {}: {} {}",
                    failed.id(),
                    failed.code(),
                    failed.message().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// The approximate counts of one queue.
    async fn queue_depth(&self, queue_name: &str) -> Result<Depth, QueueError> {
        let url = self.url_of(queue_name).await?;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| unavailable(format!("GetQueueAttributes: {}", describe(&e))))?;
        let get = |name: QueueAttributeName| -> u64 {
            out.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Depth {
            visible: get(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        })
    }

    /// The result queue's URL (what agents under Nomad get as `AO_RESULT_QUEUE_URL`).
    pub async fn result_queue_url(&self) -> Result<String, QueueError> {
        self.url_of(&self.results_name).await
    }

    /// Moves a poison message to the DLQ: copy, then delete. Never fails the caller.
    async fn dead_letter(
        &self,
        agent_type: &str,
        url: &str,
        message: &aws_sdk_sqs::types::Message,
        reason: &str,
    ) {
        let message_id = message.message_id().unwrap_or("?");
        warn!(%agent_type, message_id, reason, dlq = %self.dlq_name, "moving a message that is not a task reference to the dead-letter queue");
        let poison = Poison {
            agent_type: Some(agent_type),
            url,
            message_id,
            body: message.body().unwrap_or(""),
            receipt: message.receipt_handle(),
        };
        self.move_to_dlq(&poison, reason).await;
    }

    /// Copies `poison` to the DLQ with `reason` (and where it came from), then deletes the
    /// original. A failed copy leaves the original for the queue's own redrive policy.
    async fn move_to_dlq(&self, poison: &Poison<'_>, reason: &str) {
        let Poison {
            agent_type,
            url,
            message_id,
            body,
            receipt,
        } = *poison;
        let origin = agent_type.unwrap_or("results");
        let copied = async {
            let dlq = self.url_of(&self.dlq_name).await?;
            let attr = |value: &str| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| unavailable(e.to_string()))
            };
            let mut copy = self
                .client
                .send_message()
                .queue_url(dlq)
                .message_body(body.to_owned())
                .message_attributes("reason", attr(reason)?)
                .message_attributes("source_queue", attr(url)?);
            if let Some(agent_type) = agent_type {
                copy = copy.message_attributes("agent_type", attr(agent_type)?);
            }
            copy.send()
                .await
                .map_err(|e| unavailable(format!("SendMessage to the DLQ: {}", describe(&e))))?;
            Ok::<(), QueueError>(())
        }
        .await;
        if let Err(e) = copied {
            warn!(%origin, message_id, error = %e, "could not copy the message to the dead-letter queue; leaving it for SQS's redrive policy");
            return;
        }
        if let Some(receipt) = receipt {
            if let Err(e) = self.delete(url, receipt).await {
                warn!(%origin, message_id, error = %e, "copied to the dead-letter queue but could not delete the original");
            }
        }
    }

    async fn delete(&self, url: &str, receipt: &str) -> Result<(), QueueError> {
        if receipt.is_empty() {
            return Ok(());
        }
        match self
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_receipt_error(e.code()) => {
                debug!(code = ?e.code(), "ack of an unknown or expired receipt: nothing to delete");
                Ok(())
            }
            Err(e) => Err(unavailable(format!("DeleteMessage: {}", describe(&e)))),
        }
    }
}

#[async_trait]
impl TaskQueue for SqsQueue {
    async fn send(
        &self,
        agent_type: &str,
        task_id: &str,
        priority: i64,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let url = self
            .url_of(self.queues_of(agent_type)?.route(priority).name)
            .await?;
        if delay > MAX_DELAY {
            debug!(%agent_type, %task_id, delay_ms = delay.as_millis() as u64, "delay longer than SQS's 900 s: capped (the scheduler re-checks not_before)");
        }
        let body = serde_json::to_string(&Body {
            task_id: task_id.to_owned(),
        })
        .map_err(|e| unavailable(e.to_string()))?;
        let priority_value = MessageAttributeValue::builder()
            .data_type("Number")
            .string_value(priority.to_string())
            .build()
            .map_err(|e| unavailable(e.to_string()))?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .delay_seconds(whole_seconds(delay, MAX_DELAY))
            .message_attributes(PRIORITY_ATTRIBUTE, priority_value)
            .send()
            .await
            .map_err(|e| unavailable(format!("SendMessage: {}", describe(&e))))?;
        Ok(())
    }

    async fn receive(
        &self,
        agent_type: &str,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Message>, QueueError> {
        let queues = self.resolved(self.queues_of(agent_type)?).await?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let request = ReceiveRequest {
            agent_type,
            max,
            visibility: whole_seconds(visibility, MAX_VISIBILITY),
        };
        let wait = whole_seconds(self.options.wait_time, MAX_WAIT);
        let mut out = Vec::new();
        if queues.len() == 1 {
            // No tiers: the first call may long-poll, as it always did.
            self.receive_pass(request, &queues, wait, &mut out).await?;
            return Ok(out);
        }
        // Tiers: a long poll on the top tier would hold back the visible messages of the
        // lower ones for the whole wait. Short-poll them all first; wait only when all were
        // empty (on the top tier, for the most urgent arrivals), then top up from the others.
        self.receive_pass(request, &queues, 0, &mut out).await?;
        if out.is_empty() && wait > 0 {
            self.receive_pass(request, &queues, wait, &mut out).await?;
        }
        Ok(out)
    }

    async fn ack(&self, agent_type: &str, receipt: &str) -> Result<(), QueueError> {
        let (queue, handle) = self.queues_of(agent_type)?.for_receipt(receipt);
        let url = self.url_of(queue.name).await?;
        self.delete(&url, handle).await
    }

    /// DeleteMessageBatch per queue the receipts came from, 10 a call. Receipts SQS refuses
    /// as invalid count as deleted, like [`TaskQueue::ack`].
    async fn ack_many(&self, agent_type: &str, receipts: &[String]) -> Result<(), QueueError> {
        let queues = self.queues_of(agent_type)?;
        let mut by_queue: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for receipt in receipts {
            let (queue, handle) = queues.for_receipt(receipt);
            let handles = by_queue.entry(queue.name).or_default();
            // Once each: moto refuses a batch that names one handle twice, and two receipts
            // can share a handle (one tagged with a tier that is gone, one not).
            if !handle.is_empty() && !handles.contains(&handle) {
                handles.push(handle);
            }
        }
        for (queue_name, handles) in by_queue.into_iter().filter(|(_, h)| !h.is_empty()) {
            let url = self.url_of(queue_name).await?;
            self.delete_batch(&url, &handles).await?;
        }
        Ok(())
    }

    async fn nack(
        &self,
        agent_type: &str,
        receipt: &str,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let (queue, handle) = self.queues_of(agent_type)?.for_receipt(receipt);
        let url = self.url_of(queue.name).await?;
        if handle.is_empty() {
            return Ok(());
        }
        match self
            .client
            .change_message_visibility()
            .queue_url(url)
            .receipt_handle(handle)
            .visibility_timeout(whole_seconds(delay, MAX_VISIBILITY))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_receipt_error(e.code()) => {
                debug!(code = ?e.code(), "nack of an unknown or expired receipt: nothing to change");
                Ok(())
            }
            Err(e) => Err(unavailable(format!(
                "ChangeMessageVisibility: {}",
                describe(&e)
            ))),
        }
    }

    /// The sum over the type's queues (tiers and base), asked concurrently.
    async fn depth(&self, agent_type: &str) -> Result<Depth, QueueError> {
        let queues = self.queues_of(agent_type)?.receive_order();
        let depths =
            futures::future::try_join_all(queues.iter().map(|q| self.queue_depth(q.name))).await?;
        Ok(depths.into_iter().fold(Depth::default(), |sum, d| Depth {
            visible: sum.visible + d.visible,
            in_flight: sum.in_flight + d.in_flight,
            delayed: sum.delayed + d.delayed,
        }))
    }
}

/// The result queue: ReceiveMessage (long poll), DeleteMessage, and the task queues' DLQ for
/// reports that cannot be recorded.
#[async_trait]
impl ResultQueue for SqsQueue {
    async fn receive(
        &self,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let url = self.result_queue_url().await?;
        let answer = self
            .client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(MAX_RECEIVE_BATCH as i32)
            .wait_time_seconds(whole_seconds(wait, MAX_WAIT))
            .visibility_timeout(whole_seconds(visibility, MAX_VISIBILITY))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| unavailable(format!("ReceiveMessage (results): {}", describe(&e))))?;
        Ok(answer
            .messages()
            .iter()
            .filter_map(|m| {
                let receipt = m.receipt_handle()?;
                let receive_count = receive_count(m);
                Some(Delivery {
                    message_id: m.message_id().unwrap_or("?").to_owned(),
                    receipt: receipt.to_owned(),
                    body: m.body().map(str::to_owned),
                    receive_count,
                })
            })
            .collect())
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let url = self.result_queue_url().await?;
        self.delete(&url, receipt).await
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) {
        warn!(message_id = %delivery.message_id, reason, dlq = %self.dlq_name, "moving a result report that cannot be recorded to the dead-letter queue");
        let url = match self.result_queue_url().await {
            Ok(url) => url,
            Err(e) => {
                warn!(message_id = %delivery.message_id, error = %e, "cannot reach the result queue; the report stays there");
                return;
            }
        };
        let poison = Poison {
            agent_type: None,
            url: &url,
            message_id: &delivery.message_id,
            body: delivery.body.as_deref().unwrap_or(""),
            receipt: Some(&delivery.receipt),
        };
        self.move_to_dlq(&poison, reason).await;
    }
}

/// `ApproximateReceiveCount` of a received message (1 when SQS did not say).
fn receive_count(m: &aws_sdk_sqs::types::Message) -> u32 {
    m.attributes()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1)
}

/// URL of `name`, or `None` when the queue does not exist.
async fn existing_queue(client: &Client, name: &str) -> Result<Option<String>, String> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => Ok(out.queue_url().map(str::to_owned)),
        Err(e) if is_missing_queue(e.code()) => Ok(None),
        Err(e) => Err(format!("GetQueueUrl {name}: {}", describe(&e))),
    }
}

async fn create_queue(
    client: &Client,
    name: &str,
    attributes: &[(QueueAttributeName, String)],
) -> Result<String, String> {
    if let Some(url) = existing_queue(client, name).await? {
        debug!(queue = %name, "bootstrap: queue exists");
        return Ok(url);
    }
    let mut request = client.create_queue().queue_name(name);
    for (key, value) in attributes {
        request = request.attributes(key.clone(), value.clone());
    }
    let out = request
        .send()
        .await
        .map_err(|e| format!("CreateQueue {name}: {}", describe(&e)))?;
    tracing::info!(queue = %name, "bootstrap: created queue");
    out.queue_url()
        .map(str::to_owned)
        .ok_or_else(|| format!("CreateQueue {name}: no URL in the answer"))
}

/// `serve --bootstrap`, queue half: the DLQ, every task and tier queue (redriving to the DLQ
/// after `maxReceiveCount` receives) and the result queue, with the module's settings.
pub async fn bootstrap_queues(client: &Client, names: &AwsNames) -> Result<(), String> {
    use queue_settings::*;
    let dlq_url = create_queue(
        client,
        &names.dlq,
        &[
            (
                QueueAttributeName::MessageRetentionPeriod,
                DLQ_MESSAGE_RETENTION_SECONDS.to_string(),
            ),
            (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        ],
    )
    .await?;
    let arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| format!("GetQueueAttributes {}: {}", names.dlq, describe(&e)))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| format!("no ARN for the dead-letter queue {}", names.dlq))?;
    let common = |redrive: bool| {
        let mut attributes = vec![
            (
                QueueAttributeName::VisibilityTimeout,
                VISIBILITY_TIMEOUT_SECONDS.to_string(),
            ),
            (
                QueueAttributeName::ReceiveMessageWaitTimeSeconds,
                RECEIVE_WAIT_TIME_SECONDS.to_string(),
            ),
            (
                QueueAttributeName::MessageRetentionPeriod,
                MESSAGE_RETENTION_SECONDS.to_string(),
            ),
            (QueueAttributeName::SqsManagedSseEnabled, "true".into()),
        ];
        if redrive {
            attributes.push((
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({
                    "deadLetterTargetArn": arn,
                    "maxReceiveCount": MAX_RECEIVE_COUNT,
                })
                .to_string(),
            ));
        }
        attributes
    };
    for name in names.all_task_queues() {
        create_queue(client, name, &common(true)).await?;
    }
    create_queue(client, &names.results, &common(false)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_up_and_cap() {
        assert_eq!(whole_seconds(Duration::ZERO, MAX_DELAY), 0);
        assert_eq!(whole_seconds(Duration::from_millis(50), MAX_DELAY), 1);
        assert_eq!(whole_seconds(Duration::from_secs(3), MAX_DELAY), 3);
        assert_eq!(whole_seconds(Duration::from_secs(5000), MAX_DELAY), 900);
    }

    #[test]
    fn bodies_are_checked() {
        assert_eq!(
            parse_body(Some(r#"{"task_id":"0190-ab"}"#)),
            Ok("0190-ab".to_owned())
        );
        for bad in [
            None,
            Some(""),
            Some("hello"),
            Some(r#"{"task_id":""}"#),
            Some(r#"{"task_id":"a b"}"#),
            Some(r#"{"id":"x"}"#),
        ] {
            assert!(parse_body(bad).is_err(), "{bad:?}");
        }
    }
}
