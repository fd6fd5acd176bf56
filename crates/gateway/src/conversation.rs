//! Per-chat state kept in memory: conversations (1 h TTL, bounded count, least recently used
//! evicted) and each chat's undo point.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::backend::ChatMessage;

/// What `/feedback` says about the last reply: the API's record id and, in case the API no
/// longer has that record, everything needed to rebuild it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LastReply {
    /// The chat completion `id` (the API's record).
    pub completion_id: Option<String>,
    /// The user message the reply answered, as the user typed it.
    pub prompt: String,
    /// The reply text the user saw.
    pub response: String,
    /// The messages sent to the chat API for this reply.
    pub messages: Vec<ChatMessage>,
}

/// One chat's history and its last reply.
#[derive(Debug, Clone)]
pub(crate) struct Conversation {
    pub messages: Vec<ChatMessage>,
    pub last: Option<LastReply>,
    touched: Instant,
}

/// The adapter version a chat's last feedback trained from, i.e. where `/undo` goes back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UndoPoint {
    /// The version before the feedback.
    pub version: u64,
    /// The version the feedback produced, to tell this point from a newer one.
    pub applied: Option<u64>,
}

/// All chats. Times are passed in so that expiry is testable without sleeping.
#[derive(Debug)]
pub(crate) struct Conversations {
    ttl: Duration,
    max_chats: usize,
    max_messages: usize,
    chats: HashMap<i64, Conversation>,
    /// Kept apart from the conversations: `/reset` and the history TTL forget what was said,
    /// not what the adapter learned from it.
    undo: HashMap<i64, (UndoPoint, Instant)>,
}

