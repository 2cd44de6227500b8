#!/usr/bin/env bash
# The project's test command (README): builds, checks the rendered jobs and the Terraform
# formatting, and runs every test. Installs nothing the machine lacks except what it names.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=never
export TF_CLI_CONFIG_FILE=/dev/null CHECKPOINT_DISABLE=1

echo "== build"
cargo build --all-targets --locked --features aws

echo "== release build (the README's serve; tests/backend_aws.rs measures its end-to-end figure on it)"
# A cold release build takes ~7.5 min on 2 cores; the AWS SDK is CPU-heavy in debug builds, so
# the burst's refill figure is only the product's when measured on this one.
cargo build --release --locked --features aws
export AO_TEST_RELEASE_BIN="$PWD/target/release/agent-orchestrator"

echo "== render --check (jobs/ matches templates/ and the live inputs)"
target/debug/agent-orchestrator render --check
target/debug/agent-orchestrator validate

echo "== terraform fmt -check"
if command -v terraform >/dev/null 2>&1; then
  terraform fmt -check -recursive terragrunt/
else
  echo "terraform not on PATH: skipping fmt -check (tests/terragrunt_module.rs skips it too)"
fi

echo "== chromium (tests/status_page.rs drives the status page in headless Chromium)"
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; } \
      || echo "could not install chromium: tests/status_page.rs will skip its browser test"
  else
    echo "no apt-get or not root: tests/status_page.rs will skip its browser test"
  fi
fi

echo "== moto server (SQS + DynamoDB for tests/backend_aws.rs)"
# Installed once into a virtualenv under target/ and reused; started on a free loopback port,
# stopped on exit. Tests that need it read AO_TEST_MOTO_URL (and skip without it).
MOTO_VENV=target/moto-venv
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q 'moto[sqs,dynamodb]==5.2.5' flask flask-cors
fi
MOTO_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT" >target/moto.log 2>&1 &
MOTO_PID=$!
trap 'kill "$MOTO_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$MOTO_PID" 2>/dev/null; then
    echo "moto server exited; its log:" >&2
    cat target/moto.log >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$MOTO_PORT/moto-api/" || { echo "moto server did not answer on port $MOTO_PORT" >&2; exit 1; }
export AO_TEST_MOTO_URL="http://127.0.0.1:$MOTO_PORT"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
echo "moto server on $AO_TEST_MOTO_URL (log: target/moto.log)"

echo "== tests"
# Two test threads: the end-to-end tests start real coordinators and subprocesses.
BURST_REPORT=target/tmp/sqs-burst-report.txt
rm -f "$BURST_REPORT"
cargo test --locked --features aws --no-fail-fast -- --test-threads 2

echo "== the SQS burst's figures (tests/backend_aws.rs, 300 tasks on 10 slots)"
cat "$BURST_REPORT" 2>/dev/null || echo "not measured (moto missing?)"
