# The agent-orchestrator unit of the dev environment.
#
# `agent-orchestrator render` reads the `inputs` below (the generator's default --inputs), so the
# job files in jobs/ and the AWS resources of the module always come from the same values.

include "root" {
  path = find_in_parent_folders("root.hcl")
}

terraform {
  source = "${get_repo_root()}//terragrunt/modules/agent-orchestrator"
}

dependency "nomad_cluster" {
  config_path = "../nomad-cluster"

  mock_outputs = {
    nomad_addr  = "http://127.0.0.1:4646"
    datacenters = ["dc1"]
  }
}

locals {
  environment = "dev"
}

inputs = {
  cluster_name  = "dev"
  environment   = local.environment
  datacenters   = ["dc1"]
  nomad_version = "1.10.5"

  webhook_url                   = "https://agents.dev.example.com/webhooks/github"
  github_app_id                 = 123456
  github_installation_id        = 7890123
  github_private_key_secret_arn = "arn:aws:secretsmanager:us-east-1:111122223333:secret:dev/agent-orchestrator/github-app-key"

  coordinator_cpu_limit    = 500
  coordinator_memory_limit = "512MB"
  task_queue_size          = 1000
  agent_timeout            = "30m"

  agent_types = {
    coder = {
      image         = "ghcr.io/agent-orchestrator/coder-agent:0.1.0"
      cpu_limit     = 2000
      memory_limit  = "4GB"
      max_instances = 5
      capabilities  = ["code", "git", "pull-request"]
      env_vars      = { LOG_LEVEL = "info" }
      timeout       = "1h"
    }
    tester = {
      image         = "ghcr.io/agent-orchestrator/tester-agent:0.1.0"
      cpu_limit     = 1000
      memory_limit  = "2GB"
      max_instances = 3
      capabilities  = ["test", "git"]
      env_vars      = { LOG_LEVEL = "info" }
    }
    reviewer = {
      image         = "ghcr.io/agent-orchestrator/reviewer-agent:0.1.0"
      cpu_limit     = 500
      memory_limit  = "1GB"
      max_instances = 2
      capabilities  = ["review"]
      env_vars      = { LOG_LEVEL = "info" }
      timeout       = "20m"
    }
    docs = {
      image         = "ghcr.io/agent-orchestrator/docs-agent:0.1.0"
      cpu_limit     = 500
      memory_limit  = "512MB"
      max_instances = 2
      capabilities  = ["docs"]
      env_vars      = { LOG_LEVEL = "info" }
      timeout       = "15m"
    }
  }
}
