#!/usr/bin/env python3
"""Fake backends for checking the real OpenClaw gateway with the claas-feedback plugin.

Starts two HTTP servers on 127.0.0.1 (free ports) and writes their URLs to --state-file:
  telegram  a Telegram Bot API (getMe/getUpdates/sendMessage/...); point OpenClaw's
            channels.telegram.apiRoot here
  claas     the CLaaS API: its OpenAI-compatible chat proxy (/v1/chat/completions, streaming
            and not, always answering FAKE_REPLY under a fresh completion id, and /v1/models),
            POST /v1/feedback (adapter versions counting up from 1) and POST /v1/lora/rollback
Control (on the telegram server): POST /control/push {"user": id, "text": "..."} queues a
private message; GET /control/state returns what was sent, the feedback and rollback payloads,
the chat requests' shapes and the completion ids handed out.
Standard library only.
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAKE_REPLY = "Hello from the fake model."
LOCK = threading.Lock()
STATE = {
    "updates": [],
    "next_update": 1,
    "sent": [],
    "methods": [],
    "feedback": [],
    "rollbacks": [],
    "chat_requests": [],
    "completion_ids": [],
    "version": 1,
}


def read_body(handler):
    n = int(handler.headers.get("content-length") or 0)
    raw = handler.rfile.read(n) if n else b""
    ctype = handler.headers.get("content-type") or ""
    if not raw:
        return {}
    if "json" in ctype:
        return json.loads(raw)
    if "x-www-form-urlencoded" in ctype:
        from urllib.parse import parse_qs

        return {k: v[0] for k, v in parse_qs(raw.decode()).items()}
    try:
        return json.loads(raw)
    except ValueError:
        return {"_raw": raw[:200].decode(errors="replace")}


def reply_json(handler, obj, status=200):
    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


class Telegram(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/control/state"):
            with LOCK:
                reply_json(self, {k: STATE[k] for k in ("sent", "methods", "feedback", "rollbacks", "chat_requests",
                                                        "completion_ids", "version")})
            return
        self.handle_bot({})

    def do_POST(self):
        body = read_body(self)
        if self.path == "/control/push":
            with LOCK:
                uid = int(body.get("user", 4242))
                n = STATE["next_update"]
                STATE["next_update"] += 1
                STATE["updates"].append({
                    "update_id": n,
                    "message": {
                        "message_id": n,
                        "date": int(time.time()),
                        "chat": {"id": uid, "type": "private", "first_name": "Tester"},
                        "from": {"id": uid, "is_bot": False, "first_name": "Tester", "language_code": "en"},
                        "text": body["text"],
                        **({"entities": [{"type": "bot_command", "offset": 0,
                                           "length": len(body["text"].split()[0])}]}
                           if body["text"].startswith("/") else {}),
                    },
                })
            reply_json(self, {"ok": True})
            return
        self.handle_bot(body)

    def handle_bot(self, body):
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 2 or not parts[0].startswith("bot"):
            reply_json(self, {"ok": False, "error_code": 404, "description": "Not Found"}, 404)
            return
        method = parts[-1]
        with LOCK:
            STATE["methods"].append(method)
            if len(STATE["methods"]) > 500:
                del STATE["methods"][:250]
        if method == "getMe":
            reply_json(self, {"ok": True, "result": {
                "id": 999, "is_bot": True, "first_name": "Claas", "username": "claas_test_bot",
                "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}})
        elif method == "getUpdates":
            offset = int(body.get("offset") or 0)
            timeout = min(float(body.get("timeout") or 0), 5.0)
            deadline = time.time() + timeout
            while True:
                with LOCK:
                    STATE["updates"] = [u for u in STATE["updates"] if u["update_id"] >= offset]
                    pending = list(STATE["updates"])
                if pending or time.time() >= deadline:
                    reply_json(self, {"ok": True, "result": pending})
                    return
                time.sleep(0.05)
        elif method in ("sendMessage", "editMessageText"):
            chat_id = body.get("chat_id")
            with LOCK:
                STATE["sent"].append({"method": method, "chat_id": chat_id, "text": body.get("text", ""),
                                      "parse_mode": body.get("parse_mode")})
                mid = len(STATE["sent"]) + 100
            reply_json(self, {"ok": True, "result": {
                "message_id": mid, "date": int(time.time()),
                "chat": {"id": int(chat_id) if str(chat_id).lstrip("-").isdigit() else 0, "type": "private"},
                "from": {"id": 999, "is_bot": True, "first_name": "Claas"},
                "text": body.get("text", "")}})
        elif method == "getChat":
            reply_json(self, {"ok": True, "result": {"id": int(body.get("chat_id", 0)), "type": "private"}})
        elif method in ("getWebhookInfo",):
            reply_json(self, {"ok": True, "result": {"url": "", "has_custom_certificate": False,
                                                     "pending_update_count": 0}})
        elif method in ("getMyCommands",):
            reply_json(self, {"ok": True, "result": []})
        else:
            reply_json(self, {"ok": True, "result": True})


class Claas(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            reply_json(self, {"object": "list", "data": [{"id": "openclaw-assistant-latest", "object": "model"},
                                                         {"id": "qwen3-8b", "object": "model"}]})
        else:
            reply_json(self, {"status": "ok"})

    def do_POST(self):
        body = read_body(self)
        path = self.path.split("?")[0].rstrip("/")
        if path == "/v1/feedback":
            self.feedback(body)
        elif path == "/v1/lora/rollback":
            self.rollback(body)
        else:
            self.chat(body)

    def feedback(self, body):
        with LOCK:
            STATE["feedback"].append(body)
            previous = STATE["version"]
            STATE["version"] = version = previous + 1
        reply_json(self, {
            "status": "ok", "request_id": "req-1", "lora_id": body.get("lora_id"),
            "adapter_version": version, "previous_version": previous,
            "version_name": f"openclaw/assistant-init@v{version}",
            "distill_result": {"lora_id": body.get("lora_id"),
                               "metadata": {"total_loss": 0.123456, "tokens_processed": 7}},
            "vllm": {"slept": False, "woke": False}, "feedback_log_path": "/tmp/req-1.json",
            "timing_ms": {"total": 1250}})

    def rollback(self, body):
        with LOCK:
            STATE["rollbacks"].append(body)
            previous = STATE["version"]
            STATE["version"] = version = int(body.get("version", 0))
        reply_json(self, {"status": "ok", "lora_id": "openclaw/assistant-init", "version": version,
                          "previous_version": previous, "name": f"openclaw/assistant-init@v{version}"})

    def chat(self, body):
        msgs = body.get("messages") or []
        with LOCK:
            cid = f"chatcmpl-fake-{len(STATE['completion_ids']) + 1}"
            STATE["completion_ids"].append(cid)
            STATE["chat_requests"].append({
                "model": body.get("model"),
                "stream": body.get("stream"),
                "messages": len(msgs),
                "roles": [m.get("role") for m in msgs],
                "system_chars": sum(len(m.get("content") or "") for m in msgs
                                    if m.get("role") == "system" and isinstance(m.get("content"), str)),
                "tools": len(body.get("tools") or []),
                "keys": sorted(body.keys()),
            })
        model = body.get("model", "fake")
        if not body.get("stream"):
            reply_json(self, {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                              "choices": [{"index": 0, "message": {"role": "assistant", "content": FAKE_REPLY},
                                           "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()

        def chunk(delta, finish=None):
            return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        events = [chunk({"role": "assistant", "content": ""}), chunk({"content": FAKE_REPLY}), chunk({}, "stop")]
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": model, "choices": [],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
        for e in events:
            self.wfile.write(f"data: {json.dumps(e)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state-file", required=True)
    args = ap.parse_args()
    servers = {}
    for name, handler in (("telegram", Telegram), ("claas", Claas)):
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[name] = f"http://127.0.0.1:{srv.server_address[1]}"
    with open(args.state_file + ".tmp", "w") as f:
        json.dump(servers, f)
    import os

    os.replace(args.state_file + ".tmp", args.state_file)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
