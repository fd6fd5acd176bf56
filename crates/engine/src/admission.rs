//! Admission: which queued sequences join the running batch at the start of a step.
//!
//! The queue is FIFO. Sequences are admitted in queue order while the batch has fewer than
//! `max_num_seqs` sequences. With a `max_loras` limit, a sequence whose adapter would be one
//! distinct adapter too many for the batch stays queued, at its place, while later sequences
//! that fit (an adapter already in the batch, or the base model) are admitted past it — vLLM's
//! policy: the head waits for a free adapter slot without blocking the whole queue. Pausing is
//! the scheduler's business: a paused engine does not call [`Queue::admit`].
//!
//! Pure data structures, so the policy is tested without a model.

use std::collections::VecDeque;

/// Identity of an adapter in a batch (the address of its shared weights: two registrations of
/// the same files are two adapters as far as batching goes).
pub(crate) type AdapterKey = usize;

/// What admission needs to know about a queued sequence.
pub(crate) trait Queued {
    /// `None` for the base model, which never counts against `max_loras`.
    fn adapter_key(&self) -> Option<AdapterKey>;
}

/// The limits admission enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Sequences in the running batch at most.
    pub max_num_seqs: usize,
    /// Distinct adapters in the running batch at most; `None` = no limit.
    pub max_loras: Option<usize>,
}

/// Sequences accepted but not yet running, oldest first.
pub(crate) struct Queue<T> {
    items: VecDeque<T>,
}

impl<T: Queued> Queue<T> {
    pub fn new() -> Self {
        Queue {
            items: VecDeque::new(),
        }
    }

    pub fn push_back(&mut self, item: T) {
        self.items.push_back(item);
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The queued sequences, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// Removes every sequence, oldest first.
    pub fn take_all(&mut self) -> Vec<T> {
        self.items.drain(..).collect()
    }

    /// Removes the sequences for which `pred` holds, keeping the others in order.
    pub fn remove_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut removed = Vec::new();
        let mut kept = VecDeque::with_capacity(self.items.len());
        for item in self.items.drain(..) {
            if pred(&item) {
                removed.push(item);
            } else {
                kept.push_back(item);
            }
        }
        self.items = kept;
        removed
    }

    /// Takes out, in queue order, the sequences that may join a batch of `running_len`
    /// sequences whose adapters are `running_adapters`. Sequences passed over for the adapter
    /// limit keep their order at the front of the queue.
    pub fn admit(
        &mut self,
        running_len: usize,
        running_adapters: impl IntoIterator<Item = Option<AdapterKey>>,
        limits: Limits,
    ) -> Vec<T> {
        let mut active: Vec<AdapterKey> = running_adapters.into_iter().flatten().collect();
        active.sort_unstable();
        active.dedup();
        let mut room = limits.max_num_seqs.saturating_sub(running_len);
        let mut admitted = Vec::new();
        let mut passed_over = VecDeque::new();
        while room > 0 {
            let Some(item) = self.items.pop_front() else {
                break;
            };
            if let (Some(max), Some(key)) = (limits.max_loras, item.adapter_key()) {
                if !active.contains(&key) {
                    if active.len() >= max {
                        passed_over.push_back(item);
                        continue;
                    }
                    active.push(key);
                }
            }
            room -= 1;
            admitted.push(item);
        }
        passed_over.append(&mut self.items);
        self.items = passed_over;
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queued sequence: an id to follow it by and its adapter.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct S(u32, Option<AdapterKey>);

    impl Queued for S {
        fn adapter_key(&self) -> Option<AdapterKey> {
            self.1
        }
    }

    fn queue(items: &[S]) -> Queue<S> {
        let mut q = Queue::new();
        for &s in items {
            q.push_back(s);
        }
        q
    }

    fn ids(v: &[S]) -> Vec<u32> {
        v.iter().map(|s| s.0).collect()
    }

    const NO_LIMIT: Limits = Limits {
        max_num_seqs: 64,
        max_loras: None,
    };

    #[test]
    fn admits_in_arrival_order() {
        let mut q = queue(&[S(1, None), S(2, Some(7)), S(3, None), S(4, Some(8))]);
        let got = q.admit(0, [], NO_LIMIT);
        assert_eq!(ids(&got), [1, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn respects_max_num_seqs_counting_the_running_batch() {
        let mut q = queue(&[S(1, None), S(2, None), S(3, None), S(4, None)]);
        let limits = Limits {
            max_num_seqs: 3,
            max_loras: None,
        };
        // Two already run: one slot left, taken by the oldest.
        let got = q.admit(2, [None, None], limits);
        assert_eq!(ids(&got), [1]);
        assert_eq!(q.len(), 3);
        // A full batch admits nothing (and a batch over the limit does not underflow).
        assert!(q.admit(3, [None; 3], limits).is_empty());
        assert!(q.admit(5, [None; 5], limits).is_empty());
        // Slots free up: the rest, still in order.
        assert_eq!(ids(&q.admit(0, [], limits)), [2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn adapter_limit_lets_later_fitting_requests_pass_while_the_head_waits() {
        // Adapter 7 runs; the limit is one adapter. Adapter 8 at the head cannot join, but the
        // base model and more adapter-7 work behind it can.
        let mut q = queue(&[S(1, Some(8)), S(2, None), S(3, Some(7)), S(4, Some(9))]);
        let limits = Limits {
            max_num_seqs: 64,
            max_loras: Some(1),
        };
        let got = q.admit(1, [Some(7)], limits);
        assert_eq!(ids(&got), [2, 3]);
        // The passed-over ones keep their order at the front.
        assert_eq!(ids(&q.take_all()), [1, 4]);
    }

    #[test]
    fn the_waiting_head_goes_first_once_its_adapter_fits() {
        let mut q = queue(&[S(1, Some(8)), S(2, Some(9)), S(3, Some(8))]);
        let limits = Limits {
            max_num_seqs: 64,
            max_loras: Some(1),
        };
        assert!(q.admit(1, [Some(7)], limits).is_empty());
        // Adapter 7 left the batch: the head's adapter takes the slot, so 9 still waits and 3
        // (same adapter as the head) joins.
        let got = q.admit(0, [], limits);
        assert_eq!(ids(&got), [1, 3]);
        assert_eq!(ids(&q.take_all()), [2]);
    }

    #[test]
    fn adapters_admitted_in_the_same_call_count_against_the_limit() {
        let mut q = queue(&[S(1, Some(7)), S(2, Some(8)), S(3, Some(9)), S(4, Some(7))]);
        let limits = Limits {
            max_num_seqs: 64,
            max_loras: Some(2),
        };
        let got = q.admit(0, [], limits);
        assert_eq!(ids(&got), [1, 2, 4]);
        assert_eq!(ids(&q.take_all()), [3]);
    }

    #[test]
    fn passed_over_sequences_do_not_use_seq_slots() {
        let mut q = queue(&[S(1, Some(8)), S(2, None), S(3, None), S(4, None)]);
        let limits = Limits {
            max_num_seqs: 3,
            max_loras: Some(1),
        };
        let got = q.admit(1, [Some(7)], limits);
        assert_eq!(ids(&got), [2, 3]);
        assert_eq!(ids(&q.take_all()), [1, 4]);
    }

    #[test]
    fn remove_where_keeps_the_rest_in_order() {
        let mut q = queue(&[S(1, None), S(2, None), S(3, None), S(4, None)]);
        let gone = q.remove_where(|s| s.0 % 2 == 0);
        assert_eq!(ids(&gone), [2, 4]);
        assert_eq!(ids(&q.take_all()), [1, 3]);
    }
}
