//! Completion records: what the chat proxy saw of each completion, so feedback trains on the
//! exact tokens the server sampled (the reference HEAD's `CompletionCache`).
//!
//! A record is found by the completion's `id` or by the SHA-256 of its visible text after
//! [`normalize_for_hash`] (thinking stripped, whitespace runs collapsed), the reference's key,
//! which survives clients that reflow the text (OpenClaw flattens newlines). The store is
//! bounded (oldest evicted first) and entries expire after a TTL.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// What training needs of one completion.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionRecord {
    /// The completion's `id` (`chatcmpl-…` / `cmpl-…`).
    pub completion_id: String,
    /// The served model the completion came from.
    pub model: String,
    /// Prompt token ids exactly as the server saw them (chat template applied).
    pub prompt_ids: Vec<u32>,
    /// The sampled response token ids.
    pub response_ids: Vec<u32>,
    /// Log-probability of each sampled token under the sampling policy.
    pub logprobs: Option<Vec<f32>>,
    /// The response text as the server returned it.
    pub response: String,
    /// The system prompt(s), joined by newlines as the reference does; `None` without one.
    pub system_prompt: Option<String>,
    /// The clean text of the last user turn.
    pub user_prompt: String,
}

/// Strips `<think>…</think>` blocks, and everything before an orphaned `</think>` (Qwen3's
/// opening tag can be consumed as a special token), then trims: the reference's
/// `strip_thinking`.
pub fn strip_thinking(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(s) = rest.find("<think>") {
        match rest[s..].find("</think>") {
            Some(e) => {
                out.push_str(&rest[..s]);
                rest = &rest[s + e + "</think>".len()..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    let text = match out.find("</think>") {
        Some(i) => out[i + "</think>".len()..].to_string(),
        None => out,
    };
    text.trim().to_string()
}

/// The reference's `normalize_for_hash`: [`strip_thinking`], then every whitespace run becomes
/// one space.
pub fn normalize_for_hash(text: &str) -> String {
    strip_thinking(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Hex SHA-256 of the normalised text: the key feedback finds a record by.
pub fn content_hash(text: &str) -> String {
    let digest = Sha256::digest(normalize_for_hash(text).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

struct Entry {
    record: CompletionRecord,
    hash: String,
    at: Instant,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    by_hash: HashMap<String, String>,
    order: VecDeque<String>,
}

/// Bounded, expiring completion records, shared by the proxy and `/v1/feedback`.
pub struct CompletionRecords {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
}

impl CompletionRecords {
    /// Keeps at most `capacity` records (at least one), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        CompletionRecords {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a record; a later record with the same text takes the hash key over.
    pub fn put(&self, record: CompletionRecord) {
        let hash = content_hash(&record.response);
        let id = record.completion_id.clone();
        let mut g = self.lock();
        if let Some(old) = g.by_id.remove(&id) {
            g.order.retain(|x| x != &id);
            if g.by_hash.get(&old.hash) == Some(&id) {
                g.by_hash.remove(&old.hash);
            }
        }
        g.by_hash.insert(hash.clone(), id.clone());
        g.order.push_back(id.clone());
        g.by_id.insert(
            id,
            Entry {
                record,
                hash,
                at: Instant::now(),
            },
        );
        while g.order.len() > self.capacity {
            if let Some(oldest) = g.order.pop_front() {
                Self::remove(&mut g, &oldest);
            }
        }
    }

    fn remove(g: &mut Inner, id: &str) {
        if let Some(e) = g.by_id.remove(id) {
            if g.by_hash.get(&e.hash).map(String::as_str) == Some(id) {
                g.by_hash.remove(&e.hash);
            }
        }
    }

    /// The record of completion `id`, if present and not expired.
    pub fn by_id(&self, id: &str) -> Option<CompletionRecord> {
        let mut g = self.lock();
        let expired = g.by_id.get(id)?.at.elapsed() > self.ttl;
        if expired {
            g.order.retain(|x| x != id);
            Self::remove(&mut g, id);
            return None;
        }
        g.by_id.get(id).map(|e| e.record.clone())
    }

    /// The newest record whose visible text normalises like `response`'s.
    pub fn by_text(&self, response: &str) -> Option<CompletionRecord> {
        let id = self.lock().by_hash.get(&content_hash(response))?.clone();
        self.by_id(&id)
    }

    /// Number of live entries (expired ones may still count until looked up or evicted).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, text: &str) -> CompletionRecord {
        CompletionRecord {
            completion_id: id.into(),
            model: "m".into(),
            prompt_ids: vec![1, 2],
            response_ids: vec![3],
            logprobs: Some(vec![-0.5]),
            response: text.into(),
            system_prompt: None,
            user_prompt: "q".into(),
        }
    }

    #[test]
    fn normalisation_matches_the_reference() {
        assert_eq!(strip_thinking("<think>a\nb</think>\n\nHello "), "Hello");
        assert_eq!(strip_thinking("plan...</think>Answer"), "Answer");
        assert_eq!(strip_thinking("x <think>unclosed"), "x <think>unclosed");
        assert_eq!(normalize_for_hash(" a\n\n b\tc "), "a b c");
        assert_eq!(content_hash("a  b"), content_hash("a\nb"));
        assert_ne!(content_hash("a b"), content_hash("ab"));
        // sha256("hi")
        assert_eq!(
            content_hash("hi"),
            "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
        );
    }

    #[test]
    fn bounded_by_capacity_and_ttl() {
        let r = CompletionRecords::new(2, Duration::from_secs(3600));
        r.put(rec("a", "one"));
        r.put(rec("b", "two"));
        r.put(rec("c", "three"));
        assert!(r.by_id("a").is_none(), "oldest evicted");
        assert!(r.by_text("one").is_none());
        assert_eq!(r.by_text("two\n").unwrap().completion_id, "b");
        assert_eq!(r.len(), 2);
        // The same text later: the hash key moves to the newer record.
        r.put(rec("d", "two"));
        assert_eq!(r.by_text("two").unwrap().completion_id, "d");
        assert!(r.by_id("b").is_none(), "evicted by capacity");

        let r = CompletionRecords::new(10, Duration::ZERO);
        r.put(rec("a", "one"));
        std::thread::sleep(Duration::from_millis(2));
        assert!(r.by_id("a").is_none(), "expired");
        assert!(r.is_empty());
    }
}
