//! virtio-vsock: sockets between the guest and host processes, with no
//! vhost module (Firecracker's design): the device speaks the vsock
//! packet protocol itself and relays each stream to a Unix socket on the
//! host ([`uds`] says how host processes connect).
//!
//! Files, the shape every virtio device here copies: this one (the device,
//! its queues, its thread, its error enum), [`packet`] (what crosses the
//! queues, parsed as hostile), [`connection`] (one stream's state machine
//! and flow control), [`uds`] (the host side: socket, connection table).
//!
//! Queues: 0 rx (device to guest), 1 tx (guest to device), 2 event (the
//! device tells the guest of a transport reset). Configuration space: the
//! guest's CID (`le64`). Features: VERSION_1 only (stream sockets; no
//! SEQPACKET, no EVENT_IDX).
//!
//! Threads: one, `vsock`, started with the VM ([`spawn`]) once its vCPUs
//! exist (an interrupt raised before a restored vCPU's LAPIC is written
//! back would be lost). It waits in
//! epoll on a stop eventfd, the queue-notify eventfd (which KVM signals on
//! the guest's QueueNotify writes, `KVM_IOEVENTFD`; the MMIO exit path
//! signals it too where KVM did not take it), the VM's listening socket
//! and every connection's socket. For each wake-up it takes the
//! transport's lock, handles the sockets that are ready, then the queues:
//! tx packets to their connections, then packets owed to the guest into
//! rx buffers, then the interrupt if a used ring moved. The vCPU threads
//! reach the same transport through [`crate::devices::Devices`] for
//! register accesses only, which are short. Before it reads any guest
//! input the thread installs its own seccomp filter
//! ([`crate::seccomp::Thread::Vsock`]: epoll, eventfd reads, accept4,
//! recv/send, socket/connect for guest-initiated connections, shutdown).
//!
//! Limits, so that no guest can take the host down: a payload of at most
//! 64 KiB is read per packet, at most [`TX_BATCH`] tx chains per wake-up
//! (the rest on the next, straight away), 64 connections, 128 KiB
//! buffered towards a host socket per connection (the credit we give) and
//! 64 KiB read from one ahead of the guest (and never past its credit).
//! A packet that does not parse is dropped; one for no connection is
//! answered RST; a guest past its credit is reset.
//!
//! Snapshots: a snapshot is taken at the guest's ready mark, when no
//! connection should exist, and connections are never saved. What is
//! saved is the transport ([`crate::virtio::mmio::TransportState`]:
//! features, status, queues and where the device was in each ring), so
//! the restored guest's driver keeps its queues and its posted buffers.
//! On restore the device sends the guest VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
//! (as Firecracker does) as soon as the guest has an event buffer posted:
//! the guest then resets any connection it still believed open (none, if
//! the snapshot was taken at the ready mark) instead of waiting on it for
//! ever, and reads its CID again. Restore with the CID the snapshot was
//! made with all the same: packets the guest sends before it has handled
//! the event carry the old one, and a packet from another CID is dropped.

