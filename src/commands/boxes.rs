//! The lifecycle verbs, Docker's names and meanings: `run -d`/`--name`/
//! `-t`, `create`, `start`, `ps`, `logs`, `exec`, `stop`, `kill`, `rm`,
//! `wait`, `inspect`. Each is a thin translation onto the box store
//! ([`crate::boxes`]) and the box's supervisor ([`crate::supervisor`]);
//! none owns box state.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use twinbox_images::Store;

use crate::boxes::control::{self, ExecRequest, Reply, Request};
use crate::boxes::id;
use crate::boxes::log;
use crate::boxes::ports::{self, PortSpec};
use crate::boxes::record::{now, Options, Record, State, Status};
use crate::boxes::store::Boxes;
use crate::cli::{ExecArgs, Isolation, LogsArgs, PsArgs, RunArgs};
use crate::terminal;
use crate::workload;

fn boxes(store: &Store) -> Result<Boxes> {
    Ok(Boxes::open(store.home())?)
}

/// The log cap `--log-opt max-size=` asks for.
fn log_max(opts: &[String]) -> Result<u64> {
    let mut max = log::DEFAULT_MAX;
    for o in opts {
        match o.split_once('=') {
            Some(("max-size", v)) => max = crate::size::parse(v)?,
            _ => bail!("--log-opt {o:?}: only max-size=SIZE is known"),
        }
    }
    Ok(max)
}

/// Makes a box's record from `run`/`create` arguments.
/// `run` is whether it runs at once in the foreground (`run` without
/// `-d`), not a `create`.
pub fn create(store: &Store, args: &RunArgs, run: bool) -> Result<Record> {
    if args.profile.is_some() || args.dry_run || args.debug {
        bail!("--profile, --dry-run and --debug are for a foreground `twinbox run` without -d, --name or -t");
    }
    let w = workload::resolve(store, args)?;
    let volumes = crate::volumes::parse_all(&args.volume)?;
    if w.isolation == Isolation::Vm {
        crate::volumes::for_vm(store.home(), &volumes)?;
    }
    let _volumes_lock = crate::volumes::prepare(store.home(), &volumes)?;
    let b = boxes(store)?;
    let image_command = w.image_command.clone();
    let mut rec = Record {
        id: id::fresh()?,
        name: args.name.clone().unwrap_or_default(),
        created: now(),
        workload: w,
        image_command,
        options: Options {
            interactive: args.interactive,
            tty: args.tty,
            // A foreground run that lives only for its -i or volumes (VM)
            // or its ports, unnamed, is Docker's `run --rm`, as a plain
            // `twinbox run` is. A `create` is kept, as Docker keeps it.
            auto_remove: args.rm
                || (run
                    && !args.detach
                    && args.name.is_none()
                    && (args.isolation == Isolation::Vm || !args.publish.is_empty())),
            userns: args.userns,
            cold: args.cold,
            log_max: log_max(&args.log_opt)?,
            publish: PortSpec::parse_all(&args.publish)?,
            volumes,
        },
        state: State::created(),
    };
    b.create(&mut rec)?;
    Ok(rec)
}

/// `twinbox create`: prints the new box's id.
pub fn create_cmd(store: &Store, args: &RunArgs) -> Result<u8> {
    let rec = create(store, args, false)?;
    println!("{}", rec.id);
    Ok(0)
}

/// Starts box `rec` (created or exited) through a new supervisor; with
/// `attached` it keeps this command's stdio. Returns the supervisor's
/// pid, or the exit code of a box that could not start.
fn start_box(store: &Store, rec: &Record, attached: bool) -> Result<std::result::Result<i32, u8>> {
    let b = boxes(store)?;
    let dir = b.dir(&rec.id);
    match crate::supervisor::spawn(store.home(), &dir, &rec.id, attached)? {
        Ok(pid) => Ok(Ok(pid)),
        Err((code, msg)) => {
            eprintln!("twinbox: {msg}");
            Ok(Err(code.clamp(0, 255) as u8))
        }
    }
}

