//! claas-constrain: constrained decoding with llguidance (the engine behind vLLM's and
//! llama.cpp's structured output). A [`Constrainer`] is built once per model from its
//! tokenizer; it compiles a [`Constraint`] (JSON schema, any JSON object, regex, choice list,
//! Lark grammar) into a [`Grammar`], and every generated sequence runs its own [`Matcher`]:
//! [`Matcher::compute_mask`] gives the tokens allowed next, [`Matcher::commit`] advances past
//! the sampled one, and [`Matcher::is_done`] says the grammar is complete.
//!
//! The tokenizer environment is ours rather than `toktrie_hf_tokenizers`': that crate pins
//! `tokenizers` 0.21, a second copy of a heavy crate next to our 0.22. Token bytes come from
//! llguidance's own tokenizer.json reader (byte-level BPE and byte-fallback vocabularies).

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{ParserFactory, TokenParser};
use serde_json::{json, Value};

/// Failures of building, compiling or running a constraint.
#[derive(Debug, thiserror::Error)]
pub enum ConstrainError {
    /// The tokenizer's vocabulary could not be turned into token bytes.
    #[error("the tokenizer cannot be used for constrained decoding: {0}")]
    Tokenizer(String),
    /// The schema, regex or grammar is invalid or unsupported (a client error).
    #[error("{0}")]
    Compile(String),
    /// The matcher refused a token or failed inside (a server-side failure).
    #[error("constrained decoding failed: {0}")]
    Matcher(String),
}

type Result<T> = std::result::Result<T, ConstrainError>;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A JSON document valid under this JSON schema.
    JsonSchema(Value),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// A string matching this regular expression (Rust `regex` syntax), whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark syntax.
    Lark(String),
}

/// Our tokenizer environment: the trie of token bytes, and the HF tokenizer for the canonical
/// tokenization of forced text.
struct Env {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.tokenize_with_greedy_fallback(s, |s| {
            self.tokenizer
                .encode_fast(s, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s.as_bytes()))
        })
    }
}

/// Compiles constraints for one model's vocabulary; cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct Constrainer {
    factory: Arc<ParserFactory>,
    eos: u32,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrainer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Constrainer {
    /// Builds the token trie of `tokenizer` padded to the model's `vocab_size` (ids the
    /// tokenizer lacks have no bytes and are never allowed); `eos` is the token the grammar
    /// allows once it is complete.
    pub fn new(tokenizer: &tokenizers::Tokenizer, vocab_size: usize, eos: u32) -> Result<Self> {
        let bad = |m: String| ConstrainError::Tokenizer(m);
        let text = tokenizer.to_string(false).map_err(|e| bad(e.to_string()))?;
        let doc: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        // llguidance's reader asserts on vocabularies it does not expect; a tokenizer that
        // trips it is refused, not a crash.
        let words = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&doc))
            .map_err(|_| bad("unexpected vocabulary layout".into()))?
            .map_err(|e| bad(e.to_string()))?;
        Self::from_token_bytes(words, tokenizer.clone(), vocab_size, eos)
    }

    fn from_token_bytes(
        mut words: Vec<Vec<u8>>,
        tokenizer: tokenizers::Tokenizer,
        vocab_size: usize,
        eos: u32,
    ) -> Result<Self> {
        let bad = |m: String| ConstrainError::Tokenizer(m);
        if words.len() > vocab_size {
            return Err(bad(format!(
                "the tokenizer has {} tokens, more than the model's {vocab_size}",
                words.len()
            )));
        }
        if eos as usize >= vocab_size {
            return Err(bad(format!("eos token {eos} is out of vocabulary")));
        }
        words.resize(vocab_size, Vec::new());
        let info = TokRxInfo::new(vocab_size as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| bad(e.to_string()))?;
        factory.quiet();
        Ok(Constrainer {
            factory: Arc::new(factory),
            eos,
        })
    }

    /// Size of the masks this constrainer produces.
    pub fn vocab_size(&self) -> usize {
        self.factory.tok_env().tok_trie().vocab_size()
    }

    /// Compiles `c`; an invalid schema, regex or grammar is a [`ConstrainError::Compile`].
    pub fn compile(&self, c: &Constraint) -> Result<Grammar> {
        let grammar = match c {
            Constraint::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(compact_json(schema.clone())?)
            }
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(compact_json(json!({"type": "object"}))?)
            }
            Constraint::Regex(rx) => {
                // llguidance accepts some syntax `regex` refuses and the reverse; checking with
                // the crate whose syntax we document gives the client its error message.
                regex::Regex::new(rx).map_err(|e| ConstrainError::Compile(e.to_string()))?;
                TopLevelGrammar::from_regex(rx)
            }
            Constraint::Choice(options) => {
                if options.is_empty() {
                    return Err(ConstrainError::Compile(
                        "the choice list must not be empty".into(),
                    ));
                }
                let alts: Vec<String> = options.iter().map(|o| regex::escape(o)).collect();
                TopLevelGrammar::from_regex(&format!("(?:{})", alts.join("|")))
            }
            Constraint::Lark(g) => {
                if g.trim().is_empty() {
                    return Err(ConstrainError::Compile("the grammar is empty".into()));
                }
                TopLevelGrammar::from_lark(g.clone())
            }
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstrainError::Compile(e.to_string()))?;
        Ok(Grammar {
            parser: Arc::new(parser),
            eos: self.eos,
        })
    }
}

