//! What a virtio device is for this VMM: a [`VirtioDevice`] (its type,
//! features, queues and configuration space) behind the virtio-mmio
//! transport ([`mmio`]), which owns the queues and the interrupt and
//! speaks the register protocol with the guest's driver.
//!
//! The split of work, the same for every device:
//! - the transport ([`mmio::MmioTransport`]) holds the registers, the
//!   negotiated features, the device status and the queues (rust-vmm's
//!   `virtio-queue`), and is reached by the vCPU threads' MMIO exits
//!   through [`crate::devices::Devices`];
//! - the device implements [`VirtioDevice`]: what it offers, its
//!   configuration space, what happens when the driver activates or
//!   resets it; its queue processing runs in its own thread
//!   (`devices/<name>/mod.rs` says how), under the transport's lock;
//! - a queue notification (a guest write to QueueNotify) reaches the
//!   device thread through one eventfd, which KVM signals itself
//!   (`KVM_IOEVENTFD`) without a VM exit where it can;
//! - the interrupt is an irqfd on the device's GSI ([`Interrupt`]).
//!
//! A vhost-user device (virtio-fs, `devices/virtiofs/`) has its queues
//! worked by another process: the transport is the same, but each queue
//! has its own kick eventfd (an ioeventfd matching the queue's index),
//! and the backend's call eventfds are turned into [`INT_VRING`] and the
//! irqfd by the device's thread.
//!
//! A device's snapshot is its transport's [`mmio::TransportState`] plus
//! whatever the device keeps (the vsock device keeps nothing: its
//! connections do not survive a snapshot).
//!
//! Where devices live in guest memory and which GSI each gets:
//! [`slot`].

pub mod mmio;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout;

/// virtio-mmio device slots: the `n`-th device's MMIO window and GSI.
pub mod slot {
    use super::layout;

    /// Size of one device's MMIO window (registers and configuration).
    pub const SIZE: u64 = 0x1000;
    /// Most virtio-mmio devices: GSIs 5 to 15, the ISA IRQs the MP table
    /// routes to the I/O APIC (`arch/mptable.rs`; past 15 it would need
    /// entries of its own).
    pub const MAX: u32 = 11;
    /// GSI of the first device; the serial port has 4.
    pub const FIRST_GSI: u32 = 5;

    /// Guest-physical base of slot `n`'s window.
    pub fn base(n: u32) -> u64 {
        layout::VIRTIO_MMIO_BASE + u64::from(n) * SIZE
    }

    /// GSI (I/O APIC pin, ISA IRQ in the MP table) of slot `n`.
    pub fn gsi(n: u32) -> u32 {
        FIRST_GSI + n
    }

    /// What the guest kernel is told of slot `n`: a
    /// `virtio_mmio.device=` argument (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
    pub fn cmdline(n: u32) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", base(n), gsi(n))
    }
}

/// Feature bit every device offers: a virtio 1.x device (virtio-mmio
/// version 2 needs it).
pub const F_VERSION_1: u64 = 1 << 32;

/// A device behind the virtio-mmio transport.
pub trait VirtioDevice: Send {
    /// Its virtio device ID (19 for vsock).
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues (each a power of 2).
    fn queue_max_sizes(&self) -> &'static [u16];
    /// The feature bits it offers ([`F_VERSION_1`] included).
    fn features(&self) -> u64;
    /// Reads `data.len()` bytes of its configuration space at `offset`;
    /// bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// A guest write to its configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK with these features and `queues`, every
    /// one ready and inside `mem`. Whether the device is live: a device
    /// that cannot start (a vhost-user backend that is gone) says false,
    /// and the transport sets NEEDS_RESET.
    fn activate(&mut self, acked_features: u64, queues: &[Queue], mem: &GuestMemoryMmap) -> bool;
    /// The driver reset the device (status 0): drop all it holds.
    fn reset(&mut self);
    /// The driver wrote `queue` to QueueNotify and KVM did not take the
    /// write itself (no ioeventfd matched it). Whether the device
    /// handled it; if not, the transport signals its one notify eventfd.
    /// A device whose queues each have a kick eventfd of their own (a
    /// vhost-user backend's) signals that one here.
    fn queue_notify(&self, _queue: u32) -> bool {
        false
    }
}

/// A device's interrupt: the status bits the guest reads
/// (InterruptStatus) and the irqfd that raises its GSI.
pub struct Interrupt {
    status: u32,
    irq: EventFd,
}

/// Bit of InterruptStatus: a queue's used ring changed.
pub const INT_VRING: u32 = 1;
/// Bit of InterruptStatus: the configuration changed.
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    /// An interrupt raised by writing `irq` (an irqfd).
    pub fn new(irq: EventFd) -> Self {
        Self { status: 0, irq }
    }

    /// Sets `bits` in InterruptStatus and raises the GSI. A failed
    /// eventfd write is the host's trouble; the status bit still tells
    /// the driver at its next interrupt.
    pub fn raise(&mut self, bits: u32) {
        self.status |= bits;
        let _ = self.irq.write(1);
    }

    /// InterruptStatus.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The driver's InterruptACK.
    pub fn ack(&mut self, bits: u32) {
        self.status &= !bits;
    }

    fn set_status(&mut self, bits: u32) {
        self.status = bits & (INT_VRING | INT_CONFIG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_windows_sit_in_the_mmio_gap_clear_of_everything_else() {
        let last = slot::base(slot::MAX - 1) + slot::SIZE;
        assert!(slot::base(0) >= layout::MMIO_GAP_START);
        // Below KVM's TSS, the I/O APIC and the LAPIC, and above RAM (which
        // stops at the gap; pmem and the mailbox are above 4 GiB).
        assert!(last <= layout::KVM_TSS);
        assert!(last <= u64::from(layout::IOAPIC_ADDR));
        let ram = layout::ram_regions(64 << 30);
        assert!(ram
            .iter()
            .all(|&(s, l)| s + l <= slot::base(0) || s >= layout::MMIO_GAP_END));
        assert!(crate::pmem::base_for(64 << 30) >= layout::MMIO_GAP_END);
        // GSIs after the UART's 4, within the MP table's ISA IRQs.
        assert_eq!(slot::gsi(0), 5);
        assert_eq!(slot::gsi(slot::MAX - 1), 15);
        assert_eq!(slot::cmdline(0), "virtio_mmio.device=4K@0xd0000000:5");
    }

    #[test]
    fn the_interrupt_keeps_its_bits_until_acked() {
        let mut i = Interrupt::new(EventFd::new(0).expect("eventfd"));
        i.raise(INT_VRING);
        i.raise(INT_CONFIG);
        assert_eq!(i.status(), 3);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_CONFIG);
        assert_eq!(i.irq.read().ok(), Some(2), "two edges");
    }
}
