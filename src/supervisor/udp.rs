//! Published UDP ports (`-p HOST:BOX/udp`), the host's side: a userland
//! proxy, as Docker's docker-proxy is for UDP, with no bridge, no
//! iptables and no network device in the box.
//!
//! The supervisor binds each published address before the box starts
//! ([`Sockets::bind`]; a taken one fails the start). Once the box runs,
//! one thread ([`serve`]) polls them all. Each client address (per
//! published port) gets a *flow*: its datagrams go into the box from a
//! socket of their own, and what comes back on that socket is sent to the
//! client from the published socket, so the client sees its replies come
//! from the address it sent to.
//!
//! - **Container**: the thread enters the box's network namespace
//!   (`setns`, which moves only the calling thread) before it serves; the
//!   published sockets were made by the supervisor in the host's namespace
//!   and stay there, and every flow's socket it makes is the box's, a UDP
//!   socket connected to `127.0.0.1:BOX_PORT` in the box.
//! - **VM**: a flow is a connection to the guest agent over vsock that
//!   asked for `ForwardUdp{BOX_PORT}` (`twinbox_agent::client::forward_udp`;
//!   the agent holds the UDP socket in the guest), then carries datagrams
//!   framed by `twinbox_agent::datagram` both ways. Opening it (connect,
//!   greeting, answer) takes a short-lived thread, so a slow guest holds up
//!   no other flow; the client's datagrams wait for it, up to a bound.
//!   What the guest sends is checked: a bad length ends the flow.
//!
//! Bounds: a flow idle (no datagram either way) for [`IDLE`] is closed,
//! 90 s as Docker's proxy does, so that a client that a Docker setup
//! served keeps its flow here too (Linux's own conntrack keeps an
//! answered UDP flow 120 s); at most [`MAX_FLOWS`] flows per box, and a
//! new client beyond that takes the place of the flow idle the longest
//! (closed, as if it had expired: UDP clients retry, and a full table
//! does not shut new clients out for 90 s); datagrams of at most
//! [`MAX_DATAGRAM`] bytes (larger ones, which only IPv6 clients can send,
//! are dropped); at most [`MAX_OPENING`] VM flows being opened at once
//! (datagrams of new clients beyond it are dropped). Nothing waits on a
//! peer: a datagram that finds a socket or a stream full is dropped, as
//! UDP may drop it. When the server is dropped (the box ends), the
//! thread ends and closes every flow; in a VM, the agent's side of each
//! then closes its socket.

use std::collections::HashMap;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use twinbox_agent::datagram::{Decoder, Outbox};

use super::ports::Target;
use crate::boxes::ports::{Binding, PortSpec};

pub use twinbox_agent::datagram::MAX_DATAGRAM;

/// How long a flow lives without a datagram either way.
pub const IDLE: Duration = Duration::from_secs(90);

/// Most flows at once, per box (all its UDP ports together).
pub const MAX_FLOWS: usize = 512;

/// Most VM flows being opened at once.
pub const MAX_OPENING: usize = 64;

/// Bytes of a client's datagrams kept while its VM flow is being opened.
const OPENING_BYTES: usize = 256 * 1024;

/// Bytes queued to a VM flow's stream before its datagrams are dropped.
const STREAM_BYTES: usize = 256 * 1024;

/// How long opening a VM flow may take (a guest agent under an emulating
/// hypervisor is slow).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Datagrams (or stream reads) taken from one socket per wake-up, so that
/// a busy one does not starve the others.
const BURST: usize = 64;

/// Stack of a thread that opens a VM flow.
const STACK: usize = 128 * 1024;

