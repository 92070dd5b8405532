//! A vsock packet as it crosses the virtqueues: the 44-byte
//! `virtio_vsock_hdr` and its payload, read out of a guest's tx
//! descriptor chain or written into an rx chain.
//!
//! The guest is hostile here: every length and address in a header or a
//! descriptor is its own. So a tx packet is *copied* out of guest memory
//! (the guest cannot change it while the device looks at it), only after
//! its `len` is checked against [`MAX_PAYLOAD`] (the most that is ever
//! allocated for one), and only if the chain's readable buffers hold that
//! many bytes; a chain with a device-writable buffer, more than
//! [`MAX_DESCRIPTORS`] buffers, or a buffer outside guest memory is
//! refused. An rx chain is checked whole (write-only, inside guest memory)
//! *before* anything is taken from a host socket to fill it, so a bad
//! buffer costs the guest its buffer, never the stream a byte. Loops in a
//! chain end where `virtio-queue` ends them (at most the queue's size of
//! descriptors). Neither the header nor the data need sit in one
//! descriptor: they are gathered from, and scattered over, whatever the
//! chain has (Linux 6.1 uses two descriptors, 6.2 and later one).
//!
//! Why not `virtio-vsock`'s `VsockPacket`: it wants the header in one
//! descriptor and the data in at most one more, each in one host mapping,
//! and hands out views of guest memory that the guest can change under us.

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Errors of a packet from or for the guest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A tx chain has a buffer the device may write (it must only read).
    #[error("a device-writable buffer in a tx chain")]
    WritableInTx,
    /// An rx chain has a buffer the device may only read.
    #[error("a device-readable buffer in an rx chain")]
    ReadableInRx,
    /// A chain of more buffers than a packet needs.
    #[error("a chain of more than {MAX_DESCRIPTORS} buffers")]
    TooManyDescriptors,
    /// The header's `len` is larger than the device takes.
    #[error("a payload of {0} bytes, more than {MAX_PAYLOAD}")]
    TooLong(u32),
    /// The chain ends before the header and payload do.
    #[error("the chain holds {have} bytes, the packet needs {need}")]
    Short {
        /// What the packet needs.
        need: usize,
        /// What the chain holds.
        have: usize,
    },
    /// A buffer outside guest memory.
    #[error("a buffer at {addr:#x} ({len} bytes) outside guest memory")]
    OutOfMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: usize,
    },
}

/// Size of `virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;
/// Largest payload the device takes from the guest or gives it (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;
/// Most buffers in one chain: a header and a payload need two; Linux
/// never uses more than a few.
pub const MAX_DESCRIPTORS: usize = 16;

/// `virtio_vsock_hdr`, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context ID.
    pub src_cid: u64,
    /// Destination context ID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (1: stream).
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (shutdown's RCV and SEND).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has taken from its receive buffer, ever.
    pub fwd_cnt: u32,
}

