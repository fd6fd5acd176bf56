// Unit tests for the claas-feedback plugin: `node --test test/plugin.test.ts` with Node >= 24.16
// (native TypeScript type stripping, as OpenClaw requires). No dependencies; a node:http server
// plays the CLaaS API (feedback and rollback).
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import type { AddressInfo } from "node:net";

import { createContextStore, MAX_ENTRIES, TTL_MS } from "../src/context-store.ts";
import { lastExchange, stripEnvelope, visibleText } from "../src/exchange.ts";
import { BUSY_MESSAGE, formatSuccess } from "../src/feedback-client.ts";

type Dict = Record<string, unknown>;
type Handler = (event: Dict, ctx: Dict) => unknown;
type Command = { handler: (ctx: Dict) => Promise<{ text: string }> };

interface FakeApi {
  hooks: Record<string, Handler>;
  commands: Record<string, Command>;
  sent: string[];
}

let loads = 0;
/** Load a fresh module instance (as OpenClaw does when it loads a plugin twice) and register it. */
async function loadPlugin(pluginConfig: Dict): Promise<FakeApi> {
  loads += 1;
  const mod = await import(`../index.ts?load=${loads}`);
  const api: FakeApi = { hooks: {}, commands: {}, sent: [] };
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
    registerCommand: (c: Command & { name: string }) => {
      api.commands[c.name] = c;
    },
  });
  return api;
}

interface FakeClaas {
  url: string;
  feedback: Dict[];
  rollbacks: Dict[];
  /** The adapter's current version (null: no history). */
  current: number | null;
  /** Answer the next requests with this status (and a FastAPI-style detail). */
  status?: number;
  close: () => void;
}

