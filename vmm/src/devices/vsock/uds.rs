//! The host side of the vsock device: the VM's Unix socket, the table of
//! connections, and the epoll registrations of their sockets.
//!
//! Protocol (Firecracker's, so its tools work): a host process connects
//! to the socket at [`VsockConfig::uds_path`] and writes
//! `CONNECT <port>\n`; the device asks the guest for a connection to
//! `<port>` (REQUEST, from a fresh host port of ours, counted from
//! 2^30); when the guest accepts (RESPONSE) the client reads
//! `OK <host port>\n`, and from then on the socket is the byte stream.
//! If the guest refuses (RST), or does not answer in 10 s, or the line is
//! not a `CONNECT` line within 32 bytes and 5 s, the client's socket is
//! closed.
//!
//! The guest connecting to the host (CID 2), port `P`: the device
//! connects to the Unix socket `<uds_path>_<P>` (non-blocking) and, if
//! something listens there, answers RESPONSE and relays; else RST.
//!
//! At most [`MAX_CONNECTIONS`] connections (host clients still sending
//! their line included); more clients are closed at once, more guest
//! REQUESTs reset. RSTs owed for packets that belong to no connection
//! are kept up to [`MAX_PENDING_RESETS`]; past that a flood of garbage
//! is dropped without an answer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{self, Connection, Verdict};
use super::packet::{Header, TxPacket};
use super::{op, Error, HOST_CID, TYPE_STREAM};
use crate::config::VsockConfig;

/// Most connections at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Most RSTs owed for packets of no connection.
pub const MAX_PENDING_RESETS: usize = 256;
/// The first host port handed to a host client.
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// epoll token of the listener.
pub const LISTENER: u64 = 2;
/// First epoll token of a connection (each gets its own, never reused).
const FIRST_TOKEN: u64 = 16;

/// The VM's socket, bound; removed from the file system when dropped if
/// it is still the one bound.
#[derive(Debug)]
pub struct Bound {
    path: PathBuf,
    dev_ino: (u64, u64),
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if m.file_type().is_socket() && (m.dev(), m.ino()) == self.dev_ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds the VM's socket at `path`, mode 0600: bound under a temporary
/// name beside it, made private, then renamed into place, so that no one
/// else can connect in between. An existing socket at `path` that no one
/// serves (a stale one) is replaced; one that is served (another VM's),
/// or anything that is not a socket, is refused.
pub fn bind(path: &Path) -> Result<(UnixListener, Bound), Error> {
    let io = |what: &'static str| move |e: io::Error| Error::Socket(what, path.to_path_buf(), e);
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => return Err(Error::NotASocket(path.to_path_buf())),
        Ok(_) if UnixStream::connect(path).is_ok() => return Err(Error::InUse(path.to_path_buf())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("looking at")(e)),
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io("binding"))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("placing")(e));
    }
    let m = std::fs::symlink_metadata(path).map_err(io("looking at"))?;
    listener.set_nonblocking(true).map_err(io("configuring"))?;
    Ok((
        listener,
        Bound {
            path: path.to_path_buf(),
            dev_ino: (m.dev(), m.ino()),
        },
    ))
}

