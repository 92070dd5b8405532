//! End-to-end tests of published ports (`-p`) in the container box, with a
//! real HTTP server in the box (busybox `httpd` serving files) and real
//! clients on the host (`curl`, and plain TCP for the counts): the
//! forms and Docker's `port`/`ps` output, 127.0.0.1 as the default
//! address, a port already taken refused before the box starts, many
//! concurrent connections, half-closes, a box port nobody listens on, the
//! box removed mid-transfer, and nothing left (descriptors, threads,
//! listeners, processes) after 1,000 connections and after the box. The
//! VM box's ports are tested in `vm_linux.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{code, host_mounts_of, http_get as get, processes_with, stderr, stdout, Env};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn env() -> Result<Env, Box<dyn std::error::Error>> {
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    Ok(env)
}

fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert_eq!(code(&out), 0, "twinbox {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn inspect(env: &Env, name: &str) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let v: serde_json::Value = serde_json::from_str(&ok(env, &["inspect", name]))?;
    Ok(v[0].clone())
}

/// The box's server: index.html ("hello"), a 1 MiB file, a 64 MiB file.
const SERVE: &str = "mkdir /tmp/w && echo hello > /tmp/w/index.html \
    && dd if=/dev/zero of=/tmp/w/mib bs=1024 count=1024 2>/dev/null \
    && dd if=/dev/zero of=/tmp/w/big bs=1048576 count=64 2>/dev/null \
    && exec httpd -f -p 8000 -h /tmp/w";

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "waited {limit:?} for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fds(pid: i64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn threads(pid: i64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The host port of `box_port` from `twinbox port BOX BOX_PORT`.
fn host_port(env: &Env, name: &str, box_port: &str) -> Result<u16, Box<dyn std::error::Error>> {
    let line = ok(env, &["port", name, box_port]);
    let (ip, port) = line.rsplit_once(':').ok_or("no port")?;
    assert_eq!(ip, "127.0.0.1", "the default host address is loopback");
    Ok(port.parse()?)
}

#[test]
fn a_container_serves_http_through_a_published_port() -> TestResult {
    let env = env()?;
    // 8000 on any free host port; 9 (nothing listens) on another.
    let id = ok(
        &env,
        &[
            "run",
            "-d",
            "--isolation",
            "container",
            "--name",
            "web",
            "-p",
            "8000",
            "-p",
            "127.0.0.1::9",
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    );
    assert_eq!(id.len(), 64);
    let port = host_port(&env, "web", "8000")?;
    let dead = host_port(&env, "web", "9/tcp")?;
    let lines = ok(&env, &["port", "web"]);
    assert_eq!(
        lines,
        format!("8000/tcp -> 127.0.0.1:{port}\n9/tcp -> 127.0.0.1:{dead}")
    );
    let ps = ok(&env, &["ps"]);
    assert!(
        ps.lines().next().is_some_and(|h| h.contains("PORTS")),
        "{ps}"
    );
    assert!(
        ps.contains(&format!(
            "127.0.0.1:{port}->8000/tcp, 127.0.0.1:{dead}->9/tcp"
        )),
        "{ps}"
    );
    let none = env.run(&["port", "web", "81"]);
    assert_ne!(code(&none), 0, "an unpublished port has no address");

    // A real client.
    wait_until("httpd", Duration::from_secs(30), || {
        get(port, "/index.html").is_ok_and(|(s, _)| s.contains("200"))
    });
    let curl = Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()?;
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "hello\n", "{curl:?}");
    assert_eq!(get(port, "/mib")?.1, 1 << 20);

    // Not on the other addresses of the host.
    assert!(
        TcpStream::connect(("127.0.0.2", port)).is_err(),
        "reachable beyond 127.0.0.1"
    );

    // A box port nobody listens on: the host connection is closed, at once.
    let mut c = TcpStream::connect(("127.0.0.1", dead))?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut nothing = Vec::new();
    assert!(c.read_to_end(&mut nothing).is_ok_and(|n| n == 0));

    // A half-close: the request, then "done writing"; the answer comes.
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
    c.shutdown(Shutdown::Write)?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    assert!(answer.ends_with("hello\n"), "{answer}");

    // Many at once: 32 clients, 8 requests each.
    let clients: Vec<_> = (0..32)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<usize> {
                let mut n = 0;
                for _ in 0..8 {
                    let (s, len) = get(port, "/mib")?;
                    if s.contains("200") && len == 1 << 20 {
                        n += 1;
                    }
                }
                Ok(n)
            })
        })
        .collect();
    let mut served = 0;
    for c in clients {
        served += c.join().map_err(|_| "client panicked")??;
    }
    assert_eq!(served, 32 * 8);

    // 1,000 connections leave the supervisor as it was.
    let sup = inspect(&env, "web")?["state"]["supervisor"]
        .as_i64()
        .ok_or("supervisor")?;
    let (fd0, th0) = (fds(sup), threads(sup));
    for _ in 0..1000 {
        let (s, _) = get(port, "/index.html")?;
        assert!(s.contains("200"), "{s}");
    }
    wait_until(
        "the connections' threads to end",
        Duration::from_secs(10),
        || fds(sup) <= fd0 && threads(sup) <= th0,
    );

    // A port already taken is refused before the box starts.
    let taken = format!("127.0.0.1:{port}:80");
    let out = env.run(&[
        "run",
        "-d",
        "--isolation",
        "container",
        "--name",
        "second",
        "-p",
        &taken,
        "busybox",
        "sleep",
        "100",
    ]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{port}: it is already in use")),
        "{}",
        stderr(&out)
    );
    assert!(processes_with("sleep 100").is_empty(), "the box ran anyway");
    assert_eq!(inspect(&env, "second")?["state"]["status"], "exited");
    ok(&env, &["rm", "second"]);

    // The box goes away mid-transfer: the client's download ends.
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.write_all(b"GET /big HTTP/1.0\r\n\r\n")?;
    let mut first = [0u8; 4096];
    c.read_exact(&mut first)?;
    ok(&env, &["rm", "-f", "web"]);
    let t0 = Instant::now();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(
        rest.len() < 64 << 20,
        "the whole file came from a removed box"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "the client hung");

    // Nothing is left: no listener, no supervisor, no mount.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(TcpStream::connect(("127.0.0.1", dead)).is_err());
    wait_until("the supervisor to end", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{sup}")).exists()
    });
    assert!(host_mounts_of(&env).is_empty());
    Ok(())
}

#[test]
fn a_foreground_run_with_a_port_is_served_and_removed_at_its_end() -> TestResult {
    let env = env()?;
    // Publishing makes even a plain run live under a supervisor; unnamed
    // and in the foreground, it is removed at its end, as `run --rm`.
    let free = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = free.local_addr()?.port();
    drop(free);
    let spec = format!("{port}:7000");
    let mut child = Command::new(env!("CARGO_BIN_EXE_twinbox"))
        .args([
            "run",
            "--isolation",
            "container",
            "-p",
            &spec,
            "busybox",
            "sh",
            "-c",
            "echo one-shot | nc -l -p 7000",
        ])
        .env("TWINBOX_HOME", env.home())
        .env("TWINBOX_CACHE", env.cache())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut got = String::new();
    let t0 = Instant::now();
    while got.is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "nc never answered");
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.shutdown(Shutdown::Write)?;
            let _ = c.read_to_string(&mut got);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, "one-shot\n");
    let status = child.wait()?;
    assert!(status.success(), "{status:?}");
    assert_eq!(ok(&env, &["ps", "-a", "-q"]), "", "the box was kept");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    Ok(())
}
