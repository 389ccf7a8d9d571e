//! Charts as self-contained SVG: latency against percentile, on a "nines" axis that spreads
//! the tail (p50, p90, p99, p99.9, ...) evenly, one line per series.

use std::fmt::Write as _;

/// One line of a chart: `(quantile, milliseconds)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];
/// The largest quantile below 1 that the axis shows; the maximum is drawn at its right edge.
const MAX_NINES: f64 = 5.0;

/// Position on the "nines" axis: 0 at p0, 1 at p90, 2 at p99, 3 at p99.9, 4 at p99.99; the
/// maximum (q = 1) sits at the right edge.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_NINES
    } else {
        (-(1.0 - q).log10()).min(MAX_NINES)
    }
}

/// Renders a latency-percentile chart of `series` in milliseconds.
pub fn percentile_chart(title: &str, series: &[Series]) -> String {
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    let y_top = nice_ceiling(max_ms);
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let x = |q: f64| LEFT + plot_width * nines(q) / MAX_NINES;
    let y = |ms: f64| TOP + plot_height * (1.0 - ms / y_top);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        LEFT + plot_width / 2.0,
        escape(title)
    );
    for step in 0..=4 {
        let ms = y_top * f64::from(step) / 4.0;
        let py = y(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            py + 4.0,
            format_ms(ms)
        );
    }
    for (q, label) in [
        (0.0, "p0"),
        (0.9, "p90"),
        (0.99, "p99"),
        (0.999, "p99.9"),
        (0.9999, "p99.99"),
        (1.0, "max"),
    ] {
        let px = x(q);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">milliseconds</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 10.0,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0
    );
    for (index, line) in series.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let points: Vec<String> = line
            .points
            .iter()
            .map(|&(q, ms)| format!("{:.1},{:.1}", x(q), y(ms)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let legend_y = TOP + 16.0 * index as f64 + 6.0;
        let legend_x = LEFT + plot_width + 12.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            legend_x + 18.0,
            legend_x + 24.0,
            legend_y + 4.0,
            escape(&line.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The series of a latency summary's curve, in milliseconds.
pub fn series(name: &str, latency: &crate::stats::Latency) -> Series {
    Series {
        name: name.to_string(),
        points: latency
            .curve
            .iter()
            .map(|&(q, us)| (q, us as f64 / 1000.0))
            .collect(),
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `value`.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&candidate| candidate >= value)
        .unwrap_or(10.0 * magnitude)
}

fn format_ms(ms: f64) -> String {
    if ms.fract() == 0.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis_spreads_the_tail() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
    }

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(0.8), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(37.0), 50.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }

    #[test]
    fn a_chart_names_every_series_and_escapes_text() {
        let svg = percentile_chart(
            "reads <HTTP>",
            &[
                Series {
                    name: "sidecar & co".into(),
                    points: vec![(0.5, 0.2), (0.99, 0.9), (1.0, 3.0)],
                },
                Series {
                    name: "nginx".into(),
                    points: vec![(0.5, 0.1), (1.0, 1.0)],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("reads &lt;HTTP&gt;"));
        assert!(svg.contains("sidecar &amp; co"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
