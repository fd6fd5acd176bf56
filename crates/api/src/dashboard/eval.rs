//! `/v1/eval`: runs of the eval harness under `CLAAS_EVAL_DIR` (`{run}/run.json`,
//! `{run}/summary.json`, `{run}/{preference}/steps.jsonl`, `{run}/{preference}/plots/*`), and
//! `/v1/eval/plot`, which serves one plot file and nothing else from that folder.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::page::{clip, esc, num, respond, shell, url_component, Window};
use super::{blocking_failed, finish, paging};
use crate::error::{ApiError, ValidationIssue};
use crate::state::ApiState;

/// Largest plot served (plots are small; this only bounds memory).
const MAX_PLOT_BYTES: u64 = 16 << 20;
/// Largest JSON file read for the page.
const MAX_JSON_BYTES: u64 = 8 << 20;

/// A file or folder name that stays inside its parent: no separators, no `.`/`..`, no hidden
/// names, no control characters.
fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with('.')
        && !s.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

fn plot_kind(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".png") {
        Some("image/png")
    } else if lower.ends_with(".svg") {
        Some("image/svg+xml")
    } else {
        None
    }
}

/// A real folder (not a symlink).
fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// A real file (not a symlink).
fn is_real_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Entries of `dir` with safe names, sorted; nothing when it cannot be read.
fn names(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| safe_name(n))
        .collect();
    out.sort();
    out
}

fn read_json(path: &Path) -> Option<Value> {
    if !is_real_file(path) {
        return None;
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_JSON_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "unreadable eval JSON");
            None
        }
    }
}

struct Preference {
    name: String,
    steps: Vec<Value>,
    plots: Vec<String>,
}

struct Run {
    name: String,
    modified: SystemTime,
    run: Option<Value>,
    summary: Option<Value>,
    preferences: Vec<Preference>,
}

/// Run folders (those with a `summary.json` or `run.json`), newest first, without contents.
fn list_runs(dir: &Path) -> Vec<(String, SystemTime)> {
    let mut runs: Vec<(String, SystemTime)> = names(dir)
        .into_iter()
        .filter(|n| is_real_dir(&dir.join(n)))
        .filter_map(|n| {
            let d = dir.join(&n);
            let marker = ["summary.json", "run.json"]
                .iter()
                .map(|f| d.join(f))
                .find(|p| is_real_file(p))?;
            let t = std::fs::metadata(marker)
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            Some((n, t))
        })
        .collect();
    runs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    runs
}

fn read_run(dir: &Path, name: &str, modified: SystemTime) -> Run {
    let d = dir.join(name);
    let preferences = names(&d)
        .into_iter()
        .filter(|n| is_real_dir(&d.join(n)))
        .map(|n| {
            let p = d.join(&n);
            let steps = if is_real_file(&p.join("steps.jsonl")) {
                std::fs::read_to_string(p.join("steps.jsonl"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str(l.trim()).ok())
                    .collect()
            } else {
                Vec::new()
            };
            let plots_dir = p.join("plots");
            let plots = if is_real_dir(&plots_dir) {
                names(&plots_dir)
                    .into_iter()
                    .filter(|f| plot_kind(f).is_some() && is_real_file(&plots_dir.join(f)))
                    .collect()
            } else {
                Vec::new()
            };
            Preference {
                name: n,
                steps,
                plots,
            }
        })
        .filter(|p| !p.steps.is_empty() || !p.plots.is_empty())
        .collect();
    Run {
        name: name.to_string(),
        modified,
        run: read_json(&d.join("run.json")),
        summary: read_json(&d.join("summary.json")),
        preferences,
    }
}

/// `GET /v1/eval?run=&page=&per_page=`.
pub async fn page(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut issues = Vec::new();
    let p = paging(&q, &mut issues);
    let only = q.get("run").filter(|r| !r.is_empty()).cloned();
    if let Some(r) = &only {
        if !safe_name(r) {
            let mut i = ValidationIssue::new(
                vec![json!("query"), json!("run")],
                "value_error",
                "Value error, a run is a folder name under the eval directory",
            );
            i.input = Some(json!(r));
            issues.push(i);
        }
    }
    finish(issues)?;
    let dir = st.config().eval_dir.clone();
    let d = dir.clone();
    let o = only.clone();
    let (total, window, runs) = tokio::task::spawn_blocking(move || {
        let mut all = list_runs(&d);
        if let Some(r) = &o {
            all.retain(|(n, _)| n == r);
        }
        let window = Window::new(all.len(), p.page, p.per_page);
        let runs: Vec<Run> = all[window.range()]
            .iter()
            .map(|(n, t)| read_run(&d, n, *t))
            .collect();
        (all.len(), window, runs)
    })
    .await
    .map_err(|e| blocking_failed("Reading eval runs failed", e))?;
    if let (Some(r), 0) = (&only, total) {
        return Err(ApiError::NotFound(format!("Eval run not found: {r}")));
    }

    let mut body = String::from("<section id=\"eval-runs\"><h2>Eval runs</h2>");
    if let Some(r) = &only {
        let _ = write!(
            body,
            "<p>Run <code>{}</code> · <a href=\"/v1/eval\">all runs</a></p>",
            esc(r)
        );
    }
    if runs.is_empty() {
        let _ = write!(
            body,
            "<p class=\"empty\" id=\"eval-empty\">No eval runs yet in <code>{}</code>. \
Run <code>claas eval</code> (results go to <code>CLAAS_EVAL_DIR</code>).</p>",
            esc(&dir.display().to_string())
        );
    }
    let extra: Vec<(&str, &str)> = only.iter().map(|r| ("run", r.as_str())).collect();
    let nav = window.nav("/v1/eval", &extra);
    body.push_str(&nav);
    body.push_str("</section>");
    for run in &runs {
        body.push_str(&render_run(run));
    }
    body.push_str(&nav);
    let nonce = super::page::nonce();
    Ok(respond(shell("Eval runs", &nonce, &body, ""), &nonce))
}

/// Scalars of `v` by dotted path in document order (nested objects flattened, arrays skipped).
fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(x, &key, out);
            }
        }
        Value::Array(_) => {}
        other => out.push((prefix.to_string(), other.clone())),
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "–".into(),
        Some(Value::Number(n)) => num(n.as_f64()),
        Some(Value::String(s)) => esc(&clip(s, 200)),
        Some(other) => esc(&clip(&other.to_string(), 200)),
    }
}

