//! The builtin tokenizer files.

use claas_chat::{builtin, ChatTemplate, GenerationConfig, Tokenizer, TokenizerConfig};
use serde_json::json;

fn tok() -> Tokenizer {
    Tokenizer::from_json_str(&builtin::tokenizer_json()).unwrap()
}

#[test]
fn vocab_size_and_special_ids() {
    let t = tok();
    assert_eq!(t.vocab_size(), builtin::VOCAB_SIZE);
    for (i, (content, special)) in builtin::SPECIAL_TOKENS.iter().enumerate() {
        let id = builtin::FIRST_SPECIAL_ID + i as u32;
        assert_eq!(t.token_to_id(content), Some(id), "{content}");
        assert_eq!(t.id_to_token(id).as_deref(), Some(*content));
        assert_eq!(t.is_special(id), *special, "{content}");
    }
    assert_eq!(t.token_to_id("<|im_start|>"), Some(builtin::IM_START_ID));
    assert_eq!(t.token_to_id("<|im_end|>"), Some(builtin::IM_END_ID));
    assert_eq!(t.token_to_id("<|endoftext|>"), Some(builtin::ENDOFTEXT_ID));
    // Every id below the vocab size decodes to a token: no holes for the embedding table.
    for id in 0..builtin::VOCAB_SIZE as u32 {
        assert!(t.id_to_token(id).is_some(), "hole at {id}");
    }
}

/// Small deterministic generator so the round-trip covers many strings without a rand dep.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn round_trips_utf8_text() {
    let t = tok();
    let fixed = [
        "",
        "hello world",
        "  leading and trailing  \n\n\tTabs\r\n",
        "Café, naïve — Zürich 🚀? 日本語のテキスト, Привет мир, 👩‍👩‍👧",
        "def f(x):\n    return x ** 2  # square\n",
        "<|im_start|>user\nhi<|im_end|>\n<think>\nok\n</think>",
        "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
    ];
    for s in fixed {
        let ids = t.encode(s, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), s);
    }
    // NFC-stable ranges only: the normalizer (like Qwen's) composes decomposed input.
    let ranges: [(u32, u32); 6] = [
        (0x20, 0x7e),
        (0x0a, 0x0a),
        (0xc0, 0xff),
        (0x410, 0x44f),
        (0x4e00, 0x9fff),
        (0x1f600, 0x1f64f),
    ];
    let mut rng = Lcg(42);
    for _ in 0..300 {
        let len = (rng.next() % 40) as usize;
        let s: String = (0..len)
            .map(|_| {
                let (lo, hi) = ranges[(rng.next() % ranges.len() as u64) as usize];
                char::from_u32(lo + (rng.next() as u32) % (hi - lo + 1)).unwrap()
            })
            .collect();
        let ids = t.encode(&s, false).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), s, "{s:?}");
    }
}

#[test]
fn merges_compress_english() {
    let t = tok();
    let text = "The assistant writes a function that returns the answer to the user.";
    let ids = t.encode(text, false).unwrap();
    assert!(
        ids.len() * 2 < text.len(),
        "{} ids for {} bytes",
        ids.len(),
        text.len()
    );
}

#[test]
fn chat_template_renders_to_special_token_ids() {
    let t = tok();
    let cfg = TokenizerConfig::from_json_str(&builtin::tokenizer_config_json()).unwrap();
    assert_eq!(cfg.eos_token.as_deref(), Some("<|im_end|>"));
    assert_eq!(cfg.pad_token.as_deref(), Some("<|endoftext|>"));
    assert_eq!(cfg.bos_token, None);
    assert_eq!(
        cfg.added_tokens_decoder.len(),
        builtin::SPECIAL_TOKENS.len()
    );
    let tmpl = ChatTemplate::from_config(&cfg).unwrap();
    let messages = vec![
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": "Hi there"}),
    ];
    let text = tmpl.render(&messages, None, true, None).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = t.encode(&text, false).unwrap();
    assert_eq!(ids[0], builtin::IM_START_ID);
    let starts = ids.iter().filter(|&&i| i == builtin::IM_START_ID).count();
    let ends = ids.iter().filter(|&&i| i == builtin::IM_END_ID).count();
    assert_eq!((starts, ends), (3, 2));
    assert_eq!(t.decode(&ids, false).unwrap(), text);
    assert_eq!(
        t.decode(&ids, true).unwrap(),
        "system\nBe brief.\nuser\nHi there\nassistant\n"
    );
}

#[test]
fn generation_config_stops_on_im_end() {
    let g = GenerationConfig::from_json_str(&builtin::generation_config_json()).unwrap();
    assert_eq!(
        g.eos_token_ids(),
        &[builtin::IM_END_ID, builtin::ENDOFTEXT_ID]
    );
    assert_eq!(g.pad_token_id, Some(builtin::ENDOFTEXT_ID));
}

#[test]
fn template_is_qwen3_verbatim() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/qwen3-tokenizer/tokenizer_config.json"
    );
    let cfg = TokenizerConfig::from_file(path).unwrap();
    assert_eq!(cfg.chat_template(None).unwrap(), builtin::CHAT_TEMPLATE);
}

#[test]
fn builtin_ids_match_python_tokenizers() {
    // Recorded with Python tokenizers 0.23.3: Tokenizer.from_file(<builtin tokenizer.json>)
    // .encode(TEXT, add_special_tokens=False).ids. Changes whenever the pinned builtin changes.
    const TEXT: &str =
        "<|im_start|>user\nCafé, naïve — Zürich 🚀? def f(x):\n    return x<|im_end|>\n<think>";
    const IDS: [u32; 41] = [
        992, 84, 336, 198, 34, 64, 69, 127, 102, 11, 302, 64, 127, 107, 339, 220, 158, 222, 242,
        220, 57, 127, 120, 414, 496, 220, 172, 253, 248, 222, 30, 453, 272, 764, 328, 264, 342,
        528, 993, 198, 994,
    ];
    assert_eq!(tok().encode(TEXT, false).unwrap(), IDS);
}
