# Provider-less on purpose: `terraform init` and `terraform test` work offline here, so the
# naming rules and input validation of the agent-orchestrator module are really exercised.
terraform {
  required_version = ">= 1.5"
}
