//! Stored responses, for `GET /v1/responses/{id}` and `previous_response_id`. Off by default,
//! as vLLM (`VLLM_ENABLE_RESPONSES_API_STORE`): then `store: true` is accepted and nothing is
//! kept. When on, the store is bounded by entry count, total bytes and age, so a server left
//! running does not grow without end (vLLM's never forgets).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Most bytes of stored responses and conversations, whatever the entry count.
pub(crate) const MAX_STORE_BYTES: usize = 256 << 20;

/// One stored response.
pub(crate) struct Stored {
    /// The Response object, as `GET` returns it.
    pub response: Value,
    /// The chat messages of the conversation so far, its reply included and the
    /// `instructions` left out (they do not carry over to a follow-up, as OpenAI's).
    pub conversation: Vec<Value>,
}

struct Entry {
    stored: Arc<Stored>,
    at: Instant,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Ids oldest first (insertion order is age order).
    order: VecDeque<String>,
    bytes: usize,
}

/// A bounded in-memory store: count, total bytes and time to live.
pub(crate) struct ResponseStore {
    inner: Mutex<Inner>,
    max_entries: usize,
    max_bytes: usize,
    ttl: Duration,
}

impl ResponseStore {
    pub fn new(max_entries: usize, max_bytes: usize, ttl: Duration) -> Self {
        ResponseStore {
            inner: Mutex::new(Inner::default()),
            max_entries: max_entries.max(1),
            max_bytes,
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is a few
        // infallible steps), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `stored` under `id`, evicting the expired and then the oldest entries past the
    /// bounds. An entry larger than the byte bound on its own is not kept.
    pub fn insert(&self, id: String, stored: Stored) {
        let bytes = json_bytes(&stored.response)
            + stored.conversation.iter().map(json_bytes).sum::<usize>();
        if bytes > self.max_bytes {
            tracing::warn!(
                "response {id} ({bytes} bytes) exceeds the store's byte bound; not stored"
            );
            return;
        }
        let now = Instant::now();
        let mut g = self.lock();
        Self::remove_locked(&mut g, &id);
        g.map.insert(
            id.clone(),
            Entry {
                stored: Arc::new(stored),
                at: now,
                bytes,
            },
        );
        g.order.push_back(id);
        g.bytes += bytes;
        self.evict(&mut g, now);
    }

    /// The entry under `id`, unless it expired.
    pub fn get(&self, id: &str) -> Option<Arc<Stored>> {
        let now = Instant::now();
        let mut g = self.lock();
        self.evict(&mut g, now);
        g.map.get(id).map(|e| e.stored.clone())
    }

    /// Removes `id`; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut g = self.lock();
        self.evict(&mut g, now);
        Self::remove_locked(&mut g, id)
    }

    fn remove_locked(g: &mut Inner, id: &str) -> bool {
        match g.map.remove(id) {
            Some(e) => {
                g.bytes -= e.bytes;
                g.order.retain(|x| x != id);
                true
            }
            None => false,
        }
    }

    fn evict(&self, g: &mut Inner, now: Instant) {
        while let Some(id) = g.order.front().cloned() {
            let Some(e) = g.map.get(&id) else {
                g.order.pop_front();
                continue;
            };
            let expired = now.duration_since(e.at) >= self.ttl;
            if !expired && g.map.len() <= self.max_entries && g.bytes <= self.max_bytes {
                break;
            }
            g.order.pop_front();
            if let Some(e) = g.map.remove(&id) {
                g.bytes -= e.bytes;
            }
        }
    }
}

fn json_bytes(v: &Value) -> usize {
    serde_json::to_vec(v).map(|b| b.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stored(text: &str) -> Stored {
        Stored {
            response: json!({"text": text}),
            conversation: vec![json!({"role": "user", "content": text})],
        }
    }

    #[test]
    fn bounded_by_count_oldest_first() {
        let s = ResponseStore::new(2, usize::MAX, Duration::from_secs(60));
        s.insert("a".into(), stored("1"));
        s.insert("b".into(), stored("2"));
        s.insert("c".into(), stored("3"));
        assert!(s.get("a").is_none());
        assert_eq!(s.get("b").unwrap().response["text"], "2");
        assert_eq!(s.get("c").unwrap().conversation[0]["content"], "3");
        assert!(s.remove("b"));
        assert!(!s.remove("b"));
        assert!(s.get("b").is_none());
    }

    #[test]
    fn bounded_by_bytes_and_age() {
        let one = json_bytes(&stored("x").response)
            + stored("x")
                .conversation
                .iter()
                .map(json_bytes)
                .sum::<usize>();
        let s = ResponseStore::new(100, 2 * one, Duration::from_secs(60));
        s.insert("a".into(), stored("x"));
        s.insert("b".into(), stored("y"));
        s.insert("c".into(), stored("z"));
        assert!(s.get("a").is_none());
        assert!(s.get("b").is_some() && s.get("c").is_some());
        // larger than the whole bound: refused, the others stay
        s.insert("big".into(), stored(&"w".repeat(4 * one)));
        assert!(s.get("big").is_none());
        assert!(s.get("c").is_some());

        let s = ResponseStore::new(100, usize::MAX, Duration::from_millis(30));
        s.insert("a".into(), stored("1"));
        assert!(s.get("a").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.get("a").is_none());
    }

    #[test]
    fn reinserting_an_id_replaces_it() {
        let s = ResponseStore::new(2, usize::MAX, Duration::from_secs(60));
        s.insert("a".into(), stored("1"));
        s.insert("a".into(), stored("2"));
        s.insert("b".into(), stored("3"));
        assert_eq!(s.get("a").unwrap().response["text"], "2");
        assert!(s.get("b").is_some());
    }
}
