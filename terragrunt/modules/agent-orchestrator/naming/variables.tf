# Inputs of the agent-orchestrator module: the schema the generator reads too
# (`agent_orchestrator::config::INPUT_FIELDS`, DESIGN.md §4). Names, types, defaults and
# descriptions must match that table exactly; `tests/terragrunt_module.rs` checks it.
#
# The validation blocks mirror the generator's checks (src/config), so a value Terraform accepts
# is one `agent-orchestrator render` accepts too. Conditions may only refer to their own variable
# (Terraform >= 1.5); cross-field checks (queue name length) live in ./naming as preconditions.
#
# naming/variables.tf is an exact copy of this file (the provider-less submodule validates the
# same inputs and is exercised by `terraform test`); the Rust test keeps the two identical.

variable "cluster_name" {
  description = "Name prefix of every job, queue, table and role (lowercase letters, digits, '-')."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", var.cluster_name)) && length(var.cluster_name) <= 40
    error_message = "The cluster_name must be 1-40 lowercase letters, digits and inner '-' (it prefixes AWS and Nomad names)."
  }
}

variable "environment" {
  description = "Deployment environment, e.g. dev, staging, prod."
  type        = string
  default     = "dev"
  nullable    = false
}

variable "datacenters" {
  description = "Nomad datacenters the jobs may run in."
  type        = list(string)
  default     = ["dc1"]
  nullable    = false
}

variable "nomad_version" {
  description = "Nomad version of the cluster; from 2.0.3 on, agent timeouts are also rendered as max_run_duration."
  type        = string
  default     = null

  validation {
    condition     = var.nomad_version == null || can(regex("^\\s*v*[0-9]+(\\.[0-9]+){0,2}([-+].*)?\\s*$", var.nomad_version))
    error_message = "The nomad_version must be a version such as \"1.9.4\" (optionally with a -suffix)."
  }
}

variable "webhook_url" {
  description = "Public URL GitHub delivers App webhooks to."
  type        = string
  default     = null
}

variable "github_app_id" {
  description = "GitHub App id."
  type        = number
  default     = null

  validation {
    condition     = var.github_app_id == null ? true : var.github_app_id >= 1 && floor(var.github_app_id) == var.github_app_id
    error_message = "The github_app_id must be a whole number of at least 1."
  }
}

variable "github_installation_id" {
  description = "GitHub App installation id."
  type        = number
  default     = null

  validation {
    condition     = var.github_installation_id == null ? true : var.github_installation_id >= 1 && floor(var.github_installation_id) == var.github_installation_id
    error_message = "The github_installation_id must be a whole number of at least 1."
  }
}

variable "github_private_key_secret_arn" {
  description = "ARN of the Secrets Manager secret holding the App's private key."
  type        = string
  default     = null

  # Stricter than the generator (which only needs a string): the module grants
  # secretsmanager:GetSecretValue on exactly this ARN, so it must be one.
  validation {
    condition     = var.github_private_key_secret_arn == null || can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$", var.github_private_key_secret_arn))
    error_message = "The github_private_key_secret_arn must be the ARN of one Secrets Manager secret (arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME)."
  }
}

variable "coordinator_image" {
  description = "Container image of the coordinator."
  type        = string
  default     = "ghcr.io/agent-orchestrator/agent-orchestrator:0.1.0"
  nullable    = false

  validation {
    condition     = trimspace(var.coordinator_image) != ""
    error_message = "The coordinator_image must not be empty."
  }
}

variable "coordinator_cpu_limit" {
  description = "Coordinator CPU in MHz."
  type        = number
  default     = 500
  nullable    = false

  validation {
    condition     = var.coordinator_cpu_limit >= 1 && var.coordinator_cpu_limit <= 1000000 && floor(var.coordinator_cpu_limit) == var.coordinator_cpu_limit
    error_message = "The coordinator_cpu_limit must be a whole number of MHz from 1 to 1000000."
  }
}

