//! An I/O APIC in the VMM, for KVM's split irqchip.
//!
//! With the whole irqchip in the kernel (PIC, I/O APIC and LAPICs), KVM
//! registers the PIC and I/O APIC on its I/O buses and, when the VM is
//! destroyed, unregisters each one behind an SRCU grace period: about 15 ms
//! of every VM's exit, longer than the rest of a null guest's life. With
//! the split irqchip (`KVM_CAP_SPLIT_IRQCHIP`) only the LAPICs stay in the
//! kernel and the VM is gone in 0.2 ms; the guest's I/O APIC is this
//! device, at 0xFEC00000 (the MP table points there), and there is no PIC.
//!
//! It keeps the 24 redirection entries the guest programs and turns each
//! unmasked one into an MSI route for its pin's GSI; the VMM installs those
//! routes (`KVM_SET_GSI_ROUTING`), so a device's irqfd on the GSI reaches
//! the vector and CPU the guest chose. Every route is edge-triggered: our
//! only interrupt source (the UART, through an irqfd) signals edges, so no
//! EOI has to come back here.
//!
//! Registers (82093AA): the guest writes a register index to IOREGSEL
//! (offset 0x00) and reads or writes it through IOWIN (offset 0x10): 0 is
//! the ID, 1 the version (0x11, 24 entries), 2 the arbitration ID,
//! 0x10 + 2n and 0x11 + 2n the low and high halves of entry n.

/// Guest-physical base of the I/O APIC.
pub const BASE: u64 = crate::arch::layout::IOAPIC_ADDR as u64;
/// Size of its MMIO window.
pub const SIZE: u64 = 0x1000;
/// Redirection entries (pins), as on the 82093AA.
pub const PINS: usize = 24;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIR: u32 = 0x10;
const VERSION: u32 = 0x11 | ((PINS as u32 - 1) << 16);

const MASKED: u64 = 1 << 16;
/// Bits of an entry the guest may set: vector, delivery mode, destination
/// mode, polarity, trigger mode, mask, destination (not the read-only
/// delivery status and remote IRR).
const WRITABLE: u64 = 0xff00_0000_0001_afff;

/// An MSI route for one GSI, in `kvm_irq_routing_msi` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The GSI (the pin).
    pub gsi: u32,
    /// MSI address, low 32 bits.
    pub address_lo: u32,
    /// MSI data.
    pub data: u32,
}

/// The I/O APIC's registers.
pub struct Ioapic {
    id: u32,
    select: u32,
    entries: [u64; PINS],
    /// The routes last handed out, so that only a change is.
    routes: Vec<Route>,
}

impl Ioapic {
    /// An I/O APIC with APIC ID `id` (the MP table's), every pin masked.
    pub fn new(id: u8) -> Self {
        Self {
            id: u32::from(id) << 24,
            select: 0,
            entries: [MASKED; PINS],
            routes: Vec::new(),
        }
    }

