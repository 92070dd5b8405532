//! A whole machine's state: everything but its RAM (which is the memory
//! file) that a VM restored from a snapshot needs to go on where the saved
//! one stopped.
//!
//! - the RAM size, where each RAM region is in the memory file, and where
//!   the root disk and the mailbox were mapped (they are mapped again, not
//!   saved: the disk is the cached image the key names, the mailbox is
//!   rewritten for every run);
//! - the CPUID the vCPUs were given (a host whose CPUID differs cannot run
//!   the saved guest: it is refused, not restored);
//! - KVM's VM clock (`KVM_GET_CLOCK`), so the guest's kvm-clock neither
//!   jumps nor runs backwards;
//! - our I/O APIC (ID, IOREGSEL, redirection table: the MSI routes are
//!   made again from it) and the 8250 UART's registers and FIFO; the
//!   i8042 has no state (vm-superio keeps none) and the exit and timer
//!   ports have none;
//! - every vCPU's [`VcpuState`];
//! - with a vsock device, its virtio-mmio transport ([`TransportState`]:
//!   features, status, each queue's size, ring addresses and positions);
//!   its connections are not saved (`devices::vsock` says why and what a
//!   restored device tells the guest). A machine without one has no such
//!   section.
//!
//! The byte format: `TWBXMACH`, a version, then sections (tag, length,
//! bytes), each known, each at most once except the vCPUs, each of its
//! exact size (version 2 added the vsock section); a count of vCPUs that matches the header; every count and
//! length checked before use. `fuzz/` fuzzes [`MachineState::decode`].

use kvm_bindings::{kvm_clock_data, kvm_cpuid_entry2};
use vm_superio::serial::SerialState;
use zerocopy::IntoBytes;

use virtio_queue::QueueState;

use super::memory::Layout;
use super::vcpu::{fixed, Reader, VcpuState};
use super::Error;
use crate::devices::ioapic::PINS;
use crate::virtio::mmio::TransportState;

/// What starts a machine state.
pub const MAGIC: [u8; 8] = *b"TWBXMACH";
/// The format's version.
pub const VERSION: u32 = 2;
/// Most vCPUs in a state (the VMM's own limit).
pub const MAX_VCPUS: usize = crate::config::MAX_VCPUS as usize;
/// Most CPUID entries (KVM's own limit).
pub const MAX_CPUID: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;
/// Most RAM regions (there are one or two, around the MMIO gap).
pub const MAX_REGIONS: usize = 8;
/// The serial FIFO's size.
const FIFO: usize = 64;

const MACHINE: u32 = 1;
const LAYOUT: u32 = 2;
const CPUID: u32 = 3;
const CLOCK: u32 = 4;
const IOAPIC: u32 = 5;
const SERIAL: u32 = 6;
const VCPU: u32 = 7;
const VSOCK: u32 = 8;
/// Most queues of a saved virtio device.
const MAX_QUEUES: usize = 8;
/// Bytes of a saved transport's registers, and of each queue.
const TRANSPORT_FIXED: usize = 36;
const QUEUE_BYTES: usize = 40;

/// The I/O APIC's registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoapicState {
    /// The ID register.
    pub id: u32,
    /// IOREGSEL.
    pub select: u32,
    /// The redirection table.
    pub entries: [u64; PINS],
}

/// A machine's state, but its RAM.
#[derive(Debug, PartialEq)]
pub struct MachineState {
    /// RAM, in bytes.
    pub memory: u64,
    /// The root disk's guest address and size, if it had one.
    pub pmem: Option<(u64, u64)>,
    /// The mailbox's guest address, if it had one.
    pub mailbox: Option<u64>,
    /// Where the RAM regions are in the memory file.
    pub layout: Layout,
    /// The CPUID entries given to the vCPUs (before the per-vCPU fixes).
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// KVM's clock.
    pub clock: kvm_clock_data,
    /// The I/O APIC (split irqchip).
    pub ioapic: IoapicState,
    /// The UART.
    pub serial: SerialState,
    /// Every vCPU, in order.
    pub vcpus: Vec<VcpuState>,
    /// The vsock device's transport, if the machine has one.
    pub vsock: Option<TransportState>,
}