variable "coordinator_memory_limit" {
  description = "Coordinator memory, e.g. \"512MB\"."
  type        = string
  default     = "512MB"
  nullable    = false

  # A number with an optional unit (K/M/G/T, with optional "B" or "iB", any case; binary
  # multiples as Nomad means them), amounting to a whole number of megabytes.
  validation {
    condition = alltrue([for mb in [try(
      tonumber(regex("^\\s*([0-9.]+)\\s*([A-Za-z]*)\\s*$", var.coordinator_memory_limit)[0]) *
      lookup({ "" = 1, M = 1, MB = 1, MIB = 1, G = 1024, GB = 1024, GIB = 1024, T = 1048576, TB = 1048576, TIB = 1048576, K = 1 / 1024, KB = 1 / 1024, KIB = 1 / 1024 },
      upper(regex("^\\s*([0-9.]+)\\s*([A-Za-z]*)\\s*$", var.coordinator_memory_limit)[1])),
    0)] : mb >= 1 && mb <= 4294967295 && floor(mb) == mb])
    error_message = "The coordinator_memory_limit must be a size such as \"512MB\" or \"2GB\" (units K, M, G, T with optional B or iB) amounting to a whole number of megabytes."
  }
}

variable "task_queue_size" {
  description = "Most tasks one agent type may hold queued; more are refused with 429."
  type        = number
  default     = 1000
  nullable    = false

  validation {
    condition     = var.task_queue_size >= 1 && var.task_queue_size <= 100000000 && floor(var.task_queue_size) == var.task_queue_size
    error_message = "The task_queue_size must be a whole number from 1 to 100000000."
  }
}

variable "agent_timeout" {
  description = "Default run-time limit of one agent attempt."
  type        = string
  default     = "30m"
  nullable    = false

  # Go-style durations ("90s", "30m", "1h30m"); a bare number means seconds. Never zero.
  validation {
    condition     = can(regex("^\\s*(([0-9]+\\.?[0-9]*|\\.[0-9]+)(ns|us|µs|ms|s|m|h|d))+\\s*$|^\\s*([0-9]+\\.?[0-9]*|\\.[0-9]+)\\s*$", var.agent_timeout)) && can(regex("[1-9]", var.agent_timeout))
    error_message = "The agent_timeout must be a duration longer than zero, e.g. \"90s\", \"30m\" or \"1h30m\"."
  }
}

variable "max_attempts" {
  description = "Default attempts per task before it ends failed."
  type        = number
  default     = 3
  nullable    = false

  validation {
    condition     = var.max_attempts >= 1 && var.max_attempts <= 100 && floor(var.max_attempts) == var.max_attempts
    error_message = "The max_attempts must be a whole number from 1 to 100."
  }
}

