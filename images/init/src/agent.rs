//! The guest agent: while the box's main workload runs, init serves the
//! host's connections on a listening socket (vsock port
//! [`twinbox_agent::PORT`] in a VM; any stream socket in the tests) with
//! the protocol of the `twinbox-agent` crate: it starts processes for
//! `Exec`, relays their stdio, delivers signals and terminal sizes, and
//! reports their exits; it signals the main workload for `Signal{0, N}`
//! and reports its end as `Exited{0, code}` to every connection, which is
//! when [`serve`] returns (init then powers off).
//!
//! One thread, one `poll` over: the listener, each connection, each
//! process's pidfd and stdio, the main workload's pidfd, and (as PID 1)
//! a signalfd for SIGCHLD that reaps every zombie. Reaping tells the three
//! apart by pid: the main workload, a process of the table (its status is
//! kept until its output is drained, then `Exited` is sent), or a stray
//! (an orphan the kernel gave to PID 1, reaped and forgotten). A process
//! is only taken out of the table once reaped, so a pid in the table is
//! never a reused one.
//!
//! Bounded: connections, processes per connection and in all, bytes
//! queued for a connection (while the queue is full, neither the output
//! of its processes nor the connection itself is read: back-pressure to
//! the processes, and to a host that sends without reading its replies),
//! and stdin queued for a process (the connection is not read while it is
//! full: back-pressure to the host). A connection has 10 s to say `Hello`.
//! So a host must read while it writes
//! (the client's `try_sender` gives a sender for another thread). An
//! ended process's output is waited for until its pipes or terminal
//! close, or until nothing came for 2 s (a background child holding them
//! open), not counting time its connection was full. A connection that sends what is not the protocol gets
//! `Failed{0, why}` and is closed; a closed connection's processes are
//! killed (their process group, SIGKILL) unless started detached.
//!
//! A connection that asks for `Forward{port}` (a published port) leaves
//! the loop: [`crate::forward`] makes it that guest TCP port's stream on a
//! thread of its own, and it counts against neither bound above; so does
//! one that asks for `ForwardUdp{port}`, made one UDP flow by
//! [`crate::forward_udp`].

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use twinbox_agent::frame::{self, Kind};
use twinbox_agent::message::MessageDecoder;
use twinbox_agent::{Exec, Message, MAIN_ID, VERSION};

use crate::spawn::{self, Stdio};

/// Most connections at once (more wait in the listen backlog).
pub const MAX_CONNECTIONS: usize = 16;
/// Most processes one connection may have running.
pub const MAX_PROCESSES_PER_CONNECTION: usize = 64;
/// Most processes in all (detached ones included).
pub const MAX_PROCESSES: usize = 128;
/// A connection's queue of outgoing bytes above which its processes'
/// output is left unread.
const OUT_HIGH: usize = 256 * 1024;
/// A process's queued stdin above which its connection is left unread.
const STDIN_HIGH: usize = 256 * 1024;
/// One read from a process's output (one frame).
const READ_CHUNK: usize = 32 * 1024;
/// How long output may still come after a process ended (a background
/// child holding the terminal or pipe open) before `Exited` is sent anyway.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long the agent tries to deliver the last `Exited{0}`.
const FINAL_FLUSH: Duration = Duration::from_secs(1);
/// How long a new connection has to say `Hello` before it is closed (it
/// holds one of the few connection slots).
const HELLO_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(10)
};
/// The code of a process whose status could not be read.
const EXIT_UNKNOWN: i32 = 125;

/// Takes a greeted connection (and what is still queued for it) over for
/// a published port: [`crate::forward::start`], [`crate::forward_udp::start`].
type Forwarder = fn(OwnedFd, Vec<u8>, u16) -> Result<(), (OwnedFd, String)>;

/// What [`serve`] serves.
pub struct Options {
    /// Reap every zombie (init, PID 1), not only the agent's own children.
    pub reap_all: bool,
}

/// The box's main workload, started by init.
struct Main {
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    code: Option<i32>,
}

struct Conn {
    fd: OwnedFd,
    decoder: MessageDecoder,
    out: VecDeque<u8>,
    greeted: bool,
    /// When it was accepted (for [`HELLO_TIMEOUT`]).
    accepted: Instant,
    /// Closing: nothing more is read; dropped once `out` is written or at once.
    dead: bool,
}

struct Proc {
    /// The connection it reports to; `None` once that is gone.
    conn: Option<u64>,
    id: u32,
    pid: libc::pid_t,
    pidfd: Option<OwnedFd>,
    tty: bool,
    detach: bool,
    /// Stdin bytes to write, and whether its end was asked for.
    stdin: Option<OwnedFd>,
    stdin_buf: VecDeque<u8>,
    stdin_eof: bool,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// Its exit code once reaped, and when.
    code: Option<(i32, Instant)>,
    /// When its output was last read (the drain grace counts from the
    /// later of this and its end).
    last_read: Instant,
}

/// What a poll slot is for.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Sigchld,
    MainPidfd,
    Conn(u64),
    Pidfd(usize),
    Stdin(usize),
    Stdout(usize),
    Stderr(usize),
}

/// The agent's state.
struct Agent {
    listener: OwnedFd,
    sigchld: Option<OwnedFd>,
    reap_all: bool,
    main: Main,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    procs: Vec<Proc>,
}

fn status_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        EXIT_UNKNOWN
    }
}

/// Blocks SIGCHLD and returns a signalfd for it (init's reaping); `None`
/// if the kernel has none (then zombies are reaped at every wakeup).
fn sigchld_fd() -> Option<OwnedFd> {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset;
    // sigprocmask and signalfd read it. Init is single-threaded here.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
    }
}

/// Serves `listener` (a listening stream socket) while the main workload
/// `main_pid` runs; returns its exit code (128 + N for signal N) after
/// telling every connection.
pub fn serve(listener: OwnedFd, main_pid: libc::pid_t, opts: Options) -> i32 {
    let _ = spawn::set_nonblocking(listener.as_raw_fd());
    let sigchld = if opts.reap_all { sigchld_fd() } else { None };
    let mut a = Agent {
        listener,
        sigchld,
        reap_all: opts.reap_all,
        main: Main {
            pid: main_pid,
            pidfd: spawn::pidfd_open(main_pid).ok(),
            code: None,
        },
        conns: HashMap::new(),
        next_conn: 1,
        procs: Vec::new(),
    };
    if a.main.pidfd.is_none() {
        // Already gone (or no pidfds): find out by reaping.
        a.reap_main();
    }
    loop {
        if let Some(code) = a.main.code {
            a.finish(code);
            return code;
        }
        a.step();
    }
}

/// Reads into `buf`: `Some(n)` (0 at the end), `None` when it would block
/// or was interrupted; an error otherwise.
fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: reads into the buffer we own, at most its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(e),
    }
}

/// Writes from `buf`: `Some(n)`, `None` when it would block; an error otherwise.
fn write_fd(fd: RawFd, buf: &[u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: writes from the buffer we own, at most its length; a socket
    // peer gone gives EPIPE (MSG_NOSIGNAL is not available to write, and
    // SIGPIPE is ignored by Rust's runtime in init and in the tests).
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
        _ => Err(e),
    }
}