pub mod connection;
pub mod packet;
pub mod uds;

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::config::VsockConfig;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{Interrupt, VirtioDevice, F_VERSION_1, INT_VRING};

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VM's socket path holds something that is not a socket.
    #[error("{0} exists and is not a socket: not replaced")]
    NotASocket(std::path::PathBuf),
    /// Something serves the VM's socket path already (another VM).
    #[error("{0} is served by another process: not replaced")]
    InUse(std::path::PathBuf),
    /// The VM's socket could not be made.
    #[error("{0} the vsock socket {1}")]
    Socket(&'static str, std::path::PathBuf, #[source] std::io::Error),
    /// An epoll call failed.
    #[error("epoll")]
    Epoll(#[source] std::io::Error),
    /// An eventfd could not be made.
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    /// The device thread could not be started.
    #[error("starting the vsock thread")]
    Thread(#[source] std::io::Error),
    /// The device thread could not be filtered.
    #[error("seccomp")]
    Seccomp(#[from] crate::seccomp::Error),
    /// The transport's lock was poisoned (a panic while holding it).
    #[error("the vsock device's lock is poisoned")]
    Poisoned,
}

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// The only socket type: stream.
pub const TYPE_STREAM: u16 = 1;
/// virtio device ID of vsock.
pub const DEVICE_ID: u32 = 19;
/// Queue sizes: rx, tx, event.
pub const QUEUE_SIZES: &[u16] = &[256, 256, 256];
/// Most tx chains handled per wake-up.
pub const TX_BATCH: usize = 256;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Packet operations.
pub mod op {
    /// Connect.
    pub const REQUEST: u16 = 1;
    /// Connected.
    pub const RESPONSE: u16 = 2;
    /// Refused or ended.
    pub const RST: u16 = 3;
    /// One or both directions end.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// Here is my credit.
    pub const CREDIT_UPDATE: u16 = 6;
    /// What is your credit?
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags.
pub mod shutdown {
    /// The sender takes no more data.
    pub const RCV: u32 = 1;
    /// The sender sends no more data.
    pub const SEND: u32 = 2;
}

/// epoll token of the stop eventfd.
const STOP: u64 = 0;
/// epoll token of the queue-notify eventfd.
const NOTIFY: u64 = 1;

/// The device.
pub struct Vsock {
    cid: u64,
    host: uds::Host,
    /// A TRANSPORT_RESET event is owed to the guest (after a restore).
    reset_owed: bool,
}

impl Vsock {
    /// The device of `config`, serving `listener`; its sockets are
    /// registered in `epoll`.
    pub fn new(
        config: &VsockConfig,
        listener: std::os::unix::net::UnixListener,
        epoll: Arc<Epoll>,
    ) -> Result<Self, Error> {
        Ok(Self {
            cid: config.guest_cid,
            host: uds::Host::new(config, listener, epoll)?,
            reset_owed: false,
        })
    }

    /// The device of a restored VM: the guest is owed a transport reset
    /// (see the module's doc).
    pub fn restored(mut self) -> Self {
        self.reset_owed = true;
        self
    }

    /// The host side.
    pub fn host(&self) -> &uds::Host {
        &self.host
    }

    /// Works the queues of the active device: the owed event, tx, then rx;
    /// raises the interrupt if a used ring moved. Returns whether tx
    /// chains are left for another round.
    pub fn process(
        &mut self,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        irq: &mut Interrupt,
    ) -> bool {
        let mut used = false;
        let mut more = false;
        if let [rx, tx, ev] = queues {
            if self.reset_owed {
                if let Some(chain) = ev.pop_descriptor_chain(mem) {
                    let head = chain.head_index();
                    let bytes = EVENT_TRANSPORT_RESET.to_le_bytes();
                    let len = match chain.writable().next() {
                        Some(d) if d.len() >= 4 && mem.write_slice(&bytes, d.addr()).is_ok() => 4,
                        _ => 0,
                    };
                    let _ = ev.add_used(mem, head, len);
                    used = true;
                    self.reset_owed = false;
                    self.host.reset();
                }
            }
            for n in 0..=TX_BATCH {
                let Some(chain) = tx.pop_descriptor_chain(mem) else {
                    break;
                };
                if n == TX_BATCH {
                    tx.go_to_previous_position();
                    more = true;
                    break;
                }
                let head = chain.head_index();
                if let Ok(p) = packet::read_tx(chain) {
                    self.host.guest_packet(&p);
                }
                let _ = tx.add_used(mem, head, 0);
                used = true;
            }
            used |= self.fill_rx(rx, mem);
        }
        if used {
            irq.raise(INT_VRING);
        }
        more
    }

    /// Writes what is owed to the guest into its rx buffers.
    fn fill_rx(&mut self, rx: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while self.host.has_for_guest() {
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = match packet::rx_chain(chain) {
                Ok(buf) => match self.host.next_for_guest(buf.room()) {
                    Some((h, data)) => buf.write(mem, &h, &data).unwrap_or(0),
                    // Only data is owed and the buffer has no room for
                    // any: it goes back empty, as a bad one does.
                    None if buf.room() == 0 => 0,
                    None => {
                        rx.go_to_previous_position();
                        break;
                    }
                },
                // A bad buffer goes back empty; nothing was taken for it.
                Err(_) => 0,
            };
            let _ = rx.add_used(mem, head, len);
            used = true;
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cid = self.cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| cid.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(&mut self, _: u64, _: &[Queue], _: &GuestMemoryMmap) -> bool {
        true
    }

    fn reset(&mut self) {
        self.host.reset();
        self.reset_owed = false;
    }
}

/// The device behind its transport, shared by the vCPU threads and the
/// device thread.
pub type Shared = Arc<Mutex<MmioTransport<Vsock>>>;

/// The device thread, running; dropping it stops it too.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<Result<(), Error>>>,
}

impl Worker {
    /// Stops the thread and waits for it; what it ended with.
    pub fn stop(mut self) -> Result<(), Error> {
        self.end()
    }

    fn end(&mut self) -> Result<(), Error> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.stop.write(1);
        t.join().map_err(|_| Error::Poisoned)?
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

/// Starts the device thread for `device`; `epoll` is the one its host
/// side registers sockets in, `notify` the queue-notify eventfd. With
/// `seccomp`, the thread installs its filter first.
pub fn spawn(
    device: Shared,
    epoll: Arc<Epoll>,
    notify: EventFd,
    seccomp: bool,
    on_error: Box<dyn FnOnce(String) + Send>,
) -> Result<Worker, Error> {
    let stop = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(Error::EventFd)?;
    for (fd, token) in [(stop.as_raw_fd(), STOP), (notify.as_raw_fd(), NOTIFY)] {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .map_err(Error::Epoll)?;
    }
    let thread_stop = stop.try_clone().map_err(Error::EventFd)?;
    let thread = std::thread::Builder::new()
        .name("vsock".into())
        .spawn(move || {
            let r = run(&device, &epoll, &notify, seccomp);
            drop(thread_stop);
            if let Err(e) = &r {
                let cause = std::error::Error::source(e)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                on_error(format!("the vsock device: {e}{cause}"));
            }
            r
        })
        .map_err(Error::Thread)?;
    Ok(Worker {
        stop,
        thread: Some(thread),
    })
}

/// One round of the device thread: the ready `events`, the deadlines,
/// then the queues (if the driver activated the device). Returns the
/// timeout of the next wait, or `None` when told to stop.
fn round(t: &mut MmioTransport<Vsock>, notify: &EventFd, events: &[EpollEvent]) -> Option<i32> {
    t.replay();
    let active = t.is_active();
    let (dev, queues, mem, irq) = t.parts();
    for ev in events {
        match ev.data() {
            STOP => return None,
            NOTIFY => {
                let _ = notify.read();
            }
            uds::LISTENER => dev.host.accept(),
            token => dev.host.host_event(token, ev.events()),
        }
    }
    let now = Instant::now();
    dev.host.expire(now);
    let more = active && dev.process(queues, mem, irq);
    Some(match more {
        true => 0,
        false => dev.host.timeout_ms(now),
    })
}

fn run(device: &Shared, epoll: &Epoll, notify: &EventFd, seccomp: bool) -> Result<(), Error> {
    if seccomp {
        crate::seccomp::install(crate::seccomp::Thread::Vsock)?;
    }
    let mut events = [EpollEvent::default(); 32];
    let mut timeout = -1;
    loop {
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(Error::Epoll(e)),
        };
        let mut t = device.lock().map_err(|_| Error::Poisoned)?;
        match round(&mut t, notify, &events[..n]) {
            Some(next) => timeout = next,
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::packet::{Header, HEADER_SIZE};
    use super::*;
    use crate::virtio::mmio::tests::handshake;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use vm_memory::GuestAddress;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The guest's side of one queue of 16, where the test handshake put
    /// it (0x1000 + 0x1000 * n).
    struct GuestQueue {
        base: u64,
        next_desc: u16,
        avail: u16,
        used_seen: u16,
    }

    impl GuestQueue {
        fn new(n: u64) -> Self {
            Self {
                base: 0x1000 + 0x1000 * n,
                next_desc: 0,
                avail: 0,
                used_seen: 0,
            }
        }

        /// Offers a chain of buffers `(addr, len, device-writable)`.
        fn offer(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) {
            let head = self.next_desc;
            for (i, &(addr, len, w)) in bufs.iter().enumerate() {
                let idx = (head + i as u16) % 16;
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let at = GuestAddress(self.base + 16 * u64::from(idx));
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&addr.to_le_bytes());
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[12..14].copy_from_slice(&flags.to_le_bytes());
                d[14..16].copy_from_slice(&((idx + 1) % 16).to_le_bytes());
                mem.write_slice(&d, at).ok();
            }
            self.next_desc = (head + bufs.len() as u16) % 16;
            let slot = GuestAddress(self.base + 0x400 + 4 + 2 * u64::from(self.avail % 16));
            mem.write_obj(head, slot).ok();
            self.avail = self.avail.wrapping_add(1);
            mem.write_obj(self.avail, GuestAddress(self.base + 0x402))
                .ok();
        }

        /// The used entries since the last call: (head, len).
        fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.base + 0x802)).unwrap_or(0);
            let mut out = Vec::new();
            while self.used_seen != idx {
                let at = self.base + 0x804 + 8 * u64::from(self.used_seen % 16);
                let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
                out.push((id, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }

    /// A device, activated by the test handshake, and the guest's view
    /// of its queues.
    struct Rig {
        t: MmioTransport<Vsock>,
        epoll: Arc<Epoll>,
        notify: EventFd,
        rx: GuestQueue,
        tx: GuestQueue,
        ev: GuestQueue,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
        _bound: uds::Bound,
        /// Next rx buffer (header and data in one, 4 KiB + header).
        rx_buf: u64,
    }

    const RX_AREA: u64 = 0x8_0000;
    const TX_AREA: u64 = 0x4_0000;

    impl Rig {
        fn new() -> Result<Self, Box<dyn std::error::Error>> {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("vm.sock");
            let (listener, bound) = uds::bind(&path)?;
            let epoll = Arc::new(Epoll::new()?);
            let config = VsockConfig {
                guest_cid: 3,
                uds_path: path.clone(),
            };
            let dev = Vsock::new(&config, listener, epoll.clone())?;
            let notify = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?;
            epoll.ctl(
                ControlOperation::Add,
                notify.as_raw_fd(),
                EpollEvent::new(EventSet::IN, NOTIFY),
            )?;
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)])?;
            let irq = EventFd::new(0)?;
            let mut t = MmioTransport::new(dev, mem, irq, notify.try_clone()?)?;
            // The rig's queues have 16 entries.
            handshake(&mut t, F_VERSION_1);
            assert!(t.is_active());
            Ok(Self {
                t,
                epoll,
                notify,
                rx: GuestQueue::new(0),
                tx: GuestQueue::new(1),
                ev: GuestQueue::new(2),
                path,
                _dir: dir,
                _bound: bound,
                rx_buf: RX_AREA,
            })
        }

        fn mem(&mut self) -> GuestMemoryMmap {
            self.t.parts().2.clone()
        }

        /// Rounds of the device thread until nothing is ready.
        fn pump(&mut self) {
            for _ in 0..50 {
                let mut events = [EpollEvent::default(); 32];
                let n = self.epoll.wait(10, &mut events).unwrap_or(0);
                round(&mut self.t, &self.notify, &events[..n]);
                if n == 0 {
                    break;
                }
            }
        }

        /// Posts `n` rx buffers of 44 + 4096 bytes.
        fn post_rx(&mut self, n: usize) {
            let mem = self.mem();
            for _ in 0..n {
                let at = self.rx_buf;
                self.rx
                    .offer(&mem, &[(at, 44, true), (at + 0x100, 4096, true)]);
                self.rx_buf = RX_AREA + (self.rx_buf - RX_AREA + 0x2000) % (8 * 0x2000);
            }
        }

        /// The guest sends `h` with `payload`.
        fn send(&mut self, h: Header, payload: &[u8]) {
            let mem = self.mem();
            let at = TX_AREA + 0x2000 * u64::from(self.tx.next_desc / 2);
            let mut h = h;
            h.len = payload.len() as u32;
            mem.write_slice(&h.to_bytes(), GuestAddress(at)).ok();
            mem.write_slice(payload, GuestAddress(at + 0x100)).ok();
            self.tx.offer(
                &mem,
                &[(at, 44, false), (at + 0x100, payload.len() as u32, false)],
            );
            let _ = self.notify.write(1);
            self.pump();
        }

        /// The packets the device gave the guest since the last call.
        fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            let mem = self.mem();
            let mut out = Vec::new();
            for (id, len) in self.rx.used(&mem) {
                let at = RX_AREA + 0x2000 * u64::from(id / 2);
                let mut h = [0u8; HEADER_SIZE];
                mem.read_slice(&mut h, GuestAddress(at)).ok();
                let h = Header::from_bytes(&h);
                assert_eq!(len as usize, HEADER_SIZE + h.len as usize);
                let mut d = vec![0u8; h.len as usize];
                mem.read_slice(&mut d, GuestAddress(at + 0x100)).ok();
                out.push((h, d));
            }
            out
        }
    }

    fn from_guest(op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 256 * 1024,
            ..Default::default()
        }
    }

    /// A host client connected to guest port 52 through the rig.
    fn connect(rig: &mut Rig) -> Result<(UnixStream, u32), Box<dyn std::error::Error>> {
        let mut client = UnixStream::connect(&rig.path)?;
        client.write_all(b"CONNECT 52\n")?;
        rig.pump();
        let got = rig.received();
        assert_eq!(got.len(), 1, "{got:?}");
        let req = got[0].0;
        assert_eq!((req.op, req.dst_port, req.dst_cid), (op::REQUEST, 52, 3));
        assert_eq!(req.src_port, uds::FIRST_LOCAL_PORT);
        rig.send(from_guest(op::RESPONSE, 52, req.src_port), &[]);
        let mut ok = [0u8; 14];
        client.read_exact(&mut ok)?;
        assert_eq!(&ok, b"OK 1073741824\n");
        Ok((client, req.src_port))
    }

    #[test]
    fn the_guest_reads_its_cid_from_the_configuration() {
        let rig = Rig::new().expect("rig");
        let mut lo = [0u8; 4];
        rig.t.read(0x100, &mut lo);
        assert_eq!(u32::from_le_bytes(lo), 3);
        let mut id = [0u8; 4];
        rig.t.read(0x8, &mut id);
        assert_eq!(u32::from_le_bytes(id), DEVICE_ID);
    }

    #[test]
    fn a_host_client_connects_talks_and_hangs_up() -> TestResult {
        let mut rig = Rig::new()?;
        rig.post_rx(8);
        let (mut client, port) = connect(&mut rig)?;
        // Host to guest.
        assert_eq!(rig.t.device().host().connections(), 1);
        client.write_all(b"ping")?;
        rig.pump();
        let got = rig.received();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].0.op, &got[0].1[..]), (op::RW, &b"ping"[..]));
        assert_eq!(got[0].0.buf_alloc, connection::BUF_ALLOC);
        // Guest to host.
        rig.send(from_guest(op::RW, 52, port), b"pong");
        let mut b = [0u8; 4];
        client.read_exact(&mut b)?;
        assert_eq!(&b, b"pong");
        // The host hangs up: SHUTDOWN(SEND) to the guest; the guest shuts
        // down too: RST, and the connection is gone.
        drop(client);
        rig.pump();
        let got = rig.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].0.op, got[0].0.flags),
            (op::SHUTDOWN, shutdown::SEND)
        );
        let mut sd = from_guest(op::SHUTDOWN, 52, port);
        sd.flags = shutdown::SEND | shutdown::RCV;
        rig.send(sd, &[]);
        let got = rig.received();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0.op, op::RST);
        assert_eq!(rig.t.device().host().connections(), 0);
        Ok(())
    }

    #[test]
    fn a_refusing_guest_closes_the_client() -> TestResult {
        let mut rig = Rig::new()?;
        rig.post_rx(4);
        let mut client = UnixStream::connect(&rig.path)?;
        client.write_all(b"CONNECT 7\n")?;
        rig.pump();
        let req = rig.received()[0].0;
        rig.send(from_guest(op::RST, 7, req.src_port), &[]);
        let mut b = Vec::new();
        client.read_to_end(&mut b)?;
        assert!(b.is_empty(), "{b:?}");
        assert_eq!(rig.t.device().host().connections(), 0);
        Ok(())
    }

    #[test]
    fn host_data_waits_for_the_guests_credit() -> TestResult {
        let mut rig = Rig::new()?;
        rig.post_rx(8);
        let (mut client, port) = connect(&mut rig)?;
        // Tell the device the guest has 6000 bytes of buffer.
        let mut upd = from_guest(op::CREDIT_UPDATE, 52, port);
        upd.buf_alloc = 6000;
        rig.send(upd, &[]);
        client.write_all(&[9u8; 20000])?;
        rig.pump();
        let got = rig.received();
        let data: usize = got
            .iter()
            .filter(|p| p.0.op == op::RW)
            .map(|p| p.1.len())
            .sum();
        assert_eq!(data, 6000, "no more than the credit");
        assert!(
            got.iter().all(|p| p.1.len() <= 4096),
            "each fits its buffer"
        );
        assert!(got.iter().any(|p| p.0.op == op::CREDIT_REQUEST));
        // The guest read it all: 6000 more.
        upd.fwd_cnt = 6000;
        rig.send(upd, &[]);
        rig.pump();
        let data: usize = rig.received().iter().map(|p| p.1.len()).sum();
        assert_eq!(data, 6000);
        Ok(())
    }

    #[test]
    fn a_guest_connects_to_a_host_socket_or_is_refused() -> TestResult {
        let mut rig = Rig::new()?;
        rig.post_rx(8);
        // Nobody listens on port 9000: RST.
        rig.send(from_guest(op::REQUEST, 1234, 9000), &[]);
        let got = rig.received();
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].0.op, got[0].0.dst_port, got[0].0.src_port),
            (op::RST, 1234, 9000)
        );
        // Someone listens on <path>_9000.
        let mut p = rig.path.clone().into_os_string();
        p.push("_9000");
        let listener = UnixListener::bind(&p)?;
        rig.send(from_guest(op::REQUEST, 1234, 9000), &[]);
        assert_eq!(rig.received()[0].0.op, op::RESPONSE);
        let (mut server, _) = listener.accept()?;
        rig.send(from_guest(op::RW, 1234, 9000), b"hi host");
        let mut b = [0u8; 7];
        server.read_exact(&mut b)?;
        assert_eq!(&b, b"hi host");
        server.write_all(b"hi guest")?;
        rig.pump();
        assert_eq!(rig.received()[0].1, b"hi guest");
        Ok(())
    }

    #[test]
    fn hostile_packets_are_dropped_or_reset() -> TestResult {
        let mut rig = Rig::new()?;
        rig.post_rx(8);
        let (_client, port) = connect(&mut rig)?;
        // Another source CID: dropped without a word.
        let mut h = from_guest(op::RW, 52, port);
        h.src_cid = 4;
        rig.send(h, b"x");
        assert!(rig.received().is_empty());
        // For no connection: RST.
        rig.send(from_guest(op::RW, 53, port), b"x");
        assert_eq!(rig.received()[0].0.op, op::RST);
        // Another destination CID, another type: RST.
        let mut h = from_guest(op::REQUEST, 60, 70);
        h.dst_cid = 5;
        rig.send(h, &[]);
        let mut h = from_guest(op::REQUEST, 60, 70);
        h.type_ = 2;
        rig.send(h, &[]);
        assert!(rig.received().iter().all(|p| p.0.op == op::RST));
        // An unknown op on the live connection resets it.
        rig.send(from_guest(42, 52, port), &[]);
        assert_eq!(rig.received()[0].0.op, op::RST);
        assert_eq!(rig.t.device().host().connections(), 0);
        // A chain whose buffers are outside memory, a header whose len is
        // past its buffer: used, dropped, nothing else happens.
        let mem = rig.mem();
        rig.tx.offer(&mem, &[(0x7fff_0000_0000, 44, false)]);
        let mut h = from_guest(op::RW, 52, port).to_bytes();
        h[24..28].copy_from_slice(&60000u32.to_le_bytes());
        mem.write_slice(&h, GuestAddress(TX_AREA)).ok();
        rig.tx
            .offer(&mem, &[(TX_AREA, 44, false), (TX_AREA + 0x100, 16, false)]);
        // A device-writable tx buffer.
        rig.tx.offer(&mem, &[(TX_AREA, 44, true)]);
        let _ = rig.notify.write(1);
        rig.pump();
        assert_eq!(rig.tx.used(&mem).len(), 6 + 3, "every chain is given back");
        assert!(rig.received().is_empty());
        Ok(())
    }

    #[test]
    fn silent_clients_and_silent_guests_run_out_of_time() -> TestResult {
        let mut rig = Rig::new()?;
        // A client that never sends its line; one whose REQUEST the guest
        // never answers.
        let mut mute = UnixStream::connect(&rig.path)?;
        let mut asked = UnixStream::connect(&rig.path)?;
        asked.write_all(b"CONNECT 5\n")?;
        rig.pump();
        assert_eq!(rig.t.device().host().connections(), 2);
        rig.post_rx(1);
        let _ = rig.notify.write(1);
        rig.pump();
        assert_eq!(rig.received()[0].0.op, op::REQUEST);
        let later = Instant::now() + connection::CONNECT_TIMEOUT + connection::HANDSHAKE_TIMEOUT;
        rig.t.parts().0.host.expire(later);
        assert_eq!(rig.t.device().host().connections(), 0);
        let mut b = [0u8; 1];
        assert_eq!(mute.read(&mut b)?, 0);
        assert_eq!(asked.read(&mut b)?, 0);
        // The guest, which was asked, is told the request is withdrawn.
        rig.post_rx(1);
        let _ = rig.notify.write(1);
        rig.pump();
        assert_eq!(rig.received()[0].0.op, op::RST);
        Ok(())
    }

    #[test]
    fn connections_are_bounded() -> TestResult {
        let mut rig = Rig::new()?;
        let mut clients = Vec::new();
        for _ in 0..uds::MAX_CONNECTIONS + 5 {
            clients.push(UnixStream::connect(&rig.path)?);
            rig.pump();
        }
        assert_eq!(rig.t.device().host().connections(), uds::MAX_CONNECTIONS);
        // The ones past the limit were closed.
        let last = clients.last_mut().ok_or("no client")?;
        let mut b = [0u8; 1];
        assert_eq!(last.read(&mut b)?, 0);
        // A guest REQUEST past the limit: RST.
        rig.post_rx(1);
        rig.send(from_guest(op::REQUEST, 1, 2), &[]);
        assert_eq!(rig.received()[0].0.op, op::RST);
        Ok(())
    }

    #[test]
    fn a_restored_device_tells_the_guest_of_a_transport_reset() -> TestResult {
        let mut rig = Rig::new()?;
        let saved = rig.t.state();
        let mem = rig.mem();
        rig.ev.offer(&mem, &[(0x1_0000, 4, true)]);
        mem.write_obj(0xffff_ffffu32, GuestAddress(0x1_0000)).ok();
        // The rig's device, as a restore would make it.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("r.sock");
        let (listener, _bound) = uds::bind(&path)?;
        let config = VsockConfig {
            guest_cid: 9,
            uds_path: path,
        };
        let dev = Vsock::new(&config, listener, rig.epoll.clone())?.restored();
        let irq = EventFd::new(0)?;
        rig.t = MmioTransport::restored(dev, mem.clone(), irq, rig.notify.try_clone()?, &saved)?;
        assert!(rig.t.is_active());
        rig.pump();
        assert_eq!(rig.ev.used(&mem), vec![(0, 4)]);
        let id: u32 = mem.read_obj(GuestAddress(0x1_0000))?;
        assert_eq!(id, EVENT_TRANSPORT_RESET);
        let mut cid = [0u8; 8];
        rig.t.read(0x100, &mut cid);
        assert_eq!(u64::from_le_bytes(cid), 9, "the new CID");
        Ok(())
    }

    #[test]
    fn the_socket_is_private_replaces_a_stale_one_and_nothing_else() -> TestResult {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s");
        let (l, b) = uds::bind(&path)?;
        assert_eq!(
            std::fs::metadata(&path)?.permissions().mode() & 0o777,
            0o600
        );
        // A live one is not replaced.
        assert!(matches!(uds::bind(&path), Err(Error::InUse(_))));
        drop(l);
        // A stale socket (its listener gone, the file left) is replaced.
        std::mem::forget(b);
        let (_l, b) = uds::bind(&path)?;
        drop(b);
        assert!(!path.exists(), "removed with its Bound");
        std::fs::write(&path, b"data")?;
        assert!(matches!(uds::bind(&path), Err(Error::NotASocket(_))));
        assert_eq!(std::fs::read(&path)?, b"data");
        Ok(())
    }
}
