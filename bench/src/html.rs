//! The self-contained HTML report: the Markdown report's sections turned
//! into HTML, one SVG chart per scenario (tagged `data-scenario`), and the
//! isolation matrix as a colored table with a line of explanation per row.
//! No scripts, no external files; the page is well-formed XML, so any
//! parser can read it.

use std::fmt::Write;

use crate::report::{markdown, peak_rss_p50, summaries};
use crate::results::Results;
use crate::runner::SubjectResult;
use crate::svg::{bars, bars_on, esc, Axis, Bar};

fn inline(s: &str) -> String {
    // `code` spans; everything escaped.
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{}</code>", esc(part));
        } else {
            out.push_str(&esc(part));
        }
    }
    out
}

/// Markdown (the subset `report::markdown` writes) to HTML.
fn md_to_html(md: &str) -> String {
    let mut out = String::new();
    let mut in_table = false;
    let mut header = true;
    let mut in_list = false;
    for line in md.lines() {
        let l = line.trim_end();
        if !l.starts_with('|') && in_table {
            out.push_str("</tbody></table>\n");
            in_table = false;
        }
        if !l.starts_with("- ") && in_list {
            out.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(h) = l.strip_prefix("## ") {
            let _ = writeln!(out, "<h2>{}</h2>", inline(h));
        } else if let Some(h) = l.strip_prefix("# ") {
            let _ = writeln!(out, "<h1>{}</h1>", inline(h));
        } else if l.starts_with('|') {
            if l.starts_with("|---") {
                continue;
            }
            if !in_table {
                out.push_str("<table><tbody>\n");
                in_table = true;
                header = true;
            }
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
            out.push_str("<tr>");
            for c in cells {
                let tag = if header { "th" } else { "td" };
                let (class, text) = if let Some(t) = c.strip_prefix("✔ ") {
                    (" class=\"good\"", t)
                } else if let Some(t) = c.strip_prefix("✘ ") {
                    (" class=\"bad\"", t)
                } else {
                    ("", c)
                };
                let _ = write!(out, "<{tag}{class}>{}</{tag}>", inline(text));
            }
            out.push_str("</tr>\n");
            header = false;
        } else if let Some(item) = l.strip_prefix("- ") {
            if !in_list {
                out.push_str("<ul>\n");
                in_list = true;
            }
            let _ = writeln!(out, "<li>{}</li>", inline(item));
        } else if !l.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", inline(l));
        }
    }
    if in_table {
        out.push_str("</tbody></table>\n");
    }
    if in_list {
        out.push_str("</ul>\n");
    }
    out
}

fn startup_chart(scenario: &str, title: &str, subjects: &[SubjectResult]) -> String {
    let b: Vec<Bar> = subjects
        .iter()
        .filter_map(|r| {
            let e = summaries(r).1?;
            Some(Bar {
                label: r.name.clone(),
                value: e.p50,
                whisker: Some(e.p90),
                note: format!("{:.1} ms (p90 {:.1})", e.p50, e.p90),
            })
        })
        .collect();
    // Containers start in milliseconds, a VM on a slow host in tens of
    // seconds: past two decades a linear axis would hide the fast ones.
    let axis = Axis::fitting(b.iter().map(|b| b.value), 2.0);
    let unit = match axis {
        Axis::Log => "ms, log scale, bar p50, whisker p90",
        Axis::Linear => "ms, bar p50, whisker p90",
    };
    bars_on(scenario, title, unit, &b, None, axis)
}

/// Each subject's median peak RSS from its traced runs, if any has them.
fn peak_rss_chart(subjects: &[SubjectResult]) -> Option<String> {
    let b: Vec<Bar> = subjects
        .iter()
        .filter_map(|r| {
            let kib = peak_rss_p50(r)?;
            Some(Bar {
                label: r.name.clone(),
                value: kib / 1024.0,
                whisker: None,
                note: format!("{:.1} MiB", kib / 1024.0),
            })
        })
        .collect();
    (!b.is_empty()).then(|| {
        bars(
            "floor-rss",
            "Null guest, the monitor's own peak RSS",
            "MiB, median of traced runs",
            &b,
            None,
        )
    })
}

