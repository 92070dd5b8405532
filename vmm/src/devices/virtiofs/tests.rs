//! The device against a stand-in vhost-user server on a socket pair: what
//! it is told and when, the configuration space, kicks, calls becoming
//! interrupts, reset, a server that hangs up, rings the server could not
//! reach.

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::*;
use crate::virtio::mmio::tests::handshake;
use crate::virtio::mmio::{status, MmioTransport, CONFIG, REG_QUEUE_NOTIFY};
use crate::virtio::{F_VERSION_1, INT_CONFIG};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_STATUS: u64 = 0x070;

/// vhost-user request codes the stand-in answers.
mod req {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const SET_VRING_ENABLE: u32 = 18;
}

/// One message the stand-in got.
struct Msg {
    code: u32,
    body: Vec<u8>,
    fds: Vec<File>,
}

impl Msg {
    fn u64_at(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.body[at..at + 8]);
        u64::from_le_bytes(b)
    }
    fn u32_at(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.body[at..at + 4]);
        u32::from_le_bytes(b)
    }
}

/// VIRTIO_RING_F_INDIRECT_DESC, VHOST_USER_F_PROTOCOL_FEATURES.
const INDIRECT: u64 = 1 << 28;
const PROTOCOL: u64 = 1 << 30;
/// What the stand-in offers: virtio-fs's notification feature (bit 0)
/// too, which is not passed on.
const SERVER_FEATURES: u64 = F_VERSION_1 | INDIRECT | PROTOCOL | 1;
/// REPLY_ACK and MQ.
const SERVER_PROTOCOL: u64 = 0x8 | 0x1;

/// A stand-in vhost-user server: answers what needs an answer (and acks
/// what asks for one), logs every message with its descriptors.
struct Server {
    log: Arc<Mutex<Vec<Msg>>>,
    sock: UnixStream,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> std::io::Result<(Self, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (l, s) = (log.clone(), theirs.try_clone()?);
        let thread = std::thread::spawn(move || serve(&s, &l));
        Ok((
            Self {
                log,
                sock: theirs,
                thread: Some(thread),
            },
            ours,
        ))
    }

    fn codes(&self) -> Vec<u32> {
        self.log
            .lock()
            .map(|l| l.iter().map(|m| m.code).collect())
            .unwrap_or_default()
    }

    /// The server dies: its end closes.
    fn kill(mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(s: &UnixStream, log: &Mutex<Vec<Msg>>) {
    loop {
        let mut hdr = [0u8; 12];
        let mut fds = [-1; 8];
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        }];
        // SAFETY: the iovec points at `hdr`, alive and writable.
        let Ok((n, nfds)) = (unsafe { s.recv_with_fds(&mut iov, &mut fds) }) else {
            return;
        };
        if n < 12 {
            return;
        }
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8));
        let mut body = vec![0u8; size as usize];
        if (&*s).read_exact(&mut body).is_err() {
            return;
        }
        let files = fds[..nfds]
            .iter()
            // SAFETY: each fd was just received and is ours alone.
            .map(|&fd| unsafe { File::from_raw_fd(fd) })
            .collect();
        let reply: Option<Vec<u8>> = match code {
            req::GET_FEATURES => Some(SERVER_FEATURES.to_le_bytes().to_vec()),
            req::GET_PROTOCOL_FEATURES => Some(SERVER_PROTOCOL.to_le_bytes().to_vec()),
            req::GET_VRING_BASE => Some(body[..8].to_vec()),
            _ if flags & 0x8 != 0 => Some(0u64.to_le_bytes().to_vec()),
            _ => None,
        };
        if let Ok(mut l) = log.lock() {
            l.push(Msg {
                code,
                body,
                fds: files,
            });
        }
        if let Some(r) = reply {
            let mut out = Vec::new();
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes());
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(&r);
            if std::io::Write::write_all(&mut &*s, &out).is_err() {
                return;
            }
        }
    }
}

/// 1 MiB of shared RAM at 0 (the test handshake's queues are there), and
/// 64 KiB of private memory above it (like the mailbox's).
fn memory() -> Result<GuestMemoryMmap, Box<dyn std::error::Error>> {
    let mut regions = crate::memory::shared_ram(0x10_0000)?;
    regions.push(GuestRegionMmap::from_range(
        GuestAddress(0x10_0000),
        0x1_0000,
        None,
    )?);
    Ok(GuestMemoryMmap::from_regions(regions)?)
}