/// JSON without free whitespace (`{"a":1,"b":[2,3]}`): a model cannot spend its tokens on
/// indentation, and a random one cannot loop on it. A schema that brings its own llguidance
/// options (`x-guidance`) keeps them.
fn compact_json(mut schema: Value) -> Result<Value> {
    match &mut schema {
        Value::Object(m) => {
            m.entry("x-guidance").or_insert_with(|| {
                json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"})
            });
            Ok(schema)
        }
        Value::Bool(true) => compact_json(json!({})),
        _ => Err(ConstrainError::Compile(
            "a JSON schema must be an object".into(),
        )),
    }
}

/// A compiled constraint; each sequence gets its own [`Matcher`] from it.
#[derive(Clone)]
pub struct Grammar {
    parser: Arc<TokenParser>,
    eos: u32,
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Grammar")
    }
}

impl Grammar {
    /// A fresh matcher at the start of the output.
    pub fn matcher(&self) -> Matcher {
        Matcher {
            inner: llguidance::Matcher::new(Ok(self.parser.deep_clone())),
            eos: self.eos,
        }
    }
}

/// One sequence's position in the grammar.
pub struct Matcher {
    inner: llguidance::Matcher,
    eos: u32,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("done", &self.is_done())
            .finish()
    }
}

impl Matcher {
    /// The tokens allowed next (EOS only where the grammar may end).
    pub fn compute_mask(&mut self) -> Result<Mask> {
        let vob = self
            .inner
            .compute_mask()
            .map_err(|e| ConstrainError::Matcher(e.to_string()))?;
        Ok(Mask { vob, eos: self.eos })
    }

    /// Advances past `token`, which must be allowed by the last mask.
    pub fn commit(&mut self, token: u32) -> Result<()> {
        self.inner
            .consume_token(token)
            .map_err(|e| ConstrainError::Matcher(e.to_string()))
    }

    /// The grammar is complete and nothing may follow: the sequence ends here.
    pub fn is_done(&self) -> bool {
        self.inner.is_stopped()
    }
}

/// Allowed next tokens, one bit per vocabulary entry.
#[derive(Clone)]
pub struct Mask {
    vob: SimpleVob,
    eos: u32,
}

impl std::fmt::Debug for Mask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mask")
            .field("allowed", &self.vob.num_set())
            .finish()
    }
}

impl Mask {
    /// Whether `token` may come next.
    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.vob.len() && self.vob.is_allowed(token)
    }

    /// Whether the output may end here.
    pub fn allows_eos(&self) -> bool {
        self.allows(self.eos)
    }

    /// Number of allowed tokens.
    pub fn count(&self) -> usize {
        self.vob.num_set()
    }

    /// The allowed token ids, ascending.
    pub fn allowed(&self) -> Vec<u32> {
        self.vob.to_list()
    }

    /// Sets the logits of disallowed tokens to -inf. Every id of `eos_ids` (a model may have
    /// several end tokens, the trie knows one) follows the grammar's EOS bit.
    pub fn apply(&self, logits: &mut [f32], eos_ids: &[u32]) {
        let eos_ok = self.allows_eos();
        let saved: Vec<(usize, f32)> = eos_ids
            .iter()
            .filter_map(|&t| logits.get(t as usize).map(|&l| (t as usize, l)))
            .collect();
        let words = self.vob.as_slice();
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (b, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << b) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        for (t, l) in saved {
            logits[t] = if eos_ok { l } else { f32::NEG_INFINITY };
        }
    }
}
