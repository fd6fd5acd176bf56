/**
 * In-memory conversation contexts for /feedback.
 *
 * Key:   a sender key ("telegram:511643390") or a session key ("session:<key>")
 * Value: { messages, sessionKey, timestamp, userText }
 *
 * TTL 1 hour (stale entries are dropped on access); at most 1000 entries
 * (the oldest go first).
 */

export interface ConversationContext {
  messages: unknown[];
  sessionKey: string;
  timestamp: number;
  /** The text the user sent to start the run (message_received), without OpenClaw's envelope. */
  userText?: string;
}

export const TTL_MS = 60 * 60 * 1000;
export const MAX_ENTRIES = 1000;

export interface ContextStore {
  set(key: string, ctx: ConversationContext): void;
  get(key: string): ConversationContext | undefined;
  keys(): string[];
}

export function createContextStore(now: () => number = Date.now): ContextStore {
  const store = new Map<string, ConversationContext>();

  const isStale = (entry: ConversationContext): boolean => now() - entry.timestamp > TTL_MS;

  const evictStale = (): void => {
    for (const [key, value] of store) {
      if (isStale(value)) store.delete(key);
    }
  };

  const evictOldest = (): void => {
    if (store.size <= MAX_ENTRIES) return;
    const sorted = [...store.entries()].sort((a, b) => a[1].timestamp - b[1].timestamp);
    for (const [key] of sorted.slice(0, store.size - MAX_ENTRIES)) store.delete(key);
  };

  return {
    set(key, ctx) {
      evictStale();
      // Re-insert so Map order follows recency too.
      store.delete(key);
      store.set(key, ctx);
      evictOldest();
    },
    get(key) {
      const entry = store.get(key);
      if (!entry) return undefined;
      if (isStale(entry)) {
        store.delete(key);
        return undefined;
      }
      return entry;
    },
    keys() {
      return [...store.keys()];
    },
  };
}
