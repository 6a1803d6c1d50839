#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test, with the I/O tests run on both
# backends (io_uring and the pwritev fallback). Installs nothing yet: the suite needs only cargo.
# Set SPATE_REQUIRE_URING=1 to fail, rather than skip, where io_uring is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "doc tests"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# --all-targets also runs every criterion bench once in test mode, so benches stay runnable.
step "cargo test (unit, integration, crash and bench smoke tests; both I/O backends)"
cargo test --workspace --all-targets 2>&1 | tee -a "$log"

passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo
echo "tests: $passed passed, $failed failed"
