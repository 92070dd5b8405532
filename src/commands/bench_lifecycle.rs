//! `twinbox bench lifecycle`: what a box that lives costs. Exec latency
//! into a running box (`exec BOX true`, wall clock of the command) for
//! twinbox's container and VM beside `crun exec` and `docker exec`, and
//! host memory per idle detached box with 10 alive at once, beside crun
//! (`crun run -d`) and Docker (a containerd-shim per container), with
//! the targets as ratios from the same run.
//!
//! Memory is PSS (`/proc/<pid>/smaps_rollup`) summed over the processes
//! a box keeps on the host: its workload, and whatever holds it (twinbox's
//! supervisor, Docker's shim; crun leaves nothing). A VM's workload lives
//! in guest memory, inside its monitor's PSS. Daemons shared by every box
//! (dockerd, containerd) are not counted, and the table says so.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use twinbox_bench::stats;

use crate::cli::LifecycleBenchArgs;
use crate::host::on_path;
use crate::subjects::container::bundle_config;
use crate::subjects::lab::Lab;

/// One exec-latency row.
#[derive(Debug, serde::Serialize)]
struct ExecRow {
    subject: String,
    samples_ms: Vec<f64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    note: Option<String>,
}

/// One idle-memory row.
#[derive(Debug, serde::Serialize)]
struct IdleRow {
    subject: String,
    boxes: usize,
    processes: usize,
    pss_kib_per_box: Option<f64>,
    /// Of that, the processes holding the box (supervisor, shim).
    holder_kib_per_box: Option<f64>,
    note: Option<String>,
}

fn pss_kib(pid: i32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn timed(mut c: Command) -> Option<f64> {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let t0 = Instant::now();
    let ok = c.status().ok()?.success();
    ok.then(|| t0.elapsed().as_secs_f64() * 1e3)
}

fn out(mut c: Command) -> Result<String> {
    let o = c.stdin(Stdio::null()).output()?;
    if !o.status.success() {
        bail!(
            "{:?}: {}",
            c.get_program(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

struct Tb<'a> {
    lab: &'a Lab,
}

impl Tb<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.lab.exe);
        c.args(args).env("TWINBOX_HOME", &self.lab.home);
        c
    }
    fn start(&self, isolation: &str, name: &str) -> Result<String> {
        out(self.cmd(&[
            "run",
            "-d",
            "--isolation",
            isolation,
            "--name",
            name,
            "busybox",
            "sleep",
            "100000",
        ]))
    }
    fn state(&self, name: &str) -> Result<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&out(self.cmd(&["inspect", name]))?)?;
        Ok(v[0]["state"].clone())
    }
    fn rm(&self, names: &[String]) {
        let mut v = vec!["rm", "-f"];
        v.extend(names.iter().map(|s| s.as_str()));
        let _ = out(self.cmd(&v));
    }
}

fn row(subject: &str, samples: Vec<f64>, note: Option<String>) -> ExecRow {
    let s = stats::summarize(&samples);
    ExecRow {
        subject: subject.into(),
        p50_ms: s.as_ref().map(|s| s.p50),
        p90_ms: s.as_ref().map(|s| s.p90),
        samples_ms: samples,
        note,
    }
}

fn exec_twinbox(tb: &Tb, isolation: &str, runs: usize, tag: &str) -> ExecRow {
    let name = format!("{tag}-exec-{isolation}");
    let subject = format!("twinbox exec ({isolation})");
    if let Err(e) = tb.start(isolation, &name) {
        return row(&subject, Vec::new(), Some(format!("not run: {e:#}")));
    }
    let mut v = Vec::new();
    for i in 0..runs + 2 {
        if let Some(ms) = timed(tb.cmd(&["exec", &name, "true"])) {
            if i >= 2 {
                v.push(ms);
            }
        }
    }
    tb.rm(&[name]);
    row(&subject, v, None)
}

