//! Per-chat conversations kept in memory: 1 h TTL, bounded count, least recently used evicted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backend::ChatMessage;

/// One chat's history and the log-probabilities of its last assistant message.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub messages: Vec<ChatMessage>,
    pub last_logprobs: Option<Vec<f64>>,
    touched: Instant,
}

/// All conversations. Times are passed in so that expiry is testable without sleeping.
#[derive(Debug)]
pub(crate) struct Conversations {
    ttl: Duration,
    max_chats: usize,
    max_messages: usize,
    chats: HashMap<i64, Conversation>,
}

impl Conversations {
    pub(crate) fn new(ttl: Duration, max_chats: usize, max_messages: usize) -> Self {
        Self {
            ttl,
            max_chats: max_chats.max(1),
            max_messages: max_messages.max(2),
            chats: HashMap::new(),
        }
    }

    /// A live conversation (expired ones are dropped first).
    pub(crate) fn get(&mut self, chat: i64, now: Instant) -> Option<&Conversation> {
        self.evict_stale(now);
        self.chats.get(&chat)
    }

    /// The messages to send the model next (empty for a new chat).
    pub(crate) fn history(&mut self, chat: i64, now: Instant) -> Vec<ChatMessage> {
        self.get(chat, now)
            .map(|c| c.messages.clone())
            .unwrap_or_default()
    }

    /// Append a completed exchange and remember the reply's log-probabilities.
    pub(crate) fn record_exchange(
        &mut self,
        chat: i64,
        user: ChatMessage,
        assistant: ChatMessage,
        logprobs: Option<Vec<f64>>,
        now: Instant,
    ) {
        self.evict_stale(now);
        let conv = self.chats.entry(chat).or_insert_with(|| Conversation {
            messages: Vec::new(),
            last_logprobs: None,
            touched: now,
        });
        conv.messages.push(user);
        conv.messages.push(assistant);
        // Drop whole exchanges from the front so the history still starts with a user turn.
        while conv.messages.len() > self.max_messages {
            conv.messages.drain(..2.min(conv.messages.len()));
        }
        conv.last_logprobs = logprobs;
        conv.touched = now;
        self.evict_oldest();
    }

    /// Forget a chat; whether there was anything to forget.
    pub(crate) fn reset(&mut self, chat: i64) -> bool {
        self.chats.remove(&chat).is_some()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chats.len()
    }

    fn evict_stale(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.chats
            .retain(|_, c| now.saturating_duration_since(c.touched) <= ttl);
    }

    fn evict_oldest(&mut self) {
        while self.chats.len() > self.max_chats {
            let oldest = self
                .chats
                .iter()
                .min_by_key(|(_, c)| c.touched)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    self.chats.remove(&id);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> ChatMessage {
        ChatMessage::new("user", s)
    }
    fn a(s: &str) -> ChatMessage {
        ChatMessage::new("assistant", s)
    }

    #[test]
    fn exchanges_accumulate_and_reset_forgets() {
        let mut c = Conversations::new(Duration::from_secs(3600), 10, 50);
        let t = Instant::now();
        c.record_exchange(1, u("hi"), a("hello"), Some(vec![-1.0]), t);
        c.record_exchange(1, u("again"), a("yes"), Some(vec![-2.0]), t);
        assert_eq!(
            c.history(1, t),
            vec![u("hi"), a("hello"), u("again"), a("yes")]
        );
        assert_eq!(c.get(1, t).unwrap().last_logprobs, Some(vec![-2.0]));
        assert!(c.history(2, t).is_empty());
        assert!(c.reset(1));
        assert!(!c.reset(1));
        assert!(c.history(1, t).is_empty());
    }

    #[test]
    fn conversations_expire_after_the_ttl() {
        let mut c = Conversations::new(Duration::from_secs(3600), 10, 50);
        let t = Instant::now();
        c.record_exchange(1, u("hi"), a("hello"), None, t);
        assert_eq!(c.history(1, t + Duration::from_secs(3600)).len(), 2);
        assert!(c.history(1, t + Duration::from_secs(3601)).is_empty());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn the_least_recently_used_chat_is_evicted() {
        let mut c = Conversations::new(Duration::from_secs(3600), 2, 50);
        let t = Instant::now();
        c.record_exchange(1, u("1"), a("1"), None, t);
        c.record_exchange(2, u("2"), a("2"), None, t + Duration::from_secs(1));
        c.record_exchange(1, u("1b"), a("1b"), None, t + Duration::from_secs(2));
        c.record_exchange(3, u("3"), a("3"), None, t + Duration::from_secs(3));
        let now = t + Duration::from_secs(4);
        assert_eq!(c.len(), 2);
        assert!(c.get(2, now).is_none());
        assert_eq!(c.history(1, now).len(), 4);
        assert_eq!(c.history(3, now).len(), 2);
    }

    #[test]
    fn history_is_capped_by_whole_exchanges() {
        let mut c = Conversations::new(Duration::from_secs(3600), 2, 4);
        let t = Instant::now();
        for i in 0..3 {
            c.record_exchange(1, u(&format!("q{i}")), a(&format!("a{i}")), None, t);
        }
        assert_eq!(c.history(1, t), vec![u("q1"), a("a1"), u("q2"), a("a2")]);
    }
}
