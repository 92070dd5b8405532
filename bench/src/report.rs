//! Markdown tables of results, with ratios to a baseline subject: the
//! startup table (also used by `bench floor` and `bench container`), and
//! the whole report of a `twinbox bench` run.
//!
//! The startup table has a peak-RSS column when the plan asked for traced
//! runs ([`crate::peak_rss`]: the subject's own high-water mark, not
//! `wait4`'s, which counts the benchmark's memory too). A box's memory is
//! the memory scenario's business (PSS of everything it runs).

use std::fmt::Write;

use crate::results::Results;
use crate::runner::SubjectResult;
use crate::stats::{summarize, Summary};

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The summaries of one subject: time to marker, to exit (ms).
pub fn summaries(r: &SubjectResult) -> (Option<Summary>, Option<Summary>) {
    let marker: Vec<f64> = r
        .samples
        .iter()
        .filter_map(|s| s.to_marker.map(ms))
        .collect();
    let exit: Vec<f64> = r.samples.iter().map(|s| ms(s.to_exit)).collect();
    (summarize(&marker), summarize(&exit))
}

/// The median time to exit of the subject named `name`, ms.
pub fn exit_p50(results: &[SubjectResult], name: &str) -> Option<f64> {
    results
        .iter()
        .find(|r| r.name == name)
        .and_then(|r| summaries(r).1)
        .map(|s| s.p50)
}

/// The median peak RSS of a subject's traced runs, KiB.
pub fn peak_rss_p50(r: &SubjectResult) -> Option<f64> {
    let v: Vec<f64> = r.peak_rss_kib.iter().map(|&k| k as f64).collect();
    summarize(&v).map(|s| s.p50)
}

/// A Markdown table of `results`, ratios of median time to exit taken to
/// the subject named `baseline`; a last column of peak RSS when any subject
/// has traced runs.
pub fn startup_table(results: &[SubjectResult], baseline: &str) -> String {
    let base = exit_p50(results, baseline);
    let rss = results.iter().any(|r| !r.peak_rss_kib.is_empty());
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| subject | runs | to marker p50 / p90 (ms) | to exit p50 / p90 / p99 (ms) | min / max (ms) | exit vs {baseline} |{}",
        if rss { " peak RSS p50 (MiB) |" } else { "" }
    );
    let _ = writeln!(
        t,
        "|---|---|---|---|---|---|{}",
        if rss { "---|" } else { "" }
    );
    for r in results {
        if let Some(why) = &r.unavailable {
            let _ = writeln!(
                t,
                "| {} | - | not run: {} | | | |{}",
                r.name,
                why,
                if rss { " |" } else { "" }
            );
            continue;
        }
        let (m, e) = summaries(r);
        let pair = |s: &Option<Summary>| {
            s.as_ref()
                .map_or("-".into(), |s| format!("{:.1} / {:.1}", s.p50, s.p90))
        };
        let triple = |s: &Option<Summary>| {
            s.as_ref().map_or("-".into(), |s| {
                format!("{:.1} / {:.1} / {:.1}", s.p50, s.p90, s.p99)
            })
        };
        let ratio = match (&e, base) {
            (Some(x), Some(b)) if b > 0.0 => format!("{:.2}x", x.p50 / b),
            _ => "-".into(),
        };
        let failed = if r.failures.is_empty() {
            String::new()
        } else {
            format!(" ({} failed: {})", r.failures.len(), r.failures[0])
        };
        let peak = match (rss, peak_rss_p50(r)) {
            (false, _) => String::new(),
            (true, None) => " - |".into(),
            (true, Some(k)) => format!(" {:.1} ({} runs) |", k / 1024.0, r.peak_rss_kib.len()),
        };
        let _ = writeln!(
            t,
            "| {}{} | {} | {} | {} | {} | {} |{}",
            r.name,
            failed,
            r.samples.len(),
            pair(&m),
            triple(&e),
            e.as_ref()
                .map_or("-".into(), |s| format!("{:.1} / {:.1}", s.min, s.max)),
            ratio,
            peak,
        );
    }
    t
}

fn kib(v: Option<f64>) -> String {
    v.map_or("-".into(), |k| format!("{k:.0}"))
}

