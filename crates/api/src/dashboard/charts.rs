//! Inline SVG line charts: no script and no external library, so they render offline and in
//! a page whose CSP allows no foreign code.

use std::fmt::Write;

use super::page::{esc, num};

/// One point; `x` is the feedback's position in time order, not its timestamp (several
/// feedbacks can share a second).
#[derive(Debug, Clone)]
pub struct Point {
    pub x: usize,
    pub y: f64,
    /// Shown on hover.
    pub label: String,
    pub request_id: String,
    pub version: Option<u64>,
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// CSS class of the line and its points (a fixed identifier, never user data).
    pub class: &'static str,
    pub name: &'static str,
    pub color: &'static str,
    pub points: Vec<Point>,
}

const W: f64 = 640.0;
const H: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 30.0;

/// An `<svg id="{id}">` with one `circle.point.{series class}` per point.
pub fn line_chart(id: &str, title: &str, series: &[Series]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg id=\"{id}\" class=\"chart-svg\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\" xmlns=\"http://www.w3.org/2000/svg\">\
<text x=\"{LEFT}\" y=\"16\" font-weight=\"600\">{t}</text>",
        id = esc(id),
        t = esc(title),
    );
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.y.is_finite())
    };
    let (Some(y_min), Some(y_max), Some(x_max)) = (
        finite().map(|p| p.y).reduce(f64::min),
        finite().map(|p| p.y).reduce(f64::max),
        finite().map(|p| p.x).max(),
    ) else {
        let _ = write!(
            s,
            "<text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">No data yet</text></svg>",
            W / 2.0,
            H / 2.0
        );
        return s;
    };
    let x_min = finite().map(|p| p.x).min().unwrap_or(0);
    // A flat series still needs a visible band.
    let pad = if y_max > y_min {
        (y_max - y_min) * 0.08
    } else {
        y_max.abs().max(1.0) * 0.1
    };
    let (mut lo, hi) = (y_min - pad, y_max + pad);
    // Losses and KLs are never negative: no axis below zero for them.
    if y_min >= 0.0 && lo < 0.0 {
        lo = 0.0;
    }
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let sx = |x: usize| {
        if x_max == x_min {
            LEFT + plot_w / 2.0
        } else {
            LEFT + (x - x_min) as f64 / (x_max - x_min) as f64 * plot_w
        }
    };
    let sy = |y: f64| TOP + (hi - y) / (hi - lo) * plot_h;

    for i in 0..=4 {
        let v = lo + (hi - lo) * i as f64 / 4.0;
        let y = sy(v);
        let _ = write!(
            s,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            esc(&num(Some(v)))
        );
    }
    let _ = write!(
        s,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{LEFT}\" y1=\"{TOP}\" y2=\"{}\"/>\
<line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\"/>\
<text x=\"{LEFT}\" y=\"{}\">#{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">#{} (feedback, oldest → newest)</text>",
        H - BOTTOM,
        W - RIGHT,
        H - 10.0,
        x_min + 1,
        W - RIGHT,
        H - 10.0,
        x_max + 1,
        y = H - BOTTOM,
    );

    for (k, ser) in series.iter().enumerate() {
        let pts: Vec<&Point> = ser.points.iter().filter(|p| p.y.is_finite()).collect();
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.x), sy(p.y)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"line {c}\" stroke=\"{col}\" points=\"{}\"/>",
            path.join(" "),
            c = ser.class,
            col = ser.color,
        );
        for p in pts {
            let version = p.version.map(|v| v.to_string()).unwrap_or_default();
            let _ = write!(
                s,
                "<circle class=\"point {c}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{col}\" \
data-index=\"{}\" data-value=\"{}\" data-request-id=\"{}\" data-version=\"{version}\">\
<title>{}: {} — {}</title></circle>",
                sx(p.x),
                sy(p.y),
                p.x,
                p.y,
                esc(&p.request_id),
                ser.name,
                esc(&num(Some(p.y))),
                esc(&p.label),
                c = ser.class,
                col = ser.color,
            );
        }
        let ly = 12.0;
        let lx = W - RIGHT - 150.0 * (series.len() - k) as f64;
        let _ = write!(
            s,
            "<g class=\"legend\"><rect x=\"{lx}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{col}\"/>\
<text x=\"{}\" y=\"{}\">{}</text></g>",
            ly - 8.0,
            lx + 14.0,
            ly + 1.0,
            ser.name,
            col = ser.color,
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(x: usize, y: f64) -> Point {
        Point {
            x,
            y,
            label: "<t>".into(),
            request_id: "r\"1".into(),
            version: Some(x as u64 + 1),
        }
    }

    #[test]
    fn one_circle_per_finite_point_and_escaped_labels() {
        let svg = line_chart(
            "loss-chart",
            "Loss",
            &[Series {
                class: "total-loss",
                name: "total_loss",
                color: "#2f6fde",
                points: vec![pt(0, 1.0), pt(1, f64::NAN), pt(2, 0.5)],
            }],
        );
        assert_eq!(svg.matches("<circle class=\"point total-loss\"").count(), 2);
        assert!(svg.contains("data-request-id=\"r&quot;1\""));
        assert!(svg.contains("&lt;t&gt;") && !svg.contains("<t>"));
        // The smaller loss is drawn lower.
        let cy = |i: &str| -> f64 {
            let at = svg.find(&format!("data-index=\"{i}\"")).unwrap();
            let head = &svg[..at];
            let c = head.rfind("cy=\"").unwrap() + 4;
            head[c..].split('"').next().unwrap().parse().unwrap()
        };
        assert!(cy("2") > cy("0"));
    }

    #[test]
    fn empty_and_flat() {
        let svg = line_chart("kl-chart", "KL", &[]);
        assert!(svg.contains("No data yet") && !svg.contains("<circle"));
        let svg = line_chart(
            "x",
            "X",
            &[Series {
                class: "a",
                name: "a",
                color: "#000",
                points: vec![pt(0, 2.0)],
            }],
        );
        assert_eq!(svg.matches("<circle").count(), 1);
        assert!(!svg.contains("NaN"));
    }
}
