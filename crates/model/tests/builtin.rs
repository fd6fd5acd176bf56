//! The built-in demo model: deterministic, loads through the ordinary folder path, and runs.

use claas_model::{write_builtin_model, LoadOptions, Qwen3};

fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn builtin_model_is_deterministic_small_and_loadable() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_builtin_model(a.path()).unwrap();
    write_builtin_model(b.path()).unwrap();
    let fa = files(a.path());
    assert_eq!(fa, files(b.path()), "generation must be deterministic");
    let names: Vec<&str> = fa.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(names.contains(&want), "missing {want}");
    }
    let total: usize = fa.iter().map(|(_, b)| b.len()).sum();
    assert!(
        total < 16 << 20,
        "built-in model should be a few MB, is {total} bytes"
    );

    let m = Qwen3::load(a.path(), &LoadOptions::default()).unwrap();
    let cfg = m.config();
    assert!(cfg.max_position_embeddings >= 32768);
    let tok = claas_chat::Tokenizer::from_file(a.path().join("tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), cfg.vocab_size);
    for special in [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<think>",
        "</think>",
    ] {
        assert!(
            tok.token_to_id(special).is_some(),
            "tokenizer lacks {special}"
        );
    }
    let ids = tok
        .encode("<|im_start|>user\nhello<|im_end|>\n", false)
        .unwrap();
    let logits = m.logits(&ids, None, 8).unwrap();
    assert_eq!(logits.dims(), &[ids.len(), cfg.vocab_size]);
}

/// The end-of-turn bias channel makes the random demo model stop after a few dozen tokens on
/// average rather than run to max_tokens.
#[test]
fn builtin_model_ends_turns() {
    let dir = tempfile::tempdir().unwrap();
    write_builtin_model(dir.path()).unwrap();
    let m = Qwen3::load(dir.path(), &LoadOptions::default()).unwrap();
    let eos = m.config().eos_token_ids[0] as usize;
    let tok = claas_chat::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let ids = tok
        .encode(
            "<|im_start|>user\nWrite a poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let logits = m.logits(&ids, None, 64).unwrap();
    let probs = candle_nn::ops::softmax(&logits, 1).unwrap();
    let p: Vec<f32> = probs
        .narrow(1, eos, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean = p.iter().sum::<f32>() / p.len() as f32;
    assert!(
        (0.005..0.2).contains(&mean),
        "mean P(<|im_end|>) = {mean}, want a reply length of a few dozen tokens"
    );
}

/// The demo model never ends a turn right after whitespace (so no empty replies after the
/// generation prompt's newline) and never emits tag tokens such as `<think>`.
#[test]
fn builtin_model_never_answers_empty_or_with_tags() {
    let dir = tempfile::tempdir().unwrap();
    write_builtin_model(dir.path()).unwrap();
    let m = Qwen3::load(dir.path(), &LoadOptions::default()).unwrap();
    let tok = claas_chat::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let eos = m.config().eos_token_ids[0] as usize;
    for prompt in [
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    ] {
        let ids = tok.encode(prompt, false).unwrap();
        let logits = m.logits(&ids, None, 64).unwrap();
        let last =
            candle_nn::ops::softmax(&logits.narrow(0, ids.len() - 1, 1).unwrap(), 1).unwrap();
        let p: Vec<f32> = last.flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            p[eos] < 1e-4,
            "P(<|im_end|>) after the generation prompt = {}",
            p[eos]
        );
        for tag in [
            "<think>",
            "</think>",
            "<tool_call>",
            "<|im_start|>",
            "<|endoftext|>",
        ] {
            let id = tok.token_to_id(tag).unwrap() as usize;
            assert!(p[id] < 1e-6, "P({tag}) = {}", p[id]);
        }
    }
}