/// The whole page.
pub fn page(r: &Results) -> String {
    let md = markdown(r);
    let mut sections = md.split("\n## ");
    let head = sections.next().unwrap_or("");
    let mut body = md_to_html(head);
    for sec in sections {
        let title = sec.lines().next().unwrap_or("");
        let chart = match title {
            "Startup" => r
                .startup
                .as_ref()
                .map(|s| startup_chart("startup", "Start to exit of /bin/true", &s.subjects)),
            "Monitor floor" => r.floor.as_ref().map(|s| {
                let mut c = startup_chart("floor", "Null guest, start to exit", &s.subjects);
                if let Some(rss) = peak_rss_chart(&s.subjects) {
                    c.push_str(&rss);
                }
                c
            }),
            "Memory" => r.memory.as_ref().map(|m| {
                let b: Vec<Bar> = m
                    .idle
                    .iter()
                    .filter_map(|i| {
                        Some(Bar {
                            label: i.name.clone(),
                            value: i.pss_kib?,
                            whisker: None,
                            note: format!("{:.0} KiB", i.pss_kib?),
                        })
                    })
                    .collect();
                bars("memory", "Host memory per idle box", "KiB PSS", &b, None)
            }),
            "Isolation" => r.isolation.as_ref().map(|iso| {
                let total = iso.rows.len();
                let b: Vec<Bar> = iso
                    .subjects
                    .iter()
                    .enumerate()
                    .skip(1)
                    .map(|(i, s)| {
                        let good = iso
                            .rows
                            .iter()
                            .filter(|row| row.cells.get(i).is_some_and(|c| c.class == "good"))
                            .count();
                        Bar {
                            label: s.clone(),
                            value: good as f64,
                            whisker: None,
                            note: format!("{good} of {total} rows isolated"),
                        }
                    })
                    .collect();
                bars(
                    "isolation",
                    "Rows where the box is isolated",
                    "count",
                    &b,
                    None,
                )
            }),
            "Workload speed" => r.speed.as_ref().map(|sp| {
                let base = sp.subjects.iter().find(|s| s.name == sp.baseline);
                let mut b = Vec::new();
                for s in &sp.subjects {
                    for (t, v) in &s.tests {
                        let (Some(v), Some(bv)) = (
                            v.as_ref(),
                            base.and_then(|b| b.tests.iter().find(|(n, _)| n == t))
                                .and_then(|(_, v)| v.as_ref()),
                        ) else {
                            continue;
                        };
                        if bv.p50 > 0.0 {
                            b.push(Bar {
                                label: format!("{} · {t}", s.name),
                                value: v.p50 / bv.p50,
                                whisker: None,
                                note: format!("{:.2}x", v.p50 / bv.p50),
                            });
                        }
                    }
                }
                bars(
                    "speed",
                    "Time relative to native",
                    "ratio, 1.00 = native",
                    &b,
                    Some(1.0),
                )
            }),
            _ => None,
        };
        let html = md_to_html(&format!("## {sec}"));
        let (h2, rest) = html.split_once('\n').unwrap_or((&html, ""));
        body.push_str(h2);
        body.push('\n');
        if let Some(c) = chart {
            let _ = writeln!(body, "<figure>{c}</figure>");
        }
        if title == "Isolation" {
            if let Some(iso) = &r.isolation {
                body.push_str(&matrix(iso));
            }
            // The Markdown matrix is replaced by the annotated one; keep the
            // rest (containment, attack surface).
            let after = rest
                .split_once("</tbody></table>\n")
                .map_or(rest, |(_, a)| a);
            body.push_str(after);
        } else {
            body.push_str(rest);
        }
    }
    format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\"><head><meta charset=\"utf-8\"/><title>twinbox bench {}</title><style>{}</style></head><body>\n{body}</body></html>\n",
        esc(&r.machine.date),
        STYLE
    )
}

fn matrix(iso: &crate::scenarios::isolation::Isolation) -> String {
    let mut t = String::from("<table class=\"matrix\"><tbody>\n<tr><th></th>");
    for s in &iso.subjects {
        let _ = write!(t, "<th>{}</th>", esc(s));
    }
    t.push_str("<th>what it means</th></tr>\n");
    for row in &iso.rows {
        let _ = write!(t, "<tr><th>{}</th>", esc(&row.label));
        for c in &row.cells {
            let _ = write!(t, "<td class=\"{}\">{}</td>", c.class, esc(&c.text));
        }
        let _ = writeln!(t, "<td class=\"explain\">{}</td></tr>", esc(&row.explain));
    }
    t.push_str("</tbody></table>\n");
    t
}