/// One summary row: metric, baseline, final (delta when both are numbers).
struct Row {
    metric: String,
    baseline: Option<Value>,
    last: Option<Value>,
}

/// Rows of one preference's summary. Understands `{baseline: {...}, final: {...}, ...}`,
/// `{metric: {baseline, final}, ...}` and plain scalars (shown as the final value).
fn summary_rows(data: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let Some(m) = data.as_object() else {
        return rows;
    };
    let (b, f) = (m.get("baseline"), m.get("final"));
    if b.is_some_and(Value::is_object) && f.is_some_and(Value::is_object) {
        let (mut bs, mut fs) = (Vec::new(), Vec::new());
        flatten(b.unwrap_or(&Value::Null), "", &mut bs);
        flatten(f.unwrap_or(&Value::Null), "", &mut fs);
        let fm: BTreeMap<&str, &Value> = fs.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let bm: BTreeMap<&str, &Value> = bs.iter().map(|(k, v)| (k.as_str(), v)).collect();
        // The metrics' own order (baseline first, then any only the final has).
        for (k, v) in &bs {
            rows.push(Row {
                metric: k.clone(),
                baseline: Some(v.clone()),
                last: fm.get(k.as_str()).map(|v| (*v).clone()),
            });
        }
        for (k, v) in &fs {
            if !bm.contains_key(k.as_str()) {
                rows.push(Row {
                    metric: k.clone(),
                    baseline: None,
                    last: Some(v.clone()),
                });
            }
        }
        for (k, v) in m {
            if k != "baseline" && k != "final" && !v.is_object() && !v.is_array() {
                rows.push(Row {
                    metric: k.clone(),
                    baseline: None,
                    last: Some(v.clone()),
                });
            }
        }
        return rows;
    }
    for (k, v) in m {
        match v.as_object() {
            Some(o) if o.contains_key("baseline") || o.contains_key("final") => rows.push(Row {
                metric: k.clone(),
                baseline: o.get("baseline").cloned(),
                last: o.get("final").cloned(),
            }),
            _ => {
                let mut flat = Vec::new();
                flatten(v, k, &mut flat);
                rows.extend(flat.into_iter().map(|(metric, v)| Row {
                    metric,
                    baseline: None,
                    last: Some(v),
                }));
            }
        }
    }
    rows
}

