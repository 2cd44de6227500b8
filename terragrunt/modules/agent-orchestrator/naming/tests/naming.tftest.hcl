# `terraform test` for the provider-less naming/validation submodule. Runs offline:
#   cd terragrunt/modules/agent-orchestrator/naming
#   terraform init -backend=false && terraform test
# Values follow terragrunt/live/dev/agent-orchestrator/terragrunt.hcl.

variables {
  cluster_name = "dev"
  agent_types = {
    coder = {
      image         = "ghcr.io/agent-orchestrator/coder-agent:0.1.0"
      cpu_limit     = 2000
      memory_limit  = "4GB"
      max_instances = 5
      env_vars      = { LOG_LEVEL = "info" }
      timeout       = "1h"
    }
    tester = {
      image         = "ghcr.io/agent-orchestrator/tester-agent:0.1.0"
      cpu_limit     = 1000
      memory_limit  = "2GB"
      max_instances = 3
    }
    reviewer = {
      image         = "ghcr.io/agent-orchestrator/reviewer-agent:0.1.0"
      cpu_limit     = 500
      memory_limit  = "1GB"
      max_instances = 2
      timeout       = "20m"
    }
    docs = {
      image         = "ghcr.io/agent-orchestrator/docs-agent:0.1.0"
      cpu_limit     = 500
      memory_limit  = "512MB"
      max_instances = 2
      timeout       = "15m"
    }
  }
}

run "names_follow_the_design" {
  command = plan

  assert {
    condition = output.task_queue_names == {
      coder    = "dev-coder-tasks"
      docs     = "dev-docs-tasks"
      reviewer = "dev-reviewer-tasks"
      tester   = "dev-tester-tasks"
    }
    error_message = "Task queues must be named <cluster_name>-<type>-tasks."
  }
  assert {
    condition     = output.dlq_name == "dev-tasks-dlq" && output.result_queue_name == "dev-results"
    error_message = "The DLQ must be <cluster_name>-tasks-dlq and the result queue <cluster_name>-results."
  }
  assert {
    condition     = output.task_table_name == "dev-agent-tasks"
    error_message = "The task table must be <cluster_name>-agent-tasks."
  }
  assert {
    condition     = output.coordinator_job_name == "dev-agent-coordinator" && output.agent_job_names.coder == "dev-coder-agent"
    error_message = "Nomad jobs must be <cluster_name>-agent-coordinator and <cluster_name>-<type>-agent."
  }
  assert {
    condition     = output.coordinator_job_file_name == "coordinator.nomad.hcl" && output.agent_job_file_names.reviewer == "reviewer-agent.nomad.hcl"
    error_message = "Job files must be coordinator.nomad.hcl and <type>-agent.nomad.hcl, as `render` writes them."
  }
  assert {
    condition     = length(output.agent_job_file_names) == 4 && length(output.agent_job_names) == 4
    error_message = "One job per agent type."
  }
  assert {
    condition     = length(output.priority_queue_names) == 0
    error_message = "Without priority_queues an agent type has its task queue only."
  }
  assert {
    condition     = length(output.coordinator_role_name) <= 64 && length(output.agent_role_name) <= 64 && output.coordinator_role_name != output.agent_role_name
    error_message = "Role names must be distinct and fit IAM's 64 characters."
  }
  assert {
    condition     = output.queue_settings.max_receive_count >= 1 && output.queue_settings.receive_wait_time_seconds <= 20
    error_message = "Queue settings must be within SQS's limits."
  }
}

run "optional_fields_take_the_schema_defaults" {
  command = plan

  assert {
    condition     = var.agent_types.tester.priority == 50 && length(var.agent_types.tester.capabilities) == 0 && length(var.agent_types.tester.args) == 0
    error_message = "priority defaults to 50, capabilities and args to []."
  }
  assert {
    condition     = length(var.agent_types.tester.env_vars) == 0 && var.agent_types.tester.timeout == null && var.agent_types.tester.max_attempts == null && var.agent_types.tester.command == null
    error_message = "env_vars defaults to {}, timeout/max_attempts/command to null."
  }
  assert {
    condition     = length(var.agent_types.tester.priority_queues) == 0
    error_message = "priority_queues defaults to {}."
  }
  assert {
    condition     = var.environment == "dev" && var.datacenters == tolist(["dc1"]) && var.coordinator_memory_limit == "512MB" && var.agent_timeout == "30m" && var.max_attempts == 3
    error_message = "Top-level defaults must match the generator's schema."
  }
}

