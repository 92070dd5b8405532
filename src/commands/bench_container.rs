//! `twinbox bench container`: twinbox's launcher against the namespace
//! floor (`unshare`) and the OCI runtimes crun and runc, interleaved, on
//! busybox `/bin/true`; then host memory per idle box (PSS of every process
//! outside the box that it keeps alive) and where twinbox's start time goes.
//!
//! crun 1.8 refuses the hybrid cgroup layout ("cgroups in hybrid mode not
//! supported"). On such a host the benchmark first moves itself into a
//! private mount namespace and unmounts the empty v2 `unified` mount there,
//! so every subject sees the same pure-v1 layout; the host is untouched.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use twinbox_bench::{pss, report, run_interleaved, stats, Plan, Subject, SubjectResult};
use twinbox_container::cgroups::layout::{self, Layout};
use twinbox_images::{Reference, Store};

use crate::cli::ContainerBenchArgs;
use crate::subjects::container::{Native, OciRuntime, TwinboxContainer, Unshare};

/// Gives this process a private mount namespace without the v2 mount of a
/// hybrid layout. Must run before any thread exists (unshare of the mount
/// namespace is refused to a multi-threaded process).
fn hide_hybrid_v2() -> Result<Option<String>> {
    let Layout::Hybrid { v2_mount, .. } = layout::detect()? else {
        return Ok(None);
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .context("a private mount namespace for the benchmark")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )?;
    nix::mount::umount2(&v2_mount, nix::mount::MntFlags::MNT_DETACH).with_context(|| {
        format!(
            "unmounting {} in the benchmark's namespace",
            v2_mount.display()
        )
    })?;
    Ok(Some(format!(
        "This host's cgroups are hybrid; crun refuses that layout, so the benchmark runs in a private mount namespace with {} unmounted: every subject sees pure v1.",
        v2_mount.display()
    )))
}

