use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use minijinja::value::Kwargs;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde_json::{Map, Value as Json};

use crate::config::TokenizerConfig;
use crate::error::{ChatError, Result};
use crate::pyjson::{python_json_dumps, PyJsonOptions};

const TEMPLATE_NAME: &str = "chat_template";

/// A model's Jinja chat template, rendered like transformers' `apply_chat_template(tokenize=False)`.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: BTreeMap<String, Json>,
}

impl ChatTemplate {
    /// Compile `source` with transformers' Jinja settings (trim_blocks, lstrip_blocks, Python
    /// string methods, a `json.dumps`-compatible `tojson`).
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson_filter);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))
            .map_err(|e| ChatError::TemplateSyntax(e.to_string()))?;
        Ok(Self {
            env,
            special_tokens: BTreeMap::new(),
        })
    }

    /// The config's default template, with its special tokens (`bos_token`, `eos_token`, ...)
    /// available to the template as transformers provides them.
    pub fn from_config(cfg: &TokenizerConfig) -> Result<Self> {
        Self::from_config_named(cfg, None)
    }

    /// Like [`ChatTemplate::from_config`] but choosing a named template.
    pub fn from_config_named(cfg: &TokenizerConfig, name: Option<&str>) -> Result<Self> {
        let mut t = Self::new(cfg.chat_template(name)?)?;
        let tokens = [
            ("bos_token", &cfg.bos_token),
            ("eos_token", &cfg.eos_token),
            ("pad_token", &cfg.pad_token),
            ("unk_token", &cfg.unk_token),
        ];
        for (k, v) in tokens {
            if let Some(v) = v {
                t.special_tokens
                    .insert(k.to_string(), Json::String(v.clone()));
            }
        }
        if !cfg.additional_special_tokens.is_empty() {
            t.special_tokens.insert(
                "additional_special_tokens".into(),
                Json::from(cfg.additional_special_tokens.clone()),
            );
        }
        Ok(t)
    }

    /// Set a variable such as `bos_token` that every render sees (extra kwargs override it).
    pub fn set_special_token(&mut self, name: &str, value: &str) {
        self.special_tokens
            .insert(name.to_string(), Json::String(value.to_string()));
    }

    /// Render a conversation. `messages` and `tools` are passed as given (see
    /// [`normalize_messages`] for OpenAI-style input); `extra` holds chat_template_kwargs such as
    /// `enable_thinking`.
    pub fn render(
        &self,
        messages: &[Json],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
        extra: Option<&Map<String, Json>>,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in &self.special_tokens {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        if let Some(extra) = extra {
            for (k, v) in extra {
                ctx.insert(k.clone(), Value::from_serialize(v));
            }
        }
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "tools".into(),
            match tools {
                Some(t) => Value::from_serialize(t),
                None => Value::from(()),
            },
        );
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        // Per-render so the message of `raise_exception` can be reported without Jinja's
        // location decoration.
        let raised: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let cell = raised.clone();
        ctx.insert(
            "raise_exception".into(),
            Value::from_function(
                move |msg: String| -> std::result::Result<Value, JinjaError> {
                    if let Ok(mut slot) = cell.lock() {
                        *slot = Some(msg.clone());
                    }
                    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
                },
            ),
        );
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::TemplateRender(e.to_string()))?;
        tmpl.render(Value::from(ctx)).map_err(|e| {
            match raised.lock().ok().and_then(|mut s| s.take()) {
                Some(msg) => ChatError::TemplateException(msg),
                None => ChatError::TemplateRender(e.to_string()),
            }
        })
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` (marks assistant tokens for masks)
/// renders its body unchanged; minijinja has no such tag, so it becomes an always-true `if`
/// with the same whitespace-control markers.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, trail) = match body.trim_end_matches(char::is_whitespace).chars().last() {
            Some(c @ ('-' | '+')) => {
                let b = body.trim_end_matches(char::is_whitespace);
                (&b[..b.len() - 1], c.to_string())
            }
            _ => (body, String::new()),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

/// transformers' `strftime_now(format)` global (Llama-style templates print today's date).
/// Uses UTC; supports the common `%` codes.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

pub(crate) fn strftime(format: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let sod = unix_secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let day = DAYS[weekday];
    let h12 = if h % 12 == 0 { 12 } else { h % 12 };
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{h12:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson_filter(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, JinjaError> {
    let pick = |pos: Option<Value>, key: &str| -> std::result::Result<Option<Value>, JinjaError> {
        let kw: Option<Value> = kwargs.get(key)?;
        Ok(kw.or(pos).filter(|v| !v.is_none() && !v.is_undefined()))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?;
    let indent = pick(indent, "indent")?;
    // minijinja caps filter arity, so these two are keyword-only (templates pass them by name).
    let separators = pick(None, "separators")?;
    let sort_keys = pick(None, "sort_keys")?;
    kwargs.assert_all_used()?;
    let bad = |m: &str| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {m}"));
    let indent = match indent {
        None => None,
        Some(v) if v.as_str().is_some() => v.as_str().map(str::to_string),
        Some(v) => {
            let n = i64::try_from(v).map_err(|_| bad("indent must be an int or string"))?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let separators = match separators {
        None => None,
        Some(v) => {
            let parts: Vec<String> = v
                .try_iter()
                .map_err(|_| bad("separators must be a pair of strings"))?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("separators must be a pair of strings"))?;
            match <[String; 2]>::try_from(parts) {
                Ok([a, b]) => Some((a, b)),
                Err(_) => return Err(bad("separators must be a pair of strings")),
            }
        }
    };
    let opts = PyJsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        indent,
        separators,
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
    };
    let json = serde_json::to_value(value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(python_json_dumps(&json, &opts)))
}

/// Turn OpenAI-style chat messages into what chat templates expect, as vLLM does before
/// rendering: content as a string (text parts joined with "\n", null -> ""), tool-call
/// `arguments` as JSON objects (parsed from their string form; empty -> `{}`), `reasoning`
/// also exposed as `reasoning_content`. Only the keys vLLM forwards are kept.
pub fn normalize_messages(messages: &[Json]) -> Result<Vec<Json>> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            normalize_message(m)
                .map_err(|e| ChatError::InvalidMessage(format!("messages[{i}]: {e}")))
        })
        .collect()
}

fn normalize_message(m: &Json) -> std::result::Result<Json, String> {
    let obj = m.as_object().ok_or("a message must be an object")?;
    let role = obj
        .get("role")
        .and_then(Json::as_str)
        .ok_or("missing string field 'role'")?;
    let content = match obj.get("content") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(Json::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                texts.push(part_text(p).map_err(|e| format!("content[{j}]: {e}"))?);
            }
            texts.join("\n")
        }
        Some(_) => return Err("'content' must be a string, an array of parts or null".into()),
    };
    let mut out = Map::new();
    out.insert("role".into(), Json::String(role.to_string()));
    out.insert("content".into(), Json::String(content));
    if role == "assistant" {
        if let Some(calls) = obj.get("tool_calls").filter(|v| !v.is_null()) {
            let calls = calls.as_array().ok_or("'tool_calls' must be an array")?;
            let mut fixed = Vec::with_capacity(calls.len());
            for (j, call) in calls.iter().enumerate() {
                fixed.push(normalize_tool_call(call).map_err(|e| format!("tool_calls[{j}]: {e}"))?);
            }
            out.insert("tool_calls".into(), Json::Array(fixed));
        }
        let reasoning = obj
            .get("reasoning")
            .filter(|v| !v.is_null())
            .or_else(|| obj.get("reasoning_content").filter(|v| !v.is_null()));
        if let Some(r) = reasoning {
            out.insert("reasoning".into(), r.clone());
            out.insert("reasoning_content".into(), r.clone());
        }
    }
    if role == "tool" {
        if let Some(id) = obj.get("tool_call_id") {
            out.insert("tool_call_id".into(), id.clone());
        }
    }
    if let Some(name) = obj.get("name").filter(|v| v.is_string()) {
        out.insert("name".into(), name.clone());
    }
    Ok(Json::Object(out))
}

/// Tools as vLLM hands them to the template: each one re-dumped from its pydantic model
/// (`ChatCompletionToolsParam` / `FunctionDefinition`), so keys come in declaration order —
/// `type`, then `function` with `name`, `description`, `parameters` (null when absent) — with
/// any extra keys after them in the client's order. `type` must be "function".
pub fn normalize_tools(tools: &[Json]) -> Result<Vec<Json>> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            normalize_tool(t).map_err(|e| ChatError::InvalidMessage(format!("tools[{i}]: {e}")))
        })
        .collect()
}

fn normalize_tool(t: &Json) -> std::result::Result<Json, String> {
    let obj = t.as_object().ok_or("a tool must be an object")?;
    match obj.get("type") {
        None => {}
        Some(Json::String(s)) if s == "function" => {}
        Some(other) => return Err(format!("'type' must be \"function\", got {other}")),
    }
    let func = obj
        .get("function")
        .and_then(Json::as_object)
        .ok_or("missing object field 'function'")?;
    let name = func
        .get("name")
        .and_then(Json::as_str)
        .ok_or("missing string field 'function.name'")?;
    let description = match func.get("description") {
        None | Some(Json::Null) => Json::Null,
        Some(Json::String(s)) => Json::String(s.clone()),
        Some(_) => return Err("'function.description' must be a string".into()),
    };
    let parameters = match func.get("parameters") {
        None | Some(Json::Null) => Json::Null,
        Some(Json::Object(p)) => Json::Object(p.clone()),
        Some(_) => return Err("'function.parameters' must be an object".into()),
    };
    let mut f = Map::new();
    f.insert("name".into(), Json::String(name.to_string()));
    f.insert("description".into(), description);
    f.insert("parameters".into(), parameters);
    for (k, v) in func {
        if !f.contains_key(k) {
            f.insert(k.clone(), v.clone());
        }
    }
    let mut out = Map::new();
    out.insert("type".into(), Json::String("function".into()));
    out.insert("function".into(), Json::Object(f));
    for (k, v) in obj {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(Json::Object(out))
}

fn part_text(p: &Json) -> std::result::Result<String, String> {
    if let Some(s) = p.as_str() {
        return Ok(s.to_string());
    }
    let obj = p.as_object().ok_or("a content part must be an object")?;
    let ty = obj.get("type").and_then(Json::as_str).unwrap_or("text");
    match ty {
        "text" | "input_text" | "output_text" | "refusal" => {
            let key = if ty == "refusal" { "refusal" } else { "text" };
            obj.get(key)
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("part of type {ty:?} needs a string '{key}'"))
        }
        other => Err(format!(
            "content part type {other:?} is not supported (text only)"
        )),
    }
}

fn normalize_tool_call(call: &Json) -> std::result::Result<Json, String> {
    let mut call = call
        .as_object()
        .ok_or("a tool call must be an object")?
        .clone();
    if let Some(Json::Object(func)) = call.get_mut("function") {
        let args = match func.get("arguments") {
            None | Some(Json::Null) => Json::Object(Map::new()),
            Some(Json::String(s)) if s.is_empty() => Json::Object(Map::new()),
            Some(Json::String(s)) => serde_json::from_str(s)
                .map_err(|e| format!("function.arguments is not valid JSON: {e}"))?,
            Some(other) => other.clone(),
        };
        func.insert("arguments".into(), args);
    }
    Ok(Json::Object(call))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC was a Thursday (day 60 of a leap year).
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(
            strftime("%d %b %Y, %A %j %I%p %%", t),
            "29 Feb 2024, Thursday 060 01PM %"
        );
        assert_eq!(strftime("%B %e %y %a", 0), "January  1 70 Thu");
    }

    #[test]
    fn generation_tags_become_transparent() {
        let src =
            "{%- for m in messages %}{%- generation -%} [{{ m }}] {%- endgeneration %}{% endfor %}";
        let t = ChatTemplate::new(src).unwrap();
        let msgs = [Json::from("a"), Json::from("b")];
        assert_eq!(t.render(&msgs, None, false, None).unwrap(), "[a][b]");
        assert_eq!(
            rewrite_generation_tags("{% if x %}{%generation%}"),
            "{% if x %}{% if true %}"
        );
    }

    #[test]
    fn template_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<ChatTemplate>();
    }
}
