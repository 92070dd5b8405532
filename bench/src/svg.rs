//! SVG charts for the HTML report, drawn by hand (no dependencies): a
//! horizontal bar chart with optional whiskers, which serves every scenario
//! (startup p50 with p90 whiskers, memory per box, speed ratios), on a
//! linear axis or, where the values span decades (a VM booting in seconds
//! beside containers starting in milliseconds), a logarithmic one.

use std::fmt::Write;

/// One bar.
#[derive(Debug, Clone)]
pub struct Bar {
    /// Label at the left.
    pub label: String,
    /// Length.
    pub value: f64,
    /// Whisker end (e.g. p90), if any.
    pub whisker: Option<f64>,
    /// Text at the bar's end.
    pub note: String,
}

/// Escapes text for XML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The horizontal axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Axis {
    /// From 0 to the largest value.
    Linear,
    /// Whole decades around the values (which must be positive).
    Log,
}

impl Axis {
    /// Log where the positive values span more than `decades` powers of
    /// ten, else linear.
    pub fn fitting(values: impl Iterator<Item = f64>, decades: f64) -> Self {
        let (lo, hi) = values
            .filter(|v| *v > 0.0)
            .fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if hi > 0.0 && (hi / lo).log10() > decades {
            Self::Log
        } else {
            Self::Linear
        }
    }
}

/// A horizontal bar chart titled `title`, tagged `data-scenario=scenario`,
/// on a linear axis. `reference` draws a dashed line at that value (e.g.
/// 1.0 for ratios).
pub fn bars(
    scenario: &str,
    title: &str,
    unit: &str,
    bars: &[Bar],
    reference: Option<f64>,
) -> String {
    bars_on(scenario, title, unit, bars, reference, Axis::Linear)
}

