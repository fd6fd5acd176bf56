//! Automatic prefix caching: keys and values of full token blocks, kept after their request is
//! done and shared by later requests that start with the same tokens (a chat resends its whole
//! history every turn, an agent its long system prompt).
//!
//! - **Blocks** are [`BLOCK_SIZE`] tokens. 16, as vLLM's default: a turn re-computes on average
//!   half a block plus the tail after the last full block, and smaller blocks would multiply
//!   the per-block bookkeeping and copies for no gain on prompts of hundreds of tokens.
//! - **Keys** are chained: a block's key holds its parent block's id (unique, never reused),
//!   the identity of what computed it, and its token ids, so one lookup per block finds the
//!   longest cached prefix, and equality is exact (no hash collision can alias two prefixes;
//!   the hash map only indexes the keys).
//! - **Identity** is the adapter's load generation (`AdapterInfo::version`, engine-wide unique
//!   and bumped on every load, including a reload of the same name after training), 0 for the
//!   base model. So blocks are never shared across adapter versions, and the stale cache after
//!   a reload that vLLM had (vllm#42125) cannot happen. The weights of the base model are the
//!   other input of a block's keys and values: they change only across a sleep (level 2 reloads
//!   them), and sleep empties the cache.
//! - **Eviction** is least recently used among leaves, within a byte budget
//!   (`--kv-cache-memory-bytes`). A block with cached children is never evicted before them, so
//!   every cached block stays reachable from the root: no memory is held by unreachable chains.
//! - **Copies, not pages**: each running sequence keeps its own contiguous [`KvCache`]; a hit
//!   copies the blocks into the new sequence's buffers, and a finished prefill or sequence
//!   copies its new full blocks out. A copy costs a memcpy of the keys and values, far less
//!   than the forward that would recompute them, and the attention code stays unchanged (no
//!   paged attention).
//!
//! The budget bounds the cached blocks only; the running sequences' own caches come on top
//! (bounded by `max_num_seqs` × `max_model_len`).

use std::collections::{BTreeSet, HashMap};

use claas_model::{KvBlock, KvCache};

/// Tokens per cached block.
pub(crate) const BLOCK_SIZE: usize = 16;

/// What computed a block besides its tokens: 0 for the base model, else the adapter's load
/// generation.
pub(crate) type Identity = u64;

/// A block's identity in the cache: its parent (0 = the start of the sequence), what computed
/// it and its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: u64,
    identity: Identity,
    tokens: [u32; BLOCK_SIZE],
}

struct Block {
    key: Key,
    kv: KvBlock,
    bytes: usize,
    /// Cached blocks whose parent this is; only blocks without children are evicted.
    children: usize,
    last_use: u64,
}

/// The block store, owned by the engine thread.
pub(crate) struct PrefixCache {
    budget: usize,
    used: usize,
    next_id: u64,
    clock: u64,
    index: HashMap<Key, u64>,
    blocks: HashMap<u64, Block>,
    /// Blocks without children, least recently used first: the eviction order.
    leaves: BTreeSet<(u64, u64)>,
}

impl PrefixCache {
    /// An empty cache that holds at most `budget` bytes of keys and values.
    pub fn new(budget: usize) -> Self {
        PrefixCache {
            budget,
            used: 0,
            next_id: 1,
            clock: 0,
            index: HashMap::new(),
            blocks: HashMap::new(),
            leaves: BTreeSet::new(),
        }
    }

    /// Bytes of keys and values held.
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// Number of blocks held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Drops every block.
    pub fn clear(&mut self) {
        self.index.clear();
        self.blocks.clear();
        self.leaves.clear();
        self.used = 0;
    }

    fn key(parent: u64, identity: Identity, tokens: &[u32]) -> Option<Key> {
        Some(Key {
            parent,
            identity,
            tokens: tokens.try_into().ok()?,
        })
    }

    fn touch(&mut self, id: u64) {
        self.clock += 1;
        let now = self.clock;
        if let Some(b) = self.blocks.get_mut(&id) {
            if b.children == 0 {
                self.leaves.remove(&(b.last_use, id));
                self.leaves.insert((now, id));
            }
            b.last_use = now;
        }
    }

