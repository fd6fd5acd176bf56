#!/usr/bin/env bash
# Property-based check of the CLaaS API against its own OpenAPI document (schemathesis): no
# request may get a 5xx, and every answer must match what /openapi.json documents (status,
# content type, body schema, error bodies included). Runs the API alone (the real router with
# the SDPO trainer on builtin:tiny, no inference server) on a free port with a temporary LoRA
# root. MAX_EXAMPLES (default 25) bounds the examples per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import schemathesis" 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check --user schemathesis

cargo build --quiet -p claas-api --example api_server
bin="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/examples/api_server"
work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin" "$port" "$work" 2>"$work/server.log" &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/v1/health" >/dev/null && break
  sleep 0.2
done
# An adapter for the generated requests to find.
curl -sf -X POST "http://127.0.0.1:$port/v1/lora/init" -H 'content-type: application/json' \
  -d '{"lora_id": "st/a", "base_model": "builtin:tiny", "lora_r": 4, "lora_alpha": 8}' >/dev/null

python3 -m schemathesis.cli run "http://127.0.0.1:$port/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${MAX_EXAMPLES:-25}" \
  --generation-deterministic \
  --workers 1 \
  --suppress-health-check all \
  "$@" || { echo "--- server log (last 40 lines)"; tail -n 40 "$work/server.log"; exit 1; }
