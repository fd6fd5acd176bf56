use std::path::Path;
use std::sync::Arc;

use crate::error::{ChatError, Result};

/// A HF `tokenizers` tokenizer (tokenizer.json); encodes exactly like Python `tokenizers`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ChatError {
    ChatError::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Load a tokenizer.json file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = read_text(path)?;
        Self::from_json_str(&text).map_err(|e| match e {
            ChatError::BadJson { message, .. } => ChatError::BadJson {
                what: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parse tokenizer.json content.
    pub fn from_json_str(json: &str) -> Result<Self> {
        // Check plain JSON first so a syntax error is reported as such, not as a schema error.
        serde_json::from_str::<serde_json::Value>(json)
            .map_err(|e| ChatError::bad_json("tokenizer.json", e))?;
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| ChatError::bad_json("tokenizer.json", e))?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Token ids of `text`. Added tokens such as `<|im_start|>` are always matched as one token;
    /// `add_special_tokens` only controls the post-processor (BOS/EOS templates).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; invalid UTF-8 (e.g. half a character) becomes U+FFFD like Python.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(tok_err)
    }

    /// Id of a token string (vocab or added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id (vocab or added token).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens including added tokens (Python `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is an added token flagged `special` (skipped by `skip_special_tokens`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .map(|t| self.inner.get_added_vocabulary().is_special_token(&t))
            .unwrap_or(false)
    }

    /// The underlying HF tokenizer, for callers needing more than this wrapper offers.
    pub fn hf(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ChatError::MissingFile(path.to_path_buf()))
        }
        Err(e) => Err(ChatError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Streaming detokenizer: feed generated ids one by one, get text once it is complete UTF-8.
///
/// Byte-level BPE can split one character over several tokens, so decoding token by token would
/// emit U+FFFD. Like vLLM/TGI we decode a small window `ids[prefix_offset..]` and emit only the
/// part beyond the previously emitted text, and only when it does not end in U+FFFD.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// A decoder with no prior context.
    pub fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    /// A decoder that continues after `prompt_ids` (their text is never emitted). vLLM keeps the
    /// last 5 prompt tokens as context so word-initial spaces decode as they would in the full text.
    pub fn with_prompt(
        tokenizer: Tokenizer,
        skip_special_tokens: bool,
        prompt_ids: &[u32],
    ) -> Self {
        let start = prompt_ids.len().saturating_sub(5);
        let ids = prompt_ids[start..].to_vec();
        Self {
            tokenizer,
            skip_special_tokens,
            prefix_offset: 0,
            read_offset: ids.len(),
            ids,
        }
    }

    /// Add one generated id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        self.step()
    }

    /// Add several ids; returns the newly completed text.
    pub fn push_many(&mut self, ids: &[u32]) -> Result<String> {
        self.ids.extend_from_slice(ids);
        self.step()
    }

    fn step(&mut self) -> Result<String> {
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            if let Some(new) = full.get(prefix.len()..) {
                let new = new.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(new);
            }
        }
        Ok(String::new())
    }

    /// Text still held back (an incomplete character at the end, shown as U+FFFD). vLLM drops
    /// it; call this only if the caller wants it emitted at end of stream.
    pub fn flush(&mut self) -> Result<String> {
        let prefix = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or("").to_string())
    }
}