/// Host memory one idle box keeps alive: starts `cmd` (a box running
/// `sleep`), waits until the workload runs, and sums the PSS of the process
/// tree minus the workload itself. Then kills the workload and waits.
fn idle_pss(mut cmd: Command) -> Result<(u64, usize)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("starting an idle box")?;
    let root = child.id();
    let is_workload = |p: u32| {
        std::fs::read_link(format!("/proc/{p}/exe"))
            .is_ok_and(|e| e.file_name().is_some_and(|n| n == "busybox"))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let workload = loop {
        if let Some(w) = pss::tree(root)
            .into_iter()
            .skip(1)
            .find(|&p| is_workload(p))
        {
            break Some(w);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Let the launcher settle into its wait.
    std::thread::sleep(Duration::from_millis(200));
    let procs: Vec<u32> = pss::tree(root)
        .into_iter()
        .filter(|&p| !is_workload(p))
        .collect();
    let total: u64 = procs.iter().filter_map(|&p| pss::pss_kib(p)).sum();
    if let Some(w) = workload {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait();
    anyhow::ensure!(workload.is_some(), "the idle box's workload never started");
    Ok((total, procs.len()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        stats::quantile(&v, 0.5)
    }
}

/// Runs `twinbox bench container`.
pub fn run(args: ContainerBenchArgs) -> Result<()> {
    let note = hide_hybrid_v2()?;
    let home = Store::default_home();
    let store = Store::open(&home)?;
    let image = store
        .get(&Reference::parse(&args.image)?)
        .with_context(|| format!("{} (make it with `twinbox image build-base`)", args.image))?;
    let rootfs = image.rootfs();
    let dir = tempfile::tempdir()?;
    let timings = dir.path().join("timings.jsonl");
    let exe = std::env::current_exe().context("finding the twinbox binary")?;

    let native = Native {
        rootfs: rootfs.clone(),
    };
    let unshare = Unshare {
        rootfs: rootfs.clone(),
    };
    let ours = TwinboxContainer {
        exe: exe.clone(),
        image: args.image.clone(),
        home: home.clone(),
        timings: Some(timings.clone()),
    };
    let crun = OciRuntime::new("crun", &rootfs, dir.path(), &["/bin/true"])?;
    let runc = OciRuntime::new("runc", &rootfs, dir.path(), &["/bin/true"])?;
    let subjects: [&dyn Subject; 5] = [&native, &unshare, &ours, &crun, &runc];
    let plan = Plan {
        runs: args.runs,
        warmup: args.warmup,
        timeout: Duration::from_secs(30),
        gap: Duration::from_millis(args.gap_ms),
    };
    let pb = super::count_bar("bench container");
    let results = run_interleaved(&subjects, &plan, &pb);
    pb.finish_and_clear();
    super::bench::check_stopped()?;

    println!(
        "Container start: busybox /bin/true, {} runs each after {} warm-up, interleaved; limits on every box: memory {} MiB, pids {}, cpus {}. Host: {} CPUs, cgroups {}.\n",
        args.runs,
        args.warmup,
        crate::subjects::container::MEMORY >> 20,
        crate::subjects::container::PIDS,
        crate::subjects::container::CPUS,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        layout::detect().map(|l| l.to_string()).unwrap_or_default(),
    );
    if let Some(n) = &note {
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

    // Where twinbox's time goes, from the launcher's own clock.
    let lines = std::fs::read_to_string(&timings).unwrap_or_default();
    let parsed: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !parsed.is_empty() {
        let m = |k: &str| median(parsed.iter().filter_map(|v| v[k].as_f64()).collect());
        let exit = results
            .iter()
            .find(|r| r.name == "twinbox-container")
            .map(|r| {
                median(
                    r.samples
                        .iter()
                        .map(|s| s.to_exit.as_secs_f64() * 1e6)
                        .collect(),
                )
            })
            .unwrap_or(0.0);
        let (cg, setup, work, clean) = (
            m("cgroup_create_us"),
            m("setup_us"),
            m("workload_us"),
            m("cleanup_us"),
        );
        println!(
            "\nWhere twinbox-container's start goes (medians of {} runs, µs): cgroups made {:.0}; clone to execve (namespaces, overlay, mounts, /dev, pivot_root, caps, seccomp) {:.0}; workload to exit {:.0}; cgroups removed {:.0}; the rest of {:.0} to exit is the launcher process itself (exec, dynamic loading, store, image config) {:.0}.",
            parsed.len(),
            cg,
            setup,
            work,
            clean,
            exit,
            (exit - cg - setup - work - clean).max(0.0)
        );
    }

    // Host memory per idle box.
    println!("\nHost memory per idle box (PSS of the processes outside the box that it keeps alive; median of 3):\n");
    println!("| subject | processes | PSS (KiB) |");
    println!("|---|---|---|");
    let crun_idle = OciRuntime::new(
        "crun",
        &rootfs,
        &dir.path().join("idle"),
        &["sleep", "1000"],
    )?;
    let runc_idle = OciRuntime::new(
        "runc",
        &rootfs,
        &dir.path().join("idle"),
        &["sleep", "1000"],
    )?;
    let ours_idle = TwinboxContainer {
        timings: None,
        ..ours
    };
    type IdleCommand<'a> = Box<dyn Fn(usize) -> Command + 'a>;
    let idle: Vec<(&str, Option<String>, IdleCommand)> = vec![
        (
            "twinbox-container",
            None,
            Box::new(|_| ours_idle.command_with(&["sleep", "1000"])),
        ),
        (
            "unshare",
            unshare.unavailable(),
            Box::new(|_| {
                let mut c = Command::new("unshare");
                c.args(["--fork", "--pid", "--mount", "--uts", "--ipc", "--net"])
                    .arg(rootfs.join("bin/busybox"))
                    .args(["sleep", "1000"]);
                c
            }),
        ),
        (
            "crun",
            crun_idle.unavailable(),
            Box::new(|i| {
                crun_idle.command_named(&format!("twinbox-idle-{}-{i}", std::process::id()))
            }),
        ),
        (
            "runc",
            runc_idle.unavailable(),
            Box::new(|i| {
                runc_idle.command_named(&format!("twinbox-idle-{}-{i}", std::process::id()))
            }),
        ),
    ];
    let mut idle_json = serde_json::Map::new();
    for (name, why, cmd) in &idle {
        if let Some(why) = why {
            println!("| {name} | - | not run: {why} |");
            continue;
        }
        let mut kib = Vec::new();
        let mut procs = 0;
        for i in 0..3 {
            super::bench::check_stopped()?;
            match idle_pss(cmd(i)) {
                Ok((k, n)) => {
                    kib.push(k as f64);
                    procs = n;
                }
                Err(e) => println!("| {name} | - | failed: {e:#} |"),
            }
        }
        if !kib.is_empty() {
            let m = median(kib);
            println!("| {name} | {procs} | {m:.0} |");
            idle_json.insert(
                name.to_string(),
                serde_json::json!({"pss_kib": m, "processes": procs}),
            );
        }
    }

    if let Some(path) = args.json {
        let v = serde_json::json!({"startup": results, "idle": idle_json, "note": note});
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
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
