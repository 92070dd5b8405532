//! A living box's supervisor: the one process that owns the box (the
//! container's launcher, or the VM's monitor), keeps its log and its exit
//! status, and answers commands on the box's control socket
//! ([`crate::boxes::control`]).
//!
//! `twinbox run -d`, `start` and a named or `-t` `run` spawn it as
//! `twinbox supervise ID` in a session of its own, so a closed terminal
//! or a killed command leaves the box running. It writes one line to the
//! ready descriptor the spawner passes (`ok`, or `err CODE MESSAGE`) once
//! the box's command runs or could not start.
//!
//! It is one thread with one `poll` loop (a VM's vCPUs and VMM thread are
//! the monitor's own): the box's output (pipes, or the PTY master with
//! `-t`) goes to the capped log and to an attached caller's descriptors;
//! requests come from the socket; the box's end comes as its pidfd
//! becoming readable (container) or the VM thread's word on a pipe.
//!
//! When it dies, its box dies with it: the container's first process and
//! every exec have it as parent with a parent-death SIGKILL (their PID
//! namespace goes with the first), and a VM's vCPUs are its threads. The
//! record then says running with a dead supervisor, which the store shows
//! as exited, and `rm` removes the cgroups it left.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::backends::container::ContainerBackend;
use crate::backends::vm::VmBackend;
use crate::boxes::control::{self, ExecRequest, Reply, Request};
use crate::boxes::log::{self, Stream};
use crate::boxes::record::{now, Record, Status};
use crate::boxes::store::{self, Boxes};
use crate::cli::Isolation;
use crate::terminal;

pub mod guest;
pub mod ports;
pub mod udp;

/// How long the box's output is drained after its first process ended.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Most clients connected at once.
const MAX_CLIENTS: usize = 256;

/// Most execs running at once.
const MAX_EXECS: usize = 64;

/// Longest wait for a VM's guest agent: a boot (and a snapshot made on
/// the way) under an emulating hypervisor takes tens of seconds.
const AGENT_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// A connected command.
struct Client {
    s: UnixStream,
    buf: Vec<u8>,
    /// Wants the box's exit code.
    waiting: bool,
    /// The exec it started and waits for.
    exec: Option<i32>,
}

/// A box output being copied: to the log and, when attached, on.
struct Output {
    fd: OwnedFd,
    stream: Stream,
    /// The attached caller's descriptor (the supervisor's own 1 or 2).
    forward: Option<RawFd>,
}

/// A running exec.
struct Exec {
    pidfd: OwnedFd,
    client: Option<u64>,
    /// With a terminal: the PTY master and the caller's descriptors.
    tty: Option<TtyRelay>,
}

struct TtyRelay {
    master: OwnedFd,
    input: Option<OwnedFd>,
    output: OwnedFd,
}

enum Box_ {
    Container {
        running: Option<twinbox_container::run::Running>,
        deadline: Option<Instant>,
    },
    Vm {
        done: std::sync::mpsc::Receiver<Result<i32>>,
        wake: OwnedFd,
        /// The guest agent's control connection, while it answers.
        agent: Option<guest::Agent>,
        /// Running execs' handles, by the client that started them.
        execs: HashMap<u64, guest::ExecHandle>,
        /// With `-i`/`-t`: the workload, run through the agent (init's
        /// first process only holds the box), and where its replies come.
        main: Option<(guest::ExecHandle, UnixStream)>,
        /// Its exit code, once it ended: the box's.
        main_code: Option<i32>,
    },
}

