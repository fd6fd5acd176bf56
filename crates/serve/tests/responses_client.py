"""Drives a live claas serve (response store on) through the official `openai` client's Responses API:
python3 responses_client.py BASE_URL API_KEY."""

import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
GREEDY = dict(model="tiny", temperature=0, extra_body={"ignore_eos": True})


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def chat(messages, max_tokens, **kw):
    return client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens, temperature=0,
                                          extra_body={"ignore_eos": True}, **kw)


# Text input, not streamed: the length cap makes it incomplete, usage adds up.
r = client.responses.create(input="Hello", max_output_tokens=8, **GREEDY)
check(r.id.startswith("resp_") and r.object == "response", r)
check(r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens", r)
check(r.usage.output_tokens == 8, r.usage)
check(r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens, r.usage)
check(r.usage.input_tokens_details.cached_tokens == 0 and r.usage.output_tokens_details.reasoning_tokens == 0, r.usage)
check(r.max_output_tokens == 8 and r.temperature == 0 and r.model == "tiny", r)
check(r.output_text != "", f"empty output_text: {r}")
msg = r.output[0]
check(msg.type == "message" and msg.role == "assistant" and msg.status == "incomplete", msg)
check(msg.content[0].type == "output_text" and msg.content[0].annotations == [], msg)
# The same text and prompt as chat completions over the same messages.
c = chat([{"role": "user", "content": "Hello"}], 8)
check(c.choices[0].message.content == r.output_text, f"{c.choices[0].message.content!r} vs {r.output_text!r}")
check(c.usage.prompt_tokens == r.usage.input_tokens, (c.usage, r.usage))

# instructions = a system message first; a message list with a developer message is the same request.
ri = client.responses.create(instructions="Be terse.", input="Hello", max_output_tokens=6, **GREEDY)
check(ri.instructions == "Be terse.", ri.instructions)
c = chat([{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hello"}], 6)
check(c.choices[0].message.content == ri.output_text and c.usage.prompt_tokens == ri.usage.input_tokens,
      (c, ri))
check(ri.usage.input_tokens > r.usage.input_tokens, (ri.usage, r.usage))
rl = client.responses.create(input=[
    {"role": "developer", "content": "Be terse."},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
], max_output_tokens=6, **GREEDY)
check(rl.output_text == ri.output_text and rl.usage.input_tokens == ri.usage.input_tokens, (rl, ri))

# Streamed: the official event order, sequence numbers 0..n, deltas add up to the text.
events = list(client.responses.create(input="Hello", max_output_tokens=8, stream=True, **GREEDY))
types = [e.type for e in events]
check([e.sequence_number for e in events] == list(range(len(events))), types)
head = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
tail = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.incomplete"]
check(types[:4] == head and types[-4:] == tail, types)
check(set(types[4:-4]) == {"response.output_text.delta"}, types)
check(events[0].response.status == "in_progress" and events[0].response.output == [], events[0])
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
check(deltas == r.output_text, f"stream {deltas!r} vs {r.output_text!r}")
check(events[-4].text == deltas, events[-4])
final = events[-1].response
check(final.output_text == deltas and final.status == "incomplete" and final.usage.output_tokens == 8, final)
check(final.id == events[0].response.id and final.output[0].id == events[2].item.id, final)

# A stop string ends the output normally: completed, response.completed.
stop = r.output_text[2:4]
rs = client.responses.create(input="Hello", max_output_tokens=8, stream=True, model="tiny", temperature=0,
                             extra_body={"ignore_eos": True, "stop": [stop]})
events = list(rs)
check(events[-1].type == "response.completed", [e.type for e in events])
check(events[-1].response.status == "completed" and events[-1].response.incomplete_details is None, events[-1])
check(events[-1].response.output_text == r.output_text[:r.output_text.index(stop)], events[-1].response)

# Function tools: function_call + function_call_output items become an assistant tool call and a tool
# message, rendered by the chat template exactly as chat completions renders them.
tool = {"type": "function", "name": "get_weather", "description": "Get the weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        "strict": True}
args = '{"city": "Paris"}'
rt = client.responses.create(input=[
    {"role": "user", "content": "Weather in Paris?"},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": args},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
], tools=[tool], tool_choice="auto", parallel_tool_calls=False, max_output_tokens=4, **GREEDY)
check(rt.tools[0].name == "get_weather" and rt.tool_choice == "auto" and rt.parallel_tool_calls is False, rt)
c = chat([{"role": "user", "content": "Weather in Paris?"},
          {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
          {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], 4,
         tools=[{"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}}])
check(c.usage.prompt_tokens == rt.usage.input_tokens, (c.usage, rt.usage))
check(c.choices[0].message.content == rt.output_text, (c, rt))

# Logprobs through include.
rp = client.responses.create(input="Hello", max_output_tokens=4, include=["message.output_text.logprobs"],
                             top_logprobs=2, **GREEDY)
lps = rp.output[0].content[0].logprobs
check(len(lps) == 4 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lps), lps)

# store: kept, retrievable, continued with previous_response_id, deleted.
r1 = client.responses.create(input="Hello", max_output_tokens=5, store=True, metadata={"k": "v"}, **GREEDY)
check(r1.model_extra.get("store") is True and r1.metadata == {"k": "v"}, r1)
got = client.responses.retrieve(r1.id)
check(got.id == r1.id and got.output_text == r1.output_text and got.usage == r1.usage, got)
r2 = client.responses.create(previous_response_id=r1.id, input="again", max_output_tokens=3, **GREEDY)
check(r2.previous_response_id == r1.id, r2)
c = chat([{"role": "user", "content": "Hello"}, {"role": "assistant", "content": r1.output_text},
          {"role": "user", "content": "again"}], 3)
check(c.usage.prompt_tokens == r2.usage.input_tokens, (c.usage, r2.usage))
check(c.choices[0].message.content == r2.output_text, (c, r2))
deleted = client.responses.delete(r1.id)
for rid in [r1.id, "resp_never"]:
    try:
        client.responses.retrieve(rid)
        check(False, f"{rid} retrieved")
    except openai.NotFoundError:
        pass
# store=False: nothing kept, and a follow-up on it is 404.
r3 = client.responses.create(input="Hello", max_output_tokens=2, store=False, **GREEDY)
check(r3.model_extra.get("store") is False, r3)
try:
    client.responses.create(previous_response_id=r3.id, input="again", max_output_tokens=2, **GREEDY)
    check(False, "previous_response_id of an unstored response accepted")
except openai.NotFoundError as err:
    check(err.body.get("param") == "previous_response_id", err.body)

# Errors: 404 for an unknown model, 400 naming the field for each bad one; the server keeps serving.
try:
    client.responses.create(model="no-such-model", input="Hello")
    check(False, "unknown model accepted")
except openai.NotFoundError as err:
    check(err.status_code == 404, err)
bad = [
    (dict(tool_choice="required", tools=[tool]), "tool_choice"),
    (dict(tool_choice={"type": "function", "name": "get_weather"}, tools=[tool]), "tool_choice"),
    (dict(text={"format": {"type": "json_object"}}), "text.format"),
    (dict(truncation="auto"), "truncation"),
    (dict(background=True), "background"),
    (dict(tools=[{"type": "web_search"}]), "tools[0].type"),
    (dict(include=["reasoning.encrypted_content"]), "include"),
    (dict(reasoning={"summary": "detailed"}), "reasoning.summary"),
    (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]),
     "input[0].content[0].type"),
    (dict(input=[{"type": "function_call_output", "output": "x"}]), "input[0].call_id"),
    (dict(temperature=-1), None),
    (dict(max_output_tokens=10**6), "max_output_tokens"),
    (dict(metadata={"k": "x" * 600}), "metadata"),
    (dict(top_logprobs=3), "top_logprobs"),
    (dict(extra_body={"temperature": "warm"}), "temperature"),
]
for kw, param in bad:
    body = dict(model="tiny", input="Hello", max_output_tokens=2)
    body.update(kw)
    try:
        client.responses.create(**body)
        check(False, f"accepted {kw}")
    except openai.BadRequestError as err:
        check(err.status_code == 400 and isinstance(err.body, dict), err)
        if param is not None:
            check(err.body.get("param") == param, (kw, err.body))
        check(err.body.get("message"), err.body)
ok = client.responses.create(input="still there?", max_output_tokens=2, **GREEDY)
check(ok.usage.output_tokens == 2, ok)

# The key guards the stored conversations too.
try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).responses.retrieve(ok.id)
    check(False, "bad key accepted")
except openai.AuthenticationError:
    pass

print("ALL OK")
