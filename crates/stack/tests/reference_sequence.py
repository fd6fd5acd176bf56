"""The HTTP calls of the reference's eval harness (kfallah/CLaaS HEAD `claas.eval`, local mode)
and of its stack integration test, in the order they make them, against a live claas API:
python3 reference_sequence.py API_URL BASE_MODEL.

Chat goes through the API's proxy with the official `openai` client (as a user's client
would); the other calls are plain HTTP with the bodies the harness sends. Prints one JSON line
with what the Rust test checks further."""

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

import openai

api_url, base_model = sys.argv[1].rstrip("/"), sys.argv[2]


class Response:
    def __init__(self, status, body):
        self.status_code, self.text = status, body

    def json(self):
        return json.loads(self.text)


class Http:
    """The few httpx calls the harness makes, on the standard library."""

    def request(self, method, path, json_body=None, params=None):
        url = api_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if json_body is None else json.dumps(json_body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return Response(r.status, r.read().decode())
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read().decode())

    def get(self, path, params=None):
        return self.request("GET", path, params=params)

    def post(self, path, json=None):
        return self.request("POST", path, json_body=json)

    def delete(self, path, params=None):
        return self.request("DELETE", path, params=params)


http = Http()


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def derive_model_name(lora_id):
    # claas.eval.metrics.logprob.derive_model_name
    return re.sub(r"[^a-zA-Z0-9._-]+", "-", lora_id.strip("/")).strip("-") or "lora"


# 1. init (runner._init_lora)
r = http.post("/v1/lora/init", json={"lora_id": "eval/concise", "base_model": base_model})
check(r.status_code == 200, f"init: {r.status_code} {r.text}")
lora_id = r.json()["lora_id"]
model = derive_model_name(lora_id)

# 2. list (integration test)
r = http.get("/v1/lora", params={"prefix": "eval/"})
check(r.status_code == 200 and lora_id in r.json()["loras"], f"list: {r.text}")

# 3. models through the API (integration test)
r = http.get("/v1/models")
check(r.status_code == 200, f"models: {r.status_code} {r.text}")

# 4. chat through the API proxy (runner._generate_response + the logprob metrics' client)
client = openai.OpenAI(base_url=f"{api_url}/v1", api_key="unused", max_retries=0)
system = "You are a helpful assistant."
prompt = "Explain what a hash map is."
messages = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
chat = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=48, logprobs=True, top_logprobs=20
)
content = chat.choices[0].message.content
check(content, f"empty chat content: {chat}")
lp = chat.choices[0].logprobs
check(lp is not None and len(lp.content) > 0, f"no logprobs: {chat}")
check(all(len(t.top_logprobs) == 20 for t in lp.content), "top_logprobs is not 20 wide")
check(getattr(chat, "prompt_token_ids", None) is None, "token ids leaked to a client that did not ask")

# streaming through the proxy works too (OpenClaw streams)
stream = client.chat.completions.create(
    model=model, messages=messages, temperature=0, max_tokens=48, stream=True
)
streamed = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)
check(streamed == content, f"stream {streamed!r} != {content!r}")

# 5. feedback (runner._submit_feedback: FeedbackBatchRequest.model_dump())
training = {"learning_rate": 3e-5, "alpha": 0.5, "is_clip": 5.0, "max_grad_norm": 1.0,
            "kl_reg_weight": 0.0, "teacher_top_k": 100}
payload = {
    "requests": [{"lora_id": lora_id, "prompt": prompt, "response": content,
                  "feedback": "Be more concise.", "training": training}],
    "orchestration": {"sleep_before": False, "wake_after": False, "wake_on_failure": True,
                      "sleep_level": 1},
}
r = http.post("/v1/feedback", json=payload)
check(r.status_code == 200, f"feedback: {r.status_code} {r.text}")
fb = r.json()
check(fb["status"] == "ok", fb)
md = fb["distill_result"]["metadata"]
for k in ("distill_loss", "kl_reg", "mean_is_ratio", "clip_fraction"):
    check(isinstance(md.get(k), float), f"metadata {k}: {md}")

# 6. score (metrics.logprob.fetch_response_logprob_sum_via_score)
r = http.post("/v1/score", json={"model": model, "messages": messages, "completion": content})
check(r.status_code == 200, f"score: {r.status_code} {r.text}")
score = r.json()
check(isinstance(score["logprob_sum"], float), score)
check(len(score["logprobs"]) == score["completion_tokens"] == len(score["tokens"]) > 0, score)
check(score["prompt_tokens"] > 0, score)
check(abs(sum(score["logprobs"]) - score["logprob_sum"]) < 1e-3, score)

# 7. delete (integration test cleanup)
r = http.delete("/v1/lora", params={"lora_id": lora_id})
check(r.status_code == 200 and r.json().get("deleted") is True, f"delete: {r.text}")
r = http.get("/v1/lora", params={"prefix": "eval/"})
check(lora_id not in r.json()["loras"], f"still listed: {r.text}")

print(json.dumps({"lora_id": lora_id, "model": model, "feedback": fb, "score": score}))