fn le<const N: usize>(b: &[u8; HEADER_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl Header {
    /// Parses the wire format (little-endian).
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Self {
        Self {
            src_cid: u64::from_le_bytes(le(b, 0)),
            dst_cid: u64::from_le_bytes(le(b, 8)),
            src_port: u32::from_le_bytes(le(b, 16)),
            dst_port: u32::from_le_bytes(le(b, 20)),
            len: u32::from_le_bytes(le(b, 24)),
            type_: u16::from_le_bytes(le(b, 28)),
            op: u16::from_le_bytes(le(b, 30)),
            flags: u32::from_le_bytes(le(b, 32)),
            buf_alloc: u32::from_le_bytes(le(b, 36)),
            fwd_cnt: u32::from_le_bytes(le(b, 40)),
        }
    }

    /// The wire format.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// A packet the guest sent, copied out of its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    /// Its header.
    pub header: Header,
    /// Its payload: exactly `header.len` bytes.
    pub payload: Vec<u8>,
}

fn out_of_memory(addr: GuestAddress, len: usize) -> Error {
    Error::OutOfMemory {
        addr: addr.raw_value(),
        len,
    }
}

/// Copies `buf.len()` bytes from the chain's readable buffers in `segs`,
/// starting `skip` bytes in.
fn gather(
    mem: &GuestMemoryMmap,
    segs: &[(GuestAddress, usize)],
    mut skip: usize,
    buf: &mut [u8],
) -> Result<(), Error> {
    let mut at = 0;
    for &(addr, len) in segs {
        if at == buf.len() {
            break;
        }
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = (len - skip).min(buf.len() - at);
        let from = addr
            .checked_add(skip as u64)
            .ok_or_else(|| out_of_memory(addr, len))?;
        mem.read_slice(&mut buf[at..at + n], from)
            .map_err(|_| out_of_memory(from, n))?;
        at += n;
        skip = 0;
    }
    match at == buf.len() {
        true => Ok(()),
        false => Err(Error::Short {
            need: buf.len(),
            have: at,
        }),
    }
}

/// Reads the packet in a tx chain (see the module's doc for what is
/// refused).
pub fn read_tx<M>(chain: DescriptorChain<M>) -> Result<TxPacket, Error>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let mut segs = Vec::new();
    let mut total = 0usize;
    for d in chain.clone() {
        if d.is_write_only() {
            return Err(Error::WritableInTx);
        }
        if segs.len() == MAX_DESCRIPTORS {
            return Err(Error::TooManyDescriptors);
        }
        segs.push((d.addr(), d.len() as usize));
        total = total.saturating_add(d.len() as usize);
    }
    let mem = chain.memory();
    let mut h = [0u8; HEADER_SIZE];
    gather(mem, &segs, 0, &mut h)?;
    let header = Header::from_bytes(&h);
    if header.len > MAX_PAYLOAD {
        return Err(Error::TooLong(header.len));
    }
    let need = HEADER_SIZE + header.len as usize;
    if total < need {
        return Err(Error::Short { need, have: total });
    }
    let mut payload = vec![0u8; header.len as usize];
    gather(mem, &segs, HEADER_SIZE, &mut payload)?;
    Ok(TxPacket { header, payload })
}

/// An rx chain checked whole: write-only buffers inside guest memory.
#[derive(Debug, Clone)]
pub struct RxChain {
    segs: Vec<(GuestAddress, usize)>,
    capacity: usize,
}

/// Checks an rx chain (see the module's doc).
pub fn rx_chain<M>(chain: DescriptorChain<M>) -> Result<RxChain, Error>
where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    let limit = HEADER_SIZE + MAX_PAYLOAD as usize;
    let mut segs = Vec::new();
    let mut capacity = 0usize;
    let mem = chain.memory();
    for d in chain.clone() {
        if !d.is_write_only() {
            return Err(Error::ReadableInRx);
        }
        if segs.len() == MAX_DESCRIPTORS {
            return Err(Error::TooManyDescriptors);
        }
        // Only as much as a packet can use is checked and used.
        let len = (d.len() as usize).min(limit - capacity);
        if len == 0 {
            continue;
        }
        if !mem.check_range(d.addr(), len, Permissions::Write) {
            return Err(out_of_memory(d.addr(), len));
        }
        segs.push((d.addr(), len));
        capacity += len;
    }
    if capacity < HEADER_SIZE {
        return Err(Error::Short {
            need: HEADER_SIZE,
            have: capacity,
        });
    }
    Ok(RxChain { segs, capacity })
}

impl RxChain {
    /// Payload bytes the chain has room for (at most [`MAX_PAYLOAD`]).
    pub fn room(&self) -> usize {
        self.capacity - HEADER_SIZE
    }

    /// Writes `header` (its `len` set to the payload's) and `payload`
    /// (cut to [`room`](Self::room)); returns the bytes written, for the
    /// used ring.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        header: &Header,
        payload: &[u8],
    ) -> Result<u32, Error> {
        let payload = &payload[..payload.len().min(self.room())];
        let mut h = *header;
        h.len = payload.len() as u32;
        let bytes = h.to_bytes();
        let mut parts: [&[u8]; 2] = [&bytes, payload];
        let mut written = 0usize;
        for &(addr, len) in &self.segs {
            let mut off = 0usize;
            while off < len {
                let Some(part) = parts.iter_mut().find(|p| !p.is_empty()) else {
                    return Ok(written as u32);
                };
                let n = part.len().min(len - off);
                let to = addr
                    .checked_add(off as u64)
                    .ok_or_else(|| out_of_memory(addr, len))?;
                mem.write_slice(&part[..n], to)
                    .map_err(|_| out_of_memory(to, n))?;
                *part = &part[n..];
                off += n;
                written += n;
            }
        }
        Ok(written as u32)
    }
}

/// Where [`parse_queue_image`] puts its queue: descriptor table, avail
/// ring, used ring, and the size of the memory.
pub const IMAGE_LAYOUT: (u64, u64, u64, usize) = (0, 0x100, 0x200, 0x1_0000);

