//! `twinbox bench web`: a web server behind a published port. busybox
//! `httpd` serves a 1 KiB and a 1 MiB file and `wrk` drives it from the
//! host, with the same threads, connections and duration for every
//! subject, in one run:
//!
//! - **native**: the image's own busybox binary running `httpd` on the
//!   host's loopback, no box and no relay (the floor);
//! - **twinbox container** and **twinbox VM**, each behind `-p`
//!   (the supervisor's relay: a socket in the container's network
//!   namespace, or vsock to the guest agent);
//! - **Docker** behind `-p`, from the same rootfs, when its daemon answers,
//!   with what carried the port (its userland proxy or iptables DNAT).
//!
//! Native, the container and Docker run in interleaved rounds, the order
//! rotating, so the machine's drift hits them alike; the VM runs after
//! them, alone, with its own duration (an emulating hypervisor makes every
//! guest system call slow). Figures are requests per second and wrk's
//! p50 and p99 latency; ratios to native and to Docker, and the issue's
//! target (the container at least Docker's requests per second with a p99
//! no worse), are computed from the same run. Every server and box it
//! starts is removed at the end, on error and after Ctrl-C too.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cli::WebBenchArgs;
use crate::host::on_path;
use crate::subjects::lab::{Lab, PROBE_IMAGE};

/// The port httpd listens on inside every box.
const BOX_PORT: u16 = 8000;

/// The files served: URL path and size.
const FILES: [(&str, usize); 2] = [("1k", 1024), ("1m", 1024 * 1024)];

/// What a box runs: the two files in a fresh directory, then httpd in the
/// foreground (it forks a child per connection).
const SERVE: &str = "mkdir -p /tmp/w \
    && dd if=/dev/zero of=/tmp/w/1k bs=1024 count=1 2>/dev/null \
    && dd if=/dev/zero of=/tmp/w/1m bs=1024 count=1024 2>/dev/null \
    && exec httpd -f -p 8000 -h /tmp/w";

/// The Docker image imported from the lab's rootfs.
const DOCKER_IMAGE: &str = "twinbox-bench-busybox:latest";

/// What one wrk run reported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Wrk {
    /// Completed requests.
    pub requests: u64,
    /// The run's length as wrk measured it, in seconds.
    pub seconds: f64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, in milliseconds (absent without `--latency`
    /// or when nothing completed).
    pub p50_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Socket errors: connect, read, write, timeout.
    pub socket_errors: [u64; 4],
    /// Responses that were not 2xx or 3xx.
    pub non_2xx: u64,
}

impl Wrk {
    /// Every failed request or connection.
    pub fn errors(&self) -> u64 {
        self.socket_errors.iter().sum::<u64>() + self.non_2xx
    }
}

/// A wrk time (`812.00us`, `1.16ms`, `2.01s`, `1.50m`, `1h`) in
/// milliseconds.
fn time_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    n.is_finite().then_some(n * scale)
}

/// A wrk count, plain or with an SI suffix (`17582`, `2.94k`, `1.2M`).
fn count(s: &str) -> Option<f64> {
    let (n, scale) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1e3),
        'M' => (&s[..s.len() - 1], 1e6),
        'G' => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let n: f64 = n.parse().ok()?;
    n.is_finite().then_some(n * scale)
}

