"""Structured output through the official `openai` client against a live claas serve on the
random built-in model: python3 structured_client.py BASE_URL.

The model's weights are random, so every valid object below is the grammar's doing: the
schema's bounds (max_length, enums, ranges, required keys) hold because the masks allow
nothing else."""

import json
import re
import sys
from typing import Annotated, List, Literal

import openai
from pydantic import BaseModel, Field

base_url = sys.argv[1]
client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
MODEL = "builtin:tiny"
messages = [{"role": "user", "content": "Describe a pet as JSON."}]
# Thinking off: the reply starts at once (the grammar applies from its first token).
no_think = {"chat_template_kwargs": {"enable_thinking": False}}


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Owner(BaseModel):
    name: str = Field(max_length=10)


class Pet(BaseModel):
    name: str = Field(max_length=12)
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)
    tags: List[Annotated[str, Field(max_length=6)]] = Field(max_length=3)
    owner: Owner


# .parse() with a pydantic model: 20 seeds in a row, each a valid object within the bounds.
for seed in range(20):
    r = client.chat.completions.parse(model=MODEL, messages=messages, response_format=Pet, seed=seed,
                                      temperature=1.0, max_tokens=400, extra_body=no_think)
    c = r.choices[0]
    check(c.finish_reason == "stop", f"seed {seed}: finish {c.finish_reason}: {c.message.content!r}")
    p = c.message.parsed
    check(isinstance(p, Pet), f"seed {seed}: not parsed: {c.message.content!r}")
    raw = json.loads(c.message.content)
    check(len(raw["name"]) <= 12 and len(raw["owner"]["name"]) <= 10, f"seed {seed}: {raw}")
    check(len(raw["tags"]) <= 3 and all(len(t) <= 6 for t in raw["tags"]), f"seed {seed}: {raw}")
    check(raw["kind"] in ("cat", "dog", "fish") and 0 <= raw["age"] <= 30, f"seed {seed}: {raw}")
    check(list(raw) == ["name", "kind", "age", "tags", "owner"], f"seed {seed}: keys {list(raw)}")

# The same seed gives the same object, streamed or not.
r1 = client.chat.completions.parse(model=MODEL, messages=messages, response_format=Pet, seed=3,
                                   max_tokens=400, extra_body=no_think)
text = ""
with client.chat.completions.stream(model=MODEL, messages=messages, response_format=Pet, seed=3, max_tokens=400,
                                    extra_body=no_think) as stream:
    for event in stream:
        if event.type == "content.delta":
            text += event.delta
    final = stream.get_final_completion()
check(text == r1.choices[0].message.content, f"stream {text!r} vs {r1.choices[0].message.content!r}")
check(final.choices[0].message.parsed == r1.choices[0].message.parsed, "streamed parse differs")


# A forced named tool call: parsed arguments valid under the function's schema.
class GetWeather(BaseModel):
    city: str = Field(max_length=16)
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


class Lookup(BaseModel):
    query: str = Field(max_length=8)


tools = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(Lookup)]
for seed in range(5):
    r = client.chat.completions.parse(model=MODEL, messages=messages, tools=tools, seed=seed, max_tokens=300,
                                      tool_choice={"type": "function", "function": {"name": "GetWeather"}},
                                      extra_body=no_think)
    c = r.choices[0]
    check(c.finish_reason == "stop", f"named tool finish {c.finish_reason}")
    calls = c.message.tool_calls
    check(len(calls) == 1 and calls[0].function.name == "GetWeather", f"calls {calls}")
    args = calls[0].function.parsed_arguments
    check(isinstance(args, GetWeather), f"parsed_arguments {args!r}")
    check(len(args.city) <= 16 and 1 <= args.days <= 7, f"args {args}")
    check(calls[0].id.startswith("chatcmpl-tool-") and calls[0].type == "function", calls[0])

# Streamed, the named call arrives as pieces: id and name first, then the arguments.
named = {"type": "function", "function": {"name": "GetWeather"}}
whole = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice=named, seed=1,
                                       max_tokens=300, extra_body=no_think)
pieces, finish = [], None
for chunk in client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice=named, seed=1,
                                            max_tokens=300, stream=True, extra_body=no_think):
    for ch in chunk.choices:
        pieces.extend(ch.delta.tool_calls or [])
        finish = ch.finish_reason or finish
check(pieces and pieces[0].id and pieces[0].function.name == "GetWeather", f"first piece {pieces[:1]}")
check(all(p.id is None and p.function.name is None for p in pieces[1:]), "only the first piece is named")
streamed_args = "".join(p.function.arguments for p in pieces)
check(streamed_args == whole.choices[0].message.tool_calls[0].function.arguments, streamed_args)
GetWeather.model_validate_json(streamed_args)
check(finish == "stop", finish)