fn r(t: &MmioTransport<VirtioFs>, off: u64) -> u32 {
    let mut d = [0u8; 4];
    t.read(off, &mut d);
    u32::from_le_bytes(d)
}

fn w(t: &mut MmioTransport<VirtioFs>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

/// A device on a stand-in server, its transport's irqfd kept to read.
fn device() -> Result<(Server, MmioTransport<VirtioFs>, EventFd), Box<dyn std::error::Error>> {
    let (server, sock) = Server::start()?;
    let backend = vhost::Backend::from_stream(sock, QUEUE_SIZES.len())?;
    let dev = VirtioFs::new("data", backend)?;
    let irq = EventFd::new(EFD_NONBLOCK)?;
    let t = MmioTransport::new(
        dev,
        memory()?,
        irq.try_clone()?,
        EventFd::new(EFD_NONBLOCK)?,
    )?;
    Ok((server, t, irq))
}

fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn the_config_space_is_the_tag_and_one_request_queue() {
    let c = config_space("data");
    assert_eq!(&c[..4], b"data");
    assert!(c[4..TAG_MAX].iter().all(|&b| b == 0));
    assert_eq!(&c[TAG_MAX..], &1u32.to_le_bytes());
    let full = "t".repeat(TAG_MAX);
    assert_eq!(&config_space(&full)[..TAG_MAX], full.as_bytes());
    // Longer than the field (never validated so): cut, the count kept.
    let c = config_space(&"x".repeat(100));
    assert_eq!(&c[TAG_MAX..], &1u32.to_le_bytes());
}

#[test]
fn negotiation_offers_only_what_the_server_has_and_we_pass() -> TestResult {
    let (server, t, _irq) = device()?;
    // SET_PROTOCOL_FEATURES has no answer: it may still be on its way.
    assert!(wait_for(|| server.codes().len() >= 4));
    assert_eq!(
        server.codes(),
        [
            req::SET_OWNER,
            req::GET_FEATURES,
            req::GET_PROTOCOL_FEATURES,
            req::SET_PROTOCOL_FEATURES
        ]
    );
    // REPLY_ACK only, not MQ.
    let acked = server.log.lock().map(|l| l[3].u64_at(0)).unwrap_or(0);
    assert_eq!(acked, 0x8);
    // Neither the notification feature nor PROTOCOL_FEATURES reach the guest.
    assert_eq!(t.device().features(), F_VERSION_1 | INDIRECT);
    // Config reads of any size and offset, past the end as zero.
    let mut tag = [0u8; 4];
    t.read(CONFIG, &mut tag);
    assert_eq!(&tag, b"data");
    assert_eq!(r(&t, CONFIG + TAG_MAX as u64), 1);
    let mut b = [0xffu8; 8];
    t.read(CONFIG + 38, &mut b);
    assert_eq!(b, [0; 8]);
    t.read(u64::MAX - 4, &mut b);
    assert_eq!(b, [0; 8]);
    let mut one = [0u8; 1];
    t.read(CONFIG + 3, &mut one);
    assert_eq!(one, [b'a']);
    server.kill();
    Ok(())
}

#[test]
fn driver_ok_starts_the_server_and_reset_stops_it() -> TestResult {
    let (server, t, irq) = device()?;
    let shared: Shared = Arc::new(Mutex::new(t));
    let worker = spawn(shared.clone(), 0, false)?;
    {
        let mut t = shared.lock().map_err(|_| "poisoned")?;
        handshake(&mut *t, F_VERSION_1 | INDIRECT);
        assert!(t.is_active(), "not live: {:?}", t.device().failure());
    }
    use req::*;
    let per_queue = [
        SET_VRING_NUM,
        SET_VRING_BASE,
        SET_VRING_ADDR,
        SET_VRING_CALL,
        SET_VRING_KICK,
        SET_VRING_ENABLE,
    ];
    let mut want = vec![
        SET_OWNER,
        GET_FEATURES,
        GET_PROTOCOL_FEATURES,
        SET_PROTOCOL_FEATURES,
        SET_FEATURES,
        SET_MEM_TABLE,
    ];
    want.extend(per_queue);
    want.extend(per_queue);
    assert_eq!(server.codes(), want);
    let (kick1, call1) = {
        let log = server.log.lock().map_err(|_| "poisoned")?;
        // The driver's features and PROTOCOL_FEATURES.
        assert_eq!(log[4].u64_at(0), F_VERSION_1 | INDIRECT | PROTOCOL);
        // One region: the memfd, guest 0, 1 MiB, offset 0; not the
        // private one.
        let m = &log[5];
        assert_eq!(m.u32_at(0), 1, "regions");
        assert_eq!(m.u64_at(8), 0, "guest address");
        assert_eq!(m.u64_at(16), 0x10_0000, "size");
        assert_eq!(m.u64_at(32), 0, "mmap offset");
        assert_eq!(m.fds.len(), 1);
        // Queue 1: size 16 (the handshake's), base 0, its ring addresses
        // in this process.
        let q1 = &log[6 + 6..];
        assert_eq!((q1[0].u32_at(0), q1[0].u32_at(4)), (1, 16));
        assert_eq!((q1[1].u32_at(0), q1[1].u32_at(4)), (1, 0));
        let host = {
            let mut t = shared.lock().map_err(|_| "poisoned")?;
            t.parts().2.get_host_address(GuestAddress(0))? as u64
        };
        assert_eq!(q1[2].u64_at(8), host + 0x2000, "descriptor table");
        assert_eq!(q1[2].u64_at(16), host + 0x2800, "used ring");
        assert_eq!(q1[2].u64_at(24), host + 0x2400, "available ring");
        assert_eq!(q1[3].u64_at(0) & 0xff, 1, "call for queue 1");
        assert_eq!((q1[3].fds.len(), q1[4].fds.len()), (1, 1));
        assert_eq!((q1[5].u32_at(0), q1[5].u32_at(4)), (1, 1), "enabled");
        (q1[4].fds[0].try_clone()?, q1[3].fds[0].try_clone()?)
    };
    // The server's call is an interrupt: INT_VRING and the irqfd.
    let _ = irq.read();
    // SAFETY: the received eventfd is ours; this writes its 8-byte counter.
    let call = unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(call1)) };
    call.write(1)?;
    assert!(wait_for(|| shared
        .lock()
        .map(|t| r(&t, REG_INTERRUPT_STATUS) == INT_VRING)
        .unwrap_or(false)));
    assert_eq!(irq.read().ok(), Some(1));
    // A notify that KVM did not take goes to that queue's kick; garbage
    // indices go nowhere.
    // SAFETY: as above, the received kick eventfd.
    let kick = unsafe { EventFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(kick1)) };
    let _ = kick.read();
    {
        let mut t = shared.lock().map_err(|_| "poisoned")?;
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        w(&mut t, REG_QUEUE_NOTIFY, 77);
        w(&mut t, REG_QUEUE_NOTIFY, u32::MAX);
    }
    assert_eq!(kick.read().ok(), Some(1));
    // Reset: each ring disabled and its base fetched; then a second
    // DRIVER_OK starts it all again.
    let before = server.codes().len();
    {
        let mut t = shared.lock().map_err(|_| "poisoned")?;
        w(&mut t, REG_STATUS, 0);
        assert!(!t.is_active());
    }
    assert_eq!(
        server.codes()[before..],
        [
            SET_VRING_ENABLE,
            GET_VRING_BASE,
            SET_VRING_ENABLE,
            GET_VRING_BASE
        ]
    );
    {
        let mut t = shared.lock().map_err(|_| "poisoned")?;
        handshake(&mut *t, F_VERSION_1);
        assert!(t.is_active());
    }
    // The server dies: NEEDS_RESET and a configuration interrupt; the
    // device stays down through a reset and another DRIVER_OK.
    server.kill();
    assert!(wait_for(|| shared
        .lock()
        .map(|t| t.status() & status::NEEDS_RESET != 0)
        .unwrap_or(false)));
    {
        let mut t = shared.lock().map_err(|_| "poisoned")?;
        assert_ne!(r(&t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
        assert!(!t.is_active());
        assert_eq!(t.device().failure(), Some("the file server hung up"));
        handshake(&mut *t, F_VERSION_1);
        assert!(!t.is_active());
        assert_ne!(t.status() & status::NEEDS_RESET, 0);
    }
    worker.stop()?;
    Ok(())
}

#[test]
fn a_ring_outside_shared_ram_fails_that_activation_only() -> TestResult {
    let (server, mut t, _irq) = device()?;
    // Queue 1's used ring in the private region (the handshake's layout
    // but for that address).
    let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    handshake(&mut t, F_VERSION_1);
    assert!(t.is_active());
    w(&mut t, REG_STATUS, 0);
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE);
    w(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(&mut t, 0x024, 1);
    w(&mut t, 0x020, 1);
    w(&mut t, REG_STATUS, s);
    for n in 0..2u32 {
        let base = 0x1000 + 0x1000 * n;
        w(&mut t, 0x030, n);
        w(&mut t, 0x038, 16);
        w(&mut t, 0x080, base);
        w(&mut t, 0x090, base + 0x400);
        // Straddling the end of shared RAM for queue 1.
        let used = if n == 1 { 0x10_0000 - 8 } else { base + 0x800 };
        w(&mut t, 0x0a0, used);
        w(&mut t, 0x044, 1);
    }
    let before = server.codes().len();
    w(&mut t, REG_STATUS, s | status::DRIVER_OK);
    assert!(!t.is_active());
    assert_ne!(t.status() & status::NEEDS_RESET, 0);
    assert!(
        t.device()
            .failure()
            .is_some_and(|f| f.contains("used ring")),
        "{:?}",
        t.device().failure()
    );
    assert_eq!(server.codes().len(), before, "the server was told nothing");
    // The server is still there: a proper driver gets a live device.
    handshake(&mut t, F_VERSION_1);
    assert!(t.is_active());
    server.kill();
    Ok(())
}

#[test]
fn a_server_without_version_1_is_refused() -> TestResult {
    let (ours, theirs) = UnixStream::pair()?;
    let t = std::thread::spawn(move || {
        // Answers GET_FEATURES with 0, after SET_OWNER (no reply).
        let mut buf = [0u8; 12];
        let _ = (&theirs).read_exact(&mut buf);
        let _ = (&theirs).read_exact(&mut buf);
        let mut out = Vec::new();
        out.extend_from_slice(&req::GET_FEATURES.to_le_bytes());
        out.extend_from_slice(&5u32.to_le_bytes());
        out.extend_from_slice(&8u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
        let _ = std::io::Write::write_all(&mut &theirs, &out);
    });
    let r = vhost::Backend::from_stream(ours, 2);
    assert!(
        matches!(r, Err(vhost::Error::NoVersion1(0))),
        "{:?}",
        r.err()
    );
    let _ = t.join();
    Ok(())
}

#[test]
fn a_driver_writing_garbage_never_breaks_the_device_or_its_server() -> TestResult {
    let (server, t, _irq) = device()?;
    let shared: Shared = Arc::new(Mutex::new(t));
    let worker = spawn(shared.clone(), 0, false)?;
    // xorshift64: the same garbage every run.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut live = 0;
    for i in 0..20_000 {
        let mut t = shared.lock().map_err(|_| "poisoned")?;
        if i % 500 == 0 {
            handshake(&mut *t, F_VERSION_1);
        }
        let r = next();
        // Registers, the configuration space and past it.
        let offset = (r & 0x1ff) & !(r >> 40 & 3);
        let len = [1usize, 2, 4, 8][(r >> 20 & 3) as usize];
        let data = match offset {
            REG_STATUS => u64::from([0u8, 1, 3, 11, 15, 0x80][(r >> 30) as usize % 6]),
            _ => next(),
        }
        .to_le_bytes();
        if r >> 63 == 0 {
            t.write(offset, &data[..len]);
        } else {
            let mut out = [0u8; 8];
            t.read(offset, &mut out[..len]);
        }
        assert!(!t.is_active() || t.status() & status::DRIVER_OK != 0);
        live += u32::from(t.is_active());
    }
    let mut t = shared.lock().map_err(|_| "poisoned")?;
    // The server took it all and is still there: a proper driver gets a
    // live device.
    assert_eq!(t.device().failure(), None);
    handshake(&mut *t, F_VERSION_1);
    assert!(t.is_active());
    assert!(live > 100, "only {live} accesses met a live device");
    drop(t);
    worker.stop()?;
    server.kill();
    Ok(())
}
