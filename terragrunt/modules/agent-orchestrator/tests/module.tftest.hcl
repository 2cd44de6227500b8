# `terraform test` of the whole module against a mocked AWS provider (Terraform >= 1.7). It needs
# the provider's schema, so it runs only where hashicorp/aws can be installed, e.g. from a local
# plugin directory:
#   terraform init -backend=false -plugin-dir=/opt/tf-plugins && terraform test
# The check "job_files_rendered" looks for ../../../jobs/*.nomad.hcl: render them first
# (`agent-orchestrator render`); tests/terragrunt_module.rs runs this file on a copy with stub jobs.
# Values follow terragrunt/live/dev/agent-orchestrator/terragrunt.hcl.

mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "111122223333" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  # The roles validate that their policies are JSON; the documents' own contents are checked
  # through their statements below.
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}" }
  }
}

variables {
  cluster_name                  = "dev"
  github_private_key_secret_arn = "arn:aws:secretsmanager:us-east-1:111122223333:secret:dev/agent-orchestrator/github-app-key"
  agent_types = {
    coder    = { image = "ghcr.io/agent-orchestrator/coder-agent:0.1.0", cpu_limit = 2000, memory_limit = "4GB", max_instances = 5, timeout = "1h", priority_queues = { urgent = 10 } }
    tester   = { image = "ghcr.io/agent-orchestrator/tester-agent:0.1.0", cpu_limit = 1000, memory_limit = "2GB", max_instances = 3 }
    reviewer = { image = "ghcr.io/agent-orchestrator/reviewer-agent:0.1.0", cpu_limit = 500, memory_limit = "1GB", max_instances = 2, timeout = "20m" }
    docs     = { image = "ghcr.io/agent-orchestrator/docs-agent:0.1.0", cpu_limit = 500, memory_limit = "512MB", max_instances = 2, timeout = "15m" }
  }
}

run "queues" {
  assert {
    condition     = { for type, queue in aws_sqs_queue.task : type => queue.name } == { coder = "dev-coder-tasks", docs = "dev-docs-tasks", reviewer = "dev-reviewer-tasks", tester = "dev-tester-tasks" }
    error_message = "One task queue per agent type, named <cluster_name>-<type>-tasks."
  }
  assert {
    condition     = { for key, queue in aws_sqs_queue.priority : key => [queue.name, queue.tags.AgentType, queue.tags.PriorityTier] } == { "coder/urgent" = ["dev-coder-tasks-urgent", "coder", "urgent"] }
    error_message = "One queue per priority tier, named <cluster_name>-<type>-tasks-<tier> and tagged with its type and tier."
  }
  assert {
    condition     = aws_sqs_queue.dlq.name == "dev-tasks-dlq" && aws_sqs_queue.results.name == "dev-results"
    error_message = "The DLQ is <cluster_name>-tasks-dlq, the result queue <cluster_name>-results."
  }
  assert {
    condition     = alltrue([for queue in concat(values(aws_sqs_queue.task), values(aws_sqs_queue.priority), [aws_sqs_queue.dlq, aws_sqs_queue.results]) : queue.sqs_managed_sse_enabled])
    error_message = "Every queue is encrypted with SQS-managed SSE."
  }
  assert {
    condition     = alltrue([for queue in concat(values(aws_sqs_queue.task), values(aws_sqs_queue.priority)) : jsondecode(queue.redrive_policy).deadLetterTargetArn == aws_sqs_queue.dlq.arn && jsondecode(queue.redrive_policy).maxReceiveCount >= 1])
    error_message = "Every task and tier queue redrives to the DLQ after maxReceiveCount receives."
  }
  assert {
    condition     = toset([for policy in aws_sqs_queue_policy.tls_only : policy.queue_url]) == toset([for queue in concat(values(aws_sqs_queue.task), values(aws_sqs_queue.priority), [aws_sqs_queue.dlq, aws_sqs_queue.results]) : queue.id])
    error_message = "Every queue has the TLS-only queue policy."
  }
  assert {
    condition     = alltrue([for doc in data.aws_iam_policy_document.queue_tls_only : alltrue([for s in doc.statement : s.effect == "Deny" && length(s.resources) == 1 && !contains(s.resources, "*")])])
    error_message = "The queue policies only deny, each on its own queue."
  }
}

run "task_table" {
  assert {
    condition     = aws_dynamodb_table.tasks.name == "dev-agent-tasks" && aws_dynamodb_table.tasks.billing_mode == "PAY_PER_REQUEST" && aws_dynamodb_table.tasks.hash_key == "id"
    error_message = "The table is <cluster_name>-agent-tasks, on demand, keyed by id."
  }
  assert {
    condition     = aws_dynamodb_table.tasks.point_in_time_recovery[0].enabled && aws_dynamodb_table.tasks.ttl[0].attribute_name == "expires_at" && aws_dynamodb_table.tasks.ttl[0].enabled
    error_message = "Point-in-time recovery on, TTL on expires_at."
  }
  assert {
    condition     = { for a in aws_dynamodb_table.tasks.attribute : a.name => a.type } == { id = "S", status = "S", agent_type = "S", updated_at = "N" }
    error_message = "Key attributes: id, status, agent_type (S) and updated_at (N)."
  }
  assert {
    condition = { for index in aws_dynamodb_table.tasks.global_secondary_index : index.name => [index.hash_key, index.range_key, index.projection_type] } == {
      "status-index"     = ["status", "updated_at", "ALL"]
      "status-id-index"  = ["status", "id", "ALL"]
      "agent-type-index" = ["agent_type", "id", "ALL"]
    }
    error_message = "GSIs status-index (status, updated_at), status-id-index (status, id) and agent-type-index (agent_type, id)."
  }
}