fn encode_transport(t: &TransportState) -> Vec<u8> {
    let mut b = Vec::with_capacity(TRANSPORT_FIXED + QUEUE_BYTES * t.queues.len());
    for v in [t.device_features_sel, t.driver_features_sel] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&t.driver_features.to_le_bytes());
    for v in [
        t.status,
        t.queue_sel,
        t.interrupt_status,
        t.config_generation,
        t.queues.len() as u32,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for q in &t.queues {
        for v in [q.max_size, q.size, q.next_avail, q.next_used] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.push(u8::from(q.ready));
        b.push(u8::from(q.event_idx_enabled));
        b.extend_from_slice(&[0; 6]);
        for v in [q.desc_table, q.avail_ring, q.used_ring] {
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
    b
}

fn decode_transport(tag: u32, bytes: &[u8]) -> Result<TransportState, Error> {
    let mut r = Reader { data: bytes, at: 0 };
    if bytes.len() < TRANSPORT_FIXED {
        return Err(bad(tag, format!("{} bytes", bytes.len())));
    }
    let mut t = TransportState {
        device_features_sel: r.u32()?,
        driver_features_sel: r.u32()?,
        driver_features: r.u64()?,
        status: r.u32()?,
        queue_sel: r.u32()?,
        interrupt_status: r.u32()?,
        config_generation: r.u32()?,
        queues: Vec::new(),
    };
    let n = r.u32()? as usize;
    if n > MAX_QUEUES || bytes.len() != TRANSPORT_FIXED + n * QUEUE_BYTES {
        return Err(bad(tag, format!("{n} queues in {} bytes", bytes.len())));
    }
    let u16 = |r: &mut Reader| -> Result<u16, Error> {
        let b = r.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    };
    let flag = |b: u8| match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(bad(tag, format!("a flag of {b}"))),
    };
    for _ in 0..n {
        let (max_size, size, next_avail, next_used) =
            (u16(&mut r)?, u16(&mut r)?, u16(&mut r)?, u16(&mut r)?);
        let f = r.take(8)?;
        let (ready, event_idx_enabled) = (flag(f[0])?, flag(f[1])?);
        if f[2..].iter().any(|&b| b != 0) {
            return Err(bad(tag, "padding that is not zero".into()));
        }
        t.queues.push(QueueState {
            max_size,
            next_avail,
            next_used,
            event_idx_enabled,
            size,
            ready,
            desc_table: r.u64()?,
            avail_ring: r.u64()?,
            used_ring: r.u64()?,
        });
    }
    Ok(t)
}

fn bad(tag: u32, why: String) -> Error {
    Error::BadSection { tag, why }
}

impl MachineState {
    /// The state as bytes (see the module's doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16384 * self.vcpus.len().max(1));
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let mut section = |tag: u32, bytes: &[u8]| {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        let mut m = Vec::new();
        m.extend_from_slice(&self.memory.to_le_bytes());
        m.extend_from_slice(&(self.vcpus.len() as u32).to_le_bytes());
        let (pb, ps) = self.pmem.unwrap_or((0, 0));
        m.extend_from_slice(&pb.to_le_bytes());
        m.extend_from_slice(&ps.to_le_bytes());
        m.extend_from_slice(&self.mailbox.unwrap_or(0).to_le_bytes());
        section(MACHINE, &m);
        let l: Vec<u8> = self
            .layout
            .regions
            .iter()
            .flat_map(|(a, b, c)| {
                a.to_le_bytes()
                    .into_iter()
                    .chain(b.to_le_bytes())
                    .chain(c.to_le_bytes())
            })
            .collect();
        section(LAYOUT, &l);
        section(CPUID, self.cpuid.as_bytes());
        section(CLOCK, self.clock.as_bytes());
        let mut io = Vec::new();
        io.extend_from_slice(&self.ioapic.id.to_le_bytes());
        io.extend_from_slice(&self.ioapic.select.to_le_bytes());
        for e in self.ioapic.entries {
            io.extend_from_slice(&e.to_le_bytes());
        }
        section(IOAPIC, &io);
        let s = &self.serial;
        let mut ser = vec![
            s.baud_divisor_low,
            s.baud_divisor_high,
            s.interrupt_enable,
            s.interrupt_identification,
            s.line_control,
            s.line_status,
            s.modem_control,
            s.modem_status,
            s.scratch,
        ];
        ser.extend_from_slice(&s.in_buffer[..s.in_buffer.len().min(FIFO)]);
        section(SERIAL, &ser);
        for v in &self.vcpus {
            section(VCPU, &v.encode());
        }
        if let Some(t) = &self.vsock {
            section(VSOCK, &encode_transport(t));
        }
        out
    }

    /// Parses bytes made by [`encode`](Self::encode), trusting nothing.
    pub fn decode(data: &[u8]) -> Result<Self, Error> {
        let mut r = Reader { data, at: 0 };
        let magic = r.take(MAGIC.len())?;
        let version = r.u32()?;
        if magic != MAGIC || version != VERSION {
            return Err(Error::Header(version));
        }
        let mut seen = 0u32;
        let mut count = None;
        let mut s = MachineState {
            memory: 0,
            pmem: None,
            mailbox: None,
            layout: Layout {
                regions: Vec::new(),
            },
            cpuid: Vec::new(),
            clock: kvm_clock_data::default(),
            ioapic: IoapicState {
                id: 0,
                select: 0,
                entries: [0; PINS],
            },
            serial: SerialState::default(),
            vcpus: Vec::new(),
            vsock: None,
        };
        while r.at < data.len() {
            let tag = r.u32()?;
            let len = r.u32()? as usize;
            let bytes = r.take(len)?;
            if !(MACHINE..=VSOCK).contains(&tag) {
                return Err(Error::UnknownSection(tag));
            }
            if tag != VCPU && seen & (1 << tag) != 0 {
                return Err(bad(tag, "appears twice".into()));
            }
            seen |= 1 << tag;
            let mut b = Reader { data: bytes, at: 0 };
            match tag {
                MACHINE => {
                    if len != 36 {
                        return Err(bad(tag, format!("{len} bytes, want 36")));
                    }
                    s.memory = b.u64()?;
                    let n = b.u32()? as usize;
                    if n == 0 || n > MAX_VCPUS {
                        return Err(bad(tag, format!("{n} vCPUs")));
                    }
                    count = Some(n);
                    let (pb, ps, mb) = (b.u64()?, b.u64()?, b.u64()?);
                    s.pmem = (ps != 0).then_some((pb, ps));
                    s.mailbox = (mb != 0).then_some(mb);
                }
                LAYOUT => {
                    if len % 24 != 0 || len / 24 > MAX_REGIONS || len == 0 {
                        return Err(bad(tag, format!("{len} bytes of regions")));
                    }
                    while b.at < len {
                        s.layout.regions.push((b.u64()?, b.u64()?, b.u64()?));
                    }
                }
                CPUID => {
                    let one = std::mem::size_of::<kvm_cpuid_entry2>();
                    if len % one != 0 || len / one > MAX_CPUID {
                        return Err(bad(tag, format!("{len} bytes of CPUID entries")));
                    }
                    for chunk in bytes.chunks_exact(one) {
                        s.cpuid.push(fixed(tag, chunk)?);
                    }
                }
                CLOCK => s.clock = fixed(tag, bytes)?,
                IOAPIC => {
                    if len != 8 + 8 * PINS {
                        return Err(bad(tag, format!("{len} bytes")));
                    }
                    s.ioapic.id = b.u32()?;
                    s.ioapic.select = b.u32()?;
                    for e in s.ioapic.entries.iter_mut() {
                        *e = b.u64()?;
                    }
                }
                SERIAL => {
                    if !(9..=9 + FIFO).contains(&len) {
                        return Err(bad(tag, format!("{len} bytes")));
                    }
                    s.serial = SerialState {
                        baud_divisor_low: bytes[0],
                        baud_divisor_high: bytes[1],
                        interrupt_enable: bytes[2],
                        interrupt_identification: bytes[3],
                        line_control: bytes[4],
                        line_status: bytes[5],
                        modem_control: bytes[6],
                        modem_status: bytes[7],
                        scratch: bytes[8],
                        in_buffer: bytes[9..].to_vec(),
                    };
                }
                VSOCK => s.vsock = Some(decode_transport(tag, bytes)?),
                _ => {
                    if s.vcpus.len() >= MAX_VCPUS {
                        return Err(bad(tag, "too many vCPUs".into()));
                    }
                    s.vcpus.push(VcpuState::decode(bytes)?);
                }
            }
        }
        for (tag, name) in [
            (MACHINE, "machine"),
            (LAYOUT, "layout"),
            (CPUID, "cpuid"),
            (CLOCK, "clock"),
            (IOAPIC, "ioapic"),
            (SERIAL, "serial"),
        ] {
            if seen & (1 << tag) == 0 {
                return Err(Error::Missing(name));
            }
        }
        if count != Some(s.vcpus.len()) {
            return Err(bad(
                VCPU,
                format!("{} vCPU states, the header says {count:?}", s.vcpus.len()),
            ));
        }
        let ram: u64 = s.layout.regions.iter().map(|r| r.1).sum();
        if ram != s.memory {
            return Err(bad(
                LAYOUT,
                format!("regions of {ram} bytes for {} of RAM", s.memory),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> MachineState {
        let mut v = VcpuState::default();
        v.regs.rip = 0xffff_ffff_8100_0000;
        let cpuid = kvm_cpuid_entry2 {
            function: 1,
            eax: 0x806f0,
            ..Default::default()
        };
        let mut entries = [1 << 16; PINS];
        entries[4] = 0x31;
        MachineState {
            memory: 256 << 20,
            pmem: Some((4 << 30, 8 << 20)),
            mailbox: Some((4 << 30) + (10 << 20)),
            layout: Layout {
                regions: vec![(0, 256 << 20, 0)],
            },
            cpuid: vec![cpuid],
            clock: kvm_clock_data {
                clock: 123_456_789,
                ..Default::default()
            },
            ioapic: IoapicState {
                id: 1 << 24,
                select: 0x10,
                entries,
            },
            serial: SerialState {
                in_buffer: vec![b'x'],
                ..Default::default()
            },
            vcpus: vec![v],
            vsock: None,
        }
    }

    fn with_vsock() -> MachineState {
        let mut s = sample();
        let q = QueueState {
            max_size: 256,
            next_avail: 7,
            next_used: 65535,
            event_idx_enabled: false,
            size: 128,
            ready: true,
            desc_table: 0x10_0000,
            avail_ring: 0x10_1000,
            used_ring: 0x1_0000_2000,
        };
        s.vsock = Some(TransportState {
            device_features_sel: 1,
            driver_features_sel: 1,
            driver_features: 1 << 32,
            status: 15,
            queue_sel: 2,
            interrupt_status: 1,
            config_generation: 0,
            queues: vec![q; 3],
        });
        s
    }

    #[test]
    fn a_machine_round_trips_through_bytes() -> Result<(), Error> {
        let s = sample();
        assert_eq!(MachineState::decode(&s.encode())?, s);
        let v = with_vsock();
        assert_eq!(MachineState::decode(&v.encode())?, v);
        Ok(())
    }

    #[test]
    fn hostile_vsock_sections_are_refused() {
        let good = with_vsock().encode();
        let at = good.len() - 3 * QUEUE_BYTES - TRANSPORT_FIXED;
        // Without its section it is a machine without vsock; cut inside
        // it, nothing.
        assert!(matches!(
            MachineState::decode(&good[..at - 8]).map(|s| s.vsock),
            Ok(None)
        ));
        for n in at - 7..good.len() {
            assert!(MachineState::decode(&good[..n]).is_err(), "cut at {n}");
        }
        // More queues than the section holds.
        let mut b = good.clone();
        b[at + 32..at + 36].copy_from_slice(&4u32.to_le_bytes());
        assert!(MachineState::decode(&b).is_err());
        // A flag that is neither 0 nor 1, padding that is not zero.
        let q0 = at + TRANSPORT_FIXED;
        let mut b = good.clone();
        b[q0 + 8] = 2;
        assert!(MachineState::decode(&b).is_err());
        let mut b = good.clone();
        b[q0 + 12] = 1;
        assert!(MachineState::decode(&b).is_err());
        // Twice.
        let mut b = good.clone();
        b.extend_from_slice(&good[at - 8..]);
        assert!(MachineState::decode(&b).is_err());
        // Version 1 (before the section) is refused whole.
        let mut b = sample().encode();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(MachineState::decode(&b), Err(Error::Header(1))));
    }

    #[test]
    fn hostile_machines_are_refused() {
        let good = sample().encode();
        for n in 0..good.len() {
            assert!(MachineState::decode(&good[..n]).is_err(), "cut at {n}");
        }
        let mut twice = good.clone();
        twice.extend_from_slice(&good[12..12 + 8 + 36]);
        assert!(MachineState::decode(&twice).is_err(), "a repeated header");
        let mut more = sample();
        more.vcpus.push(VcpuState::default());
        let mut bytes = more.encode();
        // The header says 2 vCPUs; drop the last vCPU section's bytes by
        // re-encoding with the header patched to 3.
        let at = 12 + 8 + 8;
        bytes[at..at + 4].copy_from_slice(&3u32.to_le_bytes());
        assert!(
            MachineState::decode(&bytes).is_err(),
            "a vCPU count mismatch"
        );
        let mut ram = sample();
        ram.memory = 512 << 20;
        assert!(
            MachineState::decode(&ram.encode()).is_err(),
            "RAM and layout differ"
        );
        let mut fifo = sample();
        fifo.serial.in_buffer = vec![0; FIFO + 1];
        // encode cuts the FIFO to its size, so it still parses.
        assert!(MachineState::decode(&fifo.encode()).is_ok());
    }
}