/// [`bars`] on the given axis. A log axis is labelled at each power of ten.
pub fn bars_on(
    scenario: &str,
    title: &str,
    unit: &str,
    bars: &[Bar],
    reference: Option<f64>,
    axis: Axis,
) -> String {
    let (left, right, row, top) = (190.0, 150.0, 26.0, 34.0);
    let width = 760.0;
    let plot = width - left - right;
    let height = top + row * bars.len().max(1) as f64 + 28.0;
    let values = || {
        bars.iter()
            .flat_map(|b| [Some(b.value), b.whisker])
            .flatten()
            .chain(reference)
    };
    let max = values().fold(0.0f64, f64::max).max(f64::MIN_POSITIVE);
    let min_pos = values().filter(|v| *v > 0.0).fold(max, f64::min);
    let (lo_exp, hi_exp) = (
        min_pos.log10().floor(),
        max.log10().ceil().max(min_pos.log10().floor() + 1.0),
    );
    let x = |v: f64| match axis {
        Axis::Linear => left + plot * (v / max).clamp(0.0, 1.0),
        Axis::Log if v <= 0.0 => left,
        Axis::Log => left + plot * ((v.log10() - lo_exp) / (hi_exp - lo_exp)).clamp(0.0, 1.0),
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" data-scenario="{}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img"><title>{}</title>"#,
        esc(scenario),
        esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{left}" y="18" font-size="14" font-weight="bold">{} ({})</text>"#,
        esc(title),
        esc(unit)
    );
    for (i, b) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + 15.0,
            esc(&b.label)
        );
        let w = (x(b.value) - left).max(1.0);
        let _ = write!(
            s,
            r##"<rect x="{left}" y="{}" width="{w:.1}" height="18" fill="#4a7bb7"/>"##,
            y + 2.0
        );
        if let Some(wv) = b.whisker {
            let (x0, x1) = (x(b.value), x(wv));
            let _ = write!(
                s,
                r##"<line x1="{x0:.1}" y1="{}" x2="{x1:.1}" y2="{}" stroke="#222" stroke-width="1.5"/><line x1="{x1:.1}" y1="{}" x2="{x1:.1}" y2="{}" stroke="#222" stroke-width="1.5"/>"##,
                y + 11.0,
                y + 11.0,
                y + 6.0,
                y + 16.0
            );
        }
        let end = x(b.whisker.unwrap_or(b.value).max(b.value));
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{}" font-size="11">{}</text>"#,
            end + 6.0,
            y + 15.0,
            esc(&b.note)
        );
    }
    if let Some(r) = reference {
        let xr = x(r);
        let _ = write!(
            s,
            r##"<line x1="{xr:.1}" y1="{}" x2="{xr:.1}" y2="{}" stroke="#c33" stroke-dasharray="4 3"/>"##,
            top - 4.0,
            height - 24.0
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#999"/>"##,
        height - 24.0,
        left + plot,
        height - 24.0,
    );
    match axis {
        Axis::Linear => {
            let _ = write!(
                s,
                r##"<text x="{left}" y="{}" font-size="10">0</text><text x="{}" y="{}" font-size="10" text-anchor="end">{max:.2}</text>"##,
                height - 10.0,
                left + plot,
                height - 10.0
            );
        }
        Axis::Log => {
            let mut e = lo_exp;
            while e <= hi_exp {
                let v = 10f64.powf(e);
                let label = if e >= 0.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v}")
                };
                let _ = write!(
                    s,
                    r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ccc"/><text x="{0:.1}" y="{3}" font-size="10" text-anchor="middle">{4}</text>"##,
                    x(v),
                    top - 4.0,
                    height - 24.0,
                    height - 10.0,
                    esc(&label)
                );
                e += 1.0;
            }
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_is_chosen_for_values_decades_apart_and_places_them_by_decade(
    ) -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(Axis::fitting([5.0, 20_000.0].into_iter(), 2.0), Axis::Log);
        assert_eq!(
            Axis::fitting([5.0, 40.0, 0.0].into_iter(), 2.0),
            Axis::Linear
        );
        let bar = |label: &str, value| Bar {
            label: label.into(),
            value,
            whisker: None,
            note: String::new(),
        };
        let svg = bars_on(
            "startup",
            "t",
            "ms",
            &[bar("a", 10.0), bar("b", 100.0), bar("c", 1000.0)],
            None,
            Axis::Log,
        );
        let doc = roxmltree::Document::parse(&svg)?;
        let widths: Vec<f64> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect"))
            .filter_map(|n| n.attribute("width")?.parse().ok())
            .collect();
        // 10, 100, 1000 on an axis from 10 to 1000: 0, half, whole plot
        // (a bar is at least 1 px wide).
        assert_eq!(widths.len(), 3);
        assert!((widths[0] - 1.0).abs() < 0.01, "{widths:?}");
        assert!((widths[2] - 2.0 * widths[1]).abs() < 0.2, "{widths:?}");
        let labels: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .collect();
        for tick in ["10", "100", "1000"] {
            assert!(labels.contains(&tick), "{labels:?}");
        }
        Ok(())
    }

    #[test]
    fn chart_is_well_formed_and_escaped() -> Result<(), Box<dyn std::error::Error>> {
        let svg = bars(
            "startup",
            "a <b> & c",
            "ms",
            &[
                Bar {
                    label: "x<y".into(),
                    value: 2.0,
                    whisker: Some(3.0),
                    note: "2 ms".into(),
                },
                Bar {
                    label: "z".into(),
                    value: 0.0,
                    whisker: None,
                    note: "0".into(),
                },
            ],
            Some(1.0),
        );
        let doc = roxmltree::Document::parse(&svg)?;
        let root = doc.root_element();
        assert_eq!(root.tag_name().name(), "svg");
        assert_eq!(root.attribute("data-scenario"), Some("startup"));
        assert_eq!(
            root.descendants()
                .filter(|n| n.has_tag_name("rect"))
                .count(),
            2
        );
        Ok(())
    }
}
