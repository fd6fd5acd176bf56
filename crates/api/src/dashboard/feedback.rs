//! `/v1/dashboard`: adapters with their versions (rollback buttons), the feedback history from
//! the feedback log folder, and loss/KL charts.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;
use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::response::Response;
use claas_store::{LoraStore, StoreError, VersionInfo};
use serde_json::{json, Value};

use super::charts::{line_chart, Point, Series};
use super::page::{clip, esc, num, preview, respond, shell, url_component, Window};
use super::{blocking_failed, finish, paging};
use crate::error::ApiError;
use crate::state::ApiState;

/// Characters of one prompt/response/feedback shown before clipping.
const TEXT_LIMIT: usize = 20_000;
/// Newest feedbacks drawn in the charts (a page stays light with a long history).
const CHART_POINTS: usize = 500;

/// One feedback-log file.
struct Entry {
    /// `{YYYYmmddTHHMMSS}` prefix of the file name: the order the API wrote them in.
    stamp: String,
    /// Breaks ties within one second.
    mtime: SystemTime,
    rec: Value,
}

impl Entry {
    fn str(&self, key: &str) -> Option<&str> {
        self.rec.get(key).and_then(Value::as_str)
    }

    fn is_rollback(&self) -> bool {
        self.str("kind") == Some("rollback")
    }

    fn request_id(&self) -> &str {
        self.str("request_id").unwrap_or("")
    }

    fn adapter(&self) -> &str {
        self.str("resolved_lora_id")
            .or_else(|| self.str("lora_id"))
            .unwrap_or("")
    }

    fn version(&self, key: &str) -> Option<u64> {
        self.rec.get(key).and_then(Value::as_u64)
    }

    /// The training metrics (`distill_result.metadata`).
    fn metric(&self, key: &str) -> Option<f64> {
        self.rec
            .pointer("/distill_result/metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_f64)
    }

    /// A guardrail probe number (`guardrail.probe.{key}`, or `guardrail.{key}` flat).
    fn guardrail(&self, key: &str) -> Option<f64> {
        let g = self.rec.get("guardrail")?;
        g.get("probe")
            .and_then(|p| p.get(key))
            .or_else(|| g.get(key))
            .and_then(Value::as_f64)
    }

    /// Prompt, response and feedback of each item, as the client sent them (the logged
    /// request), else as the trainer got them.
    fn items(&self) -> Vec<(String, String, String)> {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let triple = |v: &Value| {
            let feedback = text(v, "feedback")?;
            Some((
                text(v, "prompt").unwrap_or_default(),
                text(v, "response").unwrap_or_default(),
                feedback,
            ))
        };
        let request = self.rec.get("request");
        if let Some(list) = request
            .and_then(|r| r.get("requests"))
            .and_then(Value::as_array)
        {
            return list.iter().filter_map(triple).collect();
        }
        if let Some(one) = request.and_then(triple) {
            return vec![one];
        }
        self.rec
            .get("batch_samples")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(triple).collect())
            .unwrap_or_default()
    }

    fn matches(&self, ids: &[String]) -> bool {
        ["lora_id", "resolved_lora_id"]
            .iter()
            .filter_map(|k| self.str(k))
            .any(|v| ids.iter().any(|id| id == v))
    }
}

/// Every parseable record of the log folder, newest first. A missing folder is an empty log;
/// an unreadable or half-written file is skipped (it must not take the page down).
fn load(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let rec = match std::fs::read(e.path())
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
        {
            Ok(v) if v.is_object() => v,
            Ok(_) => continue,
            Err(err) => {
                tracing::warn!(file = name, error = %err, "skipping a feedback log file");
                continue;
            }
        };
        out.push(Entry {
            stamp: name.split('-').next().unwrap_or("").to_string(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            rec,
        });
    }
    out.sort_by(|a, b| (&b.stamp, b.mtime).cmp(&(&a.stamp, a.mtime)));
    Ok(out)
}

/// One adapter of the versions panel.
struct Adapter {
    id: String,
    aliases: Vec<String>,
    versions: Vec<VersionInfo>,
}

