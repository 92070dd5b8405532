//! The Intel MultiProcessor table: how a guest without ACPI learns its CPUs,
//! its IOAPIC and how ISA interrupts are wired (MP spec 1.4).
//!
//! At the start of the EBDA: the floating pointer structure (`_MP_`), then
//! the configuration table (`PCMP`) with one processor entry per vCPU, the
//! ISA bus, the IOAPIC, an I/O interrupt entry per ISA IRQ and the two local
//! interrupt entries (ExtINT on LINT0, NMI on LINT1).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR};

/// Errors of writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory does not hold the table.
    #[error("guest memory cannot hold the MP table")]
    Write,
    /// Too many vCPUs for 8-bit APIC ids.
    #[error("{0} vCPUs do not fit in an MP table")]
    TooManyCpus(u32),
}

/// ISA interrupts routed through the IOAPIC.
const ISA_IRQS: u8 = 16;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The I/O APIC's APIC ID in the table for `cpus` vCPUs: the one after the
/// last CPU's.
pub fn ioapic_id(cpus: u32) -> u8 {
    cpus.min(254) as u8
}

/// Builds the table for `cpus` vCPUs, to be placed at `base`.
pub fn build(cpus: u32, base: u64) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > 254 {
        return Err(Error::TooManyCpus(cpus));
    }
    let ioapic_id = ioapic_id(cpus);
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus as u8 {
        entries.push(0); // processor
        entries.push(id); // local APIC id
        entries.push(0x14); // local APIC version
        entries.push(1 | if id == 0 { 2 } else { 0 }); // enabled, bootstrap
        entries.extend_from_slice(&0x600u32.to_le_bytes()); // signature: family 6
        entries.extend_from_slice(&0x201u32.to_le_bytes()); // features: FPU, APIC
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[1, 0]); // bus 0
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[2, ioapic_id, 0x11, 1]); // IOAPIC, enabled
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // I/O interrupt: INT, conforming polarity/trigger, ISA bus irq -> IOAPIC pin.
        entries.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: ExtINT to LINT0 of the BSP, NMI to LINT1 of all.
    entries.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"TWINBOX ");
    table.extend_from_slice(b"000000000000");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(16);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(4); // spec revision
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]); // features: a configuration table follows
    mpf[10] = checksum(&mpf);

    mpf.extend_from_slice(&table);
    Ok(mpf)
}

/// Writes the table for `cpus` vCPUs at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), Error> {
    let bytes = build(cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts_are_right() -> Result<(), Error> {
        let t = build(2, EBDA_START)?;
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // 2 CPUs + bus + IOAPIC + 16 IRQs + 2 local interrupts.
        assert_eq!(
            u16::from_le_bytes([table[34], table[35]]),
            2 + 1 + 1 + 16 + 2
        );
        assert_eq!(
            u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64,
            EBDA_START + 16
        );
        assert!(matches!(
            build(255, EBDA_START),
            Err(Error::TooManyCpus(255))
        ));
        Ok(())
    }
}
