# Terragrunt root configuration, included by every unit under live/:
#
#   include "root" {
#     path = find_in_parent_folders("root.hcl")
#   }
#
# Units live at live/<environment>/<unit>/terragrunt.hcl. This file gives each of them an S3
# state (one key per unit, locked, encrypted) and an AWS provider; the unit brings its module
# (`terraform { source }`), its dependencies and its inputs.
#
# No `inputs` here on purpose: `agent-orchestrator render` reads only the unit's own `inputs`
# block (it does not evaluate includes), so every input of the agent-orchestrator module must be
# written in live/<environment>/agent-orchestrator/terragrunt.hcl for the jobs and the AWS
# resources to come from the same values.

locals {
  # "live/dev/agent-orchestrator" -> environment "dev", unit "agent-orchestrator".
  unit_path   = path_relative_to_include()
  environment = split("/", local.unit_path)[1]
  unit        = basename(local.unit_path)

  aws_region = get_env("AWS_REGION", "us-east-1")
  account_id = get_aws_account_id()

  # Created once per account, outside Terragrunt (bootstrap), or by Terragrunt on first run.
  state_bucket = "agent-orchestrator-tfstate-${local.account_id}-${local.aws_region}"
  lock_table   = "agent-orchestrator-tflocks"
}

remote_state {
  backend = "s3"

  generate = {
    path      = "backend.tf"
    if_exists = "overwrite_terragrunt"
  }

  config = {
    bucket         = local.state_bucket
    key            = "${local.unit_path}/terraform.tfstate"
    region         = local.aws_region
    encrypt        = true
    dynamodb_table = local.lock_table
  }
}

generate "provider" {
  path      = "provider.tf"
  if_exists = "overwrite_terragrunt"
  contents  = <<-EOF
    provider "aws" {
      region              = "${local.aws_region}"
      allowed_account_ids = ["${local.account_id}"]

      default_tags {
        tags = {
          ManagedBy = "terragrunt"
          Unit      = "${local.unit_path}"
        }
      }
    }
  EOF
}