    /// The longest chain of cached blocks that `tokens` starts with (whole blocks only), as
    /// block ids from the first; marks them used.
    pub fn lookup(&mut self, identity: Identity, tokens: &[u32]) -> Vec<u64> {
        let mut chain = Vec::new();
        let mut parent = 0;
        for block in tokens.chunks_exact(BLOCK_SIZE) {
            let Some(key) = Self::key(parent, identity, block) else {
                break;
            };
            let Some(&id) = self.index.get(&key) else {
                break;
            };
            chain.push(id);
            parent = id;
        }
        for &id in &chain {
            self.touch(id);
        }
        chain
    }

    /// Seeds a sequence's cache with the blocks of `chain` (from [`PrefixCache::lookup`]),
    /// with room for `reserve` more positions.
    pub fn seed(&self, chain: &[u64], reserve: usize) -> claas_model::Result<KvCache> {
        let blocks: Vec<&KvBlock> = chain
            .iter()
            .filter_map(|id| self.blocks.get(id).map(|b| &b.kv))
            .collect();
        if blocks.len() != chain.len() {
            return Err(claas_model::ModelError::Config(
                "a prefix-cache block vanished between lookup and seeding".into(),
            ));
        }
        KvCache::from_blocks(&blocks, reserve)
    }

    /// Caches the full blocks of `tokens` whose keys and values `cache` holds (positions
    /// `0..cache.len()`), reusing those already cached, evicting least recently used leaves to
    /// stay within the budget. Stops at the first block that does not fit.
    pub fn insert(
        &mut self,
        identity: Identity,
        tokens: &[u32],
        cache: &KvCache,
    ) -> claas_model::Result<()> {
        let full = tokens.len().min(cache.len()) / BLOCK_SIZE;
        let mut parent = 0;
        for (i, block) in tokens.chunks_exact(BLOCK_SIZE).take(full).enumerate() {
            let Some(key) = Self::key(parent, identity, block) else {
                break;
            };
            if let Some(&id) = self.index.get(&key) {
                self.touch(id);
                parent = id;
                continue;
            }
            let kv = cache.export(i * BLOCK_SIZE, BLOCK_SIZE)?;
            let bytes: usize = kv
                .iter()
                .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
                .sum();
            if !self.make_room(bytes, parent) {
                break;
            }
            let id = self.next_id;
            self.next_id += 1;
            if let Some(p) = self.blocks.get_mut(&parent) {
                if p.children == 0 {
                    self.leaves.remove(&(p.last_use, parent));
                }
                p.children += 1;
            }
            self.clock += 1;
            self.index.insert(key.clone(), id);
            self.leaves.insert((self.clock, id));
            self.blocks.insert(
                id,
                Block {
                    key,
                    kv,
                    bytes,
                    children: 0,
                    last_use: self.clock,
                },
            );
            self.used += bytes;
            parent = id;
        }
        Ok(())
    }

