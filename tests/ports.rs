//! End-to-end tests of published ports (`-p`) in the container box, with a
//! real HTTP server in the box (busybox `httpd` serving files) and real
//! clients on the host (`curl`, and plain TCP for the counts): the
//! forms and Docker's `port`/`ps` output, 127.0.0.1 as the default
//! address, a port already taken refused before the box starts, many
//! concurrent connections, half-closes, a box port nobody listens on, the
//! box removed mid-transfer, and nothing left (descriptors, threads,
//! listeners, processes) after 1,000 connections and after the box. UDP
//! (`/udp`) with a small echo server put into the box (`udp_echo/echo.c`,
//! busybox has none): each client its own flow, the same number as tcp
//! and udp, the flow limit, idle flows closed, nothing left. The VM box's
//! ports are tested in `vm_linux.rs`.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{
    code, host_mounts_of, http_get as get, processes_with, stderr, stdout, udp_ask, udp_echo, Env,
};

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

/// A port number free for both TCP and UDP on 127.0.0.1 (as far as one
/// can tell before using it).
fn free_tcp_and_udp_port() -> Result<u16, Box<dyn std::error::Error>> {
    for _ in 0..100 {
        let t = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = t.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no port free for both".into())
}

#[test]
fn a_container_answers_udp_through_published_ports() -> TestResult {
    let env = env()?;
    let bin = env.path().join("bin");
    std::fs::create_dir_all(&bin)?;
    udp_echo(&bin).ok_or("gcc cannot build tests/udp_echo/echo.c")?;
    let volume = format!("{}:/h:ro", bin.display());
    // 53 as tcp (httpd) and udp (the echo server) on one host number;
    // 5353/udp where nobody listens, on any free port.
    let both = free_tcp_and_udp_port()?;
    let (tcp, udp) = (format!("{both}:53"), format!("{both}:53/udp"));
    ok(
        &env,
        &[
            "run",
            "-d",
            "--isolation",
            "container",
            "--name",
            "dns",
            "-v",
            &volume,
            "-p",
            &tcp,
            "-p",
            &udp,
            "-p",
            "127.0.0.1::5353/udp",
            "busybox",
            "sh",
            "-c",
            "mkdir /tmp/w; echo tcp > /tmp/w/index.html; /h/udp-echo 53 & \
             exec httpd -f -p 53 -h /tmp/w",
        ],
    );
    let dead = host_port(&env, "dns", "5353/udp")?;
    assert_eq!(
        ok(&env, &["port", "dns", "53/udp"]),
        format!("127.0.0.1:{both}")
    );
    assert_eq!(
        ok(&env, &["port", "dns", "53"]),
        format!("127.0.0.1:{both}")
    );
    assert_eq!(
        ok(&env, &["port", "dns"]),
        format!(
            "53/tcp -> 127.0.0.1:{both}\n53/udp -> 127.0.0.1:{both}\n\
             5353/udp -> 127.0.0.1:{dead}"
        )
    );
    let ps = ok(&env, &["ps"]);
    assert!(
        ps.contains(&format!(
            "127.0.0.1:{both}->53/tcp, 127.0.0.1:{both}->53/udp, 127.0.0.1:{dead}->5353/udp"
        )),
        "{ps}"
    );

    // The echo server answers through the published port, from it.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let short = Duration::from_millis(200);
    wait_until("the echo server", Duration::from_secs(30), || {
        udp_ask(&probe, both, b"ping", short).is_ok_and(|a| a.as_deref() == Some(b"ping"))
    });
    // The probe may have late echoes in flight: the checks take a client
    // of their own.
    let first = std::net::UdpSocket::bind("127.0.0.1:0")?;
    // TCP on the same number is httpd.
    assert!(get(both, "/index.html")?.0.contains("200"));
    let long = Duration::from_secs(10);
    // Sizes: empty, one byte, the largest a datagram carries.
    for size in [0, 1, 1472, 65507] {
        let d = vec![b'u'; size];
        assert_eq!(udp_ask(&first, both, &d, long)?, Some(d), "{size} bytes");
    }
    // Not on the host's other addresses.
    let elsewhere = std::net::UdpSocket::bind("127.0.0.2:0")?;
    elsewhere.set_read_timeout(Some(short))?;
    let _ = elsewhere.send_to(b"ping", ("127.0.0.2", both));
    assert!(elsewhere.recv_from(&mut [0u8; 16]).is_err());

    // Each client is its own flow: its own source address in the box,
    // kept across its datagrams.
    let sup = inspect(&env, "dns")?["state"]["supervisor"]
        .as_i64()
        .ok_or("supervisor")?;
    // (The TCP relay's pool keeps a thread 2 s after a connection: the
    // baseline may hold one, so threads are compared as at most it.)
    let (fd0, th0) = (fds(sup), threads(sup));
    let clients: Vec<_> = (0..50)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let mut seen = std::collections::HashSet::new();
    for c in &clients {
        let who = udp_ask(c, both, b"whoami", long)?.ok_or("no answer")?;
        assert_eq!(udp_ask(c, both, b"whoami", long)?.as_ref(), Some(&who));
        let who = String::from_utf8(who)?;
        assert!(who.starts_with("127.0.0.1:"), "{who}");
        seen.insert(who);
    }
    assert_eq!(seen.len(), 50, "clients shared a flow");
    drop(clients);
    // A flow is a socket, not a thread.
    assert!(
        fds(sup) <= fd0 + 50,
        "{} descriptors for 50 flows",
        fds(sup) - fd0
    );
    assert!(
        threads(sup) <= th0,
        "{} threads, {th0} before",
        threads(sup)
    );

    // More clients than flows are kept (512): each still gets its answer,
    // and the supervisor holds no more than the limit.
    for i in 0..600u32 {
        let c = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let d = i.to_le_bytes();
        assert_eq!(
            udp_ask(&c, both, &d, long)?.as_deref(),
            Some(&d[..]),
            "client {i}"
        );
    }
    assert!(fds(sup) <= fd0 + 512, "{} descriptors", fds(sup) - fd0);
    assert!(
        threads(sup) <= th0,
        "{} threads, {th0} before",
        threads(sup)
    );

    // Nobody listens on 5353 in the box: no answer, and no harm.
    let c = std::net::UdpSocket::bind("127.0.0.1:0")?;
    assert_eq!(
        udp_ask(&c, dead, b"anyone?", Duration::from_millis(500))?,
        None
    );
    assert_eq!(
        udp_ask(&first, both, b"still", long)?.as_deref(),
        Some(&b"still"[..])
    );

    // A UDP port already taken is refused before the box starts.
    let taken = format!("127.0.0.1:{both}:53/udp");
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
        "101",
    ]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("127.0.0.1:{both}/udp: it is already in use")),
        "{}",
        stderr(&out)
    );
    assert!(processes_with("sleep 101").is_empty(), "the box ran anyway");
    ok(&env, &["rm", "second"]);

    // Idle flows are closed (after 90 s, as Docker's proxy): the
    // descriptors go back to what they were before any of them.
    wait_until("the idle flows to close", Duration::from_secs(150), || {
        fds(sup) < fd0
    });
    assert!(
        threads(sup) <= th0,
        "{} threads, {th0} before",
        threads(sup)
    );
    // And a client after that is served anew.
    assert_eq!(
        udp_ask(&first, both, b"again", long)?.as_deref(),
        Some(&b"again"[..])
    );

    // The box goes: nothing is left, the ports are free again.
    ok(&env, &["rm", "-f", "dns"]);
    wait_until("the supervisor to end", Duration::from_secs(10), || {
        !std::path::Path::new(&format!("/proc/{sup}")).exists()
    });
    assert!(std::net::UdpSocket::bind(("127.0.0.1", both)).is_ok());
    assert!(std::net::UdpSocket::bind(("127.0.0.1", dead)).is_ok());
    assert!(std::net::TcpListener::bind(("127.0.0.1", both)).is_ok());
    assert!(processes_with("/h/udp-echo").is_empty());
    assert!(host_mounts_of(&env).is_empty());
    Ok(())
}
