/**
 * CLaaS Feedback plugin for OpenClaw (2026.9.x plugin API).
 *
 * - message_received: remembers which sender started which run, and the text
 *   they sent (by run id, and in a FIFO for runtimes that report no run id).
 * - agent_end: caches the run's messages under the sender key and the
 *   session key. The sender comes from the agent_end context when OpenClaw
 *   provides it, else from the run id recorded at message_received, else from
 *   the FIFO (the only thing the old plugin had).
 * - /feedback <text>: posts the last reply's completion id (OpenClaw keeps it
 *   as the assistant message's `responseId`; the CLaaS API recorded the
 *   completion under it when it proxied the chat), the user's clean text, the
 *   visible reply and the turns before it to the CLaaS API, and replies with
 *   the result and the adapter version it produced.
 * - /undo: rolls the adapter back to the version this chat's last feedback
 *   trained from (POST /v1/lora/rollback).
 *
 * All state lives on globalThis, so a second load of this module (OpenClaw
 * may load a plugin once for inspection and again for the runtime, or reload
 * it when its config changes) shares the cache and queue with the first.
 *
 * Needs `plugins.entries.claas-feedback.hooks.allowConversationAccess: true`
 * (agent_end is a conversation hook); `claas init` writes that.
 */

import { createContextStore, type ContextStore } from "./src/context-store.ts";
import { lastExchange } from "./src/exchange.ts";
import { formatSuccess, rollback, submitFeedback } from "./src/feedback-client.ts";

// Plain structural types: importing "openclaw/plugin-sdk" from an extension
// folder is not guaranteed to resolve, and types are erased at load anyway.
type Dict = Record<string, unknown>;

interface PluginApi {
  pluginConfig?: Dict;
  config?: Dict;
  logger?: { debug?: (m: string) => void; info?: (m: string) => void; warn?: (m: string) => void };
  runtime?: Dict;
  on(hook: string, handler: (event: Dict, ctx: Dict) => unknown, opts?: Dict): void;
  registerCommand(def: {
    name: string;
    description: string;
    acceptsArgs?: boolean;
    handler: (ctx: Dict) => Promise<{ text: string }> | { text: string };
  }): void;
}

interface ClaasConfig {
  claasApiUrl?: string;
  loraId?: string;
  debug?: boolean;
}

/** Who started a run, and the text they sent (OpenClaw adds an envelope before the model sees it). */
interface RunStart {
  sender: string;
  text?: string;
}

/** Where /undo goes back to: the version the chat's last feedback trained from. */
interface UndoPoint {
  version: number;
}

interface SharedState {
  store: ContextStore;
  /** Run starts in message_received order (fallback when there is no run id). */
  pendingSenders: RunStart[];
  /** run id -> run start, recorded at message_received. */
  runSenders: Map<string, RunStart>;
  /** chat key -> undo point. */
  undo: Map<string, UndoPoint>;
}

const STATE_KEY = Symbol.for("claas-feedback.state.v2");
const MAX_UNDO = 1000;
const MAX_PENDING = 50;
const MAX_RUNS = 200;

function sharedState(): SharedState {
  const g = globalThis as unknown as Record<symbol, SharedState | undefined>;
  let state = g[STATE_KEY];
  if (!state) {
    state = { store: createContextStore(), pendingSenders: [], runSenders: new Map(), undo: new Map() };
    g[STATE_KEY] = state;
  }
  return state;
}

const str = (v: unknown): string | undefined =>
  typeof v === "string" && v.length > 0 ? v : typeof v === "number" ? String(v) : undefined;

/**
 * Canonical sender key "channel:rawId". `from` may already carry the channel
 * prefix ("telegram:511643390", "telegram:group:-52424"), which is stripped
 * first so both spellings give the same key.
 */
export function senderKey(channel: string | undefined, from: string | undefined): string | undefined {
  if (!channel || !from) return undefined;
  const prefix = `${channel}:`;
  const raw = from.startsWith(prefix) ? from.slice(prefix.length) : from;
  return `${channel}:${raw}`;
}

const sessionStoreKey = (sessionKey: string | undefined): string | undefined =>
  sessionKey ? `session:${sessionKey}` : undefined;

const redact = (value: string): string => {
  const i = value.indexOf(":");
  return i < 0 ? "***" : `${value.slice(0, i + 1)}***`;
};

