//! The devices a guest reaches through port I/O, and the dispatch of a
//! vCPU's port exits to them.
//!
//! | ports | device |
//! |---|---|
//! | 0x3f8-0x3ff | 8250 UART (COM1), interrupt on IRQ 4 ([`serial`]) |
//! | 0x60, 0x64 | i8042: a write of 0xFE to 0x64 resets the machine ([`i8042`]) |
//! | 0x501 | exit status: an `out` of the workload's code ends the VM ([`ports`]) |
//! | 0x502 | boot timer: an `out` of a mark id is timestamped ([`ports`]) |
//!
//! and, with KVM's split irqchip, the I/O APIC at MMIO 0xFEC00000
//! ([`ioapic`]); with [`crate::config::VmConfig::vsock`], a virtio-vsock
//! device behind the virtio-mmio transport at MMIO 0xD0000000, GSI 5
//! ([`vsock`], [`crate::virtio`]); with [`crate::config::VmConfig::shares`],
//! a virtio-fs device per share in the slots after it (share *i* in slot
//! 1 + *i*: MMIO 0xD0001000 + 4 KiB × *i*, GSI 6 + *i*, [`virtiofs`]). Reads of other ports and addresses return all ones,
//! writes to them are dropped: what real hardware does for an empty bus.

pub mod i8042;
pub mod ioapic;
pub mod ports;
pub mod serial;
pub mod virtiofs;
pub mod vsock;

use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use crate::event::Event;

pub use ports::{BOOT_TIMER_PORT, EXIT_PORT};

/// Installs an I/O APIC's routes (`KVM_SET_GSI_ROUTING`); the error says
/// what failed.
pub type RouteInstaller = Box<dyn Fn(&[ioapic::Route]) -> Result<(), String> + Send + Sync>;

/// The devices of one VM, shared by its vCPU threads.
pub struct Devices {
    serial: Mutex<serial::Serial>,
    i8042: Mutex<i8042::I8042>,
    ports: ports::Ports,
    /// The I/O APIC and how its routes reach KVM, with the split irqchip.
    ioapic: Option<(Mutex<ioapic::Ioapic>, RouteInstaller)>,
    /// The vsock device and the base of its MMIO window.
    vsock: Option<(vsock::Shared, u64)>,
    /// The virtio-fs devices and the bases of their MMIO windows.
    shares: Vec<(virtiofs::Shared, u64)>,
}

const SERIAL_BASE: u16 = 0x3f8;
const SERIAL_END: u16 = 0x3ff;

impl Devices {
    /// Devices whose stop requests go to `stop`; the serial port signals
    /// `serial_irq` and writes to `console`.
    pub fn new(
        serial_irq: EventFd,
        console: serial::Console,
        stop: Sender<Event>,
        start: Instant,
    ) -> Self {
        Self {
            serial: Mutex::new(serial::new(serial_irq, console)),
            i8042: Mutex::new(i8042::new(stop.clone())),
            ports: ports::Ports::new(stop, start),
            ioapic: None,
            vsock: None,
            shares: Vec::new(),
        }
    }

    /// Does `at_ready` at the guest's ready mark.
    pub fn with_ready(mut self, at_ready: ports::AtReady) -> Self {
        self.ports = self.ports.with_ready(at_ready);
        self
    }

    /// Devices restored from a snapshot: the UART's registers from `serial`.
    pub fn restored(
        serial_irq: EventFd,
        console: serial::Console,
        serial: &vm_superio::serial::SerialState,
        stop: Sender<Event>,
        start: Instant,
    ) -> Result<Self, String> {
        let uart = serial::Serial::from_state(
            serial,
            serial::IrqLine::new(serial_irq),
            vm_superio::serial::NoEvents,
            console,
        )
        .map_err(|e| format!("the serial port's state: {e:?}"))?;
        Ok(Self {
            serial: Mutex::new(uart),
            i8042: Mutex::new(i8042::new(stop.clone())),
            ports: ports::Ports::new(stop, start),
            ioapic: None,
            vsock: None,
            shares: Vec::new(),
        })
    }

    /// The state a snapshot keeps: the UART's registers and FIFO, and the
    /// I/O APIC's (when there is one).
    pub fn state(
        &self,
    ) -> (
        vm_superio::serial::SerialState,
        Option<(u32, u32, [u64; ioapic::PINS])>,
    ) {
        let serial = self.serial.lock().map(|s| s.state()).unwrap_or_default();
        let io = self
            .ioapic
            .as_ref()
            .and_then(|(io, _)| io.lock().ok().map(|io| io.state()));
        (serial, io)
    }

    /// Adds an I/O APIC in the VMM (for the split irqchip) whose routes
    /// `install` hands to KVM.
    pub fn with_ioapic(mut self, ioapic: ioapic::Ioapic, install: RouteInstaller) -> Self {
        self.ioapic = Some((Mutex::new(ioapic), install));
        self
    }

    /// Adds the vsock device, its MMIO window at `base`.
    pub fn with_vsock(mut self, device: vsock::Shared, base: u64) -> Self {
        self.vsock = Some((device, base));
        self
    }

