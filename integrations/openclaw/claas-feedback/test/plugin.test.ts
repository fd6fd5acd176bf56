// Unit tests for the claas-feedback plugin: `node --test test/` with Node >= 24.16 (native
// TypeScript type stripping, as OpenClaw requires). No dependencies; a node:http server plays
// the CLaaS API.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";

import { buildChatML } from "../src/chatml.ts";
import { createContextStore, MAX_ENTRIES, TTL_MS } from "../src/context-store.ts";
import { BUSY_MESSAGE, formatSuccess } from "../src/feedback-client.ts";

type Dict = Record<string, unknown>;
type Handler = (event: Dict, ctx: Dict) => unknown;

interface FakeApi {
  hooks: Record<string, Handler>;
  command?: { handler: (ctx: Dict) => Promise<{ text: string }> };
  sent: string[];
}

let loads = 0;
/** Load a fresh module instance (as OpenClaw does when it loads a plugin twice) and register it. */
async function loadPlugin(pluginConfig: Dict): Promise<FakeApi> {
  loads += 1;
  const mod = await import(`../index.ts?load=${loads}`);
  const api: FakeApi = { hooks: {}, sent: [] };
  mod.default.register({
    pluginConfig,
    logger: { info: () => {}, warn: () => {} },
    runtime: {
      channel: {
        outbound: {
          loadAdapter: async () => ({ sendText: async (o: Dict) => void api.sent.push(String(o.text)) }),
        },
      },
    },
    on: (name: string, h: Handler) => {
      api.hooks[name] = h;
    },
    registerCommand: (c: FakeApi["command"]) => {
      api.command = c;
    },
  });
  return api;
}

async function fakeClaas(status = 200): Promise<{ url: string; bodies: Dict[]; close: () => void }> {
  const bodies: Dict[] = [];
  const server = http.createServer((req, res) => {
    let raw = "";
    req.on("data", (c) => (raw += c));
    req.on("end", () => {
      bodies.push(JSON.parse(raw));
      res.writeHead(status, { "content-type": "application/json" });
      res.end(
        status === 200
          ? JSON.stringify({
              status: "ok",
              timing_ms: { total: 1250 },
              distill_result: { metadata: { total_loss: 0.123456, tokens_processed: 7 } },
            })
          : JSON.stringify({ detail: "Timed out waiting for lock" }),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, bodies, close: () => server.close() };
}

const conversation = [
  { role: "system", content: "be nice" },
  { role: "user", content: "hi" },
  { role: "assistant", content: [{ type: "text", text: "hello" }] },
  { role: "user", content: [{ type: "text", text: "more" }] },
  { role: "assistant", content: [{ type: "thinking", thinking: "hmm" }, { type: "text", text: "sure" }] },
];

test("ChatML matches the reference plugin (and the Rust gateway)", () => {
  const r = buildChatML(conversation);
  assert.deepEqual(r, {
    prompt:
      "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nmore<|im_end|>",
    response: "<think>hmm</think>\nsure",
  });
  assert.equal(buildChatML([{ role: "user", content: "only" }]), null);
});

test("the success text matches the reference wording", () => {
  assert.equal(
    formatSuccess({ status: "ok", timing_ms: { total: 1250 }, distill_result: { metadata: { total_loss: 0.123456, tokens_processed: 42 } } }, 0),
    "\u2705 Feedback applied (1.3s | loss: 0.1235 | 42 tokens)",
  );
  assert.equal(formatSuccess({ status: "ok" }, 3456), "\u2705 Feedback applied (3.5s)");
});

test("the context store expires entries after an hour and keeps at most 1000", () => {
  let now = 1_000_000;
  const store = createContextStore(() => now);
  store.set("a", { messages: [1], sessionKey: "a", timestamp: now });
  now += TTL_MS;
  assert.ok(store.get("a"));
  now += 1;
  assert.equal(store.get("a"), undefined);
  for (let i = 0; i < MAX_ENTRIES + 5; i++) store.set(`k${i}`, { messages: [], sessionKey: "", timestamp: now + i });
  assert.equal(store.keys().length, MAX_ENTRIES);
  assert.equal(store.get("k0"), undefined);
  assert.ok(store.get(`k${MAX_ENTRIES + 4}`));
});

test("/feedback posts the plugin payload and replies with the result", async () => {
  const claas = await fakeClaas();
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url, loraId: "me/bot-latest" });
    api.hooks.message_received({ from: "telegram:42", content: "more" }, { channelId: "telegram" });
    api.hooks.agent_end({ messages: conversation, success: true }, {});
    const reply = await api.command!.handler({ channel: "telegram", from: "telegram:42", to: "telegram:42", args: " be shorter " });
    assert.equal(reply.text, "\u2705 Feedback applied (1.3s | loss: 0.1235 | 7 tokens)");
    assert.deepEqual(api.sent, ["\u{1F9E0} Learning from your feedback\u2026"]);
    assert.equal(claas.bodies.length, 1);
    assert.deepEqual(claas.bodies[0], {
      lora_id: "me/bot-latest",
      prompt: buildChatML(conversation)!.prompt,
      response: "<think>hmm</think>\nsure",
      feedback: "be shorter",
      training: { teacher_mode: "self" },
    });
  } finally {
    claas.close();
  }
});

test("a 409 gives the busy message", async () => {
  const claas = await fakeClaas(409);
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url });
    api.hooks.agent_end({ messages: conversation }, { channel: "telegram", senderId: "7" });
    const reply = await api.command!.handler({ channel: "telegram", from: "telegram:7", args: "x" });
    assert.equal(reply.text, `\u274C Feedback failed: ${BUSY_MESSAGE}`);
  } finally {
    claas.close();
  }
});

