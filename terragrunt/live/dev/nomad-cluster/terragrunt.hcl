# The Nomad (+ Consul) cluster of the dev environment, in the VPC's private subnets.
#
# The source is your organisation's Nomad cluster module: any module that takes the VPC and
# outputs `nomad_addr` and `datacenters` (what ../agent-orchestrator reads; see its
# mock_outputs) fits. The address below is an example, not a published module.

include "root" {
  path = find_in_parent_folders("root.hcl")
}

terraform {
  source = "git::https://github.com/example-org/terraform-aws-nomad-cluster.git//?ref=v1.0.0"
}

dependency "vpc" {
  config_path = "../vpc"

  # Lets `terragrunt plan`/`validate` run before the VPC exists.
  mock_outputs = {
    vpc_id          = "vpc-00000000000000000"
    private_subnets = ["subnet-00000000000000001", "subnet-00000000000000002", "subnet-00000000000000003"]
  }
  mock_outputs_allowed_terraform_commands = ["init", "validate", "plan"]
}

locals {
  environment = "dev"
}

inputs = {
  cluster_name = local.environment
  vpc_id       = dependency.vpc.outputs.vpc_id
  subnet_ids   = dependency.vpc.outputs.private_subnets

  # Keep in step with ../agent-orchestrator (datacenters, nomad_version).
  datacenter    = "dc1"
  nomad_version = "1.10.5"
  server_count  = 3
  client_count  = 3

  server_instance_type = "t3.small"
  # The coder agent asks for 2000 MHz and 4GB per instance, 5 at once.
  client_instance_type = "m6i.2xlarge"

  # The Nomad clients run the coordinator and the agents. The roles the agent-orchestrator
  # module creates trust this account; the clients' instance role must be allowed to assume
  # them (names: <cluster_name>-agent-coordinator and <cluster_name>-agents).
  client_assume_role_arns = [
    "arn:aws:iam::${get_aws_account_id()}:role/${local.environment}-agent-coordinator",
    "arn:aws:iam::${get_aws_account_id()}:role/${local.environment}-agents",
  ]
}
