//! virtio-fs: a host directory the guest mounts (`mount -t virtiofs TAG
//! DIR`), its FUSE requests served by a file server in another process
//! (virtiofsd, started by [`crate::virtiofsd`]) through vhost-user: the
//! server maps guest RAM (a memfd, [`crate::memory::create_shared`]) and
//! works the queues itself. The VMM only speaks the transport's
//! registers, serves the configuration space and relays interrupts.
//!
//! Files, in the shape of `devices/vsock/`: this one (the device, its
//! thread, its error enum) and [`vhost`] (the vhost-user conversation).
//!
//! Queues: 0 hiprio (FORGET and interrupts of requests), 1 the one
//! request queue. Configuration space (virtio 1.2, 5.11.4): `tag[36]`
//! (the tag, NUL-padded) then `le32 num_request_queues` = 1; read-only,
//! writes dropped. Features: what the server offers of VERSION_1,
//! INDIRECT_DESC and EVENT_IDX ([`vhost::PASSED_FEATURES`]).
//!
//! The paths, per queue:
//! - kick: an eventfd registered as a KVM ioeventfd on the window's
//!   QueueNotify with the queue's index as datamatch, handed to the
//!   server (SET_VRING_KICK): a guest notify reaches the server without
//!   the VMM. Where KVM did not take the write, the MMIO exit path
//!   signals the same eventfd ([`VirtioDevice::queue_notify`]).
//! - call: an eventfd the server signals (SET_VRING_CALL). It cannot be
//!   an irqfd: Linux's virtio_mmio interrupt handler reads
//!   InterruptStatus and does nothing while it is 0. So the device's
//!   thread, `virtiofs<n>`, waits on the call eventfds, and for each
//!   sets INT_VRING under the transport's lock and raises the GSI (the
//!   transport's irqfd).
//!
//! Activation (the driver's DRIVER_OK) and reset run on the vCPU that
//! wrote the status, under the transport's lock: the server is started
//! on the queues, or stopped (GET_VRING_BASE) before the driver may use
//! the memory again. Each message waits at most [`vhost::TIMEOUT`].
//!
//! The server going away (killed, crashed, a message failed or timed
//! out) does not stop the VM: the device is cut off from it for good and
//! set to DEVICE_NEEDS_RESET, with a configuration interrupt if the
//! driver was live (what the virtio spec asks). Linux's virtio-fs driver
//! does nothing with that: requests in flight never complete, and
//! processes using the mount wait; the rest of the guest goes on, and
//! the status shows in the guest's
//! `/sys/bus/virtio/devices/virtio<n>/status` (bit 0x40). A driver reset
//! and DRIVER_OK again fail the same way (no reconnection).
//!
//! Under the thread's seccomp filter ([`crate::seccomp::Thread::Virtiofs`]):
//! epoll, eventfd reads, taking the socket out of the epoll set and
//! cutting it (`shutdown(SHUT_RDWR)`). The
//! vCPU threads of a VM with shares have `sendmsg`/`recvmsg`/`shutdown`
//! on top of theirs ([`crate::seccomp::Thread::VcpuShares`]) for the
//! conversation.
//!
//! Snapshots: none (the VM refuses them, see
//! [`crate::vm::Error::SnapshotWithShares`]).

pub mod vhost;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::TAG_MAX;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::{VirtioDevice, INT_VRING};