run "the_longest_names_are_accepted" {
  command = plan

  variables {
    # 40 characters of cluster name and a 33-character type: exactly SQS's 80.
    cluster_name = "abcdefghij-abcdefghij-abcdefghij-abcdefg"
    agent_types = {
      "abcdefghij-abcdefghij-abcdefghij" = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1 }
    }
  }

  assert {
    condition     = length(output.task_queue_names["abcdefghij-abcdefghij-abcdefghij"]) == 79
    error_message = "Queue name length is cluster + type + 7."
  }
}

run "queue_names_longer_than_80_are_refused" {
  command = plan

  variables {
    cluster_name = "abcdefghij-abcdefghij-abcdefghij-abcdefg"
    agent_types = {
      "abcdefghij-abcdefghij-abcdefghij-ab" = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1 }
    }
  }

  expect_failures = [output.task_queue_names]
}

run "priority_tiers_get_a_queue_each" {
  command = plan

  variables {
    agent_types = {
      coder  = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { urgent = 10, "low_1" = -5, "b-0" = 0 } }
      tester = { image = "y", cpu_limit = 1, memory_limit = "10MB", max_instances = 1 }
    }
  }

  assert {
    condition = output.priority_queue_names == {
      "coder/urgent" = "dev-coder-tasks-urgent"
      "coder/low_1"  = "dev-coder-tasks-low_1"
      "coder/b-0"    = "dev-coder-tasks-b-0"
    }
    error_message = "Each tier's queue is <cluster_name>-<type>-tasks-<tier>, keyed <type>/<tier>."
  }
  assert {
    condition     = output.task_queue_names == { coder = "dev-coder-tasks", tester = "dev-tester-tasks" }
    error_message = "A type with tiers keeps its task queue (the tasks below every tier)."
  }
}

run "the_longest_tier_queue_name_is_accepted" {
  command = plan

  variables {
    # 40 + 1 + 26 + 6 ("-tasks") + 1 + 6 = 80 characters.
    cluster_name = "abcdefghij-abcdefghij-abcdefghij-abcdefg"
    agent_types = {
      "abcdefghij-abcdefghij-abcd" = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { abcdef = 1 } }
    }
  }

  assert {
    condition     = length(output.priority_queue_names["abcdefghij-abcdefghij-abcd/abcdef"]) == 80
    error_message = "Tier queue name length is the task queue's + 1 + the tier's."
  }
}

run "tier_queue_names_longer_than_80_are_refused" {
  command = plan

  variables {
    cluster_name = "abcdefghij-abcdefghij-abcdefghij-abcdefg"
    agent_types = {
      "abcdefghij-abcdefghij-abcd" = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { abcdefg = 1 } }
    }
  }

  expect_failures = [output.priority_queue_names]
}

run "accepted_values" {
  command = plan

  variables {
    cluster_name             = "a"
    nomad_version            = "v2.0.3-beta.1"
    github_app_id            = 1
    github_installation_id   = 99
    coordinator_memory_limit = "2048KB"
    agent_timeout            = "1h30m"
    agent_types = {
      "a-1" = {
        image         = "x"
        cpu_limit     = 1000000
        memory_limit  = "1.5GiB"
        max_instances = 100000
        timeout       = "250ms"
        priority      = 100
        env_vars      = { _PRIVATE = "1", LOG_LEVEL = "debug" }
        command       = "/bin/echo"
        max_attempts  = 100
      }
      b = { image = "y", cpu_limit = 1, memory_limit = "256", max_instances = 1, priority = 1, timeout = "90" }
      c = { image = "z", cpu_limit = 1, memory_limit = "1g", max_instances = 1, timeout = "0.5s" }
    }
  }

  assert {
    condition     = output.task_queue_names["a-1"] == "a-a-1-tasks"
    error_message = "Valid inputs plan."
  }
}

# ---- each of these values is refused by the generator, so Terraform refuses it too ----

run "cluster_name_uppercase" {
  command = plan
  variables {
    cluster_name = "Dev"
  }
  expect_failures = [var.cluster_name]
}

run "cluster_name_leading_dash" {
  command = plan
  variables {
    cluster_name = "-dev"
  }
  expect_failures = [var.cluster_name]
}

run "cluster_name_too_long" {
  command = plan
  variables {
    cluster_name = "abcdefghij-abcdefghij-abcdefghij-abcdefgh"
  }
  expect_failures = [var.cluster_name]
}

