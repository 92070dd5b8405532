//! `twinbox bench container`: twinbox's launcher against the namespace
//! floor (`unshare`) and the OCI runtimes crun and runc, interleaved, on
//! busybox `/bin/true`; then host memory per idle box and where twinbox's
//! start time goes (from the launcher's own clock).

use std::time::Duration;

use anyhow::Result;
use twinbox_bench::scenarios::memory;
use twinbox_bench::{report, run_interleaved, stats, Plan, Subject, SubjectResult};
use twinbox_container::cgroups::layout;

use crate::cli::ContainerBenchArgs;
use crate::subjects::container::{CPUS, MEMORY, PIDS};
use crate::subjects::lab::Lab;

fn median(v: Vec<f64>) -> f64 {
    stats::summarize(&v).map_or(0.0, |s| s.p50)
}

/// Runs `twinbox bench container`.
pub fn run(args: ContainerBenchArgs) -> Result<()> {
    let lab = Lab::prepare()?;
    let timings = lab.dir.path().join("timings.jsonl");
    let native = lab.native();
    let unshare = lab.unshare();
    let ours = lab.container(Some(timings.clone()));
    let crun = lab.oci("crun")?;
    let runc = lab.oci("runc")?;
    let ours_oci = lab.oci_twinbox()?;
    let subjects: [&dyn Subject; 6] = [&native, &unshare, &ours, &crun, &runc, &ours_oci];
    let plan = Plan {
        runs: args.runs,
        warmup: args.warmup,
        timeout: Duration::from_secs(30),
        gap: Duration::from_millis(args.gap_ms),
        rss_runs: 0,
    };
    let pb = super::count_bar("bench container");
    let results = run_interleaved(&subjects, &plan, &pb);
    pb.finish_and_clear();
    super::bench::check_stopped()?;

    println!(
        "Container start: busybox /bin/true, {} runs each after {} warm-up, interleaved (order rotating), {} ms idle before each run; limits on every box: memory {} MiB, pids {PIDS}, cpus {CPUS}. Host: {} CPUs, cgroups {}.\n",
        args.runs,
        args.warmup,
        args.gap_ms,
        MEMORY >> 20,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        layout::detect().map(|l| l.to_string()).unwrap_or_default(),
    );
    if let Some(n) = &lab.note {
        println!("{n}\n");
    }
    let baseline = if results
        .iter()
        .any(|r| r.name == "crun" && !r.samples.is_empty())
    {
        "crun"
    } else {
        "unshare"
    };
    print!("{}", report::startup_table(&results, baseline));
    println!("\n{}", verdict(&results));

    let lines = std::fs::read_to_string(&timings).unwrap_or_default();
    let parsed: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !parsed.is_empty() {
        let m = |k: &str| median(parsed.iter().filter_map(|v| v[k].as_f64()).collect());
        let exit = report::exit_p50(&results, "twinbox-container").unwrap_or(0.0) * 1e3;
        let (cg, setup, work, clean) = (
            m("cgroup_create_us"),
            m("setup_us"),
            m("workload_us"),
            m("cleanup_us"),
        );
        println!(
            "\nWhere twinbox-container's start goes (medians of {} runs, µs): cgroups made {:.0}; clone to execve (namespaces, overlay, mounts, /dev, pivot_root, caps, seccomp) {:.0}; workload to exit {:.0}; cgroups removed {:.0}; the rest of {:.0} to exit is the launcher process itself (exec, store, image config) {:.0}.",
            parsed.len(),
            cg,
            setup,
            work,
            clean,
            exit,
            (exit - cg - setup - work - clean).max(0.0)
        );
    }

    println!("\nHost memory per idle box (PSS of the processes outside the box that it keeps alive; median of 3):\n");
    println!("| subject | processes | PSS (KiB) |");
    println!("|---|---|---|");
    let idle_subjects: [&dyn Subject; 5] = [&ours, &unshare, &crun, &runc, &ours_oci];
    let mut idle_json = Vec::new();
    for s in idle_subjects {
        super::bench::check_stopped()?;
        let r = memory::idle(s, 3);
        match (&r.unavailable, r.pss_kib) {
            (Some(w), _) => println!("| {} | - | not run: {w} |", r.name),
            (None, Some(k)) => println!("| {} | {} | {k:.0} |", r.name, r.processes),
            (None, None) => println!("| {} | - | - |", r.name),
        }
        idle_json.push(r);
    }

    if let Some(path) = args.json {
        let v = serde_json::json!({"startup": results, "idle": idle_json, "note": lab.note});
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Says whether the target holds in this run: twinbox's median at
/// most half of crun's, and its p90 no worse than crun's.
fn verdict(results: &[SubjectResult]) -> String {
    let get = |n: &str| {
        results
            .iter()
            .find(|r| r.name == n)
            .and_then(|r| report::summaries(r).1)
    };
    match (get("twinbox-container"), get("crun")) {
        (Some(t), Some(c)) => {
            let ratio = t.p50 / c.p50;
            let ok = ratio <= 0.5 && t.p90 <= c.p90;
            format!(
                "Target (median at most 0.5x crun's, p90 no worse): {} — median {:.2}x crun ({:.2} vs {:.2} ms), p90 {:.2} vs {:.2} ms.",
                if ok { "met" } else { "NOT met" },
                ratio,
                t.p50,
                c.p50,
                t.p90,
                c.p90
            )
        }
        _ => "Target not checked: crun or twinbox-container has no good runs.".into(),
    }
}