run "coordinator_policy" {
  assert {
    condition = toset(flatten([for s in data.aws_iam_policy_document.coordinator.statement : s.resources if anytrue([for a in s.actions : startswith(a, "sqs:")])])) == toset(concat(
      [for queue in values(aws_sqs_queue.task) : queue.arn], [for queue in values(aws_sqs_queue.priority) : queue.arn], [aws_sqs_queue.results.arn, aws_sqs_queue.dlq.arn]
    ))
    error_message = "The coordinator's SQS permissions cover exactly this module's queues."
  }
  assert {
    condition = toset(flatten([for s in data.aws_iam_policy_document.coordinator.statement : s.resources if anytrue([for a in s.actions : startswith(a, "dynamodb:")])])) == toset([
      aws_dynamodb_table.tasks.arn, "${aws_dynamodb_table.tasks.arn}/index/status-index", "${aws_dynamodb_table.tasks.arn}/index/status-id-index", "${aws_dynamodb_table.tasks.arn}/index/agent-type-index"
    ])
    error_message = "The coordinator's DynamoDB permissions cover exactly the task table and its indexes."
  }
  assert {
    condition     = [for s in data.aws_iam_policy_document.coordinator.statement : tolist(s.resources) if contains(s.actions, "secretsmanager:GetSecretValue")] == [tolist([var.github_private_key_secret_arn])]
    error_message = "The coordinator may read exactly the one GitHub App key secret."
  }
  assert {
    condition = toset(flatten([for s in data.aws_iam_policy_document.coordinator.statement : s.actions])) == toset([
      "sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
      "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query", "dynamodb:DeleteItem",
      "secretsmanager:GetSecretValue",
    ])
    error_message = "The coordinator gets only the actions it uses."
  }
  assert {
    condition     = alltrue([for s in data.aws_iam_policy_document.coordinator.statement : s.effect == "Allow" && !contains(s.resources, "*")])
    error_message = "No wildcard resources."
  }
}

run "agent_policy" {
  assert {
    condition     = length(data.aws_iam_policy_document.agent.statement) == 1
    error_message = "Agents get one statement."
  }
  assert {
    condition     = data.aws_iam_policy_document.agent.statement[0].actions == toset(["sqs:SendMessage"]) && data.aws_iam_policy_document.agent.statement[0].resources == toset([aws_sqs_queue.results.arn])
    error_message = "Agents may only send to the result queue."
  }
}

run "roles" {
  assert {
    condition     = aws_iam_role.coordinator.name == "dev-agent-coordinator" && aws_iam_role.agent.name == "dev-agents"
    error_message = "Role names follow the cluster name."
  }
  assert {
    condition     = aws_iam_role_policy.coordinator.role == aws_iam_role.coordinator.id && aws_iam_role_policy.agent.role == aws_iam_role.agent.id
    error_message = "Each role carries its own policy."
  }
  assert {
    condition     = flatten([for s in data.aws_iam_policy_document.assume_from_account.statement : [for p in s.principals : p.identifiers]]) == ["arn:aws:iam::111122223333:root"]
    error_message = "The roles trust this account only."
  }
  assert {
    condition     = output.coordinator_role_arn == aws_iam_role.coordinator.arn && output.agent_role_arn == aws_iam_role.agent.arn
    error_message = "Role ARN outputs."
  }
}

run "outputs" {
  assert {
    condition     = output.task_queue_urls == { for type, queue in aws_sqs_queue.task : type => queue.url } && toset(keys(output.task_queue_urls)) == toset(keys(var.agent_types))
    error_message = "task_queue_urls maps each agent type to its queue URL."
  }
  assert {
    condition     = output.priority_queue_urls == { "coder/urgent" = aws_sqs_queue.priority["coder/urgent"].url } && output.priority_queue_arns == { "coder/urgent" = aws_sqs_queue.priority["coder/urgent"].arn }
    error_message = "priority_queue_urls and priority_queue_arns map each <type>/<tier> to its queue."
  }
  assert {
    condition     = output.result_queue_url == aws_sqs_queue.results.url && output.dlq_url == aws_sqs_queue.dlq.url && output.task_table_name == "dev-agent-tasks"
    error_message = "Queue URL and table outputs."
  }
  assert {
    condition     = endswith(output.coordinator_job_file, "/../../../jobs/coordinator.nomad.hcl")
    error_message = "coordinator_job_file points at the repository's jobs/coordinator.nomad.hcl."
  }
  assert {
    condition     = output.agent_job_files == { for type in keys(var.agent_types) : type => "${path.module}/../../../jobs/${type}-agent.nomad.hcl" }
    error_message = "agent_job_files maps each agent type to jobs/<type>-agent.nomad.hcl."
  }
}

run "no_secret_no_secret_access" {
  variables {
    github_private_key_secret_arn = null
  }
  assert {
    condition     = length([for s in data.aws_iam_policy_document.coordinator.statement : s if contains(s.actions, "secretsmanager:GetSecretValue")]) == 0
    error_message = "Without a secret ARN the coordinator gets no Secrets Manager access at all."
  }
}

run "an_agent_type_without_a_rendered_job_is_reported" {
  variables {
    agent_types = {
      not-rendered = { image = "x", cpu_limit = 100, memory_limit = "64MB", max_instances = 1 }
    }
  }
  expect_failures = [check.job_files_rendered]
}
