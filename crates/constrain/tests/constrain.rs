//! The constrainer over the built-in tokenizer: random walks through the masks (every step a
//! random allowed token) always end in output the constraint accepts, and bad constraints are
//! compile errors.

use claas_constrain::{ConstrainError, Constrainer, Constraint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

fn tokenizer() -> claas_chat::Tokenizer {
    claas_chat::Tokenizer::from_json_str(&claas_chat::builtin::tokenizer_json()).unwrap()
}

fn constrainer(tok: &claas_chat::Tokenizer) -> Constrainer {
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    Constrainer::new(tok.hf(), tok.vocab_size(), eos).unwrap()
}

/// Random allowed tokens until the grammar is done or (when allowed, with probability 1/4)
/// EOS; returns the text. Panics past `limit` tokens.
fn walk(
    c: &Constrainer,
    tok: &claas_chat::Tokenizer,
    k: &Constraint,
    seed: u64,
    limit: usize,
) -> String {
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let mut m = c.compile(k).unwrap().matcher();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for _ in 0..limit {
        if m.is_done() {
            return tok.decode(&out, false).unwrap();
        }
        let mask = m.compute_mask().unwrap();
        let allowed: Vec<u32> = mask.allowed().into_iter().filter(|&t| t != eos).collect();
        if mask.allows_eos() && (allowed.is_empty() || rng.gen_ratio(1, 4)) {
            return tok.decode(&out, false).unwrap();
        }
        assert!(!allowed.is_empty(), "no token allowed after {out:?}");
        let t = allowed[rng.gen_range(0..allowed.len())];
        m.commit(t).unwrap();
        out.push(t);
    }
    panic!("no end after {limit} tokens: {:?}", tok.decode(&out, false));
}

#[test]
fn json_schema_bounds_hold_on_random_walks() {
    let tok = tokenizer();
    let c = constrainer(&tok);
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
            "kind": {"enum": ["a", "b"]},
            "n": {"type": "integer", "minimum": 0, "maximum": 99}
        },
        "required": ["name", "tags", "kind", "n"],
        "additionalProperties": false
    });
    let k = Constraint::JsonSchema(schema);
    for seed in 0..20 {
        let text = walk(&c, &tok, &k, seed, 400);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 4, "{text}");
        assert!(o["name"].as_str().unwrap().chars().count() <= 8, "{text}");
        let tags = o["tags"].as_array().unwrap();
        assert!(tags.len() <= 3, "{text}");
        assert!(
            tags.iter()
                .all(|t| t.as_str().unwrap().chars().count() <= 4),
            "{text}"
        );
        assert!(["a", "b"].contains(&o["kind"].as_str().unwrap()), "{text}");
        assert!((0..=99).contains(&o["n"].as_i64().unwrap()), "{text}");
        assert!(
            !text.contains(' ')
                || o["name"].as_str().unwrap().contains(' ')
                || tags.iter().any(|t| t.as_str().unwrap().contains(' ')),
            "compact JSON has no free whitespace: {text}"
        );
    }
}

#[test]
fn json_object_regex_and_choice() {
    let tok = tokenizer();
    let c = constrainer(&tok);
    for seed in 0..5 {
        let text = walk(&c, &tok, &Constraint::JsonObject, seed, 2000);
        // A random walk can be long; what it produced must be a prefix-complete object.
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v.is_object(), "{text}");
    }
    let re = regex::Regex::new(r"^[0-9]{3}-[a-z]{2}$").unwrap();
    for seed in 0..10 {
        let text = walk(
            &c,
            &tok,
            &Constraint::Regex("[0-9]{3}-[a-z]{2}".into()),
            seed,
            50,
        );
        assert!(re.is_match(&text), "{text:?}");
    }
    let options = vec!["yes".to_string(), "no".to_string(), "a.b (c)".to_string()];
    for seed in 0..10 {
        let text = walk(&c, &tok, &Constraint::Choice(options.clone()), seed, 50);
        assert!(options.contains(&text), "{text:?}");
    }
    let lark = Constraint::Lark("start: \"x\" (\"y\" | \"z\")".into());
    for seed in 0..5 {
        let text = walk(&c, &tok, &lark, seed, 10);
        assert!(text == "xy" || text == "xz", "{text:?}");
    }
}

#[test]
fn bad_constraints_are_compile_errors() {
    let tok = tokenizer();
    let c = constrainer(&tok);
    let bad = [
        Constraint::JsonSchema(json!({"type": "frobnicate"})),
        Constraint::JsonSchema(json!("not a schema")),
        Constraint::JsonSchema(json!({"$ref": "#/$defs/missing"})),
        Constraint::Regex("(unclosed".into()),
        Constraint::Choice(vec![]),
        Constraint::Lark("start: (".into()),
        Constraint::Lark("root ::= \"a\"".into()),
    ];
    for k in bad {
        match c.compile(&k) {
            Err(ConstrainError::Compile(m)) => assert!(!m.is_empty()),
            other => panic!("{k:?}: {other:?}"),
        }
    }
}

#[test]
fn mask_apply_clears_disallowed_and_follows_eos() {
    let tok = tokenizer();
    let c = constrainer(&tok);
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    let other_eos = tok.token_to_id("<|endoftext|>").unwrap();
    let mut m = c
        .compile(&Constraint::Choice(vec!["yes".into()]))
        .unwrap()
        .matcher();
    let mask = m.compute_mask().unwrap();
    assert!(!mask.allows_eos());
    let mut row = vec![1.0f32; tok.vocab_size()];
    mask.apply(&mut row, &[eos, other_eos]);
    let finite: Vec<u32> = (0..row.len() as u32)
        .filter(|&i| row[i as usize].is_finite())
        .collect();
    assert_eq!(finite, mask.allowed());
    assert!(row[eos as usize].is_infinite() && row[other_eos as usize].is_infinite());
    for t in tok.encode("yes", false).unwrap() {
        m.commit(t).unwrap();
    }
    assert!(m.is_done(), "nothing may follow the only choice");
    // A grammar that may end or go on: EOS and every model EOS id stay allowed.
    let mut m = c
        .compile(&Constraint::Regex("a+".into()))
        .unwrap()
        .matcher();
    m.commit(tok.encode("a", false).unwrap()[0]).unwrap();
    let mask = m.compute_mask().unwrap();
    assert!(mask.allows_eos() && !m.is_done());
    let mut row = vec![2.0f32; tok.vocab_size()];
    mask.apply(&mut row, &[eos, other_eos]);
    assert_eq!((row[eos as usize], row[other_eos as usize]), (2.0, 2.0));
    // A token the mask refuses is refused by commit too.
    let mut m = c
        .compile(&Constraint::Regex("a+".into()))
        .unwrap()
        .matcher();
    assert!(m.commit(tok.encode("b", false).unwrap()[0]).is_err());
}
