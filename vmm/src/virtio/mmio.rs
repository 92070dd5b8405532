//! The virtio-mmio transport, version 2 (virtio 1.x, "modern"): the
//! register window through which a guest's driver finds a device,
//! negotiates features, sets up its queues and is told of used buffers.
//!
//! | offset | register |
//! |---|---|
//! | 0x000 | MagicValue `virt` (R) |
//! | 0x004 | Version 2 (R) |
//! | 0x008, 0x00c | DeviceID, VendorID (R) |
//! | 0x010, 0x014 | DeviceFeatures (R), DeviceFeaturesSel (W) |
//! | 0x020, 0x024 | DriverFeatures, DriverFeaturesSel (W) |
//! | 0x030, 0x034, 0x038 | QueueSel (W), QueueNumMax (R), QueueNum (W) |
//! | 0x044 | QueueReady (RW) |
//! | 0x050 | QueueNotify (W) |
//! | 0x060, 0x064 | InterruptStatus (R), InterruptACK (W) |
//! | 0x070 | Status (RW; 0 resets the device) |
//! | 0x080-0x0a4 | QueueDesc, QueueDriver (avail), QueueDevice (used), low/high (W) |
//! | 0x0b0, 0x0b4 | SHMLen: all ones, no shared memory region (R) |
//! | 0x0fc | ConfigGeneration (R) |
//! | 0x100- | the device's configuration space |
//!
//! Registers take aligned 32-bit accesses only (what the spec asks of a
//! driver); other accesses read as zero and are dropped. The driver is not
//! trusted: features it was not offered make FEATURES_OK not stick, queue
//! registers are only written between FEATURES_OK and DRIVER_OK, sizes and
//! ring addresses are checked by `virtio-queue`, and DRIVER_OK with a
//! queue that is not ready or not inside guest memory leaves the device
//! inactive with NEEDS_RESET set. The legacy (version 1) registers
//! (GuestPageSize, QueueAlign, QueuePFN) do not exist here.

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Interrupt, VirtioDevice, F_VERSION_1};

/// Errors of making a transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A queue size the device cannot have (a bug of the device).
    #[error("queue of at most {0} entries")]
    QueueSize(u16, #[source] virtio_queue::Error),
    /// A saved transport whose queues are not the device's.
    #[error("saved state has {have} queues, the device {want}")]
    QueueCount {
        /// Queues in the saved state.
        have: usize,
        /// Queues of the device.
        want: usize,
    },
    /// A saved queue that cannot be.
    #[error("saved queue {index}")]
    SavedQueue {
        /// Which queue.
        index: usize,
        /// Why.
        #[source]
        source: virtio_queue::Error,
    },
    /// A saved queue's largest size is not the device's.
    #[error("saved queue {index} has a largest size of {have}, the device {want}")]
    SavedQueueMax {
        /// Which queue.
        index: usize,
        /// Its saved largest size.
        have: u16,
        /// The device's.
        want: u16,
    },
}

/// `virt`, little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport's version: 2, virtio 1.x.
pub const VERSION: u32 = 2;
/// Our vendor ID: `TWBX`.
pub const VENDOR: u32 = 0x5842_5754;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of QueueNotify (where KVM's ioeventfd goes).
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
const REG_QUEUE_USED_LOW: u64 = 0x0a0;
const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Where the device's configuration space starts.
pub const CONFIG: u64 = 0x100;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready: the device is live.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = 8;
    /// The device went wrong; the driver must reset it.
    pub const NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// What a snapshot keeps of a transport: registers, negotiated features,
/// status and every queue (sizes, ring addresses, where the device is in
/// the avail and used rings), so that a restored guest's driver goes on
/// with the same queues.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportState {
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// Device status.
    pub status: u32,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue, in order.
    pub queues: Vec<QueueState>,
}

/// A device behind its virtio-mmio registers.
pub struct MmioTransport<D> {
    device: D,
    queues: Vec<Queue>,
    interrupt: Interrupt,
    notify: EventFd,
    mem: GuestMemoryMmap,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
    /// A restored interrupt to raise again.
    replay: bool,
}