async function fakeClaas(current: number | null = 1): Promise<FakeClaas> {
  const fake: FakeClaas = { url: "", feedback: [], rollbacks: [], current, close: () => {} };
  const server = http.createServer((req, res) => {
    let raw = "";
    req.on("data", (c) => (raw += c));
    req.on("end", () => {
      const body = JSON.parse(raw) as Dict;
      const reply = (status: number, obj: unknown) => {
        res.writeHead(status, { "content-type": "application/json" });
        res.end(JSON.stringify(obj));
      };
      const failing = fake.status;
      if (req.url === "/v1/feedback") {
        fake.feedback.push(body);
        if (failing) return reply(failing, { detail: "Timed out waiting for lock" });
        const previous = fake.current;
        fake.current = (previous ?? 0) + 1;
        return reply(200, {
          status: "ok",
          adapter_version: fake.current,
          previous_version: previous,
          version_name: `me/bot-init@v${fake.current}`,
          timing_ms: { total: 1250 },
          distill_result: { metadata: { total_loss: 0.123456, tokens_processed: 7 } },
        });
      }
      if (req.url === "/v1/lora/rollback") {
        fake.rollbacks.push(body);
        if (failing === 409) return reply(409, { detail: "an update of this adapter is running" });
        if (failing) return reply(failing, { detail: `no version ${body.version}` });
        const previous = fake.current;
        fake.current = Number(body.version);
        return reply(200, {
          status: "ok",
          lora_id: "me/bot-init",
          version: fake.current,
          previous_version: previous,
          name: `me/bot-init@v${fake.current}`,
        });
      }
      reply(404, { detail: "Not Found" });
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address() as AddressInfo;
  fake.url = `http://127.0.0.1:${port}`;
  fake.close = () => server.close();
  return fake;
}

// What OpenClaw hands agent_end: the user turns carry its envelope, the assistant turns the
// completion id of the CLaaS API's record as `responseId`.
const conversation = [
  { role: "user", content: "[Telegram Ann id:42 +1m Mon 2026-11-30 10:00 UTC] Ann: hi" },
  { role: "assistant", content: [{ type: "text", text: "hello" }], responseId: "chatcmpl-1" },
  { role: "user", content: [{ type: "text", text: "[Telegram Ann id:42 +5s Mon 2026-11-30 10:01 UTC] Ann: more" }] },
  {
    role: "assistant",
    content: [{ type: "thinking", thinking: "hmm" }, { type: "text", text: "sure" }],
    responseId: "chatcmpl-2",
  },
];

test("the last exchange names the recorded completion, the clean prompt and the visible reply", () => {
  const e = lastExchange(conversation, "more");
  assert.deepEqual(e, {
    completionId: "chatcmpl-2",
    prompt: "more",
    response: "sure",
    messages: [
      { role: "user", content: conversation[0].content },
      { role: "assistant", content: "hello" },
      { role: "user", content: "[Telegram Ann id:42 +5s Mon 2026-11-30 10:01 UTC] Ann: more" },
    ],
  });
  // Without the message_received text the envelope is stripped from the last user turn.
  assert.equal(lastExchange(conversation)!.prompt, "more");
  assert.equal(lastExchange([{ role: "user", content: "only" }]), null);
  assert.equal(lastExchange([{ role: "assistant", content: "<think>unfinished" }]), null);
  assert.equal(lastExchange([{ role: "assistant", content: "hi" }])!.completionId, undefined);
});

test("reasoning and OpenClaw's envelope are removed", () => {
  assert.equal(visibleText("<think>\nhmm\n</think>\n\nHi!"), "Hi!");
  assert.equal(visibleText("hmm</think>Hi"), "Hi");
  assert.equal(visibleText("<think>unfinished"), "");
  assert.equal(
    stripEnvelope(
      'Conversation info (untrusted metadata):\n```json\n{"chat": "x"}\n```\n[Telegram Ann id:42 Mon] Ann: what: now?',
    ),
    "what: now?",
  );
  assert.equal(stripEnvelope("plain text: kept"), "plain text: kept");
});

test("the success text matches the reference wording and names the version", () => {
  const result = {
    status: "ok",
    timing_ms: { total: 1250 },
    distill_result: { metadata: { total_loss: 0.123456, tokens_processed: 42 } },
  };
  assert.equal(formatSuccess(result, 0), "\u2705 Feedback applied (1.3s | loss: 0.1235 | 42 tokens)");
  assert.equal(
    formatSuccess({ ...result, adapter_version: 3, previous_version: 2 }, 0),
    "\u2705 Feedback applied \u2192 v3 (1.3s | loss: 0.1235 | 42 tokens)",
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

test("/feedback posts the completion id, clean prompt and visible reply, and names the version", async () => {
  const claas = await fakeClaas();
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url, loraId: "me/bot-latest" });
    api.hooks.message_received({ from: "telegram:42", content: "more" }, { channelId: "telegram" });
    api.hooks.agent_end({ messages: conversation, success: true }, {});
    const reply = await api.commands.feedback.handler({
      channel: "telegram",
      from: "telegram:42",
      to: "telegram:42",
      args: " be shorter ",
    });
    assert.equal(reply.text, "\u2705 Feedback applied \u2192 v2 (1.3s | loss: 0.1235 | 7 tokens)");
    assert.deepEqual(api.sent, ["\u{1F9E0} Learning from your feedback\u2026"]);
    assert.deepEqual(claas.feedback, [
      {
        lora_id: "me/bot-latest",
        prompt: "more",
        response: "sure",
        feedback: "be shorter",
        completion_id: "chatcmpl-2",
        messages: lastExchange(conversation)!.messages,
        training: { teacher_mode: "self" },
      },
    ]);
  } finally {
    claas.close();
  }
});

test("/feedback without a completion id still sends the prompt, reply and messages", async () => {
  const claas = await fakeClaas();
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url });
    const messages = [
      { role: "user", content: "[Telegram Bo id:7 Mon] Bo: hey" },
      { role: "assistant", content: "yo" },
    ];
    api.hooks.agent_end({ messages }, { channel: "telegram", senderId: "7" });
    await api.commands.feedback.handler({ channel: "telegram", from: "telegram:7", args: "x" });
    assert.equal(claas.feedback.length, 1);
    assert.equal("completion_id" in claas.feedback[0], false);
    assert.equal(claas.feedback[0].prompt, "hey");
    assert.equal(claas.feedback[0].response, "yo");
    assert.deepEqual(claas.feedback[0].messages, [messages[0]]);
  } finally {
    claas.close();
  }
});

test("a 409 gives the busy message", async () => {
  const claas = await fakeClaas();
  claas.status = 409;
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url });
    api.hooks.agent_end({ messages: conversation }, { channel: "telegram", senderId: "7" });
    const reply = await api.commands.feedback.handler({ channel: "telegram", from: "telegram:7", args: "x" });
    assert.equal(reply.text, `\u274C Feedback failed: ${BUSY_MESSAGE}`);
  } finally {
    claas.close();
  }
});

test("/undo rolls back to the version before this chat's last feedback, once", async () => {
  const claas = await fakeClaas(6);
  // Chat keys of their own: the plugin's state is shared by every load in this process.
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url, loraId: "me/bot-latest" });
    const undo = (from: string) => api.commands.undo.handler({ channel: "telegram", from });
    assert.equal((await undo("telegram:142")).text, "Nothing to undo in this chat yet.");
    assert.deepEqual(claas.rollbacks, [], "no API call without feedback");

    api.hooks.agent_end({ messages: conversation }, { channel: "telegram", senderId: "142" });
    api.hooks.agent_end({ messages: conversation }, { channel: "telegram", senderId: "143" });
    const feedback = (from: string) => api.commands.feedback.handler({ channel: "telegram", from, args: "f" });
    assert.match((await feedback("telegram:142")).text, /\u2192 v7 /);
    assert.match((await feedback("telegram:142")).text, /\u2192 v8 /);
    assert.match((await feedback("telegram:143")).text, /\u2192 v9 /);

    assert.equal((await undo("telegram:142")).text, "\u21A9\uFE0F Reverted to v7");
    assert.deepEqual(claas.rollbacks, [{ lora_id: "me/bot-latest", version: 7 }]);
    assert.equal((await undo("telegram:142")).text, "Nothing to undo in this chat yet.");
    assert.equal(claas.rollbacks.length, 1);
    // The other chat keeps its own point.
    assert.equal((await undo("telegram:143")).text, "\u21A9\uFE0F Reverted to v8");
    assert.deepEqual(claas.rollbacks[1], { lora_id: "me/bot-latest", version: 8 });
  } finally {
    claas.close();
  }
});

