//! The vhost-user frontend of one virtio-fs device: the conversation
//! with its file server, on rust-vmm's `vhost` crate.
//!
//! [`Backend::connect`] (before the VM runs): connect, SET_OWNER,
//! GET_FEATURES, and with VHOST_USER_F_PROTOCOL_FEATURES
//! GET/SET_PROTOCOL_FEATURES (REPLY_ACK only, so every later message is
//! acknowledged and a backend that failed one says so). The virtio
//! features come first because the guest reads the device's features
//! before it sets DRIVER_OK.
//!
//! [`Backend::start`] (the guest's DRIVER_OK): SET_FEATURES (what the
//! driver accepted, plus PROTOCOL_FEATURES), SET_MEM_TABLE (the memfd
//! regions of guest RAM, their fds passed along), then for each queue
//! SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR (addresses in this
//! process, which the backend translates through the memory table),
//! SET_VRING_CALL, SET_VRING_KICK, SET_VRING_ENABLE.
//!
//! [`Backend::stop`] (the guest's reset): per queue SET_VRING_ENABLE 0
//! and GET_VRING_BASE, after which the backend no longer touches the
//! ring, so a later DRIVER_OK starts afresh.
//!
//! Every message waits at most [`TIMEOUT`] for its answer: a backend
//! that hangs costs the vCPU that asked that long, never the VM.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::F_VERSION_1;

