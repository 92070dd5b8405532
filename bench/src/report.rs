//! Markdown tables of results, with ratios to a baseline subject.

use std::fmt::Write;

use crate::runner::SubjectResult;
use crate::stats::{summarize, Summary};

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The summaries of one subject: time to marker, to exit (ms), peak RSS (MiB).
pub fn summaries(r: &SubjectResult) -> (Option<Summary>, Option<Summary>, Option<Summary>) {
    let marker: Vec<f64> = r
        .samples
        .iter()
        .filter_map(|s| s.to_marker.map(ms))
        .collect();
    let exit: Vec<f64> = r.samples.iter().map(|s| ms(s.to_exit)).collect();
    let rss: Vec<f64> = r
        .samples
        .iter()
        .map(|s| s.max_rss_kib as f64 / 1024.0)
        .collect();
    (summarize(&marker), summarize(&exit), summarize(&rss))
}

/// A Markdown table of `results`, ratios taken to the subject named
/// `baseline` (median to exit, median peak RSS).
pub fn startup_table(results: &[SubjectResult], baseline: &str) -> String {
    let base = results.iter().find(|r| r.name == baseline).map(summaries);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| subject | runs | to marker p50 / p90 (ms) | to exit p50 / p90 / p99 (ms) | exit vs {baseline} | peak RSS p50 (MiB) | RSS vs {baseline} |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for r in results {
        if let Some(why) = &r.unavailable {
            let _ = writeln!(t, "| {} | - | not run: {} | | | | |", r.name, why);
            continue;
        }
        let (m, e, rss) = summaries(r);
        let pair = |s: &Option<Summary>| {
            s.as_ref()
                .map_or("-".into(), |s| format!("{:.1} / {:.1}", s.p50, s.p90))
        };
        let triple = |s: &Option<Summary>| {
            s.as_ref().map_or("-".into(), |s| {
                format!("{:.1} / {:.1} / {:.1}", s.p50, s.p90, s.p99)
            })
        };
        let ratio = |x: &Option<Summary>, b: Option<&Option<Summary>>| match (x, b) {
            (Some(x), Some(Some(b))) if b.p50 > 0.0 => format!("{:.2}x", x.p50 / b.p50),
            _ => "-".into(),
        };
        let failed = if r.failures.is_empty() {
            String::new()
        } else {
            format!(" ({} failed: {})", r.failures.len(), r.failures[0])
        };
        let _ = writeln!(
            t,
            "| {}{} | {} | {} | {} | {} | {} | {} |",
            r.name,
            failed,
            r.samples.len(),
            pair(&m),
            triple(&e),
            ratio(&e, base.as_ref().map(|b| &b.1)),
            rss.as_ref().map_or("-".into(), |s| format!("{:.1}", s.p50)),
            ratio(&rss, base.as_ref().map(|b| &b.2)),
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Sample;
    use std::time::Duration;

    fn result(name: &str, exit_ms: &[u64], rss: u64) -> SubjectResult {
        SubjectResult {
            name: name.into(),
            unavailable: None,
            samples: exit_ms
                .iter()
                .map(|&e| Sample {
                    to_marker: Some(Duration::from_millis(e / 2)),
                    to_exit: Duration::from_millis(e),
                    max_rss_kib: rss,
                    status: 0,
                    timed_out: false,
                })
                .collect(),
            failures: vec![],
        }
    }

    #[test]
    fn ratios_are_to_the_baseline_median() {
        let rs = vec![
            result("base", &[10, 20, 30], 2048),
            result("other", &[5, 10, 15], 1024),
            SubjectResult {
                name: "gone".into(),
                unavailable: Some("not installed".into()),
                samples: vec![],
                failures: vec![],
            },
        ];
        let t = startup_table(&rs, "base");
        assert!(
            t.contains("| base | 3 | 10.0 / 14.0 | 20.0 / 28.0 / 29.8 | 1.00x | 2.0 | 1.00x |"),
            "{t}"
        );
        assert!(
            t.contains("| other | 3 | 5.0 / 6.6 | 10.0 / 14.0 / 14.9 | 0.50x | 1.0 | 0.50x |"),
            "{t}"
        );
        assert!(t.contains("| gone | - | not run: not installed |"), "{t}");
    }
}
