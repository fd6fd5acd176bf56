/**
 * HTTP client for the CLaaS API: POST {claasApiUrl}/v1/feedback and /v1/lora/rollback, with a
 * 2-minute timeout (the API's own lock timeout), using Node's fetch.
 */

import type { ChatMessage } from "./exchange.ts";

export const TIMEOUT_MS = 2 * 60 * 1000;

export interface FeedbackPayload {
  lora_id: string;
  /** The clean user message the reply answered. */
  prompt: string;
  /** The reply text the user saw. */
  response: string;
  feedback: string;
  /** The chat completion id: the API's record of the exact sampled tokens. */
  completion_id?: string;
  /** The turns the reply answered; the API's fallback when it has no record. */
  messages?: ChatMessage[];
  training: {
    teacher_mode: string;
  };
}

export interface FeedbackResult {
  status: string;
  request_id?: string;
  lora_id?: string;
  /** The adapter version this update produced. */
  adapter_version?: number;
  /** The version it trained from (what /undo goes back to); null without history. */
  previous_version?: number | null;
  version_name?: string;
  timing_ms?: {
    total?: number;
    distill?: number;
    sleep?: number;
    wake?: number;
  };
  distill_result?: {
    metadata?: {
      total_loss?: number;
      distill_loss?: number;
      tokens_processed?: number;
      grad_norm?: number;
    };
  };
}

export interface RollbackResult {
  status: string;
  lora_id?: string;
  version?: number;
  previous_version?: number | null;
  name?: string;
}

export const BUSY_MESSAGE = "Another feedback update is in progress. Try again in a moment.";

async function post<T>(claasApiUrl: string, path: string, body: unknown, timeoutMs: number): Promise<T> {
  const url = `${claasApiUrl.replace(/\/+$/, "")}${path}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!res.ok) {
      const text = await res.text().catch(() => "");
      if (res.status === 409) throw new Error(BUSY_MESSAGE);
      throw new Error(`CLaaS API returned ${res.status}: ${text.slice(0, 500)}`);
    }
    return (await res.json()) as T;
  } finally {
    clearTimeout(timer);
  }
}

export function submitFeedback(
  claasApiUrl: string,
  payload: FeedbackPayload,
  timeoutMs: number = TIMEOUT_MS,
): Promise<FeedbackResult> {
  return post<FeedbackResult>(claasApiUrl, "/v1/feedback", payload, timeoutMs);
}

/** Make `version` the adapter's current version again. */
export function rollback(
  claasApiUrl: string,
  loraId: string,
  version: number,
  timeoutMs: number = TIMEOUT_MS,
): Promise<RollbackResult> {
  return post<RollbackResult>(claasApiUrl, "/v1/lora/rollback", { lora_id: loraId, version }, timeoutMs);
}

/**
 * "✅ Feedback applied → v3 (1.3s | loss: 0.1235 | 7 tokens)": the reference wording plus the
 * version the update produced (left out when the API does not report one).
 */
export function formatSuccess(result: FeedbackResult, elapsedMs: number): string {
  const totalMs = result.timing_ms?.total ?? elapsedMs;
  const seconds = (totalMs / 1000).toFixed(1);
  const meta = result.distill_result?.metadata;
  const loss = meta?.total_loss;
  const tokens = meta?.tokens_processed;

  let detail = `${seconds}s`;
  if (typeof loss === "number") detail += ` | loss: ${loss.toFixed(4)}`;
  if (tokens !== undefined && tokens !== null) detail += ` | ${tokens} tokens`;
  const version = typeof result.adapter_version === "number" ? ` \u2192 v${result.adapter_version}` : "";
  return `\u2705 Feedback applied${version} (${detail})`;
}
