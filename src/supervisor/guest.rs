//! A VM box's supervisor and the guest agent (init, on vsock port
//! [`twinbox_agent::PORT`]), reached through the VM's vsock Unix socket.
//!
//! The supervisor keeps one control connection: the agent's `Started` for
//! the main workload is the sign that the box runs, `Signal{0, N}` is how
//! `stop` and `kill` reach the workload. Each exec opens a connection of
//! its own, whose two threads relay the caller's descriptors (handed over
//! on the control socket) to `Stdin` frames and `Stdout`/`Stderr` frames
//! back, and answer the caller with the process's exit. Everything the
//! guest sends is decoded by `twinbox-agent`'s bounded decoder: a frame
//! the protocol does not allow ends the connection, never the supervisor.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use twinbox_agent::client::{connect_vm, Client, Sender};
use twinbox_agent::{Exec, Message, MAIN_ID, PORT};

use crate::boxes::control::{self, ExecRequest, Reply};
use crate::terminal;

/// Longest wait for the rest of a message the guest started, or for its
/// answer to a hello or an exec.
const GUEST_REPLY: Duration = Duration::from_secs(10);

/// The control connection to a VM's agent.
pub struct Agent {
    uds: PathBuf,
    client: Client<UnixStream>,
    fd: RawFd,
    /// The main workload's pid in the guest.
    pub main_pid: u32,
    next_id: u32,
}

