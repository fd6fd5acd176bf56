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