    /// Adds a virtio-fs device, its MMIO window at `base`.
    pub fn with_share(mut self, device: virtiofs::Shared, base: u64) -> Self {
        self.shares.push((device, base));
        self
    }

    /// The virtio-fs device whose window holds `addr`, and the offset.
    fn share_at(&self, addr: u64) -> Option<(&virtiofs::Shared, u64)> {
        self.shares.iter().find_map(|(d, base)| {
            let offset = addr
                .checked_sub(*base)
                .filter(|o| *o < crate::virtio::slot::SIZE)?;
            Some((d, offset))
        })
    }

    /// The vsock device's transport state, for a snapshot.
    pub fn vsock_state(&self) -> Option<crate::virtio::mmio::TransportState> {
        let (d, _) = self.vsock.as_ref()?;
        d.lock().ok().map(|t| t.state())
    }

    /// The vsock device and the offset in its window, if `addr` is there.
    fn vsock_at(&self, addr: u64) -> Option<(&vsock::Shared, u64)> {
        let (d, base) = self.vsock.as_ref()?;
        let offset = addr
            .checked_sub(*base)
            .filter(|o| *o < crate::virtio::slot::SIZE)?;
        Some((d, offset))
    }

    /// The I/O APIC and the offset in its window, if `addr` is there.
    fn ioapic_at(&self, addr: u64) -> Option<(&(Mutex<ioapic::Ioapic>, RouteInstaller), u64)> {
        let offset = addr
            .checked_sub(ioapic::BASE)
            .filter(|o| *o < ioapic::SIZE)?;
        Some((self.ioapic.as_ref()?, offset))
    }

    /// A guest MMIO write at `addr`; an error if routes it changed could
    /// not be installed (the guest's interrupts would be lost).
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        if let Some((d, offset)) = self.vsock_at(addr) {
            return match d.lock() {
                Ok(mut t) => {
                    t.write(offset, data);
                    Ok(())
                }
                Err(_) => Err("the vsock device's lock is poisoned".into()),
            };
        }
        if let Some((d, offset)) = self.share_at(addr) {
            return match d.lock() {
                Ok(mut t) => {
                    t.write(offset, data);
                    Ok(())
                }
                Err(_) => Err("a virtio-fs device's lock is poisoned".into()),
            };
        }
        let Some(((io, install), offset)) = self.ioapic_at(addr) else {
            return Ok(());
        };
        let routes = match io.lock() {
            Ok(mut io) => io.write(offset, data),
            Err(_) => return Err("the I/O APIC's lock is poisoned".into()),
        };
        match routes {
            Some(r) => install(&r),
            None => Ok(()),
        }
    }

    /// A guest MMIO read at `addr`.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if let Some((d, offset)) = self.vsock_at(addr) {
            match d.lock() {
                Ok(t) => t.read(offset, data),
                Err(_) => data.fill(0xff),
            }
            return;
        }
        if let Some((d, offset)) = self.share_at(addr) {
            match d.lock() {
                Ok(t) => t.read(offset, data),
                Err(_) => data.fill(0xff),
            }
            return;
        }
        match self
            .ioapic_at(addr)
            .map(|((io, _), offset)| (io.lock(), offset))
        {
            Some((Ok(io), offset)) => io.read(offset, data),
            _ => data.fill(0xff),
        }
    }

    /// A guest `out` to `port`; true if the vCPU must stop here (the
    /// ready mark of a run that takes a snapshot).
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match port {
            SERIAL_BASE..=SERIAL_END => {
                if let (Some(&b), Ok(mut s)) = (data.first(), self.serial.lock()) {
                    // A failed interrupt injection is the host's problem, not
                    // the guest's: the byte is still written.
                    let _ = s.write((port - SERIAL_BASE) as u8, b);
                }
            }
            0x60 | 0x64 => {
                if let (Some(&b), Ok(mut d)) = (data.first(), self.i8042.lock()) {
                    let _ = d.write((port - 0x60) as u8, b);
                }
            }
            EXIT_PORT | BOOT_TIMER_PORT => return self.ports.write(port, data),
            _ => {}
        }
        false
    }

    /// A guest `in` from `port`.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match port {
            SERIAL_BASE..=SERIAL_END if !data.is_empty() => {
                if let Ok(mut s) = self.serial.lock() {
                    data[0] = s.read((port - SERIAL_BASE) as u8);
                }
            }
            0x60 | 0x64 if !data.is_empty() => {
                if let Ok(mut d) = self.i8042.lock() {
                    data[0] = d.read((port - 0x60) as u8);
                }
            }
            _ => data.fill(0xff),
        }
    }

    /// The console's record (last lines, byte count).
    pub fn console_tail(&self) -> String {
        self.serial
            .lock()
            .map(|s| s.writer().tail())
            .unwrap_or_default()
    }

    /// Boot timer marks so far.
    pub fn marks(&self) -> Vec<ports::Mark> {
        self.ports.marks()
    }
}
