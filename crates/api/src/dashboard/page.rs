//! The page shell, escaping, pagination and the response headers shared by the pages.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a query-string component (RFC 3986 unreserved characters pass).
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most `max` characters of `s`, marking a cut so a huge prompt cannot bloat the page.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}… [{} more characters]", &s[..i], s[i..].chars().count()),
        None => s.to_string(),
    }
}

/// One line of at most `max` characters (for `<summary>` previews).
pub fn preview(s: &str, max: usize) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line,
    }
}

/// A float for a table cell: 4 significant-ish decimals, `–` when absent.
pub fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() && x != 0.0 && (x.abs() >= 1e4 || x.abs() < 1e-3) => {
            format!("{x:.3e}")
        }
        Some(x) if x.is_finite() => format!("{x:.4}"),
        Some(x) => x.to_string(),
        None => "–".into(),
    }
}

const CSS: &str = r#"
:root{--fg:#1d2433;--muted:#667085;--line:#e4e7ec;--bg:#f8f9fb;--accent:#2f6fde;--ok:#127a3e;--bad:#b42318;--warn:#b54708}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);background:var(--bg);margin:0}
header{background:#fff;border-bottom:1px solid var(--line);padding:.8rem 1.5rem;display:flex;gap:1.5rem;align-items:baseline}
header h1{font-size:1.15rem;margin:0}
header nav a{margin-right:1rem;color:var(--accent);text-decoration:none}
main{padding:1rem 1.5rem;max-width:1400px}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:1rem;margin-bottom:1rem}
h2{font-size:1.05rem;margin:.1rem 0 .8rem}
h3{font-size:.95rem;margin:.6rem 0 .4rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid var(--line)}
th{font-weight:600;color:var(--muted);font-size:.8rem;text-transform:uppercase;letter-spacing:.03em}
tr.current{background:#eef4ff}
pre{white-space:pre-wrap;word-break:break-word;margin:.2rem 0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace;background:var(--bg);padding:.35rem .5rem;border-radius:4px;max-height:20rem;overflow:auto}
details summary{cursor:pointer}
.muted,small{color:var(--muted)}
.badge{display:inline-block;padding:0 .45rem;border-radius:999px;font-size:.78rem;border:1px solid currentColor}
.ok,.passed{color:var(--ok)}.error,.rolled_back{color:var(--bad)}.rollback-kind{color:var(--warn)}
button.rollback{font:inherit;padding:.15rem .6rem;border:1px solid var(--accent);color:var(--accent);background:#fff;border-radius:4px;cursor:pointer}
button.rollback:disabled{opacity:.5;cursor:wait}
.charts{display:flex;flex-wrap:wrap;gap:1rem}
.chart{flex:1 1 420px;min-width:320px}
svg.chart-svg{width:100%;height:auto;background:#fff}
svg .axis{stroke:#98a2b3;stroke-width:1}
svg .grid{stroke:#eaecf0;stroke-width:1}
svg text{font:11px system-ui,sans-serif;fill:#667085}
svg .line{fill:none;stroke-width:1.6}
svg .legend text{fill:#344054}
.kv{display:grid;grid-template-columns:max-content 1fr;gap:0 .8rem;font-size:.85rem}
.pager{display:flex;gap:1rem;align-items:center;margin:.6rem 0}
.pager a{color:var(--accent)}
.plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots figure{margin:0;flex:1 1 360px;max-width:640px}
.plots img{width:100%;border:1px solid var(--line);border-radius:4px;background:#fff}
.empty{color:var(--muted);font-style:italic}
#rollback-status{margin-left:1rem}
.scroll{overflow-x:auto}
#feedback-table{font-size:.88rem}
#feedback-table td.texts{min-width:18rem;max-width:32rem}
#feedback-table .kv{font-size:.8rem}
.rid{font-size:.72rem}
"#;

/// A complete page. `body` is already-escaped HTML; `script` runs with the page's nonce.
pub fn shell(title: &str, nonce: &str, body: &str, script: &str) -> String {
    let script = if script.is_empty() {
        String::new()
    } else {
        format!("<script nonce=\"{nonce}\">{script}</script>")
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · CLaaS</title><style nonce=\"{nonce}\">{CSS}</style></head>\
<body><header><h1>CLaaS</h1><nav><a href=\"/v1/dashboard\">Feedback</a><a href=\"/v1/eval\">Evals</a></nav></header>\
<main>{body}</main>{script}</body></html>\n",
        title = esc(title),
    )
}

/// A fresh nonce for one response.
pub fn nonce() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The HTML response: private (conversations), never cached, scripts only with the nonce,
/// no framing (the rollback buttons must not be clickjacked).
pub fn respond(html: String, nonce: &str) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_string()),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::CACHE_CONTROL, "no-store".to_string()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::REFERRER_POLICY, "no-referrer".to_string()),
        ],
        html,
    )
        .into_response()
}

/// Page bounds after clamping `page` into `1..=pages` (as the reference: a page past the end
/// shows the last one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub page: u64,
    pub per_page: u64,
    pub pages: u64,
    pub total: u64,
}

impl Window {
    pub fn new(total: usize, page: u64, per_page: u64) -> Window {
        let total = total as u64;
        let per_page = per_page.max(1);
        let pages = total.div_ceil(per_page).max(1);
        Window {
            page: page.clamp(1, pages),
            per_page,
            pages,
            total,
        }
    }

    /// Index range of the items on this page.
    pub fn range(&self) -> std::ops::Range<usize> {
        let start = ((self.page - 1) * self.per_page).min(self.total) as usize;
        let end = (self.page * self.per_page).min(self.total) as usize;
        start..end
    }

    /// Prev/next links keeping `extra` query pairs.
    pub fn nav(&self, base: &str, extra: &[(&str, &str)]) -> String {
        if self.total == 0 {
            return String::new();
        }
        let link = |page: u64| {
            let mut q: Vec<String> = extra
                .iter()
                .map(|(k, v)| format!("{k}={}", url_component(v)))
                .collect();
            q.push(format!("page={page}"));
            q.push(format!("per_page={}", self.per_page));
            esc(&format!("{base}?{}", q.join("&")))
        };
        let prev = if self.page > 1 {
            format!(
                "<a class=\"prev\" rel=\"prev\" href=\"{}\">« Prev</a>",
                link(self.page - 1)
            )
        } else {
            "<span class=\"muted\">« Prev</span>".into()
        };
        let next = if self.page < self.pages {
            format!(
                "<a class=\"next\" rel=\"next\" href=\"{}\">Next »</a>",
                link(self.page + 1)
            )
        } else {
            "<span class=\"muted\">Next »</span>".into()
        };
        format!(
            "<nav class=\"pager\" data-page=\"{}\" data-pages=\"{}\">{prev}<span>Page {} of {} ({} total)</span>{next}</nav>",
            self.page, self.pages, self.page, self.pages, self.total
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_clipping() {
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(url_component("a/b c&d=é"), "a%2Fb%20c%26d%3D%C3%A9");
        assert_eq!(clip("héllo", 10), "héllo");
        assert_eq!(clip("héllo", 2), "hé… [3 more characters]");
        assert_eq!(preview("a\n b\tc", 10), "a b c");
        assert_eq!(preview("abcdef", 3), "abc…");
        assert_eq!(num(None), "–");
        assert_eq!(num(Some(0.5)), "0.5000");
        assert_eq!(num(Some(1.5e-5)), "1.500e-5");
    }

    #[test]
    fn windows() {
        let w = Window::new(45, 9, 20);
        assert_eq!((w.page, w.pages, w.range()), (3, 3, 40..45));
        let w = Window::new(0, 1, 20);
        assert_eq!((w.page, w.pages, w.range()), (1, 1, 0..0));
        assert_eq!(w.nav("/x", &[]), "");
        let w = Window::new(45, 2, 20);
        let nav = w.nav("/v1/dashboard", &[("lora_id", "a/b&c")]);
        assert!(nav.contains("href=\"/v1/dashboard?lora_id=a%2Fb%26c&amp;page=1&amp;per_page=20\""));
        assert!(nav.contains("page=3"));
    }
}
