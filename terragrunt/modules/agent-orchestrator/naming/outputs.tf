output "task_queue_names" {
  description = "SQS task queue name per agent type: <cluster_name>-<type>-tasks."
  value       = local.task_queue_names

  precondition {
    condition     = alltrue([for name in values(local.task_queue_names) : length(name) <= 80])
    error_message = "A task queue name (<cluster_name>-<type>-tasks) is longer than SQS's 80 characters: shorten cluster_name or the agent type name."
  }
}

output "priority_queue_names" {
  description = "SQS queue name per priority tier, keyed \"<type>/<tier>\": <cluster_name>-<type>-tasks-<tier>."
  value       = local.priority_queue_names

  precondition {
    condition     = alltrue([for name in values(local.priority_queue_names) : length(name) <= 80])
    error_message = "A priority tier's queue name (<cluster_name>-<type>-tasks-<tier>) is longer than SQS's 80 characters: shorten the tier, type or cluster name."
  }
}

output "dlq_name" {
  description = "SQS dead-letter queue name: <cluster_name>-tasks-dlq."
  value       = local.dlq_name
}

output "result_queue_name" {
  description = "SQS result queue name: <cluster_name>-results."
  value       = local.result_queue_name
}

output "task_table_name" {
  description = "DynamoDB task table name: <cluster_name>-agent-tasks."
  value       = local.task_table_name
}

output "coordinator_job_name" {
  description = "Nomad job id of the coordinator: <cluster_name>-agent-coordinator."
  value       = local.coordinator_job_name
}

output "agent_job_names" {
  description = "Nomad job id per agent type: <cluster_name>-<type>-agent."
  value       = local.agent_job_names
}

output "coordinator_job_file_name" {
  description = "File name of the rendered coordinator job in jobs/."
  value       = local.coordinator_job_file_name
}

output "agent_job_file_names" {
  description = "File name of the rendered job per agent type in jobs/: <type>-agent.nomad.hcl."
  value       = local.agent_job_file_names
}

output "coordinator_role_name" {
  description = "IAM role name of the coordinator."
  value       = local.coordinator_role_name
}

output "agent_role_name" {
  description = "IAM role name of the agents."
  value       = local.agent_role_name
}

output "queue_settings" {
  description = "Settings of the SQS queues (visibility timeout, long polling, retention, maxReceiveCount)."
  value       = local.queue_settings
}