fn queues_for(sizes: &[u16]) -> Result<Vec<Queue>, Error> {
    sizes
        .iter()
        .map(|&s| Queue::new(s).map_err(|e| Error::QueueSize(s, e)))
        .collect()
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device`, reset, behind its registers; `irq` raises its interrupt,
    /// `notify` is signalled at each QueueNotify.
    pub fn new(
        device: D,
        mem: GuestMemoryMmap,
        irq: EventFd,
        notify: EventFd,
    ) -> Result<Self, Error> {
        let queues = queues_for(device.queue_max_sizes())?;
        Ok(Self {
            device,
            queues,
            interrupt: Interrupt::new(irq),
            notify,
            mem,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
            replay: false,
        })
    }

    /// `device` behind registers restored from `state`. The saved state
    /// is checked as the guest's writes would be; a driver that had
    /// reached DRIVER_OK with valid queues finds the device active.
    pub fn restored(
        device: D,
        mem: GuestMemoryMmap,
        irq: EventFd,
        notify: EventFd,
        state: &TransportState,
    ) -> Result<Self, Error> {
        let mut t = Self::new(device, mem, irq, notify)?;
        let sizes = t.device.queue_max_sizes();
        if state.queues.len() != sizes.len() {
            return Err(Error::QueueCount {
                have: state.queues.len(),
                want: sizes.len(),
            });
        }
        for (index, (q, &want)) in state.queues.iter().zip(sizes).enumerate() {
            if q.max_size != want {
                return Err(Error::SavedQueueMax {
                    index,
                    have: q.max_size,
                    want,
                });
            }
            t.queues[index] =
                Queue::try_from(*q).map_err(|source| Error::SavedQueue { index, source })?;
        }
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features & t.device.features();
        t.status = state.status;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.interrupt.set_status(state.interrupt_status);
        if t.status & status::DRIVER_OK != 0 && t.status & status::NEEDS_RESET == 0 {
            t.activate();
        }
        // The guest may not have seen it before the snapshot: raised
        // again by `replay` once the vCPUs run.
        t.replay = t.interrupt.status() != 0;
        Ok(t)
    }

    /// The state a snapshot keeps.
    pub fn state(&self) -> TransportState {
        TransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            status: self.status,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt.status(),
            config_generation: self.config_generation,
            queues: self.queues.iter().map(Queue::state).collect(),
        }
    }

    /// Raises again the interrupt a restored transport was saved with,
    /// once: for its device thread to call when the vCPUs exist.
    pub fn replay(&mut self) {
        if std::mem::take(&mut self.replay) {
            let bits = self.interrupt.status();
            self.interrupt.raise(bits);
        }
    }

    /// Whether the driver activated the device (DRIVER_OK, valid queues).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Device status.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The device went wrong and cannot go on until the driver resets it
    /// (its backend is gone): NEEDS_RESET, and a configuration change
    /// interrupt if the driver is live (virtio 1.2, 2.1.2). The device
    /// stays inactive.
    pub fn set_needs_reset(&mut self) {
        if self.status & status::NEEDS_RESET != 0 {
            return;
        }
        self.status |= status::NEEDS_RESET;
        self.active = false;
        if self.status & status::DRIVER_OK != 0 {
            self.config_generation = self.config_generation.wrapping_add(1);
            self.interrupt.raise(super::INT_CONFIG);
        }
    }

    /// The device, its queues, guest memory and interrupt: what its
    /// queue processing works with.
    pub fn parts(&mut self) -> (&mut D, &mut [Queue], &GuestMemoryMmap, &mut Interrupt) {
        (
            &mut self.device,
            &mut self.queues,
            &self.mem,
            &mut self.interrupt,
        )
    }

    /// A guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let v = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.queue().map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.queue().map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A guest write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if offset % 4 != 0 {
            return;
        }
        let v = u32::from_le_bytes(bytes);
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => self.set_driver_features(v),
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NOTIFY if self.active && !self.device.queue_notify(v) => {
                let _ = self.notify.write(1);
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(v),
            REG_STATUS => self.set_status(v),
            REG_QUEUE_NUM | REG_QUEUE_READY | REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_AVAIL_LOW | REG_QUEUE_AVAIL_HIGH | REG_QUEUE_USED_LOW
            | REG_QUEUE_USED_HIGH => self.set_queue(offset, v),
            _ => {}
        }
    }

    fn queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }

    fn set_driver_features(&mut self, v: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            return;
        }
        let shift = match self.driver_features_sel {
            0 => 0,
            1 => 32,
            _ => return,
        };
        self.driver_features =
            (self.driver_features & !(0xffff_ffffu64 << shift)) | (u64::from(v) << shift);
    }

    fn set_queue(&mut self, offset: u64, v: u32) {
        let s = self.status;
        if s & status::FEATURES_OK == 0 || s & (status::DRIVER_OK | status::FAILED) != 0 {
            return;
        }
        let Some(q) = self.queues.get_mut(self.queue_sel as usize) else {
            return;
        };
        match offset {
            REG_QUEUE_NUM => {
                // A size that is not a power of 2 up to the largest is
                // refused by virtio-queue; the queue keeps its size.
                let _ = u16::try_from(v).map(|n| q.try_set_size(n));
            }
            REG_QUEUE_READY => q.set_ready(v == 1),
            REG_QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            REG_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            REG_QUEUE_AVAIL_LOW => q.set_avail_ring_address(Some(v), None),
            REG_QUEUE_AVAIL_HIGH => q.set_avail_ring_address(None, Some(v)),
            REG_QUEUE_USED_LOW => q.set_used_ring_address(Some(v), None),
            REG_QUEUE_USED_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => {}
        }
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits are only ever added; taking one back is a reset's job.
        if v & old != old {
            return;
        }
        let added = v & !old;
        let mut new = old | (added & (status::ACKNOWLEDGE | status::FAILED));
        if added & status::DRIVER != 0 && new & status::ACKNOWLEDGE != 0 {
            new |= status::DRIVER;
        }
        if added & status::FEATURES_OK != 0 && new & status::DRIVER != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered == 0 && self.driver_features & F_VERSION_1 != 0 {
                new |= status::FEATURES_OK;
            }
        }
        if added & status::DRIVER_OK != 0 && new & status::FEATURES_OK != 0 {
            new |= status::DRIVER_OK;
            self.status = new;
            if !self.activate() {
                self.status |= status::NEEDS_RESET;
            }
            return;
        }
        self.status = new;
    }

    /// Activates the device if every queue is ready and inside guest
    /// memory; whether it did.
    fn activate(&mut self) -> bool {
        let mem = &self.mem;
        if !self.queues.iter().all(|q| q.is_valid(mem)) {
            return false;
        }
        if !self
            .device
            .activate(self.driver_features, &self.queues, mem)
        {
            return false;
        }
        self.active = true;
        // The device thread looks at its queues once, whether or not the
        // driver notifies.
        let _ = self.notify.write(1);
        true
    }

    fn reset(&mut self) {
        for q in self.queues.iter_mut() {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_sel = 0;
        self.interrupt.set_status(0);
        self.active = false;
        self.device.reset();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// A device with two queues and 8 bytes of configuration.
    pub(crate) struct Dummy {
        pub activated: Option<u64>,
        pub resets: u32,
        pub config: [u8; 8],
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &'static [u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(offset)
                    .ok()
                    .and_then(|o| self.config.get(o + i))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(&mut self, acked: u64, _: &[Queue], _: &GuestMemoryMmap) -> bool {
            self.activated = Some(acked);
            true
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
    }

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("test memory")
    }

    fn transport() -> MmioTransport<Dummy> {
        let d = Dummy {
            activated: None,
            resets: 0,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        let fd = || EventFd::new(0).expect("eventfd");
        MmioTransport::new(d, mem(), fd(), fd()).expect("transport")
    }

    fn r(t: &MmioTransport<Dummy>, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// What Linux's virtio_mmio driver does, up to DRIVER_OK, with the
    /// queues at 0x1000 + 0x1000 * n.
    pub(crate) fn handshake<D: VirtioDevice>(t: &mut MmioTransport<D>, features: u64) {
        let w = |t: &mut MmioTransport<D>, off: u64, v: u32| t.write(off, &v.to_le_bytes());
        w(t, REG_STATUS, 0);
        w(t, REG_STATUS, status::ACKNOWLEDGE);
        w(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, features as u32);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(t, REG_STATUS, s);
        for n in 0..t.queues.len() as u32 {
            let base = 0x1000 + 0x1000 * n;
            w(t, REG_QUEUE_SEL, n);
            w(t, REG_QUEUE_NUM, 16);
            w(t, REG_QUEUE_DESC_LOW, base);
            w(t, REG_QUEUE_DESC_HIGH, 0);
            w(t, REG_QUEUE_AVAIL_LOW, base + 0x400);
            w(t, REG_QUEUE_AVAIL_HIGH, 0);
            w(t, REG_QUEUE_USED_LOW, base + 0x800);
            w(t, REG_QUEUE_USED_HIGH, 0);
            w(t, REG_QUEUE_READY, 1);
        }
        w(t, REG_STATUS, s | status::DRIVER_OK);
    }

    #[test]
    fn identity_registers_read_back() {
        let t = transport();
        assert_eq!(r(&t, REG_MAGIC), MAGIC);
        assert_eq!(r(&t, REG_VERSION), 2);
        assert_eq!(r(&t, REG_DEVICE_ID), 42);
        assert_eq!(r(&t, REG_VENDOR_ID), VENDOR);
        assert_eq!(r(&t, REG_QUEUE_NUM_MAX), 16);
        assert_eq!(r(&t, REG_SHM_LEN_LOW), u32::MAX);
        let mut cfg = [0u8; 8];
        t.read(CONFIG, &mut cfg);
        assert_eq!(cfg, [1, 2, 3, 4, 5, 6, 7, 8]);
        let mut past = [0xaau8; 4];
        t.read(CONFIG + 6, &mut past);
        assert_eq!(past, [7, 8, 0, 0]);
    }

    #[test]
    fn the_linux_handshake_activates_the_device() {
        let mut t = transport();
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&t, REG_DEVICE_FEATURES), 1);
        handshake(&mut t, F_VERSION_1 | 1);
        assert!(t.is_active());
        assert_eq!(t.device().activated, Some(F_VERSION_1 | 1));
        assert_ne!(r(&t, REG_STATUS) & status::DRIVER_OK, 0);
        assert_eq!(r(&t, REG_STATUS) & status::NEEDS_RESET, 0);
        // The queues as programmed.
        let st = t.state();
        assert_eq!(st.queues[1].desc_table, 0x2000);
        assert_eq!(st.queues[1].used_ring, 0x2800);
        assert!(st.queues.iter().all(|q| q.ready && q.size == 16));
        // Queue registers no longer change once live.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_DESC_LOW, 0x8000);
        assert_eq!(t.state().queues[0].desc_table, 0x1000);
        // Reset takes everything back.
        w(&mut t, REG_STATUS, 0);
        assert!(!t.is_active());
        assert_eq!(t.device().resets, 2, "the handshake's reset and this one");
        let fresh = Queue::new(16).map(|q| q.state()).unwrap_or_default();
        assert_eq!(
            t.state(),
            TransportState {
                queues: vec![fresh; 2],
                ..Default::default()
            }
        );
        assert_eq!(r(&t, REG_STATUS), 0);
    }

    #[test]
    fn a_driver_out_of_line_gets_nothing() {
        let mut t = transport();
        // Features it was not offered, or without VERSION_1: FEATURES_OK
        // does not stick.
        w(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, REG_DRIVER_FEATURES, 1 << 7);
        w(
            &mut t,
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        assert_eq!(r(&t, REG_STATUS) & status::FEATURES_OK, 0);
        // DRIVER_OK without FEATURES_OK does nothing.
        w(
            &mut t,
            REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert!(!t.is_active());
        // Queues outside guest memory: not activated, NEEDS_RESET.
        let mut t = transport();
        handshake(&mut t, F_VERSION_1);
        assert!(t.is_active());
        let mut t = transport();
        w(&mut t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        w(&mut t, REG_STATUS, s);
        for n in 0..2 {
            w(&mut t, REG_QUEUE_SEL, n);
            w(&mut t, REG_QUEUE_DESC_LOW, 0xfff0_0000);
            w(&mut t, REG_QUEUE_READY, 1);
        }
        // A queue size that is not a power of 2 is refused.
        w(&mut t, REG_QUEUE_NUM, 3);
        assert_eq!(t.state().queues[1].size, 16);
        // A queue that does not exist is not there.
        w(&mut t, REG_QUEUE_SEL, 9);
        assert_eq!(r(&t, REG_QUEUE_NUM_MAX), 0);
        w(&mut t, REG_QUEUE_READY, 1);
        w(&mut t, REG_STATUS, s | status::DRIVER_OK);
        assert!(!t.is_active());
        assert_ne!(r(&t, REG_STATUS) & status::NEEDS_RESET, 0);
        // Odd sizes and offsets are dropped, and read as zero.
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(REG_STATUS, &[0]);
        assert_ne!(r(&t, REG_STATUS), 0);
        assert_eq!(r(&t, 0x002), 0);
    }

    #[test]
    fn a_driver_writing_garbage_everywhere_never_breaks_the_transport() {
        // xorshift64: the same garbage every run.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = transport();
        let mut activations = 0;
        for i in 0..200_000 {
            // Now and then a proper driver, so that garbage also meets a
            // live device.
            if i % 1000 == 0 {
                handshake(&mut t, F_VERSION_1);
            }
            let r = next();
            let offset = (r & 0x1ff) & !(r >> 40 & 3);
            let len = [1usize, 2, 4, 8][(r >> 20 & 3) as usize];
            let bytes = next().to_le_bytes();
            // Status writes are mostly the handshake's bits, so that the
            // device gets activated and reset along the way.
            let data = match offset {
                REG_STATUS => {
                    u64::from([0u8, 1, 3, 11, 15, 0x80][(r >> 30) as usize % 6]).to_le_bytes()
                }
                _ => bytes,
            };
            if r >> 63 == 0 {
                t.write(offset, &data[..len]);
            } else {
                let mut out = [0u8; 8];
                t.read(offset, &mut out[..len]);
            }
            assert!(!t.is_active() || t.status & status::DRIVER_OK != 0);
            // Negotiated features are only ever offered ones.
            let negotiated = t.status & status::FEATURES_OK != 0;
            assert!(!negotiated || t.driver_features & !t.device.features() == 0);
            activations += u32::from(t.device.activated.is_some());
        }
        assert!(
            activations > 1000,
            "only {activations} accesses met a live device"
        );
    }

    #[test]
    fn a_saved_transport_restores_and_a_bad_one_is_refused() -> Result<(), Error> {
        let mut t = transport();
        handshake(&mut t, F_VERSION_1);
        let saved = t.state();
        let d = Dummy {
            activated: None,
            resets: 0,
            config: [0; 8],
        };
        let fd = || EventFd::new(0).expect("eventfd");
        let back = MmioTransport::restored(d, mem(), fd(), fd(), &saved)?;
        assert!(back.is_active());
        assert_eq!(back.state(), saved);
        let mut bad = saved.clone();
        bad.queues[0].size = 3;
        let d = Dummy {
            activated: None,
            resets: 0,
            config: [0; 8],
        };
        assert!(MmioTransport::restored(d, mem(), fd(), fd(), &bad).is_err());
        let mut bad = saved.clone();
        bad.queues.pop();
        let d = Dummy {
            activated: None,
            resets: 0,
            config: [0; 8],
        };
        assert!(MmioTransport::restored(d, mem(), fd(), fd(), &bad).is_err());
        Ok(())
    }
}