function readConfig(api: PluginApi): ClaasConfig {
  if (api.pluginConfig && typeof api.pluginConfig === "object") return api.pluginConfig as ClaasConfig;
  // Older hosts exposed only the whole OpenClaw config.
  const entries = ((api.config?.plugins as Dict | undefined)?.entries ?? {}) as Dict;
  const entry = entries["claas-feedback"] as Dict | undefined;
  return ((entry?.config as Dict | undefined) ?? {}) as ClaasConfig;
}

const plugin = {
  id: "claas-feedback",
  name: "CLaaS Feedback",
  description: "Submit feedback to CLaaS for continual learning via the /feedback command, and take it back with /undo",

  register(api: PluginApi): void {
    const config = readConfig(api);
    const claasApiUrl = config.claasApiUrl ?? "http://localhost:8080";
    const loraId = config.loraId ?? "openclaw/assistant-latest";
    const debug = config.debug === true || process.env.CLAAS_FEEDBACK_DEBUG === "true";
    const logDebug = (m: string): void => {
      if (!debug) return;
      if (api.logger?.info) api.logger.info(m);
      else console.debug(m);
    };
    const warn = (m: string): void => {
      if (api.logger?.warn) api.logger.warn(m);
      else console.warn(m);
    };
    const state = sharedState();

    api.on("message_received", (event, ctx) => {
      const channel = str(ctx.channelId) ?? str(ctx.channel);
      const key = senderKey(channel, str(event.from));
      if (!key) return;
      const runId = str(event.runId) ?? str(ctx.runId);
      const start: RunStart = { sender: key, text: typeof event.content === "string" ? event.content : undefined };
      logDebug(`[claas-feedback] message_received: sender=${redact(key)} run=${runId ? "yes" : "no"}`);
      if (runId) {
        state.runSenders.set(runId, start);
        while (state.runSenders.size > MAX_RUNS) {
          const oldest = state.runSenders.keys().next().value;
          if (oldest === undefined) break;
          state.runSenders.delete(oldest);
        }
      }
      state.pendingSenders.push(start);
      while (state.pendingSenders.length > MAX_PENDING) state.pendingSenders.shift();
    });

    api.on("agent_end", (event, ctx) => {
      const messages = event.messages;
      const runId = str(event.runId) ?? str(ctx.runId);
      const channel = str(ctx.channel) ?? str(ctx.messageProvider) ?? str(ctx.channelId);
      const fromCtx = senderKey(channel, str(ctx.senderId));
      const fromRun = runId ? state.runSenders.get(runId) : undefined;
      if (runId) state.runSenders.delete(runId);
      // The FIFO pairs runs with messages only when nothing better exists; every run
      // consumes its entry so the queue stays aligned for the runs that need it.
      let fromQueue: RunStart | undefined;
      if (fromRun) {
        const i = state.pendingSenders.indexOf(fromRun);
        if (i >= 0) state.pendingSenders.splice(i, 1);
      } else {
        fromQueue = state.pendingSenders.shift();
      }
      const start = fromRun ?? fromQueue;
      const sender = fromCtx ?? start?.sender;
      // The queued text belongs to this run only if it came from the same sender.
      const userText = start && (!fromCtx || start.sender === fromCtx) ? start.text : undefined;
      const source = fromCtx ? "context" : fromRun ? "run" : fromQueue ? "queue" : "none";
      const session = str(ctx.sessionKey);

      if (!Array.isArray(messages) || messages.length === 0) return;
      if (!sender && !session) {
        warn("[claas-feedback] agent_end: no sender or session for this run; not caching it");
        return;
      }
      const entry = { messages, sessionKey: session ?? sender ?? "", timestamp: Date.now(), userText };
      if (sender) state.store.set(sender, entry);
      const sessionKey = sessionStoreKey(session);
      if (sessionKey) state.store.set(sessionKey, entry);
      logDebug(
        `[claas-feedback] agent_end: sender=${sender ? redact(sender) : "-"} (from ${source}) session=${session ? "yes" : "no"} messages=${messages.length}`,
      );
    });

    api.registerCommand({
      name: "feedback",
      description: "Submit feedback on the last bot response to improve the model",
      acceptsArgs: true,
      handler: async (ctx) => {
        const feedbackText = (str(ctx.args) ?? "").trim();
        if (!feedbackText) return { text: "Usage: /feedback <your feedback here>" };

        const candidates = chatKeys(ctx);
        if (candidates.length === 0) return { text: "Could not identify sender. Please try again." };

        let cached;
        let matched = "-";
        for (const key of candidates) {
          cached = state.store.get(key);
          if (cached) {
            matched = redact(key);
            break;
          }
        }
        logDebug(`[claas-feedback] /feedback lookup: keys=${candidates.map(redact).join(",")} matched=${matched}`);
        if (!cached) {
          return { text: "No recent conversation found. Chat with the bot first, then use /feedback." };
        }

        const exchange = lastExchange(cached.messages, cached.userText);
        if (!exchange) return { text: "No bot response found in the last conversation." };
        if (!exchange.prompt) return { text: "Could not determine the user prompt for this conversation." };
        logDebug(`[claas-feedback] /feedback: completion id ${exchange.completionId ? "known" : "unknown"}`);

        await notify(api, ctx, "\u{1F9E0} Learning from your feedback\u2026");

        const startMs = Date.now();
        try {
          const result = await submitFeedback(claasApiUrl, {
            lora_id: loraId,
            prompt: exchange.prompt,
            response: exchange.response,
            feedback: feedbackText,
            ...(exchange.completionId ? { completion_id: exchange.completionId } : {}),
            messages: exchange.messages,
            training: { teacher_mode: "self" },
          });
          const chat = candidates[0];
          state.undo.delete(chat);
          if (typeof result.previous_version === "number") {
            state.undo.set(chat, { version: result.previous_version });
            while (state.undo.size > MAX_UNDO) {
              const oldest = state.undo.keys().next().value;
              if (oldest === undefined) break;
              state.undo.delete(oldest);
            }
          }
          return { text: formatSuccess(result, Date.now() - startMs) };
        } catch (err: unknown) {
          const msg = err instanceof Error ? err.message : String(err);
          return { text: `\u274C Feedback failed: ${msg}` };
        }
      },
    });

    api.registerCommand({
      name: "undo",
      description: "Revert the model to the version before your last feedback",
      acceptsArgs: false,
      handler: async (ctx) => {
        const candidates = chatKeys(ctx);
        const chat = candidates.find((k) => state.undo.has(k));
        const point = chat ? state.undo.get(chat) : undefined;
        if (!chat || !point) return { text: "Nothing to undo in this chat yet." };
        // Taken before the call, so a second /undo meanwhile finds nothing.
        state.undo.delete(chat);
        try {
          const result = await rollback(claasApiUrl, loraId, point.version);
          return { text: `\u21A9\uFE0F Reverted to v${result.version ?? point.version}` };
        } catch (err: unknown) {
          // Still undoable, unless a newer feedback set its own point meanwhile.
          if (!state.undo.has(chat)) state.undo.set(chat, point);
          const msg = err instanceof Error ? err.message : String(err);
          return { text: `\u274C Undo failed: ${msg}` };
        }
      },
    });
  },
};