impl Conversations {
    pub(crate) fn new(ttl: Duration, max_chats: usize, max_messages: usize) -> Self {
        Self {
            ttl,
            max_chats: max_chats.max(1),
            max_messages: max_messages.max(2),
            chats: HashMap::new(),
            undo: HashMap::new(),
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

    /// Append a completed exchange and remember its reply for `/feedback`.
    pub(crate) fn record_exchange(
        &mut self,
        chat: i64,
        user: ChatMessage,
        assistant: ChatMessage,
        last: LastReply,
        now: Instant,
    ) {
        self.evict_stale(now);
        let conv = self.chats.entry(chat).or_insert_with(|| Conversation {
            messages: Vec::new(),
            last: None,
            touched: now,
        });
        conv.messages.push(user);
        conv.messages.push(assistant);
        // Drop whole exchanges from the front so the history still starts with a user turn.
        while conv.messages.len() > self.max_messages {
            conv.messages.drain(..2.min(conv.messages.len()));
        }
        conv.last = Some(last);
        conv.touched = now;
        let max = self.max_chats;
        evict_oldest(&mut self.chats, max, |c| c.touched);
    }

    /// Forget a chat's conversation; whether there was anything to forget.
    pub(crate) fn reset(&mut self, chat: i64) -> bool {
        self.chats.remove(&chat).is_some()
    }

    /// Remember where `/undo` goes back to after a successful feedback (`None`: nowhere, the
    /// adapter had no earlier version).
    pub(crate) fn set_undo(&mut self, chat: i64, point: Option<UndoPoint>, now: Instant) {
        match point {
            Some(p) => {
                self.undo.insert(chat, (p, now));
                let max = self.max_chats;
                evict_oldest(&mut self.undo, max, |(_, at)| *at);
            }
            None => {
                self.undo.remove(&chat);
            }
        }
    }

    /// The chat's undo point, if any.
    pub(crate) fn undo_point(&self, chat: i64) -> Option<UndoPoint> {
        self.undo.get(&chat).map(|(p, _)| *p)
    }

    /// Forget `point` once it has been undone, unless a newer feedback replaced it meanwhile.
    pub(crate) fn consume_undo(&mut self, chat: i64, point: UndoPoint) {
        if self.undo_point(chat) == Some(point) {
            self.undo.remove(&chat);
        }
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
}

/// Drop the least recently touched entries until at most `max` are left.
fn evict_oldest<V>(map: &mut HashMap<i64, V>, max: usize, touched: impl Fn(&V) -> Instant) {
    while map.len() > max {
        let oldest = map
            .iter()
            .min_by_key(|(_, v)| touched(v))
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                map.remove(&id);
            }
            None => break,
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
    fn last(id: &str) -> LastReply {
        LastReply {
            completion_id: Some(id.into()),
            prompt: "p".into(),
            response: "r".into(),
            messages: vec![u("p")],
        }
    }

    #[test]
    fn exchanges_accumulate_and_reset_forgets() {
        let mut c = Conversations::new(Duration::from_secs(3600), 10, 50);
        let t = Instant::now();
        c.record_exchange(1, u("hi"), a("hello"), last("c1"), t);
        c.record_exchange(1, u("again"), a("yes"), last("c2"), t);
        assert_eq!(
            c.history(1, t),
            vec![u("hi"), a("hello"), u("again"), a("yes")]
        );
        assert_eq!(c.get(1, t).unwrap().last, Some(last("c2")));
        assert!(c.history(2, t).is_empty());
        assert!(c.reset(1));
        assert!(!c.reset(1));
        assert!(c.history(1, t).is_empty());
    }

    #[test]
    fn conversations_expire_after_the_ttl() {
        let mut c = Conversations::new(Duration::from_secs(3600), 10, 50);
        let t = Instant::now();
        c.record_exchange(1, u("hi"), a("hello"), last("x"), t);
        assert_eq!(c.history(1, t + Duration::from_secs(3600)).len(), 2);
        assert!(c.history(1, t + Duration::from_secs(3601)).is_empty());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn the_least_recently_used_chat_is_evicted() {
        let mut c = Conversations::new(Duration::from_secs(3600), 2, 50);
        let t = Instant::now();
        c.record_exchange(1, u("1"), a("1"), last("x"), t);
        c.record_exchange(2, u("2"), a("2"), last("x"), t + Duration::from_secs(1));
        c.record_exchange(1, u("1b"), a("1b"), last("x"), t + Duration::from_secs(2));
        c.record_exchange(3, u("3"), a("3"), last("x"), t + Duration::from_secs(3));
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
            c.record_exchange(1, u(&format!("q{i}")), a(&format!("a{i}")), last("x"), t);
        }
        assert_eq!(c.history(1, t), vec![u("q1"), a("a1"), u("q2"), a("a2")]);
    }

    #[test]
    fn undo_points_outlive_reset_and_are_consumed_once() {
        let mut c = Conversations::new(Duration::from_secs(3600), 2, 50);
        let t = Instant::now();
        let p3 = UndoPoint {
            version: 3,
            applied: Some(4),
        };
        c.record_exchange(1, u("hi"), a("hello"), last("x"), t);
        c.set_undo(1, Some(p3), t);
        assert!(c.reset(1));
        assert_eq!(c.undo_point(1), Some(p3));
        assert_eq!(c.undo_point(2), None);

        // A newer feedback replaced the point: undoing the old one keeps the new one.
        let p4 = UndoPoint {
            version: 4,
            applied: Some(5),
        };
        c.set_undo(1, Some(p4), t);
        c.consume_undo(1, p3);
        assert_eq!(c.undo_point(1), Some(p4));
        c.consume_undo(1, p4);
        assert_eq!(c.undo_point(1), None);

        // A feedback without an earlier version leaves nothing to undo.
        c.set_undo(1, Some(p3), t);
        c.set_undo(1, None, t);
        assert_eq!(c.undo_point(1), None);

        // Bounded like the conversations: the oldest point goes first.
        for chat in 10..13 {
            c.set_undo(chat, Some(p3), t + Duration::from_secs(chat as u64));
        }
        assert_eq!(c.undo_point(10), None);
        assert_eq!(c.undo_point(12), Some(p3));
    }
}