fn render_run(run: &Run) -> String {
    let rid = esc(&run.name);
    let when = chrono::DateTime::<chrono::Utc>::from(run.modified)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    let mut s = format!(
        "<section class=\"eval-run\" id=\"run-{rid}\" data-run=\"{rid}\"><h2><a href=\"/v1/eval?run={q}\"><code>{rid}</code></a> <small>{when}{state}</small></h2>",
        q = esc(&url_component(&run.name)),
        state = match &run.summary {
            None => " · in progress (no summary yet)",
            Some(v) if v.get("finished_at").is_some_and(Value::is_null) => " · in progress",
            Some(_) => "",
        },
    );
    if let Some(cfg) = &run.run {
        let mut flat = Vec::new();
        flatten(cfg, "", &mut flat);
        s.push_str(
            "<details class=\"run-config\"><summary>Run settings</summary><div class=\"kv\">",
        );
        for (k, v) in flat.iter().take(200) {
            let _ = write!(s, "<span>{}</span><span>{}</span>", esc(k), cell(Some(v)));
        }
        s.push_str("</div></details>");
    }
    if let Some(summary) = &run.summary {
        let prefs = summary
            .get("preferences")
            .filter(|p| p.is_object())
            .unwrap_or(summary);
        let top: Vec<String> = ["base_model", "started_at", "finished_at"]
            .iter()
            .filter_map(|k| {
                let v = summary.get(*k).filter(|v| !v.is_null())?;
                Some(format!("<span>{k}</span><span>{}</span>", cell(Some(v))))
            })
            .collect();
        if !top.is_empty() {
            let _ = write!(s, "<div class=\"kv run-meta\">{}</div>", top.join(""));
        }
        s.push_str(
            "<table class=\"summary\"><thead><tr><th>Preference</th><th>Metric</th><th>Baseline</th><th>Final</th><th>Δ</th></tr></thead><tbody>",
        );
        let mut any = false;
        for (pref, data) in prefs.as_object().into_iter().flatten() {
            for r in summary_rows(data) {
                any = true;
                let delta = match (
                    r.baseline.as_ref().and_then(Value::as_f64),
                    r.last.as_ref().and_then(Value::as_f64),
                ) {
                    (Some(b), Some(f)) => num(Some(f - b)),
                    _ => String::new(),
                };
                let _ = write!(
                    s,
                    "<tr class=\"metric-row\" data-preference=\"{p}\" data-metric=\"{m}\"><td>{p}</td><td>{m}</td>\
<td class=\"baseline\">{b}</td><td class=\"final\">{f}</td><td class=\"delta\">{delta}</td></tr>",
                    p = esc(pref),
                    m = esc(&r.metric),
                    b = if r.baseline.is_some() { cell(r.baseline.as_ref()) } else { String::new() },
                    f = cell(r.last.as_ref()),
                );
            }
        }
        if !any {
            s.push_str(
                "<tr><td colspan=\"5\" class=\"empty\">The summary has no metrics.</td></tr>",
            );
        }
        s.push_str("</tbody></table>");
    }
    for p in &run.preferences {
        let pid = esc(&p.name);
        let _ = write!(
            s,
            "<div class=\"preference\" data-preference=\"{pid}\"><h3>{pid} <small>{} step{}</small></h3>",
            p.steps.len(),
            if p.steps.len() == 1 { "" } else { "s" }
        );
        if let Some(last) = p.steps.last() {
            let mut flat = Vec::new();
            flatten(last, "", &mut flat);
            s.push_str("<details><summary>Last step</summary><div class=\"kv\">");
            for (k, v) in flat.iter().take(100) {
                let _ = write!(s, "<span>{}</span><span>{}</span>", esc(k), cell(Some(v)));
            }
            s.push_str("</div></details>");
        }
        if !p.plots.is_empty() {
            s.push_str("<div class=\"plots\">");
            for name in &p.plots {
                let url = format!(
                    "/v1/eval/plot?run={}&preference={}&name={}",
                    url_component(&run.name),
                    url_component(&p.name),
                    url_component(name)
                );
                let _ = write!(
                    s,
                    "<figure><img class=\"plot\" loading=\"lazy\" src=\"{}\" alt=\"{n}\"><figcaption><small>{n}</small></figcaption></figure>",
                    esc(&url),
                    n = esc(name)
                );
            }
            s.push_str("</div>");
        }
        s.push_str("</div>");
    }
    s.push_str("</section>");
    s
}

/// Why a plot cannot be served.
#[derive(Debug, PartialEq)]
enum PlotError {
    NotFound,
    TooLarge,
    Io(String),
}

