//! Result files. Each write replaces its file atomically, so a reader (the API's results page)
//! never sees half a JSON document while a run is going on.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::{EvalError, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
    move |e| EvalError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// `{parent}/<UTC timestamp>`, as the reference names its runs (`parent` is `CLAAS_EVAL_DIR`,
/// where the API's `/v1/eval` page looks, or `./data/evals`).
pub fn default_output_dir(parent: &Path) -> PathBuf {
    parent.join(chrono::Utc::now().format("%Y%m%d-%H%M%SZ").to_string())
}

/// Creates a folder and its parents.
pub fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(io_err(path))
}

/// Writes `value` as pretty JSON.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| EvalError::Io {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    text.push(b'\n');
    write_bytes(path, &text)
}

/// Writes one compact JSON object per line.
pub fn write_jsonl<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut text = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut text, r).map_err(|e| EvalError::Io {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        text.push(b'\n');
    }
    write_bytes(path, &text)
}

/// Writes bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    claas_fsatomic::write_file(path, bytes).map_err(io_err(path))
}