/// A UDP port that could not be published or served.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address and port are someone else's.
    #[error("cannot publish {addr}/udp: it is already in use")]
    Taken {
        /// The host address and port.
        addr: SocketAddr,
    },
    /// Binding failed otherwise (no such address, no permission).
    #[error("cannot publish {addr}/udp")]
    Bind {
        /// The host address and port.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The serving thread or its wake-ups could not be made.
    #[error("starting the UDP port relay")]
    Start(#[source] std::io::Error),
    /// The serving thread could not enter the box's network namespace.
    #[error("entering the box's network namespace for its UDP ports")]
    Netns(#[source] nix::Error),
}

/// The bound UDP sockets of a box, not yet served.
#[derive(Default)]
pub struct Sockets(Vec<(Binding, UdpSocket)>);

impl Sockets {
    /// Binds the host side of `spec` (a `/udp` one).
    pub fn bind(&mut self, spec: &PortSpec) -> Result<(), Error> {
        let addr = SocketAddr::new(spec.host_ip, spec.host_port);
        let s = UdpSocket::bind(addr).map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => Error::Taken { addr },
            _ => Error::Bind { addr, source: e },
        })?;
        let got = s
            .local_addr()
            .map_err(|e| Error::Bind { addr, source: e })?;
        s.set_nonblocking(true)
            .map_err(|e| Error::Bind { addr, source: e })?;
        self.0.push((
            Binding {
                host_ip: spec.host_ip,
                host_port: got.port(),
                box_port: spec.box_port,
                proto: spec.proto,
            },
            s,
        ));
        Ok(())
    }

    /// What was bound.
    pub fn bindings(&self) -> impl Iterator<Item = Binding> + '_ {
        self.0.iter().map(|(b, _)| b.clone())
    }

    /// Whether nothing was bound.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The bounds of a server ([`IDLE`], [`MAX_FLOWS`]; tests make them small).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a flow lives without a datagram.
    pub idle: Duration,
    /// Most flows at once.
    pub max_flows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: IDLE,
            max_flows: MAX_FLOWS,
        }
    }
}

/// Serving UDP ports: stops, closing every flow and socket, when dropped.
pub struct Server {
    stop: Option<OwnedFd>,
    thread: Option<std::thread::JoinHandle<()>>,
    flows: Arc<AtomicUsize>,
}

