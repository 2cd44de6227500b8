# agent-orchestrator: the AWS side of the cluster deployment (DESIGN.md §2): SQS task queues
# (one per agent type) with a dead-letter queue, a result queue, the DynamoDB task table, and
# least-privilege IAM roles for the coordinator and the agents. The Nomad jobs themselves are
# rendered by `agent-orchestrator render` into the repository's jobs/ directory from the same
# inputs; this module points at those files (outputs coordinator_job_file, agent_job_files).

# Names and input validation, provider-less so `terraform test` exercises them offline.
module "naming" {
  source = "./naming"

  cluster_name                  = var.cluster_name
  environment                   = var.environment
  datacenters                   = var.datacenters
  nomad_version                 = var.nomad_version
  webhook_url                   = var.webhook_url
  github_app_id                 = var.github_app_id
  github_installation_id        = var.github_installation_id
  github_private_key_secret_arn = var.github_private_key_secret_arn
  coordinator_image             = var.coordinator_image
  coordinator_cpu_limit         = var.coordinator_cpu_limit
  coordinator_memory_limit      = var.coordinator_memory_limit
  task_queue_size               = var.task_queue_size
  agent_timeout                 = var.agent_timeout
  max_attempts                  = var.max_attempts
  agent_types                   = var.agent_types
}

locals {
  tags = {
    Component   = "agent-orchestrator"
    Cluster     = var.cluster_name
    Environment = var.environment
  }

  # `render` writes the jobs to the repository's top-level jobs/ (its default --out), and
  # `render --check` in CI keeps them in sync with these inputs. This path is relative to the
  # module, so Terragrunt must copy the whole repository: use a `//` in `source`, e.g.
  # "${get_repo_root()}//terragrunt/modules/agent-orchestrator".
  jobs_dir             = "${path.module}/../../../jobs"
  coordinator_job_file = "${local.jobs_dir}/${module.naming.coordinator_job_file_name}"
  agent_job_files      = { for type, file in module.naming.agent_job_file_names : type => "${local.jobs_dir}/${file}" }
}

# A warning, not an error: the AWS resources do not depend on the job files, but whoever deploys
# the jobs does.
check "job_files_rendered" {
  assert {
    condition     = alltrue([for file in concat([local.coordinator_job_file], values(local.agent_job_files)) : fileexists(file)])
    error_message = "Some job files are missing from jobs/ (run `agent-orchestrator render` with these inputs), or Terragrunt copied only the module (use `//` in the source)."
  }
}