/// Errors of the virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file server could not be reached or negotiated with.
    #[error("the file server of share {tag:?}")]
    Backend {
        /// The share's tag.
        tag: String,
        /// What failed.
        #[source]
        source: vhost::Error,
    },
    /// An eventfd could not be made.
    #[error("eventfd")]
    EventFd(#[source] std::io::Error),
    /// An epoll call failed.
    #[error("epoll")]
    Epoll(#[source] std::io::Error),
    /// The device thread could not be started.
    #[error("starting the virtio-fs thread")]
    Thread(#[source] std::io::Error),
    /// The device thread could not be filtered.
    #[error("seccomp")]
    Seccomp(#[from] crate::seccomp::Error),
    /// The transport's lock was poisoned (a panic while holding it).
    #[error("the virtio-fs device's lock is poisoned")]
    Poisoned,
}

/// virtio device ID of a file system device.
pub const DEVICE_ID: u32 = 26;
/// Queue sizes: hiprio, then the request queue.
pub const QUEUE_SIZES: &[u16] = &[128, 1024];
/// Request queues (past the hiprio one).
pub const REQUEST_QUEUES: u32 = 1;
/// Bytes of the configuration space: the tag and num_request_queues.
pub const CONFIG_SIZE: usize = TAG_MAX + 4;

/// The device.
pub struct VirtioFs {
    config: [u8; CONFIG_SIZE],
    tag: String,
    /// The server's connection; `None` once it is gone.
    backend: Option<vhost::Backend>,
    /// The features offered to the guest (fixed at connection).
    features: u64,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    /// Why the server was cut off, once it was.
    failure: Option<String>,
}

/// The configuration space of a share tagged `tag` (at most
/// [`TAG_MAX`] bytes, as [`crate::config::ShareConfig::validate`] checks;
/// longer is cut).
pub fn config_space(tag: &str) -> [u8; CONFIG_SIZE] {
    let mut c = [0u8; CONFIG_SIZE];
    let t = tag.as_bytes();
    let n = t.len().min(TAG_MAX);
    c[..n].copy_from_slice(&t[..n]);
    c[TAG_MAX..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
    c
}

fn eventfds(n: usize) -> Result<Vec<EventFd>, Error> {
    (0..n)
        .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd))
        .collect()
}

impl VirtioFs {
    /// The device of share `tag`, served by `backend` (connected and
    /// negotiated).
    pub fn new(tag: &str, backend: vhost::Backend) -> Result<Self, Error> {
        Ok(Self {
            config: config_space(tag),
            tag: tag.into(),
            features: backend.guest_features(),
            backend: Some(backend),
            kicks: eventfds(QUEUE_SIZES.len())?,
            calls: eventfds(QUEUE_SIZES.len())?,
            failure: None,
        })
    }

    /// Connects to the server listening at `socket` for share `tag`.
    pub fn connect(tag: &str, socket: &std::path::Path) -> Result<Self, Error> {
        let backend = vhost::Backend::connect(socket, QUEUE_SIZES.len()).map_err(|source| {
            Error::Backend {
                tag: tag.into(),
                source,
            }
        })?;
        Self::new(tag, backend)
    }

    /// Queue `i`'s kick eventfd (for KVM's ioeventfd).
    pub fn kicks(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The share's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Why the server was cut off, if it was.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// Cuts the server off for good after `why`.
    fn fail(&mut self, why: String) {
        if let Some(b) = self.backend.take() {
            b.hang_up();
        }
        self.failure.get_or_insert(why);
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &'static [u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _: u64, _: &[u8]) {}

    fn activate(&mut self, acked: u64, queues: &[Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(b) = self.backend.as_mut() else {
            return false;
        };
        match b.start(acked, mem, queues, &self.kicks, &self.calls) {
            Ok(()) => {
                // The server looks at each ring once, whether or not the
                // driver notified before it was watching.
                for k in &self.kicks {
                    let _ = k.write(1);
                }
                true
            }
            // A ring outside shared RAM is the guest's doing: this
            // activation fails, the server stays (it was told nothing
            // yet, the rings are checked first).
            Err(e @ vhost::Error::Ring(..)) => {
                self.failure = Some(e.to_string());
                false
            }
            Err(e) => {
                self.fail(e.to_string());
                false
            }
        }
    }

    fn reset(&mut self) {
        if let Some(b) = self.backend.as_mut() {
            if let Err(e) = b.stop() {
                self.fail(e.to_string());
            }
        }
        // Calls the server signalled for the rings now gone are read by
        // the device thread, which raises nothing for an inactive device.
    }

    fn queue_notify(&self, queue: u32) -> bool {
        if let Some(k) = usize::try_from(queue).ok().and_then(|q| self.kicks.get(q)) {
            let _ = k.write(1);
        }
        // An index past the queues is dropped, never the transport's.
        true
    }
}

/// The device behind its transport, shared by the vCPU threads and the
/// device thread.
pub type Shared = Arc<Mutex<MmioTransport<VirtioFs>>>;

/// epoll token of the stop eventfd.
const STOP: u64 = u64::MAX;
/// epoll token of the server's socket.
const SOCKET: u64 = u64::MAX - 1;

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

/// Starts device `n`'s thread (named `virtiofs<n>`): call eventfds to
/// interrupts, the server's hang-up to NEEDS_RESET. With `seccomp`, the
/// thread installs its filter first.
pub fn spawn(device: Shared, n: usize, seccomp: bool) -> Result<Worker, Error> {
    let epoll = Epoll::new().map_err(Error::Epoll)?;
    let stop = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
    let (calls, socket) = {
        let t = device.lock().map_err(|_| Error::Poisoned)?;
        let d = t.device();
        let calls = d
            .calls
            .iter()
            .map(|c| c.try_clone().map_err(Error::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        (calls, d.backend.as_ref().map(|b| b.socket_fd()))
    };
    let add = |fd: RawFd, events: EventSet, token: u64| {
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
            .map_err(Error::Epoll)
    };
    add(stop.as_raw_fd(), EventSet::IN, STOP)?;
    for (i, c) in calls.iter().enumerate() {
        add(c.as_raw_fd(), EventSet::IN, i as u64)?;
    }
    if let Some(fd) = socket {
        // Hang-ups only: the vCPUs read the server's answers.
        add(fd, EventSet::READ_HANG_UP, SOCKET)?;
    }
    let thread_stop = stop.try_clone().map_err(Error::EventFd)?;
    let thread = std::thread::Builder::new()
        .name(format!("virtiofs{n}"))
        .spawn(move || {
            let r = run(&device, &epoll, &calls, socket, seccomp);
            drop(thread_stop);
            r
        })
        .map_err(Error::Thread)?;
    Ok(Worker {
        stop,
        thread: Some(thread),
    })
}

fn run(
    device: &Shared,
    epoll: &Epoll,
    calls: &[EventFd],
    socket: Option<RawFd>,
    seccomp: bool,
) -> Result<(), Error> {
    if seccomp {
        crate::seccomp::install(crate::seccomp::Thread::Virtiofs)?;
    }
    let mut events = [EpollEvent::default(); 8];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(Error::Epoll(e)),
        };
        let mut called = false;
        let mut hung_up = false;
        for ev in &events[..n] {
            match ev.data() {
                STOP => return Ok(()),
                SOCKET => hung_up = true,
                i => {
                    if let Some(c) = usize::try_from(i).ok().and_then(|i| calls.get(i)) {
                        called |= c.read().is_ok();
                    }
                }
            }
        }
        if hung_up {
            if let Some(fd) = socket {
                // Level-triggered: it would wake the thread for ever.
                let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
        let mut t = device.lock().map_err(|_| Error::Poisoned)?;
        if hung_up {
            t.parts().0.fail("the file server hung up".into());
            t.set_needs_reset();
        }
        if called && t.is_active() {
            t.parts().3.raise(INT_VRING);
        }
    }
}

#[cfg(test)]
mod tests;