fn queue(out: &mut VecDeque<u8>, m: &Message) {
    // What the agent sends is built here and fits a frame; a failure to
    // encode would be a bug, and sends nothing.
    if let Ok(bytes) = m.encode() {
        out.extend(bytes);
    }
}

impl Agent {
    /// One poll and what it found.
    fn step(&mut self) {
        let (mut fds, slots) = self.poll_set();
        let timeout = self.timeout();
        // SAFETY: fds is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            // EINTR; anything else (ENOMEM) is retried after a breath.
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                std::thread::sleep(Duration::from_millis(10));
            }
            return;
        }
        for (p, slot) in fds.iter().zip(slots) {
            if p.revents == 0 {
                continue;
            }
            match slot {
                Slot::Listener => self.accept(),
                Slot::Sigchld => self.on_sigchld(),
                Slot::MainPidfd => self.reap_main(),
                Slot::Conn(k) => self.on_conn(k, p.revents),
                Slot::Pidfd(i) => self.reap_proc(i),
                Slot::Stdin(i) => self.write_stdin(i),
                Slot::Stdout(i) => self.read_output(i, false),
                Slot::Stderr(i) => self.read_output(i, true),
            }
        }
        if self.reap_all {
            // Also at every wakeup: a SIGCHLD may have gone to a thread
            // that does not block it (none in init; some in the tests).
            self.reap_any();
        }
        if self.main.pidfd.is_none() {
            self.reap_main();
        }
        self.settle();
    }

    fn poll_set(&self) -> (Vec<libc::pollfd>, Vec<Slot>) {
        let mut fds = Vec::new();
        let mut slots = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            slots.push(slot);
        };
        if self.conns.len() < MAX_CONNECTIONS {
            add(self.listener.as_raw_fd(), libc::POLLIN, Slot::Listener);
        }
        if let Some(s) = &self.sigchld {
            add(s.as_raw_fd(), libc::POLLIN, Slot::Sigchld);
        }
        if let Some(p) = &self.main.pidfd {
            add(p.as_raw_fd(), libc::POLLIN, Slot::MainPidfd);
        }
        for (k, c) in &self.conns {
            let mut ev = 0;
            if !c.dead && !self.throttled(*k) {
                ev |= libc::POLLIN;
            }
            if !c.out.is_empty() {
                ev |= libc::POLLOUT;
            }
            // Always polled: a hang-up is reported whatever the events.
            add(c.fd.as_raw_fd(), ev, Slot::Conn(*k));
        }
        for (i, p) in self.procs.iter().enumerate() {
            if let Some(fd) = &p.pidfd {
                add(fd.as_raw_fd(), libc::POLLIN, Slot::Pidfd(i));
            }
            if let Some(fd) = &p.stdin {
                if !p.stdin_buf.is_empty() || p.stdin_eof {
                    add(fd.as_raw_fd(), libc::POLLOUT, Slot::Stdin(i));
                }
            }
            let room = p
                .conn
                .and_then(|k| self.conns.get(&k))
                .is_some_and(|c| c.out.len() < OUT_HIGH);
            if room {
                if let Some(fd) = &p.stdout {
                    add(fd.as_raw_fd(), libc::POLLIN, Slot::Stdout(i));
                }
                if let Some(fd) = &p.stderr {
                    add(fd.as_raw_fd(), libc::POLLIN, Slot::Stderr(i));
                }
            }
        }
        (fds, slots)
    }

    /// Milliseconds until the first drain deadline (-1: none).
    fn timeout(&self) -> libc::c_int {
        let now = Instant::now();
        let mut t: Option<Duration> = None;
        for p in &self.procs {
            if p.stdout.is_none() && p.stderr.is_none() {
                continue;
            }
            if let Some(end) = self.drain_deadline(p) {
                let left = end.saturating_duration_since(now);
                t = Some(t.map_or(left, |t| t.min(left)));
            }
        }
        for c in self.conns.values().filter(|c| !c.greeted) {
            let left = (c.accepted + HELLO_TIMEOUT).saturating_duration_since(now);
            t = Some(t.map_or(left, |t| t.min(left)));
        }
        if (self.reap_all && self.sigchld.is_none()) || self.main.pidfd.is_none() {
            // Nothing to wake the agent when a zombie appears: look every second.
            t = Some(t.map_or(Duration::from_secs(1), |t| t.min(Duration::from_secs(1))));
        }
        match t {
            Some(d) => d.as_millis().min(60_000) as libc::c_int + 1,
            None => -1,
        }
    }

    /// Whether connection `k` is left unread: its replies are not being
    /// taken, or a process of it is not taking its stdin.
    fn throttled(&self, k: u64) -> bool {
        self.conns.get(&k).is_some_and(|c| c.out.len() >= OUT_HIGH)
            || self
                .procs
                .iter()
                .any(|p| p.conn == Some(k) && p.stdin_buf.len() >= STDIN_HIGH)
    }

    /// When the output of ended process `p` stops being waited for:
    /// `None` while its connection is too full to take it (then its
    /// output is not read, and the wait is not its fault).
    fn drain_deadline(&self, p: &Proc) -> Option<Instant> {
        let (_, at) = p.code?;
        let full = p
            .conn
            .and_then(|k| self.conns.get(&k))
            .is_some_and(|c| c.out.len() >= OUT_HIGH);
        (!full).then(|| at.max(p.last_read) + DRAIN_GRACE)
    }

    fn accept(&mut self) {
        while self.conns.len() < MAX_CONNECTIONS {
            // SAFETY: accept4 without an address; returns a new descriptor or -1.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return;
            }
            // SAFETY: a new descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let k = self.next_conn;
            self.next_conn += 1;
            self.conns.insert(
                k,
                Conn {
                    fd,
                    decoder: MessageDecoder::new(),
                    out: VecDeque::new(),
                    greeted: false,
                    accepted: Instant::now(),
                    dead: false,
                },
            );
        }
    }

    fn on_conn(&mut self, k: u64, revents: libc::c_short) {
        if revents & libc::POLLOUT != 0 {
            self.flush(k);
        }
        let gone = revents & (libc::POLLHUP | libc::POLLERR) != 0;
        if gone && self.throttled(k) {
            // Not read while throttled, and it is gone: what it sent
            // last cannot change the outcome (its processes die).
            self.drop_conn(k);
        } else if gone || revents & libc::POLLIN != 0 {
            self.read_conn(k);
        }
    }

    /// Writes what is queued for `k`; a write error closes it.
    fn flush(&mut self, k: u64) {
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        let was_full = c.out.len() >= OUT_HIGH;
        let mut failed = false;
        while !c.out.is_empty() {
            let (front, _) = c.out.as_slices();
            match write_fd(c.fd.as_raw_fd(), front) {
                Ok(Some(n)) => {
                    c.out.drain(..n);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            self.drop_conn(k);
        } else if was_full {
            // The stall ends now: its processes' drain grace starts again.
            let now = Instant::now();
            for p in self.procs.iter_mut().filter(|p| p.conn == Some(k)) {
                p.last_read = now;
            }
        }
    }

    /// Reads what `k` sent and handles its messages.
    fn read_conn(&mut self, k: u64) {
        let mut buf = vec![0u8; frame::MAX_PAYLOAD];
        let Some(c) = self.conns.get_mut(&k) else {
            return;
        };
        if c.dead {
            return;
        }
        let n = match read_fd(c.fd.as_raw_fd(), &mut buf) {
            Ok(Some(0)) | Err(_) => {
                self.drop_conn(k);
                return;
            }
            Ok(Some(n)) => n,
            Ok(None) => return,
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let Some(c) = self.conns.get_mut(&k) else {
                return;
            };
            let took = c.decoder.feed(rest);
            rest = &rest[took..];
            loop {
                let Some(c) = self.conns.get_mut(&k) else {
                    return;
                };
                if c.dead {
                    return;
                }
                match c.decoder.next_message() {
                    Ok(Some(m)) => self.handle(k, m),
                    Ok(None) => break,
                    Err(e) => {
                        self.refuse(k, &e.to_string());
                        return;
                    }
                }
            }
        }
    }

    /// Tells `k` why and closes it.
    fn refuse(&mut self, k: u64, why: &str) {
        if let Some(c) = self.conns.get_mut(&k) {
            queue(
                &mut c.out,
                &Message::Failed {
                    id: MAIN_ID,
                    message: why.to_owned(),
                },
            );
            c.dead = true;
        }
        // One try to deliver it, then the connection goes.
        self.flush(k);
        self.drop_conn(k);
    }

    fn send(&mut self, k: u64, m: &Message) {
        if let Some(c) = self.conns.get_mut(&k) {
            queue(&mut c.out, m);
        }
    }

    fn handle(&mut self, k: u64, m: Message) {
        let greeted = self.conns.get(&k).is_some_and(|c| c.greeted);
        if !greeted {
            match m {
                Message::Hello { version } if version == u32::from(VERSION) => {
                    if let Some(c) = self.conns.get_mut(&k) {
                        c.greeted = true;
                    }
                    self.send(k, &Message::Hello { version });
                    let pid = self.main.pid as u32;
                    self.send(k, &Message::Started { id: MAIN_ID, pid });
                }
                Message::Hello { version } => {
                    self.send(
                        k,
                        &Message::Hello {
                            version: u32::from(VERSION),
                        },
                    );
                    self.refuse(
                        k,
                        &format!("protocol version {version}, the agent speaks {VERSION}"),
                    );
                }
                other => self.refuse(k, &format!("{:?} before Hello", other.kind())),
            }
            return;
        }
        match m {
            Message::Exec(e) => self.exec(k, e),
            Message::Stdin { id, data } => {
                if let Some(p) = self.find(k, id) {
                    // Bytes for a process without relayed stdin, or after
                    // its end, are dropped.
                    if p.stdin.is_some() && !p.stdin_eof {
                        p.stdin_buf.extend(data);
                    }
                }
            }
            Message::StdinEof { id } => {
                if let Some(p) = self.find(k, id) {
                    p.stdin_eof = true;
                }
            }
            Message::Signal { id, signo } => self.signal(k, id, signo as libc::c_int),
            Message::Forward { port } => self.forward(k, port, crate::forward::start),
            Message::CopyOut { contents, path } => {
                self.copy(k, crate::copy::Request::Out { contents, path })
            }
            Message::CopyIn { contents, path } => {
                self.copy(k, crate::copy::Request::In { contents, path })
            }
            Message::ForwardUdp { port } => self.forward(k, port, crate::forward_udp::start),
            Message::Resize { id, rows, cols } => {
                if let Some(p) = self.find(k, id) {
                    if let (true, Some(fd)) = (p.tty, &p.stdout) {
                        let _ = spawn::set_window_size(fd.as_raw_fd(), rows, cols);
                    }
                }
            }
            other => self.refuse(k, &format!("{:?} is not for the agent", other.kind())),
        }
    }

    /// Hands connection `k` over to a forwarding thread ([`crate::forward`]
    /// for TCP, [`crate::forward_udp`] for UDP, as `start`): it leaves the
    /// poll loop for good. Only a connection with nothing else going on
    /// can be one.
    fn forward(&mut self, k: u64, port: u16, start: Forwarder) {
        let busy = self.procs.iter().any(|p| p.conn == Some(k));
        let Some(c) = self.conns.get(&k) else {
            return;
        };
        if busy || c.decoder.pending() != 0 {
            self.refuse(k, "Forward on a connection with processes or more to read");
            return;
        }
        let Some(c) = self.conns.remove(&k) else {
            return;
        };
        let queued: Vec<u8> = c.out.into_iter().collect();
        if let Err((fd, why)) = start(c.fd, queued, port) {
            // Back in the table, only to be told why and closed.
            self.conns.insert(
                k,
                Conn {
                    fd,
                    decoder: MessageDecoder::new(),
                    out: VecDeque::new(),
                    greeted: true,
                    accepted: Instant::now(),
                    dead: false,
                },
            );
            self.refuse(k, &why);
        }
    }

    /// Hands connection `k` over to a copying thread ([`crate::copy`]):
    /// it leaves the poll loop for good, with what it sent after the
    /// request. Only a connection with no processes can be one.
    fn copy(&mut self, k: u64, req: crate::copy::Request) {
        if self.procs.iter().any(|p| p.conn == Some(k)) {
            self.refuse(k, "a copy on a connection with processes");
            return;
        }
        let Some(c) = self.conns.remove(&k) else {
            return;
        };
        let queued: Vec<u8> = c.out.into_iter().collect();
        if let Err((fd, why)) = crate::copy::start(c.fd, c.decoder, queued, req) {
            self.conns.insert(
                k,
                Conn {
                    fd,
                    decoder: MessageDecoder::new(),
                    out: VecDeque::new(),
                    greeted: true,
                    accepted: Instant::now(),
                    dead: false,
                },
            );
            self.refuse(k, &why);
        }
    }

    /// The running (not yet reported) process `id` of connection `k`.
    fn find(&mut self, k: u64, id: u32) -> Option<&mut Proc> {
        self.procs
            .iter_mut()
            .find(|p| p.conn == Some(k) && p.id == id)
    }

    fn signal(&mut self, k: u64, id: u32, signo: libc::c_int) {
        if id == MAIN_ID {
            if self.main.code.is_none() {
                // SAFETY: kill with a pid not yet reaped (ours) and a checked signal.
                unsafe { libc::kill(self.main.pid, signo) };
            }
            return;
        }
        let Some(p) = self.find(k, id) else {
            self.send(
                k,
                &Message::Failed {
                    id,
                    message: format!("no process {id}"),
                },
            );
            return;
        };
        if p.code.is_none() {
            let target = if p.tty { -p.pid } else { p.pid };
            // SAFETY: the pid is not yet reaped, so it (and its group) is ours.
            unsafe { libc::kill(target, signo) };
        }
    }

    fn exec(&mut self, k: u64, e: Exec) {
        let id = e.id;
        let refuse = |a: &mut Agent, message: String| a.send(k, &Message::Failed { id, message });
        if id == MAIN_ID {
            return refuse(self, "id 0 is the main workload".into());
        }
        if self.find(k, id).is_some() {
            return refuse(self, format!("id {id} is in use"));
        }
        let mine = self.procs.iter().filter(|p| p.conn == Some(k)).count();
        if mine >= MAX_PROCESSES_PER_CONNECTION {
            return refuse(
                self,
                format!("{MAX_PROCESSES_PER_CONNECTION} processes already run for this connection"),
            );
        }
        if self.procs.len() >= MAX_PROCESSES {
            return refuse(self, format!("{MAX_PROCESSES} processes already run"));
        }
        let identity = if e.user.is_empty() {
            None
        } else {
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            match crate::spec::resolve_user(&e.user, &passwd) {
                Ok(ids) => Some(ids),
                Err(why) => return refuse(self, why),
            }
        };
        let stdio = Stdio::of(&e);
        let child = match spawn::spawn(&e, identity, stdio) {
            Ok(c) => c,
            Err(why) => return refuse(self, why),
        };
        self.send(
            k,
            &Message::Started {
                id,
                pid: child.pid as u32,
            },
        );
        self.procs.push(Proc {
            conn: Some(k),
            id,
            pid: child.pid,
            pidfd: Some(child.pidfd),
            tty: matches!(stdio, Stdio::Tty { .. }),
            detach: e.detach,
            stdin: if e.stdin { child.stdin } else { None },
            stdin_buf: VecDeque::new(),
            stdin_eof: false,
            stdout: child.stdout,
            stderr: child.stderr,
            code: None,
            last_read: Instant::now(),
        });
    }

    /// Connection `k` is gone: its processes are killed (unless detached)
    /// and their stdio closed; they stay in the table until reaped.
    fn drop_conn(&mut self, k: u64) {
        if self.conns.remove(&k).is_none() {
            return;
        }
        for p in self.procs.iter_mut().filter(|p| p.conn == Some(k)) {
            p.conn = None;
            p.stdin = None;
            p.stdout = None;
            p.stderr = None;
            p.stdin_buf = VecDeque::new();
            if !p.detach && p.code.is_none() {
                // SAFETY: not yet reaped, so the pid and its group are ours.
                unsafe {
                    libc::kill(-p.pid, libc::SIGKILL);
                    libc::kill(p.pid, libc::SIGKILL);
                }
            }
        }
    }

    fn write_stdin(&mut self, i: usize) {
        let Some(p) = self.procs.get_mut(i) else {
            return;
        };
        let Some(fd) = &p.stdin else {
            return;
        };
        let fd = fd.as_raw_fd();
        while !p.stdin_buf.is_empty() {
            let (front, _) = p.stdin_buf.as_slices();
            match write_fd(fd, front) {
                Ok(Some(n)) => {
                    p.stdin_buf.drain(..n);
                }
                Ok(None) => return,
                Err(_) => {
                    // The reader is gone (EPIPE, EIO): drop what is left.
                    p.stdin_buf.clear();
                    p.stdin = None;
                    return;
                }
            }
        }
        if p.stdin_eof {
            if p.tty {
                // A terminal's end of input is its EOF character (^D,
                // read as such in canonical mode).
                let _ = write_fd(fd, &[4]);
            }
            p.stdin = None;
            p.stdin_eof = false;
        }
    }

    fn read_output(&mut self, i: usize, err: bool) {
        let Some(p) = self.procs.get_mut(i) else {
            return;
        };
        let slot = if err { &mut p.stderr } else { &mut p.stdout };
        let Some(fd) = slot else {
            return;
        };
        let mut buf = [0u8; READ_CHUNK];
        let n = match read_fd(fd.as_raw_fd(), &mut buf) {
            Ok(Some(0)) | Err(_) => {
                // The end (a terminal whose every slave is closed says EIO).
                *slot = None;
                if p.tty {
                    p.stdin = None;
                }
                return;
            }
            Ok(Some(n)) => n,
            Ok(None) => return,
        };
        p.last_read = Instant::now();
        let (id, conn) = (p.id, p.conn);
        let kind = if err { Kind::Stderr } else { Kind::Stdout };
        if let Some(c) = conn.and_then(|k| self.conns.get_mut(&k)) {
            let mut bytes = Vec::with_capacity(frame::HEADER_LEN + n);
            if frame::encode_into(kind, id, &buf[..n], &mut bytes).is_ok() {
                c.out.extend(bytes);
            }
        }
    }

    fn on_sigchld(&mut self) {
        if let Some(s) = &self.sigchld {
            let mut info = [0u8; 128 * 8];
            while matches!(read_fd(s.as_raw_fd(), &mut info), Ok(Some(n)) if n > 0) {}
        }
        self.reap_any();
    }

    /// Reaps every zombie (PID 1): each is the main workload, one of the
    /// table, or a stray.
    fn reap_any(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.reaped(pid, status_code(status));
        }
    }

    fn reaped(&mut self, pid: libc::pid_t, code: i32) {
        if pid == self.main.pid {
            self.main.code = Some(code);
            self.main.pidfd = None;
        } else if let Some(p) = self
            .procs
            .iter_mut()
            .find(|p| p.pid == pid && p.code.is_none())
        {
            p.code = Some((code, Instant::now()));
            p.pidfd = None;
        }
        // Otherwise a stray: reaped, nothing to tell.
    }

    /// Reaps the main workload if it has ended.
    fn reap_main(&mut self) {
        if self.main.code.is_some() {
            return;
        }
        let mut status = 0;
        // SAFETY: waitpid on our child with a valid out-pointer.
        let r = unsafe { libc::waitpid(self.main.pid, &mut status, libc::WNOHANG) };
        if r == self.main.pid {
            self.reaped(r, status_code(status));
        } else if r < 0 {
            // Reaped elsewhere without being seen (cannot happen in init),
            // or not our child: it is gone all the same.
            self.reaped(self.main.pid, EXIT_UNKNOWN);
        }
    }

    fn reap_proc(&mut self, i: usize) {
        let Some(p) = self.procs.get(i) else {
            return;
        };
        if p.code.is_some() {
            return;
        }
        let pid = p.pid;
        let mut status = 0;
        // SAFETY: waitpid on our child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            self.reaped(pid, status_code(status));
        } else if r < 0 {
            self.reaped(pid, EXIT_UNKNOWN);
        }
    }

    /// Reports and forgets processes that ended and whose output is
    /// drained (or whose grace is over); drops closed connections.
    fn settle(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.procs.len() {
            let p = &self.procs[i];
            let Some((code, _)) = p.code else {
                i += 1;
                continue;
            };
            let drained = p.stdout.is_none() && p.stderr.is_none();
            if !drained && self.drain_deadline(p).is_none_or(|end| now < end) {
                i += 1;
                continue;
            }
            let p = self.procs.swap_remove(i);
            if let Some(k) = p.conn {
                self.send(k, &Message::Exited { id: p.id, code });
                self.flush(k);
            }
        }
        let dead: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dead || (!c.greeted && now >= c.accepted + HELLO_TIMEOUT))
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            self.drop_conn(k);
        }
    }

    /// The main workload ended: every greeted connection gets
    /// `Exited{0, code}`, with a bounded wait for it to be written.
    fn finish(&mut self, code: i32) {
        let keys: Vec<u64> = self.conns.keys().copied().collect();
        for k in &keys {
            if self.conns.get(k).is_some_and(|c| c.greeted) {
                self.send(*k, &Message::Exited { id: MAIN_ID, code });
            }
        }
        let deadline = Instant::now() + FINAL_FLUSH;
        loop {
            for k in &keys {
                self.flush(*k);
            }
            let mut fds: Vec<libc::pollfd> = self
                .conns
                .values()
                .filter(|c| !c.out.is_empty())
                .map(|c| libc::pollfd {
                    fd: c.fd.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                })
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if fds.is_empty() || left.is_zero() {
                break;
            }
            // SAFETY: fds is a valid array of pollfd of the given length.
            unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    left.as_millis() as libc::c_int + 1,
                )
            };
        }
        // Everything else ends with the machine; in the tests, here.
        let keys: Vec<u64> = self.conns.keys().copied().collect();
        for k in keys {
            self.drop_conn(k);
        }
        for p in &self.procs {
            if !p.detach && p.code.is_none() {
                // SAFETY: our killed child, not yet reaped; waiting for it
                // is short.
                unsafe { libc::waitpid(p.pid, std::ptr::null_mut(), 0) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use twinbox_agent::client::{Client, Error as ClientError};

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// An agent on a Unix socket in a temporary directory, serving while
    /// its main workload (`sleep 60`) runs.
    struct TestBox {
        dir: PathBuf,
        path: PathBuf,
        main_pid: libc::pid_t,
        agent: Option<std::thread::JoinHandle<i32>>,
    }

    fn exec(id: u32, argv: &[&str]) -> Exec {
        Exec {
            id,
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec!["PATH=/usr/bin:/bin".into()],
            ..Exec::default()
        }
    }

    impl TestBox {
        fn start() -> Result<TestBox> {
            Self::start_with(false)
        }

        fn start_with(reap_all: bool) -> Result<TestBox> {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "twinbox-init-agent-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("agent.sock");
            let listener = OwnedFd::from(UnixListener::bind(&path)?);
            let main = spawn::spawn(&exec(0, &["sleep", "60"]), None, Stdio::Null)?;
            let main_pid = main.pid;
            let agent = std::thread::spawn(move || serve(listener, main_pid, Options { reap_all }));
            Ok(TestBox {
                dir,
                path,
                main_pid,
                agent: Some(agent),
            })
        }

        fn raw(&self) -> Result<UnixStream> {
            let s = UnixStream::connect(&self.path)?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.set_write_timeout(Some(Duration::from_secs(20)))?;
            Ok(s)
        }

        fn client(&self) -> Result<Client<UnixStream>> {
            let mut c = Client::hello(self.raw()?)?;
            match c.recv()? {
                Message::Started { id: 0, pid } => assert_eq!(pid as libc::pid_t, self.main_pid),
                m => return Err(format!("expected Started{{0}}, got {m:?}").into()),
            }
            Ok(c)
        }

        /// `twinbox stop`: SIGTERM to the main workload; its code as the
        /// client and `serve` see it.
        fn stop(mut self) -> Result<(i32, i32)> {
            let mut c = self.client()?;
            c.sender().signal(0, libc::SIGTERM)?;
            let seen = loop {
                if let Message::Exited { id: 0, code } = c.recv()? {
                    break code;
                }
            };
            let served = self
                .agent
                .take()
                .ok_or("no agent")?
                .join()
                .map_err(|_| "agent thread panicked")?;
            Ok((seen, served))
        }
    }

    impl Drop for TestBox {
        fn drop(&mut self) {
            if self.agent.is_some() {
                // SAFETY: our child (sleep), ended so the agent returns.
                unsafe { libc::kill(self.main_pid, libc::SIGKILL) };
                if let Some(a) = self.agent.take() {
                    let _ = a.join();
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn run(c: &mut Client<UnixStream>, e: &Exec) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        c.exec(e)?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = c.wait(e.id, &mut out, &mut err)?;
        Ok((out, err, code))
    }

    fn alive(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    fn gone_within(pid: libc::pid_t, d: Duration) -> bool {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_shell_command_reports_output_and_code() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let (out, err, code) = run(
            &mut c,
            &exec(1, &["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"]),
        )?;
        assert_eq!(
            (&out[..], &err[..], code),
            (&b"hi\n"[..], &b"oops\n"[..], 3)
        );
        // Ids are reusable once reported.
        let (out, _, code) = run(&mut c, &exec(1, &["echo", "again"]))?;
        assert_eq!((&out[..], code), (&b"again\n"[..], 0));
        assert_eq!(b.stop()?, (143, 143));
        Ok(())
    }

    #[test]
    fn cat_relays_stdin_with_back_pressure() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let mut e = exec(2, &["cat"]);
        e.stdin = true;
        c.exec(&e)?;
        // 4 MiB through cat, written from another thread while this one
        // reads: every queue on the way is bounded, so this only ends if
        // back-pressure works both ways.
        let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut tx = c.try_sender()?;
        let sent = data.clone();
        let writer = std::thread::spawn(move || -> std::result::Result<(), ClientError> {
            tx.stdin(2, &sent)?;
            tx.stdin_eof(2)
        });
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = c.wait(2, &mut out, &mut err)?;
        writer.join().map_err(|_| "writer panicked")??;
        assert_eq!(code, 0);
        assert!(
            out == data,
            "cat gave {} bytes of {}",
            out.len(),
            data.len()
        );
        assert!(err.is_empty());
        Ok(())
    }

    #[test]
    fn a_slow_reader_loses_no_output() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        c.exec(&exec(1, &["head", "-c", "400000", "/dev/zero"]))?;
        // More than the socket's buffer and the agent's queue take, less
        // than those and the pipe: the process ends with output left in
        // its pipe, unread while the connection is full, long before it
        // is taken; the agent keeps it instead of dropping it at the grace.
        std::thread::sleep(DRAIN_GRACE + Duration::from_secs(1));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(c.wait(1, &mut out, &mut err)?, 0);
        assert_eq!(out.len(), 400_000);
        Ok(())
    }

    #[test]
    fn a_terminal_has_the_size_asked_for_and_resizes() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let mut e = exec(3, &["stty", "size"]);
        e.tty = true;
        e.rows = 33;
        e.cols = 101;
        let (out, err, code) = run(&mut c, &e)?;
        assert_eq!(code, 0, "{}", String::from_utf8_lossy(&out));
        assert_eq!(String::from_utf8_lossy(&out).trim(), "33 101");
        assert!(err.is_empty(), "a terminal has one stream");

        let mut e = exec(
            4,
            &["/bin/sh", "-c", "tty >/dev/null && read x && stty size"],
        );
        e.tty = true;
        e.stdin = true;
        e.rows = 24;
        e.cols = 80;
        c.exec(&e)?;
        c.sender().resize(4, 40, 120)?;
        c.sender().stdin(4, b"go\n")?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = c.wait(4, &mut out, &mut err)?;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("40 120"), "{text:?}");
        Ok(())
    }

    #[test]
    fn a_shell_on_a_terminal_takes_input_and_ends_at_eof() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let mut e = exec(1, &["/bin/sh"]);
        e.tty = true;
        e.stdin = true;
        e.rows = 24;
        e.cols = 80;
        c.exec(&e)?;
        c.sender().stdin(1, b"echo $((6*7))\n")?;
        c.sender().stdin_eof(1)?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = c.wait(1, &mut out, &mut err)?;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(code, 0, "{text:?}");
        assert!(text.contains("42"), "{text:?}");
        Ok(())
    }

    #[test]
    fn signals_reach_the_process_and_its_terminal_group() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let pid = c.exec(&exec(5, &["sleep", "30"]))?;
        assert!(alive(pid as libc::pid_t));
        c.sender().signal(5, libc::SIGTERM)?;
        let code = c.wait(5, &mut Vec::new(), &mut Vec::new())?;
        assert_eq!(code, 128 + libc::SIGTERM);

        // On a terminal the whole group gets it: the shell and its sleep.
        let mut e = exec(6, &["/bin/sh", "-c", "sleep 30; echo survived"]);
        e.tty = true;
        c.exec(&e)?;
        std::thread::sleep(Duration::from_millis(200));
        c.sender().signal(6, libc::SIGKILL)?;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = c.wait(6, &mut out, &mut err)?;
        assert_eq!(code, 128 + libc::SIGKILL);
        assert!(!String::from_utf8_lossy(&out).contains("survived"));

        // A signal for an id that does not run is refused.
        c.sender().signal(99, libc::SIGTERM)?;
        match c.recv()? {
            Message::Failed { id: 99, .. } => {}
            m => return Err(format!("{m:?}").into()),
        }
        Ok(())
    }

    #[test]
    fn not_found_is_127_and_not_executable_126() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let (_, err, code) = run(&mut c, &exec(7, &["twinbox-no-such-command"]))?;
        assert_eq!(code, 127);
        assert!(String::from_utf8_lossy(&err).contains("command not found"));
        let file = b.dir.join("not-executable");
        std::fs::write(&file, "#!/bin/sh\n")?;
        let (_, _, code) = run(&mut c, &exec(8, &[&file.to_string_lossy()]))?;
        assert_eq!(code, 126);
        let mut e = exec(9, &["true"]);
        e.cwd = "/twinbox-no-such-dir".into();
        let (_, _, code) = run(&mut c, &e)?;
        assert_eq!(code, 125);
        Ok(())
    }

    #[test]
    fn bad_requests_are_refused_and_the_connection_goes_on() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        for (e, why) in [
            (exec(0, &["true"]), "main workload"),
            (
                Exec {
                    user: "twinbox-ghost".into(),
                    ..exec(10, &["true"])
                },
                "unknown user",
            ),
        ] {
            match c.exec(&e) {
                Err(ClientError::Refused { message, .. }) => {
                    assert!(message.contains(why), "{message}")
                }
                other => return Err(format!("{other:?}").into()),
            }
        }
        let pid = c.exec(&exec(11, &["sleep", "30"]))?;
        match c.exec(&exec(11, &["true"])) {
            Err(ClientError::Refused { message, .. }) => assert!(message.contains("in use")),
            other => return Err(format!("{other:?}").into()),
        }
        c.sender().signal(11, libc::SIGKILL)?;
        assert_eq!(c.wait(11, &mut Vec::new(), &mut Vec::new())?, 137);
        assert!(gone_within(pid as libc::pid_t, Duration::from_secs(5)));
        Ok(())
    }

    #[test]
    fn a_connection_runs_at_most_its_share_of_processes() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let mut pids = Vec::new();
        for id in 1..=MAX_PROCESSES_PER_CONNECTION as u32 {
            pids.push(c.exec(&exec(id, &["sleep", "30"]))? as libc::pid_t);
        }
        match c.exec(&exec(1000, &["true"])) {
            Err(ClientError::Refused { message, .. }) => assert!(message.contains("already run")),
            other => return Err(format!("{other:?}").into()),
        }
        // Another connection has its own share.
        let mut other = b.client()?;
        let (out, _, code) = run(&mut other, &exec(1, &["echo", "mine"]))?;
        assert_eq!((&out[..], code), (&b"mine\n"[..], 0));
        drop(c);
        for pid in pids {
            assert!(
                gone_within(pid, Duration::from_secs(5)),
                "{pid} outlived its connection"
            );
        }
        Ok(())
    }

    #[test]
    fn hostile_clients_are_cut_off_and_the_agent_serves_on() -> Result {
        let b = TestBox::start()?;
        let hostile: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            // An oversized frame: refused from its header.
            [&b"TB\x01\x04\x01\x00\x00\x00"[..], &u32::MAX.to_le_bytes()].concat(),
            // A good frame before Hello.
            Message::StdinEof { id: 1 }.encode()?,
            // Another version.
            Message::Hello { version: 7 }.encode()?,
        ];
        for bytes in hostile {
            let mut s = b.raw()?;
            s.write_all(&bytes)?;
            let mut reply = Vec::new();
            // Cut off: the agent closes its side (maybe after a Failed).
            s.read_to_end(&mut reply)?;
            let mut d = MessageDecoder::new();
            d.feed(&reply);
            let mut failed = false;
            while let Ok(Some(m)) = d.next_message() {
                failed |= matches!(m, Message::Failed { id: 0, .. });
            }
            assert!(failed, "no Failed for {bytes:?}: {reply:?}");
        }
        // A client that says nothing is closed after a while.
        let mut s = b.raw()?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)?;
        assert!(reply.is_empty());
        // Garbage after a good Hello, and a client that vanishes mid-frame.
        let mut s = b.raw()?;
        s.write_all(&Message::Hello { version: 1 }.encode()?)?;
        s.write_all(&[0xff; 100_000])?;
        drop(s);
        let mut s = b.raw()?;
        s.write_all(&Message::Hello { version: 1 }.encode()?[..5])?;
        drop(s);
        let mut c = b.client()?;
        let (out, _, code) = run(&mut c, &exec(1, &["echo", "still here"]))?;
        assert_eq!((&out[..], code), (&b"still here\n"[..], 0));
        assert_eq!(b.stop()?, (143, 143));
        Ok(())
    }

    #[test]
    fn a_dropped_connection_kills_its_processes_unless_detached() -> Result {
        let b = TestBox::start()?;
        let mut c = b.client()?;
        let attached = c.exec(&exec(1, &["sleep", "30"]))? as libc::pid_t;
        let mut e = exec(2, &["sleep", "30"]);
        e.detach = true;
        let detached = c.exec(&e)? as libc::pid_t;
        drop(c);
        assert!(gone_within(attached, Duration::from_secs(5)));
        assert!(alive(detached));
        // Its end is reaped by the agent even with nobody to tell.
        // SAFETY: the detached sleep is ours to end.
        unsafe { libc::kill(detached, libc::SIGKILL) };
        assert!(gone_within(detached, Duration::from_secs(5)));
        Ok(())
    }

    #[test]
    fn the_main_workload_exit_reaches_every_client() -> Result {
        let b = TestBox::start()?;
        let mut watcher = b.client()?;
        let (seen, served) = b.stop()?;
        assert_eq!((seen, served), (143, 143));
        loop {
            match watcher.recv() {
                Ok(Message::Exited { id: 0, code }) => {
                    assert_eq!(code, 143);
                    break;
                }
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Init's reaping (every zombie, `waitpid(-1)`), in a process of its
    /// own: this test binary again, running only this test, a subreaper
    /// so that orphans come to it as they come to PID 1.
    #[test]
    fn reaping_all_tells_main_processes_and_strays_apart() -> Result {
        const ALONE: &str = "TWINBOX_INIT_TEST_REAP_ALL";
        let name = "agent::tests::reaping_all_tells_main_processes_and_strays_apart";
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe()?)
                .args([name, "--exact", "--test-threads=1", "--nocapture"])
                .env(ALONE, "1")
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("1 passed"),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return Ok(());
        }
        // SAFETY: prctl with integer arguments only.
        assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
        let b = TestBox::start_with(true)?;
        let mut c = b.client()?;
        // A process that leaves an orphan behind: the orphan is a stray.
        let (out, _, code) = run(
            &mut c,
            &exec(
                1,
                &[
                    "/bin/sh",
                    "-c",
                    "sleep 0.3 >/dev/null 2>&1 & echo $!; exit 4",
                ],
            ),
        )?;
        assert_eq!(code, 4);
        let stray: libc::pid_t = String::from_utf8_lossy(&out).trim().parse()?;
        std::thread::sleep(Duration::from_millis(600));
        // Any wakeup reaps it (this one: the next process).
        let (_, _, code) = run(&mut c, &exec(2, &["sh", "-c", "exit 5"]))?;
        assert_eq!(code, 5);
        assert!(
            gone_within(stray, Duration::from_secs(5)),
            "stray not reaped"
        );
        assert_eq!(b.stop()?, (143, 143));
        Ok(())
    }

    #[test]
    fn forwarded_connections_reach_a_guest_port_beyond_the_connection_bound() -> Result {
        use std::io::{Read, Write};
        let b = TestBox::start()?;
        // An echo server standing in for the box's own: each connection
        // gets back what it sent, after its half-close.
        let server = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = server.local_addr()?.port();
        std::thread::spawn(move || {
            for s in server.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    if s.read_to_end(&mut got).is_ok() {
                        let _ = s.write_all(&got);
                    }
                });
            }
        });
        // More at once than the agent takes framed connections.
        let mut open = Vec::new();
        for i in 0..MAX_CONNECTIONS + 8 {
            let mut s = twinbox_agent::client::forward(b.raw()?, port)?;
            s.write_all(format!("hello {i}").as_bytes())?;
            open.push(s);
        }
        for (i, s) in open.iter_mut().enumerate() {
            s.shutdown(std::net::Shutdown::Write)?;
            let mut back = String::new();
            s.read_to_string(&mut back)?;
            assert_eq!(back, format!("hello {i}"));
        }
        drop(open);
        // A port nobody listens on is refused, and the agent serves on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
        let dead = closed.local_addr()?.port();
        drop(closed);
        match twinbox_agent::client::forward(b.raw()?, dead) {
            Err(twinbox_agent::client::Error::Refused { message, .. }) => {
                assert!(message.contains("refused"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let mut c = b.client()?;
        let (out, _, code) = run(&mut c, &exec(1, &["echo", "still here"]))?;
        assert_eq!((out.as_slice(), code), (&b"still here\n"[..], 0));
        // Forward is not for a connection that runs processes.
        let mut c = b.client()?;
        c.exec(&exec(2, &["sleep", "5"]))?;
        c.sender().send(&Message::Forward { port })?;
        loop {
            match c.recv()? {
                Message::Failed { id: 0, .. } => break,
                Message::Started { .. } => {}
                m => return Err(format!("expected Failed, got {m:?}").into()),
            }
        }
        Ok(())
    }

    /// A tree for the copy tests: d/f (0o4750, an old mtime), d/sub/g,
    /// d/l -> /etc/passwd, d/fifo.
    use std::os::fd::AsFd;

    fn copy_source(top: &std::path::Path) -> Result {
        use std::os::unix::fs::PermissionsExt;
        let d = top.join("d");
        std::fs::create_dir_all(d.join("sub"))?;
        std::fs::write(d.join("f"), b"payload")?;
        std::fs::write(d.join("sub/g"), vec![3u8; 300_000])?;
        std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o4750))?;
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o711))?;
        std::os::unix::fs::symlink("/etc/passwd", d.join("l"))?;
        nix::unistd::mkfifo(
            &d.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )?;
        let t = nix::sys::time::TimeSpec::new(1_234_567_890, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &d.join("f"),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    }

    fn dir_fd(p: &std::path::Path) -> Result<OwnedFd> {
        Ok(nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )?)
    }

    const TO_HOST: twinbox_agent::copy::Policy = twinbox_agent::copy::Policy {
        owner: None,
        mode_mask: 0o1777,
    };

    #[test]
    fn trees_are_copied_out_of_and_into_the_guest() -> Result {
        use std::ffi::OsStr;
        use std::os::unix::fs::MetadataExt;
        use twinbox_agent::copy::{At, FsSink};
        let b = TestBox::start()?;
        let work = tempfile::tempdir()?;
        copy_source(work.path())?;
        let d = work.path().join("d");
        let check = |got: &std::path::Path, mode: u32| -> Result {
            assert_eq!(std::fs::read(got.join("f"))?, b"payload");
            let m = std::fs::metadata(got.join("f"))?;
            assert_eq!((m.mode() & 0o7777, m.mtime()), (mode, 1_234_567_890));
            assert_eq!(std::fs::metadata(got.join("sub"))?.mode() & 0o7777, 0o711);
            assert_eq!(std::fs::read(got.join("sub/g"))?, vec![3u8; 300_000]);
            assert_eq!(
                std::fs::read_link(got.join("l"))?,
                std::path::Path::new("/etc/passwd")
            );
            assert!(std::fs::symlink_metadata(got.join("fifo")).is_err());
            Ok(())
        };
        // Out: the guest walks, the host writes (set-id dropped).
        let out = work.path().join("out");
        let top = dir_fd(work.path())?;
        let mut c = Client::hello(b.raw()?)?;
        c.copy_out(
            &d.to_string_lossy(),
            false,
            &mut FsSink::new(
                &At {
                    dir: top.as_fd(),
                    name: OsStr::new("out"),
                },
                &out,
                TO_HOST,
            ),
            std::path::Path::new("box:/d"),
            Default::default(),
        )?;
        check(&out, 0o750)?;
        // In: into an existing directory under the source's name, at a
        // new name, and a directory's contents into one (`SRC/.`).
        let into = work.path().join("into");
        std::fs::create_dir(&into)?;
        let at = At {
            dir: top.as_fd(),
            name: OsStr::new("d"),
        };
        let mut c = Client::hello(b.raw()?)?;
        c.copy_in(&into.to_string_lossy(), false, &at, &d, OsStr::new("d"))?;
        check(&into.join("d"), 0o4750)?;
        let mut c = Client::hello(b.raw()?)?;
        let fresh = work.path().join("fresh");
        c.copy_in(&fresh.to_string_lossy(), false, &at, &d, OsStr::new("d"))?;
        check(&fresh, 0o4750)?;
        let dfd = dir_fd(&d)?;
        let inner = At {
            dir: dfd.as_fd(),
            name: OsStr::new("."),
        };
        let mut c = Client::hello(b.raw()?)?;
        c.copy_in(&into.to_string_lossy(), true, &inner, &d, OsStr::new("_"))?;
        check(&into, 0o4750)?;
        // A file onto a directory is the guest's refusal, in its words.
        let f = At {
            dir: dfd.as_fd(),
            name: OsStr::new("f"),
        };
        let mut c = Client::hello(b.raw()?)?;
        let e = c
            .copy_in(
                &into.join("sub").to_string_lossy(),
                false,
                &f,
                &d.join("f"),
                OsStr::new("sub"),
            )
            .map(|_| ());
        std::fs::create_dir(into.join("sub/f"))?;
        let mut c2 = Client::hello(b.raw()?)?;
        let e2 = c2.copy_in(
            &into.join("sub").to_string_lossy(),
            false,
            &f,
            &d.join("f"),
            OsStr::new("f"),
        );
        assert!(e.is_ok(), "{e:?}");
        match e2 {
            Err(twinbox_agent::copy::Error::Peer(m)) => {
                assert!(m.contains("cannot copy a file onto a directory"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // Refusals come back as the container's words: missing, a FIFO.
        for (p, want) in [
            (
                work.path().join("nothing/here"),
                "no such file or directory",
            ),
            (d.join("fifo"), "is a FIFO"),
            (d.join("f"), "not a directory"),
        ] {
            let mut c = Client::hello(b.raw()?)?;
            let contents = want == "not a directory";
            let mut sink = FsSink::new(
                &At {
                    dir: top.as_fd(),
                    name: OsStr::new("never"),
                },
                std::path::Path::new("never"),
                TO_HOST,
            );
            match c.copy_out(
                &p.to_string_lossy(),
                contents,
                &mut sink,
                std::path::Path::new("box"),
                Default::default(),
            ) {
                Err(twinbox_agent::copy::Error::Peer(m)) => assert!(m.contains(want), "{m}"),
                other => panic!("{p:?}: {other:?}"),
            }
        }
        assert!(!work.path().join("never").exists());
        // The agent serves on.
        let mut c = b.client()?;
        let (out, _, code) = run(&mut c, &exec(1, &["echo", "still here"]))?;
        assert_eq!((out.as_slice(), code), (&b"still here\n"[..], 0));
        Ok(())
    }

    #[test]
    fn a_hostile_tree_from_the_host_is_refused_by_the_guest() -> Result {
        use twinbox_agent::message::{Entry, EntryKind, Time};
        let b = TestBox::start()?;
        let work = tempfile::tempdir()?;
        let dest = work.path().join("x");
        // The agent's answer to a CopyIn followed by `msgs`.
        let answer = |msgs: &[Message]| -> Result<String> {
            let mut c = Client::hello(b.raw()?)?;
            c.sender().send(&Message::CopyIn {
                contents: false,
                path: dest.to_string_lossy().into_owned(),
            })?;
            loop {
                match c.recv()? {
                    Message::CopyReady => break,
                    Message::Started { .. } => {}
                    m => return Err(format!("{m:?}").into()),
                }
            }
            for m in msgs {
                c.sender().send(m)?;
            }
            loop {
                match c.recv()? {
                    Message::Failed { message, .. } => return Ok(message),
                    Message::Started { .. } => {}
                    m => return Err(format!("{m:?}").into()),
                }
            }
        };
        let file = |size| {
            Message::Entry(Entry {
                kind: EntryKind::File,
                mode: 0o644,
                atime: Time::default(),
                mtime: Time::default(),
                size,
                name: b"f".to_vec(),
                target: Vec::new(),
            })
        };
        let text = answer(&[Message::Up])?;
        assert!(text.contains("the copy's stream: Up where"), "{text}");
        // A file that announces 2 bytes and sends 3.
        let text = answer(&[
            file(2),
            Message::Data {
                data: b"abc".to_vec(),
            },
        ])?;
        assert!(text.contains("1 bytes more than"), "{text}");
        std::fs::remove_file(&dest)?;
        // One past the guest's limit, before anything is written.
        let text = answer(&[file(u64::MAX)])?;
        assert!(text.contains("past its limit"), "{text}");
        assert!(std::fs::symlink_metadata(&dest).is_err());
        // The agent serves on.
        let mut c = b.client()?;
        let (o, _, code) = run(&mut c, &exec(1, &["true"]))?;
        assert_eq!((o.len(), code), (0, 0));
        Ok(())
    }

    #[test]
    fn forward_udp_makes_a_connection_a_flow_of_a_guest_udp_port() -> Result {
        use std::io::{Read, Write};
        let b = TestBox::start()?;
        let server = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = server.local_addr()?.port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                let _ = server.send_to(&buf[..n], from);
            }
        });
        // More flows at once than the agent takes framed connections.
        let mut open = Vec::new();
        for i in 0..MAX_CONNECTIONS + 4 {
            let mut s = twinbox_agent::client::forward_udp(b.raw()?, port)?;
            let mut out = Vec::new();
            twinbox_agent::datagram::encode_into(format!("flow {i}").as_bytes(), &mut out)?;
            s.write_all(&out)?;
            open.push(s);
        }
        for (i, s) in open.iter_mut().enumerate() {
            let mut d = twinbox_agent::datagram::Decoder::new();
            let got = loop {
                if let Some(g) = d.next_datagram()? {
                    break g.to_vec();
                }
                let n = s.read(d.space())?;
                assert!(n > 0, "flow {i} closed");
                d.filled(n);
            };
            assert_eq!(got, format!("flow {i}").as_bytes());
        }
        drop(open);
        // ForwardUdp is not for a connection that runs processes either.
        let mut c = b.client()?;
        c.exec(&exec(2, &["sleep", "5"]))?;
        c.sender().send(&Message::ForwardUdp { port })?;
        loop {
            match c.recv()? {
                Message::Failed { id: 0, .. } => break,
                Message::Started { .. } => {}
                m => return Err(format!("expected Failed, got {m:?}").into()),
            }
        }
        assert_eq!(b.stop()?, (143, 143));
        Ok(())
    }

    #[test]
    fn the_client_reaches_the_agent_through_a_connect_line() -> Result {
        // A stand-in for the VMM's vsock socket: takes `CONNECT 1024\n`,
        // says OK and splices the stream to the agent's socket.
        let b = TestBox::start()?;
        let vm = b.dir.join("vm.sock");
        let l = UnixListener::bind(&vm)?;
        let agent_path = b.path.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let (mut host, _) = l.accept()?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while host.read(&mut byte)? == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            assert_eq!(line, b"CONNECT 1024");
            host.write_all(b"OK 1073741824\n")?;
            let guest = UnixStream::connect(agent_path)?;
            let (mut h2, g2) = (host.try_clone()?, guest.try_clone()?);
            std::thread::spawn(move || std::io::copy(&mut h2, &mut g2.try_clone()?));
            let (mut g, mut h) = (guest, host);
            std::io::copy(&mut g, &mut h)?;
            Ok(())
        });
        let s = twinbox_agent::client::connect_vm(&vm, twinbox_agent::PORT)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut c = Client::hello(s)?;
        let (out, _, code) = run(&mut c, &exec(1, &["echo", "via vsock"]))?;
        assert_eq!((&out[..], code), (&b"via vsock\n"[..], 0));
        Ok(())
    }
}