/// `twinbox run` with `-d`, `--name` or `-t`: a box that lives.
pub fn run(store: &Store, args: &RunArgs) -> Result<u8> {
    let rec = create(store, args, true)?;
    if args.detach {
        return match start_box(store, &rec, false)? {
            Ok(_) => {
                println!("{}", rec.id);
                Ok(0)
            }
            Err(code) => Ok(code),
        };
    }
    let raw = if args.tty {
        terminal::RawMode::enter(0)
    } else {
        None
    };
    let pid = match start_box(store, &rec, true)? {
        Ok(pid) => pid,
        Err(code) => return Ok(code),
    };
    let dir = boxes(store)?.dir(&rec.id);
    let code = wait_child(pid, &dir, args.tty)?;
    drop(raw);
    Ok(code)
}

/// Waits for the foreground box's supervisor (our child) to end: its
/// exit status is the box's. Window changes are passed on; with no
/// terminal, SIGINT, SIGTERM and SIGHUP are passed to the box (Docker's
/// sig-proxy).
fn wait_child(pid: i32, dir: &std::path::Path, tty: bool) -> Result<u8> {
    let mut mask = SigSet::empty();
    for s in [
        Signal::SIGWINCH,
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
    ] {
        mask.add(s);
    }
    mask.thread_block()?;
    let sigfd = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )?;
    // SAFETY: pidfd_open takes a pid and flags.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: polls pollfds we own.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, if pidfd < 0 { 50 } else { -1 }) };
        while let Ok(Some(si)) = sigfd.read_signal() {
            let req = if si.ssi_signo == libc::SIGWINCH as u32 {
                terminal::winsize(0).map(|(rows, cols)| Request::Resize { rows, cols })
            } else if !tty {
                Some(Request::Kill {
                    signal: si.ssi_signo as i32,
                })
            } else {
                None
            };
            if let (Some(req), Ok(mut s)) = (req, control::connect(dir)) {
                let _ = control::send(&s, &req, &[]);
                let _ = control::read_reply(&mut s, &mut Vec::new());
            }
        }
        let mut status = 0;
        // SAFETY: reaps our own child into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            if pidfd >= 0 {
                // SAFETY: our pidfd, closed once.
                unsafe { libc::close(pidfd) };
            }
            return Ok(if libc::WIFSIGNALED(status) {
                (128 + libc::WTERMSIG(status)) as u8
            } else {
                libc::WEXITSTATUS(status) as u8
            });
        }
    }
}

/// `twinbox start BOX...`
pub fn start(store: &Store, names: &[String]) -> Result<u8> {
    let b = boxes(store)?;
    let mut code = 0;
    for n in names {
        let rec = b.resolve(n)?;
        let _lock = b.lock(&rec.id)?;
        let rec = b.load(&rec.id)?;
        match rec.state.status {
            Status::Running | Status::Starting => {}
            Status::Created | Status::Exited => {
                let mut fresh = rec.clone();
                fresh.state.status = Status::Starting;
                fresh.state.exit_code = None;
                fresh.state.error = None;
                fresh.state.finished_at = None;
                cleanup_leftovers(&rec);
                b.save(&fresh)?;
                if let Err(c) = start_box(store, &fresh, false)? {
                    code = c;
                    continue;
                }
            }
        }
        println!("{n}");
    }
    Ok(code)
}

/// `twinbox ps`
/// The PORTS column: a running box's published ports.
fn ports_of(r: &Record) -> String {
    if r.state.status == Status::Running {
        ports::ps_column(&r.state.ports)
    } else {
        String::new()
    }
}

/// `twinbox port BOX [PORT[/PROTO]]`: Docker's lines, `80/tcp ->
/// 127.0.0.1:8080`, or for one port only its host address.
pub fn port(store: &Store, name: &str, which: Option<&str>) -> Result<u8> {
    let r = boxes(store)?.resolve(name)?;
    if r.state.status != Status::Running {
        bail!("box {} is not running", r.name);
    }
    let mut out = std::io::stdout().lock();
    let Some(which) = which else {
        for b in &r.state.ports {
            writeln!(out, "{}", b.port_line())?;
        }
        return Ok(0);
    };
    let (num, proto) = which.split_once('/').unwrap_or((which, "tcp"));
    let num: u16 = num
        .parse()
        .with_context(|| format!("{which:?} is not a port"))?;
    let found: Vec<_> = r
        .state
        .ports
        .iter()
        .filter(|b| b.box_port == num && b.proto.to_string() == proto.to_ascii_lowercase())
        .collect();
    if found.is_empty() {
        bail!("no public port '{num}/{proto}' published for {}", r.name);
    }
    for b in found {
        let line = b.port_line();
        writeln!(out, "{}", line.split(" -> ").nth(1).unwrap_or(&line))?;
    }
    Ok(0)
}

