//! Feedback lifecycle records: one JSON file per request, `{timestamp}-{request_id}.json`,
//! for successes and failures alike.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Recursively sorts object keys (the reference writes with `sort_keys=True`).
pub fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (k, v) in entries {
                out.insert(k, sorted(v));
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Writes `record` atomically to `dir/{YYYYmmddTHHMMSS}-{request_id}.json` and returns the path.
pub fn write_feedback_log(dir: &Path, request_id: &str, record: Value) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let safe_id: String = request_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let path = dir.join(format!("{stamp}-{safe_id}.json"));
    let text = serde_json::to_string_pretty(&sorted(record)).map_err(std::io::Error::other)?;
    claas_fsatomic::write_file(&path, text.as_bytes())?;
    Ok(path)
}

/// Longest string a log of a refused request keeps (characters).
pub const EXCERPT_CHARS: usize = 2000;
/// Most list entries a log of a refused request keeps.
pub const EXCERPT_ITEMS: usize = 64;

/// A bounded excerpt of `v` for the log of a refused request: long strings are cut to
/// [`EXCERPT_CHARS`] and long lists to [`EXCERPT_ITEMS`] entries, each cut saying how much went,
/// so a huge body sent to an unknown adapter cannot fill the disk through its log.
pub fn excerpt(v: &Value) -> Value {
    match v {
        Value::String(s) if s.chars().count() > EXCERPT_CHARS => {
            let kept: String = s.chars().take(EXCERPT_CHARS).collect();
            let dropped = s.chars().count() - EXCERPT_CHARS;
            Value::String(format!("{kept}… [{dropped} more characters not logged]"))
        }
        Value::Array(a) => {
            let mut out: Vec<Value> = a.iter().take(EXCERPT_ITEMS).map(excerpt).collect();
            if a.len() > EXCERPT_ITEMS {
                out.push(Value::String(format!(
                    "[{} more entries not logged]",
                    a.len() - EXCERPT_ITEMS
                )));
            }
            Value::Array(out)
        }
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), excerpt(v))).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn excerpts_are_bounded() {
        let big = "x".repeat(30 << 20);
        let v = json!({"prompt": big, "rollout_logprobs": vec![-0.5; 100_000], "n": 3});
        let e = excerpt(&v);
        let text = e.to_string();
        assert!(text.len() < 16 * 1024, "{}", text.len());
        assert_eq!(e["n"], 3);
        assert!(e["prompt"]
            .as_str()
            .unwrap()
            .ends_with("more characters not logged]"));
        assert_eq!(
            e["rollout_logprobs"].as_array().unwrap().len(),
            EXCERPT_ITEMS + 1
        );
        // Small values are untouched.
        let small = json!({"prompt": "hi", "xs": [1, 2]});
        assert_eq!(excerpt(&small), small);
    }
}
