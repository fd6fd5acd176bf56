/**
 * HTTP client for the CLaaS feedback API: POST {claasApiUrl}/v1/feedback with
 * a 2-minute timeout (the API's own lock timeout), using Node's fetch.
 */

export const TIMEOUT_MS = 2 * 60 * 1000;

export interface FeedbackPayload {
  lora_id: string;
  prompt: string;
  response: string;
  feedback: string;
  rollout_logprobs?: number[];
  training: {
    teacher_mode: string;
  };
}

export interface FeedbackResult {
  status: string;
  request_id?: string;
  lora_id?: string;
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

export const BUSY_MESSAGE = "Another feedback update is in progress. Try again in a moment.";

export async function submitFeedback(
  claasApiUrl: string,
  payload: FeedbackPayload,
  timeoutMs: number = TIMEOUT_MS,
): Promise<FeedbackResult> {
  const url = `${claasApiUrl.replace(/\/+$/, "")}/v1/feedback`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const res = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
      signal: controller.signal,
    });
    if (!res.ok) {
      const body = await res.text().catch(() => "");
      if (res.status === 409) throw new Error(BUSY_MESSAGE);
      throw new Error(`CLaaS API returned ${res.status}: ${body.slice(0, 500)}`);
    }
    return (await res.json()) as FeedbackResult;
  } finally {
    clearTimeout(timer);
  }
}

/** "✅ Feedback applied (1.3s | loss: 0.1235 | 7 tokens)". */
export function formatSuccess(result: FeedbackResult, elapsedMs: number): string {
  const totalMs = result.timing_ms?.total ?? elapsedMs;
  const seconds = (totalMs / 1000).toFixed(1);
  const meta = result.distill_result?.metadata;
  const loss = meta?.total_loss;
  const tokens = meta?.tokens_processed;

  let detail = `${seconds}s`;
  if (typeof loss === "number") detail += ` | loss: ${loss.toFixed(4)}`;
  if (tokens !== undefined && tokens !== null) detail += ` | ${tokens} tokens`;
  return `\u2705 Feedback applied (${detail})`;
}