/// Connects to the Unix socket at `path` without blocking (a listener
/// with a full backlog is a refusal, not a wait).
fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socket() takes no pointers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just made and owned by no one else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` within it.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Accepts one client of `listener`, its socket non-blocking.
fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: null address pointers ask for no peer address.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            flags,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket accept4 just made, owned by no one else.
    Ok(UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The host side.
pub struct Host {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Arc<Epoll>,
    /// Each connection and its epoll interest (`None`: not in the set).
    conns: BTreeMap<u64, (Connection, Option<u32>)>,
    by_ports: HashMap<(u32, u32), u64>,
    resets: VecDeque<Header>,
    next_token: u64,
    next_port: u32,
    /// The connection last served a packet for the guest.
    last: u64,
}

impl Host {
    /// The host side of `config`'s device, serving `listener`, its
    /// sockets registered in `epoll`.
    pub fn new(
        config: &VsockConfig,
        listener: UnixListener,
        epoll: Arc<Epoll>,
    ) -> Result<Self, Error> {
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(Error::Epoll)?;
        Ok(Self {
            guest_cid: config.guest_cid,
            uds_path: config.uds_path.clone(),
            listener,
            epoll,
            conns: BTreeMap::new(),
            by_ports: HashMap::new(),
            resets: VecDeque::new(),
            next_token: FIRST_TOKEN,
            next_port: FIRST_LOCAL_PORT,
            last: 0,
        })
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Forgets every connection without a word to the guest (its driver
    /// was reset, or told of a transport reset).
    pub fn reset(&mut self) {
        for (_, (c, _)) in std::mem::take(&mut self.conns) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream().as_raw_fd(),
                EpollEvent::default(),
            );
        }
        self.by_ports.clear();
        self.resets.clear();
    }

    fn owe_reset(&mut self, h: Header) {
        if self.resets.len() < MAX_PENDING_RESETS {
            self.resets.push_back(h);
        }
    }

    fn local_port(&mut self) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = match self.next_port.checked_add(1) {
                Some(n) => n,
                None => FIRST_LOCAL_PORT,
            };
            if !self.by_ports.keys().any(|&(l, _)| l == p) {
                return p;
            }
        }
    }

    fn add(&mut self, c: Connection) {
        let token = self.next_token;
        self.next_token += 1;
        if !matches!(c.state, connection::State::Handshake(_)) {
            self.by_ports.insert((c.local_port, c.peer_port), token);
        }
        let ev = EpollEvent::new(EventSet::IN, token);
        if self
            .epoll
            .ctl(ControlOperation::Add, c.stream().as_raw_fd(), ev)
            .is_err()
        {
            if c.guest_knows() {
                self.owe_reset(connection::reset(self.guest_cid, c.local_port, c.peer_port));
            }
            self.by_ports.remove(&(c.local_port, c.peer_port));
            return;
        }
        self.conns.insert(token, (c, Some(EventSet::IN.bits())));
        self.settle(token, Verdict::Keep);
    }

    /// Accepts the clients waiting on the VM's socket.
    pub fn accept(&mut self) {
        // Bounded: at most as many as may still be kept, plus one to close.
        for _ in 0..=MAX_CONNECTIONS {
            let Ok(stream) = accept(&self.listener) else {
                return;
            };
            if self.conns.len() >= MAX_CONNECTIONS {
                continue;
            }
            let port = self.local_port();
            let c = Connection::from_host(stream, self.guest_cid, port, Instant::now());
            self.add(c);
        }
    }

    /// A connection's socket is ready (`events` from epoll).
    pub fn host_event(&mut self, token: u64, events: u32) {
        let Some((c, _)) = self.conns.get_mut(&token) else {
            return;
        };
        let ev = EventSet::from_bits_truncate(events);
        let mut v = Verdict::Keep;
        if ev.contains(EventSet::ERROR) {
            v = Verdict::Reset;
        }
        if v == Verdict::Keep && ev.contains(EventSet::OUT) {
            v = c.flush();
        }
        if v == Verdict::Keep && ev.intersects(EventSet::IN | EventSet::HANG_UP) {
            let was_handshake = matches!(c.state, connection::State::Handshake(_));
            if c.wants_read() {
                v = c.on_readable();
            } else if ev.contains(EventSet::HANG_UP) && !c.wants_write() {
                // Nothing to read now and nothing to write: stop hearing
                // of the hang-up until there is (see `settle`).
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    c.stream().as_raw_fd(),
                    EpollEvent::default(),
                );
                if let Some(e) = self.conns.get_mut(&token) {
                    e.1 = None;
                }
            }
            if let Some((c, _)) = self.conns.get(&token) {
                if was_handshake && c.state == connection::State::Connecting {
                    self.by_ports.insert((c.local_port, c.peer_port), token);
                }
            }
        }
        self.settle(token, v);
    }

    /// Applies `v` to connection `token` and brings its epoll interest in
    /// line with what it wants.
    fn settle(&mut self, token: u64, v: Verdict) {
        let Some((c, registered)) = self.conns.get_mut(&token) else {
            return;
        };
        if v != Verdict::Keep {
            let Some((c, _)) = self.conns.remove(&token) else {
                return;
            };
            self.by_ports.remove(&(c.local_port, c.peer_port));
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                c.stream().as_raw_fd(),
                EpollEvent::default(),
            );
            if v == Verdict::Reset && c.guest_knows() {
                self.owe_reset(connection::reset(self.guest_cid, c.local_port, c.peer_port));
            }
            return;
        }
        let mut want = EventSet::empty();
        if c.wants_read() {
            want |= EventSet::IN;
        }
        if c.wants_write() {
            want |= EventSet::OUT;
        }
        let fd = c.stream().as_raw_fd();
        let ev = EpollEvent::new(want, token);
        let r = match *registered {
            Some(have) if have == want.bits() => return,
            Some(_) => self.epoll.ctl(ControlOperation::Modify, fd, ev),
            // Out of the set (after a hang-up) and still nothing wanted.
            None if want.is_empty() => return,
            None => self.epoll.ctl(ControlOperation::Add, fd, ev),
        };
        match r {
            Ok(()) => *registered = Some(want.bits()),
            Err(_) => self.settle(token, Verdict::Reset),
        }
    }

    /// A packet from the guest's tx queue.
    pub fn guest_packet(&mut self, p: &TxPacket) {
        let h = &p.header;
        // Another source is a lie: dropped, not answered.
        if h.src_cid != self.guest_cid {
            return;
        }
        let key = (h.dst_port, h.src_port);
        let refuse = h.dst_cid != HOST_CID || h.type_ != TYPE_STREAM;
        let token = self.by_ports.get(&key).copied();
        match (token, refuse, h.op) {
            (_, _, op::RST) if token.is_none() || refuse => {}
            (Some(t), false, _) => {
                let v = match self.conns.get_mut(&t) {
                    Some((c, _)) => c.on_guest(h, &p.payload),
                    None => Verdict::Drop,
                };
                self.settle(t, v);
            }
            (None, false, op::REQUEST) => self.guest_connect(h),
            _ => self.owe_reset(connection::reset(self.guest_cid, h.dst_port, h.src_port)),
        }
    }

    /// The guest connects to host port `hdr.dst_port`.
    fn guest_connect(&mut self, hdr: &Header) {
        let refuse = connection::reset(self.guest_cid, hdr.dst_port, hdr.src_port);
        if self.conns.len() >= MAX_CONNECTIONS {
            return self.owe_reset(refuse);
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", hdr.dst_port));
        match connect(Path::new(&path)) {
            Ok(stream) => self.add(Connection::from_guest(stream, hdr)),
            Err(_) => self.owe_reset(refuse),
        }
    }

    /// Whether a packet is waiting for the guest's rx queue.
    pub fn has_for_guest(&self) -> bool {
        !self.resets.is_empty() || self.conns.values().any(|(c, _)| c.has_for_guest())
    }

    /// The next packet for the guest, its payload at most `room` bytes.
    pub fn next_for_guest(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(h) = self.resets.pop_front() {
            return Some((h, Vec::new()));
        }
        // Round robin: start after the connection served last.
        let token = self
            .conns
            .range(self.last + 1..)
            .chain(self.conns.range(..=self.last))
            .find(|(_, (c, _))| c.has_for_guest())
            .map(|(&t, _)| t)?;
        self.last = token;
        let (c, _) = self.conns.get_mut(&token)?;
        let got = c.next_for_guest(room);
        let v = c.done();
        self.settle(token, v);
        got
    }

    /// Ends the connections whose time ran out by `now`.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, (c, _))| c.expired(now))
            .map(|(&t, _)| t)
            .collect();
        for t in late {
            self.settle(t, Verdict::Reset);
        }
    }

    /// Milliseconds until the next deadline, for epoll_wait (-1: none).
    pub fn timeout_ms(&self, now: Instant) -> i32 {
        self.conns
            .values()
            .filter_map(|(c, _)| c.deadline())
            .min()
            .map_or(-1, |d| {
                d.saturating_duration_since(now)
                    .as_millis()
                    .saturating_add(1)
                    .min(60_000) as i32
            })
    }
}
