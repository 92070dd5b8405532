//! Published ports, the host's side: the supervisor listens on each host
//! address and port a box publishes, and takes every connection into the
//! box, with no bridge, no iptables and no network device in the box.
//!
//! - **Container**: the connection's thread enters the box's network
//!   namespace (`setns`, which changes only the calling thread) and
//!   connects to `127.0.0.1:BOX_PORT` there; the listener was made in the
//!   host's namespace and stays in it.
//! - **VM**: the thread connects to the guest agent over vsock and asks it
//!   for `Forward{BOX_PORT}` (`twinbox_agent::client::forward`); the agent
//!   connects inside the guest. The guest still has no network device.
//!
//! Either way the two streams are then relayed by `twinbox_agent::relay`
//! (splice, both ways, half-closes passed on). A box port nobody listens
//! on closes the host connection at once. The ports are bound before the
//! box starts ([`bind`]), so a port already taken is an error before
//! anything runs. At most [`MAX_CONNECTIONS`] at once per box: beyond
//! that, new connections wait in the listen queue.
//!
//! `/udp` ports are bound here too and served by [`super::udp`].

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use twinbox_agent::pool::Pool;

use crate::boxes::ports::{Binding, PortSpec};

/// Most connections relayed at once, per box.
pub const MAX_CONNECTIONS: usize = 1024;

/// How long reaching the box's port may take (a guest agent under an
/// emulating hypervisor is slow).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Stack of a connection's thread.
const STACK: usize = 128 * 1024;

/// How long a connection's thread is kept for the next one.
const IDLE: Duration = Duration::from_secs(2);

/// A port that could not be published.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address and port are someone else's.
    #[error("cannot publish {addr}: it is already in use")]
    Taken {
        /// The host address and port.
        addr: SocketAddr,
    },
    /// Binding failed otherwise (no such address, no permission).
    #[error("cannot publish {addr}")]
    Bind {
        /// The host address and port.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The listening thread or its wake pipe could not be made.
    #[error("starting the port listener")]
    Start(#[source] std::io::Error),
    /// A UDP port (`super::udp`).
    #[error(transparent)]
    Udp(#[from] super::udp::Error),
}

/// The bound listeners of a box, not yet served (and its UDP sockets).
pub struct Listeners(Vec<(Binding, TcpListener)>, super::udp::Sockets);

/// Binds every port of `specs`, in order; nothing stays bound on error.
pub fn bind(specs: &[PortSpec]) -> Result<Listeners, Error> {
    let mut out = Vec::new();
    let mut udp = super::udp::Sockets::default();
    for s in specs {
        if s.proto == crate::boxes::ports::Proto::Udp {
            udp.bind(s)?;
            continue;
        }
        let addr = SocketAddr::new(s.host_ip, s.host_port);
        let l = TcpListener::bind(addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => Error::Taken { addr },
            _ => Error::Bind { addr, source: e },
        })?;
        let got = l
            .local_addr()
            .map_err(|e| Error::Bind { addr, source: e })?;
        l.set_nonblocking(true)
            .map_err(|e| Error::Bind { addr, source: e })?;
        out.push((
            Binding {
                host_ip: s.host_ip,
                host_port: got.port(),
                box_port: s.box_port,
                proto: s.proto,
            },
            l,
        ));
    }
    Ok(Listeners(out, udp))
}

impl Listeners {
    /// What was bound, for the box's record.
    pub fn bindings(&self) -> Vec<Binding> {
        let tcp = self.0.iter().map(|(b, _)| b.clone());
        tcp.chain(self.1.bindings()).collect()
    }

    /// Whether there is nothing to serve.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty() && self.1.is_empty()
    }
}

/// Where connections go.
#[derive(Clone)]
pub enum Target {
    /// A container: its network namespace (`/proc/PID/ns/net`).
    Netns(Arc<OwnedFd>),
    /// A VM: its vsock Unix socket.
    Vm(PathBuf),
}