const STYLE: &str = "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}td.good{background:#d9f2d9}td.bad{background:#f7d4d4}td.info{background:#f4f4f4}td.explain{font-size:12px;color:#555}code{background:#f0f0f0;padding:0 3px}figure{margin:1em 0}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::Machine;
    use crate::scenarios::isolation::{rows, Isolation};
    use crate::scenarios::memory::{IdleResult, Memory};
    use crate::scenarios::speed::{Speed, SpeedResult};
    use crate::scenarios::startup::Startup;
    use crate::stats::summarize;

    fn startup(names: &[&str]) -> Startup {
        Startup {
            runs: 3,
            warmup: 0,
            gap_ms: 0,
            baseline: names[0].into(),
            subjects: names
                .iter()
                .map(|n| crate::report::tests::result(n, &[1, 2, 3]))
                .collect(),
        }
    }

    #[test]
    fn the_page_parses_and_has_one_chart_per_scenario() -> Result<(), Box<dyn std::error::Error>> {
        let host = serde_json::json!({"kernel": "6.18", "boot_id": "a", "pids_visible": [1, 2, 3, 4, 5], "hostname": "h <&>"});
        let boxed = serde_json::json!({"kernel": "6.18", "boot_id": "a", "pids_visible": [1], "hostname": "box"});
        let mut floor = startup(&["twinbox-vmm", "qemu-microvm"]);
        floor.subjects[0].peak_rss_kib = vec![3072, 3400, 3500];
        let r = Results {
            machine: Machine {
                host: "h".into(),
                kernel: "6.18".into(),
                cpus: 2,
                memory_mib: 1024,
                hypervisor: "PVM".into(),
                cgroups: "hybrid".into(),
                date: "2026-11-22".into(),
            },
            quick: true,
            versions: vec![("crun".into(), "1.8.1".into())],
            notes: vec!["a note with `code` & <angle>".into()],
            startup: Some(startup(&["native", "twinbox-container"])),
            floor: Some(floor),
            memory: Some(Memory {
                idle: vec![IdleResult {
                    name: "twinbox-container".into(),
                    unavailable: None,
                    pss_kib: Some(2000.0),
                    samples_kib: vec![2000.0],
                    processes: 1,
                }],
                density: vec![],
            }),
            isolation: Some(Isolation {
                subjects: vec!["host".into(), "twinbox-container".into()],
                unavailable: vec![],
                reports: vec![],
                rows: rows(&host, &[Some(&boxed)]),
                containment: vec![],
                host_syscalls: vec![("twinbox-container".into(), Some(80))],
                attack_surface: vec![],
            }),
            speed: Some(Speed {
                reps: 1,
                baseline: "native".into(),
                subjects: vec![
                    SpeedResult {
                        name: "native".into(),
                        unavailable: None,
                        tests: vec![("cpu".into(), summarize(&[1.0]))],
                    },
                    SpeedResult {
                        name: "twinbox-container".into(),
                        unavailable: None,
                        tests: vec![("cpu".into(), summarize(&[1.1]))],
                    },
                ],
            }),
            seconds: 1.0,
        };
        let html = page(&r);
        let opt = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(&html, opt)?;
        let charts: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name("svg"))
            .filter_map(|n| n.attribute("data-scenario"))
            .collect();
        assert_eq!(
            charts,
            vec![
                "startup",
                "floor",
                "floor-rss",
                "memory",
                "isolation",
                "speed"
            ]
        );
        // Only subjects with traced runs get a peak-RSS bar.
        assert!(html.contains("3.3 MiB"), "median of the traced runs");
        let mut plain = r.clone();
        if let Some(f) = plain.floor.as_mut() {
            f.subjects[0].peak_rss_kib.clear();
        }
        assert!(!page(&plain).contains("floor-rss"));
        // The matrix is colored and explained.
        assert!(doc
            .descendants()
            .any(|n| n.attribute("class") == Some("good")));
        assert!(doc
            .descendants()
            .any(|n| n.attribute("class") == Some("explain")));
        assert!(html.contains("&lt;angle&gt;"));
        Ok(())
    }
}
