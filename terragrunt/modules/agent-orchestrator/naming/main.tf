# Names of everything the agent-orchestrator module creates or points at, derived from the
# inputs alone. DESIGN.md §3 and §5 fix these names: the coordinator (`serve`, `serve --bootstrap`)
# and the generator (`render`) derive the same ones from the same inputs.

locals {
  agent_type_names = sort(keys(var.agent_types))

  # SQS: one task queue per agent type (plus one per priority tier), one dead-letter queue, one
  # result queue.
  task_queue_names = { for name in local.agent_type_names : name => "${var.cluster_name}-${name}-tasks" }
  dlq_name         = "${var.cluster_name}-tasks-dlq"
  # Priority tiers, where an agent type configures them: one queue per tier, named after the
  # type's task queue, keyed "<type>/<tier>".
  priority_queue_names = merge([
    for name in local.agent_type_names : {
      for tier in keys(var.agent_types[name].priority_queues) : "${name}/${tier}" => "${local.task_queue_names[name]}-${tier}"
    }
  ]...)
  result_queue_name = "${var.cluster_name}-results"

  # DynamoDB: the task table (its layout is in ../dynamodb.tf).
  task_table_name = "${var.cluster_name}-agent-tasks"

  # Nomad jobs and the files `agent-orchestrator render` writes them to (in jobs/).
  coordinator_job_name      = "${var.cluster_name}-agent-coordinator"
  agent_job_names           = { for name in local.agent_type_names : name => "${var.cluster_name}-${name}-agent" }
  coordinator_job_file_name = "coordinator.nomad.hcl"
  agent_job_file_names      = { for name in local.agent_type_names : name => "${name}-agent.nomad.hcl" }

  # IAM roles (names are at most 64 characters; cluster_name is at most 40).
  coordinator_role_name = "${var.cluster_name}-agent-coordinator"
  agent_role_name       = "${var.cluster_name}-agents"

  # Queue settings, shared by the module and `serve --bootstrap`.
  queue_settings = {
    # Covers receive -> claim in the store -> Nomad dispatch -> delete; an attempt's run time is
    # tracked in the task table, not by keeping its message invisible.
    visibility_timeout_seconds = 120
    # Long polling: the coordinator reacts to new work at once without busy polling.
    receive_wait_time_seconds = 20
    message_retention_seconds = 345600 # 4 days
    # A message received this often without being deleted (the coordinator failed between
    # receive and delete each time) moves to the dead-letter queue.
    max_receive_count             = 5
    dlq_message_retention_seconds = 1209600 # 14 days, the SQS maximum
  }
}
