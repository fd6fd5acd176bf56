/**
 * Rebuild the ChatML prompt/response pair from OpenClaw's agent messages.
 *
 * Keeps user/assistant turns with non-empty text, renders each as
 * `<|im_start|>role\ncontent<|im_end|>`, joins them with "\n", and splits at
 * the last assistant turn: everything before it is the prompt, its text is the
 * response. `thinking` blocks are wrapped in <think> tags. The claas gateway
 * (crates/gateway/src/feedback.rs) renders exactly the same way.
 */

const IM_START = "<|im_start|>";
const IM_END = "<|im_end|>";

interface ContentBlock {
  type?: string;
  text?: string;
  thinking?: string;
  content?: unknown;
}

export interface ChatMLResult {
  prompt: string;
  response: string;
}

/** Text of a content field that is a string or an array of content blocks. */
export function extractContent(content: unknown): string {
  if (typeof content === "string") return content;
  if (!Array.isArray(content)) return content == null ? "" : String(content);

  const parts: string[] = [];
  for (const raw of content) {
    if (raw == null || typeof raw !== "object") continue;
    const block = raw as ContentBlock;
    if (block.type === "thinking" && (block.thinking || block.text)) {
      parts.push(`<think>${block.thinking || block.text}</think>`);
    } else if (block.text) {
      parts.push(block.text);
    } else if (typeof block.content === "string" && block.content) {
      parts.push(block.content);
    }
  }
  return parts.join("\n");
}

function formatTurn(role: string, content: string): string {
  return `${IM_START}${role}\n${content}${IM_END}`;
}

/** Prompt and response of the last exchange, or null without an assistant turn. */
export function buildChatML(messages: unknown[]): ChatMLResult | null {
  const turns: { role: string; content: string }[] = [];
  for (const msg of messages) {
    if (msg == null || typeof msg !== "object") continue;
    const m = msg as Record<string, unknown>;
    const role = String(m.role ?? "");
    if (role !== "user" && role !== "assistant") continue;
    const content = extractContent(m.content);
    if (!content) continue;
    turns.push({ role, content });
  }

  let last = -1;
  for (let i = turns.length - 1; i >= 0; i--) {
    if (turns[i].role === "assistant") {
      last = i;
      break;
    }
  }
  if (last === -1) return null;

  const prompt = turns
    .slice(0, last)
    .map((t) => formatTurn(t.role, t.content))
    .join("\n");
  return { prompt, response: turns[last].content };
}
