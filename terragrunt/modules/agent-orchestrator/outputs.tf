output "task_queue_urls" {
  description = "URL of the SQS task queue of each agent type (<cluster_name>-<type>-tasks)."
  value       = { for type, queue in aws_sqs_queue.task : type => queue.url }
}

output "task_queue_arns" {
  description = "ARN of the SQS task queue of each agent type."
  value       = { for type, queue in aws_sqs_queue.task : type => queue.arn }
}

output "priority_queue_urls" {
  description = "URL of the SQS queue of each priority tier, keyed \"<type>/<tier>\" (<cluster_name>-<type>-tasks-<tier>)."
  value       = { for key, queue in aws_sqs_queue.priority : key => queue.url }
}

output "priority_queue_arns" {
  description = "ARN of the SQS queue of each priority tier, keyed \"<type>/<tier>\"."
  value       = { for key, queue in aws_sqs_queue.priority : key => queue.arn }
}

output "result_queue_url" {
  description = "URL of the SQS result queue (<cluster_name>-results)."
  value       = aws_sqs_queue.results.url
}

output "result_queue_arn" {
  description = "ARN of the SQS result queue."
  value       = aws_sqs_queue.results.arn
}

output "dlq_url" {
  description = "URL of the SQS dead-letter queue of the task queues (<cluster_name>-tasks-dlq)."
  value       = aws_sqs_queue.dlq.url
}

output "dlq_arn" {
  description = "ARN of the SQS dead-letter queue."
  value       = aws_sqs_queue.dlq.arn
}

output "task_table_name" {
  description = "Name of the DynamoDB task table (<cluster_name>-agent-tasks)."
  value       = aws_dynamodb_table.tasks.name
}

output "task_table_arn" {
  description = "ARN of the DynamoDB task table."
  value       = aws_dynamodb_table.tasks.arn
}

output "coordinator_job_file" {
  description = "Path of the rendered coordinator job (jobs/coordinator.nomad.hcl), written by `agent-orchestrator render`."
  value       = local.coordinator_job_file
}

output "agent_job_files" {
  description = "Path of the rendered job of each agent type (jobs/<type>-agent.nomad.hcl), written by `agent-orchestrator render`."
  value       = local.agent_job_files
}

output "coordinator_role_arn" {
  description = "ARN of the coordinator's IAM role."
  value       = aws_iam_role.coordinator.arn
}

output "agent_role_arn" {
  description = "ARN of the agents' IAM role."
  value       = aws_iam_role.agent.arn
}
