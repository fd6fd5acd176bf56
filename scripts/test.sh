#!/usr/bin/env bash
# The whole test suite: compose check, formatting, lints, then every crate's unit, parity and
# integration tests. Expects ../shared/fixtures beside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
# The integration tests speak for a real user with the official `openai` Python client.
python3 -c "import openai, yaml" 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check openai pyyaml
python3 scripts/check_compose.py
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