/// The parsing a guest can reach, on a guest memory made of `image` (the
/// first 64 KiB of it, the rest zero): a 16-entry queue whose descriptor
/// table, avail and used rings are at [`IMAGE_LAYOUT`]; every chain
/// offered is read as a tx packet and checked as an rx chain, and a
/// packet is written into those that pass. Returns how many chains were
/// usable either way. For the fuzz target and its corpus replay.
pub fn parse_queue_image(image: &[u8]) -> usize {
    let (desc, avail, used, size) = IMAGE_LAYOUT;
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]) else {
        return 0;
    };
    let n = image.len().min(size);
    if mem.write_slice(&image[..n], GuestAddress(0)).is_err() {
        return 0;
    }
    let Ok(mut q) = Queue::new(16) else {
        return 0;
    };
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return 0;
    }
    let mut usable = 0;
    let Ok(iter) = q.iter(&mem) else {
        return 0;
    };
    let chains: Vec<_> = iter.collect();
    for chain in chains {
        if read_tx(chain.clone()).is_ok() {
            usable += 1;
        }
        if let Ok(rx) = rx_chain(chain) {
            let h = Header {
                src_cid: 2,
                dst_cid: 3,
                type_: 1,
                op: 5,
                ..Default::default()
            };
            if rx.write(&mem, &h, &[0x5a; 100]).is_ok() {
                usable += 1;
            }
        }
    }
    usable
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("test memory")
    }

    pub(crate) fn header(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: 1,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    /// A queue in `mem` with one chain of `descs` (flags NEXT set but on
    /// the last), its buffers' bytes written by the caller.
    fn queue_with(mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> Queue {
        let vq = MockSplitQueue::new(mem, 32);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() {
                    VRING_DESC_F_NEXT as u16
                } else {
                    0
                };
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags | next, i as u16 + 1))
            })
            .collect();
        vq.build_desc_chain(&raw).expect("chain");
        vq.create_queue().expect("queue")
    }

    fn tx(mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> Result<TxPacket, Error> {
        let mut q = queue_with(mem, descs);
        let chain = q.pop_descriptor_chain(mem).expect("a chain");
        read_tx(chain)
    }

    #[test]
    fn a_header_round_trips_and_is_little_endian() {
        let h = header(5, 7);
        let b = h.to_bytes();
        assert_eq!(Header::from_bytes(&b), h);
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
    }

    #[test]
    fn a_packet_is_read_from_one_or_two_buffers_or_split_anywhere() -> Result<(), Error> {
        let m = mem();
        let h = header(5, 5);
        m.write_slice(&h.to_bytes(), GuestAddress(0x5_0000)).ok();
        m.write_slice(b"hello", GuestAddress(0x6_0000)).ok();
        let p = tx(&m, &[(0x5_0000, 44, 0), (0x6_0000, 5, 0)])?;
        assert_eq!(p.header, h);
        assert_eq!(p.payload, b"hello");
        // One buffer for both (Linux 6.2+).
        m.write_slice(b"hello", GuestAddress(0x5_0000 + 44)).ok();
        assert_eq!(tx(&m, &[(0x5_0000, 49, 0)])?.payload, b"hello");
        // The header split over three buffers.
        m.write_slice(&h.to_bytes()[..10], GuestAddress(0x7_0000))
            .ok();
        m.write_slice(&h.to_bytes()[10..], GuestAddress(0x7_1000))
            .ok();
        let p = tx(
            &m,
            &[(0x7_0000, 10, 0), (0x7_1000, 34, 0), (0x6_0000, 100, 0)],
        )?;
        assert_eq!(p.payload, b"hello");
        Ok(())
    }

    #[test]
    fn hostile_tx_chains_are_refused() {
        let m = mem();
        m.write_slice(&header(5, 5).to_bytes(), GuestAddress(0x5_0000))
            .ok();
        // Payload longer than the buffers.
        assert!(matches!(
            tx(&m, &[(0x5_0000, 44, 0), (0x6_0000, 4, 0)]),
            Err(Error::Short { need: 49, .. })
        ));
        // A header in a buffer outside memory.
        assert!(matches!(
            tx(&m, &[(0xffff_0000, 44, 0)]),
            Err(Error::Short { .. }) | Err(Error::OutOfMemory { .. })
        ));
        // Data outside memory.
        assert!(matches!(
            tx(&m, &[(0x5_0000, 44, 0), (0x7fff_ffff_0000, 5, 0)]),
            Err(Error::OutOfMemory { .. })
        ));
        // A buffer that ends past the end of memory.
        assert!(tx(&m, &[(0x5_0000, 44, 0), (0xf_fffe, 5, 0)]).is_err());
        // A writable buffer.
        assert_eq!(
            tx(
                &m,
                &[(0x5_0000, 44, 0), (0x6_0000, 5, VRING_DESC_F_WRITE as u16)]
            ),
            Err(Error::WritableInTx)
        );
        // len past the largest payload: refused before anything is
        // allocated.
        m.write_slice(
            &header(5, MAX_PAYLOAD + 1).to_bytes(),
            GuestAddress(0x5_0000),
        )
        .ok();
        assert_eq!(
            tx(&m, &[(0x5_0000, 44, 0), (0x6_0000, u32::MAX, 0)]),
            Err(Error::TooLong(MAX_PAYLOAD + 1))
        );
        // Too many buffers.
        let many: Vec<(u64, u32, u16)> = (0..17).map(|i| (0x5_0000 + i * 4, 4, 0)).collect();
        assert_eq!(tx(&m, &many), Err(Error::TooManyDescriptors));
    }

    #[test]
    fn a_chain_that_loops_ends() {
        let m = mem();
        m.write_slice(&header(5, 65536).to_bytes(), GuestAddress(0x5_0000))
            .ok();
        let vq = MockSplitQueue::new(&m, 16);
        // Two descriptors pointing at each other.
        let raw = [
            RawDescriptor::from(SplitDescriptor::new(
                0x5_0000,
                44,
                VRING_DESC_F_NEXT as u16,
                1,
            )),
            RawDescriptor::from(SplitDescriptor::new(
                0x6_0000,
                8,
                VRING_DESC_F_NEXT as u16,
                0,
            )),
        ];
        vq.build_desc_chain(&raw).expect("chain");
        // build_desc_chain rewrote `next`; make the loop again.
        vq.desc_table()
            .store(
                1,
                RawDescriptor::from(SplitDescriptor::new(0x6_0000, 8, 1, 0)),
            )
            .expect("store");
        let mut q: Queue = vq.create_queue().expect("queue");
        let chain = q.pop_descriptor_chain(&m).expect("a chain");
        // 16 descriptors at most (the queue's size): 44 + 15 * 8 bytes.
        assert!(matches!(read_tx(chain), Err(Error::Short { .. })));
    }

    #[test]
    fn an_rx_chain_is_checked_whole_and_filled_across_buffers() -> Result<(), Error> {
        let m = mem();
        let w = VRING_DESC_F_WRITE as u16;
        let mut q = queue_with(&m, &[(0x5_0000, 30, w), (0x6_0000, 4096, w)]);
        let rx = rx_chain(q.pop_descriptor_chain(&m).expect("chain"))?;
        assert_eq!(rx.room(), 30 + 4096 - 44);
        let n = rx.write(&m, &header(5, 0), b"abc")?;
        assert_eq!(n, 47);
        let mut h = [0u8; 44];
        m.read_slice(&mut h[..30], GuestAddress(0x5_0000)).ok();
        m.read_slice(&mut h[30..], GuestAddress(0x6_0000)).ok();
        assert_eq!(Header::from_bytes(&h).len, 3);
        let mut d = [0u8; 3];
        m.read_slice(&mut d, GuestAddress(0x6_0000 + 14)).ok();
        assert_eq!(&d, b"abc");
        // Readable, too small, outside memory.
        let mut q = queue_with(&m, &[(0x5_0000, 44, 0)]);
        assert_eq!(
            rx_chain(q.pop_descriptor_chain(&m).expect("chain")).err(),
            Some(Error::ReadableInRx)
        );
        let mut q = queue_with(&m, &[(0x5_0000, 40, w)]);
        assert!(rx_chain(q.pop_descriptor_chain(&m).expect("chain")).is_err());
        let mut q = queue_with(&m, &[(0x5_0000, 44, w), (0xffff_f000, 4096, w)]);
        assert!(matches!(
            rx_chain(q.pop_descriptor_chain(&m).expect("chain")),
            Err(Error::OutOfMemory { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_queue_image_of_garbage_is_survived() {
        assert_eq!(parse_queue_image(&[]), 0);
        assert_eq!(parse_queue_image(&[0xff; 0x1_0000]), 0);
        let mut img = vec![0u8; 0x400];
        // One descriptor: 0x300, 44 bytes, no flags; avail idx 1, ring[0] 0.
        img[0..8].copy_from_slice(&0x300u64.to_le_bytes());
        img[8..12].copy_from_slice(&44u32.to_le_bytes());
        img[0x102..0x104].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(parse_queue_image(&img), 1);
    }
}
