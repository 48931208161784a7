#!/usr/bin/env bash
# stevedore's test command: format, lints, build once, then every test
# (unit, conformance and end-to-end against real ctr/runc) in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# a one-shot build gains nothing from incremental state (4 GB of disk)
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