/// A VM exec's handle goes with the client that started it: the handle
/// holds a clone of the exec's agent connection, which would otherwise
/// stay open (two descriptors here, one in the guest) after every exec,
/// and a detached one's for as long as the box lives. The exec's own
/// thread keeps its connection while the process runs.
fn forget_vm_exec(b: &mut Box_, client: u64) {
    if let Box_::Vm { execs, .. } = b {
        execs.remove(&client);
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

fn dev_null() -> Result<OwnedFd> {
    Ok(std::fs::File::open("/dev/null")?.into())
}

fn dup(fd: RawFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC takes integers and returns a new descriptor.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if n < 0 {
        return Err(std::io::Error::last_os_error()).context("dup");
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Tells the spawner how the start went, once.
struct Ready(Option<std::fs::File>);

impl Ready {
    fn say(&mut self, line: &str) {
        if let Some(mut f) = self.0.take() {
            let _ = std::io::Write::write_all(&mut f, format!("{line}\n").as_bytes());
        }
    }
}

/// Runs the supervisor of box `id` to the box's end.
pub fn run(home: &Path, id: &str, ready_fd: Option<RawFd>) -> Result<u8> {
    // SAFETY: the spawner passed this descriptor for us alone.
    let mut ready = Ready(ready_fd.map(|fd| unsafe { std::fs::File::from_raw_fd(fd) }));
    match supervise(home, id, &mut ready) {
        Ok(code) => Ok(code),
        Err(e) => {
            ready.say(&format!("err 125 {e:#}"));
            Err(e)
        }
    }
}

fn supervise(home: &Path, id: &str, ready: &mut Ready) -> Result<u8> {
    let boxes = Boxes::open(home)?;
    let dir = boxes.dir(id);
    let mut rec = boxes.load_raw(id)?;
    let mut log = log::Writer::open(&dir, rec.options.log_max)?;

    // A closed caller must not kill the supervisor with SIGPIPE. (The box
    // gets the default disposition back before its execve.)
    // SAFETY: ignoring SIGPIPE takes no pointers.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // A stop signal to the supervisor ends the box (cleanly). It is taken
    // from a signalfd, blocked: after a container's first process started
    // (which must not inherit the block), before a VM's threads start
    // (which must).
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }

    let dirfd = control::open_dir(&dir)?;
    let sock = control::socket_path(&dir);
    let _ = std::fs::remove_file(&sock);
    // SAFETY: umask takes an integer; the socket is made 0600.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(control::short_path(&sock, dirfd.as_raw_fd()));
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener.with_context(|| format!("binding {}", sock.display()))?;
    listener.set_nonblocking(true)?;

    // Published ports are bound before anything runs: one taken is the
    // start's error.
    let listeners = match ports::bind(&rec.options.publish) {
        Ok(l) => l,
        Err(e) => {
            failed_start(&boxes, &mut rec, ready, 125, &e.to_string())?;
            drop(listener);
            let _ = std::fs::remove_file(&sock);
            return Ok(125);
        }
    };
    // The VM's vsock socket, by a short path (sockaddr_un holds 108
    // bytes; the box's directory may be deep).
    let uds = std::path::PathBuf::from(format!("/proc/self/fd/{}/vsock.sock", dirfd.as_raw_fd()));

    // Spawned for a foreground run, it keeps the caller's stdio.
    let attached = !is_dev_null(1);
    let mut outputs: Vec<Output> = Vec::new();
    let mut main_tty: Option<TtyRelay> = None;
    let w = rec.workload.clone();
    let started = Instant::now();
    let mut the_box = match w.isolation {
        Isolation::Container => {
            let backend = ContainerBackend {
                scratch: home.join("run"),
                user_namespace: rec.options.userns,
                binds: crate::volumes::binds(home, &rec.options.volumes)?,
            };
            std::fs::create_dir_all(&backend.scratch)?;
            let mut cfg = backend.config(&w);
            cfg.timeout = None;
            let null = dev_null()?;
            let mut keep: Vec<OwnedFd> = Vec::new();
            let mut relay = None;
            if rec.options.tty {
                cfg.stdio = twinbox_container::Stdio {
                    pty: Some(terminal::winsize(1).unwrap_or((0, 0))),
                    ..Default::default()
                };
                let out = dup(1)?;
                let input = if rec.options.interactive && attached {
                    Some(dup(0)?)
                } else {
                    None
                };
                relay = Some((input, out));
            } else {
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                cfg.stdio = twinbox_container::Stdio {
                    stdin: Some(if rec.options.interactive {
                        0
                    } else {
                        null.as_raw_fd()
                    }),
                    stdout: Some(out_w.as_raw_fd()),
                    stderr: Some(err_w.as_raw_fd()),
                    tty: false,
                    pty: None,
                };
                keep.push(out_w);
                keep.push(err_w);
                outputs.push(Output {
                    fd: out_r,
                    stream: Stream::Stdout,
                    forward: attached.then_some(1),
                });
                outputs.push(Output {
                    fd: err_r,
                    stream: Stream::Stderr,
                    forward: attached.then_some(2),
                });
            }
            let started_box = twinbox_container::run::start(&cfg);
            mask.thread_block()?;
            let mut running = match started_box {
                Ok(r) => r,
                Err(e) => {
                    let code = e.exit_code();
                    failed_start(&boxes, &mut rec, ready, code, &e.to_string())?;
                    drop(listener);
                    let _ = std::fs::remove_file(&sock);
                    return Ok(code as u8);
                }
            };
            drop(keep);
            drop(null);
            if let (Some((input, output)), Some(master)) = (relay, running.take_pty()) {
                main_tty = Some(TtyRelay {
                    master,
                    input,
                    output,
                });
            }
            rec.state.pid = Some(running.pid());
            rec.state.cgroups = running.cgroup_dirs();
            Box_::Container {
                running: Some(running),
                deadline: w.limits.timeout.map(|t| started + t),
            }
        }
        Isolation::Vm => {
            mask.thread_block()?;
            let (r, wr) = pipe()?;
            outputs.push(Output {
                fd: r,
                stream: Stream::Stdout,
                forward: attached.then_some(1),
            });
            let (wake_r, wake_w) = pipe()?;
            let (tx, rx) = std::sync::mpsc::channel();
            let backend = VmBackend {
                debug: false,
                cold: rec.options.cold,
                profile: None,
                console: Some(std::sync::Arc::new(std::fs::File::from(wr))),
                vsock: Some(uds.clone()),
                hold: rec.options.tty || rec.options.interactive,
                volumes: crate::volumes::for_vm(home, &rec.options.volumes)?,
                // The file servers' sockets in the box's directory, by
                // the same short path as the vsock socket.
                fs_dir: Some(std::path::PathBuf::from(format!(
                    "/proc/self/fd/{}",
                    dirfd.as_raw_fd()
                ))),
            };
            let mut wl = w.clone();
            wl.image_command = rec.image_command.clone();
            let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ended2 = ended.clone();
            std::thread::Builder::new()
                .name("vm".into())
                .spawn(move || {
                    let r = crate::backends::Backend::run(&backend, &wl);
                    drop(backend);
                    ended2.store(true, std::sync::atomic::Ordering::SeqCst);
                    let _ = tx.send(r);
                    let _ = nix::unistd::write(&wake_w, b"x");
                })?;
            // Running means the workload started: the agent says so.
            let agent = guest::connect(&uds, AGENT_WAIT, || {
                ended.load(std::sync::atomic::Ordering::SeqCst)
            });
            let agent = match agent {
                Ok(a) => a,
                Err(e) => {
                    // A workload that ended before the agent answered ran
                    // and exited (`run -d busybox true`); anything else is
                    // a start that failed.
                    let (code, why) = match rx.recv_timeout(std::time::Duration::from_secs(5)) {
                        Ok(Ok(code)) => (code, None),
                        Ok(Err(vm)) => (125, Some(format!("{vm:#}"))),
                        Err(_) => (125, Some(format!("{e:#}"))),
                    };
                    // Whatever the console said is the box's log.
                    let mut buf = [0u8; 4096];
                    for o in &outputs {
                        let _ = terminal::set_nonblocking(&o.fd);
                        while let Ok(n) = terminal::read_some(o.fd.as_raw_fd(), &mut buf) {
                            if n == 0 {
                                break;
                            }
                            let _ = log.write(o.stream, &buf[..n]);
                        }
                    }
                    let _ = log.flush_partial();
                    let now_ = now();
                    rec.state.status = Status::Exited;
                    rec.state.exit_code = Some(code);
                    rec.state.error = why.clone();
                    rec.state.started_at.get_or_insert(now_.clone());
                    rec.state.finished_at = Some(now_);
                    boxes.save(&rec)?;
                    match why {
                        Some(why) => ready.say(&format!("err {code} {why}")),
                        None => ready.say("ok"),
                    }
                    if rec.options.auto_remove {
                        boxes.remove(id)?;
                    }
                    std::process::exit(code & 0xff);
                }
            };
            rec.state.pid = Some(std::process::id() as i32);
            rec.state.guest_pid = Some(agent.main_pid);
            let mut agent = agent;
            let main = if rec.options.tty || rec.options.interactive {
                Some(start_main(&mut agent, &rec, attached, &mut outputs)?)
            } else {
                None
            };
            Box_::Vm {
                done: rx,
                wake: wake_r,
                agent: Some(agent),
                execs: HashMap::new(),
                main,
                main_code: None,
            }
        }
    };
    let sigfd = nix::sys::signalfd::SignalFd::with_flags(
        &mask,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )?;
    for o in &outputs {
        terminal::set_nonblocking(&o.fd)?;
    }
    if let Some(t) = &main_tty {
        terminal::set_nonblocking(&t.master)?;
    }
    // The ports are served once the box runs. A container whose first
    // process has already ended has no network namespace left to enter
    // (a zombie's /proc/PID/ns are gone): nothing to serve, and no error,
    // since the box is over anyway (a quick `sh -c 'exit 5'` used to fail
    // its supervisor here).
    rec.state.ports = listeners.bindings();
    let _port_server = if listeners.is_empty() {
        None
    } else {
        let target = match &the_box {
            Box_::Container { running, .. } => running
                .as_ref()
                .and_then(|r| std::fs::File::open(format!("/proc/{}/ns/net", r.pid())).ok())
                .map(|ns| ports::Target::Netns(std::sync::Arc::new(ns.into()))),
            Box_::Vm { .. } => Some(ports::Target::Vm(uds.clone())),
        };
        match target {
            Some(t) => Some(ports::serve(listeners, t)?),
            None => None,
        }
    };
    let me = std::process::id() as i32;
    rec.state.status = Status::Running;
    rec.state.supervisor = Some(me);
    rec.state.supervisor_start = store::start_time(me);
    rec.state.started_at = Some(now());
    boxes.save(&rec)?;
    ready.say("ok");

    let mut sup = Sup {
        clients: HashMap::new(),
        next_client: 0,
        execs: HashMap::new(),
        exit: None,
        ended_at: None,
        error: None,
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let pfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        fds.push(pfd(listener.as_raw_fd()));
        fds.push(pfd(sigfd.as_raw_fd()));
        let (box_fd, agent_fd) = match &the_box {
            Box_::Container { running, .. } => (running.as_ref().and_then(|r| r.pidfd()), None),
            Box_::Vm { wake, agent, .. } => {
                (Some(wake.as_raw_fd()), agent.as_ref().map(|a| a.fd()))
            }
        };
        fds.push(pfd(if sup.exit.is_none() {
            box_fd.unwrap_or(-1)
        } else {
            -1
        }));
        fds.push(pfd(agent_fd.unwrap_or(-1)));
        let main_fd = match &the_box {
            Box_::Vm {
                main: Some((_, rx)),
                main_code: None,
                ..
            } => rx.as_raw_fd(),
            _ => -1,
        };
        fds.push(pfd(main_fd));
        let base = fds.len();
        for o in &outputs {
            fds.push(pfd(o.fd.as_raw_fd()));
        }
        let tty_at = fds.len();
        if let Some(t) = &main_tty {
            fds.push(pfd(t.master.as_raw_fd()));
            fds.push(pfd(t.input.as_ref().map_or(-1, |f| f.as_raw_fd())));
        }
        let clients_at = fds.len();
        let client_ids: Vec<u64> = sup.clients.keys().copied().collect();
        for c in &client_ids {
            fds.push(pfd(sup.clients[c].s.as_raw_fd()));
        }
        let execs_at = fds.len();
        let exec_ids: Vec<i32> = sup.execs.keys().copied().collect();
        for e in &exec_ids {
            let x = &sup.execs[e];
            fds.push(pfd(x.pidfd.as_raw_fd()));
            match &x.tty {
                Some(t) => {
                    fds.push(pfd(t.master.as_raw_fd()));
                    fds.push(pfd(t.input.as_ref().map_or(-1, |f| f.as_raw_fd())));
                }
                None => {
                    fds.push(pfd(-1));
                    fds.push(pfd(-1));
                }
            }
        }
        let mut timeout: i32 = -1;
        if let Box_::Container {
            deadline: Some(d), ..
        } = &the_box
        {
            timeout = d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(60_000) as i32;
        }
        if let Some(t) = sup.ended_at {
            let left = DRAIN.saturating_sub(t.elapsed()).as_millis() as i32;
            timeout = if timeout < 0 { left } else { timeout.min(left) };
        }
        // SAFETY: polls pollfds we own for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if r < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(std::io::Error::last_os_error()).context("poll");
        }
        let ready_ = |i: usize| fds[i].revents != 0;
        if ready_(3) {
            if let Box_::Vm { agent, .. } = &mut the_box {
                if agent.as_mut().is_some_and(|a| !a.drain()) {
                    *agent = None;
                }
            }
        }
        if ready_(4) {
            if let Box_::Vm {
                agent,
                main: Some((_, rx)),
                main_code,
                ..
            } = &mut the_box
            {
                let mut pending = Vec::new();
                let code = match control::read_reply(rx, &mut pending) {
                    Ok(Some(Reply::Started { .. })) => None,
                    Ok(Some(Reply::Exit { code })) => Some(code),
                    Ok(Some(Reply::Error { message, code })) => {
                        sup.error = Some(message);
                        Some(code)
                    }
                    _ => Some(125),
                };
                if let Some(code) = code {
                    // The workload ended: so does the box (its holder).
                    *main_code = Some(code);
                    if let Some(a) = agent.as_mut() {
                        let _ = a.signal(libc::SIGKILL);
                    }
                }
            }
        }

        // The box's output first, so a last line is logged before the end.
        let mut closed = Vec::new();
        for (i, o) in outputs.iter_mut().enumerate() {
            if !ready_(base + i) {
                continue;
            }
            match terminal::read_some(o.fd.as_raw_fd(), &mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    let _ = log.write(o.stream, &buf[..n]);
                    if let Some(f) = o.forward {
                        if terminal::write_all(f, &buf[..n]).is_err() {
                            o.forward = None;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            outputs.remove(i);
        }
        if main_tty.is_some() {
            let mut end = false;
            if let Some(t) = &mut main_tty {
                if ready_(tty_at) {
                    match terminal::read_some(t.master.as_raw_fd(), &mut buf) {
                        Ok(0) => end = true,
                        Ok(n) => {
                            let _ = log.write(Stream::Stdout, &buf[..n]);
                            let _ = terminal::write_all(t.output.as_raw_fd(), &buf[..n]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => end = true,
                    }
                }
                if ready_(tty_at + 1) {
                    if let Some(inp) = &t.input {
                        match terminal::read_some(inp.as_raw_fd(), &mut buf) {
                            Ok(0) | Err(_) => t.input = None,
                            Ok(n) => {
                                let _ = terminal::write_all(t.master.as_raw_fd(), &buf[..n]);
                            }
                        }
                    }
                }
            }
            if end {
                main_tty = None;
            }
        }

        // Signals to the supervisor: end the box.
        if ready_(1) {
            if let Ok(Some(si)) = sigfd.read_signal() {
                sup.error = Some(format!(
                    "the supervisor got signal {}; the box was killed",
                    si.ssi_signo
                ));
                kill_box(&mut the_box, libc::SIGKILL, &mut sup);
            }
        }
        // A time limit.
        if let Box_::Container {
            deadline: Some(d),
            running: Some(r),
        } = &the_box
        {
            if Instant::now() >= *d && sup.exit.is_none() {
                sup.error = Some("killed after its --timeout".into());
                let _ = r.signal(libc::SIGKILL);
            }
        }

        // The box's end.
        if sup.exit.is_none() {
            match &mut the_box {
                Box_::Container {
                    running: Some(r), ..
                } => {
                    if let Some(exit) = r.try_wait()? {
                        sup.exit = Some(exit.code());
                        sup.ended_at = Some(Instant::now());
                    }
                }
                Box_::Container { running: None, .. } => {}
                Box_::Vm {
                    done, main_code, ..
                } => {
                    if let Ok(res) = done.try_recv() {
                        sup.exit = Some(match (res, *main_code) {
                            (_, Some(c)) => c,
                            (Ok(c), None) => c,
                            (Err(e), None) => {
                                sup.error = Some(format!("{e:#}"));
                                125
                            }
                        });
                        sup.ended_at = Some(Instant::now());
                    }
                }
            }
        }

        // Execs that ended.
        for (k, e) in exec_ids.iter().enumerate() {
            let at = execs_at + 3 * k;
            let Some(x) = sup.execs.get_mut(e) else {
                continue;
            };
            if let Some(t) = &mut x.tty {
                if ready_(at + 1) {
                    match terminal::read_some(t.master.as_raw_fd(), &mut buf) {
                        Ok(n) if n > 0 => {
                            let _ = terminal::write_all(t.output.as_raw_fd(), &buf[..n]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => {}
                    }
                }
                if ready_(at + 2) {
                    if let Some(inp) = &t.input {
                        match terminal::read_some(inp.as_raw_fd(), &mut buf) {
                            Ok(0) | Err(_) => t.input = None,
                            Ok(n) => {
                                let _ = terminal::write_all(t.master.as_raw_fd(), &buf[..n]);
                            }
                        }
                    }
                }
            }
            if ready_(at) {
                let mut status = 0;
                // SAFETY: reaps our own child into a local.
                let r = unsafe { libc::waitpid(*e, &mut status, libc::WNOHANG) };
                if r == *e {
                    let code = if libc::WIFSIGNALED(status) {
                        128 + libc::WTERMSIG(status)
                    } else {
                        libc::WEXITSTATUS(status)
                    };
                    if let Some(mut x) = sup.execs.remove(e) {
                        if let Some(t) = &x.tty {
                            drain_pty(t, &mut buf);
                        }
                        x.tty = None;
                        if let Some(c) = x.client.and_then(|c| sup.clients.get(&c)) {
                            let _ = control::send(&c.s, &Reply::Exit { code }, &[]);
                        }
                    }
                }
            }
        }

        // New commands.
        if ready_(0) {
            while let Ok((s, _)) = listener.accept() {
                if sup.clients.len() >= MAX_CLIENTS {
                    continue;
                }
                let _ = s.set_nonblocking(true);
                sup.next_client += 1;
                sup.clients.insert(
                    sup.next_client,
                    Client {
                        s,
                        buf: Vec::new(),
                        waiting: false,
                        exec: None,
                    },
                );
            }
        }
        for (k, cid) in client_ids.iter().enumerate() {
            if !ready_(clients_at + k) {
                continue;
            }
            let Some(c) = sup.clients.get_mut(cid) else {
                continue;
            };
            let (n, passed) = match control::recv(c.s.as_raw_fd(), &mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => (0, Vec::new()),
            };
            if n == 0 {
                sup.clients.remove(cid);
                forget_vm_exec(&mut the_box, *cid);
                continue;
            }
            c.buf.extend_from_slice(&buf[..n]);
            let lines = match control::take_lines(&mut c.buf) {
                Ok(l) => l,
                Err(_) => {
                    sup.clients.remove(cid);
                    forget_vm_exec(&mut the_box, *cid);
                    continue;
                }
            };
            let mut passed = Some(passed);
            for line in lines {
                let req: Request = match serde_json::from_slice(&line) {
                    Ok(r) => r,
                    Err(e) => {
                        reply(&sup, *cid, &error(125, format!("bad request: {e}")));
                        continue;
                    }
                };
                handle(
                    &mut sup,
                    *cid,
                    req,
                    passed.take().unwrap_or_default(),
                    &mut the_box,
                    &rec,
                    &mut main_tty,
                );
            }
        }

        // Done when the first process ended and its output is drained.
        if let Some(code) = sup.exit {
            let drained = outputs.is_empty() && main_tty.is_none();
            let late = sup.ended_at.is_some_and(|t| t.elapsed() >= DRAIN);
            if drained || late {
                for o in &outputs {
                    while let Ok(n) = terminal::read_some(o.fd.as_raw_fd(), &mut buf) {
                        if n == 0 {
                            break;
                        }
                        let _ = log.write(o.stream, &buf[..n]);
                    }
                }
                let _ = log.flush_partial();
                return finish(&boxes, rec, the_box, sup, code, &listener, &sock);
            }
        }
    }
}

/// Starts a `-i`/`-t` VM box's workload through its agent: stdin the
/// caller's (attached, `-i`), stdout and stderr pipes read like any box
/// output (to the log and the caller), the terminal sized as the
/// caller's. Returns its handle and where its replies come.
fn start_main(
    agent: &mut guest::Agent,
    rec: &Record,
    attached: bool,
    outputs: &mut Vec<Output>,
) -> Result<(guest::ExecHandle, UnixStream)> {
    let w = &rec.workload;
    let stdin = if rec.options.interactive && attached {
        dup(0)?
    } else {
        dev_null()?
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    outputs.push(Output {
        fd: out_r,
        stream: Stream::Stdout,
        forward: attached.then_some(1),
    });
    outputs.push(Output {
        fd: err_r,
        stream: Stream::Stderr,
        forward: attached.then_some(2),
    });
    let (tx, rx) = UnixStream::pair()?;
    let x = ExecRequest {
        argv: w.argv.clone(),
        env: Vec::new(),
        cwd: None,
        user: None,
        tty: rec.options.tty,
        interactive: rec.options.interactive,
        detach: false,
    };
    let size = terminal::winsize(1);
    let h = agent
        .exec(
            &x,
            w.env.clone(),
            w.cwd.clone(),
            w.user.clone(),
            vec![stdin, out_w, err_w],
            tx,
            size,
        )
        .map_err(|r| anyhow::anyhow!("starting the workload through the guest agent: {r:?}"))?;
    Ok((h, rx))
}

fn is_dev_null(fd: RawFd) -> bool {
    let (Ok(a), Ok(b)) = (
        nix::sys::stat::fstat(unsafe_borrow(fd)),
        nix::sys::stat::stat("/dev/null"),
    ) else {
        return false;
    };
    a.st_rdev == b.st_rdev && (a.st_mode & libc::S_IFMT) == libc::S_IFCHR
}

fn unsafe_borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: fds 0-2 stay open for the process's life.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

fn drain_pty(t: &TtyRelay, buf: &mut [u8]) {
    while let Ok(n) = terminal::read_some(t.master.as_raw_fd(), buf) {
        if n == 0 {
            break;
        }
        let _ = terminal::write_all(t.output.as_raw_fd(), &buf[..n]);
    }
}

struct Sup {
    clients: HashMap<u64, Client>,
    next_client: u64,
    execs: HashMap<i32, Exec>,
    exit: Option<i32>,
    ended_at: Option<Instant>,
    error: Option<String>,
}

fn error(code: i32, message: String) -> Reply {
    Reply::Error { message, code }
}

fn reply(sup: &Sup, cid: u64, r: &Reply) {
    if let Some(c) = sup.clients.get(&cid) {
        let _ = control::send(&c.s, r, &[]);
    }
}

fn kill_box(b: &mut Box_, sig: i32, sup: &mut Sup) -> Reply {
    match b {
        Box_::Container {
            running: Some(r), ..
        } => match r.signal(sig) {
            Ok(()) => Reply::Ok,
            Err(e) => error(125, e.to_string()),
        },
        Box_::Container { running: None, .. } => error(125, "the box has ended".into()),
        Box_::Vm { .. } if sig == libc::SIGKILL => {
            // The VM is this process's threads: it ends with the
            // supervisor, which records the end first.
            sup.exit.get_or_insert(137);
            // At once: the console pipe does not close while vCPUs run.
            sup.ended_at = Some(
                Instant::now()
                    .checked_sub(DRAIN)
                    .unwrap_or_else(Instant::now),
            );
            sup.error
                .get_or_insert_with(|| "killed (SIGKILL): the VM was destroyed".into());
            Reply::Ok
        }
        // A -i/-t box's workload is an exec of the agent's.
        Box_::Vm {
            main: Some((h, _)), ..
        } => match h.signal(sig) {
            Ok(()) => Reply::Ok,
            Err(e) => error(125, format!("{e:#}")),
        },
        Box_::Vm { agent: Some(a), .. } => match a.signal(sig) {
            Ok(()) => Reply::Ok,
            Err(e) => error(125, format!("{e:#}")),
        },
        Box_::Vm { agent: None, .. } => error(
            125,
            format!("signal {sig} cannot reach the VM's workload: its guest agent is gone"),
        ),
    }
}

fn handle(
    sup: &mut Sup,
    cid: u64,
    req: Request,
    passed: Vec<OwnedFd>,
    b: &mut Box_,
    rec: &Record,
    main_tty: &mut Option<TtyRelay>,
) {
    match req {
        Request::Kill { signal } => {
            let r = if sup.exit.is_some() {
                error(125, "the box is not running".into())
            } else {
                kill_box(b, signal, sup)
            };
            reply(sup, cid, &r);
        }
        // Answered at the end, once the log is complete.
        Request::Wait => {
            if let Some(c) = sup.clients.get_mut(&cid) {
                c.waiting = true;
            }
        }
        Request::Resize { rows, cols } => {
            if let Box_::Vm { execs, main, .. } = b {
                let h = execs.get(&cid).or(main.as_ref().map(|(h, _)| h));
                let r = match h.map(|h| h.resize(rows, cols)) {
                    Some(Ok(())) => Reply::Ok,
                    Some(Err(e)) => error(125, format!("{e:#}")),
                    None => error(125, "no terminal to resize".into()),
                };
                reply(sup, cid, &r);
                return;
            }
            let exec = sup.clients.get(&cid).and_then(|c| c.exec);
            let fd = match exec.and_then(|e| sup.execs.get(&e)) {
                Some(x) => x.tty.as_ref().map(|t| t.master.as_raw_fd()),
                None => main_tty.as_ref().map(|t| t.master.as_raw_fd()),
            };
            let r = match fd.map(|fd| terminal::set_winsize(fd, rows, cols)) {
                Some(Ok(())) => Reply::Ok,
                Some(Err(e)) => error(125, e.to_string()),
                None => error(125, "no terminal to resize (run with -t)".into()),
            };
            reply(sup, cid, &r);
        }
        Request::Exec(x) => match exec(sup, cid, &x, passed, b, rec) {
            Ok(Some(pid)) => reply(sup, cid, &Reply::Started { pid }),
            Ok(None) => {}
            Err(r) => reply(sup, cid, &r),
        },
    }
}

fn exec(
    sup: &mut Sup,
    cid: u64,
    x: &ExecRequest,
    passed: Vec<OwnedFd>,
    b: &mut Box_,
    rec: &Record,
) -> std::result::Result<Option<i32>, Reply> {
    if sup.exit.is_some() {
        return Err(error(125, "the box is not running".into()));
    }
    if sup.execs.len() >= MAX_EXECS {
        return Err(error(
            125,
            format!("{MAX_EXECS} execs already run in this box"),
        ));
    }
    if passed.len() != 3 {
        return Err(error(
            125,
            "exec: stdin, stdout and stderr were not passed".into(),
        ));
    }
    // The box's environment, the exec's on top; its cwd and user unless
    // the exec names its own.
    let w = &rec.workload;
    let mut env = w.env.clone();
    env.extend(x.env.iter().cloned());
    let cwd = x.cwd.clone().unwrap_or_else(|| w.cwd.clone());
    let user = x.user.clone().unwrap_or_else(|| w.user.clone());
    let running = match b {
        Box_::Container {
            running: Some(r), ..
        } => r,
        Box_::Container { running: None, .. } => {
            return Err(error(125, "the box is not running".into()))
        }
        Box_::Vm { agent, execs, .. } => {
            let Some(a) = agent.as_mut() else {
                return Err(error(125, "the VM's guest agent is gone".into()));
            };
            let reply_to = sup
                .clients
                .get(&cid)
                .and_then(|c| c.s.try_clone().ok())
                .ok_or_else(|| error(125, "the caller is gone".into()))?;
            let h = a.exec(x, env, cwd, user, passed, reply_to, None)?;
            execs.insert(cid, h);
            return Ok(None);
        }
    };
    let null = dev_null().map_err(|e| error(125, e.to_string()))?;
    let fd = |i: usize| passed.get(i).map_or(null.as_raw_fd(), |f| f.as_raw_fd());
    let mut relay = None;
    let stdio = if x.tty {
        let mut it = passed.into_iter();
        let input = it.next().filter(|_| x.interactive);
        let output = match it.next() {
            Some(o) => o,
            None => null.try_clone().map_err(|e| error(125, e.to_string()))?,
        };
        let size = terminal::winsize(output.as_raw_fd()).unwrap_or((0, 0));
        relay = Some((input, output));
        twinbox_container::Stdio {
            pty: Some(size),
            ..Default::default()
        }
    } else {
        twinbox_container::Stdio {
            stdin: Some(if x.interactive {
                fd(0)
            } else {
                null.as_raw_fd()
            }),
            stdout: Some(fd(1)),
            stderr: Some(fd(2)),
            tty: false,
            pty: None,
        }
    };
    let cfg = twinbox_container::exec::ExecConfig {
        argv: x.argv.clone(),
        env,
        cwd,
        user,
        stdio,
    };
    let p = twinbox_container::exec::exec(running, &cfg)
        .map_err(|e| error(e.exit_code(), e.to_string()))?;
    let tty = match (relay, p.pty) {
        (Some((input, output)), Some(master)) => {
            let _ = terminal::set_nonblocking(&master);
            Some(TtyRelay {
                master,
                input,
                output,
            })
        }
        _ => None,
    };
    let pidfd = pidfd_open(p.pid).map_err(|e| error(125, format!("{e:#}")))?;
    sup.execs.insert(
        p.pid,
        Exec {
            pidfd,
            client: (!x.detach).then_some(cid),
            tty,
        },
    );
    if let Some(c) = sup.clients.get_mut(&cid) {
        c.exec = Some(p.pid);
    }
    Ok(Some(p.pid))
}

fn finish(
    boxes: &Boxes,
    mut rec: Record,
    b: Box_,
    sup: Sup,
    code: i32,
    listener: &UnixListener,
    sock: &Path,
) -> Result<u8> {
    let _ = listener;
    let _ = std::fs::remove_file(sock);
    if let Box_::Container {
        running: Some(r), ..
    } = b
    {
        let exit = if code >= 128 {
            twinbox_container::Exit::Signal(code - 128)
        } else {
            twinbox_container::Exit::Code(code)
        };
        match r.finish(exit, twinbox_container::Ending::Normal) {
            Ok(o) => rec.state.oom_killed = o.oom_kills > 0,
            Err(e) => {
                sup_error(&mut rec, &format!("cleaning up: {e}"));
            }
        }
    }
    if let Some(e) = &sup.error {
        sup_error(&mut rec, e);
    }
    rec.state.status = Status::Exited;
    rec.state.exit_code = Some(code);
    rec.state.finished_at = Some(now());
    rec.state.supervisor = None;
    rec.state.supervisor_start = None;
    rec.state.ports.clear();
    boxes.save(&rec)?;
    for c in sup.clients.values() {
        if c.waiting {
            let _ = control::send(&c.s, &Reply::Exit { code }, &[]);
        }
    }
    if rec.options.auto_remove {
        boxes.remove(&rec.id)?;
    }
    // A VM's vCPU threads may still run: end the process here.
    std::process::exit(code & 0xff)
}

/// Records a box that could not start (exited with `code`, `why` its
/// error), tells the spawner, and removes it if it was to be removed.
fn failed_start(
    boxes: &Boxes,
    rec: &mut Record,
    ready: &mut Ready,
    code: i32,
    why: &str,
) -> Result<()> {
    rec.state.status = Status::Exited;
    rec.state.exit_code = Some(code);
    rec.state.error = Some(why.to_string());
    rec.state.finished_at = Some(now());
    boxes.save(rec)?;
    ready.say(&format!("err {code} {why}"));
    if rec.options.auto_remove {
        boxes.remove(&rec.id)?;
    }
    Ok(())
}

fn sup_error(rec: &mut Record, e: &str) {
    rec.state.error = Some(match rec.state.error.take() {
        Some(old) => format!("{old}; {e}"),
        None => e.to_string(),
    });
}

/// Spawns the supervisor of box `id` in a session of its own and waits
/// for its word. `attached`: it keeps this process's stdin, stdout and
/// stderr (a foreground run); otherwise they are /dev/null and its own
/// messages go to the box's `supervisor.log`. Returns the supervisor's
/// pid, or the start's error and exit code.
pub fn spawn(
    home: &Path,
    dir: &Path,
    id: &str,
    attached: bool,
) -> Result<std::result::Result<i32, (i32, String)>> {
    use std::os::unix::process::CommandExt;
    let (r, w) = pipe()?;
    let exe = std::fs::read_link("/proc/self/exe").context("finding twinbox's own binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("supervise").arg(id).arg("--ready-fd").arg("3");
    cmd.env("TWINBOX_HOME", home);
    if !attached {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("supervisor.log"))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log);
    }
    let wfd = w.as_raw_fd();
    // SAFETY: between fork and exec the closure makes system calls only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec on fd 3, unless it is fd 3.
            let r = if wfd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(wfd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the box's supervisor")?;
    drop(w);
    let mut line = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(r), &mut line)?;
    let pid = child.id() as i32;
    // The supervisor outlives this command; it is not waited for here.
    std::mem::forget(child);
    let line = line.trim_end();
    if line == "ok" {
        return Ok(Ok(pid));
    }
    if let Some(rest) = line.strip_prefix("err ") {
        let (code, msg) = rest.split_once(' ').unwrap_or((rest, ""));
        return Ok(Err((code.parse().unwrap_or(125), msg.to_string())));
    }
    Ok(Err((
        125,
        format!(
            "the box's supervisor died before the box started{}",
            if attached {
                String::new()
            } else {
                format!(" (see {})", dir.join("supervisor.log").display())
            }
        ),
    )))
}