/// Reads `{eval_dir}/{run}/{preference}/plots/{name}` after checking that no part of the
/// path is a symlink and that the file really lies under the eval folder.
fn read_plot(eval_dir: &Path, run: &str, pref: &str, name: &str) -> Result<Vec<u8>, PlotError> {
    let mut path = eval_dir.to_path_buf();
    for part in [run, pref, "plots"] {
        path.push(part);
        if !is_real_dir(&path) {
            return Err(PlotError::NotFound);
        }
    }
    path.push(name);
    if !is_real_file(&path) {
        return Err(PlotError::NotFound);
    }
    let root: PathBuf = eval_dir.canonicalize().map_err(|_| PlotError::NotFound)?;
    let real = path.canonicalize().map_err(|_| PlotError::NotFound)?;
    if !real.starts_with(&root) {
        return Err(PlotError::NotFound);
    }
    let file = std::fs::File::open(&real).map_err(|e| PlotError::Io(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PLOT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PlotError::Io(e.to_string()))?;
    if bytes.len() as u64 > MAX_PLOT_BYTES {
        return Err(PlotError::TooLarge);
    }
    Ok(bytes)
}

/// `GET /v1/eval/plot?run=&preference=&name=`.
pub async fn plot(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut issues = Vec::new();
    let mut field = |key: &str, extra_ok: &dyn Fn(&str) -> bool, msg: &str| -> String {
        let loc = vec![json!("query"), json!(key)];
        match q.get(key) {
            None => {
                issues.push(ValidationIssue::new(loc, "missing", "Field required"));
                String::new()
            }
            Some(v) if !safe_name(v) || !extra_ok(v) => {
                let mut i = ValidationIssue::new(loc, "value_error", format!("Value error, {msg}"));
                i.input = Some(json!(v));
                issues.push(i);
                String::new()
            }
            Some(v) => v.clone(),
        }
    };
    let name_msg = "a plain folder name (no slashes, no leading dot)";
    let run = field("run", &|_| true, name_msg);
    let pref = field("preference", &|_| true, name_msg);
    let name = field(
        "name",
        &|n| plot_kind(n).is_some(),
        "a .png or .svg file name in the preference's plots folder",
    );
    finish(issues)?;
    let content_type = plot_kind(&name).unwrap_or("application/octet-stream");
    let dir = st.config().eval_dir.clone();
    let (r, p, n) = (run.clone(), pref.clone(), name.clone());
    let bytes = tokio::task::spawn_blocking(move || read_plot(&dir, &r, &p, &n))
        .await
        .map_err(|e| blocking_failed("Reading the plot failed", e))?
        .map_err(|e| match e {
            PlotError::NotFound => {
                ApiError::NotFound(format!("Plot not found: {run}/{pref}/plots/{name}"))
            }
            PlotError::TooLarge => ApiError::Unprocessable(format!(
                "Plot {name} is larger than {MAX_PLOT_BYTES} bytes"
            )),
            PlotError::Io(m) => ApiError::Internal(format!("Reading the plot failed: {m}")),
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            // An SVG opened on its own must not run script in the API's origin.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "private, no-cache"),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_stay_inside() {
        for ok in ["run-1", "loss.svg", "a b.png", "20260101T000000"] {
            assert!(safe_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "x\0y", "../x"] {
            assert!(!safe_name(bad), "{bad:?}");
        }
        assert_eq!(plot_kind("A.SVG"), Some("image/svg+xml"));
        assert_eq!(plot_kind("a.jpg"), None);
    }

    #[test]
    fn summary_shapes() {
        let rows = summary_rows(&json!({
            "lora_id": "x",
            "baseline": {"compliance": 0.25, "margin": {"mean": 1.0}},
            "final": {"compliance": 0.75, "margin": {"mean": 2.0}},
        }));
        let got: Vec<(String, Option<f64>, Option<Value>)> = rows
            .into_iter()
            .map(|r| (r.metric, r.baseline.and_then(|v| v.as_f64()), r.last))
            .collect();
        assert_eq!(
            got,
            vec![
                ("compliance".into(), Some(0.25), Some(json!(0.75))),
                ("margin.mean".into(), Some(1.0), Some(json!(2.0))),
                ("lora_id".into(), None, Some(json!("x"))),
            ]
        );
        let rows = summary_rows(&json!({
            "compliance": {"baseline": 0.1, "final": 0.9},
            "capability_ratio": 0.98,
        }));
        let got: Vec<(&str, Option<&Value>, Option<&Value>)> = rows
            .iter()
            .map(|r| (r.metric.as_str(), r.baseline.as_ref(), r.last.as_ref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("compliance", Some(&json!(0.1)), Some(&json!(0.9))),
                ("capability_ratio", None, Some(&json!(0.98))),
            ]
        );
    }
}
