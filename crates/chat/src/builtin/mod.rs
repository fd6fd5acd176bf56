//! A small built-in byte-level BPE tokenizer (Qwen2/3 pipeline, ~1000 tokens) with Qwen3's chat
//! template, so the server can run a builtin model without downloading anything.
//!
//! The merges are learned at first use by a deterministic BPE trainer over [`CORPUS`]; the
//! output never changes between runs or machines.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use tokenizers::{
    NormalizedString, Normalizer, NormalizerWrapper, OffsetReferential, OffsetType,
    PreTokenizedString, PreTokenizer, PreTokenizerWrapper,
};

/// Training text (English prose, code, chat and tool-call snippets). ASCII only.
pub const CORPUS: &str = include_str!("corpus.txt");

/// Qwen3's chat template, verbatim.
pub const CHAT_TEMPLATE: &str = include_str!("qwen3_chat_template.jinja");

/// Added tokens, in id order, at the end of the vocabulary: `(content, special)`. The flags
/// follow Qwen3's tokenizer.json (only the first three are special, i.e. skipped on decode).
pub const SPECIAL_TOKENS: [(&str, bool); 9] = [
    ("<|endoftext|>", true),
    ("<|im_start|>", true),
    ("<|im_end|>", true),
    ("<think>", false),
    ("</think>", false),
    ("<tool_call>", false),
    ("</tool_call>", false),
    ("<tool_response>", false),
    ("</tool_response>", false),
];

/// Total number of tokens (256 bytes + learned merges + [`SPECIAL_TOKENS`]).
pub const VOCAB_SIZE: usize = 1000;

/// Id of the first added token (`<|endoftext|>`); the others follow in [`SPECIAL_TOKENS`] order.
pub const FIRST_SPECIAL_ID: u32 = (VOCAB_SIZE - SPECIAL_TOKENS.len()) as u32;
/// `<|endoftext|>` (also the pad token).
pub const ENDOFTEXT_ID: u32 = FIRST_SPECIAL_ID;
/// `<|im_start|>`.
pub const IM_START_ID: u32 = FIRST_SPECIAL_ID + 1;
/// `<|im_end|>` (the eos token).
pub const IM_END_ID: u32 = FIRST_SPECIAL_ID + 2;

/// Qwen2/Qwen3's pre-tokenizer split regex.
const SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn normalizer_json() -> Value {
    json!({"type": "NFC"})
}

fn pre_tokenizer_json() -> Value {
    json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": SPLIT_REGEX}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]
    })
}

fn byte_level_json() -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false})
}

/// GPT-2's byte-to-character table, ordered by character as in GPT-2/Qwen vocabularies
/// (so `!` is id 0, `Ġ` (space) is 220 and `Ċ` (newline) is 198).
fn byte_alphabet() -> Vec<char> {
    let mut chars: Vec<char> = Vec::with_capacity(256);
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        if printable {
            chars.push(char::from_u32(b).unwrap_or('?'));
        } else {
            chars.push(char::from_u32(256 + extra).unwrap_or('?'));
            extra += 1;
        }
    }
    chars.sort_unstable();
    chars
}

struct Trained {
    vocab: Vec<String>,
    merges: Vec<(String, String)>,
}

/// Byte-level pre-tokens of the corpus with their counts, split exactly as encoding splits.
fn corpus_words() -> BTreeMap<String, u64> {
    let normalizer: NormalizerWrapper =
        serde_json::from_value(normalizer_json()).expect("builtin normalizer JSON is valid");
    let pre: PreTokenizerWrapper =
        serde_json::from_value(pre_tokenizer_json()).expect("builtin pre-tokenizer JSON is valid");
    let mut normalized = NormalizedString::from(CORPUS);
    normalizer
        .normalize(&mut normalized)
        .expect("NFC normalization cannot fail");
    let mut pts = PreTokenizedString::from(normalized);
    pre.pre_tokenize(&mut pts)
        .expect("pre-tokenizing the builtin corpus cannot fail");
    let mut words = BTreeMap::new();
    for (s, _, _) in pts.get_splits(OffsetReferential::Original, OffsetType::Byte) {
        *words.entry(s.to_string()).or_insert(0u64) += 1;
    }
    words
}