/// Connects to the agent of the VM whose socket is `uds`, retrying while
/// the guest boots (until `limit`, or `gone` says the VM ended).
pub fn connect(uds: &Path, limit: Duration, gone: impl Fn() -> bool) -> Result<Agent> {
    let t0 = Instant::now();
    // Each refused try costs the guest a packet: back off to 200 ms.
    let mut pause = Duration::from_millis(10);
    loop {
        if let Ok(s) = connect_vm(uds, PORT) {
            // A connection made just after a restore can still be reset by
            // the guest's handling of the device's transport reset: try
            // again then, as when the guest did not listen yet.
            match hello(s) {
                Ok(agent) => {
                    return Ok(Agent {
                        uds: uds.to_path_buf(),
                        ..agent
                    })
                }
                Err(e) if t0.elapsed() > limit => return Err(e),
                Err(_) => {}
            }
        }
        if gone() {
            bail!("the VM stopped before its guest agent answered");
        }
        if t0.elapsed() > limit {
            bail!("the guest agent did not answer in {limit:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The hello and the main workload's `Started` on a fresh connection.
fn hello(s: UnixStream) -> Result<Agent> {
    let fd = s.as_raw_fd();
    // The guest is not trusted to finish what it starts: a frame cut short
    // must not hold the supervisor's loop (then the agent is dropped;
    // SIGKILL still ends the VM).
    s.set_read_timeout(Some(GUEST_REPLY))?;
    let mut client = Client::hello(s).context("the guest agent's hello")?;
    let main_pid = loop {
        match client.recv().context("the guest agent")? {
            Message::Started { id: MAIN_ID, pid } => break pid,
            Message::Exited { id: MAIN_ID, code } => {
                bail!("the workload ended ({code}) before the agent answered")
            }
            _ => {}
        }
    };
    Ok(Agent {
        uds: PathBuf::new(),
        client,
        fd,
        main_pid,
        next_id: 1,
    })
}

impl Agent {
    /// The control connection, for `poll`.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Sends `sig` to the main workload.
    pub fn signal(&mut self, sig: i32) -> Result<()> {
        self.client.sender().signal(MAIN_ID, sig)?;
        Ok(())
    }

    /// Reads what the agent sent on the control connection; `false` when
    /// it closed (the guest powers off) or broke the protocol.
    pub fn drain(&mut self) -> bool {
        self.client.recv().is_ok()
    }

    /// Starts `x` in the guest, relaying `fds` (stdin, stdout, stderr);
    /// answers `reply` with `Started`, then `Exit`, itself. Its terminal
    /// gets `size`, or the size of the terminal `fds[1]` is. Returns the
    /// exec's handle for resizes and signals.
    #[allow(clippy::too_many_arguments)]
    pub fn exec(
        &mut self,
        x: &ExecRequest,
        env: Vec<String>,
        cwd: String,
        user: String,
        fds: Vec<OwnedFd>,
        reply: UnixStream,
        size: Option<(u16, u16)>,
    ) -> std::result::Result<ExecHandle, Reply> {
        let err = |m: String| Reply::Error {
            message: m,
            code: 125,
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let s = connect_vm(&self.uds, PORT).map_err(|e| err(format!("the guest agent: {e}")))?;
        s.set_read_timeout(Some(GUEST_REPLY))
            .map_err(|e| err(format!("the guest agent: {e}")))?;
        let relay = s
            .try_clone()
            .map_err(|e| err(format!("the guest agent: {e}")))?;
        let mut c = Client::hello(s).map_err(|e| err(format!("the guest agent: {e}")))?;
        let mut fds = fds.into_iter();
        let stdin = fds.next();
        let stdout = fds.next();
        let stderr = fds.next();
        let (rows, cols) = size
            .or_else(|| {
                stdout
                    .as_ref()
                    .and_then(|f| terminal::winsize(f.as_raw_fd()))
            })
            .unwrap_or((0, 0));
        let req = Exec {
            id,
            argv: x.argv.clone(),
            env,
            cwd,
            user,
            tty: x.tty,
            rows,
            cols,
            stdin: x.interactive,
            detach: x.detach,
        };
        let pid = match c.exec(&req) {
            Ok(pid) => pid,
            Err(twinbox_agent::client::Error::Refused { message, .. }) => {
                return Err(Reply::Error { message, code: 126 })
            }
            Err(e) => return Err(err(format!("the guest agent: {e}"))),
        };
        let _ = control::send(&reply, &Reply::Started { pid: pid as i32 }, &[]);
        // From here a thread of its own waits on the guest, as long as the
        // process runs.
        let _ = relay.set_read_timeout(None);
        let sender = c
            .try_sender()
            .map_err(|e| err(format!("the guest agent: {e}")))?;
        let sender = Arc::new(Mutex::new(sender));
        if x.detach {
            return Ok(ExecHandle { id, sender });
        }
        // The stdin pump stops when the process has ended (its end of
        // this pipe closes): the caller's stdin is often its terminal,
        // which outlives the exec, and must not be read after it.
        let mut pump_stop = None;
        if let (true, Some(input)) = (x.interactive, stdin) {
            let s = sender.clone();
            let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| err(format!("a pipe for the exec's stdin: {e}")))?;
            pump_stop = Some(stop_w);
            let _ = std::thread::Builder::new()
                .name(format!("exec-{id}-in"))
                .spawn(move || pump_stdin(input, id, &s, &stop_r));
        }
        let _ = std::thread::Builder::new()
            .name(format!("exec-{id}"))
            .spawn(move || {
                let code = relay_output(&mut c, id, stdout, stderr);
                drop(pump_stop);
                let r = match code {
                    Ok(code) => Reply::Exit { code },
                    Err(e) => Reply::Error {
                        message: format!("the guest agent: {e}"),
                        code: 125,
                    },
                };
                let _ = control::send(&reply, &r, &[]);
            });
        Ok(ExecHandle { id, sender })
    }
}

/// A running exec's way to its terminal.
pub struct ExecHandle {
    id: u32,
    sender: Arc<Mutex<Sender<UnixStream>>>,
}

impl ExecHandle {
    /// Sets its terminal's size.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let mut s = self
            .sender
            .lock()
            .map_err(|_| anyhow::anyhow!("exec {}: a relay thread panicked", self.id))?;
        s.resize(self.id, rows, cols)?;
        Ok(())
    }

    /// Sends it `sig`.
    pub fn signal(&self, sig: i32) -> Result<()> {
        let mut s = self
            .sender
            .lock()
            .map_err(|_| anyhow::anyhow!("exec {}: a relay thread panicked", self.id))?;
        s.signal(self.id, sig)?;
        Ok(())
    }
}

/// Sends what `input` gives as `id`'s stdin, until it ends or `stop`'s
/// other end is closed (the process ended).
fn pump_stdin(input: OwnedFd, id: u32, s: &Mutex<Sender<UnixStream>>, stop: &OwnedFd) {
    let mut f = std::fs::File::from(input);
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: f.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on the array we own, its length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        let n = match f.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let Ok(mut s) = s.lock() else {
            return;
        };
        if n == 0 {
            let _ = s.stdin_eof(id);
            return;
        }
        if s.stdin(id, &buf[..n]).is_err() {
            return;
        }
    }
}

fn relay_output(
    c: &mut Client<UnixStream>,
    id: u32,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
) -> std::result::Result<i32, twinbox_agent::client::Error> {
    let out = stdout.as_ref().map(|f| f.as_raw_fd());
    let err = stderr.as_ref().map(|f| f.as_raw_fd()).or(out);
    let mut out_ok = true;
    let mut err_ok = true;
    loop {
        match c.recv()? {
            Message::Stdout { id: i, data } if i == id => {
                if let (Some(fd), true) = (out, out_ok) {
                    out_ok = terminal::write_all(fd, &data).is_ok();
                }
            }
            Message::Stderr { id: i, data } if i == id => {
                if let (Some(fd), true) = (err, err_ok) {
                    err_ok = terminal::write_all(fd, &data).is_ok();
                }
            }
            Message::Exited { id: i, code } if i == id => return Ok(code),
            Message::Failed { id: i, message } if i == id => {
                return Err(twinbox_agent::client::Error::Refused { id, message })
            }
            _ => {}
        }
    }
}
