//! `twinbox bench`: the full benchmark. Startup (boxes and the monitors'
//! floor), memory (idle cost and density), isolation (the probe's matrix,
//! containment, host attack surface) and workload speed, with every subject
//! this machine has; results.json, report.md and report.html in
//! `results/<date>-<host>/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use twinbox_bench::results::{Machine, Results};
use twinbox_bench::scenarios::{isolation, memory, speed, startup};
use twinbox_bench::{html, report, Plan, Subject};
use twinbox_container::cgroups::layout;
use twinbox_vmm::hypervisor;

use super::bench::check_stopped;
use crate::cli::{BenchArgs, Scenario};
use crate::subjects::lab::Lab;

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn machine(cgroups: String) -> Machine {
    Machine {
        host: read_trim("/proc/sys/kernel/hostname"),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        memory_mib: crate::workload::host_memory().unwrap_or(0) >> 20,
        hypervisor: if std::path::Path::new("/dev/kvm").exists() {
            hypervisor::detect_kind().to_string()
        } else {
            "none".into()
        },
        cgroups,
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    }
}

/// Makes the warm VM's snapshot (`twinbox snapshot make`, the probe image,
/// 256 MiB, 1 vCPU: what the VM subjects run) and says what it cost.
fn make_vm_snapshot(lab: &Lab) -> Result<String> {
    let out = std::process::Command::new(&lab.exe)
        .env("TWINBOX_HOME", &lab.home)
        .args(["snapshot", "make", "-m", "256m", "--cpus", "1"])
        .arg(crate::subjects::lab::PROBE_IMAGE)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running twinbox snapshot make")?;
    if !out.status.success() {
        anyhow::bail!(
            "twinbox snapshot make: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(format!(
        "twinbox-vm is restored from a snapshot made first (`twinbox snapshot make -m 256m --cpus 1 {}`: {}); twinbox-vm-cold boots (`--cold`).",
        crate::subjects::lab::PROBE_IMAGE,
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

/// Runs the full benchmark.
pub fn run(args: &BenchArgs) -> Result<()> {
    let t0 = Instant::now();
    let cgroups = layout::detect().map(|l| l.to_string()).unwrap_or_default();
    // Before any thread: the lab may change this process's mount namespace.
    let lab = Lab::prepare()?;
    let quick = args.quick;
    let want = |s: Scenario| args.scenarios.is_empty() || args.scenarios.contains(&s);

    let native = lab.native();
    let unshare = lab.unshare();
    let ours = lab.container(None);
    let real_vm = lab.vm(false);
    let cold_vm = lab.vm(true);
    // On a slow host (PVM) the VM runs a few times for startup, once idle,
    // with a few boxes for density and once for the probe (none of it in
    // --quick); elsewhere it is a subject like the others. `vm` stands for
    // it where it runs as often as the others, `vm_few` where a slow host
    // runs it a few times.
    let slow = crate::subjects::vm::slow_host(quick);
    let skipped = slow.as_ref().map(|why| crate::subjects::vm::Skipped {
        name: real_vm.name(),
        reason: why.clone(),
    });
    let skipped_cold = slow.as_ref().map(|why| crate::subjects::vm::Skipped {
        name: cold_vm.name(),
        reason: why.clone(),
    });
    let vm: &dyn Subject = match &skipped {
        Some(s) => s,
        None => &real_vm,
    };
    let vm_cold: &dyn Subject = match &skipped_cold {
        Some(s) => s,
        None => &cold_vm,
    };
    let vm_few: &dyn Subject = if quick { vm } else { &real_vm };
    let cold_few: &dyn Subject = if quick { vm_cold } else { &cold_vm };
    let crun = lab.oci("crun")?;
    let runc = lab.oci("runc")?;
    let runsc = lab.oci("runsc")?;
    let ours_oci = lab.oci_twinbox()?;
    let (vmm, qemu, fc) = lab.floor(args.firecracker.clone())?;
    let boxes: [&dyn Subject; 9] = [
        &native, &ours, vm, vm_cold, &unshare, &crun, &runc, &runsc, &ours_oci,
    ];
    let monitors: [&dyn Subject; 3] = [&vmm, &qemu, &fc];

    let mut notes: Vec<String> = lab.note.iter().cloned().collect();
    notes.push(format!(
        "Every box runs the same rootfs: the busybox base image with the static isolation probe added ({}).",
        crate::subjects::lab::PROBE_IMAGE
    ));
    notes.push("Container limits on every box: 256 MiB memory, 1024 tasks, 1 CPU; the OCI runtimes get the same capabilities, masked paths and seccomp deny list as twinbox, and the image rootfs read-only as their root (twinbox stacks a writable overlay on a tmpfs).".into());
    let versions: Vec<(String, String)> = boxes
        .iter()
        .chain(monitors.iter())
        .filter(|s| s.unavailable().is_none())
        .filter_map(|s| Some((s.name(), s.version()?)))
        .collect();

    let mut results = Results {
        machine: machine(cgroups),
        quick,
        versions,
        notes,
        startup: None,
        floor: None,
        memory: None,
        isolation: None,
        speed: None,
        seconds: 0.0,
    };

    // The warm VM's snapshot, made before anything is measured (and its
    // boot, save and size noted).
    let vm_runs = vm_few.unavailable().is_none();
    if vm_runs && (want(Scenario::Startup) || want(Scenario::Memory)) {
        let pb = super::spinner("snapshot");
        pb.set_message("booting the VM once for its warm-start snapshot");
        let made = make_vm_snapshot(&lab);
        pb.finish_and_clear();
        results.notes.push(made?);
    }

    if want(Scenario::Startup) {
        let plan = Plan {
            runs: args.runs.unwrap_or(if quick { 5 } else { 60 }),
            warmup: if quick { 1 } else { 5 },
            timeout: Duration::from_secs(60),
            gap: Duration::from_millis(20),
            rss_runs: 0,
        };
        let pb = super::count_bar("startup");
        results.startup = Some(startup::run(
            &boxes,
            &plan,
            &["crun", "runc", "native"],
            &pb,
        ));
        pb.finish_and_clear();
        check_stopped()?;
        // On a slow host the VMs get runs of their own, not 60.
        if let (Some(startup), Some(_), false) = (results.startup.as_mut(), &slow, quick) {
            for (subject, runs) in [
                (&real_vm, crate::subjects::vm::SLOW_WARM_RUNS),
                (&cold_vm, crate::subjects::vm::SLOW_VM_RUNS),
            ] {
                let vm_plan = Plan {
                    runs: runs.min(plan.runs),
                    warmup: 0,
                    timeout: Duration::from_secs(180),
                    gap: plan.gap,
                    rss_runs: 0,
                };
                let pb = super::count_bar(&format!("startup: {}", subject.name()));
                let mut r = twinbox_bench::run_interleaved(&[subject], &vm_plan, &pb);
                pb.finish_and_clear();
                if let (Some(row), Some(vm_row)) = (
                    startup
                        .subjects
                        .iter_mut()
                        .find(|s| s.name == subject.name()),
                    r.pop(),
                ) {
                    *row = vm_row;
                }
                check_stopped()?;
            }
        }
        let floor_plan = Plan {
            runs: if quick { 3 } else { 30 },
            warmup: if quick { 1 } else { 3 },
            timeout: Duration::from_secs(30),
            gap: Duration::ZERO,
            rss_runs: if quick { 1 } else { 5 },
        };
        let pb = super::count_bar("monitor floor");
        results.floor = Some(startup::run(
            &monitors,
            &floor_plan,
            &["firecracker", "qemu-microvm"],
            &pb,
        ));
        pb.finish_and_clear();
        check_stopped()?;
    }

    if want(Scenario::Memory) {
        let pb = super::spinner("memory");
        let reps = if quick { 1 } else { 5 };
        let k = if quick { 10 } else { 30 };
        // On a slow host one idle VM, and a few VMs at once for density,
        // once each (every one boots first).
        let (vm_reps, vm_k, warm_k) = match slow {
            Some(_) => (
                1,
                crate::subjects::vm::SLOW_VM_DENSITY.min(k),
                crate::subjects::vm::SLOW_WARM_DENSITY.min(k),
            ),
            None => (reps, k, k),
        };
        let idle_subjects: [(&dyn Subject, usize); 10] = [
            (&ours, reps),
            (vm_few, vm_reps),
            (cold_few, vm_reps),
            (&unshare, reps),
            (&crun, reps),
            (&runc, reps),
            (&runsc, reps),
            (&vmm, reps),
            (&qemu, reps),
            (&fc, reps),
        ];
        let mut idle = Vec::new();
        for (s, n) in idle_subjects {
            pb.set_message(format!("idle {}", s.name()));
            idle.push(memory::idle(s, n));
            check_stopped()?;
        }
        let density_subjects: [(&dyn Subject, usize, usize); 6] = [
            (&ours, k, reps),
            (vm_few, warm_k, vm_reps),
            (cold_few, vm_k, vm_reps),
            (&crun, k, reps),
            (&vmm, k, reps),
            (&fc, k, reps),
        ];
        let mut density = Vec::new();
        for (s, k, n) in density_subjects {
            pb.set_message(format!("density: {k} x {}", s.name()));
            density.push(memory::density(s, k, n));
            check_stopped()?;
        }
        pb.finish_and_clear();
        results.memory = Some(memory::Memory { idle, density });
    }

    if want(Scenario::Isolation) {
        let pb = super::spinner("isolation");
        let canary = lab.dir.path().join("twinbox-canary");
        std::fs::write(
            &canary,
            "if you can read this, you can see the host's files\n",
        )?;
        let canary_s = canary.to_string_lossy().into_owned();
        let args_canary = ["--canary", canary_s.as_str()];
        pb.set_message("probe on the host");
        let host = native
            .probe(&args_canary)
            .map(isolation::run_json)
            .transpose()
            .map_err(|e| anyhow::anyhow!("the probe on the host: {e}"))?
            .context("the probe on the host")?;
        // The VM probe runs even on a slow host, once, except in --quick.
        let probed: [&dyn Subject; 6] = [&ours, vm_few, &unshare, &crun, &runc, &runsc];
        let mut names = vec!["host".to_string()];
        let mut unavailable = Vec::new();
        let mut reports: Vec<(String, serde_json::Value)> = vec![("host".into(), host.clone())];
        let mut per_box = Vec::new();
        for s in probed {
            pb.set_message(format!("probe in {}", s.name()));
            names.push(s.name());
            let t = Instant::now();
            let r = match s.unavailable() {
                Some(w) => Err(w),
                None => match s.probe(&args_canary) {
                    Some(cmd) => isolation::run_json(cmd),
                    None => Err("cannot run the probe".into()),
                },
            };
            if s.name() == "twinbox-vm" && slow.is_some() && r.is_ok() {
                results.notes.push(format!(
                    "twinbox-vm on this PVM host: the isolation probe's run took {:.1} s from start to exit (one boot of the Linux guest, the probe, power-off).",
                    t.elapsed().as_secs_f64()
                ));
            }
            match r {
                Ok(v) => {
                    reports.push((s.name(), v.clone()));
                    per_box.push(Some(v));
                }
                Err(w) => {
                    unavailable.push((s.name(), w));
                    per_box.push(None);
                }
            }
            check_stopped()?;
        }
        let refs: Vec<Option<&serde_json::Value>> = per_box.iter().map(Option::as_ref).collect();
        let rows = isolation::rows(&host, &refs);
        let mut containment = Vec::new();
        for s in [&ours as &dyn Subject, vm] {
            if s.unavailable().is_some() {
                continue;
            }
            for (bomb, argv) in [
                (
                    "fork bomb",
                    vec!["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 10"],
                ),
                (
                    "memory bomb",
                    vec!["sh", "-c", "head -c 1073741824 /dev/zero | tail"],
                ),
            ] {
                pb.set_message(format!("{bomb} in {}", s.name()));
                if let Some(c) = isolation::contain(s, bomb, &argv) {
                    containment.push(c);
                }
                check_stopped()?;
            }
        }
        let mut host_syscalls = Vec::new();
        for s in [
            &native as &dyn Subject,
            &ours,
            vm,
            &crun,
            &runc,
            &vmm,
            &qemu,
            &fc,
        ] {
            if s.unavailable().is_some() {
                continue;
            }
            pb.set_message(format!("host syscalls of {}", s.name()));
            host_syscalls.push((s.name(), isolation::distinct_host_syscalls(s.command())));
        }
        let vcpu = twinbox_vmm::seccomp::Thread::Vcpu.allowed().len();
        let vmmt = twinbox_vmm::seccomp::Thread::Vmm.allowed().len();
        let attack_surface = vec![
            (
                "twinbox-vmm".to_string(),
                format!("seccomp allow-lists: vCPU threads {vcpu} syscalls (ioctl only KVM_RUN, KVM_GET_REGS and KVM_SET_GSI_ROUTING), VMM thread {vmmt}; the guest's own system calls never reach the host kernel (Firecracker 1.16.1's filters allow 24 distinct syscalls on its vCPU threads, 50 on its VMM thread and 31 on its API thread)"),
            ),
            (
                "twinbox-container".to_string(),
                format!(
                    "seccomp deny list: {} calls denied ({}), every other call of the host kernel allowed, as in Docker's profile",
                    twinbox_container::seccomp::denied_names().len(),
                    twinbox_container::seccomp::denied_names().join(", ")
                ),
            ),
        ];
        pb.finish_and_clear();
        results.isolation = Some(isolation::Isolation {
            subjects: names,
            unavailable,
            reports,
            rows,
            containment,
            host_syscalls,
            attack_surface,
        });
    }

    if want(Scenario::Speed) {
        let pb = super::spinner("speed");
        pb.set_message("cpu, syscall, memory, io in each box");
        let subjects: [&dyn Subject; 4] = [&native, &ours, vm, &crun];
        results.speed = Some(speed::run(&subjects, if quick { 1 } else { 5 }, "native"));
        pb.finish_and_clear();
        check_stopped()?;
    }

    results.seconds = t0.elapsed().as_secs_f64();
    let out = args.out.clone().unwrap_or_else(|| {
        let day = results
            .machine
            .date
            .get(..10)
            .unwrap_or("today")
            .to_string();
        PathBuf::from("results").join(format!("{day}-{}", results.machine.host))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let md = report::markdown(&results);
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(out.join("report.html"), html::page(&results))?;
    println!("{md}");
    println!(
        "Written: {0}/results.json, {0}/report.md, {0}/report.html ({1:.0} s).",
        out.display(),
        results.seconds
    );
    Ok(())
}
