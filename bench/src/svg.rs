//! SVG charts for the HTML report, drawn by hand (no dependencies): a
//! horizontal bar chart with optional whiskers, which serves every scenario
//! (startup p50 with p90 whiskers, memory per box, speed ratios).

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

/// A horizontal bar chart titled `title`, tagged `data-scenario=scenario`.
/// `reference` draws a dashed line at that value (e.g. 1.0 for ratios).
pub fn bars(
    scenario: &str,
    title: &str,
    unit: &str,
    bars: &[Bar],
    reference: Option<f64>,
) -> String {
    let (left, right, row, top) = (190.0, 150.0, 26.0, 34.0);
    let width = 760.0;
    let plot = width - left - right;
    let height = top + row * bars.len().max(1) as f64 + 28.0;
    let max = bars
        .iter()
        .map(|b| b.whisker.unwrap_or(b.value).max(b.value))
        .chain(reference)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let x = |v: f64| left + plot * (v / max).clamp(0.0, 1.0);
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
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="#999"/><text x="{left}" y="{}" font-size="10">0</text><text x="{}" y="{}" font-size="10" text-anchor="end">{max:.2}</text></svg>"##,
        height - 24.0,
        left + plot,
        height - 24.0,
        height - 10.0,
        left + plot,
        height - 10.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