/**
 * Keys that may identify the chat of a command, best first. Sender first: OpenClaw's default
 * DM scope shares one session between all direct chats, so the session key alone could find
 * someone else's exchange.
 */
function chatKeys(ctx: Dict): string[] {
  const channel = str(ctx.channel) ?? str(ctx.channelId);
  return [
    senderKey(channel, str(ctx.from)),
    senderKey(channel, str(ctx.senderId)),
    sessionStoreKey(str(ctx.sessionKey)),
  ].filter((k): k is string => Boolean(k));
}

/** Best-effort "working on it" message before the long call; never blocks /feedback. */
async function notify(api: PluginApi, ctx: Dict, text: string): Promise<void> {
  const to = str(ctx.to) ?? str(ctx.senderId);
  if (!to) return;
  const channelRuntime = (api.runtime?.channel ?? {}) as Dict;
  try {
    const legacy = (channelRuntime.telegram as Dict | undefined)?.sendMessageTelegram;
    if (typeof legacy === "function") {
      const opts: Dict = {};
      if (ctx.messageThreadId) opts.messageThreadId = ctx.messageThreadId;
      if (ctx.accountId) opts.accountId = ctx.accountId;
      await legacy(to, text, opts);
      return;
    }
    const channel = str(ctx.channel) ?? str(ctx.channelId);
    const loadAdapter = (channelRuntime.outbound as Dict | undefined)?.loadAdapter;
    if (!channel || typeof loadAdapter !== "function") return;
    const adapter = (await loadAdapter(channel)) as Dict | undefined;
    const sendText = adapter?.sendText;
    if (typeof sendText !== "function") return;
    await sendText.call(adapter, {
      cfg: ctx.config,
      to,
      text,
      accountId: str(ctx.accountId) ?? null,
      threadId: ctx.messageThreadId ?? null,
    });
  } catch {
    // The result message still arrives; the notice is only a courtesy.
  }
}

export default plugin;