/// Reads wrk's report (its stdout). Fails without the
/// "N requests in T" line, which every finished run prints.
pub fn parse_wrk(text: &str) -> Result<Wrk, String> {
    let mut requests = None;
    let mut seconds = None;
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let mut socket_errors = [0; 4];
    let mut non_2xx = 0;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // "17582 requests in 3.00s, 20.31MB read"
            [n, "requests", "in", t, ..] => {
                requests = count(n).map(|n| n as u64);
                seconds = time_ms(t.trim_end_matches(',')).map(|ms| ms / 1e3);
            }
            ["Requests/sec:", n] => rps = count(n),
            ["50%", t] => p50 = time_ms(t),
            ["99%", t] => p99 = time_ms(t),
            // "Socket errors: connect 0, read 4234, write 0, timeout 0"
            ["Socket", "errors:", rest @ ..] => {
                for (i, key) in ["connect", "read", "write", "timeout"].iter().enumerate() {
                    if let Some(p) = rest.iter().position(|w| w == key) {
                        socket_errors[i] = rest
                            .get(p + 1)
                            .and_then(|v| v.trim_end_matches(',').parse().ok())
                            .unwrap_or(0);
                    }
                }
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    let (Some(requests), Some(seconds)) = (requests, seconds) else {
        return Err("no \"N requests in T\" line in wrk's output".into());
    };
    let rps = rps
        .or_else(|| (seconds > 0.0).then(|| requests as f64 / seconds))
        .unwrap_or(0.0);
    // wrk prints 0.00us percentiles when nothing completed.
    let done = |p: Option<f64>| p.filter(|_| requests > 0);
    Ok(Wrk {
        requests,
        seconds,
        rps,
        p50_ms: done(p50),
        p99_ms: done(p99),
        socket_errors,
        non_2xx,
    })
}

/// The subjects, in the table's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Native,
    Container,
    Vm,
    Docker,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Native => "native (host loopback)",
            Kind::Container => "twinbox container (-p)",
            Kind::Vm => "twinbox vm (-p)",
            Kind::Docker => "docker (-p)",
        }
    }
}

/// A server being measured: where it listens.
struct Server {
    kind: Kind,
    port: u16,
}

/// Everything started, removed on drop: on success, on error, and after a
/// stop signal (which makes the run return early).
struct Cleanup<'a> {
    lab: &'a Lab,
    natives: Vec<Child>,
    boxes: Vec<String>,
    dockers: Vec<String>,
}

impl Cleanup<'_> {
    fn twinbox(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.lab.exe);
        c.args(args).env("TWINBOX_HOME", &self.lab.home);
        c
    }
    fn remove_box(&mut self, name: &str) {
        let _ = output(self.twinbox(&["rm", "-f", name]));
        self.boxes.retain(|b| b != name);
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for c in &mut self.natives {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.boxes.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.boxes.iter().map(String::as_str));
            let _ = output(self.twinbox(&args));
        }
        if !self.dockers.is_empty() {
            let mut c = Command::new("docker");
            c.args(["rm", "-f"]).args(&self.dockers);
            let _ = output(c);
        }
    }
}

