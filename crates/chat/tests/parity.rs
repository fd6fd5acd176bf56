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
    // What the model relies on: every id the tokenizer can produce has an embedding row. Real
    // Qwen3 checkpoints pad the embedding past the tokenizer (151,936 rows for 151,669 tokens),
    // so the two sizes need not be equal.
    let cfg = load_json("tiny-qwen3/config.json");
    let tok = Tokenizer::from_file(fixtures().join("tiny-qwen3/tokenizer.json")).unwrap();
    let rows = cfg["vocab_size"].as_u64().unwrap();
    assert!(
        tok.vocab_size() as u64 <= rows,
        "{} > {rows}",
        tok.vocab_size()
    );
    let max_id = tok
        .hf()
        .get_vocab(true)
        .into_values()
        .max()
        .expect("empty vocabulary");
    assert!(
        u64::from(max_id) < rows,
        "token id {max_id} has no embedding row"
    );
}

#[test]
fn distill_step_tokenization_parity() {
    // The reference's student input = encode(prompt, add_special_tokens=True) ++ encode(response);
    // teacher input = chat template over teacher_messages with a generation prompt, then the
    // response ids.
    let fx = load_json("distill_step.json");
    let dir = fixtures().join("tiny-qwen3");
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let tmpl = ChatTemplate::from_config(&TokenizerConfig::from_dir(&dir).unwrap()).unwrap();
    let req = &fx["request"];
    let prompt_ids = tok.encode(req["prompt"].as_str().unwrap(), true).unwrap();
    let response_ids = tok
        .encode(req["response"].as_str().unwrap(), false)
        .unwrap();
    assert_eq!(prompt_ids, ids(&fx["prompt_ids"]));
    assert_eq!(response_ids, ids(&fx["response_ids"]));
    let student: Vec<u32> = prompt_ids.iter().chain(&response_ids).copied().collect();
    assert_eq!(student, ids(&fx["student_input_ids"]));

    let text = tmpl
        .render(fx["teacher_messages"].as_array().unwrap(), None, true, None)
        .unwrap();
    assert_eq!(text, fx["teacher_prompt_text"].as_str().unwrap());
    let teacher_prompt = tok.encode(&text, false).unwrap();
    assert_eq!(teacher_prompt, ids(&fx["teacher_prompt_ids"]));
    let teacher: Vec<u32> = teacher_prompt
        .iter()
        .chain(&response_ids)
        .copied()
        .collect();
    assert_eq!(teacher, ids(&fx["teacher_input_ids"]));
}

#[test]
fn builtin_tokenizer_transformers_parity() {
    // tests/data/builtin_transformers.json was recorded by loading the builtin files with
    // transformers' AutoTokenizer (see its description).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/builtin_transformers.json"
    );
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tok = Tokenizer::from_json_str(&claas_chat::builtin::tokenizer_json()).unwrap();
    let cfg =
        TokenizerConfig::from_json_str(&claas_chat::builtin::tokenizer_config_json()).unwrap();
    let tmpl = ChatTemplate::from_config(&cfg).unwrap();
    assert_eq!(
        tok.vocab_size() as u64,
        fx["len_tokenizer"].as_u64().unwrap()
    );
    let eos = cfg.eos_token.as_deref().unwrap();
    let pad = cfg.pad_token.as_deref().unwrap();
    assert_eq!(
        tok.token_to_id(eos).map(u64::from),
        fx["eos_token_id"].as_u64()
    );
    assert_eq!(
        tok.token_to_id(pad).map(u64::from),
        fx["pad_token_id"].as_u64()
    );
    let cases = fx["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = tmpl
            .render(
                case["messages"].as_array().unwrap(),
                case["tools"].as_array().map(|t| t.as_slice()),
                case["add_generation_prompt"].as_bool().unwrap(),
                case["chat_template_kwargs"].as_object(),
            )
            .unwrap();
        assert_eq!(text, case["expected_text"].as_str().unwrap(), "{name}");
        assert_eq!(
            tok.encode(&text, false).unwrap(),
            ids(&case["expected_ids"]),
            "{name}"
        );
    }
}
