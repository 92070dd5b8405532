//! `twinbox bench boot`: how long a Linux guest takes from the VMM's start
//! to the workload's exit, and where that time goes, from the boot-timer
//! marks init writes (VMM setup, kernel, init, workload and power-off).
//! With our kernel it alternates the two ways the image reaches the guest
//! (a pmem disk and an initramfs), so they are compared in one run.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use twinbox_bench::stats;

use crate::backends::vm::has_pmem_root;
use crate::cli::BootBenchArgs;

/// One run's figures, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
struct Run {
    root: String,
    wall_ms: f64,
    setup_ms: f64,
    kernel_ms: Option<f64>,
    init_ms: Option<f64>,
    workload_ms: Option<f64>,
    exit_ms: f64,
}

fn parse(line: &str, root: &str, wall_ms: f64) -> Option<Run> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = |k: &str| v[k].as_f64();
    let (setup, stopped) = (f("vcpus_started_ms")?, f("stopped_ms")?);
    let (init, workload) = (f("init_ms"), f("workload_ms"));
    Some(Run {
        root: root.into(),
        wall_ms,
        setup_ms: setup,
        kernel_ms: init.map(|i| i - setup),
        init_ms: init.zip(workload).map(|(i, w)| w - i),
        workload_ms: workload.map(|w| stopped - w),
        exit_ms: stopped,
    })
}

fn p50(v: impl Iterator<Item = f64>) -> String {
    let v: Vec<f64> = v.collect();
    stats::summarize(&v).map_or("-".into(), |s| format!("{:.0}", s.p50))
}

/// Runs `twinbox bench boot`.
pub fn run(args: BootBenchArgs) -> Result<()> {
    let kernel =
        twinbox_images::kernel::find().context("no guest kernel: run `twinbox kernel build`")?;
    let kernel_path = kernel.vmlinux().unwrap_or_else(|| kernel.bzimage());
    let roots: Vec<&str> = match (args.root.as_str(), has_pmem_root(&kernel_path)) {
        ("both", true) => vec!["pmem", "initramfs"],
        ("both", false) | ("initramfs", _) => vec!["initramfs"],
        ("pmem", true) => vec!["pmem"],
        ("pmem", false) => bail!("this kernel cannot take a pmem root (see `twinbox kernel show`)"),
        (other, _) => bail!("--root {other}: want pmem, initramfs or both"),
    };
    let exe = std::env::current_exe()?;
    let dir = tempfile::tempdir()?;
    let pb = super::count_bar("bench boot");
    pb.set_length((args.runs * roots.len()) as u64);
    let mut runs = Vec::new();
    for i in 0..args.runs {
        for root in &roots {
            pb.set_message(format!("{root}, run {}", i + 1));
            let timings = dir.path().join(format!("{root}-{i}.jsonl"));
            let start = Instant::now();
            let out = Command::new(&exe)
                .args([
                    "run",
                    "--isolation",
                    "vm",
                    "-m",
                    &args.memory,
                    "--cpus",
                    "1",
                ])
                .args(["--timeout", "600s", &args.image, "/bin/true"])
                .env("TWINBOX_TIMINGS", &timings)
                .env("TWINBOX_VM_ROOT", root)
                .stdin(Stdio::null())
                .output()
                .context("starting twinbox run")?;
            let wall_ms = start.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                bail!(
                    "{root} run {} failed ({}): {}",
                    i + 1,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let line = std::fs::read_to_string(&timings).unwrap_or_default();
            let run = parse(line.trim(), root, wall_ms)
                .with_context(|| format!("{root} run {}: no timings recorded", i + 1))?;
            runs.push(run);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();

    println!(
        "Linux guest boot: `twinbox run --isolation vm -m {} --cpus 1 {} /bin/true`, {} runs per root, alternating; kernel {} ({}), hypervisor: {}. Milliseconds, medians; phases from the boot-timer marks init writes.\n",
        args.memory,
        args.image,
        args.runs,
        kernel.info.key,
        kernel.dir.display(),
        twinbox_vmm::hypervisor::detect_kind(),
    );
    println!("| root | runs | VMM setup | kernel (to init) | init (to workload) | workload + power-off | start to exit | wall (whole command) |");
    println!("|---|---|---|---|---|---|---|---|");
    for root in &roots {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.root == *root).collect();
        println!(
            "| {root} | {} | {} | {} | {} | {} | {} | {} |",
            mine.len(),
            p50(mine.iter().map(|r| r.setup_ms)),
            p50(mine.iter().filter_map(|r| r.kernel_ms)),
            p50(mine.iter().filter_map(|r| r.init_ms)),
            p50(mine.iter().filter_map(|r| r.workload_ms)),
            p50(mine.iter().map(|r| r.exit_ms)),
            p50(mine.iter().map(|r| r.wall_ms)),
        );
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&runs)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_come_from_the_marks() {
        let line = r#"{"root":"pmem","vcpus_started_ms":2.0,"init_ms":20002.0,"workload_ms":20502.0,"stopped_ms":21002.0,"torn_down_ms":21010.0}"#;
        let r = parse(line, "pmem", 21100.0).expect("parsed");
        assert_eq!(r.kernel_ms, Some(20000.0));
        assert_eq!(r.init_ms, Some(500.0));
        assert_eq!(r.workload_ms, Some(500.0));
        assert_eq!(r.exit_ms, 21002.0);
        // A guest that never reached init has no phases, only the total.
        let early =
            r#"{"vcpus_started_ms":2.0,"init_ms":null,"workload_ms":null,"stopped_ms":9.0}"#;
        let r = parse(early, "pmem", 10.0).expect("parsed");
        assert_eq!((r.kernel_ms, r.init_ms, r.workload_ms), (None, None, None));
        assert!(parse("not json", "pmem", 1.0).is_none());
    }
}
