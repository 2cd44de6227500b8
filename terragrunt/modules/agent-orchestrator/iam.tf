# Least-privilege roles. The coordinator may use this module's queues and table and read the one
# GitHub App key secret; an agent may only send its result to the result queue.
#
# Trust: principals of this account that are themselves allowed to sts:AssumeRole on these role
# ARNs (e.g. the Nomad client instance role, or a Nomad workload-identity role). The roles trust
# the account, so access is granted where the caller's permissions are defined, never by these
# roles alone.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_iam_policy_document" "assume_from_account" {
  statement {
    sid     = "AssumeFromThisAccount"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

# ---- coordinator ----

data "aws_iam_policy_document" "coordinator" {
  statement {
    sid    = "Queues"
    effect = "Allow"
    actions = [
      "sqs:SendMessage",
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
    ]
    resources = concat(
      [for queue in aws_sqs_queue.task : queue.arn],
      [for queue in aws_sqs_queue.priority : queue.arn],
      [aws_sqs_queue.results.arn, aws_sqs_queue.dlq.arn],
    )
  }

  statement {
    sid    = "TaskTable"
    effect = "Allow"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:Query",
    ]
    resources = [aws_dynamodb_table.tasks.arn]
  }

  statement {
    sid       = "TaskTableIndexes"
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = [for index in aws_dynamodb_table.tasks.global_secondary_index : "${aws_dynamodb_table.tasks.arn}/index/${index.name}"]
  }

  # Only when a secret is configured; never a wildcard.
  dynamic "statement" {
    for_each = var.github_private_key_secret_arn == null ? [] : [var.github_private_key_secret_arn]

    content {
      sid       = "GitHubAppPrivateKey"
      effect    = "Allow"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role" "coordinator" {
  name               = module.naming.coordinator_role_name
  description        = "agent-orchestrator coordinator of cluster ${var.cluster_name}"
  assume_role_policy = data.aws_iam_policy_document.assume_from_account.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "coordinator" {
  name   = "agent-orchestrator-coordinator"
  role   = aws_iam_role.coordinator.id
  policy = data.aws_iam_policy_document.coordinator.json
}

# ---- agents ----

data "aws_iam_policy_document" "agent" {
  statement {
    sid       = "SendResults"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.results.arn]
  }
}

resource "aws_iam_role" "agent" {
  name               = module.naming.agent_role_name
  description        = "agent-orchestrator agents of cluster ${var.cluster_name}"
  assume_role_policy = data.aws_iam_policy_document.assume_from_account.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "agent" {
  name   = "agent-orchestrator-agent"
  role   = aws_iam_role.agent.id
  policy = data.aws_iam_policy_document.agent.json
}