    /// Evicts least recently used leaves (never `keep`, the parent about to get a child) until
    /// `bytes` more fit. False if they cannot.
    fn make_room(&mut self, bytes: usize, keep: u64) -> bool {
        if bytes > self.budget {
            return false;
        }
        while self.used + bytes > self.budget {
            let Some(&(tick, id)) = self.leaves.iter().find(|&&(_, id)| id != keep) else {
                return false;
            };
            self.leaves.remove(&(tick, id));
            let Some(b) = self.blocks.remove(&id) else {
                continue;
            };
            self.index.remove(&b.key);
            self.used -= b.bytes;
            if let Some(p) = self.blocks.get_mut(&b.key.parent) {
                p.children -= 1;
                if p.children == 0 {
                    self.leaves.insert((p.last_use, b.key.parent));
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use claas_model::{LoadOptions, Qwen3, SeqInput};

    fn model() -> Qwen3 {
        let dir = claas_model::resolve_model("builtin:tiny").unwrap();
        Qwen3::load(&dir, &LoadOptions::default()).unwrap()
    }

    /// The cache of `tokens` run through the model in one chunk.
    fn filled(m: &Qwen3, tokens: &[u32]) -> KvCache {
        let mut cache = KvCache::new();
        m.forward_batch(&mut [SeqInput {
            tokens,
            cache: &mut cache,
            adapter: None,
            all_logits: false,
        }])
        .unwrap();
        cache
    }

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| 1 + (i * 7 + salt) % 200).collect()
    }

    #[test]
    fn finds_the_longest_cached_prefix_of_whole_blocks() {
        let m = model();
        let mut pc = PrefixCache::new(usize::MAX);
        let a = toks(3 * BLOCK_SIZE + 5, 0);
        pc.insert(0, &a, &filled(&m, &a)).unwrap();
        assert_eq!(pc.len(), 3);
        // Same first two blocks, then different tokens.
        let mut b = a[..2 * BLOCK_SIZE].to_vec();
        b.extend(toks(BLOCK_SIZE + 1, 99));
        assert_eq!(pc.lookup(0, &b).len(), 2);
        // A different first token shares nothing, even though later blocks are equal.
        let mut c = a.clone();
        c[0] += 1;
        assert!(pc.lookup(0, &c).is_empty());
        // Another identity (an adapter, or another load of one) shares nothing.
        assert!(pc.lookup(7, &a).is_empty());
        // Inserting b again reuses the shared blocks.
        pc.insert(0, &b, &filled(&m, &b)).unwrap();
        assert_eq!(pc.len(), 4);
    }

    #[test]
    fn seeded_cache_holds_the_same_keys_and_values() {
        let m = model();
        let mut pc = PrefixCache::new(usize::MAX);
        let a = toks(2 * BLOCK_SIZE, 3);
        let full = filled(&m, &a);
        pc.insert(0, &a, &full).unwrap();
        let chain = pc.lookup(0, &a);
        let seeded = pc.seed(&chain, 10).unwrap();
        assert_eq!(seeded.len(), 2 * BLOCK_SIZE);
        let want = full.export(0, 2 * BLOCK_SIZE).unwrap();
        let got = seeded.export(0, 2 * BLOCK_SIZE).unwrap();
        let flat = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(want.len(), got.len());
        for ((wk, wv), (gk, gv)) in want.iter().zip(&got) {
            assert_eq!(flat(wk), flat(gk));
            assert_eq!(flat(wv), flat(gv));
        }
    }

    #[test]
    fn evicts_leaves_first_within_the_budget() {
        let m = model();
        let a = toks(3 * BLOCK_SIZE, 1);
        let cache = filled(&m, &a);
        let block_bytes = {
            let mut probe = PrefixCache::new(usize::MAX);
            probe.insert(0, &a[..BLOCK_SIZE], &cache).unwrap();
            probe.used_bytes()
        };
        // Room for two blocks: a three-block chain keeps its first two.
        let mut pc = PrefixCache::new(2 * block_bytes);
        pc.insert(0, &a, &cache).unwrap();
        assert_eq!(pc.len(), 2);
        assert_eq!(pc.lookup(0, &a).len(), 2);
        // A new chain evicts the old chain's leaf first, then the rest of the old chain, and
        // never the parent it extends.
        let b = toks(2 * BLOCK_SIZE, 50);
        pc.insert(0, &b, &filled(&m, &b)).unwrap();
        assert!(pc.used_bytes() <= 2 * block_bytes);
        assert_eq!(pc.lookup(0, &b).len(), 2);
        assert!(pc.lookup(0, &a).is_empty());
        // Nothing fits in a budget below one block.
        let mut tiny = PrefixCache::new(block_bytes - 1);
        tiny.insert(0, &a, &cache).unwrap();
        assert_eq!((tiny.len(), tiny.used_bytes()), (0, 0));
    }

    #[test]
    fn a_parent_outlives_its_children_under_eviction() {
        let m = model();
        let trunk = toks(BLOCK_SIZE, 4);
        let mut pc = PrefixCache::new(usize::MAX);
        let mut branches = Vec::new();
        for salt in [10, 20] {
            let mut t = trunk.clone();
            t.extend(toks(BLOCK_SIZE, salt));
            pc.insert(0, &t, &filled(&m, &t)).unwrap();
            branches.push(t);
        }
        assert_eq!(pc.len(), 3);
        // The trunk was used least recently, yet it has children: the older branch goes.
        pc.budget = pc.used_bytes() - 1;
        assert!(pc.make_room(0, 0));
        assert_eq!(pc.len(), 2);
        assert_eq!(pc.lookup(0, &branches[0]).len(), 1);
        assert_eq!(pc.lookup(0, &branches[1]).len(), 2);
        // Evicting everything ends with the trunk, once it is a leaf again.
        pc.budget = 0;
        assert!(pc.make_room(0, 0));
        assert_eq!((pc.len(), pc.used_bytes()), (0, 0));
    }
}