    /// A guest read of `data.len()` bytes at `offset` in the window. Only
    /// aligned 32-bit reads of IOREGSEL and IOWIN mean anything; the rest
    /// read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            IOREGSEL => self.select,
            IOWIN => self.register(self.select),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0);
        }
    }

    /// A guest write at `offset`. Returns the new routes when they changed
    /// (the caller installs them), else `None`.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<Vec<Route>> {
        let mut bytes = [0u8; 4];
        for (b, d) in bytes.iter_mut().zip(data) {
            *b = *d;
        }
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => {
                self.select = value & 0xff;
                None
            }
            IOWIN => self.set_register(self.select, value),
            _ => None,
        }
    }

    fn register(&self, index: u32) -> u32 {
        match index {
            REG_ID => self.id,
            REG_VERSION => VERSION,
            REG_ARBITRATION => self.id,
            i if i >= REG_REDIR => match self.entries.get(((i - REG_REDIR) / 2) as usize) {
                Some(e) if i % 2 == 0 => *e as u32,
                Some(e) => (*e >> 32) as u32,
                None => 0,
            },
            _ => 0,
        }
    }

    fn set_register(&mut self, index: u32, value: u32) -> Option<Vec<Route>> {
        match index {
            REG_ID => {
                self.id = value & 0x0f00_0000;
                None
            }
            i if i >= REG_REDIR => {
                let entry = self.entries.get_mut(((i - REG_REDIR) / 2) as usize)?;
                let old = *entry;
                let new = if i % 2 == 0 {
                    (old & !0xffff_ffff) | u64::from(value)
                } else {
                    (old & 0xffff_ffff) | (u64::from(value) << 32)
                } & WRITABLE;
                *entry = new;
                let routes = self.routes();
                if routes == self.routes {
                    return None;
                }
                self.routes = routes.clone();
                Some(routes)
            }
            _ => None,
        }
    }

    /// The registers, for a snapshot: the ID register, IOREGSEL and the
    /// redirection table.
    pub fn state(&self) -> (u32, u32, [u64; PINS]) {
        (self.id, self.select, self.entries)
    }

    /// An I/O APIC with the registers of [`state`](Self::state), masked to
    /// what a guest could have written; its routes are [`routes`](Self::routes).
    pub fn from_state(id: u32, select: u32, entries: [u64; PINS]) -> Self {
        let mut io = Self {
            id: id & 0x0f00_0000,
            select: select & 0xff,
            entries: entries.map(|e| e & WRITABLE),
            routes: Vec::new(),
        };
        io.routes = io.routes();
        io
    }

    /// An MSI route for each unmasked pin.
    pub fn routes(&self) -> Vec<Route> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| *e & MASKED == 0)
            .map(|(pin, &e)| {
                let vector = (e & 0xff) as u32;
                let delivery = ((e >> 8) & 0x7) as u32;
                let logical = ((e >> 11) & 1) as u32;
                let dest = (e >> 56) as u32;
                // Lowest priority delivery goes with the redirection hint.
                let hint = u32::from(delivery == 1);
                Route {
                    gsi: pin as u32,
                    address_lo: 0xfee0_0000 | (dest << 12) | (hint << 3) | (logical << 2),
                    data: vector | (delivery << 8),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write32(io: &mut Ioapic, offset: u64, v: u32) -> Option<Vec<Route>> {
        io.write(offset, &v.to_le_bytes())
    }

    fn read_reg(io: &mut Ioapic, index: u32) -> u32 {
        write32(io, IOREGSEL, index);
        let mut d = [0u8; 4];
        io.read(IOWIN, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn id_and_version_read_back_and_every_pin_starts_masked() {
        let mut io = Ioapic::new(2);
        assert_eq!(read_reg(&mut io, REG_ID), 2 << 24);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        for pin in 0..PINS as u32 {
            assert_eq!(read_reg(&mut io, REG_REDIR + 2 * pin) & (1 << 16), 1 << 16);
        }
        assert!(io.routes().is_empty());
    }

    #[test]
    fn an_unmasked_entry_becomes_an_msi_route_and_masking_removes_it() {
        let mut io = Ioapic::new(1);
        // Pin 4: destination APIC 3 (physical), then vector 0x31, fixed,
        // edge, unmasked.
        write32(&mut io, IOREGSEL, REG_REDIR + 2 * 4 + 1);
        assert_eq!(
            write32(&mut io, IOWIN, 3 << 24),
            None,
            "still masked: no change in routes"
        );
        write32(&mut io, IOREGSEL, REG_REDIR + 2 * 4);
        let routes = write32(&mut io, IOWIN, 0x31).expect("the entry changed");
        assert_eq!(
            routes,
            vec![Route {
                gsi: 4,
                address_lo: 0xfee0_3000,
                data: 0x31
            }]
        );
        assert_eq!(read_reg(&mut io, REG_REDIR + 2 * 4), 0x31);
        // The same value again changes nothing.
        write32(&mut io, IOREGSEL, REG_REDIR + 2 * 4);
        assert_eq!(write32(&mut io, IOWIN, 0x31), None);
        // Logical, lowest priority: destination mode and hint bits set.
        let routes = write32(&mut io, IOWIN, 0x31 | (1 << 8) | (1 << 11)).expect("changed");
        assert_eq!(routes[0].address_lo, 0xfee0_300c);
        assert_eq!(routes[0].data, 0x131);
        let routes = write32(&mut io, IOWIN, 0x31 | (1 << 16)).expect("changed");
        assert!(routes.is_empty());
    }

    #[test]
    fn garbage_from_the_guest_is_contained() {
        let mut io = Ioapic::new(1);
        // Read-only bits (delivery status, remote IRR) do not stick.
        write32(&mut io, IOREGSEL, REG_REDIR);
        write32(&mut io, IOWIN, 0xffff_ffff);
        assert_eq!(read_reg(&mut io, REG_REDIR), 0x0001_afff);
        // Registers past the last entry, odd sizes and offsets: ignored.
        write32(&mut io, IOREGSEL, 0xff);
        assert_eq!(write32(&mut io, IOWIN, 0x1234), None);
        assert_eq!(read_reg(&mut io, 0xff), 0);
        assert_eq!(io.write(IOWIN, &[]), None);
        assert_eq!(io.write(0x20, &[1, 2, 3, 4, 5, 6, 7, 8]), None);
        let mut wide = [0xaau8; 8];
        io.read(0x24, &mut wide);
        assert_eq!(wide, [0; 8]);
        let mut one = [0u8; 1];
        write32(&mut io, IOREGSEL, REG_VERSION);
        io.read(IOWIN, &mut one);
        assert_eq!(one, [0x11]);
    }
}
