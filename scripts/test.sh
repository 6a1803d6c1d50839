#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test, with the I/O tests run on both
# backends (io_uring and the pwritev fallback). Installs what the tests need that is missing:
# nats-server and redis-server (Debian packages) for the peers benchmark test, when run as root.
# It also installs the Kafka clients the protocol tests drive (kcat, confluent-kafka,
# kafka-python; see scripts/install-kafka-clients.sh) and PostgreSQL 15 for the CDC tests, which
# start their own throwaway clusters (scripts/install-postgres.sh).
# Set SPATE_REQUIRE_URING=1 (and SPATE_REQUIRE_MOUNT=1, SPATE_REQUIRE_PEERS=1,
# SPATE_REQUIRE_CLIENTS=1, SPATE_REQUIRE_POSTGRES=1) to fail, rather than skip, where io_uring
# (a tmpfs mount, the peers, the Kafka clients, PostgreSQL) is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "peers for the benchmark tests (nats-server, redis-server)"
  bash scripts/install-peers.sh
fi

step "Kafka clients for the protocol tests (kcat, confluent-kafka, kafka-python)"
if bash scripts/install-kafka-clients.sh; then
  SPATE_PYTHON="$(pwd)/${SPATE_VENV:-target/kafka-clients}/bin/python"
  export SPATE_PYTHON
else
  echo "Kafka clients unavailable: their tests will skip (or fail under SPATE_REQUIRE_CLIENTS=1)"
fi

step "PostgreSQL 15 for the CDC tests"
if ! bash scripts/install-postgres.sh; then
  echo "PostgreSQL unavailable: the CDC tests will skip (or fail under SPATE_REQUIRE_POSTGRES=1)"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# The harness's Iggy peer is behind a feature (its SDK is a large tree): lint it too, so it
# keeps compiling.
cargo clippy -p spate-bench --all-targets --features iggy -- -D warnings

step "doc tests"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# --all-targets also runs every criterion bench once in test mode, so benches stay runnable.
step "cargo test (unit, integration, crash and bench smoke tests; both I/O backends)"
cargo test --workspace --all-targets 2>&1 | tee -a "$log"

passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo
echo "tests: $passed passed, $failed failed"
