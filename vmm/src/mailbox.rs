//! The mailbox: how a run's own data reaches a guest that was booted (or
//! restored from a snapshot) before the run existed.
//!
//! A VM restored from a snapshot is a copy of a guest that stopped when
//! its init said it was ready for a workload, so nothing of the run (its
//! command, environment, the time, fresh entropy) can be in the guest's
//! boot files. The mailbox is a second legacy-pmem region (`/dev/pmem1`,
//! after the root disk's `/dev/pmem0`, a gap between them so that the
//! kernel does not merge the two E820 entries) that the VMM fills when
//! init marks *ready*, or just before a restored guest resumes; init reads
//! it right after that mark, with `O_DIRECT` (the block device's page cache
//! may hold pages from before the snapshot).
//!
//! The format (little-endian; init's `mailbox.rs` reads the same):
//!
//! | offset | what |
//! |---|---|
//! | 0 | `TWBXMAIL` |
//! | 8 | version, u32 (1) |
//! | 12 | payload length, u32 |
//! | 16 | host wall clock, seconds since the epoch, i64 |
//! | 24 | its nanoseconds, u32 |
//! | 28 | entropy length, u32 (at most 64) |
//! | 32 | entropy, 64 bytes (fresh from the host's `getrandom` each time) |
//! | 96 | payload (the run's spec) |
//!
//! The guest may write to the region: the host never reads it back.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::pmem;

/// Errors of the mailbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The payload does not fit.
    #[error("the run's spec is {0} bytes, more than the mailbox's {max}", max = MAX_PAYLOAD)]
    TooLarge(usize),
    /// The host's generator failed.
    #[error("fresh entropy for the guest")]
    Random(#[source] std::io::Error),
    /// The host's clock failed.
    #[error("reading the host's clock")]
    Clock,
    /// The region is not in guest memory.
    #[error("writing the mailbox into guest memory")]
    Write,
}

/// What starts a mailbox.
pub const MAGIC: [u8; 8] = *b"TWBXMAIL";
/// The format's version.
pub const VERSION: u32 = 1;
/// The region's size (one pmem unit).
pub const SIZE: u64 = pmem::ALIGN;
/// Bytes of entropy given each time.
pub const ENTROPY: usize = 64;
/// Where the payload starts.
pub const HEADER: usize = 96;
/// The longest payload.
pub const MAX_PAYLOAD: usize = SIZE as usize - HEADER;

/// Where the mailbox goes: after the root disk at `pmem_base` of
/// `pmem_size` bytes, one unit of gap between them.
pub fn base(pmem_base: u64, pmem_size: u64) -> u64 {
    pmem_base + pmem_size + pmem::ALIGN
}

/// The mailbox's bytes for `payload`, with the wall clock `(seconds,
/// nanoseconds)` and `entropy`.
pub fn encode(payload: &[u8], now: (i64, u32), entropy: &[u8; ENTROPY]) -> Result<Vec<u8>, Error> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&now.0.to_le_bytes());
    out.extend_from_slice(&now.1.to_le_bytes());
    out.extend_from_slice(&(ENTROPY as u32).to_le_bytes());
    out.extend_from_slice(entropy);
    out.extend_from_slice(payload);
    Ok(out)
}

/// The host's wall clock now.
fn now() -> Result<(i64, u32), Error> {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| Error::Clock)?;
    Ok((d.as_secs() as i64, d.subsec_nanos()))
}

/// Fresh entropy from the host's generator, for one delivery. (Drawn
/// before the vCPU threads' filters, which allow no `getrandom`.)
pub fn fresh_entropy() -> Result<[u8; ENTROPY], Error> {
    let mut entropy = [0u8; ENTROPY];
    crate::arch::boot_params::fill_random(&mut entropy)
        .map_err(|e| Error::Random(std::io::Error::other(e.to_string())))?;
    Ok(entropy)
}

/// Writes the mailbox for `payload` at `base` in `mem`, with `entropy` and
/// the wall clock of this moment.
pub fn deliver(
    mem: &GuestMemoryMmap,
    base: u64,
    payload: &[u8],
    entropy: &[u8; ENTROPY],
) -> Result<(), Error> {
    let bytes = encode(payload, now()?, entropy)?;
    mem.write_slice(&bytes, GuestAddress(base))
        .map_err(|_| Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_what_init_reads() -> Result<(), Error> {
        let b = encode(b"{}", (1_700_000_000, 5), &[7; ENTROPY])?;
        assert_eq!(&b[..8], b"TWBXMAIL");
        assert_eq!(b[8..12], 1u32.to_le_bytes());
        assert_eq!(b[12..16], 2u32.to_le_bytes());
        assert_eq!(b[16..24], 1_700_000_000i64.to_le_bytes());
        assert_eq!(b[24..28], 5u32.to_le_bytes());
        assert_eq!(b[28..32], 64u32.to_le_bytes());
        assert_eq!(&b[32..96], &[7; 64][..]);
        assert_eq!(&b[96..], b"{}");
        assert!(matches!(
            encode(&vec![0; MAX_PAYLOAD + 1], (0, 0), &[0; ENTROPY]),
            Err(Error::TooLarge(_))
        ));
        Ok(())
    }

    #[test]
    fn each_delivery_has_fresh_entropy() -> Result<(), Box<dyn std::error::Error>> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), SIZE as usize)])?;
        let mut seen = Vec::new();
        for _ in 0..2 {
            deliver(&mem, 0, b"spec", &fresh_entropy()?)?;
            let mut e = [0u8; ENTROPY];
            mem.read_slice(&mut e, GuestAddress(32))?;
            seen.push(e);
        }
        assert_ne!(seen[0], seen[1]);
        assert_ne!(seen[0], [0; ENTROPY]);
        Ok(())
    }
}
