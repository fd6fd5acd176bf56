//! Plots of a preference's metrics over steps, as PNG and SVG (plotters). Text (titles, axis
//! labels, legends) needs a TrueType font: the first of `CLAAS_EVAL_FONT` and the usual
//! DejaVu/Liberation paths (Debian's `fonts-dejavu-core`) is used; without one, plots are drawn
//! without text rather than not at all.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::output;
use crate::runner::{Metrics, StepRecord};
use crate::{EvalError, Result};

/// Where a TrueType font is looked for (after `CLAAS_EVAL_FONT`).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

const SIZE: (u32, u32) = (800, 480);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Whether plots can carry text: registers a font with plotters on first call.
pub fn text_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        let env = std::env::var("CLAAS_EVAL_FONT").ok();
        env.iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied())
            .any(|p| match std::fs::read(p) {
                Ok(bytes) => {
                    // plotters keeps fonts for the process's life; one leak per font loaded.
                    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
                }
                Err(_) => false,
            })
    })
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One chart: a title, the y axis' name and its lines over steps.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
}

fn series(
    records: &[(usize, &Metrics)],
    label: &str,
    f: impl Fn(&Metrics) -> Option<f64>,
) -> Series {
    Series {
        label: label.to_string(),
        points: records
            .iter()
            .filter_map(|(s, m)| f(m).filter(|v| v.is_finite()).map(|v| (*s as f64, v)))
            .collect(),
    }
}

/// The charts of one preference: margin, compliance, capability, collapse.
pub fn charts(baseline: &StepRecord, steps: &[StepRecord]) -> Vec<(&'static str, Chart)> {
    let all: Vec<(usize, &Metrics)> = std::iter::once(baseline)
        .chain(steps)
        .map(|r| (r.step, &r.metrics))
        .collect();
    let name = &baseline.preference;
    vec![
        (
            "margin",
            Chart {
                title: format!("{name}: log-prob margin (preferred - dispreferred)"),
                y_label: "nats".into(),
                series: vec![
                    series(&all, "margin", |m| Some(m.logprob_margin)),
                    series(&all, "delta from baseline", |m| {
                        Some(m.logprob_margin_delta)
                    }),
                ],
            },
        ),
        (
            "compliance",
            Chart {
                title: format!("{name}: compliance rate"),
                y_label: "fraction of probes passing".into(),
                series: vec![series(&all, "compliance", |m| Some(m.compliance))],
            },
        ),
        (
            "capability",
            Chart {
                title: format!("{name}: general capability (reference answers)"),
                y_label: "mean log-prob per token".into(),
                series: vec![series(&all, "capability", |m| Some(m.capability_logprob))],
            },
        ),
        (
            "collapse",
            Chart {
                title: format!("{name}: collapse signals"),
                y_label: "value".into(),
                series: vec![
                    series(&all, "entropy (nats, top-k)", |m| m.entropy),
                    series(&all, "distinct-1", |m| m.distinct_1),
                    series(&all, "distinct-2", |m| m.distinct_2),
                    series(&all, "self-ROUGE-L", |m| m.self_rouge_l),
                    series(&all, "KL(base||adapter)/token", |m| m.kl_to_base),
                ],
            },
        ),
    ]
}

/// Writes `{dir}/{margin,compliance,capability,collapse}.{png,svg}`.
pub fn plot_preference(dir: &Path, baseline: &StepRecord, steps: &[StepRecord]) -> Result<()> {
    output::create_dir(dir)?;
    let labels = text_available();
    for (stem, chart) in charts(baseline, steps) {
        write_chart(dir, stem, &chart, labels)?;
    }
    Ok(())
}

/// Writes `{dir}/{stem}.svg` and `{dir}/{stem}.png`; `labels` = draw text (needs a font).
pub fn write_chart(dir: &Path, stem: &str, chart: &Chart, labels: bool) -> Result<()> {
    let svg_path = dir.join(format!("{stem}.svg"));
    let mut svg = String::new();
    draw(
        SVGBackend::with_string(&mut svg, SIZE).into_drawing_area(),
        chart,
        labels,
    )
    .map_err(|m| plot_err(&svg_path, m))?;
    output::write_bytes(&svg_path, svg.as_bytes())?;

    let png_path = dir.join(format!("{stem}.png"));
    let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw(
        BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area(),
        chart,
        labels,
    )
    .map_err(|m| plot_err(&png_path, m))?;
    let png = encode_png(&rgb, SIZE).map_err(|m| plot_err(&png_path, m))?;
    output::write_bytes(&png_path, &png)
}

fn plot_err(path: &Path, message: String) -> EvalError {
    EvalError::Plot {
        path: path.display().to_string(),
        message,
    }
}

fn encode_png(rgb: &[u8], (w, h): (u32, u32)) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    // Pad so flat lines and points on the edge stay visible.
    let pad = ((hi - lo) * 0.08).max(1e-3_f64.max(lo.abs().max(hi.abs()) * 0.02));
    (lo - pad, hi + pad)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart,
    labels: bool,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let points = || chart.series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let (y0, y1) = range(points().map(|p| p.1));
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16);
    if labels {
        builder
            .caption(&chart.title, ("sans-serif", 20))
            .x_label_area_size(40)
            .y_label_area_size(70);
    }
    let mut ctx = builder.build_cartesian_2d(0.0..x_max, y0..y1).map_err(e)?;
    let mut mesh = ctx.configure_mesh();
    // Steps are integers: one tick per step, up to 10 ticks.
    let int_label = |x: &f64| format!("{x:.0}");
    if labels {
        mesh.x_labels((x_max as usize + 1).min(11))
            .x_label_formatter(&int_label)
            .x_desc("step")
            .y_desc(chart.y_label.as_str());
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(e)?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let drawn = ctx
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?;
        if labels {
            drawn.label(s.label.as_str()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        ctx.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(e)?;
    }
    if labels {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "t: margin".into(),
            y_label: "nats".into(),
            series: vec![
                Series {
                    label: "a".into(),
                    points: vec![(0.0, -1.0), (1.0, 0.5), (2.0, 2.0)],
                },
                Series {
                    label: "empty".into(),
                    points: vec![],
                },
            ],
        }
    }

    fn check_files(dir: &Path, stem: &str) -> String {
        let png = std::fs::read(dir.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let svg = std::fs::read_to_string(dir.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        svg
    }

    #[test]
    fn plots_without_text() {
        let d = tempfile::tempdir().unwrap();
        write_chart(d.path(), "bare", &chart(), false).unwrap();
        let svg = check_files(d.path(), "bare");
        assert!(!svg.contains("<text"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }

    #[test]
    fn plots_with_text_when_a_font_exists() {
        if !text_available() {
            eprintln!("no TrueType font found (set CLAAS_EVAL_FONT); text path not exercised");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        write_chart(d.path(), "labelled", &chart(), true).unwrap();
        let svg = check_files(d.path(), "labelled");
        assert!(svg.contains("t: margin"));
        // The PNG with text differs from the one without.
        write_chart(d.path(), "bare", &chart(), false).unwrap();
        let a = std::fs::read(d.path().join("labelled.png")).unwrap();
        let b = std::fs::read(d.path().join("bare.png")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn ranges_pad() {
        assert_eq!(range(std::iter::empty()), (0.0, 1.0));
        let (lo, hi) = range([2.0, 2.0].into_iter());
        assert!(lo < 2.0 && hi > 2.0);
    }
}