impl Server {
    /// Flows open now.
    #[allow(dead_code)]
    pub fn flows(&self) -> usize {
        self.flows.load(Ordering::SeqCst)
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

/// Starts relaying the datagrams of `sockets` into `target`; with no
/// sockets, nothing runs.
pub fn serve(sockets: Sockets, target: Target, limits: Limits) -> Result<Server, Error> {
    let flows = Arc::new(AtomicUsize::new(0));
    if sockets.is_empty() {
        return Ok(Server {
            stop: None,
            thread: None,
            flows,
        });
    }
    let (stop_r, stop_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Start(e.into()))?;
    let (wake_r, wake_w) = UnixDatagram::pair().map_err(Error::Start)?;
    wake_r.set_nonblocking(true).map_err(Error::Start)?;
    wake_w.set_nonblocking(true).map_err(Error::Start)?;
    let (opened_tx, opened_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let count = flows.clone();
    let thread = std::thread::Builder::new()
        .name("udp-ports".into())
        .spawn(move || {
            // Every socket this thread makes from here on is the box's.
            if let Target::Netns(ns) = &target {
                if let Err(e) = nix::sched::setns(ns.as_ref(), nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            Relay {
                sockets: sockets.0,
                target,
                limits,
                flows: HashMap::new(),
                ids: HashMap::new(),
                next_id: 0,
                opened_tx,
                opened_rx,
                wake_r,
                wake_w: Arc::new(wake_w),
                opening: Arc::new(AtomicUsize::new(0)),
                count,
                buf: vec![0u8; 64 * 1024],
            }
            .run(stop_r);
        })
        .map_err(Error::Start)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Server {
            stop: Some(stop_w),
            thread: Some(thread),
            flows,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(Error::Netns(e))
        }
        Err(_) => {
            let _ = thread.join();
            Err(Error::Start(std::io::ErrorKind::BrokenPipe.into()))
        }
    }
}

/// One client's flow.
struct Flow {
    /// Which published socket (index).
    port: usize,
    /// The client's address.
    client: SocketAddr,
    /// The last datagram, either way.
    last: Instant,
    way: Way,
}

/// How a flow reaches the box.
enum Way {
    /// A container: a UDP socket in the box's namespace, connected to
    /// the box port.
    Socket(UdpSocket),
    /// A VM flow being opened: the client's datagrams so far.
    Opening { queue: Vec<Vec<u8>>, bytes: usize },
    /// A VM flow: a stream to the guest agent, carrying framed datagrams.
    Stream {
        s: UnixStream,
        from_guest: Decoder,
        to_guest: Outbox,
    },
}

/// What a poll entry is.
#[derive(Clone, Copy)]
enum Entry {
    Stop,
    Wake,
    Published(usize),
    Flow(u64),
}

/// The serving thread's state.
struct Relay {
    sockets: Vec<(Binding, UdpSocket)>,
    target: Target,
    limits: Limits,
    flows: HashMap<u64, Flow>,
    /// Flows by published socket and client.
    ids: HashMap<(usize, SocketAddr), u64>,
    next_id: u64,
    /// Opened VM flows (or `None`: it could not be), from their threads.
    opened_tx: mpsc::Sender<(u64, Option<UnixStream>)>,
    opened_rx: mpsc::Receiver<(u64, Option<UnixStream>)>,
    /// A byte on it after each `opened_tx` send, to wake the poll.
    wake_r: UnixDatagram,
    wake_w: Arc<UnixDatagram>,
    /// VM flows being opened (their threads).
    opening: Arc<AtomicUsize>,
    /// `flows.len()`, for [`Server::flows`].
    count: Arc<AtomicUsize>,
    /// One datagram.
    buf: Vec<u8>,
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Whether an error means "try later" (the datagram is then dropped).
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

impl Relay {
    fn run(mut self, stop: OwnedFd) {
        let mut fds = Vec::new();
        let mut entries = Vec::new();
        loop {
            fds.clear();
            entries.clear();
            fds.push(pollfd(stop.as_raw_fd(), libc::POLLIN));
            entries.push(Entry::Stop);
            fds.push(pollfd(self.wake_r.as_raw_fd(), libc::POLLIN));
            entries.push(Entry::Wake);
            for (i, (_, s)) in self.sockets.iter().enumerate() {
                fds.push(pollfd(s.as_raw_fd(), libc::POLLIN));
                entries.push(Entry::Published(i));
            }
            for (&id, f) in &self.flows {
                let (fd, events) = match &f.way {
                    Way::Socket(s) => (s.as_raw_fd(), libc::POLLIN),
                    Way::Opening { .. } => continue,
                    Way::Stream { s, to_guest, .. } => {
                        let out = if to_guest.is_empty() {
                            0
                        } else {
                            libc::POLLOUT
                        };
                        (s.as_raw_fd(), libc::POLLIN | out)
                    }
                };
                fds.push(pollfd(fd, events));
                entries.push(Entry::Flow(id));
            }
            let timeout = self.next_expiry();
            // SAFETY: poll on the array we own, its length.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            for (p, &e) in fds.iter().zip(&entries) {
                if p.revents == 0 {
                    continue;
                }
                match e {
                    // The supervisor dropped its end: stop, closing all.
                    Entry::Stop => return,
                    Entry::Wake => self.take_opened(),
                    Entry::Published(i) => self.take_from_clients(i),
                    Entry::Flow(id) => self.take_from_box(id, p.revents),
                }
            }
            self.expire();
            self.count.store(self.flows.len(), Ordering::SeqCst);
        }
    }

    /// Milliseconds until the next flow expires (-1: none).
    fn next_expiry(&self) -> libc::c_int {
        let Some(last) = self.flows.values().map(|f| f.last).min() else {
            return -1;
        };
        let left = (last + self.limits.idle).saturating_duration_since(Instant::now());
        // Rounded up, so that the wake-up finds it expired.
        left.as_millis().saturating_add(1).min(i32::MAX as u128) as libc::c_int
    }

    fn expire(&mut self) {
        let now = Instant::now();
        let idle = self.limits.idle;
        let old: Vec<u64> = self
            .flows
            .iter()
            .filter(|(_, f)| now.duration_since(f.last) >= idle)
            .map(|(&id, _)| id)
            .collect();
        for id in old {
            self.close(id);
        }
    }

    fn close(&mut self, id: u64) {
        if let Some(f) = self.flows.remove(&id) {
            self.ids.remove(&(f.port, f.client));
        }
    }

    /// Datagrams from clients on published socket `i`, each into its flow.
    fn take_from_clients(&mut self, i: usize) {
        for _ in 0..BURST {
            let (n, client) = match self.sockets[i].1.recv_from(&mut self.buf) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if n > MAX_DATAGRAM {
                continue;
            }
            let id = match self.ids.get(&(i, client)) {
                Some(&id) => id,
                None => match self.open(i, client) {
                    Some(id) => id,
                    None => continue,
                },
            };
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            f.last = Instant::now();
            let d = &self.buf[..n];
            let alive = match &mut f.way {
                Way::Socket(s) => {
                    // An earlier datagram's "port unreachable" fails the
                    // next send once; the server may be there by now.
                    if s.send(d)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
                    {
                        let _ = s.send(d);
                    }
                    true
                }
                Way::Opening { queue, bytes } => {
                    if *bytes + n <= OPENING_BYTES {
                        queue.push(d.to_vec());
                        *bytes += n;
                    }
                    true
                }
                Way::Stream { s, to_guest, .. } => {
                    let _ = to_guest.push(d);
                    to_guest.flush(&mut &*s).is_ok()
                }
            };
            if !alive {
                self.close(id);
            }
        }
    }

    /// A new flow for `client` on published socket `i`; `None` (the
    /// datagram is dropped) if it cannot be made now.
    fn open(&mut self, i: usize, client: SocketAddr) -> Option<u64> {
        if self.flows.len() >= self.limits.max_flows {
            let oldest = self
                .flows
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(&id, _)| id);
            if let Some(id) = oldest {
                self.close(id);
            }
        }
        let id = self.next_id;
        let box_port = self.sockets[i].0.box_port;
        let way = match &self.target {
            Target::Netns(_) => Way::Socket(connect_in_box(box_port).ok()?),
            Target::Vm(uds) => {
                self.start_opening(id, uds.clone(), box_port)?;
                Way::Opening {
                    queue: Vec::new(),
                    bytes: 0,
                }
            }
        };
        self.next_id += 1;
        self.flows.insert(
            id,
            Flow {
                port: i,
                client,
                last: Instant::now(),
                way,
            },
        );
        self.ids.insert((i, client), id);
        Some(id)
    }

    /// Opens VM flow `id` on a thread of its own; its stream (or `None`)
    /// comes back on `opened_tx`.
    fn start_opening(&self, id: u64, uds: PathBuf, port: u16) -> Option<()> {
        let slot = Slot::take(&self.opening, MAX_OPENING)?;
        let tx = self.opened_tx.clone();
        let wake = self.wake_w.clone();
        std::thread::Builder::new()
            .name("udp-open".into())
            .stack_size(STACK)
            .spawn(move || {
                let _slot = slot;
                let _ = tx.send((id, open_in_vm(&uds, port)));
                let _ = wake.send(&[1]);
            })
            .ok()
            .map(|_| ())
    }

    /// VM flows whose opening ended.
    fn take_opened(&mut self) {
        let mut b = [0u8; 64];
        while self.wake_r.recv(&mut b).is_ok() {}
        while let Ok((id, stream)) = self.opened_rx.try_recv() {
            // Gone meanwhile (expired, or made room for another): the
            // stream is dropped, which ends the agent's side.
            let Some(f) = self.flows.get_mut(&id) else {
                continue;
            };
            let Way::Opening { queue, .. } = &mut f.way else {
                continue;
            };
            let Some(s) = stream else {
                self.close(id);
                continue;
            };
            let mut to_guest = Outbox::new(STREAM_BYTES);
            for d in queue.drain(..) {
                let _ = to_guest.push(&d);
            }
            let alive = to_guest.flush(&mut &s).is_ok();
            f.way = Way::Stream {
                s,
                from_guest: Decoder::new(),
                to_guest,
            };
            if !alive {
                self.close(id);
            }
        }
    }

    /// Flow `id`'s socket or stream is ready: replies to its client, and
    /// (a stream) the datagrams it could not take before.
    fn take_from_box(&mut self, id: u64, revents: libc::c_short) {
        let Some(f) = self.flows.get_mut(&id) else {
            return;
        };
        let published = &self.sockets[f.port].1;
        let got = match &mut f.way {
            Way::Socket(s) => replies_from_socket(s, published, f.client, &mut self.buf),
            Way::Opening { .. } => Some(false),
            Way::Stream {
                s,
                from_guest,
                to_guest,
            } => {
                let mut got = Some(false);
                if revents & libc::POLLOUT != 0 && to_guest.flush(&mut &*s).is_err() {
                    got = None;
                }
                if got.is_some() && revents & !libc::POLLOUT != 0 {
                    got = replies_from_stream(s, from_guest, published, f.client);
                }
                got
            }
        };
        match got {
            Some(true) => f.last = Instant::now(),
            Some(false) => {}
            None => self.close(id),
        }
    }
}

/// Sends `client` what the box's side of its flow has for it; whether
/// anything came, or `None` if the socket failed.
fn replies_from_socket(
    s: &UdpSocket,
    published: &UdpSocket,
    client: SocketAddr,
    buf: &mut [u8],
) -> Option<bool> {
    let mut got = false;
    for _ in 0..BURST {
        match s.recv(buf) {
            Ok(n) => {
                let _ = published.send_to(&buf[..n], client);
                got = true;
            }
            // Nothing listens on the box port (yet): that datagram is lost,
            // the flow stays.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if transient(&e) => break,
            Err(_) => return None,
        }
    }
    Some(got)
}

/// As [`replies_from_socket`], from a VM flow's stream: `None` also when
/// the guest closed it or sent a bad length.
fn replies_from_stream(
    s: &UnixStream,
    from_guest: &mut Decoder,
    published: &UdpSocket,
    client: SocketAddr,
) -> Option<bool> {
    let mut got = false;
    for _ in 0..BURST {
        match (&*s).read(from_guest.space()) {
            Ok(0) => return None,
            Ok(n) => from_guest.filled(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if transient(&e) => break,
            Err(_) => return None,
        }
        loop {
            match from_guest.next_datagram() {
                Ok(Some(d)) => {
                    let _ = published.send_to(d, client);
                    got = true;
                }
                Ok(None) => break,
                Err(_) => return None,
            }
        }
    }
    Some(got)
}

/// A UDP socket connected to `127.0.0.1:port` in the calling thread's
/// network namespace (the serving thread is in the box's).
fn connect_in_box(port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    s.connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A new connection to the guest agent of the VM at `uds`, made a flow
/// of the guest's UDP `port`, non-blocking; `None` if it cannot be.
fn open_in_vm(uds: &Path, port: u16) -> Option<UnixStream> {
    let s = twinbox_agent::client::connect_vm(uds, twinbox_agent::PORT).ok()?;
    s.set_read_timeout(Some(OPEN_TIMEOUT)).ok()?;
    s.set_write_timeout(Some(OPEN_TIMEOUT)).ok()?;
    let s = twinbox_agent::client::forward_udp(s, port).ok()?;
    s.set_read_timeout(None).ok()?;
    s.set_write_timeout(None).ok()?;
    s.set_nonblocking(true).ok()?;
    Some(s)
}

/// Counts a thread while it lives.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(n: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            (v < max).then_some(v + 1)
        })
        .ok()
        .map(|_| Slot(n.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::ports::Proto;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    fn spec(port: u16, box_port: u16) -> PortSpec {
        PortSpec {
            host_ip: [127, 0, 0, 1].into(),
            host_port: port,
            box_port,
            proto: Proto::Udp,
        }
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(10), "waited for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A UDP echo server on 127.0.0.1 that answers each datagram with
    /// the datagram and the sender's port: `"<datagram> <port>"`.
    fn echo_server() -> Result<u16> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        let port = s.local_addr()?.port();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut reply = buf[..n].to_vec();
                reply.extend_from_slice(format!(" {}", from.port()).as_bytes());
                let _ = s.send_to(&reply, from);
            }
        });
        Ok(port)
    }

    fn client() -> Result<UdpSocket> {
        let c = UdpSocket::bind("127.0.0.1:0")?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(c)
    }

    /// Sends `what` to `port` and reads the echo: its text and the port
    /// the box saw it from.
    fn ask(c: &UdpSocket, port: u16, what: &str) -> Result<(String, u16)> {
        c.send_to(what.as_bytes(), ("127.0.0.1", port))?;
        let mut buf = vec![0u8; 65536];
        let (n, from) = c.recv_from(&mut buf)?;
        assert_eq!(
            from,
            SocketAddr::from(([127, 0, 0, 1], port)),
            "reply's source"
        );
        let text = String::from_utf8(buf[..n].to_vec())?;
        let (echo, seen) = text.rsplit_once(' ').ok_or("no port in the echo")?;
        Ok((echo.to_string(), seen.parse()?))
    }

    fn own_netns() -> Result<Target> {
        let ns = std::fs::File::open("/proc/self/ns/net")?;
        Ok(Target::Netns(Arc::new(ns.into())))
    }

    #[test]
    fn a_taken_udp_port_is_an_error_naming_it_and_tcp_of_the_same_number_is_not() -> Result {
        let taken = UdpSocket::bind("127.0.0.1:0")?;
        let port = taken.local_addr()?.port();
        let mut s = Sockets::default();
        match s.bind(&spec(port, 53)) {
            Err(e @ Error::Taken { .. }) => assert_eq!(
                e.to_string(),
                format!("cannot publish 127.0.0.1:{port}/udp: it is already in use")
            ),
            other => panic!("{:?}", other.err()),
        }
        drop(taken);
        // The same number as tcp and udp at once: two ports.
        let tcp = PortSpec {
            proto: Proto::Tcp,
            ..spec(port, 53)
        };
        let l = super::super::ports::bind(&[tcp, spec(port, 53)])?;
        let shown: Vec<String> = l.bindings().iter().map(Binding::ps).collect();
        assert_eq!(
            shown,
            [
                format!("127.0.0.1:{port}->53/tcp"),
                format!("127.0.0.1:{port}->53/udp")
            ]
        );
        // A free one is chosen for port 0.
        let mut s = Sockets::default();
        s.bind(&spec(0, 53))?;
        assert!(s.bindings().all(|b| b.host_port != 0));
        Ok(())
    }

    /// The host's own network namespace as a "box": datagrams reach a
    /// server on 127.0.0.1, each client with its own flow, and the replies
    /// come back from the published address.
    #[test]
    fn each_client_gets_a_flow_into_the_namespace_and_idle_flows_expire() -> Result {
        let box_port = echo_server()?;
        let mut s = Sockets::default();
        s.bind(&spec(0, box_port))?;
        let port = s.bindings().next().ok_or("no binding")?.host_port;
        let limits = Limits {
            idle: Duration::from_millis(500),
            max_flows: 64,
        };
        let server = serve(s, own_netns()?, limits)?;
        let clients: Vec<UdpSocket> = (0..20).map(|_| client()).collect::<Result<_>>()?;
        let mut seen = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let (echo, from) = ask(c, port, &format!("query {i}"))?;
            assert_eq!(echo, format!("query {i}"));
            // The same client keeps its flow (the same source in the box).
            assert_eq!(ask(c, port, "again")?.1, from);
            seen.push(from);
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 20, "clients shared flows");
        assert_eq!(server.flows(), 20);
        // An empty datagram and a largest one.
        let c = &clients[0];
        c.send_to(b"", ("127.0.0.1", port))?;
        let mut buf = vec![0u8; 65536];
        let (n, _) = c.recv_from(&mut buf)?;
        assert_eq!(buf[..n].first(), Some(&b' '));
        let big = vec![b'x'; MAX_DATAGRAM - 10];
        c.send_to(&big, ("127.0.0.1", port))?;
        let (n, _) = c.recv_from(&mut buf)?;
        assert_eq!(&buf[..big.len()], &big[..], "{n} bytes came back");
        // Idle: every flow goes.
        wait_until("the flows to expire", || server.flows() == 0);
        // And a client that comes back gets a new one.
        assert_eq!(ask(&clients[3], port, "back")?.0, "back");
        assert_eq!(server.flows(), 1);
        drop(server);
        // Dropping the server closed the published socket.
        assert!(UdpSocket::bind(("127.0.0.1", port)).is_ok());
        Ok(())
    }

