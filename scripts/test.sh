#!/usr/bin/env bash
# The whole test suite: compose check, formatting, lints, then every crate's unit, parity and
# integration tests. Expects ../shared/fixtures beside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
# The integration tests speak for a real user with the official `openai` Python client.
python3 -c "import openai, yaml" 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check openai pyyaml
python3 scripts/check_compose.py
# The dashboard's browser test (crates/stack/tests/dashboard_browser.rs) drives headless Chromium
# through chromedriver; Debian's packages, ~1 min to download and install once.
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || { sudo=$([ "$(id -u)" = 0 ] || echo sudo); $sudo apt-get update -qq \
       && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