/// Runs `c`, its stdin empty; its stdout, trimmed, or its stderr as the
/// error.
fn output(mut c: Command) -> Result<String> {
    let o = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    if !o.status.success() {
        bail!(
            "{:?} {:?}: {}",
            c.get_program(),
            c.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Whether `GET /path` on 127.0.0.1:`port` answers 200 with `len` bytes
/// of body.
fn serves(port: u16, path: &str, len: usize) -> bool {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(30))).is_err()
        || s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .is_err()
    {
        return false;
    }
    let mut all = Vec::new();
    if s.read_to_end(&mut all).is_err() {
        return false;
    }
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n");
    all.starts_with(b"HTTP/1.")
        && all.get(9..12) == Some(b"200")
        && head_end.is_some_and(|i| all.len() - i - 4 == len)
}

/// Waits until the server on `port` serves both files.
fn wait_serving(port: u16, within: Duration) -> Result<()> {
    let t0 = Instant::now();
    while !FILES.iter().all(|(p, n)| serves(port, p, *n)) {
        if t0.elapsed() > within {
            bail!("nothing served the files on 127.0.0.1:{port} within {within:?}");
        }
        if twinbox_bench::stop_requested() {
            bail!("interrupted: stopping, removing what was started");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// A free port on 127.0.0.1 (free when asked; httpd takes it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

/// The image's busybox running httpd on the host, serving the same two
/// files from the lab's directory.
fn start_native(lab: &Lab, cleanup: &mut Cleanup) -> Result<Server> {
    use std::os::unix::process::CommandExt;
    let www = lab.dir.path().join("www");
    std::fs::create_dir_all(&www)?;
    for (name, len) in FILES {
        std::fs::write(www.join(name), vec![0u8; len])?;
    }
    let port = free_port()?;
    let child = Command::new(lab.rootfs.join("bin/busybox"))
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(&www)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of the terminal's process group: Ctrl-C reaches the bench,
        // which stops it.
        .process_group(0)
        .spawn()
        .context("starting the image's busybox httpd on the host")?;
    cleanup.natives.push(child);
    wait_serving(port, Duration::from_secs(10))?;
    Ok(Server {
        kind: Kind::Native,
        port,
    })
}

/// The port Docker or twinbox printed for the box port (`127.0.0.1:N`,
/// one per line; an IPv6 line may come too).
fn port_of(printed: &str) -> Option<u16> {
    printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("127.0.0.1:"))
        .find_map(|p| p.parse().ok())
}

/// A twinbox box serving behind `-p 127.0.0.1::8000`.
fn start_twinbox(
    cleanup: &mut Cleanup,
    kind: Kind,
    name: &str,
    within: Duration,
) -> Result<Server> {
    let isolation = match kind {
        Kind::Vm => "vm",
        _ => "container",
    };
    let publish = format!("127.0.0.1::{BOX_PORT}");
    cleanup.boxes.push(name.to_string());
    output(cleanup.twinbox(&[
        "run",
        "-d",
        "--isolation",
        isolation,
        "--name",
        name,
        "-p",
        &publish,
        PROBE_IMAGE,
        "sh",
        "-c",
        SERVE,
    ]))?;
    let printed = output(cleanup.twinbox(&["port", name, &BOX_PORT.to_string()]))?;
    let port = port_of(&printed).with_context(|| format!("twinbox port printed {printed:?}"))?;
    wait_serving(port, within)?;
    Ok(Server { kind, port })
}

/// Docker, if its daemon answers: its version, or why not.
fn docker_version() -> std::result::Result<String, String> {
    if on_path("docker").is_none() {
        return Err("docker not installed (apt-get install docker.io)".into());
    }
    let mut c = Command::new("docker");
    c.args(["info", "--format", "{{.ServerVersion}}"]);
    output(c).map_err(|_| "the Docker daemon does not answer (start dockerd)".to_string())
}

/// Imports the lab's rootfs as Docker's image.
fn docker_import(lab: &Lab) -> Result<()> {
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&lab.rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let stdin = tar.stdout.take().context("tar's stdout")?;
    let ok = Command::new("docker")
        .args(["import", "-", DOCKER_IMAGE])
        .stdin(stdin)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let tar_ok = tar.wait().is_ok_and(|s| s.success());
    if !ok || !tar_ok {
        bail!("docker import of the busybox rootfs failed");
    }
    Ok(())
}

/// Docker's box serving behind `-p 127.0.0.1::8000`.
fn start_docker(lab: &Lab, cleanup: &mut Cleanup, name: &str) -> Result<Server> {
    docker_import(lab)?;
    cleanup.dockers.push(name.to_string());
    let publish = format!("127.0.0.1::{BOX_PORT}");
    let mut c = Command::new("docker");
    c.args(["run", "-d", "--name", name, "-p", &publish, DOCKER_IMAGE])
        .args(["sh", "-c", SERVE]);
    output(c)?;
    let mut c = Command::new("docker");
    c.args(["port", name, &BOX_PORT.to_string()]);
    let printed = output(c)?;
    let port = port_of(&printed).with_context(|| format!("docker port printed {printed:?}"))?;
    wait_serving(port, Duration::from_secs(30))?;
    Ok(Server {
        kind: Kind::Docker,
        port,
    })
}

/// The command lines of the processes whose name is `comm`.
fn processes(comm: &str) -> Vec<(i32, String)> {
    let Ok(d) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    d.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(|p| {
            let c = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            Some((
                p,
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .trim()
                    .to_string(),
            ))
        })
        .collect()
}

/// How Docker carried the published port: a docker-proxy process for it
/// (the userland proxy), or none (iptables DNAT alone), with dockerd's
/// command line and daemon.json's setting.
fn docker_proxy_mode(port: u16) -> String {
    let proxies = processes("docker-proxy");
    let ours = proxies
        .iter()
        .find(|(_, c)| c.contains(&format!("-host-port {port}")));
    let dockerd = processes("dockerd")
        .first()
        .map_or("dockerd not seen".to_string(), |(_, c)| c.clone());
    let config = std::fs::read_to_string("/etc/docker/daemon.json")
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("userland-proxy").cloned())
        .map_or("not set in /etc/docker/daemon.json".to_string(), |v| {
            format!("\"userland-proxy\": {v} in /etc/docker/daemon.json")
        });
    match ours {
        Some((pid, cmd)) => format!(
            "userland proxy: docker-proxy (pid {pid}, `{cmd}`) is the listener on 127.0.0.1:{port}, so the host's connections to it go through that process; dockerd: `{dockerd}`, userland-proxy {config}"
        ),
        None => format!(
            "iptables DNAT: no docker-proxy for port {port}; dockerd: `{dockerd}`, userland-proxy {config}"
        ),
    }
}

/// wrk's options for one run.
struct Load {
    threads: usize,
    connections: usize,
    duration: Duration,
    timeout: Duration,
}

/// Whole seconds, at least one, as wrk takes them.
fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs().max(1))
}

