# The network of the dev environment: the public terraform-aws-modules VPC module.
# Outputs used downstream: vpc_id, private_subnets, public_subnets.

include "root" {
  path = find_in_parent_folders("root.hcl")
}

terraform {
  source = "tfr:///terraform-aws-modules/vpc/aws?version=5.21.0"
}

locals {
  environment = "dev"
  aws_region  = get_env("AWS_REGION", "us-east-1")
}

inputs = {
  name = "${local.environment}-agents"
  cidr = "10.20.0.0/16"

  azs             = ["${local.aws_region}a", "${local.aws_region}b", "${local.aws_region}c"]
  private_subnets = ["10.20.0.0/20", "10.20.16.0/20", "10.20.32.0/20"]
  public_subnets  = ["10.20.128.0/24", "10.20.129.0/24", "10.20.130.0/24"]

  # Agents pull images and talk to GitHub: private subnets need egress. One NAT gateway is
  # enough for dev; use one per AZ in production.
  enable_nat_gateway   = true
  single_nat_gateway   = true
  enable_dns_hostnames = true

  tags = {
    Environment = local.environment
  }
}