fn adapters(store: &LoraStore, only: Option<&str>) -> Result<Vec<Adapter>, StoreError> {
    let aliases = store.aliases()?;
    let mut by_target: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (alias, target) in &aliases {
        by_target
            .entry(target.as_str())
            .or_default()
            .push(alias.clone());
    }
    let ids = match only {
        Some(id) => vec![id.to_string()],
        // `list` names aliases too; they show beside their target.
        None => store
            .list("")?
            .into_iter()
            .filter(|id| !aliases.contains_key(id))
            .collect(),
    };
    let mut out = Vec::new();
    for id in ids {
        let versions = match store.versions(&id) {
            Ok(v) => v,
            // Deleted between list and read.
            Err(StoreError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        out.push(Adapter {
            aliases: by_target.get(id.as_str()).cloned().unwrap_or_default(),
            id,
            versions,
        });
    }
    Ok(out)
}

struct Data {
    adapters: Vec<Adapter>,
    entries: Vec<Entry>,
}

/// `GET /v1/dashboard?page=&per_page=&lora_id=`.
pub async fn page(
    State(st): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let mut issues = Vec::new();
    let p = paging(&q, &mut issues);
    let filter = q.get("lora_id").map(|s| s.trim()).filter(|s| !s.is_empty());
    if let Some(id) = filter {
        if let Err(e) = claas_store::validate_id(id) {
            issues.push(crate::error::ValidationIssue::new(
                vec![json!("query"), json!("lora_id")],
                "value_error",
                format!("Value error, {e}"),
            ));
        }
    }
    finish(issues)?;
    let filter = filter.map(str::to_string);

    let store = st.store().clone();
    let dir = st.config().feedback_log_dir.clone();
    let f = filter.clone();
    let data = tokio::task::spawn_blocking(move || -> Result<Data, ApiError> {
        // Records name the adapter as requested (often an alias) and as resolved; match both.
        let (only, ids) = match &f {
            None => (None, Vec::new()),
            Some(id) => match store.resolve(id) {
                Ok(r) => (Some(r.id.clone()), vec![id.clone(), r.id]),
                // A deleted adapter's history is still worth seeing.
                Err(StoreError::NotFound(_)) => (None, vec![id.clone()]),
                Err(e) => return Err(ApiError::Internal(format!("Reading adapters failed: {e}"))),
            },
        };
        let adapters = match (&f, &only) {
            (Some(_), None) => Vec::new(),
            _ => adapters(&store, only.as_deref())
                .map_err(|e| ApiError::Internal(format!("Reading adapters failed: {e}")))?,
        };
        let mut entries = load(&dir).map_err(|e| {
            ApiError::Internal(format!(
                "Reading the feedback log folder {} failed: {e}",
                dir.display()
            ))
        })?;
        if f.is_some() {
            entries.retain(|e| e.matches(&ids));
        }
        Ok(Data { adapters, entries })
    })
    .await
    .map_err(|e| blocking_failed("Rendering the dashboard failed", e))??;

    let window = Window::new(data.entries.len(), p.page, p.per_page);
    let extra: Vec<(&str, &str)> = filter.iter().map(|f| ("lora_id", f.as_str())).collect();
    let nav = window.nav("/v1/dashboard", &extra);

    let mut body = String::new();
    if let Some(f) = &filter {
        let _ = write!(
            body,
            "<p id=\"filter\">Showing adapter <code>{}</code> · <a href=\"/v1/dashboard\">show all</a></p>",
            esc(f)
        );
    }
    body.push_str(&versions_panel(&data.adapters));
    body.push_str(&charts(&data.entries));
    let _ = write!(
        body,
        "<section id=\"history\"><h2>Feedback history</h2>{nav}\
<div class=\"scroll\"><table id=\"feedback-table\"><thead><tr><th>Time</th><th>Adapter</th><th>Status</th><th>Version</th>\
<th>Prompt · response · feedback</th><th>Loss metrics</th><th>Timing (ms)</th><th>Guardrail</th></tr></thead><tbody>"
    );
    if data.entries.is_empty() {
        body.push_str(
            "<tr class=\"empty-row\"><td colspan=\"8\" class=\"empty\">No feedback yet. \
Send some with <code>POST /v1/feedback</code> (or <code>/feedback</code> in the chat).</td></tr>",
        );
    }
    for e in &data.entries[window.range()] {
        body.push_str(&if e.is_rollback() {
            rollback_row(e)
        } else {
            feedback_row(e)
        });
    }
    let _ = write!(body, "</tbody></table></div>{nav}</section>");

    let nonce = super::page::nonce();
    Ok(respond(
        shell("Feedback dashboard", &nonce, &body, ROLLBACK_JS),
        &nonce,
    ))
}

fn versions_panel(adapters: &[Adapter]) -> String {
    let mut s = String::from(
        "<section id=\"versions\"><h2>Adapters and versions <span id=\"rollback-status\" role=\"status\"></span></h2>",
    );
    if adapters.is_empty() {
        s.push_str("<p class=\"empty\">No adapters under the LoRA root.</p>");
    }
    for a in adapters {
        let aliases = if a.aliases.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = a
                .aliases
                .iter()
                .map(|x| format!("<code class=\"alias\">{}</code>", esc(x)))
                .collect();
            format!(" <small>aliases: {}</small>", list.join(", "))
        };
        let _ = write!(
            s,
            "<div class=\"adapter\" data-lora-id=\"{id}\"><h3><a href=\"/v1/dashboard?lora_id={q}\"><code>{id}</code></a>{aliases}</h3>",
            id = esc(&a.id),
            q = esc(&url_component(&a.id)),
        );
        if a.versions.is_empty() {
            s.push_str("<p class=\"empty\">No version history yet (it starts with the first update).</p></div>");
            continue;
        }
        s.push_str(
            "<table class=\"versions\"><thead><tr><th>Version</th><th>Kind</th><th>Created (UTC)</th><th>From</th>\
<th>Loss</th><th>Feedback</th><th></th></tr></thead><tbody>",
        );
        // Newest first, as the history below.
        for v in a.versions.iter().rev() {
            let kind = v.meta.get("kind").and_then(Value::as_str).unwrap_or("");
            let loss = v
                .meta
                .pointer("/metrics/total_loss")
                .and_then(Value::as_f64);
            let feedback: Vec<String> = v
                .meta
                .get("feedback")
                .and_then(Value::as_array)
                .map(|l| {
                    l.iter()
                        .filter_map(Value::as_str)
                        .map(|t| esc(&preview(t, 120)))
                        .collect()
                })
                .unwrap_or_default();
            let action = if v.current {
                "<span class=\"current-mark badge ok\">current</span>".to_string()
            } else {
                // Through an alias when there is one: the rollback then also reloads the
                // alias's served name (what clients chat with), not only the id's.
                let via = a
                    .aliases
                    .first()
                    .map(|x| format!(" data-via=\"{}\"", esc(x)))
                    .unwrap_or_default();
                format!(
                    "<button type=\"button\" class=\"rollback\" data-lora-id=\"{}\"{via} data-version=\"{}\">Rollback</button>",
                    esc(&v.id),
                    v.version
                )
            };
            let _ = write!(
                s,
                "<tr class=\"version-row{cur}\" data-version=\"{n}\" data-current=\"{c}\"><td title=\"{name}\"><code>v{n}</code></td>\
<td>{kind}</td><td>{created}</td><td>{parent}</td><td>{loss}</td><td>{fb}</td><td>{action}</td></tr>",
                cur = if v.current { " current" } else { "" },
                n = v.version,
                c = v.current,
                name = esc(&v.name),
                kind = esc(kind),
                created = esc(&short_time(&v.created_utc)),
                parent = v.parent.map(|p| format!("v{p}")).unwrap_or_else(|| "–".into()),
                loss = num(loss),
                fb = feedback.join("<br>"),
            );
        }
        s.push_str("</tbody></table></div>");
    }
    s.push_str("</section>");
    s
}

/// `2026-12-01T05:15:17.805Z` as `2026-12-01 05:15:17` (the table stays one line per version).
fn short_time(rfc3339: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(rfc3339) {
        Ok(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

fn charts(entries: &[Entry]) -> String {
    // Oldest first; rollbacks and failures have no metrics.
    let trained: Vec<&Entry> = entries
        .iter()
        .rev()
        .filter(|e| !e.is_rollback() && e.metric("total_loss").is_some())
        .collect();
    let skip = trained.len().saturating_sub(CHART_POINTS);
    let series = |class, name, color, get: &dyn Fn(&Entry) -> Option<f64>| Series {
        class,
        name,
        color,
        points: trained
            .iter()
            .enumerate()
            .skip(skip)
            .filter_map(|(x, e)| {
                get(e).map(|y| Point {
                    x,
                    y,
                    label: format!("{} · {}", e.str("timestamp_utc").unwrap_or(""), e.adapter()),
                    request_id: e.request_id().to_string(),
                    version: e.version("adapter_version"),
                })
            })
            .collect(),
    };
    let loss = [series("total-loss", "total_loss", "#2f6fde", &|e| {
        e.metric("total_loss")
    })];
    let mut kl = vec![series("kl-reg", "kl_reg", "#b54708", &|e| {
        e.metric("kl_reg")
    })];
    let to_base = series("kl-to-base", "guardrail kl_to_base", "#7a5af8", &|e| {
        e.guardrail("kl_to_base")
    });
    if !to_base.points.is_empty() {
        kl.push(to_base);
    }
    format!(
        "<section id=\"charts\"><h2>Training</h2><div class=\"charts\"><div class=\"chart\">{}</div><div class=\"chart\">{}</div></div></section>",
        line_chart("loss-chart", "Loss per feedback", &loss),
        line_chart("kl-chart", "KL per feedback", &kl),
    )
}

fn version_cell(e: &Entry) -> String {
    let made = match (e.version("adapter_version"), e.version("previous_version")) {
        (Some(v), Some(p)) => format!("<code>v{v}</code> <small>from v{p}</small>"),
        (Some(v), None) => format!("<code>v{v}</code>"),
        _ => return "–".into(),
    };
    // A guardrail rollback leaves another version serving than the one made.
    match (e.version("current_version"), e.version("adapter_version")) {
        (Some(c), Some(v)) if c != v => format!("{made}<br><small>serving v{c}</small>"),
        _ => made,
    }
}

fn adapter_cell(e: &Entry) -> String {
    let requested = e.str("lora_id").unwrap_or("");
    let resolved = e.adapter();
    if requested.is_empty() || requested == resolved {
        format!("<code>{}</code>", esc(resolved))
    } else {
        format!(
            "<code>{}</code><br><small>→ {}</small>",
            esc(requested),
            esc(resolved)
        )
    }
}

fn time_cell(e: &Entry) -> String {
    let rid = e.request_id();
    let short: String = rid.chars().take(12).collect();
    format!(
        "{}<br><small class=\"rid\" title=\"{}\">{}</small>",
        esc(&short_time(e.str("timestamp_utc").unwrap_or(""))),
        esc(rid),
        esc(&short)
    )
}

fn feedback_row(e: &Entry) -> String {
    let status = e.str("status").unwrap_or("unknown");
    let phase = e.str("phase").unwrap_or("");
    let items = e.items();
    let mut texts = String::new();
    for (i, (prompt, response, feedback)) in items.iter().enumerate() {
        let _ = write!(
            texts,
            "<details class=\"sample\"><summary>{n}<span class=\"feedback-text\">{fb_short}</span></summary>\
<div class=\"kv\"><b>Prompt</b><pre class=\"prompt\">{prompt}</pre><b>Response</b><pre class=\"response\">{response}</pre>\
<b>Feedback</b><pre class=\"feedback\">{feedback}</pre></div></details>",
            n = if items.len() > 1 {
                format!("{}/{} · ", i + 1, items.len())
            } else {
                String::new()
            },
            fb_short = esc(&preview(feedback, 100)),
            prompt = esc(&clip(prompt, TEXT_LIMIT)),
            response = esc(&clip(response, TEXT_LIMIT)),
            feedback = esc(&clip(feedback, TEXT_LIMIT)),
        );
    }
    if let Some(err) = e.str("error") {
        let _ = write!(
            texts,
            "<pre class=\"error-text error\">{}</pre>",
            esc(&clip(err, TEXT_LIMIT))
        );
    }
    let mut metrics = String::new();
    for key in [
        "total_loss",
        "distill_loss",
        "kl_reg",
        "mean_is_ratio",
        "clip_fraction",
        "grad_norm",
    ] {
        if let Some(v) = e.metric(key) {
            let _ = write!(
                metrics,
                "<span class=\"metric\" data-name=\"{key}\" data-value=\"{v}\">{key}</span><span>{}</span>",
                num(Some(v))
            );
        }
    }
    if let Some(n) = e
        .rec
        .pointer("/distill_result/metadata/tokens_processed")
        .and_then(Value::as_u64)
    {
        let _ = write!(metrics, "<span>tokens</span><span>{n}</span>");
    }
    let metrics = if metrics.is_empty() {
        "–".into()
    } else {
        format!("<div class=\"kv\">{metrics}</div>")
    };
    if texts.is_empty() {
        texts.push('–');
    }
    format!(
        "<tr class=\"feedback-row\" id=\"fb-{rid}\" data-request-id=\"{rid}\" data-status=\"{st}\" data-version=\"{ver}\">\
<td>{time}</td><td>{adapter}</td><td><span class=\"badge {st}\">{st}</span><br><small>{phase}</small></td>\
<td>{version}</td><td class=\"texts\">{texts}</td><td>{metrics}</td><td>{timing}</td><td>{guard}</td></tr>",
        rid = esc(e.request_id()),
        st = esc(status),
        ver = e.version("adapter_version").map(|v| v.to_string()).unwrap_or_default(),
        time = time_cell(e),
        adapter = adapter_cell(e),
        phase = esc(phase),
        version = version_cell(e),
        timing = timing(e),
        guard = guardrail(e),
    )
}

fn timing(e: &Entry) -> String {
    let Some(t) = e.rec.get("timing_ms").and_then(Value::as_object) else {
        return "–".into();
    };
    let mut s = String::from("<div class=\"kv timing\">");
    for (k, v) in t {
        if let Some(x) = v.as_f64().filter(|x| *x > 0.0 || k == "total") {
            let _ = write!(s, "<span>{}</span><span>{x:.0}</span>", esc(k));
        }
    }
    s.push_str("</div>");
    s
}

fn guardrail(e: &Entry) -> String {
    let Some(g) = e.rec.get("guardrail").filter(|g| g.is_object()) else {
        return "<span class=\"muted\">–</span>".into();
    };
    let status = g.get("status").and_then(Value::as_str).unwrap_or("unknown");
    let mut s = format!(
        "<span class=\"guardrail badge {c}\" data-status=\"{c}\">{c}</span><div class=\"kv\">",
        c = esc(status)
    );
    let bound = |k: &str| g.pointer(&format!("/bounds/{k}")).and_then(Value::as_f64);
    for (label, key, limit) in [
        (
            "kl_to_base",
            "kl_to_base",
            bound("max_kl_to_base").map(|b| format!(" ≤ {}", num(Some(b)))),
        ),
        (
            "entropy",
            "entropy",
            bound("min_entropy").map(|b| format!(" ≥ {}", num(Some(b)))),
        ),
        ("base entropy", "base_entropy", None),
    ] {
        if let Some(v) = e.guardrail(key) {
            let _ = write!(
                s,
                "<span>{label}</span><span data-name=\"{key}\" data-value=\"{v}\">{}{}</span>",
                num(Some(v)),
                limit
                    .map(|l| format!(" <small>(bound{l})</small>"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(list) = g.get("violations").and_then(Value::as_array) {
        let v: Vec<String> = list
            .iter()
            .map(|x| esc(&preview(x.as_str().unwrap_or(&x.to_string()), 200)))
            .collect();
        if !v.is_empty() {
            let _ = write!(
                s,
                "<span>violations</span><span class=\"error\">{}</span>",
                v.join("<br>")
            );
        }
    }
    if let Some(n) = g.get("rolled_back_to").and_then(Value::as_u64) {
        let _ = write!(s, "<span>serving</span><span><code>v{n}</code></span>");
    }
    s.push_str("</div>");
    s
}

fn rollback_row(e: &Entry) -> String {
    format!(
        "<tr class=\"rollback-row\" id=\"rb-{rid}\" data-request-id=\"{rid}\" data-version=\"{ver}\">\
<td>{time}</td><td>{adapter}</td><td><span class=\"badge rollback-kind\">rollback</span></td>\
<td><code>v{ver}</code> <small>{prev}</small></td><td colspan=\"4\" class=\"muted\">Rolled back to v{ver}{err}</td></tr>",
        rid = esc(e.request_id()),
        ver = e
            .version("adapter_version")
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into()),
        prev = e
            .version("previous_version")
            .map(|p| format!("was v{p}"))
            .unwrap_or_default(),
        time = time_cell(e),
        adapter = adapter_cell(e),
        err = e
            .str("error")
            .map(|m| format!(": {}", esc(m)))
            .unwrap_or_default(),
    )
}

/// Rollback buttons: the key travels in the `claas_api_key` cookie (same-origin), and the page
/// reloads to show the new current version.
const ROLLBACK_JS: &str = r#"
document.addEventListener('click', async function (ev) {
  const b = ev.target.closest('button.rollback');
  if (!b) return;
  const status = document.getElementById('rollback-status');
  document.querySelectorAll('button.rollback').forEach(function (x) { x.disabled = true; });
  status.textContent = 'Rolling back ' + b.dataset.loraId + ' to v' + b.dataset.version + '…';
  try {
    const r = await fetch('/v1/lora/rollback', {
      method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({lora_id: b.dataset.via || b.dataset.loraId, version: Number(b.dataset.version)})
    });
    if (r.ok) { location.reload(); return; }
    let detail = r.status + ' ' + r.statusText;
    try { const j = await r.json(); detail = typeof j.detail === 'string' ? j.detail : JSON.stringify(j.detail); } catch (_) {}
    status.textContent = 'Rollback failed: ' + detail;
  } catch (err) {
    status.textContent = 'Rollback failed: ' + err;
  }
  status.className = 'error';
  document.querySelectorAll('button.rollback').forEach(function (x) { x.disabled = false; });
});
"#;
