//! Parity with transformers / tokenizers outputs recorded in the shared fixtures.

use std::path::PathBuf;

use claas_chat::{ChatTemplate, Tokenizer, TokenizerConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
}

fn load_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tokenizer_dir(kind: &str) -> PathBuf {
    match kind {
        "qwen3" => fixtures().join("qwen3-tokenizer"),
        "tiny" => fixtures().join("tiny-qwen3"),
        other => panic!("unknown tokenizer {other}"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn chat_template_parity_all_cases() {
    let fx = load_json("chat_template.json");
    let cases = fx["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for case in cases {
        let name = format!(
            "{}/{}",
            case["name"].as_str().unwrap(),
            case["tokenizer"].as_str().unwrap()
        );
        let dir = tokenizer_dir(case["tokenizer"].as_str().unwrap());
        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let cfg = TokenizerConfig::from_dir(&dir).unwrap();
        let tmpl = ChatTemplate::from_config(&cfg).unwrap();
        let messages = case["messages"].as_array().unwrap();
        let tools = case["tools"].as_array().map(|t| t.as_slice());
        let kwargs = case["chat_template_kwargs"].as_object();
        let text = tmpl
            .render(
                messages,
                tools,
                case["add_generation_prompt"].as_bool().unwrap(),
                kwargs,
            )
            .unwrap();
        let want_text = case["expected_text"].as_str().unwrap();
        if text != want_text {
            failures.push(format!("{name}: text\n got {text:?}\nwant {want_text:?}"));
            continue;
        }
        // The fixture encodes with add_special_tokens=False.
        let got_ids = tok.encode(&text, false).unwrap();
        if got_ids != ids(&case["expected_ids"]) {
            failures.push(format!(
                "{name}: ids\n got {got_ids:?}\nwant {:?}",
                ids(&case["expected_ids"])
            ));
        }
        // Decoding the ids gives the text back (no special-token skipping).
        assert_eq!(tok.decode(&got_ids, false).unwrap(), text, "{name}: decode");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn forward_sequences_tokenize_parity() {
    let fx = load_json("forward.json");
    let tok = Tokenizer::from_file(fixtures().join("tiny-qwen3/tokenizer.json")).unwrap();
    let seqs = fx["sequences"].as_array().unwrap();
    assert!(!seqs.is_empty());
    for (i, s) in seqs.iter().enumerate() {
        let text = s["text"].as_str().unwrap();
        let want = ids(&s["input_ids"]);
        // The tiny tokenizer's post-processor adds nothing, so both settings must agree.
        assert_eq!(tok.encode(text, false).unwrap(), want, "sequence {i}");
        assert_eq!(tok.encode(text, true).unwrap(), want, "sequence {i}");
        assert_eq!(tok.decode(&want, false).unwrap(), text, "sequence {i}");
    }
}

#[test]
fn tiny_vocab_size_parity() {
    // README: len(tokenizer) = 1005 = config.vocab_size.
    let cfg = load_json("tiny-qwen3/config.json");
    let tok = Tokenizer::from_file(fixtures().join("tiny-qwen3/tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size() as u64, cfg["vocab_size"].as_u64().unwrap());
}