/// One wrk run against `port`'s `/path`.
fn wrk(load: &Load, port: u16, path: &str) -> Result<Wrk> {
    let o = Command::new("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}", secs(load.duration)))
        .args(["--timeout", &secs(load.timeout), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/{path}"))
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    if twinbox_bench::stop_requested() {
        bail!("interrupted: stopping, removing what was started");
    }
    let text = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        bail!(
            "wrk failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    parse_wrk(&text).map_err(|e| anyhow::anyhow!("{e}: {text}"))
}

/// Whether a wrk run worked; a failure is noted on its row and the
/// benchmark goes on, unless a stop signal came (then it is the error).
fn keep<T>(w: Result<T>, row: &mut Row, what: &str) -> Result<bool> {
    match w {
        Ok(_) => Ok(true),
        Err(e) if twinbox_bench::stop_requested() => Err(e),
        Err(e) => {
            row.note = Some(format!("{what} failed: {e:#}"));
            Ok(false)
        }
    }
}

/// One row of the table: a subject and a file.
#[derive(Debug, serde::Serialize)]
struct Row {
    subject: &'static str,
    file: &'static str,
    /// Every measured wrk run, in order.
    runs: Vec<Wrk>,
    /// Medians over the runs.
    rps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Failed requests and connections, all runs.
    errors: u64,
    note: Option<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    })
}

impl Row {
    fn new(kind: Kind, file: &'static str) -> Self {
        Row {
            subject: kind.label(),
            file,
            runs: Vec::new(),
            rps: None,
            p50_ms: None,
            p99_ms: None,
            errors: 0,
            note: None,
        }
    }
    fn not_run(kind: Kind, file: &'static str, why: &str) -> Self {
        let mut r = Row::new(kind, file);
        r.note = Some(format!("not run: {why}"));
        r
    }
    fn finish(&mut self) {
        let pick = |f: fn(&Wrk) -> Option<f64>| median(self.runs.iter().filter_map(f).collect());
        self.rps = pick(|w| Some(w.rps));
        self.p50_ms = pick(|w| w.p50_ms);
        self.p99_ms = pick(|w| w.p99_ms);
        self.errors = self.runs.iter().map(Wrk::errors).sum();
    }
}