pub fn ps(store: &Store, args: &PsArgs) -> Result<u8> {
    let all = boxes(store)?.list()?;
    let shown: Vec<&Record> = all
        .iter()
        .rev()
        .filter(|r| args.all || r.state.status == Status::Running)
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for r in shown {
            writeln!(out, "{}", r.short_id())?;
        }
        return Ok(0);
    }
    match args.format.as_deref() {
        Some("json") | Some("{{json .}}") => {
            for r in shown {
                let v = serde_json::json!({
                    "ID": r.short_id(), "Names": r.name, "Image": r.workload.image,
                    "Isolation": r.isolation(), "Command": r.command(),
                    "CreatedAt": r.created, "State": r.state.status,
                    "Status": r.status_text(), "ExitCode": r.state.exit_code,
                    "Ports": ports_of(r),
                });
                writeln!(out, "{v}")?;
            }
            return Ok(0);
        }
        Some(f) => bail!("--format {f:?}: only json is known"),
        None => {}
    }
    let rows: Vec<[String; 8]> = shown
        .iter()
        .map(|r| {
            [
                r.short_id().to_string(),
                r.name.clone(),
                r.workload.image.clone(),
                r.isolation().to_string(),
                r.command(),
                r.created_ago(),
                r.status_text(),
                ports_of(r),
            ]
        })
        .collect();
    let head = [
        "BOX ID",
        "NAME",
        "IMAGE",
        "ISOLATION",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
    ];
    let mut width: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = width[i]));
            }
        }
        s
    };
    writeln!(out, "{}", line(&head))?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(|s| s.as_str()).collect();
        writeln!(out, "{}", line(&cells))?;
    }
    Ok(0)
}

fn print_entries(entries: &[log::Entry], timestamps: bool) -> Result<()> {
    let mut o = std::io::stdout().lock();
    let mut e = std::io::stderr().lock();
    for en in entries {
        let w: &mut dyn Write = match en.stream {
            log::Stream::Stdout => &mut o,
            log::Stream::Stderr => &mut e,
        };
        if timestamps {
            let t = std::time::UNIX_EPOCH + Duration::from_nanos(en.time_ns);
            write!(w, "{} ", humantime::format_rfc3339_nanos(t))?;
        }
        w.write_all(&en.data)?;
    }
    o.flush()?;
    Ok(())
}