test("state survives the module being loaded twice", async () => {
  const claas = await fakeClaas();
  try {
    const first = await loadPlugin({ claasApiUrl: claas.url });
    const second = await loadPlugin({ claasApiUrl: claas.url });
    // Hooks fire on one instance, the command runs on the other.
    first.hooks.message_received({ from: "telegram:99", content: "more" }, { channelId: "telegram" });
    first.hooks.agent_end({ messages: conversation }, {});
    const reply = await second.command!.handler({ channel: "telegram", from: "telegram:99", args: "ok" });
    assert.match(reply.text, /^\u2705 Feedback applied/);
  } finally {
    claas.close();
  }
});

test("the sender comes from the agent_end context, and from the run id", async () => {
  const api = await loadPlugin({ claasApiUrl: "http://127.0.0.1:9" });
  // Context sender, no message_received at all.
  api.hooks.agent_end({ messages: [{ role: "user", content: "a" }, { role: "assistant", content: "A" }] }, { channel: "telegram", senderId: "501" });
  // Two interleaved runs, matched by run id rather than order.
  api.hooks.message_received({ from: "telegram:601", content: "b", runId: "r1" }, { channelId: "telegram" });
  api.hooks.message_received({ from: "telegram:602", content: "c", runId: "r2" }, { channelId: "telegram" });
  api.hooks.agent_end({ runId: "r2", messages: [{ role: "user", content: "c" }, { role: "assistant", content: "C" }] }, {});
  api.hooks.agent_end({ runId: "r1", messages: [{ role: "user", content: "b" }, { role: "assistant", content: "B" }] }, {});

  const claas = await fakeClaas();
  try {
    const api2 = await loadPlugin({ claasApiUrl: claas.url });
    for (const from of ["telegram:501", "telegram:601", "telegram:602"]) {
      await api2.command!.handler({ channel: "telegram", from, args: "f" });
    }
    assert.deepEqual(claas.bodies.map((b) => b.response), ["A", "B", "C"]);
  } finally {
    claas.close();
  }
});

test("misuse is explained", async () => {
  const api = await loadPlugin({});
  assert.equal((await api.command!.handler({ channel: "telegram", from: "telegram:1", args: "" })).text, "Usage: /feedback <your feedback here>");
  assert.equal(
    (await api.command!.handler({ channel: "telegram", from: "telegram:nobody", args: "x" })).text,
    "No recent conversation found. Chat with the bot first, then use /feedback.",
  );
  assert.equal((await api.command!.handler({ args: "x" })).text, "Could not identify sender. Please try again.");
});
