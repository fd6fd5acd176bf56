#!/usr/bin/env bash
# The whole test suite: compose check, formatting, lints, then every crate's unit, parity and
# integration tests. Expects ../shared/fixtures beside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
# The integration tests speak for a real user with the official `openai` Python client.
python3 -c "import openai, yaml" 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check openai pyyaml
python3 scripts/check_compose.py
# Debian packages the tests use, installed once when missing (~1 min): the dashboard's browser
# test (crates/stack/tests/dashboard_browser.rs) drives headless Chromium through chromedriver,
# and `claas eval`'s plot test draws its labels with DejaVu Sans.
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
# The API against its own OpenAPI document: no 5xx, and every answer as documented (~1 min).
bash scripts/schemathesis.sh
