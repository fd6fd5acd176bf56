"""Drives a live claas serve with the official `openai` client: python3 openai_client.py BASE_URL API_KEY FIXTURES."""

import json
import math
import sys

import openai

base_url, api_key, fixtures = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


# models
models = client.models.list()
ids = [m.id for m in models.data]
check("tiny" in ids and "r4" in ids, f"models: {ids}")
lora = [m for m in models.data if m.id == "r4"][0]
check(getattr(lora, "parent", None) == "tiny", f"lora parent: {lora}")

messages = [
    {"role": "system", "content": "You are terse. " * 10},
    {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
    {"role": "user", "content": "again"},
]

# chat, non-stream, seeded twice
for model in ["tiny", "r4"]:
    kw = dict(model=model, messages=messages, max_tokens=8, temperature=0.7, seed=11,
              extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    check(a.choices[0].message.content == b.choices[0].message.content, "seeded chat differs")
    check(a.usage.completion_tokens == 8, f"usage {a.usage}")
    check(a.choices[0].finish_reason == "length", a.choices[0].finish_reason)
    # streaming gives the same text
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                text += c.delta.content
            if c.finish_reason:
                finish = c.finish_reason
    check(text == a.choices[0].message.content, f"stream {text!r} != {a.choices[0].message.content!r}")
    check(usage is not None and usage.completion_tokens == 8, f"stream usage {usage}")
    check(finish == "length", finish)

# logprobs on chat
r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, logprobs=True, top_logprobs=2,
                                   extra_body={"ignore_eos": True})
lp = r.choices[0].logprobs.content
check(len(lp) == 4 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp), f"logprobs {lp}")

# n and chat_template_kwargs
r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, n=3,
                                   extra_body={"chat_template_kwargs": {"enable_thinking": False}})
check(len(r.choices) == 3 and [c.index for c in r.choices] == [0, 1, 2], "n=3")

# tools are accepted (rendered through the template), streaming and not
tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
r = client.chat.completions.create(model="r4", messages=messages, tools=tools, tool_choice="auto", max_tokens=5)
check(r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r.choices[0].finish_reason)
for chunk in client.chat.completions.create(model="r4", messages=messages, tools=tools, max_tokens=5, stream=True):
    pass

# completions, stream and not, echo, logprobs, prompt_logprobs (vLLM extension)
c = client.completions.create(model="tiny", prompt="Write a function", max_tokens=6, temperature=0,
                              logprobs=2, extra_body={"ignore_eos": True})
check(len(c.choices[0].logprobs.tokens) == 6, c.choices[0].logprobs)
s = "".join(ch.choices[0].text for ch in client.completions.create(
    model="tiny", prompt="Write a function", max_tokens=6, temperature=0, stream=True, extra_body={"ignore_eos": True})
    if ch.choices)
check(s == c.choices[0].text, f"{s!r} vs {c.choices[0].text!r}")
e = client.completions.create(model="tiny", prompt="Write a function", max_tokens=6, temperature=0, echo=True,
                              extra_body={"ignore_eos": True})
check(e.choices[0].text == "Write a function" + c.choices[0].text, e.choices[0].text)

with open(f"{fixtures}/forward.json") as f:
    seq = json.load(f)["sequences"][1]
ids = seq["input_ids"]
p = client.completions.create(model="tiny", prompt=ids, max_tokens=1, extra_body={"prompt_logprobs": 0})
plp = p.model_extra.get("prompt_logprobs") or p.choices[0].model_extra.get("prompt_logprobs")
check(plp is not None and plp[0] is None and len(plp) == len(ids), "prompt_logprobs shape")
for i in range(1, len(ids)):
    row = seq["logits"][i - 1]
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    got = plp[i][str(ids[i])]["logprob"]
    check(abs(got - (row[ids[i]] - lse)) < 1e-4, f"prompt logprob {i}: {got} vs {row[ids[i]] - lse}")

# errors
try:
    client.chat.completions.create(model="no-such-model", messages=messages)
    check(False, "unknown model accepted")
except openai.NotFoundError as err:
    check(err.status_code == 404, err)
try:
    client.chat.completions.create(model="tiny", messages=messages, temperature=-3)
    check(False, "bad temperature accepted")
except openai.BadRequestError:
    pass
try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    check(False, "bad key accepted")
except openai.AuthenticationError:
    pass
try:
    client.get("/no/such/route", cast_to=object)
    check(False, "unknown route")
except openai.NotFoundError:
    pass

print("ALL OK")