    #[test]
    fn at_the_flow_limit_the_longest_idle_flow_makes_room() -> Result {
        let box_port = echo_server()?;
        let mut s = Sockets::default();
        s.bind(&spec(0, box_port))?;
        let port = s.bindings().next().ok_or("no binding")?.host_port;
        let limits = Limits {
            idle: IDLE,
            max_flows: 4,
        };
        let server = serve(s, own_netns()?, limits)?;
        let clients: Vec<UdpSocket> = (0..10).map(|_| client()).collect::<Result<_>>()?;
        let mut first = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            first.push(ask(c, port, &format!("{i}"))?.1);
            assert!(server.flows() <= 4);
        }
        assert_eq!(server.flows(), 4);
        // The last four kept theirs; the first one's was taken, and it
        // comes back through a new one.
        assert_eq!(ask(&clients[9], port, "x")?.1, first[9]);
        assert_ne!(ask(&clients[0], port, "x")?.1, first[0]);
        Ok(())
    }

    #[test]
    fn a_box_port_nobody_listens_on_drops_datagrams_until_someone_does() -> Result {
        let gone = UdpSocket::bind("127.0.0.1:0")?;
        let box_port = gone.local_addr()?.port();
        drop(gone);
        let mut s = Sockets::default();
        s.bind(&spec(0, box_port))?;
        let port = s.bindings().next().ok_or("no binding")?.host_port;
        let server = serve(s, own_netns()?, Limits::default())?;
        let c = client()?;
        c.set_read_timeout(Some(Duration::from_millis(300)))?;
        for _ in 0..3 {
            c.send_to(b"anyone?", ("127.0.0.1", port))?;
            let mut buf = [0u8; 64];
            assert!(c.recv_from(&mut buf).is_err(), "an answer from nobody");
        }
        assert_eq!(server.flows(), 1, "the flow stays");
        // The server comes up on that port: the same flow reaches it.
        let late = UdpSocket::bind(("127.0.0.1", box_port))?;
        c.send_to(b"now?", ("127.0.0.1", port))?;
        let mut buf = [0u8; 64];
        late.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (n, from) = late.recv_from(&mut buf)?;
        assert_eq!(&buf[..n], b"now?");
        late.send_to(b"yes", from)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (n, _) = c.recv_from(&mut buf)?;
        assert_eq!(&buf[..n], b"yes");
        Ok(())
    }

    /// A stand-in for a VM's vsock socket and its guest agent: takes
    /// `CONNECT 1024`, `Hello` and `ForwardUdp`, then echoes each datagram
    /// (with " vm"), or with `hostile` answers with a bad length. Counts
    /// the flows it saw end.
    fn fake_vm(dir: &Path, hostile: bool) -> Result<(PathBuf, Arc<AtomicUsize>)> {
        let path = dir.join("vsock.sock");
        let l = UnixListener::bind(&path)?;
        let ended = Arc::new(AtomicUsize::new(0));
        let e = ended.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let e = e.clone();
                std::thread::spawn(move || {
                    let _ = agent(s, hostile);
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok((path, ended))
    }

    fn agent(mut s: UnixStream, hostile: bool) -> Result {
        use twinbox_agent::message::MessageDecoder;
        use twinbox_agent::Message;
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 && b[0] != b'\n' {
            line.push(b[0]);
        }
        assert_eq!(line, b"CONNECT 1024");
        s.write_all(b"OK 1073741824\n")?;
        let mut d = MessageDecoder::new();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < 2 {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            d.feed(&buf[..n]);
            while let Some(m) = d.next_message()? {
                got.push(m);
            }
        }
        assert!(matches!(got[1], Message::ForwardUdp { .. }), "{got:?}");
        let mut out = Message::Hello { version: 1 }.encode()?;
        Message::Forwarding.encode_into(&mut out)?;
        s.write_all(&out)?;
        let mut dec = Decoder::new();
        loop {
            let n = s.read(dec.space())?;
            if n == 0 {
                return Ok(());
            }
            dec.filled(n);
            while let Some(g) = dec.next_datagram()? {
                let mut reply = Vec::new();
                if hostile {
                    reply.extend_from_slice(&u16::MAX.to_le_bytes());
                } else {
                    let mut echo = g.to_vec();
                    echo.extend_from_slice(b" vm");
                    twinbox_agent::datagram::encode_into(&echo, &mut reply)?;
                }
                s.write_all(&reply)?;
            }
        }
    }

    fn temp_dir(name: &str) -> Result<PathBuf> {
        let d = std::env::temp_dir().join(format!("twinbox-udp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    #[test]
    fn vm_flows_carry_framed_datagrams_and_close_with_the_server() -> Result {
        let dir = temp_dir("vm")?;
        let (uds, ended) = fake_vm(&dir, false)?;
        let mut s = Sockets::default();
        s.bind(&spec(0, 53))?;
        let port = s.bindings().next().ok_or("no binding")?.host_port;
        let limits = Limits {
            idle: Duration::from_millis(800),
            max_flows: 64,
        };
        let server = serve(s, Target::Vm(uds), limits)?;
        let clients: Vec<UdpSocket> = (0..8).map(|_| client()).collect::<Result<_>>()?;
        for (i, c) in clients.iter().enumerate() {
            // Sent before the flow is open: kept until it is.
            for j in 0..3 {
                c.send_to(format!("{i}.{j}").as_bytes(), ("127.0.0.1", port))?;
            }
        }
        for (i, c) in clients.iter().enumerate() {
            let mut buf = vec![0u8; 65536];
            for j in 0..3 {
                let (n, from) = c.recv_from(&mut buf)?;
                assert_eq!(from.port(), port);
                assert_eq!(&buf[..n], format!("{i}.{j} vm").as_bytes());
            }
        }
        assert_eq!(server.flows(), 8);
        // Idle flows close their streams, which the agent sees end.
        wait_until("the idle flows to end", || {
            server.flows() == 0 && ended.load(Ordering::SeqCst) == 8
        });
        // A flow open when the server goes is closed with it.
        let c = client()?;
        c.send_to(b"last", ("127.0.0.1", port))?;
        let mut buf = [0u8; 64];
        assert!(c.recv_from(&mut buf).is_ok());
        drop(server);
        wait_until("the last flow to end", || ended.load(Ordering::SeqCst) == 9);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_guest_that_sends_a_bad_length_loses_its_flow_and_nothing_else() -> Result {
        let dir = temp_dir("hostile")?;
        let (uds, ended) = fake_vm(&dir, true)?;
        let mut s = Sockets::default();
        s.bind(&spec(0, 53))?;
        let port = s.bindings().next().ok_or("no binding")?.host_port;
        let server = serve(s, Target::Vm(uds), Limits::default())?;
        let c = client()?;
        c.set_read_timeout(Some(Duration::from_millis(300)))?;
        c.send_to(b"hi", ("127.0.0.1", port))?;
        let mut buf = [0u8; 64];
        assert!(c.recv_from(&mut buf).is_err(), "garbage was passed on");
        wait_until("the flow to close", || {
            server.flows() == 0 && ended.load(Ordering::SeqCst) == 1
        });
        // The relay still serves: the next datagram opens a new flow.
        c.send_to(b"again", ("127.0.0.1", port))?;
        wait_until("a new flow", || ended.load(Ordering::SeqCst) == 2);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