/// Serving listeners: stops (and closes them) when dropped; relayed
/// connections end with the box.
pub struct Server {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    active: Arc<AtomicUsize>,
    _udp: super::udp::Server,
}

impl Server {
    /// Connections being relayed now.
    #[allow(dead_code)]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts taking connections on `l` into `target`.
pub fn serve(mut l: Listeners, target: Target) -> Result<Server, Error> {
    let udp = std::mem::take(&mut l.1);
    let udp = super::udp::serve(udp, target.clone(), Default::default())?;
    let (stop_r, stop_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Start(e.into()))?;
    let active = Arc::new(AtomicUsize::new(0));
    let a = active.clone();
    let thread = std::thread::Builder::new()
        .name("ports".into())
        .spawn(move || accept_loop(l, target, stop_r, a))
        .map_err(Error::Start)?;
    Ok(Server {
        stop: Some(stop_w),
        thread: Some(thread),
        active,
        _udp: udp,
    })
}

fn accept_loop(l: Listeners, target: Target, stop: OwnedFd, active: Arc<AtomicUsize>) {
    let pool = pool_for(&target);
    serve_until_stopped(&l, &target, &stop, &pool, &active);
    // Idle threads end now, busy ones with their connection.
    pool.close();
}

fn serve_until_stopped(
    l: &Listeners,
    target: &Target,
    stop: &OwnedFd,
    pool: &Pool,
    active: &Arc<AtomicUsize>,
) {
    loop {
        let full = active.load(Ordering::SeqCst) >= MAX_CONNECTIONS;
        let mut fds = vec![libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if !full {
            fds.extend(l.0.iter().map(|(_, s)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }));
        }
        // While full, look again now and then for a free slot.
        let timeout = if full { 50 } else { -1 };
        // SAFETY: poll on the array we own, its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        // The supervisor dropped its end: stop.
        if fds[0].revents != 0 {
            return;
        }
        for (i, p) in fds.iter().enumerate().skip(1) {
            if p.revents == 0 {
                continue;
            }
            let (binding, listener) = &l.0[i - 1];
            while active.load(Ordering::SeqCst) < MAX_CONNECTIONS {
                let Ok((client, _)) = listener.accept() else {
                    break;
                };
                start_connection(client, binding.box_port, target, pool, active);
            }
        }
    }
}

/// Counts a connection while its thread lives.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The threads connections run on: for a container, each has entered the
/// box's network namespace once, before its first connection (a thread
/// that could not runs none).
fn pool_for(target: &Target) -> Pool {
    // Two threads a connection: one per direction.
    let max = 2 * MAX_CONNECTIONS;
    match target {
        Target::Netns(ns) => {
            let ns = ns.clone();
            Pool::with_setup("port", STACK, max, IDLE, move || {
                nix::sched::setns(ns.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET).is_ok()
            })
        }
        Target::Vm(_) => Pool::new("port", STACK, max, IDLE),
    }
}

fn start_connection(
    client: TcpStream,
    port: u16,
    target: &Target,
    pool: &Pool,
    active: &Arc<AtomicUsize>,
) {
    active.fetch_add(1, Ordering::SeqCst);
    let slot = Slot(active.clone());
    let target = target.clone();
    let threads = pool.clone();
    // A connection the pool has no thread for is closed (the slot with it):
    // it must not run on a thread outside the box's namespace.
    let _ = pool.run(Box::new(move || {
        let _slot = slot;
        match reach(&target, port) {
            Some(inner) => {
                let _ = client.set_nodelay(true);
                twinbox_agent::relay::relay_on(Some(&threads), client.into(), inner);
            }
            None => close_cleanly(client),
        }
    }));
}

/// Ends a connection the box could not take with a FIN, not a reset:
/// what the client already sent is read first (closing a socket with
/// unread bytes resets it, which clients report as an error of their
/// own rather than as "nothing there").
fn close_cleanly(mut client: TcpStream) {
    use std::io::Read;
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let mut left = 256 * 1024usize;
    while left > 0 {
        match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// The box's side of a new connection to `port`; `None` (the host
/// connection is then closed) if nothing listens there or the box is gone.
fn reach(target: &Target, port: u16) -> Option<OwnedFd> {
    match target {
        // The pool's thread is in the box's namespace already.
        Target::Netns(_) => {
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            let s = TcpStream::connect_timeout(&to, CONNECT_TIMEOUT).ok()?;
            let _ = s.set_nodelay(true);
            Some(s.into())
        }
        Target::Vm(uds) => {
            let s = twinbox_agent::client::connect_vm(uds, twinbox_agent::PORT).ok()?;
            s.set_read_timeout(Some(CONNECT_TIMEOUT)).ok()?;
            s.set_write_timeout(Some(CONNECT_TIMEOUT)).ok()?;
            let s = twinbox_agent::client::forward(s, port).ok()?;
            s.set_read_timeout(None).ok()?;
            s.set_write_timeout(None).ok()?;
            Some(s.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::ports::Proto;
    use std::io::{Read, Write};

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    fn spec(port: u16, box_port: u16) -> PortSpec {
        PortSpec {
            host_ip: [127, 0, 0, 1].into(),
            host_port: port,
            box_port,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn a_taken_port_is_an_error_naming_it_and_nothing_stays_bound() -> Result {
        let taken = TcpListener::bind("127.0.0.1:0")?;
        let port = taken.local_addr()?.port();
        let free = bind(&[spec(0, 80)])?;
        let free_port = free.bindings()[0].host_port;
        drop(free);
        match bind(&[spec(free_port, 80), spec(port, 81)]) {
            Err(e @ Error::Taken { .. }) => {
                assert_eq!(
                    e.to_string(),
                    format!("cannot publish 127.0.0.1:{port}: it is already in use")
                );
            }
            other => panic!("{:?}", other.err()),
        }
        // The first port of the failed set was let go.
        let again = TcpListener::bind(("127.0.0.1", free_port))?;
        drop(again);
        Ok(())
    }

    /// The host's own network namespace as a "box": a server on
    /// 127.0.0.1 is reached through the published port.
    #[test]
    fn connections_reach_the_namespace_and_a_closed_port_closes_them() -> Result {
        let server = TcpListener::bind("127.0.0.1:0")?;
        let box_port = server.local_addr()?.port();
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
        let closed = TcpListener::bind("127.0.0.1:0")?;
        let dead_port = closed.local_addr()?.port();
        drop(closed);
        let l = bind(&[spec(0, box_port), spec(0, dead_port)])?;
        let b = l.bindings();
        let ns = std::fs::File::open("/proc/self/ns/net")?;
        let server = serve(l, Target::Netns(Arc::new(ns.into())))?;
        for i in 0..200 {
            let mut c = TcpStream::connect(("127.0.0.1", b[0].host_port))?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.write_all(format!("request {i}").as_bytes())?;
            c.shutdown(std::net::Shutdown::Write)?;
            let mut back = String::new();
            c.read_to_string(&mut back)?;
            assert_eq!(back, format!("request {i}"));
        }
        let mut c = TcpStream::connect(("127.0.0.1", b[1].host_port))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        // What the client sent does not turn the close into a reset.
        c.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut nothing = Vec::new();
        let r = c.read_to_end(&mut nothing);
        assert!(
            r.is_ok_and(|n| n == 0),
            "a closed box port gave {nothing:?}"
        );
        // Every connection's thread is gone.
        let t0 = std::time::Instant::now();
        while server.active() > 0 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.active(), 0);
        drop(server);
        // Dropping the server closed the listeners.
        assert!(TcpStream::connect(("127.0.0.1", b[0].host_port)).is_err());
        Ok(())
    }
}
