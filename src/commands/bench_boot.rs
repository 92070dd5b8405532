//! `twinbox bench boot`: how long a Linux guest takes from the VMM's start
//! to the workload's exit, and where that time goes, from the boot-timer
//! marks init writes (VMM setup, kernel, init, workload and power-off).
//! With our kernel it alternates the two ways the image reaches the guest
//! (a pmem disk and an initramfs), so they are compared in one run, and,
//! where QEMU is installed, the same kernel, init and image under QEMU's
//! TCG: a whole x86 in software, no KVM, so no PVM-only boot parameter.
//! On a PVM host that row says how much of the boot is the kernel's own
//! work and how much the hypervisor's way of running it; QEMU gives no
//! boot-timer marks, so its row has the total only. Last, the same runs
//! on hardware KVM: this command again, inside the outer machine of
//! `twinbox nested` (AMD SVM under QEMU's TCG), with the boot-timer
//! phases; those rows are not hardware timings (the outer machine is
//! emulated too) but show where the boot's time goes when the guest
//! kernel's code is not emulated one instruction at a time.

use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use twinbox_bench::stats;

use crate::backends::vm::{has_pmem_root, run_archive, Spec};
use crate::cli::BootBenchArgs;

/// QEMU, for the TCG row.
const QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// The row's name.
const QEMU_ROW: &str = "qemu-tcg (initramfs)";
/// The longest a QEMU run may take (as long as the VM runs get).
const QEMU_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The guest under QEMU's TCG: the image's initramfs (packed as VM mode
/// packs it) and a run archive with our init and a spec for `/bin/true`,
/// back to back in `dir`. QEMU's isa-debug-exit on the exit port ends it
/// with `(status << 1) | 1`.
fn qemu_command(
    bzimage: &std::path::Path,
    image: &str,
    memory: &str,
    dir: &std::path::Path,
) -> Result<Command> {
    let store = twinbox_images::store::Store::open(&twinbox_images::store::Store::default_home())?;
    let img = store.get(&twinbox_images::reference::Reference::parse(image)?)?;
    let packed = twinbox_images::initramfs::build(
        &img.rootfs(),
        twinbox_images::initramfs::Compression::None,
        Some(&img.meta.id),
    )?;
    let init = crate::host::find_static("twinbox-init", "TWINBOX_INIT")?;
    let spec = serde_json::to_vec(&Spec {
        argv: &["/bin/true".to_string()],
        env: &["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_string()],
        cwd: "/",
        user: "",
        hostname: "twinbox",
        root: "",
        agent_port: None,
        hold: false,
        mounts: &[],
    })?;
    // The image's archive, then the run archive appended to it.
    let initrd = dir.join("qemu-initrd.cpio");
    let mut out = std::fs::File::create(&initrd)?;
    std::io::copy(&mut std::fs::File::open(&packed)?, &mut out)?;
    run_archive(out, &init, b".twinbox/spec.json", &spec)?;
    let mut c = Command::new(QEMU);
    c.args([
        "-M",
        "microvm,acpi=off",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        memory,
    ])
    .args([
        "-nographic",
        "-no-reboot",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args(["-device", "isa-debug-exit,iobase=0x501,iosize=1"])
    .arg("-kernel")
    .arg(bzimage)
    .arg("-initrd")
    .arg(&initrd)
    .args([
        "-append",
        "console=ttyS0 reboot=k panic=-1 quiet loglevel=1 rdinit=/.twinbox/init",
    ]);
    Ok(c)
}

/// One run's figures, in milliseconds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Run {
    root: String,
    wall_ms: f64,
    setup_ms: Option<f64>,
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
    // A restored guest starts after init's ready mark: no kernel phase,
    // and init's phase runs from the restore to the workload.
    let warm = v["start"].as_str() == Some("warm");
    Some(Run {
        root: root.into(),
        wall_ms,
        setup_ms: Some(setup),
        kernel_ms: init.map(|i| i - setup),
        init_ms: match warm {
            true => workload.map(|w| w - setup),
            false => init.zip(workload).map(|(i, w)| w - i),
        },
        workload_ms: workload.map(|w| stopped - w),
        exit_ms: stopped,
    })
}

/// The rows of a local run: how each boots (`--cold` or restored) and
/// where the root comes from.
fn local_rows(roots: &[&str]) -> Vec<(String, &'static str, bool)> {
    let mut rows = Vec::new();
    for root in roots {
        let root: &'static str = if *root == "pmem" { "pmem" } else { "initramfs" };
        rows.push((format!("cold ({root})"), root, true));
        if root == "pmem" {
            rows.push(("warm (pmem)".to_string(), root, false));
        }
    }
    rows
}

fn p50(v: impl Iterator<Item = f64>) -> String {
    let v: Vec<f64> = v.collect();
    stats::summarize(&v).map_or("-".into(), |s| format!("{:.0}", s.p50))
}

/// Where the nested run writes its runs, in the outer machine.
const NESTED_JSON: &str = "/tmp/twinbox-bench-boot.json";

/// The same runs on hardware KVM: this command inside the outer machine
/// of `twinbox nested`, with the kernel, init and image carried in; its
/// rows are named `nested-svm (<root>)`.
fn nested_runs(
    args: &BootBenchArgs,
    kernel_path: &std::path::Path,
    roots: &[&str],
) -> Result<(Vec<Run>, crate::nested::Report)> {
    use crate::nested::{outer, Plan, Put, Step};
    let home = twinbox_images::store::Store::default_home();
    let store = twinbox_images::store::Store::open(&home)?;
    let img = store.get(&twinbox_images::reference::Reference::parse(&args.image)?)?;
    let init = crate::host::find_static("twinbox-init", "TWINBOX_INIT")?;
    let kdir = kernel_path
        .parent()
        .context("the kernel has no directory")?;
    let mut put = vec![kernel_path.to_path_buf(), img.dir.clone(), init.clone()];
    put.extend(
        ["config", "build.json"]
            .iter()
            .map(|f| kdir.join(f))
            .filter(|p| p.is_file()),
    );
    let root = if roots.len() > 1 { "both" } else { roots[0] };
    let runs = args.runs.to_string();
    let warm_runs = args.warm_runs.to_string();
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let plan = Plan {
        put: put
            .into_iter()
            .map(|host| Put { host, guest: None })
            .collect(),
        env: vec![
            ("TWINBOX_KERNEL".into(), path(kernel_path)),
            ("TWINBOX_HOME".into(), path(&home)),
            ("TWINBOX_INIT".into(), path(&init)),
        ],
        steps: vec![Step::new([
            crate::nested::payload::AGENT_PATH,
            "bench",
            "boot",
            "--runs",
            &runs,
            "--warm-runs",
            &warm_runs,
            "--root",
            root,
            "-m",
            &args.memory,
            "--image",
            &args.image,
            "--no-qemu",
            "--no-nested",
            "--python-runs",
            "0",
            "--no-beside",
            "--json",
            NESTED_JSON,
        ])],
        fetch: vec![NESTED_JSON.into()],
        modules: Vec::new(),
    };
    let report = outer::run(&plan, &outer::Options::default(), &|_| {})?;
    let step = report
        .steps
        .first()
        .context("the nested run reported no step")?;
    if step.code != Some(0) {
        bail!(
            "twinbox bench boot under nested SVM failed ({:?}): {}",
            step.code,
            step.stderr.trim()
        );
    }
    let json = report
        .files
        .iter()
        .find(|(p, _)| p == NESTED_JSON)
        .map(|(_, d)| d.as_str())
        .context("the nested run brought back no runs")?;
    let mut runs: Vec<Run> =
        serde_json::from_str(json).context("the nested run's runs do not parse")?;
    for r in &mut runs {
        r.root = format!("nested-svm {}", r.root);
    }
    Ok((runs, report))
}

/// The rows beside the VMs: the same image's `/bin/true` in our container,
/// and the VMM's floor (the null guest, no Linux).
fn beside(args: &BootBenchArgs) -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        (
            CONTAINER_ROW,
            s(&[
                "run",
                "--isolation",
                "container",
                "-m",
                &args.memory,
                &args.image,
                "/bin/true",
            ]),
        ),
        (FLOOR_ROW, s(&["vmm", "boot", "null", "-m", &args.memory])),
    ]
}

/// The python rows' names (cold, warm).
const PYTHON_ROWS: [&str; 2] = ["python cold (pmem)", "python warm (pmem)"];

/// `python3 -c 'print(1)'` from the Debian python image, cold and warm,
/// `--python-runs` times each, alternating, after its snapshot is made;
/// `None` (with a line on stderr) when the image is not in the store.
fn python_runs(
    exe: &std::path::Path,
    args: &BootBenchArgs,
    dir: &std::path::Path,
    runs: &mut Vec<Run>,
) -> Result<Option<Made>> {
    if args.python_runs == 0 {
        return Ok(None);
    }
    let store = twinbox_images::store::Store::open(&twinbox_images::store::Store::default_home())?;
    if store
        .get(&twinbox_images::reference::Reference::parse(
            twinbox_images::python::NAME,
        )?)
        .is_err()
    {
        eprintln!(
            "bench boot: no python rows: {} is not in the store (`twinbox image build-python`)",
            twinbox_images::python::NAME
        );
        return Ok(None);
    }
    let made = make_snapshot(exe, &args.memory, twinbox_images::python::NAME)?;
    let pb = super::count_bar("bench boot: python");
    pb.set_length(2 * args.python_runs as u64);
    for i in 0..args.python_runs {
        for (row, cold) in [(PYTHON_ROWS[0], true), (PYTHON_ROWS[1], false)] {
            pb.set_message(format!("{row}, run {}", i + 1));
            let timings = dir.join(format!("python-{cold}-{i}.jsonl"));
            let start = Instant::now();
            let mut cmd = Command::new(exe);
            cmd.args([
                "run",
                "--isolation",
                "vm",
                "-m",
                &args.memory,
                "--cpus",
                "1",
            ]);
            if cold {
                cmd.arg("--cold");
            }
            let out = cmd
                .args(["--timeout", "600s", twinbox_images::python::NAME])
                .args(["python3", "-c", "print(1)"])
                .env("TWINBOX_TIMINGS", &timings)
                .env("TWINBOX_VM_ROOT", "pmem")
                .stdin(Stdio::null())
                .output()
                .context("starting twinbox run")?;
            let wall_ms = start.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() || out.stdout != b"1\n" {
                bail!(
                    "{row} run {} failed ({}): {}{}",
                    i + 1,
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let line = std::fs::read_to_string(&timings).unwrap_or_default();
            let run = parse(line.trim(), row, wall_ms)
                .with_context(|| format!("{row} run {}: no timings recorded", i + 1))?;
            runs.push(run);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    Ok(Some(made))
}

/// The container row's name.
const CONTAINER_ROW: &str = "container";
/// The VMM floor row's name.
const FLOOR_ROW: &str = "null guest (VMM floor)";

/// The warm row's snapshot: made, timed and sized.
struct Made {
    boot_ms: f64,
    save_ms: f64,
    disk_bytes: u64,
}

/// Makes the snapshot the warm runs restore (removing an old one of the
/// same key first, so that its boot and save are measured here).
fn make_snapshot(exe: &std::path::Path, memory: &str, image: &str) -> Result<Made> {
    let ls = || -> Result<serde_json::Value> {
        let out = Command::new(exe)
            .args(["snapshot", "ls", "--json"])
            .output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let cmd = |extra: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new(exe)
            .args(["snapshot", "make", "-m", memory, "--cpus", "1"])
            .args(extra)
            .arg(image)
            .env("TWINBOX_VM_ROOT", "pmem")
            .stdin(Stdio::null())
            .output()?)
    };
    let out = cmd(&[])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "twinbox snapshot make: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let id = text
        .split(|c: char| c == ':' || c.is_whitespace())
        .next()
        .unwrap_or_default()
        .to_string();
    if text.contains("already made") {
        let _ = Command::new(exe).args(["snapshot", "rm", &id]).output()?;
        let again = cmd(&[])?;
        if !again.status.success() {
            bail!(
                "twinbox snapshot make: {}",
                String::from_utf8_lossy(&again.stderr)
            );
        }
    }
    let listed = ls()?;
    let entry = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["id"].as_str() == Some(id.as_str()))
        .context("the snapshot just made is not listed")?;
    Ok(Made {
        boot_ms: entry["meta"]["boot_ms"].as_f64().unwrap_or(f64::NAN),
        save_ms: entry["meta"]["save_ms"].as_f64().unwrap_or(f64::NAN),
        disk_bytes: entry["disk_bytes"].as_u64().unwrap_or(0),
    })
}

/// Runs `twinbox bench boot`.
pub fn run(args: BootBenchArgs) -> Result<()> {
    let kernel = match std::env::var_os("TWINBOX_KERNEL") {
        Some(p) => twinbox_images::kernel::at(std::path::Path::new(&p)).with_context(|| {
            format!(
                "TWINBOX_KERNEL={}: no build record beside it",
                std::path::Path::new(&p).display()
            )
        })?,
        None => {
            twinbox_images::kernel::find().context("no guest kernel: run `twinbox kernel build`")?
        }
    };
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
    let mut qemu = match (args.no_qemu, std::path::Path::new(QEMU).exists()) {
        (false, true) => Some(
            qemu_command(&kernel.bzimage(), &args.image, &args.memory, dir.path())
                .context("preparing the QEMU TCG run")?,
        ),
        _ => None,
    };
    let rows = local_rows(&roots);
    // The warm row's snapshot, made (and timed) before any run.
    let snapshot = match rows.iter().any(|r| !r.2) {
        true => Some(make_snapshot(&exe, &args.memory, &args.image)?),
        false => None,
    };
    let pb = super::count_bar("bench boot");
    let per_round: usize = rows
        .iter()
        .map(|r| if r.2 { args.runs } else { args.warm_runs })
        .sum::<usize>()
        + args.runs * usize::from(qemu.is_some())
        + args.warm_runs
            * if args.no_beside {
                0
            } else {
                beside(&args).len()
            };
    pb.set_length(per_round as u64);
    let mut runs = Vec::new();
    for i in 0..args.runs.max(args.warm_runs) {
        if let (Some(q), true) = (qemu.as_mut(), i < args.runs) {
            pb.set_message(format!("QEMU TCG, run {}", i + 1));
            let start = Instant::now();
            let mut child = q
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting qemu-system-x86_64")?;
            // As long as the VM runs are allowed, then killed.
            let status = loop {
                if let Some(st) = child.try_wait()? {
                    break st;
                }
                if start.elapsed() > QEMU_TIMEOUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("QEMU TCG run {} did not end within {QEMU_TIMEOUT:?}", i + 1);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            };
            let wall_ms = start.elapsed().as_secs_f64() * 1e3;
            // isa-debug-exit: (0 << 1) | 1 for a workload that exited 0.
            if status.code() != Some(1) {
                bail!(
                    "QEMU TCG run {} ended with {status} instead of the workload's exit 0",
                    i + 1
                );
            }
            runs.push(Run {
                root: QEMU_ROW.into(),
                wall_ms,
                setup_ms: None,
                kernel_ms: None,
                init_ms: None,
                workload_ms: None,
                exit_ms: wall_ms,
            });
            pb.inc(1);
        }
        // Beside the VMs, as often as the warm row: the container and the
        // VMM's floor (the null guest), whole commands only.
        if i < args.warm_runs && !args.no_beside {
            for (row, argv) in beside(&args) {
                pb.set_message(format!("{row}, run {}", i + 1));
                let start = Instant::now();
                let out = Command::new(&exe)
                    .args(&argv)
                    .stdin(Stdio::null())
                    .output()
                    .with_context(|| format!("starting {row}"))?;
                let wall_ms = start.elapsed().as_secs_f64() * 1e3;
                if !out.status.success() {
                    bail!(
                        "{row} run {} failed ({}): {}",
                        i + 1,
                        out.status,
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                runs.push(Run {
                    root: row.into(),
                    wall_ms,
                    setup_ms: None,
                    kernel_ms: None,
                    init_ms: None,
                    workload_ms: None,
                    exit_ms: wall_ms,
                });
                pb.inc(1);
            }
        }
        for (row, root, cold) in &rows {
            let n = if *cold { args.runs } else { args.warm_runs };
            if i >= n {
                continue;
            }
            pb.set_message(format!("{row}, run {}", i + 1));
            let timings = dir.path().join(format!("{root}-{cold}-{i}.jsonl"));
            let start = Instant::now();
            let mut cmd = Command::new(&exe);
            cmd.args([
                "run",
                "--isolation",
                "vm",
                "-m",
                &args.memory,
                "--cpus",
                "1",
            ]);
            if *cold {
                cmd.arg("--cold");
            }
            let out = cmd
                .args(["--timeout", "600s", &args.image, "/bin/true"])
                .env("TWINBOX_TIMINGS", &timings)
                .env("TWINBOX_VM_ROOT", root)
                .stdin(Stdio::null())
                .output()
                .context("starting twinbox run")?;
            let wall_ms = start.elapsed().as_secs_f64() * 1e3;
            if !out.status.success() {
                bail!(
                    "{row} run {} failed ({}): {}",
                    i + 1,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let line = std::fs::read_to_string(&timings).unwrap_or_default();
            let want = if *cold { "cold" } else { "warm" };
            if !line.contains(&format!("\"start\":\"{want}\"")) {
                bail!("{row} run {} did not start {want}: {line}", i + 1);
            }
            let run = parse(line.trim(), row, wall_ms)
                .with_context(|| format!("{row} run {}: no timings recorded", i + 1))?;
            runs.push(run);
            pb.inc(1);
        }
    }
    pb.finish_and_clear();
    let python = python_runs(&exe, &args, dir.path(), &mut runs)?;
    let nested = match (args.no_nested, std::path::Path::new(QEMU).exists()) {
        (false, true) => {
            let spin = super::spinner("bench boot");
            spin.set_message(format!(
                "the same {} run(s) per root on nested SVM (an outer machine under QEMU TCG)",
                args.runs
            ));
            let got = nested_runs(&args, &kernel_path, &roots);
            spin.finish_and_clear();
            match got {
                Ok((mut n, report)) => {
                    runs.append(&mut n);
                    Some(report)
                }
                // The local rows are still worth printing; say why the
                // nested ones are missing.
                Err(e) => {
                    eprintln!("twinbox: warning: no nested-svm rows: {e:#}");
                    None
                }
            }
        }
        _ => None,
    };

    println!(
        "Linux guest boot: `twinbox run --isolation vm -m {} --cpus 1 {} /bin/true`, {} runs per root, alternating; kernel {} ({}), hypervisor: {}. Milliseconds, medians; phases from the boot-timer marks init writes.\n",
        args.memory,
        args.image,
        args.runs,
        kernel.info.key,
        kernel.dir.display(),
        twinbox_vmm::hypervisor::detect_kind(),
    );
    println!("| boot (root) | runs | VMM setup | kernel (to init) | init (to workload) | workload + power-off | start to exit | wall (whole command) |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    if qemu.is_some() {
        names.push(QEMU_ROW.into());
    }
    if !args.no_beside {
        names.extend([CONTAINER_ROW.to_string(), FLOOR_ROW.to_string()]);
    }
    if python.is_some() {
        names.extend(PYTHON_ROWS.iter().map(|r| r.to_string()));
    }
    if nested.is_some() {
        names.extend(rows.iter().map(|r| format!("nested-svm {}", r.0)));
    }
    for root in &names {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.root == *root).collect();
        println!(
            "| {root} | {} | {} | {} | {} | {} | {} | {} |",
            mine.len(),
            p50(mine.iter().filter_map(|r| r.setup_ms)),
            p50(mine.iter().filter_map(|r| r.kernel_ms)),
            p50(mine.iter().filter_map(|r| r.init_ms)),
            p50(mine.iter().filter_map(|r| r.workload_ms)),
            p50(mine.iter().map(|r| r.exit_ms)),
            p50(mine.iter().map(|r| r.wall_ms)),
        );
    }
    println!("\nStart to exit (the VMM's start to the workload's exit) and the whole command, p50 / p90 / p99, ms:\n");
    println!(
        "| boot (root) | runs | start to exit p50 | p90 | p99 | whole command p50 | p90 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for root in &names {
        let pick = |f: fn(&Run) -> f64| -> Vec<f64> {
            runs.iter().filter(|r| r.root == *root).map(f).collect()
        };
        let (exit, wall) = (pick(|r| r.exit_ms), pick(|r| r.wall_ms));
        let (Some(e), Some(w)) = (stats::summarize(&exit), stats::summarize(&wall)) else {
            continue;
        };
        println!(
            "| {root} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            e.n, e.p50, e.p90, e.p99, w.p50, w.p90, w.p99
        );
    }
    if let Some(p) = &python {
        println!(
            "\nThe python rows: `python3 -c 'print(1)'` from `{}` (Debian's python3.11-minimal, `twinbox image build-python`), cold and warm, {} runs each; its snapshot booted in {:.1} s, saved in {:.0} ms, {} on disk.",
            twinbox_images::python::NAME,
            args.python_runs,
            p.boot_ms / 1e3,
            p.save_ms,
            crate::size::human(p.disk_bytes)
        );
    }
    if let Some(s) = &snapshot {
        println!(
            "\nThe warm row's snapshot (`twinbox snapshot make -m {} --cpus 1 {}`): the boot to init's ready mark took {:.1} s, saving it {:.0} ms; {} on disk (the memory file's zero pages are holes).",
            args.memory,
            args.image,
            s.boot_ms / 1e3,
            s.save_ms,
            crate::size::human(s.disk_bytes)
        );
    }
    let p50_of = |row: &str| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.root == row)
            .map(|r| r.exit_ms)
            .collect();
        stats::summarize(&v).map(|s| s.p50)
    };
    if let (Some(c), Some(w)) = (p50_of("cold (pmem)"), p50_of("warm (pmem)")) {
        println!(
            "\nwarm / cold, start to exit at p50: {:.3}x ({:.1}x faster).",
            w / c,
            c / w
        );
    }
    let exit = |row: &str| {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.root == row)
            .map(|r| r.wall_ms)
            .collect();
        stats::summarize(&v).map(|s| s.p50)
    };
    if let (Some(q), Some(first)) = (exit(QEMU_ROW), rows.first().map(|r| r.0.as_str())) {
        if let Some(ours) = exit(first) {
            println!(
                "\nQEMU TCG ({QEMU}) boots the same kernel, init and image with no KVM and none of the PVM-only boot parameters; it has no boot-timer marks, so its row is the whole command. twinbox {first} / QEMU TCG, wall: {:.1}x.",
                ours / q
            );
        }
    }
    if let Some(r) = &nested {
        println!(
            "\nnested-svm rows: the same runs on hardware KVM (kvm_amd) inside an outer machine that QEMU's TCG emulates with AMD SVM and nested paging (`twinbox nested`; outer kernel {}, up in {:.1} s, KVM modules loaded in {:.1} s, QEMU ran {:.1} s in all). Everything there is emulated, so these are not hardware-KVM timings; they show where a boot's time goes when the guest kernel's code is not emulated one instruction at a time, as PVM does.",
            r.machine.as_ref().map_or("?", |m| m.kernel.as_str()),
            r.kernel_boot_s,
            r.modules_s,
            r.wall_s,
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
