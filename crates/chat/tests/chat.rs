//! Behaviour tests for the tokenizer wrapper, configs, template engine and output parsers.

use std::path::PathBuf;

use claas_chat::{
    normalize_messages, normalize_tools, parse_tool_calls, split_reasoning, ChatError,
    ChatTemplate, GenerationConfig, IncrementalDecoder, ReasoningStreamParser, Tokenizer,
    TokenizerConfig, ToolCall, ToolCallStreamParser, ToolStreamEvent,
};
use serde_json::json;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures"
    ))
}

fn tiny() -> Tokenizer {
    Tokenizer::from_file(fixtures().join("tiny-qwen3/tokenizer.json")).unwrap()
}

fn qwen3_template() -> ChatTemplate {
    let cfg = TokenizerConfig::from_dir(fixtures().join("qwen3-tokenizer")).unwrap();
    ChatTemplate::from_config(&cfg).unwrap()
}

// ---------- tokenizer ----------

#[test]
fn tokenizer_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    match Tokenizer::from_file(dir.path().join("nope.json")) {
        Err(e @ ChatError::MissingFile(_)) => {
            assert!(!e.is_client_error());
            assert!(e.to_string().contains("nope.json"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let bad = dir.path().join("tokenizer.json");
    std::fs::write(&bad, "{not json").unwrap();
    assert!(matches!(
        Tokenizer::from_file(&bad),
        Err(ChatError::BadJson { .. })
    ));
    assert!(matches!(
        Tokenizer::from_json_str(r#"{"model": {"type": "Nope"}}"#),
        Err(ChatError::BadJson { .. })
    ));
}

#[test]
fn token_lookups() {
    let t = tiny();
    assert_eq!(t.token_to_id("<|im_start|>"), Some(1001));
    assert_eq!(t.id_to_token(1002).as_deref(), Some("<|im_end|>"));
    assert_eq!(t.id_to_token(198).as_deref(), Some("Ċ"));
    assert_eq!(t.token_to_id("no such token"), None);
    assert!(t.is_special(1001));
    assert!(!t.is_special(1003)); // <think> is not special in Qwen3
    assert!(!t.is_special(198));
    assert_eq!(
        t.decode(&[1001, 84, 500, 198, 487, 1002], true).unwrap(),
        "user\nhi"
    );
}

#[test]
fn incremental_decoder_never_splits_characters() {
    let t = tiny();
    let text = "Café, naïve — Zürich 🚀? 日本語 ok";
    let ids = t.encode(text, false).unwrap();
    // The tiny vocab has no merges for these characters, so they span several byte tokens.
    assert!(ids.len() > text.chars().count());
    let mut dec = IncrementalDecoder::new(t.clone(), false);
    let mut pieces = Vec::new();
    for &id in &ids {
        pieces.push(dec.push(id).unwrap());
    }
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(
        pieces.iter().any(|p| p.is_empty()),
        "some bytes must be held back"
    );
    assert_eq!(pieces.concat(), text);
    assert_eq!(dec.flush().unwrap(), "");
}

#[test]
fn incremental_decoder_holds_incomplete_tail_until_flush() {
    let t = tiny();
    let ids = t.encode("a🚀", false).unwrap();
    let mut dec = IncrementalDecoder::new(t.clone(), false);
    let out = dec.push_many(&ids[..ids.len() - 1]).unwrap();
    assert_eq!(out, "");
    let tail = dec.flush().unwrap();
    assert!(
        tail.starts_with('a') && tail.ends_with('\u{FFFD}'),
        "{tail:?}"
    );
}

#[test]
fn incremental_decoder_with_prompt_and_special_tokens() {
    let t = tiny();
    let prompt = t
        .encode(
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .unwrap();
    let gen = t.encode("Hello there<|im_end|>", false).unwrap();
    let mut dec = IncrementalDecoder::with_prompt(t.clone(), true, &prompt);
    let mut out = String::new();
    for &id in &gen {
        out.push_str(&dec.push(id).unwrap());
    }
    assert_eq!(out, "Hello there");
    let mut dec = IncrementalDecoder::with_prompt(t.clone(), false, &prompt);
    assert_eq!(dec.push_many(&gen).unwrap(), "Hello there<|im_end|>");
}

// ---------- configs ----------

#[test]
fn tokenizer_config_variants() {
    let cfg = TokenizerConfig::from_json_str(
        r#"{
          "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": true,
                        "rstrip": false, "single_word": false},
          "eos_token": "</s>",
          "pad_token": null,
          "added_tokens_decoder": {"0": {"content": "<unk>", "special": true}},
          "chat_template": [
            {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"},
            {"name": "tool_use", "template": "T{{ tools | length }}"}
          ]
        }"#,
    )
    .unwrap();
    assert_eq!(cfg.bos_token.as_deref(), Some("<s>"));
    assert_eq!(cfg.eos_token.as_deref(), Some("</s>"));
    assert_eq!(cfg.pad_token, None);
    assert_eq!(cfg.added_tokens_decoder[&0].content(), "<unk>");
    let msgs = [json!({"role": "user", "content": "x"})];
    let t = ChatTemplate::from_config(&cfg).unwrap();
    assert_eq!(t.render(&msgs, None, false, None).unwrap(), "<s>x");
    let t = ChatTemplate::from_config_named(&cfg, Some("tool_use")).unwrap();
    let tools = [json!({"type": "function"})];
    assert_eq!(t.render(&msgs, Some(&tools), false, None).unwrap(), "T1");
    assert!(matches!(
        ChatTemplate::from_config_named(&cfg, Some("missing")),
        Err(ChatError::NoChatTemplate(_))
    ));
    let none = TokenizerConfig::from_json_str("{}").unwrap();
    assert!(matches!(
        none.chat_template(None),
        Err(ChatError::NoChatTemplate(_))
    ));
    assert!(matches!(
        TokenizerConfig::from_json_str("[1]"),
        Err(ChatError::BadJson { .. })
    ));
    assert!(matches!(
        TokenizerConfig::from_json_str(r#"{"chat_template": 5}"#),
        Err(ChatError::BadJson { .. })
    ));
}

#[test]
fn chat_template_jinja_file_overrides_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"chat_template": "old", "eos_token": "<e>"}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("chat_template.jinja"), "new{{ eos_token }}").unwrap();
    let cfg = TokenizerConfig::from_dir(dir.path()).unwrap();
    let t = ChatTemplate::from_config(&cfg).unwrap();
    assert_eq!(t.render(&[], None, false, None).unwrap(), "new<e>");
    assert!(matches!(
        TokenizerConfig::from_dir(dir.path().join("missing")),
        Err(ChatError::MissingFile(_))
    ));
}

#[test]
fn generation_config_parsing() {
    let g =
        GenerationConfig::from_file(fixtures().join("tiny-qwen3/generation_config.json")).unwrap();
    assert_eq!(g.eos_token_ids(), &[1002]);
    assert_eq!(g.bos_token_id, Some(1000));
    assert_eq!(g.temperature, None);
    let g = GenerationConfig::from_json_str(
        r#"{"eos_token_id": [151645, 151643], "temperature": 0.6, "top_p": 0.95, "top_k": 20,
            "min_p": 0.0, "repetition_penalty": 1.05, "max_new_tokens": 256, "do_sample": true}"#,
    )
    .unwrap();
    assert_eq!(g.eos_token_ids(), &[151645, 151643]);
    assert_eq!(
        (g.temperature, g.top_p, g.top_k),
        (Some(0.6), Some(0.95), Some(20))
    );
    assert_eq!((g.min_p, g.repetition_penalty), (Some(0.0), Some(1.05)));
    assert_eq!(g.max_new_tokens, Some(256));
    assert!(matches!(
        GenerationConfig::from_json_str(r#"{"eos_token_id": "x"}"#),
        Err(ChatError::BadJson { .. })
    ));
}

// ---------- template engine ----------

#[test]
fn raise_exception_and_syntax_errors() {
    let t = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok",
    )
    .unwrap();
    let sys = [json!({"role": "system", "content": "s"})];
    match t.render(&sys, None, false, None) {
        Err(ChatError::TemplateException(m)) => {
            assert_eq!(m, "first message must be from the user")
        }
        other => panic!("{other:?}"),
    }
    let user = [json!({"role": "user", "content": "u"})];
    assert_eq!(t.render(&user, None, false, None).unwrap(), "ok");
    assert!(matches!(
        ChatTemplate::new("{% for x in %}"),
        Err(ChatError::TemplateSyntax(_))
    ));
    let t = ChatTemplate::new("{{ messages[0].content + 1 }}").unwrap();
    assert!(matches!(
        t.render(&user, None, false, None),
        Err(ChatError::TemplateRender(_))
    ));
}

#[test]
fn tojson_matches_python_json_dumps() {
    let t = ChatTemplate::new(
        "{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ messages[0].x | tojson(sort_keys=true, separators=[',', ':']) }}|{{ messages[0].x | tojson(ensure_ascii=true) }}",
    )
    .unwrap();
    let m = [json!({"role": "user", "x": {"b": 1.0, "a": "é<&>", "c": [true, null, 1e-05]}})];
    // Expected strings written from Python's json.dumps with the same arguments.
    assert_eq!(
        t.render(&m, None, false, None).unwrap(),
        "{\"role\": \"user\", \"x\": {\"b\": 1.0, \"a\": \"é<&>\", \"c\": [true, null, 1e-05]}}|\
{\n  \"role\": \"user\",\n  \"x\": {\n    \"b\": 1.0,\n    \"a\": \"é<&>\",\n    \"c\": [\n      true,\n      null,\n      1e-05\n    ]\n  }\n}|\
{\"a\":\"é<&>\",\"b\":1.0,\"c\":[true,null,1e-05]}|\
{\"b\": 1.0, \"a\": \"\\u00e9<&>\", \"c\": [true, null, 1e-05]}"
    );
}

#[test]
fn python_string_methods_loops_and_kwargs() {
    let t = ChatTemplate::new(
        "{%- set ns = namespace(n=0) %}\n\
         {%- for m in messages %}\n\
           {%- if m.content.startswith('a') and not m.content.endswith('z') %}{% set ns.n = ns.n + 1 %}{% endif %}\n\
           {{- loop.index0 }}:{{ m.content.split(',')[-1].strip() }}:{{ m.content.lstrip('a').rstrip('c') }}{{ ',' if not loop.last }}\n\
         {%- endfor %}\n\
         |{{ ns.n }}|{{ enable_thinking is defined and enable_thinking is false }}\n",
    )
    .unwrap();
    let m = [
        json!({"role": "user", "content": "aab, x "}),
        json!({"role": "user", "content": "abc"}),
        json!({"role": "user", "content": "az"}),
    ];
    let kw = json!({"enable_thinking": false});
    assert_eq!(
        t.render(&m, None, false, kw.as_object()).unwrap(),
        "0:x:b, x ,1:abc:b,2:az:z|2|True"
    );
}

#[test]
fn normalize_messages_like_vllm() {
    let raw = vec![
        json!({"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
        json!({"role": "user", "content": "Weather?", "extra": 1}),
        json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "now", "arguments": ""}}
        ]}),
        json!({"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21}"}),
    ];
    let norm = normalize_messages(&raw).unwrap();
    assert_eq!(norm[0], json!({"role": "system", "content": "a\nb"}));
    assert_eq!(norm[1], json!({"role": "user", "content": "Weather?"}));
    assert_eq!(norm[2]["content"], json!(""));
    assert_eq!(
        norm[2]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(norm[2]["tool_calls"][1]["function"]["arguments"], json!({}));
    assert_eq!(norm[3]["tool_call_id"], json!("c1"));
    let text = qwen3_template().render(&norm, None, true, None).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\na\nb<|im_end|>\n<|im_start|>user\nWeather?<|im_end|>\n<|im_start|>assistant\n\
<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call><|im_end|>\n\
<|im_start|>user\n<tool_response>\n{\"temp\": 21}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    );
    for bad in [
        json!("hi"),
        json!({"content": "no role"}),
        json!({"role": "user", "content": 5}),
        json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        json!({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{bad"}}]}),
    ] {
        match normalize_messages(std::slice::from_ref(&bad)) {
            Err(ChatError::InvalidMessage(m)) => assert!(m.starts_with("messages[0]"), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn normalize_tools_like_vllm_model_dump() {
    let tools = [
        json!({"function": {"parameters": {"type": "object"}, "name": "f", "strict": true}, "type": "function"}),
        json!({"type": "function", "function": {"name": "g", "description": "d"}}),
    ];
    let norm = normalize_tools(&tools).unwrap();
    let t = ChatTemplate::new("{% for t in tools %}{{ t | tojson }}\n{% endfor %}").unwrap();
    assert_eq!(
        t.render(&[], Some(&norm), false, None).unwrap(),
        "{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": null, \"parameters\": {\"type\": \"object\"}, \"strict\": true}}\n\
{\"type\": \"function\", \"function\": {\"name\": \"g\", \"description\": \"d\", \"parameters\": null}}\n"
    );
    for bad in [
        json!([]),
        json!({"type": "retrieval", "function": {"name": "f"}}),
        json!({"type": "function"}),
        json!({"type": "function", "function": {"name": 3}}),
        json!({"type": "function", "function": {"name": "f", "parameters": "x"}}),
    ] {
        match normalize_tools(std::slice::from_ref(&bad)) {
            Err(ChatError::InvalidMessage(m)) => assert!(m.starts_with("tools[0]"), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn reasoning_content_field_is_rendered() {
    let msgs = normalize_messages(&[
        json!({"role": "user", "content": "q"}),
        json!({"role": "assistant", "content": "a", "reasoning_content": "think"}),
    ])
    .unwrap();
    assert_eq!(
        qwen3_template().render(&msgs, None, false, None).unwrap(),
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nthink\n</think>\n\na<|im_end|>\n"
    );
}

// ---------- tool calls ----------

fn call(name: &str, args: &str) -> ToolCall {
    ToolCall {
        name: name.into(),
        arguments: args.into(),
    }
}

#[test]
fn parse_tool_calls_like_vllm_hermes() {
    let out = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\",\"days\":[1,2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
    let (content, calls) = parse_tool_calls(out);
    assert_eq!(content, "Let me check.\n");
    assert_eq!(
        calls,
        vec![
            call("get_weather", "{\"city\": \"Paris\", \"days\": [1, 2]}"),
            call("now", "{}")
        ]
    );
    // No tool call.
    assert_eq!(parse_tool_calls("plain"), ("plain".to_string(), vec![]));
    // Unclosed final block is still parsed.
    let (c, calls) =
        parse_tool_calls("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": \"é\"}}\n");
    assert_eq!((c.as_str(), calls), ("", vec![call("f", "{\"x\": \"é\"}")]));
    // Malformed JSON, missing arguments or non-string name: everything is content.
    for bad in [
        "hi <tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": }\n</tool_call>",
        "<tool_call>{\"name\": \"f\"}</tool_call>",
        "<tool_call>{\"name\": 1, \"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call><tool_call>oops</tool_call>",
    ] {
        assert_eq!(parse_tool_calls(bad), (bad.to_string(), vec![]), "{bad}");
    }
}

fn stream_all(text: &str, chunk: usize) -> Vec<ToolStreamEvent> {
    let mut p = ToolCallStreamParser::new();
    let mut events = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(chunk) {
        let s: String = piece.iter().collect();
        events.extend(p.push(&s));
    }
    events.extend(p.finish());
    // Merge adjacent content so results are comparable across chunk sizes.
    let mut merged: Vec<ToolStreamEvent> = Vec::new();
    for e in events {
        match (merged.last_mut(), e) {
            (Some(ToolStreamEvent::Content(a)), ToolStreamEvent::Content(b)) => a.push_str(&b),
            (_, e) => merged.push(e),
        }
    }
    merged
}

#[test]
fn stream_parser_matches_one_shot_on_any_chunking() {
    let out = "Sure <tag> é <tool_c\n<tool_call>\n{\"name\": \"a\", \"arguments\": {\"k\": [1, \"<tool_call>\"]}}\n</tool_call>\n<tool_call>\n{\"name\": \"b\", \"arguments\": {}}\n</tool_call>";
    let (content, calls) = parse_tool_calls(out);
    for chunk in [1, 2, 3, 5, 7, 1000] {
        let ev = stream_all(out, chunk);
        assert_eq!(
            ev,
            vec![
                ToolStreamEvent::Content(content.clone()),
                ToolStreamEvent::ToolCall(calls[0].clone()),
                ToolStreamEvent::Content("\n".into()),
                ToolStreamEvent::ToolCall(calls[1].clone()),
            ],
            "chunk {chunk}"
        );
    }
}

#[test]
fn stream_parser_holds_back_only_possible_tag_starts() {
    let mut p = ToolCallStreamParser::new();
    assert_eq!(
        p.push("Hello <tool"),
        vec![ToolStreamEvent::Content("Hello ".into())]
    );
    assert_eq!(
        p.push("box> done"),
        vec![ToolStreamEvent::Content("<toolbox> done".into())]
    );
    assert_eq!(p.push("<"), vec![]);
    assert_eq!(p.finish(), vec![ToolStreamEvent::Content("<".into())]);
    // Malformed block and unclosed block come out as raw content; an unclosed valid one as a call.
    assert_eq!(
        stream_all("<tool_call>nope</tool_call>x", 4),
        vec![ToolStreamEvent::Content(
            "<tool_call>nope</tool_call>x".into()
        )]
    );
    assert_eq!(
        stream_all("<tool_call>{\"name\": \"f\", \"arguments\": {}}", 3),
        vec![ToolStreamEvent::ToolCall(call("f", "{}"))]
    );
    assert_eq!(
        stream_all("<tool_call>{\"name\": \"f\"", 3),
        vec![ToolStreamEvent::Content(
            "<tool_call>{\"name\": \"f\"".into()
        )]
    );
}

// ---------- reasoning ----------

#[test]
fn split_reasoning_like_vllm_qwen3() {
    assert_eq!(
        split_reasoning("<think>\nadd them\n</think>\n\n4"),
        (Some("\nadd them\n".into()), Some("\n\n4".into()))
    );
    assert_eq!(
        split_reasoning("<think>x</think>"),
        (Some("x".into()), None)
    );
    assert_eq!(
        split_reasoning("just text"),
        (None, Some("just text".into()))
    );
    // Both tags are required.
    assert_eq!(
        split_reasoning("<think>cut off"),
        (None, Some("<think>cut off".into()))
    );
    assert_eq!(
        split_reasoning("no start</think>x"),
        (None, Some("no start</think>x".into()))
    );
}

#[test]
fn reasoning_stream_parser_on_any_chunking() {
    let text = "<think>\nstep <b> one\n</think>\n\nanswer </think> end";
    for chunk in [1, 2, 3, 8, 100] {
        let mut p = ReasoningStreamParser::new();
        let (mut r, mut c) = (String::new(), String::new());
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(chunk) {
            let d = p.push(&piece.iter().collect::<String>());
            r.push_str(d.reasoning.as_deref().unwrap_or(""));
            c.push_str(d.content.as_deref().unwrap_or(""));
        }
        let d = p.finish();
        r.push_str(d.reasoning.as_deref().unwrap_or(""));
        c.push_str(d.content.as_deref().unwrap_or(""));
        assert_eq!(r, "\nstep <b> one\n", "chunk {chunk}");
        assert_eq!(c, "\n\nanswer </think> end", "chunk {chunk}");
        let (sr, sc) = split_reasoning(text);
        assert_eq!((Some(r), Some(c)), (sr, sc));
    }
    // No think block: all content, even a lone '<' at the end.
    let mut p = ReasoningStreamParser::new();
    let d = p.push("plain <");
    assert_eq!(d.content.as_deref(), Some("plain "));
    assert_eq!(p.finish().content.as_deref(), Some("<"));
}
