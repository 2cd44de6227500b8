# Task queues (one per agent type), their dead-letter queue, and the result queue. All are
# encrypted at rest with SQS-managed keys and refuse requests that do not use TLS.

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
