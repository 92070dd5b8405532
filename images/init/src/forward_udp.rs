//! Published UDP ports, the guest's side: a connection that asked the
//! agent for `ForwardUdp{port}` is one flow (one host client). It leaves
//! the agent's poll loop for a thread of its own, which makes a UDP socket
//! connected to `127.0.0.1:port` in the guest, says `Forwarding` (or
//! `Failed`, and closes), and then carries datagrams both ways: each
//! framed one from the host (`twinbox_agent::datagram`) is sent on the
//! socket, and each datagram the socket receives goes back framed. The
//! flow ends when the host closes the connection (the flow expired, or
//! the box's supervisor let it go) or sends a bad length.
//!
//! Nothing blocks the thread on a peer: the connection is written as it
//! takes bytes, up to [`QUEUED`] bytes of datagrams wait, and while that
//! is full the socket is not read (its receive buffer then drops, as UDP
//! does). A port nobody listens on loses what is sent to it ("port
//! unreachable" is not an error of the flow). Bounded: at most
//! [`MAX_FLOWS`] at once (more are refused), each with a small stack.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};

use twinbox_agent::datagram::{Decoder, Outbox, MAX_DATAGRAM};
use twinbox_agent::{Message, MAIN_ID};

/// Most UDP flows at once.
pub const MAX_FLOWS: usize = 512;

/// Bytes of datagrams queued for the host before the socket is left unread.
const QUEUED: usize = 256 * 1024;

/// Datagrams (or connection reads) taken per wake-up.
const BURST: usize = 64;

/// Stack of a flow's thread (its buffers are on the heap).
const STACK: usize = 64 * 1024;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Counts one flow while it lives.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        RUNNING
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_FLOWS).then_some(n + 1)
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

fn set_nonblocking(fd: &impl AsRawFd, on: bool) {
    // SAFETY: F_GETFL/F_SETFL take integers on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            let fl = if on {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl);
        }
    }
}

/// Takes over `conn` (greeted; `queued` is what the agent still had to
/// send it) to carry datagrams of the guest's UDP `port`; an error if no
/// thread is free, with `conn` handed back so the agent can refuse it.
pub fn start(conn: OwnedFd, queued: Vec<u8>, port: u16) -> Result<(), (OwnedFd, String)> {
    let Some(slot) = Slot::take() else {
        return Err((conn, format!("{MAX_FLOWS} UDP flows already")));
    };
    // The descriptor moves into the thread only once it exists.
    let cell = std::sync::Arc::new(std::sync::Mutex::new(Some(conn)));
    let inner = cell.clone();
    let spawned = std::thread::Builder::new()
        .name("forward-udp".into())
        .stack_size(STACK)
        .spawn(move || {
            let _slot = slot;
            let conn = inner.lock().ok().and_then(|mut c| c.take());
            if let Some(conn) = conn {
                run(File::from(conn), queued, port);
            }
        });
    match spawned {
        Ok(_) => Ok(()),
        Err(e) => match cell.lock().ok().and_then(|mut c| c.take()) {
            Some(conn) => Err((conn, format!("no thread for the flow: {e}"))),
            None => Ok(()),
        },
    }
}

/// A UDP socket connected to `127.0.0.1:port`.
fn connect(port: u16) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    s.connect((Ipv4Addr::LOCALHOST, port))?;
    Ok(s)
}

fn run(mut conn: File, mut out: Vec<u8>, port: u16) {
    set_nonblocking(&conn, false);
    let udp = connect(port);
    let answer = match &udp {
        Ok(_) => Message::Forwarding,
        Err(e) => Message::Failed {
            id: MAIN_ID,
            message: format!("a UDP socket to 127.0.0.1:{port} in the guest: {e}"),
        },
    };
    if answer.encode_into(&mut out).is_err() || conn.write_all(&out).is_err() {
        return;
    }
    if let Ok(udp) = udp {
        carry(conn, &udp);
    }
}

/// Carries datagrams between `conn` and `udp` until the host closes
/// `conn`, sends a bad length, or either fails.
fn carry(mut conn: File, udp: &UdpSocket) {
    set_nonblocking(&conn, true);
    if udp.set_nonblocking(true).is_err() {
        return;
    }
    let mut from_host = Decoder::new();
    let mut to_host = Outbox::new(QUEUED);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: conn.as_raw_fd(),
                events: libc::POLLIN | if to_host.is_empty() { 0 } else { libc::POLLOUT },
                revents: 0,
            },
            libc::pollfd {
                fd: udp.as_raw_fd(),
                events: if to_host.has_room() { libc::POLLIN } else { 0 },
                revents: 0,
            },
        ];
        // SAFETY: poll on the array we own, its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents & !libc::POLLOUT != 0
            && !datagrams_from_host(&mut conn, &mut from_host, udp)
        {
            return;
        }
        if fds[1].revents != 0 && !datagrams_from_guest(udp, &mut to_host, &mut buf) {
            return;
        }
        if to_host.flush(&mut conn).is_err() {
            return;
        }
    }
}