run "nomad_version_not_a_version" {
  command = plan
  variables {
    nomad_version = "two"
  }
  expect_failures = [var.nomad_version]
}

run "github_app_id_zero" {
  command = plan
  variables {
    github_app_id = 0
  }
  expect_failures = [var.github_app_id]
}

run "github_installation_id_fraction" {
  command = plan
  variables {
    github_installation_id = 1.5
  }
  expect_failures = [var.github_installation_id]
}

run "secret_arn_not_an_arn" {
  command = plan
  variables {
    github_private_key_secret_arn = "*"
  }
  expect_failures = [var.github_private_key_secret_arn]
}

run "coordinator_image_empty" {
  command = plan
  variables {
    coordinator_image = " "
  }
  expect_failures = [var.coordinator_image]
}

run "coordinator_cpu_zero" {
  command = plan
  variables {
    coordinator_cpu_limit = 0
  }
  expect_failures = [var.coordinator_cpu_limit]
}

run "coordinator_memory_bad_unit" {
  command = plan
  variables {
    coordinator_memory_limit = "2GX"
  }
  expect_failures = [var.coordinator_memory_limit]
}

run "coordinator_memory_not_whole_megabytes" {
  command = plan
  variables {
    coordinator_memory_limit = "0.5MB"
  }
  expect_failures = [var.coordinator_memory_limit]
}

run "coordinator_memory_two_dots" {
  command = plan
  variables {
    coordinator_memory_limit = "1.2.3GB"
  }
  expect_failures = [var.coordinator_memory_limit]
}

run "coordinator_memory_negative" {
  command = plan
  variables {
    coordinator_memory_limit = "-1GB"
  }
  expect_failures = [var.coordinator_memory_limit]
}

run "task_queue_size_zero" {
  command = plan
  variables {
    task_queue_size = 0
  }
  expect_failures = [var.task_queue_size]
}

run "agent_timeout_zero" {
  command = plan
  variables {
    agent_timeout = "0s"
  }
  expect_failures = [var.agent_timeout]
}

run "agent_timeout_words" {
  command = plan
  variables {
    agent_timeout = "10 minutes"
  }
  expect_failures = [var.agent_timeout]
}

run "max_attempts_above_100" {
  command = plan
  variables {
    max_attempts = 101
  }
  expect_failures = [var.max_attempts]
}

run "no_agent_types" {
  command = plan
  variables {
    agent_types = {}
  }
  expect_failures = [var.agent_types]
}

run "agent_type_name_with_underscore" {
  command = plan
  variables {
    agent_types = { code_review = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_image_empty" {
  command = plan
  variables {
    agent_types = { coder = { image = "", cpu_limit = 1, memory_limit = "10MB", max_instances = 1 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_cpu_negative" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = -100, memory_limit = "10MB", max_instances = 1 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_memory_bad_unit" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "2GX", max_instances = 1 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_memory_below_10mb" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "9MB", max_instances = 1 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_max_instances_zero" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 0 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_env_var_reserved" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, env_vars = { AO_TASK_ID = "1" } } }
  }
  expect_failures = [var.agent_types]
}

run "agent_env_var_bad_name" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, env_vars = { "1X" = "1" } } }
  }
  expect_failures = [var.agent_types]
}

run "agent_timeout_bad" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, timeout = "m" } }
  }
  expect_failures = [var.agent_types]
}

run "agent_priority_above_100" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority = 101 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_priority_zero" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority = 0 } }
  }
  expect_failures = [var.agent_types]
}

run "agent_command_empty" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, command = "" } }
  }
  expect_failures = [var.agent_types]
}

run "agent_max_attempts_zero" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, max_attempts = 0 } }
  }
  expect_failures = [var.agent_types]
}

run "priority_tier_name_uppercase" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { Urgent = 10 } } }
  }
  expect_failures = [var.agent_types]
}

run "priority_tier_name_too_long" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { abcdefghijabcdefghijk = 10 } } }
  }
  expect_failures = [var.agent_types]
}

run "priority_tier_minimum_fraction" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { urgent = 2.5 } } }
  }
  expect_failures = [var.agent_types]
}

run "priority_tier_minimum_above_1000" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { urgent = 1001 } } }
  }
  expect_failures = [var.agent_types]
}

run "priority_tiers_sharing_a_minimum" {
  command = plan
  variables {
    agent_types = { coder = { image = "x", cpu_limit = 1, memory_limit = "10MB", max_instances = 1, priority_queues = { urgent = 10, high = 10 } } }
  }
  expect_failures = [var.agent_types]
}
