# Task queues (one per agent type, plus one per priority tier where an agent type configures
# priority_queues), their dead-letter queue, and the result queue. All are encrypted at rest with
# SQS-managed keys and refuse requests that do not use TLS.

resource "aws_sqs_queue" "dlq" {
  name                      = module.naming.dlq_name
  message_retention_seconds = module.naming.queue_settings.dlq_message_retention_seconds
  sqs_managed_sse_enabled   = true
  tags                      = local.tags
}

resource "aws_sqs_queue" "task" {
  for_each = module.naming.task_queue_names

  name                       = each.value
  visibility_timeout_seconds = module.naming.queue_settings.visibility_timeout_seconds
  receive_wait_time_seconds  = module.naming.queue_settings.receive_wait_time_seconds
  message_retention_seconds  = module.naming.queue_settings.message_retention_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = module.naming.queue_settings.max_receive_count
  })

  tags = merge(local.tags, { AgentType = each.key })
}

# The tiers of an agent type's tasks: the coordinator receives from the highest tier first, then
# the lower ones, then the task queue above. Same settings and redrive as the task queues.
resource "aws_sqs_queue" "priority" {
  for_each = module.naming.priority_queue_names

  name                       = each.value
  visibility_timeout_seconds = module.naming.queue_settings.visibility_timeout_seconds
  receive_wait_time_seconds  = module.naming.queue_settings.receive_wait_time_seconds
  message_retention_seconds  = module.naming.queue_settings.message_retention_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = module.naming.queue_settings.max_receive_count
  })

  tags = merge(local.tags, { AgentType = split("/", each.key)[0], PriorityTier = split("/", each.key)[1] })
}

resource "aws_sqs_queue" "results" {
  name                       = module.naming.result_queue_name
  visibility_timeout_seconds = module.naming.queue_settings.visibility_timeout_seconds
  receive_wait_time_seconds  = module.naming.queue_settings.receive_wait_time_seconds
  message_retention_seconds  = module.naming.queue_settings.message_retention_seconds
  sqs_managed_sse_enabled    = true
  tags                       = local.tags
}

locals {
  # Every queue of this module, keyed by a stable name (keys are known at plan time).
  queues = merge(
    { for type, queue in aws_sqs_queue.task : "task-${type}" => queue },
    { for key, queue in aws_sqs_queue.priority : "priority-${key}" => queue },
    { dlq = aws_sqs_queue.dlq, results = aws_sqs_queue.results },
  )
}

data "aws_iam_policy_document" "queue_tls_only" {
  for_each = local.queues

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["sqs:*"]
    resources = [each.value.arn]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_sqs_queue_policy" "tls_only" {
  for_each = local.queues

  queue_url = each.value.id
  policy    = data.aws_iam_policy_document.queue_tls_only[each.key].json
}
