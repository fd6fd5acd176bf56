/**
 * The last exchange of an OpenClaw run, as /feedback reports it to the CLaaS API.
 *
 * OpenClaw's provider is the CLaaS API's chat proxy (`claas init` sets `baseUrl` to
 * `{CLAAS_API_URL}/v1`), which records every completion under its id; OpenClaw keeps that id
 * on the assistant message as `responseId` (the streamed chunks' `id`). Naming it lets the API
 * train on exactly the tokens that were sampled. The rest is what the API falls back on when
 * its record is gone: the user's clean text, the visible reply and the chat messages.
 */

interface ContentBlock {
  type?: string;
  text?: string;
  thinking?: string;
  content?: unknown;
}

export interface ChatMessage {
  role: string;
  content: string;
}

export interface Exchange {
  /** The chat completion id of the reply (the API's record), when OpenClaw kept it. */
  completionId?: string;
  /** The user message the reply answered, without OpenClaw's envelope. */
  prompt: string;
  /** The reply text the user saw (no reasoning). */
  response: string;
  /** The user/assistant turns the reply answered, as text. */
  messages: ChatMessage[];
}

/** Text of a content field that is a string or an array of content blocks, reasoning left out. */
export function textContent(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return content == null ? "" : String(content);
  const parts: string[] = [];
  for (const raw of content) {
    if (raw == null || typeof raw !== "object") continue;
    const block = raw as ContentBlock;
    if (block.type === "thinking" || block.type === "redacted_thinking") continue;
    if (typeof block.text === "string" && block.text) parts.push(block.text);
    else if (typeof block.content === "string" && block.content) parts.push(block.content);
  }
  return parts.join("\n");
}

/** What the user saw of a reply: `<think>` blocks (and an orphaned `</think>` prefix) removed. */
export function visibleText(text: string): string {
  let out = text.replace(/<think>[\s\S]*?<\/think>/g, "");
  const close = out.indexOf("</think>");
  if (close >= 0) out = out.slice(close + "</think>".length);
  const open = out.indexOf("<think>");
  if (open >= 0) out = out.slice(0, open);
  return out.trim();
}

/**
 * The user's own words from an agent-visible user message: OpenClaw prepends an envelope
 * ("[Telegram Ann id:42 +1m Mon 2026-…] Ann: ") and may add "… (untrusted metadata):" JSON
 * blocks. Only a fallback: the text from message_received is used when the plugin saw it.
 */
export function stripEnvelope(text: string): string {
  let out = text.replace(/^[^\n]*\(untrusted metadata\):[ \t]*\n```json\n[\s\S]*?\n```[ \t]*\n?/gm, "");
  const header = out.match(/^\s*\[[^\]\n]*\]\s*/);
  if (header) {
    out = out.slice(header[0].length);
    // The direct-chat sender label after the header ("Ann: ").
    const label = out.match(/^[^\n:]{1,64}:\s/);
    if (label) out = out.slice(label[0].length);
  }
  return out.trim();
}

const str = (v: unknown): string | undefined => (typeof v === "string" && v.length > 0 ? v : undefined);

/**
 * The last assistant reply of `messages` and what it answered; null without a reply that has
 * visible text. `userText` is the clean text of the message that started the run, if known.
 */
export function lastExchange(messages: unknown[], userText?: string): Exchange | null {
  const turns = messages.filter((m): m is Record<string, unknown> => m != null && typeof m === "object");
  let last = -1;
  for (let i = turns.length - 1; i >= 0; i--) {
    if (turns[i].role === "assistant" && visibleText(textContent(turns[i].content))) {
      last = i;
      break;
    }
  }
  if (last < 0) return null;
  const reply = turns[last];
  const before: ChatMessage[] = [];
  for (const m of turns.slice(0, last)) {
    const role = String(m.role ?? "");
    if (role !== "user" && role !== "assistant" && role !== "system") continue;
    const content = role === "assistant" ? visibleText(textContent(m.content)) : textContent(m.content);
    if (content) before.push({ role, content });
  }
  const lastUser = [...before].reverse().find((m) => m.role === "user");
  const prompt = (userText ?? "").trim() || (lastUser ? stripEnvelope(lastUser.content) : "");
  return {
    completionId: str(reply.responseId),
    prompt,
    response: visibleText(textContent(reply.content)),
    messages: before,
  };
}
