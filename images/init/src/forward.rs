//! Published ports, the guest's side: a connection that asked the agent
//! for `Forward{port}` leaves the agent's poll loop and gets a thread of
//! its own, which connects to `127.0.0.1:port` in the guest, says
//! `Forwarding` (or `Failed`, and closes) and relays the two streams with
//! `twinbox_agent::relay` until both ends are done.
//!
//! The connect happens on that thread, so a port whose listen queue is
//! full holds up only its own connection, never the agent. Bounded: at
//! most [`MAX_FORWARDS`] at once (more are refused), each with a small
//! stack.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use twinbox_agent::{Message, MAIN_ID};

/// Most forwarded connections at once.
pub const MAX_FORWARDS: usize = 512;

/// How long a connect to the guest's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Stack of a forwarding thread (the relay's buffers are on the heap).
const STACK: usize = 64 * 1024;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counts one forwarded connection while it lives.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        RUNNING
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_FORWARDS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !bytes.is_empty() {
        // SAFETY: writes from the slice we hold, at most its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

fn set_blocking(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_GETFL/F_SETFL take integers on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
}

/// Takes over `conn` (greeted; `queued` is what the agent still had to
/// send it) to forward it to `port`; an error if no thread is free, with
/// `conn` handed back so the agent can refuse it.
pub fn start(conn: OwnedFd, queued: Vec<u8>, port: u16) -> Result<(), (OwnedFd, String)> {
    let Some(slot) = Slot::take() else {
        return Err((
            conn,
            format!("{MAX_FORWARDS} forwarded connections already"),
        ));
    };
    // The descriptor moves into the thread only once it exists.
    let cell = std::sync::Arc::new(std::sync::Mutex::new(Some(conn)));
    let inner = cell.clone();
    let spawned = std::thread::Builder::new()
        .name("forward".into())
        .stack_size(STACK)
        .spawn(move || {
            let _slot = slot;
            let conn = inner.lock().ok().and_then(|mut c| c.take());
            if let Some(conn) = conn {
                run(conn, queued, port);
            }
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => match cell.lock().ok().and_then(|mut c| c.take()) {
            Some(conn) => Err((conn, format!("no thread for the connection: {e}"))),
            None => Ok(()),
        },
    }
}

fn run(conn: OwnedFd, mut out: Vec<u8>, port: u16) {
    set_blocking(&conn);
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT);
    let answer = match &tcp {
        Ok(_) => Message::Forwarding,
        Err(e) => Message::Failed {
            id: MAIN_ID,
            message: format!("connecting to {to} in the guest: {e}"),
        },
    };
    if answer.encode_into(&mut out).is_err() || write_all(&conn, &out).is_err() {
        return;
    }
    if let Ok(tcp) = tcp {
        twinbox_agent::relay::relay(conn, tcp.into());
    }
}