# tool_choice "required": one call without parallel_tool_calls, one or more with it.
for parallel, seed in [(False, 0), (False, 1), (True, 2), (True, 3)]:
    r = client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="required",
                                       parallel_tool_calls=parallel, seed=seed, max_tokens=400, extra_body=no_think)
    c = r.choices[0]
    check(c.finish_reason == "tool_calls", f"required finish {c.finish_reason}: {c.message}")
    calls = c.message.tool_calls
    check(len(calls) >= 1 and (parallel or len(calls) == 1), f"calls {calls}")
    for call in calls:
        model = {"GetWeather": GetWeather, "Lookup": Lookup}[call.function.name]
        model.model_validate_json(call.function.arguments)
stream_calls, finish = [], None
for chunk in client.chat.completions.create(model=MODEL, messages=messages, tools=tools, tool_choice="required",
                                            parallel_tool_calls=False, seed=0, max_tokens=400, stream=True,
                                            extra_body=no_think):
    for ch in chunk.choices:
        stream_calls.extend(ch.delta.tool_calls or [])
        finish = ch.finish_reason or finish
check(len(stream_calls) == 1 and finish == "tool_calls", f"{stream_calls} {finish}")

# json_object: any object. The random model is nudged (logit_bias) towards closing quotes and
# braces so it ends well inside max_tokens; the grammar alone makes the result an object.
bias = {}
for piece in ['"', "}", '"}', '":', "1"]:
    for t in client.post("/tokenize", cast_to=object, body={"model": MODEL, "prompt": piece})["tokens"]:
        bias[str(t)] = 8
for seed in range(3):
    r = client.chat.completions.create(model=MODEL, messages=messages, response_format={"type": "json_object"},
                                       seed=seed, max_tokens=300, logit_bias=bias, extra_body=no_think)
    c = r.choices[0]
    check(c.finish_reason == "stop", f"json_object finish {c.finish_reason}: {c.message.content!r}")
    check(isinstance(json.loads(c.message.content), dict), c.message.content)

# vLLM's guided_choice / guided_regex, structured_outputs (choice, regex, Lark grammar) on both
# endpoints.
colors = ["red", "green", "blue violet"]
for seed in range(5):
    r = client.chat.completions.create(model=MODEL, messages=messages, seed=seed, max_tokens=20,
                                       extra_body={"guided_choice": colors, **no_think})
    check(r.choices[0].message.content in colors and r.choices[0].finish_reason == "stop", r.choices[0])
    r = client.completions.create(model=MODEL, prompt="Color:", seed=seed, max_tokens=20,
                                  extra_body={"structured_outputs": {"choice": colors}})
    check(r.choices[0].text in colors, r.choices[0].text)
    r = client.completions.create(model=MODEL, prompt="Code:", seed=seed, max_tokens=20,
                                  extra_body={"guided_regex": r"[0-9]{3}-[a-z]{2}"})
    check(re.fullmatch(r"[0-9]{3}-[a-z]{2}", r.choices[0].text) and r.choices[0].finish_reason == "stop",
          r.choices[0])
    r = client.chat.completions.create(model=MODEL, messages=messages, seed=seed, max_tokens=20,
                                       extra_body={"structured_outputs": {"grammar": 'start: "x" ("y" | "z")+'},
                                                   "stop": ["yz"], **no_think})
    check(re.fullmatch(r"x[yz]*", r.choices[0].message.content), r.choices[0].message.content)

# Bad input: a 400 with the OpenAI error body naming the field, and the server goes on.
bad = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
    ({"extra_body": {"guided_choice": []}}, "guided_choice"),
    ({"extra_body": {"guided_json": "{not json"}}, "guided_json"),
    ({"extra_body": {"guided_grammar": "start: ("}}, "guided_grammar"),
    ({"extra_body": {"structured_outputs": {"regex": "a", "choice": ["a"]}}}, "structured_outputs"),
    ({"response_format": {"type": "json_object"}, "extra_body": {"guided_regex": "a"}}, "guided_regex"),
    ({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "Nope"}}}, "tool_choice"),
]
for kw, param in bad:
    try:
        client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5, **kw)
        check(False, f"{kw} accepted")
    except openai.BadRequestError as err:
        check(err.status_code == 400, err)
        body = err.body if isinstance(err.body, dict) else {}
        body = body.get("error", body)
        check(body.get("param") == param and body.get("message"), f"{kw}: {err.body}")
r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=3, extra_body=no_think)
check(r.choices[0].message.content is not None, "server still serves")

print("ALL OK")