test("/undo reports API errors and keeps the undo point", async () => {
  const claas = await fakeClaas();
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url });
    api.hooks.agent_end({ messages: conversation }, { channel: "telegram", senderId: "5" });
    await api.commands.feedback.handler({ channel: "telegram", from: "telegram:5", args: "f" });
    const undo = () => api.commands.undo.handler({ channel: "telegram", from: "telegram:5" });

    claas.status = 409;
    assert.equal((await undo()).text, `\u274C Undo failed: ${BUSY_MESSAGE}`);
    claas.status = 404;
    assert.equal((await undo()).text, '\u274C Undo failed: CLaaS API returned 404: {"detail":"no version 1"}');
    claas.status = undefined;
    assert.equal((await undo()).text, "\u21A9\uFE0F Reverted to v1");
    assert.equal(claas.rollbacks.length, 3);
    assert.ok(claas.rollbacks.every((r) => r.version === 1));
  } finally {
    claas.close();
  }
});

test("feedback on an adapter without history leaves nothing to undo", async () => {
  const claas = await fakeClaas(null);
  try {
    const api = await loadPlugin({ claasApiUrl: claas.url });
    api.hooks.agent_end({ messages: conversation }, { channel: "telegram", senderId: "8" });
    const reply = await api.commands.feedback.handler({ channel: "telegram", from: "telegram:8", args: "f" });
    assert.match(reply.text, /\u2192 v1 /);
    assert.equal(
      (await api.commands.undo.handler({ channel: "telegram", from: "telegram:8" })).text,
      "Nothing to undo in this chat yet.",
    );
    assert.deepEqual(claas.rollbacks, []);
  } finally {
    claas.close();
  }
});

test("state survives the module being loaded twice", async () => {
  const claas = await fakeClaas();
  try {
    const first = await loadPlugin({ claasApiUrl: claas.url });
    const second = await loadPlugin({ claasApiUrl: claas.url });
    // Hooks fire on one instance, the commands run on the other.
    first.hooks.message_received({ from: "telegram:99", content: "more" }, { channelId: "telegram" });
    first.hooks.agent_end({ messages: conversation }, {});
    const reply = await second.commands.feedback.handler({ channel: "telegram", from: "telegram:99", args: "ok" });
    assert.match(reply.text, /^\u2705 Feedback applied/);
    const undone = await first.commands.undo.handler({ channel: "telegram", from: "telegram:99" });
    assert.equal(undone.text, "\u21A9\uFE0F Reverted to v1");
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
  api.hooks.agent_end({ runId: "r2", messages: [{ role: "user", content: "[T] C: c" }, { role: "assistant", content: "C" }] }, {});
  api.hooks.agent_end({ runId: "r1", messages: [{ role: "user", content: "[T] B: b" }, { role: "assistant", content: "B" }] }, {});

  const claas = await fakeClaas();
  try {
    const api2 = await loadPlugin({ claasApiUrl: claas.url });
    for (const from of ["telegram:501", "telegram:601", "telegram:602"]) {
      await api2.commands.feedback.handler({ channel: "telegram", from, args: "f" });
    }
    assert.deepEqual(claas.feedback.map((b) => b.response), ["A", "B", "C"]);
    // The prompt is the text each sender sent (message_received), not the enveloped turn.
    assert.deepEqual(claas.feedback.map((b) => b.prompt), ["a", "b", "c"]);
  } finally {
    claas.close();
  }
});

test("misuse is explained", async () => {
  const api = await loadPlugin({});
  const feedback = api.commands.feedback;
  assert.equal((await feedback.handler({ channel: "telegram", from: "telegram:1", args: "" })).text, "Usage: /feedback <your feedback here>");
  assert.equal(
    (await feedback.handler({ channel: "telegram", from: "telegram:nobody", args: "x" })).text,
    "No recent conversation found. Chat with the bot first, then use /feedback.",
  );
  assert.equal((await feedback.handler({ args: "x" })).text, "Could not identify sender. Please try again.");
  assert.equal((await api.commands.undo.handler({})).text, "Nothing to undo in this chat yet.");
});