/// Sends the host's datagrams on `udp`; false when the flow is over.
fn datagrams_from_host(conn: &mut File, from_host: &mut Decoder, udp: &UdpSocket) -> bool {
    for _ in 0..BURST {
        match conn.read(from_host.space()) {
            Ok(0) => return false,
            Ok(n) => from_host.filled(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
        loop {
            match from_host.next_datagram() {
                Ok(Some(d)) => {
                    // Lost if the socket is full, or if an earlier one's
                    // "port unreachable" fails this send (once).
                    if udp
                        .send(d)
                        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
                    {
                        let _ = udp.send(d);
                    }
                }
                Ok(None) => break,
                Err(_) => return false,
            }
        }
    }
    true
}

/// Queues what `udp` received for the host; false when the socket failed.
fn datagrams_from_guest(udp: &UdpSocket, to_host: &mut Outbox, buf: &mut [u8]) -> bool {
    for _ in 0..BURST {
        if !to_host.has_room() {
            return true;
        }
        match udp.recv(buf) {
            Ok(n) => {
                let _ = to_host.push(&buf[..n]);
            }
            // Nobody listens on the port (yet): that datagram was lost.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    use twinbox_agent::datagram;
    use twinbox_agent::message::MessageDecoder;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// A UDP echo server standing in for the box's own.
    fn echo_server() -> Result<u16> {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        let port = s.local_addr()?.port();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
        Ok(port)
    }

    /// The host's end of a flow to `port`, after `Forwarding`.
    fn flow(port: u16) -> Result<UnixStream> {
        let (host, guest) = UnixStream::pair()?;
        host.set_read_timeout(Some(Duration::from_secs(10)))?;
        start(guest.into(), Vec::new(), port).map_err(|(_, why)| why)?;
        let mut d = MessageDecoder::new();
        let mut b = [0u8; 64];
        loop {
            let n = (&host).read(&mut b)?;
            assert!(n > 0, "closed before Forwarding");
            d.feed(&b[..n]);
            if let Some(m) = d.next_message()? {
                assert_eq!(m, Message::Forwarding);
                return Ok(host);
            }
        }
    }

    fn read_datagram(s: &UnixStream, d: &mut datagram::Decoder) -> Result<Vec<u8>> {
        loop {
            if let Some(g) = d.next_datagram()? {
                return Ok(g.to_vec());
            }
            let n = (&*s).read(d.space())?;
            if n == 0 {
                return Err("closed".into());
            }
            d.filled(n);
        }
    }

    fn wait_for_no_flows() {
        let t0 = Instant::now();
        while RUNNING.load(Ordering::SeqCst) != 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "flows left");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// One test for what counts flows, so that none runs beside another.
    #[test]
    fn flows_carry_datagrams_and_end_with_the_host_or_a_bad_length() -> Result {
        let port = echo_server()?;
        let mut flows = Vec::new();
        for i in 0..20 {
            let s = flow(port)?;
            let mut out = Vec::new();
            for j in 0..5 {
                datagram::encode_into(format!("{i}.{j}").as_bytes(), &mut out)?;
            }
            datagram::encode_into(b"", &mut out)?;
            (&s).write_all(&out)?;
            flows.push(s);
        }
        assert_eq!(RUNNING.load(Ordering::SeqCst), 20);
        for (i, s) in flows.iter().enumerate() {
            let mut d = datagram::Decoder::new();
            for j in 0..5 {
                assert_eq!(read_datagram(s, &mut d)?, format!("{i}.{j}").as_bytes());
            }
            assert_eq!(read_datagram(s, &mut d)?, b"");
        }
        // A largest one (one at a time: the echo server's socket buffer
        // holds only a few, and UDP drops the rest).
        let mut out = Vec::new();
        datagram::encode_into(&vec![b'z'; MAX_DATAGRAM], &mut out)?;
        (&flows[0]).write_all(&out)?;
        let mut d = datagram::Decoder::new();
        assert_eq!(read_datagram(&flows[0], &mut d)?, vec![b'z'; MAX_DATAGRAM]);
        // The host closing a flow ends it.
        drop(flows);
        wait_for_no_flows();

        // A bad length from the host ends the flow: the guest closes.
        let s = flow(port)?;
        (&s).write_all(&u16::MAX.to_le_bytes())?;
        let mut rest = Vec::new();
        (&s).read_to_end(&mut rest)?;
        assert!(rest.is_empty());
        wait_for_no_flows();

        // A port nobody listens on: datagrams are lost, the flow stays.
        let gone = UdpSocket::bind("127.0.0.1:0")?;
        let dead = gone.local_addr()?.port();
        drop(gone);
        let s = flow(dead)?;
        let mut out = Vec::new();
        datagram::encode_into(b"anyone?", &mut out)?;
        (&s).write_all(&out)?;
        (&s).write_all(&out)?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let mut b = [0u8; 16];
        assert!(
            (&s).read(&mut b).is_err(),
            "an answer or a close from nobody"
        );
        assert_eq!(RUNNING.load(Ordering::SeqCst), 1);
        drop(s);
        wait_for_no_flows();
        Ok(())
    }
}