/// Classic BPE training: repeatedly merge the most frequent adjacent pair (ties: the
/// lexicographically smallest pair) until the model vocabulary has `target` tokens.
fn train(target: usize) -> Trained {
    let mut vocab: Vec<String> = byte_alphabet().iter().map(|c| c.to_string()).collect();
    let mut index: HashMap<String, u32> = vocab
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), i as u32))
        .collect();
    let mut words: Vec<(Vec<u32>, u64)> = corpus_words()
        .into_iter()
        .map(|(w, n)| {
            let ids = w
                .chars()
                .map(|c| index.get(&c.to_string()).copied().unwrap_or(0))
                .collect();
            (ids, n)
        })
        .collect();
    let mut merges = Vec::new();
    while vocab.len() < target {
        let mut counts: HashMap<(u32, u32), u64> = HashMap::new();
        for (ids, n) in &words {
            for w in ids.windows(2) {
                *counts.entry((w[0], w[1])).or_insert(0) += n;
            }
        }
        let best = counts.into_iter().max_by(|(pa, ca), (pb, cb)| {
            ca.cmp(cb).then_with(|| {
                let ka = (&vocab[pa.0 as usize], &vocab[pa.1 as usize]);
                let kb = (&vocab[pb.0 as usize], &vocab[pb.1 as usize]);
                kb.cmp(&ka)
            })
        });
        let Some(((a, b), _)) = best else { break };
        let merged = format!("{}{}", vocab[a as usize], vocab[b as usize]);
        let id = match index.get(&merged) {
            Some(&id) => id,
            None => {
                let id = vocab.len() as u32;
                vocab.push(merged.clone());
                index.insert(merged, id);
                id
            }
        };
        merges.push((vocab[a as usize].clone(), vocab[b as usize].clone()));
        for (ids, _) in &mut words {
            let mut out = Vec::with_capacity(ids.len());
            let mut i = 0;
            while i < ids.len() {
                if i + 1 < ids.len() && ids[i] == a && ids[i + 1] == b {
                    out.push(id);
                    i += 2;
                } else {
                    out.push(ids[i]);
                    i += 1;
                }
            }
            *ids = out;
        }
    }
    Trained { vocab, merges }
}

fn added_token_json(id: u32, content: &str, special: bool) -> Value {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special
    })
}

fn build_tokenizer_json() -> String {
    let t = train(VOCAB_SIZE - SPECIAL_TOKENS.len());
    let mut vocab = Map::new();
    for (i, tok) in t.vocab.iter().enumerate() {
        vocab.insert(tok.clone(), json!(i));
    }
    let first = t.vocab.len() as u32;
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, (c, s))| added_token_json(first + i as u32, c, *s))
        .collect();
    let merges: Vec<Value> = t.merges.iter().map(|(a, b)| json!([a, b])).collect();
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer_json(),
        "pre_tokenizer": pre_tokenizer_json(),
        "post_processor": byte_level_json(),
        "decoder": byte_level_json(),
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    });
    serde_json::to_string_pretty(&doc).expect("serializing a serde_json::Value cannot fail")
}

/// The builtin tokenizer.json (HF `tokenizers` format, loadable from Python too).
pub fn tokenizer_json() -> String {
    static CACHE: OnceLock<String> = OnceLock::new();
    CACHE.get_or_init(build_tokenizer_json).clone()
}

/// The builtin tokenizer_config.json: Qwen3 chat template, eos `<|im_end|>`, pad `<|endoftext|>`.
pub fn tokenizer_config_json() -> String {
    let mut decoder = Map::new();
    for (i, (c, s)) in SPECIAL_TOKENS.iter().enumerate() {
        decoder.insert(
            (FIRST_SPECIAL_ID + i as u32).to_string(),
            json!({
                "content": c,
                "lstrip": false,
                "normalized": false,
                "rstrip": false,
                "single_word": false,
                "special": s
            }),
        );
    }
    let doc = json!({
        "add_bos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "bos_token": null,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": false,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": false,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": null
    });
    serde_json::to_string_pretty(&doc).expect("serializing a serde_json::Value cannot fail")
}

/// A generation_config.json for a builtin model: stop on `<|im_end|>` or `<|endoftext|>`.
pub fn generation_config_json() -> String {
    let doc = json!({
        "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
        "pad_token_id": ENDOFTEXT_ID
    });
    serde_json::to_string_pretty(&doc).expect("serializing a serde_json::Value cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv1a(s: &str) -> u64 {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in s.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        h
    }

    #[test]
    fn training_is_deterministic() {
        let a = build_tokenizer_json();
        let b = build_tokenizer_json();
        assert_eq!(a, b);
        assert_eq!(a, tokenizer_json());
        // Pinned so a change in trainer, corpus or HashMap seeding (which differs per process)
        // shows up: the builtin model's embedding rows are tied to these ids.
        assert_eq!(fnv1a(&a), PINNED_HASH, "builtin tokenizer.json changed");
    }

    #[test]
    fn alphabet_matches_gpt2_order() {
        let a = byte_alphabet();
        assert_eq!(a.len(), 256);
        assert_eq!(a[0], '!');
        assert_eq!(a[198], 'Ċ');
        assert_eq!(a[220], 'Ġ');
    }

    #[test]
    fn corpus_is_ascii() {
        assert!(CORPUS.is_ascii());
    }

    const PINNED_HASH: u64 = 105832991793351708;
}
