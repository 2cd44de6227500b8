#!/usr/bin/env bash
# The project's test command (README): builds, checks the rendered jobs and the Terraform
# formatting, and runs every test. Installs nothing the machine lacks except what it names.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1

echo "== build"
cargo build --all-targets --locked

echo "== render --check (jobs/ matches templates/ and the live inputs)"
target/debug/agent-orchestrator render --check
target/debug/agent-orchestrator validate

echo "== terraform fmt -check"
if command -v terraform >/dev/null 2>&1; then
  terraform fmt -check -recursive terragrunt/
else
  echo "terraform not on PATH: skipping fmt -check (tests/terragrunt_module.rs skips it too)"
fi

echo "== tests"
# Two test threads: the end-to-end tests start real coordinators and subprocesses.
cargo test --locked -- --test-threads 2