/// A detached crun container running `sleep`; its id and bundle.
struct Crun {
    bin: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl Crun {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(&self.root)
            .arg("--cgroup-manager=cgroupfs");
        c
    }
    fn start(&self, bundle: &Path, id: &str) -> Result<i32> {
        let mut c = self.cmd();
        // The container keeps the descriptors it was given: not pipes.
        c.args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if !c.status()?.success() {
            bail!("crun run -d {id} failed");
        }
        let mut s = self.cmd();
        s.args(["state", id]);
        let v: serde_json::Value = serde_json::from_str(&out(s)?)?;
        v["pid"]
            .as_i64()
            .map(|p| p as i32)
            .context("crun state: no pid")
    }
    fn delete(&self, id: &str) {
        let mut c = self.cmd();
        c.args(["delete", "-f", id]);
        let _ = out(c);
    }
}

fn crun(lab: &Lab) -> Option<(Crun, std::path::PathBuf)> {
    let bin = on_path("crun")?;
    let root = lab.dir.path().join("crun-state");
    let bundle = lab.dir.path().join("crun-detached");
    let mut cfg = bundle_config(&lab.rootfs, &["sleep", "100000"]);
    cfg["process"]["terminal"] = serde_json::json!(false);
    std::fs::create_dir_all(&bundle).ok()?;
    std::fs::create_dir_all(&root).ok()?;
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&cfg).ok()?).ok()?;
    Some((Crun { bin, root }, bundle))
}

/// Docker, if its daemon answers: the image imported from the bench's
/// rootfs.
fn docker(lab: &Lab) -> std::result::Result<&'static str, String> {
    if on_path("docker").is_none() {
        return Err("docker not installed (apt-get install docker.io)".into());
    }
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !info.is_ok_and(|s| s.success()) {
        return Err("the Docker daemon does not answer (start dockerd)".into());
    }
    const IMAGE: &str = "twinbox-bench-busybox:latest";
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&lab.rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let ok = Command::new("docker")
        .args(["import", "-", IMAGE])
        .stdin(tar.stdout.take().ok_or("tar")?)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let _ = tar.wait();
    if !ok {
        return Err("docker import of the busybox rootfs failed".into());
    }
    Ok(IMAGE)
}

