#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every crate's unit, parity and integration tests.
# Needs ../shared/fixtures beside the repo and python3 with the `openai` package (.ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/check_compose.py
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