/// The whole report of a run, as Markdown.
pub fn markdown(r: &Results) -> String {
    let mut t = String::new();
    let m = &r.machine;
    let _ = writeln!(t, "# twinbox bench, {}\n", m.date);
    let _ = writeln!(
        t,
        "Machine: {} ({} CPUs, {} MiB), kernel {}, /dev/kvm: {}, cgroups: {}. {} run, {:.0} s.\n",
        m.host,
        m.cpus,
        m.memory_mib,
        m.kernel,
        m.hypervisor,
        m.cgroups,
        if r.quick { "Quick" } else { "Default" },
        r.seconds
    );
    for n in &r.notes {
        let _ = writeln!(t, "- {n}");
    }
    if !r.notes.is_empty() {
        t.push('\n');
    }
    if !r.versions.is_empty() {
        let v: Vec<String> = r.versions.iter().map(|(s, v)| format!("{s} {v}")).collect();
        let _ = writeln!(t, "Versions: {}.\n", v.join("; "));
    }
    if let Some(s) = &r.startup {
        let _ = writeln!(
            t,
            "## Startup\n\nStart to exit of busybox `/bin/true`; {} runs per subject after {} warm-up rounds, interleaved with the order rotating, {} ms idle before each run.\n",
            s.runs, s.warmup, s.gap_ms
        );
        t.push_str(&startup_table(&s.subjects, &s.baseline));
        t.push('\n');
    }
    if let Some(s) = &r.floor {
        let _ = writeln!(
            t,
            "## Monitor floor\n\nThe null guest (no Linux: it writes a marker and stops the VM) in each monitor, 1 vCPU, 128 MiB; {} runs.\n",
            s.runs
        );
        t.push_str(&startup_table(&s.subjects, &s.baseline));
        t.push('\n');
    }
    if let Some(mem) = &r.memory {
        let _ = writeln!(
            t,
            "## Memory\n\nHost memory one idle box costs: PSS of every host process it keeps alive, without its workload's own (a VM's guest memory is in its monitor's PSS).\n\n| subject | host processes | PSS (KiB, median) | samples |\n|---|---|---|---|"
        );
        for i in &mem.idle {
            match &i.unavailable {
                Some(w) => {
                    let _ = writeln!(t, "| {} | - | not run: {w} | |", i.name);
                }
                None => {
                    let _ = writeln!(
                        t,
                        "| {} | {} | {} | {} |",
                        i.name,
                        i.processes,
                        kib(i.pss_kib),
                        i.samples_kib.len()
                    );
                }
            }
        }
        let _ = writeln!(
            t,
            "\nDensity: K idle boxes at once; the drop of the host's MemAvailable per box (everything the kernel spends on them too), median of the repetitions and their range. Other activity moves MemAvailable by a few MiB, so small figures are noisy. MemAvailable counts page cache as free, so pages the boxes share from a file (a VM snapshot's memory file, mapped private) hardly move it: the PSS per box (every box's host processes, shared pages divided among them) says what they cost with those pages counted.\n\n| subject | boxes | MemAvailable drop per box (KiB, median) | range over repetitions (KiB) | PSS per box (KiB, median) |\n|---|---|---|---|---|"
        );
        for d in &mem.density {
            match &d.unavailable {
                Some(w) => {
                    let _ = writeln!(t, "| {} | - | not run: {w} | | |", d.name);
                }
                None => {
                    let lo = d.per_box_kib.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = d
                        .per_box_kib
                        .iter()
                        .copied()
                        .fold(f64::NEG_INFINITY, f64::max);
                    let range = if d.per_box_kib.is_empty() {
                        "-".to_string()
                    } else {
                        format!("{lo:.0} to {hi:.0}")
                    };
                    let _ = writeln!(
                        t,
                        "| {} | {} | {} | {} | {} |",
                        d.name,
                        d.boxes,
                        kib(d.median_kib),
                        range,
                        kib(d.pss_median_kib)
                    );
                }
            }
        }
        t.push('\n');
    }
    if let Some(iso) = &r.isolation {
        let _ = writeln!(t, "## Isolation\n\nThe probe's report from inside each box (\"host\" is the probe run directly).\n");
        let _ = writeln!(t, "| | {} |", iso.subjects.join(" | "));
        let _ = writeln!(t, "|---|{}", "---|".repeat(iso.subjects.len()));
        for row in &iso.rows {
            let cells: Vec<String> = row
                .cells
                .iter()
                .map(|c| match c.class {
                    "good" => format!("✔ {}", c.text),
                    "bad" => format!("✘ {}", c.text),
                    _ => c.text.clone(),
                })
                .collect();
            let _ = writeln!(t, "| {} | {} |", row.label, cells.join(" | "));
        }
        for (s, why) in &iso.unavailable {
            let _ = writeln!(t, "\n{s}: not run: {why}");
        }
        if !iso.containment.is_empty() {
            let _ = writeln!(t, "\nContainment (limits 64 MiB, 64 tasks, 5 s): the box's status, and the host's spawn latency of `true` idle and during the bomb.\n\n| subject | bomb | box status | seconds | host spawn idle p50 / max (ms) | during p50 / max (ms) |\n|---|---|---|---|---|---|");
            for c in &iso.containment {
                let f = |s: &Option<Summary>| {
                    s.as_ref()
                        .map_or("-".into(), |s| format!("{:.1} / {:.1}", s.p50, s.max))
                };
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {:.1} | {} | {} |",
                    c.subject,
                    c.bomb,
                    c.status.map_or("-".into(), |s| s.to_string()),
                    c.seconds,
                    f(&c.host_spawn_idle_ms),
                    f(&c.host_spawn_ms)
                );
            }
        }
        if !iso.host_syscalls.is_empty() {
            let _ = writeln!(t, "\nHost attack surface: distinct host system calls one `/bin/true` run makes (every process and thread, `strace -f`), and the seccomp lists.\n\n| subject | distinct host syscalls |\n|---|---|");
            for (s, n) in &iso.host_syscalls {
                let _ = writeln!(t, "| {s} | {} |", n.map_or("-".into(), |n| n.to_string()));
            }
            for (s, text) in &iso.attack_surface {
                let _ = writeln!(t, "\n- {s}: {text}");
            }
        }
        t.push('\n');
    }
    if let Some(sp) = &r.speed {
        let base: std::collections::HashMap<&str, f64> = sp
            .subjects
            .iter()
            .find(|s| s.name == sp.baseline)
            .map(|s| {
                s.tests
                    .iter()
                    .filter_map(|(n, v)| Some((n.as_str(), v.as_ref()?.p50)))
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(t, "## Workload speed\n\nMedian seconds of {} runs inside each box (timed by the probe), and the ratio to {} (above 1.00x is slower). cpu: FNV-1a over 256 MiB; syscall: a million `getppid` (a seccomp filter runs on every call); memory: 512 MiB of copies; io: 32 MiB written with fsync and read back in /tmp, which is the box's own layer (a tmpfs for twinbox's overlay and in the OCI bundles; the host's disk for native), so it compares file systems as much as boxes.\n", sp.reps, sp.baseline);
        let tests = crate::scenarios::speed::TESTS;
        let _ = writeln!(t, "| subject | {} |", tests.join(" | "));
        let _ = writeln!(t, "|---|{}", "---|".repeat(tests.len()));
        for s in &sp.subjects {
            if let Some(w) = &s.unavailable {
                let _ = writeln!(
                    t,
                    "| {} | not run: {w} |{}",
                    s.name,
                    " |".repeat(tests.len() - 1)
                );
                continue;
            }
            let cells: Vec<String> = tests
                .iter()
                .map(|tn| {
                    let v = s
                        .tests
                        .iter()
                        .find(|(n, _)| n == tn)
                        .and_then(|(_, v)| v.as_ref());
                    match (v, base.get(tn)) {
                        (Some(v), Some(b)) if *b > 0.0 => {
                            format!("{:.3} s ({:.2}x)", v.p50, v.p50 / b)
                        }
                        (Some(v), _) => format!("{:.3} s", v.p50),
                        _ => "-".into(),
                    }
                })
                .collect();
            let _ = writeln!(t, "| {} | {} |", s.name, cells.join(" | "));
        }
    }
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sample::Sample;
    use std::time::Duration;

    pub(crate) fn result(name: &str, exit_ms: &[u64]) -> SubjectResult {
        SubjectResult {
            name: name.into(),
            unavailable: None,
            samples: exit_ms
                .iter()
                .map(|&e| Sample {
                    to_marker: Some(Duration::from_millis(e / 2)),
                    to_exit: Duration::from_millis(e),
                    status: 0,
                    timed_out: false,
                })
                .collect(),
            failures: vec![],
            peak_rss_kib: vec![],
        }
    }

    fn gone() -> SubjectResult {
        SubjectResult {
            name: "gone".into(),
            unavailable: Some("not installed".into()),
            samples: vec![],
            failures: vec![],
            peak_rss_kib: vec![],
        }
    }

    #[test]
    fn ratios_are_to_the_baseline_median() {
        let rs = vec![
            result("base", &[10, 20, 30]),
            result("other", &[5, 10, 15]),
            gone(),
        ];
        let t = startup_table(&rs, "base");
        assert!(
            t.contains("| base | 3 | 10.0 / 14.0 | 20.0 / 28.0 / 29.8 | 10.0 / 30.0 | 1.00x |"),
            "{t}"
        );
        assert!(
            t.contains("| other | 3 | 5.0 / 6.6 | 10.0 / 14.0 / 14.9 | 5.0 / 15.0 | 0.50x |"),
            "{t}"
        );
        assert!(t.contains("| gone | - | not run: not installed |"), "{t}");
    }

    #[test]
    fn a_peak_rss_column_appears_with_traced_runs() {
        let mut with = result("vmm", &[4, 4, 4]);
        with.peak_rss_kib = vec![4096, 5120, 6144];
        let rs = vec![with, result("untraced", &[8]), gone()];
        let t = startup_table(&rs, "vmm");
        assert!(
            t.lines()
                .next()
                .unwrap_or("")
                .ends_with("| peak RSS p50 (MiB) |"),
            "{t}"
        );
        assert!(t.contains("| 1.00x | 5.0 (3 runs) |"), "{t}");
        assert!(t.contains("| 2.00x | - |"), "{t}");
        assert!(
            t.contains("| gone | - | not run: not installed | | | | |"),
            "{t}"
        );
        let plain = startup_table(&rs[1..], "untraced");
        assert!(!plain.contains("peak RSS"), "{plain}");
    }
}