/// The first line of `wrk -v` (it exits 1 after printing its usage).
fn wrk_version() -> String {
    Command::new("wrk")
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            let all = [o.stdout, o.stderr].concat();
            // "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
            let text = String::from_utf8_lossy(&all);
            let first = text.lines().next()?;
            Some(
                first
                    .split(" Copyright")
                    .next()
                    .unwrap_or(first)
                    .trim()
                    .to_string(),
            )
        })
        .unwrap_or_else(|| "unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Runs `twinbox bench web`.
pub fn run(args: WebBenchArgs) -> Result<()> {
    if on_path("wrk").is_none() {
        bail!("wrk not found: apt-get install wrk");
    }
    let lab = Lab::prepare()?;
    let tag = format!("bench{}-web", std::process::id());
    let load = Load {
        threads: args.threads,
        connections: args.connections,
        duration: args.duration,
        timeout: args.timeout,
    };
    let vm_load = Load {
        threads: args.threads.min(args.vm_connections).max(1),
        connections: args.vm_connections.max(1),
        duration: args.vm_duration,
        ..load
    };
    let warmup = Load {
        duration: args.warmup,
        ..load
    };
    let mut machine = serde_json::json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "hypervisor": twinbox_vmm::hypervisor::detect_kind().to_string(),
        "wrk": wrk_version(),
        "loadavg_before": loadavg(),
    });
    let mut cleanup = Cleanup {
        lab: &lab,
        natives: Vec::new(),
        boxes: Vec::new(),
        dockers: Vec::new(),
    };

    let pb = super::spinner("bench web");
    pb.set_message("native httpd");
    let mut servers = vec![start_native(&lab, &mut cleanup)?];
    pb.set_message("twinbox container");
    let mut skipped: Vec<(Kind, String)> = Vec::new();
    match start_twinbox(
        &mut cleanup,
        Kind::Container,
        &format!("{tag}-container"),
        Duration::from_secs(30),
    ) {
        Ok(s) => servers.push(s),
        Err(e) => skipped.push((Kind::Container, format!("{e:#}"))),
    }
    pb.set_message("Docker");
    let mut docker_mode = None;
    let docker = match args.no_docker {
        true => Err("--no-docker".to_string()),
        false => docker_version(),
    };
    match docker {
        Ok(v) => {
            machine["docker_server"] = v.into();
            let mut c = Command::new("docker");
            c.args(["version", "--format", "{{.Client.Version}}"]);
            machine["docker_client"] = output(c).unwrap_or_default().into();
            match start_docker(&lab, &mut cleanup, &format!("{tag}-docker")) {
                Ok(s) => {
                    docker_mode = Some(docker_proxy_mode(s.port));
                    servers.push(s);
                }
                Err(e) => skipped.push((Kind::Docker, format!("{e:#}"))),
            }
        }
        Err(why) => skipped.push((Kind::Docker, why)),
    }
    pb.finish_and_clear();
    super::bench::check_stopped()?;

    // Interleaved rounds: every file, every subject, the order rotating.
    let rounds = args.rounds.max(1);
    let per_run = usize::from(!args.warmup.is_zero()) + 1;
    let pb = super::count_bar("bench web");
    pb.set_length((rounds * FILES.len() * servers.len() * per_run) as u64);
    let mut rows: Vec<Row> = Vec::new();
    for s in &servers {
        for (file, _) in FILES {
            rows.push(Row::new(s.kind, file));
        }
    }
    for round in 0..rounds {
        for (fi, (file, _)) in FILES.iter().enumerate() {
            let n = servers.len();
            for k in 0..n {
                let s = &servers[(k + round + fi) % n];
                pb.set_message(format!("round {}: {} /{file}", round + 1, s.kind.label()));
                let Some(r) = rows
                    .iter_mut()
                    .find(|r| r.subject == s.kind.label() && r.file == *file)
                else {
                    continue;
                };
                if !args.warmup.is_zero() {
                    let w = wrk(&warmup, s.port, file);
                    pb.inc(1);
                    if !keep(w, r, "warm-up")? {
                        pb.inc(1);
                        continue;
                    }
                }
                let w = wrk(&load, s.port, file).map(|w| r.runs.push(w));
                pb.inc(1);
                keep(w, r, "measured run")?;
            }
        }
    }
    pb.finish_and_clear();

    // The VM, alone, after the others.
    let vm_why = if args.vm_duration.is_zero() {
        Some("--vm-duration 0".to_string())
    } else {
        twinbox_bench::Subject::unavailable(&lab.vm(false))
    };
    match vm_why {
        Some(why) => skipped.push((Kind::Vm, why)),
        None => {
            let pb = super::spinner("bench web: VM");
            pb.set_message("starting (a snapshot is made first if there is none)");
            let name = format!("{tag}-vm");
            match start_twinbox(&mut cleanup, Kind::Vm, &name, Duration::from_secs(300)) {
                Ok(s) => {
                    for (file, _) in FILES {
                        let mut row = Row::new(Kind::Vm, file);
                        pb.set_message(format!("/{file}"));
                        // No warm-up: what it left in flight would still
                        // be queued in the guest during the measured run.
                        let w = wrk(&vm_load, s.port, file).map(|w| row.runs.push(w));
                        keep(w, &mut row, "measured run")?;
                        rows.push(row);
                    }
                }
                Err(e) => skipped.push((Kind::Vm, format!("{e:#}"))),
            }
            cleanup.remove_box(&name);
            pb.finish_and_clear();
        }
    }
    super::bench::check_stopped()?;
    machine["loadavg_after"] = loadavg().into();
    drop(cleanup);

    for (kind, why) in &skipped {
        for (file, _) in FILES {
            rows.push(Row::not_run(*kind, file, why));
        }
    }
    for r in &mut rows {
        r.finish();
    }
    let order = [Kind::Native, Kind::Container, Kind::Vm, Kind::Docker];
    rows.sort_by_key(|r| {
        let k = order.iter().position(|k| k.label() == r.subject);
        let f = FILES.iter().position(|(f, _)| *f == r.file);
        (f, k)
    });

    let report = Report {
        load: &load,
        vm_load: &vm_load,
        rounds,
        rows: &rows,
        docker_mode: docker_mode.as_deref(),
        machine: &machine,
    };
    print!("{}", report.markdown());
    if let Some(path) = args.json {
        let v = serde_json::json!({
            "threads": load.threads,
            "connections": load.connections,
            "duration_s": load.duration.as_secs().max(1),
            "vm_duration_s": vm_load.duration.as_secs(),
            "vm_threads": vm_load.threads,
            "vm_connections": vm_load.connections,
            "timeout_s": load.timeout.as_secs().max(1),
            "warmup_s": args.warmup.as_secs(),
            "rounds": rounds,
            "machine": machine,
            "docker_port_mode": docker_mode,
            "rows": rows,
            "targets": report.targets(),
            "note": lab.note,
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&v)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The printed report.
struct Report<'a> {
    load: &'a Load,
    vm_load: &'a Load,
    rounds: usize,
    rows: &'a [Row],
    docker_mode: Option<&'a str>,
    machine: &'a serde_json::Value,
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

/// Requests per second: whole numbers, or two decimals below 10 (a VM on
/// an emulating hypervisor serves a fraction of one).
fn rps(v: Option<f64>) -> String {
    match v {
        Some(x) if x < 10.0 => format!("{x:.2}"),
        _ => fmt(v, 0),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a / b < 0.01 => format!("{:.5}x", a / b),
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

impl Report<'_> {
    fn get(&self, kind: Kind, file: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.subject == kind.label() && r.file == file)
            .filter(|r| !r.runs.is_empty())
    }

    /// The target for each file: the container at least Docker's
    /// requests per second, with a p99 no worse; `None` when a row is
    /// missing.
    fn targets(&self) -> Vec<serde_json::Value> {
        FILES
            .iter()
            .map(|(file, _)| {
                let c = self.get(Kind::Container, file);
                let d = self.get(Kind::Docker, file);
                let met = match (c, d) {
                    (Some(c), Some(d)) => match (c.rps, d.rps, c.p99_ms, d.p99_ms) {
                        (Some(cr), Some(dr), Some(cp), Some(dp)) => Some(cr >= dr && cp <= dp),
                        _ => None,
                    },
                    _ => None,
                };
                serde_json::json!({
                    "file": file,
                    "container_rps": c.and_then(|r| r.rps),
                    "docker_rps": d.and_then(|r| r.rps),
                    "container_p99_ms": c.and_then(|r| r.p99_ms),
                    "docker_p99_ms": d.and_then(|r| r.p99_ms),
                    "met": met,
                })
            })
            .collect()
    }

    fn markdown(&self) -> String {
        use std::fmt::Write;
        let l = self.load;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Web server behind -p: busybox httpd serving a 1 KiB and a 1 MiB file, wrk -t{} -c{} -d{} --timeout {} --latency from the host; native, the container and Docker in {} interleaved round(s) (medians shown){}. Host: {} {} CPUs, kernel {}, {}; load average {} before, {} after.\n",
            l.threads,
            l.connections,
            secs(l.duration),
            secs(l.timeout),
            self.rounds,
            match self.get(Kind::Vm, "1k") {
                Some(_) => format!(
                    ", the VM alone after them with -t{} -c{} -d{} and no warm-up",
                    self.vm_load.threads,
                    self.vm_load.connections,
                    secs(self.vm_load.duration)
                ),
                None => String::new(),
            },
            self.machine["hypervisor"].as_str().unwrap_or("?"),
            self.machine["cpus"],
            self.machine["kernel"].as_str().unwrap_or("?"),
            self.machine["wrk"].as_str().unwrap_or("?"),
            self.machine["loadavg_before"].as_str().unwrap_or("?"),
            self.machine["loadavg_after"].as_str().unwrap_or("?"),
        );
        let _ = writeln!(
            s,
            "| subject | file | runs | requests/s | p50 (ms) | p99 (ms) | errors | rps vs native | rps vs Docker | p99 vs Docker | note |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
        for r in self.rows {
            let native = self.get(Kind::Native, r.file);
            let docker = self.get(Kind::Docker, r.file);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.subject,
                if r.file == "1k" { "1 KiB" } else { "1 MiB" },
                r.runs.len(),
                rps(r.rps),
                fmt(r.p50_ms, 2),
                fmt(r.p99_ms, 2),
                if r.runs.is_empty() {
                    "-".into()
                } else {
                    r.errors.to_string()
                },
                ratio(r.rps, native.and_then(|n| n.rps)),
                ratio(r.rps, docker.and_then(|d| d.rps)),
                ratio(r.p99_ms, docker.and_then(|d| d.p99_ms)),
                r.note.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(s);
        if let Some(m) = self.docker_mode {
            let _ = writeln!(s, "Docker's published port: {m}.");
        }
        for t in self.targets() {
            let file = t["file"].as_str().unwrap_or("?");
            let _ = match t["met"].as_bool() {
                Some(met) => writeln!(
                    s,
                    "Target, /{file} (twinbox container at least Docker's requests/s, p99 no worse): {} — {:.0} vs {:.0} requests/s, p99 {:.2} vs {:.2} ms.",
                    if met { "met" } else { "NOT met" },
                    t["container_rps"].as_f64().unwrap_or(0.0),
                    t["docker_rps"].as_f64().unwrap_or(0.0),
                    t["container_p99_ms"].as_f64().unwrap_or(0.0),
                    t["docker_p99_ms"].as_f64().unwrap_or(0.0),
                ),
                None => writeln!(
                    s,
                    "Target, /{file} (twinbox container vs Docker's -p): not checked, a row is missing."
                ),
            };
        }
        if self.get(Kind::Vm, "1k").is_some() {
            let _ = writeln!(
                s,
                "The VM's figures are bounded by its hypervisor ({}): each request is a vsock connection to the guest agent, its connect to httpd and httpd's fork in the guest, every guest system call and page fault at that hypervisor's speed.",
                self.machine["hypervisor"].as_str().unwrap_or("?"),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// wrk 4.1.0 against busybox httpd, /1k, on this host.
    const SMALL: &str = "Running 3s test @ http://127.0.0.1:18123/1k
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.68ms    1.43ms   6.69ms   70.25%
    Req/Sec     2.94k     1.18k    5.27k    58.33%
  Latency Distribution
     50%    1.16ms
     75%    2.76ms
     90%    3.89ms
     99%    5.56ms
  17582 requests in 3.00s, 20.31MB read
Requests/sec:   5853.24
Transfer/sec:      6.76MB
";

    /// A 404 for every request: busybox closes, wrk counts read errors.
    const NOT_FOUND: &str = "Running 2s test @ http://127.0.0.1:18123/nothere
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.01ms    1.45ms  12.37ms   71.03%
    Req/Sec     2.02k   259.69     2.52k    66.67%
  Latency Distribution
     50%    1.44ms
     75%    3.14ms
     90%    4.11ms
     99%    5.37ms
  4234 requests in 2.10s, 0.93MB read
  Socket errors: connect 0, read 4234, write 0, timeout 0
  Non-2xx or 3xx responses: 4234
Requests/sec:   2018.72
Transfer/sec:    455.50KB
";

    /// A slow server (1.5-4 s for some requests) and a 3 s timeout:
    /// seconds, timeouts, and wrk's trailing spaces after "s".
    const SLOW: &str = "Running 6s test @ http://127.0.0.1:18125/1k
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   770.50ms    1.09s    2.72s    76.60%
    Req/Sec    13.44     16.61    48.00     81.25%
  Latency Distribution
     50%   18.70ms
     75%    1.52s 
     90%    2.53s 
     99%    2.72s 
  53 requests in 6.05s, 58.90KB read
  Socket errors: connect 0, read 0, write 0, timeout 6
Requests/sec:      8.76
Transfer/sec:      9.73KB
";

    /// A server that accepts and never answers: nothing completes.
    const NONE: &str = "Running 2s test @ http://127.0.0.1:18126/1k
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 2.01s, 0.00B read
Requests/sec:      0.00
Transfer/sec:       0.00B";

    #[test]
    fn reads_a_plain_run() {
        let w = parse_wrk(SMALL).expect("parses");
        assert_eq!(w.requests, 17582);
        assert!((w.seconds - 3.0).abs() < 1e-9);
        assert!((w.rps - 5853.24).abs() < 1e-9);
        assert_eq!(w.p50_ms, Some(1.16));
        assert_eq!(w.p99_ms, Some(5.56));
        assert_eq!(w.errors(), 0);
    }

    #[test]
    fn counts_socket_errors_and_bad_statuses() {
        let w = parse_wrk(NOT_FOUND).expect("parses");
        assert_eq!(w.socket_errors, [0, 4234, 0, 0]);
        assert_eq!(w.non_2xx, 4234);
        assert_eq!(w.errors(), 8468);
    }

    #[test]
    fn reads_seconds_and_timeouts() {
        let w = parse_wrk(SLOW).expect("parses");
        assert_eq!(w.requests, 53);
        assert!((w.seconds - 6.05).abs() < 1e-9);
        assert!((w.rps - 8.76).abs() < 1e-9);
        assert!((w.p50_ms.expect("p50") - 18.7).abs() < 1e-9);
        assert!((w.p99_ms.expect("p99") - 2720.0).abs() < 1e-6);
        assert_eq!(w.socket_errors, [0, 0, 0, 6]);
        assert_eq!(w.errors(), 6);
    }

    #[test]
    fn nothing_completed_has_no_latency() {
        let w = parse_wrk(NONE).expect("parses");
        assert_eq!(w.requests, 0);
        assert_eq!(w.rps, 0.0);
        assert_eq!((w.p50_ms, w.p99_ms), (None, None));
    }

    #[test]
    fn units_and_suffixes() {
        assert_eq!(time_ms("1.5s"), Some(1500.0));
        assert_eq!(time_ms("2h"), Some(7_200_000.0));
        assert!(time_ms("815.00us").is_some_and(|ms| (ms - 0.815).abs() < 1e-12));
        assert_eq!(time_ms("12ns"), None);
        assert_eq!(time_ms("-nanus"), None);
        assert_eq!(count("2.94k"), Some(2940.0));
        assert_eq!(count("1.5M"), Some(1_500_000.0));
        assert_eq!(count("17582"), Some(17582.0));
        assert_eq!(count("x"), None);
    }

    #[test]
    fn requests_per_second_from_the_count_when_the_line_is_missing() {
        let w = parse_wrk("  100 requests in 2.00s, 1.00MB read\n").expect("parses");
        assert!((w.rps - 50.0).abs() < 1e-9);
        assert_eq!(w.p50_ms, None);
    }

    #[test]
    fn refuses_output_without_a_result() {
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n").is_err());
        assert!(parse_wrk("").is_err());
    }

    #[test]
    fn docker_and_twinbox_port_lines() {
        assert_eq!(port_of("127.0.0.1:49153"), Some(49153));
        assert_eq!(port_of("[::1]:49154\n127.0.0.1:49155\n"), Some(49155));
        assert_eq!(port_of("0.0.0.0:1"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0]), Some(2.5));
    }
}