variable "agent_types" {
  description = "Agent types: image, limits and concurrency of each."
  type = map(object({
    image           = string
    cpu_limit       = number
    memory_limit    = string
    max_instances   = number
    capabilities    = optional(list(string), [])
    env_vars        = optional(map(string), {})
    timeout         = optional(string)
    priority        = optional(number, 50)
    command         = optional(string)
    args            = optional(list(string), [])
    max_attempts    = optional(number)
    priority_queues = optional(map(number), {})
  }))
  nullable = false

  validation {
    condition     = length(var.agent_types) > 0
    error_message = "The agent_types map needs at least one agent type."
  }

  validation {
    condition     = alltrue([for name in keys(var.agent_types) : can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?$", name))])
    error_message = "Each agent type name must be lowercase letters, digits and inner '-' (it names jobs and queues)."
  }

  validation {
    condition     = alltrue([for t in values(var.agent_types) : trimspace(t.image) != ""])
    error_message = "Each agent type needs a non-empty image."
  }

  validation {
    condition     = alltrue([for t in values(var.agent_types) : t.cpu_limit >= 1 && t.cpu_limit <= 1000000 && floor(t.cpu_limit) == t.cpu_limit])
    error_message = "Each agent type's cpu_limit must be a whole number of MHz from 1 to 1000000."
  }

  # Same size grammar as coordinator_memory_limit; Nomad needs at least 10MB per task.
  validation {
    condition = alltrue([for t in values(var.agent_types) : alltrue([for mb in [try(
      tonumber(regex("^\\s*([0-9.]+)\\s*([A-Za-z]*)\\s*$", t.memory_limit)[0]) *
      lookup({ "" = 1, M = 1, MB = 1, MIB = 1, G = 1024, GB = 1024, GIB = 1024, T = 1048576, TB = 1048576, TIB = 1048576, K = 1 / 1024, KB = 1 / 1024, KIB = 1 / 1024 },
      upper(regex("^\\s*([0-9.]+)\\s*([A-Za-z]*)\\s*$", t.memory_limit)[1])),
    0)] : mb >= 10 && mb <= 4294967295 && floor(mb) == mb])])
    error_message = "Each agent type's memory_limit must be a size such as \"512MB\" or \"2GB\" (units K, M, G, T with optional B or iB): a whole number of megabytes, at least 10MB."
  }

  validation {
    condition     = alltrue([for t in values(var.agent_types) : t.max_instances >= 1 && t.max_instances <= 100000 && floor(t.max_instances) == t.max_instances])
    error_message = "Each agent type's max_instances must be a whole number from 1 to 100000."
  }

  validation {
    condition     = alltrue(flatten([for t in values(var.agent_types) : [for key in keys(t.env_vars) : can(regex("^[A-Za-z_][A-Za-z0-9_]*$", key)) && !can(regex("^(AO_|NOMAD_)", key))]]))
    error_message = "Each env_vars key must be a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*); AO_* and NOMAD_* are reserved for the executor."
  }

  validation {
    condition     = alltrue([for t in values(var.agent_types) : t.timeout == null || (can(regex("^\\s*(([0-9]+\\.?[0-9]*|\\.[0-9]+)(ns|us|µs|ms|s|m|h|d))+\\s*$|^\\s*([0-9]+\\.?[0-9]*|\\.[0-9]+)\\s*$", t.timeout)) && can(regex("[1-9]", t.timeout)))])
    error_message = "Each agent type's timeout must be null or a duration longer than zero, e.g. \"90s\", \"30m\" or \"1h30m\"."
  }

  validation {
    condition     = alltrue([for t in values(var.agent_types) : t.priority >= 1 && t.priority <= 100 && floor(t.priority) == t.priority])
    error_message = "Each agent type's priority must be a whole number from 1 to 100."
  }

  validation {
    condition     = alltrue([for t in values(var.agent_types) : t.command == null ? true : trimspace(t.command) != ""])
    error_message = "Each agent type's command must be null or non-empty."
  }

  validation {
    condition     = alltrue([for t in values(var.agent_types) : t.max_attempts == null ? true : t.max_attempts >= 1 && t.max_attempts <= 100 && floor(t.max_attempts) == t.max_attempts])
    error_message = "Each agent type's max_attempts must be null or a whole number from 1 to 100."
  }

  validation {
    condition     = alltrue(flatten([for t in values(var.agent_types) : [for tier in keys(t.priority_queues) : can(regex("^[a-z0-9_-]{1,20}$", tier))]]))
    error_message = "Each priority_queues tier name must be 1-20 lowercase letters, digits, '_' and '-' (it ends a queue name)."
  }

  validation {
    condition     = alltrue(flatten([for t in values(var.agent_types) : [for min in values(t.priority_queues) : min >= -1000 && min <= 1000 && floor(min) == min]]))
    error_message = "Each priority_queues minimum must be a whole number from -1000 to 1000 (the task priority range)."
  }

  # Routing takes a task to the tier with the highest minimum at or below its priority: two
  # tiers with one minimum would make that ambiguous.
  validation {
    condition     = alltrue([for t in values(var.agent_types) : length(distinct(values(t.priority_queues))) == length(t.priority_queues)])
    error_message = "The priority_queues tiers of one agent type must not share a minimum."
  }
}