/// Runs `twinbox bench lifecycle`.
pub fn run(args: LifecycleBenchArgs) -> Result<()> {
    let lab = Lab::prepare()?;
    let tb = Tb { lab: &lab };
    let tag = format!("bench{}", std::process::id());
    let docker_image = docker(&lab);

    // Exec latency.
    let pb = super::spinner("bench lifecycle: exec");
    let mut rows = vec![exec_twinbox(&tb, "container", args.runs, &tag)];
    pb.set_message("VM (a snapshot is made first if there is none)");
    rows.push(exec_twinbox(&tb, "vm", args.vm_runs, &tag));
    pb.set_message("crun exec");
    rows.push(match crun(&lab) {
        Some((c, bundle)) => {
            let id = format!("{tag}-crun-exec");
            match c.start(&bundle, &id) {
                Ok(_) => {
                    let mut v = Vec::new();
                    for i in 0..args.runs + 2 {
                        let mut e = c.cmd();
                        e.args(["exec", &id, "/bin/true"]);
                        if let (Some(ms), true) = (timed(e), i >= 2) {
                            v.push(ms);
                        }
                    }
                    c.delete(&id);
                    row("crun exec", v, None)
                }
                Err(e) => row("crun exec", Vec::new(), Some(format!("not run: {e:#}"))),
            }
        }
        None => row(
            "crun exec",
            Vec::new(),
            Some("not run: crun not found".into()),
        ),
    });
    pb.set_message("docker exec");
    rows.push(match &docker_image {
        Ok(img) => {
            let name = format!("{tag}-docker-exec");
            let started = out({
                let mut c = Command::new("docker");
                c.args(["run", "-d", "--name", &name, img, "sleep", "100000"]);
                c
            });
            match started {
                Ok(_) => {
                    let mut v = Vec::new();
                    for i in 0..args.runs + 2 {
                        let mut e = Command::new("docker");
                        e.args(["exec", &name, "true"]);
                        if let (Some(ms), true) = (timed(e), i >= 2) {
                            v.push(ms);
                        }
                    }
                    let _ = out({
                        let mut c = Command::new("docker");
                        c.args(["rm", "-f", &name]);
                        c
                    });
                    row("docker exec", v, None)
                }
                Err(e) => row("docker exec", Vec::new(), Some(format!("not run: {e:#}"))),
            }
        }
        Err(why) => row("docker exec", Vec::new(), Some(format!("not run: {why}"))),
    });
    pb.finish_and_clear();

    // Idle memory, `n` boxes at once.
    let n = args.boxes;
    let pb = super::spinner("bench lifecycle: idle memory");
    let mut idle = Vec::new();
    for isolation in ["container", "vm"] {
        pb.set_message(format!("{n} twinbox {isolation} boxes"));
        idle.push(idle_twinbox(&tb, isolation, n, &tag));
    }
    pb.set_message(format!("{n} crun containers"));
    idle.push(match crun(&lab) {
        Some((c, bundle)) => {
            let ids: Vec<String> = (0..n).map(|i| format!("{tag}-crun-{i}")).collect();
            let mut pids = Vec::new();
            let mut note = None;
            for id in &ids {
                match c.start(&bundle, id) {
                    Ok(p) => pids.push(p),
                    Err(e) => note = Some(format!("{e:#}")),
                }
            }
            std::thread::sleep(Duration::from_secs(1));
            let total: u64 = pids.iter().filter_map(|&p| pss_kib(p)).sum();
            for id in &ids {
                c.delete(id);
            }
            IdleRow {
                subject: "crun (run -d)".into(),
                boxes: pids.len(),
                processes: pids.len(),
                pss_kib_per_box: (!pids.is_empty()).then(|| total as f64 / pids.len() as f64),
                holder_kib_per_box: Some(0.0),
                note,
            }
        }
        None => IdleRow {
            subject: "crun (run -d)".into(),
            boxes: 0,
            processes: 0,
            pss_kib_per_box: None,
            holder_kib_per_box: None,
            note: Some("crun not found".into()),
        },
    });
    pb.set_message(format!("{n} Docker containers"));
    idle.push(match &docker_image {
        Ok(img) => idle_docker(img, n, &tag),
        Err(why) => IdleRow {
            subject: "docker (containerd-shim)".into(),
            boxes: 0,
            processes: 0,
            pss_kib_per_box: None,
            holder_kib_per_box: None,
            note: Some(why.clone()),
        },
    });
    pb.finish_and_clear();

    print_report(&rows, &idle, n);
    if let Some(path) = args.json {
        let v = serde_json::json!({"exec": rows, "idle": idle, "note": lab.note});
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn idle_twinbox(tb: &Tb, isolation: &str, n: usize, tag: &str) -> IdleRow {
    let subject = format!("twinbox {isolation} (run -d)");
    let names: Vec<String> = (0..n)
        .map(|i| format!("{tag}-idle-{isolation}-{i}"))
        .collect();
    let mut note = None;
    let mut started = Vec::new();
    for name in &names {
        match tb.start(isolation, name) {
            Ok(_) => started.push(name.clone()),
            Err(e) => {
                note = Some(format!("{e:#}"));
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut total = 0u64;
    let mut holders = 0u64;
    let mut processes = 0usize;
    for name in &started {
        let Ok(st) = tb.state(name) else {
            continue;
        };
        let sup = st["supervisor"].as_i64().map(|p| p as i32);
        let pid = st["pid"].as_i64().map(|p| p as i32);
        if let Some(k) = sup.and_then(pss_kib) {
            holders += k;
            total += k;
            processes += 1;
        }
        // A container's workload is its own process; a VM's is its
        // monitor, already counted.
        if pid != sup {
            if let Some(k) = pid.and_then(pss_kib) {
                total += k;
                processes += 1;
            }
        }
    }
    tb.rm(&names);
    let per = |k: u64| (!started.is_empty()).then(|| k as f64 / started.len() as f64);
    IdleRow {
        subject,
        boxes: started.len(),
        processes,
        pss_kib_per_box: per(total),
        holder_kib_per_box: per(holders),
        note,
    }
}

fn idle_docker(img: &str, n: usize, tag: &str) -> IdleRow {
    let names: Vec<String> = (0..n).map(|i| format!("{tag}-idle-docker-{i}")).collect();
    let mut note = None;
    let mut ids = Vec::new();
    for name in &names {
        let mut c = Command::new("docker");
        c.args(["run", "-d", "--name", name, img, "sleep", "100000"]);
        match out(c) {
            Ok(id) => ids.push(id),
            Err(e) => {
                note = Some(format!("{e:#}"));
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut total = 0u64;
    let mut holders = 0u64;
    let mut processes = 0;
    for id in &ids {
        for pid in shims_of(id) {
            if let Some(k) = pss_kib(pid) {
                holders += k;
                total += k;
                processes += 1;
            }
        }
        let mut c = Command::new("docker");
        c.args(["inspect", "-f", "{{.State.Pid}}", id]);
        if let Some(k) = out(c).ok().and_then(|p| p.parse().ok()).and_then(pss_kib) {
            total += k;
            processes += 1;
        }
    }
    let mut c = Command::new("docker");
    c.args(["rm", "-f"]).args(&names);
    let _ = out(c);
    let per = |k: u64| (!ids.is_empty()).then(|| k as f64 / ids.len() as f64);
    IdleRow {
        subject: "docker (containerd-shim)".into(),
        boxes: ids.len(),
        processes,
        pss_kib_per_box: per(total),
        holder_kib_per_box: per(holders),
        note,
    }
}

/// The containerd shims whose command line names container `id`.
fn shims_of(id: &str) -> Vec<i32> {
    let Ok(d) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    d.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| {
                let s = String::from_utf8_lossy(&c).replace('\0', " ");
                s.contains("containerd-shim") && s.contains(id)
            })
        })
        .collect()
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

fn kib(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.0}"))
}

fn print_report(rows: &[ExecRow], idle: &[IdleRow], n: usize) {
    println!("Exec latency: `exec BOX true` into a running busybox `sleep`, wall clock of the command, after 2 warm-up runs:\n");
    println!("| subject | runs | p50 (ms) | p90 (ms) | note |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.subject,
            r.samples_ms.len(),
            ms(r.p50_ms),
            ms(r.p90_ms),
            r.note.as_deref().unwrap_or("")
        );
    }
    println!("\nHost memory per idle detached box, {n} alive at once (PSS of the processes each box keeps on the host: its workload and what holds it; dockerd and containerd, shared by all containers, not counted):\n");
    println!(
        "| subject | boxes | processes | PSS per box (KiB) | of which the holder (KiB) | note |"
    );
    println!("|---|---|---|---|---|---|");
    for r in idle {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.subject,
            r.boxes,
            r.processes,
            kib(r.pss_kib_per_box),
            kib(r.holder_kib_per_box),
            r.note.as_deref().unwrap_or("")
        );
    }
    let get = |s: &str| idle.iter().find(|r| r.subject.starts_with(s));
    let exec = |s: &str| rows.iter().find(|r| r.subject == s).and_then(|r| r.p50_ms);
    println!();
    match (
        get("twinbox container").and_then(|r| r.pss_kib_per_box),
        get("crun").and_then(|r| r.pss_kib_per_box),
    ) {
        (Some(t), Some(c)) => println!(
            "Target (host memory per idle detached container at most crun's): {} — {:.0} vs {:.0} KiB, {:.1}x.",
            if t <= c { "met" } else { "NOT met" },
            t,
            c,
            t / c
        ),
        _ => println!("Target (container memory vs crun): not checked, a row is missing."),
    }
    if let Some(h) = get("twinbox container").and_then(|r| r.holder_kib_per_box) {
        println!(
            "Stretch (the supervisor under 1 MiB): {} — {h:.0} KiB.",
            if h < 1024.0 { "met" } else { "NOT met" }
        );
    }
    println!("Target (per idle detached VM, its monitor at most Firecracker's): not checked here — no Firecracker binary is installed on this machine to run the same idle guest.");
    if let (Some(t), Some(d)) = (exec("twinbox exec (container)"), exec("docker exec")) {
        println!(
            "Exec, container: twinbox {t:.1} ms vs docker exec {d:.1} ms ({:.2}x).",
            t / d
        );
    }
}