/// Errors of the vhost-user conversation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file server's socket could not be reached.
    #[error("connecting to the file server at {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    /// A message failed (the server is gone, refused it, or did not
    /// answer in time).
    #[error("vhost-user {0}")]
    Message(&'static str, #[source] vhost::Error),
    /// The server does not offer VIRTIO_F_VERSION_1.
    #[error("the file server does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NoVersion1(u64),
    /// A region of guest RAM that the server cannot map (no memfd).
    #[error("guest RAM at {0:#x} is not shared memory")]
    NotShared(u64),
    /// A queue whose ring is not inside shared guest RAM.
    #[error("queue {0}: its {1} is not inside shared guest RAM")]
    Ring(usize, &'static str),
    /// More queues than eventfds (a bug of the device).
    #[error("{queues} queues, {fds} kick/call eventfds")]
    Eventfds {
        /// Queues.
        queues: usize,
        /// Kick or call eventfds.
        fds: usize,
    },
}

/// How long one message may wait for its answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The virtio features a guest may have of a file server, if it offers
/// them: virtio 1.x, indirect descriptors and event indices (both only
/// shape the rings, which the server works; our transport does not
/// care). virtio-fs's own feature (notification queue) is not offered.
pub const PASSED_FEATURES: u64 = F_VERSION_1 | (1 << 28) | (1 << 29);

/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit, never the guest's.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// One file server's connection.
pub struct Backend {
    frontend: Frontend,
    /// What the server offers (virtio and vhost-user bits).
    features: u64,
    /// Whether PROTOCOL_FEATURES was negotiated (rings then start
    /// disabled and need SET_VRING_ENABLE).
    protocol: bool,
    /// Queues started (to stop on reset).
    started: usize,
}

fn msg(what: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |e| Error::Message(what, e)
}

impl Backend {
    /// Connects to the server listening at `path` and negotiates what
    /// can be before the guest comes (see the module's doc).
    pub fn connect(path: &Path, queues: usize) -> Result<Self, Error> {
        let sock = UnixStream::connect(path).map_err(|e| Error::Connect(path.into(), e))?;
        Self::from_stream(sock, queues)
    }

    /// [`connect`](Self::connect) on a connected socket.
    pub fn from_stream(sock: UnixStream, queues: usize) -> Result<Self, Error> {
        let io = |e: std::io::Error| Error::Message("socket timeouts", vhost::Error::IOError(e));
        sock.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
        sock.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
        let mut frontend = Frontend::from_stream(sock, queues as u64);
        frontend.set_owner().map_err(msg("SET_OWNER"))?;
        let features = frontend.get_features().map_err(msg("GET_FEATURES"))?;
        if features & F_VERSION_1 == 0 {
            return Err(Error::NoVersion1(features));
        }
        let protocol = features & PROTOCOL_FEATURES != 0;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(msg("GET_PROTOCOL_FEATURES"))?;
            let wanted = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(wanted)
                .map_err(msg("SET_PROTOCOL_FEATURES"))?;
            if !wanted.is_empty() {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        Ok(Self {
            frontend,
            features,
            protocol,
            started: 0,
        })
    }

    /// The virtio features to offer the guest.
    pub fn guest_features(&self) -> u64 {
        self.features & PASSED_FEATURES
    }

    /// The socket (to watch for the server hanging up).
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }

    /// Cuts the connection (both directions): the server sees EOF and
    /// ends; the device's thread sees the hang-up.
    pub fn hang_up(&self) {
        // SAFETY: shutdown on our own socket, which `frontend` keeps
        // open; no memory is passed.
        unsafe { libc::shutdown(self.socket_fd(), libc::SHUT_RDWR) };
    }

    /// Starts the server on `queues` with the driver's `acked` features;
    /// `kicks[i]` and `calls[i]` are queue `i`'s eventfds.
    pub fn start(
        &mut self,
        acked: u64,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        kicks: &[EventFd],
        calls: &[EventFd],
    ) -> Result<(), Error> {
        if kicks.len() < queues.len() || calls.len() < queues.len() {
            return Err(Error::Eventfds {
                queues: queues.len(),
                fds: kicks.len().min(calls.len()),
            });
        }
        let rings = queues
            .iter()
            .enumerate()
            .map(|(i, q)| ring(mem, i, q))
            .collect::<Result<Vec<_>, _>>()?;
        let regions = mem_table(mem)?;
        let f = &mut self.frontend;
        let extra = self.features & PROTOCOL_FEATURES;
        f.set_features((acked & PASSED_FEATURES) | extra)
            .map_err(msg("SET_FEATURES"))?;
        f.set_mem_table(&regions).map_err(msg("SET_MEM_TABLE"))?;
        for (i, (q, ring)) in queues.iter().zip(&rings).enumerate() {
            f.set_vring_num(i, q.size()).map_err(msg("SET_VRING_NUM"))?;
            f.set_vring_base(i, q.next_avail())
                .map_err(msg("SET_VRING_BASE"))?;
            f.set_vring_addr(i, ring).map_err(msg("SET_VRING_ADDR"))?;
            f.set_vring_call(i, &calls[i])
                .map_err(msg("SET_VRING_CALL"))?;
            f.set_vring_kick(i, &kicks[i])
                .map_err(msg("SET_VRING_KICK"))?;
            self.started = i + 1;
            if self.protocol {
                f.set_vring_enable(i, true)
                    .map_err(msg("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops every started queue: the server no longer touches them.
    pub fn stop(&mut self) -> Result<(), Error> {
        let n = std::mem::take(&mut self.started);
        for i in 0..n {
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, false)
                    .map_err(msg("SET_VRING_ENABLE"))?;
            }
            self.frontend
                .get_vring_base(i)
                .map_err(msg("GET_VRING_BASE"))?;
        }
        Ok(())
    }
}

/// Whether region `r` is shared RAM: a `MAP_SHARED` file mapping (the
/// memfd). The root disk is a file mapping too, but private, of a file
/// open read-only, which a server could not map writable (virtiofsd
/// failed every SET_MEM_TABLE with EACCES when it was sent), and no
/// server needs it, nor the mailbox.
fn is_shared_ram(r: &vm_memory::GuestRegionMmap) -> bool {
    r.file_offset().is_some() && r.flags() & libc::MAP_SHARED != 0
}

/// The memory table: every region of shared RAM ([`is_shared_ram`]).
fn mem_table(mem: &GuestMemoryMmap) -> Result<Vec<VhostUserMemoryRegionInfo>, Error> {
    let mut out = Vec::new();
    for r in mem.iter() {
        if !is_shared_ram(r) {
            continue;
        }
        let Some(f) = r.file_offset() else {
            continue;
        };
        let start = r.start_addr().raw_value();
        let host = r
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|_| Error::NotShared(start))?;
        out.push(VhostUserMemoryRegionInfo {
            guest_phys_addr: start,
            memory_size: r.len(),
            userspace_addr: host as u64,
            mmap_offset: f.start(),
            mmap_handle: f.file().as_raw_fd(),
        });
    }
    if out.is_empty() {
        return Err(Error::NotShared(0));
    }
    Ok(out)
}

/// Where `addr`..`addr + len` is in this process, if it lies inside one
/// shared region of `mem`.
fn shared_host_address(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let r = mem.find_region(GuestAddress(addr))?;
    if !is_shared_ram(r) {
        return None;
    }
    let offset = addr.checked_sub(r.start_addr().raw_value())?;
    if offset.checked_add(len)? > r.len() {
        return None;
    }
    let host = r
        .get_host_address(vm_memory::MemoryRegionAddress(offset))
        .ok()?;
    Some(host as u64)
}

/// Queue `index`'s ring addresses as the server wants them (this
/// process's), each part checked to lie whole in shared RAM: the guest
/// chose them, and a ring in the root disk's or the mailbox's private
/// mapping would be out of the server's reach.
fn ring(mem: &GuestMemoryMmap, index: usize, q: &Queue) -> Result<VringConfigData, Error> {
    let n = u64::from(q.size());
    let part = |addr: u64, len: u64, what| {
        shared_host_address(mem, addr, len).ok_or(Error::Ring(index, what))
    };
    Ok(VringConfigData {
        queue_max_size: q.max_size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: part(q.desc_table(), 16 * n, "descriptor table")?,
        used_ring_addr: part(q.used_ring(), 6 + 8 * n, "used ring")?,
        avail_ring_addr: part(q.avail_ring(), 6 + 2 * n, "available ring")?,
        log_addr: None,
    })
}