/// `twinbox logs`
pub fn logs(store: &Store, args: &LogsArgs) -> Result<u8> {
    let b = boxes(store)?;
    let rec = b.resolve(&args.name)?;
    let dir = b.dir(&rec.id);
    let mut all = log::read_all(&dir)?;
    if let Some(n) = args.tail {
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
    }
    print_entries(&all, args.timestamps)?;
    if !args.follow {
        return Ok(0);
    }
    // Follow `log` from its end; a rotation shows as a new inode, whose
    // predecessor (now `log.1`) is read to its end first.
    let ino = |p: &std::path::Path| {
        std::fs::metadata(p).map_or(0, |m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let path = dir.join("log");
    let mut cur = ino(&path);
    let mut offset = std::fs::metadata(&path).map_or(0, |m| m.len());
    loop {
        let running = b
            .load(&rec.id)
            .map(|r| matches!(r.state.status, Status::Running | Status::Starting))
            .unwrap_or(false);
        let now_ino = ino(&path);
        if now_ino != cur {
            let (v, _) = log::read_from(&dir.join("log.1"), offset)?;
            print_entries(&v, args.timestamps)?;
            cur = now_ino;
            offset = 0;
        }
        let (v, off) = log::read_from(&path, offset)?;
        offset = off;
        print_entries(&v, args.timestamps)?;
        if !running {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn running(b: &Boxes, name: &str) -> Result<Record> {
    let rec = b.resolve(name)?;
    if rec.state.status != Status::Running {
        bail!("box {name} is not running ({})", rec.status_text());
    }
    Ok(rec)
}

/// `twinbox exec`: the process's exit code.
pub fn exec(store: &Store, args: &ExecArgs) -> Result<u8> {
    let b = boxes(store)?;
    let rec = running(&b, &args.name)?;
    for e in &args.env {
        if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) || e.contains('\0') {
            bail!("--env {e:?}: want KEY=VALUE");
        }
    }
    let mut s = control::connect(&b.dir(&rec.id))?;
    let req = Request::Exec(ExecRequest {
        argv: args.command.clone(),
        env: args.env.clone(),
        cwd: args.workdir.clone(),
        user: args.user.clone(),
        tty: args.tty,
        interactive: args.interactive,
        detach: args.detach,
    });
    let raw = if args.tty && args.interactive {
        terminal::RawMode::enter(0)
    } else {
        None
    };
    control::send(&s, &req, &[0, 1, 2])?;
    let mut pending = Vec::new();
    match control::read_reply(&mut s, &mut pending)? {
        Some(Reply::Started { .. }) => {}
        Some(Reply::Error { message, code }) => {
            drop(raw);
            eprintln!("twinbox: {message}");
            return Ok(code.clamp(0, 255) as u8);
        }
        other => bail!("exec: unexpected answer {other:?}"),
    }
    if args.detach {
        return Ok(0);
    }
    // Window changes go to the exec's terminal, on this connection.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGWINCH);
    mask.thread_block()?;
    let sigfd = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )?;
    loop {
        // A reply may already be read (it came with the last one).
        let buffered = pending.contains(&b'\n');
        let mut fds = [
            libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        if !buffered {
            // SAFETY: polls pollfds we own.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        }
        if let Ok(Some(_)) = sigfd.read_signal() {
            if let Some((rows, cols)) = terminal::winsize(0) {
                let _ = control::send(&s, &Request::Resize { rows, cols }, &[]);
            }
        }
        if fds[0].revents == 0 && !buffered {
            continue;
        }
        match control::read_reply(&mut s, &mut pending)? {
            Some(Reply::Exit { code }) => return Ok(code.clamp(0, 255) as u8),
            Some(Reply::Ok) | Some(Reply::Error { .. }) | Some(Reply::Started { .. }) => {}
            None => bail!("the box ended before the process reported its exit"),
        }
    }
}

/// A signal by name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("signal {n} is out of range");
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map(|s| s as i32)
        .map_err(|_| anyhow::anyhow!("unknown signal {s:?}"))
}

fn send_kill(b: &Boxes, rec: &Record, signal: i32) -> Result<()> {
    let mut s = control::connect(&b.dir(&rec.id))?;
    control::send(&s, &Request::Kill { signal }, &[])?;
    match control::read_reply(&mut s, &mut Vec::new())? {
        Some(Reply::Ok) => Ok(()),
        Some(Reply::Error { message, .. }) => bail!("{message}"),
        other => bail!("kill: unexpected answer {other:?}"),
    }
}

/// Waits up to `limit` for box `id` to leave the running state.
fn wait_stopped(b: &Boxes, id: &str, limit: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        let done = b
            .load(id)
            .map(|r| !matches!(r.state.status, Status::Running | Status::Starting))
            .unwrap_or(true);
        if done {
            return true;
        }
        if t0.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `twinbox kill`
pub fn kill(store: &Store, signal: &str, names: &[String]) -> Result<u8> {
    let sig = parse_signal(signal)?;
    let b = boxes(store)?;
    let mut code = 0;
    for n in names {
        let r = running(&b, n).and_then(|rec| send_kill(&b, &rec, sig));
        match r {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("twinbox: {n}: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

fn stop_one(b: &Boxes, rec: &Record, grace: Duration) -> Result<()> {
    let term = send_kill(b, rec, libc::SIGTERM);
    if term.is_ok() && wait_stopped(b, &rec.id, grace) {
        return Ok(());
    }
    if let Err(e) = &term {
        if rec.workload.isolation == Isolation::Vm {
            eprintln!("twinbox: {}: {e:#}; killing it", rec.name);
        }
    }
    match send_kill(b, rec, libc::SIGKILL) {
        Ok(()) => {}
        Err(_) if wait_stopped(b, &rec.id, Duration::ZERO) => return Ok(()),
        Err(e) => return Err(e),
    }
    if !wait_stopped(b, &rec.id, Duration::from_secs(10)) {
        bail!("the box did not stop after SIGKILL");
    }
    Ok(())
}

/// `twinbox stop`
pub fn stop(store: &Store, secs: u64, names: &[String]) -> Result<u8> {
    let b = boxes(store)?;
    let mut code = 0;
    for n in names {
        let r = b.resolve(n).and_then(|rec| b.load(&rec.id));
        match r {
            Ok(rec) if rec.state.status != Status::Running => println!("{n}"),
            Ok(rec) => match stop_one(&b, &rec, Duration::from_secs(secs)) {
                Ok(()) => println!("{n}"),
                Err(e) => {
                    eprintln!("twinbox: {n}: {e:#}");
                    code = 1;
                }
            },
            Err(e) => {
                eprintln!("twinbox: {e}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// Removes what a box's dead supervisor left on the host: its cgroups.
fn cleanup_leftovers(rec: &Record) {
    if !rec.state.cgroups.is_empty() {
        let _ = twinbox_container::cgroups::remove_leftover(&rec.state.cgroups);
    }
}

/// `twinbox rm`
pub fn rm(store: &Store, force: bool, names: &[String]) -> Result<u8> {
    let b = boxes(store)?;
    let mut code = 0;
    for n in names {
        let r = (|| -> Result<()> {
            let rec = b.resolve(n)?;
            let _lock = b.lock(&rec.id)?;
            let rec = b.load(&rec.id)?;
            if matches!(rec.state.status, Status::Running | Status::Starting) {
                if !force {
                    bail!("box {n} is running: stop it first, or use rm -f");
                }
                // A box already on its way out refuses the kill; either
                // way it must be gone soon.
                let _ = send_kill(&b, &rec, libc::SIGKILL);
                if !wait_stopped(&b, &rec.id, Duration::from_secs(10)) {
                    bail!("box {n} did not stop after SIGKILL");
                }
            }
            let rec = b.load(&rec.id).unwrap_or(rec);
            cleanup_leftovers(&rec);
            b.remove(&rec.id)?;
            Ok(())
        })();
        match r {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("twinbox: {e:#}");
                code = 1;
            }
        }
    }
    Ok(code)
}

/// `twinbox wait`
pub fn wait(store: &Store, names: &[String]) -> Result<u8> {
    let b = boxes(store)?;
    for n in names {
        let rec = b.resolve(n)?;
        if rec.state.status == Status::Running {
            // A supervisor that ends while we ask (the box just exited)
            // may reset the socket: then its record tells the exit.
            if let Ok(mut s) = control::connect(&b.dir(&rec.id)) {
                if control::send(&s, &Request::Wait, &[]).is_ok() {
                    if let Ok(Some(Reply::Exit { code })) =
                        control::read_reply(&mut s, &mut Vec::new())
                    {
                        println!("{code}");
                        continue;
                    }
                }
            }
            wait_stopped(&b, &rec.id, Duration::from_secs(5));
        }
        let rec = b.load(&rec.id).context("the box was removed")?;
        match rec.state.exit_code {
            Some(c) => println!("{c}"),
            None => bail!("box {n} has not run"),
        }
    }
    Ok(0)
}

/// `twinbox inspect`: a JSON array, as Docker prints it.
pub fn inspect(store: &Store, names: &[String]) -> Result<u8> {
    let b = boxes(store)?;
    let mut v = Vec::new();
    let mut code = 0;
    for n in names {
        match b.resolve(n) {
            Ok(r) => v.push(crate::volumes::inspect_value(store.home(), &r)?),
            Err(e) => {
                eprintln!("twinbox: {e}");
                code = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(code)
}
