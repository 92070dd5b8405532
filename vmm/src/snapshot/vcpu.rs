//! One vCPU's whole state: read from KVM, written back to a new vCPU, and
//! as bytes.
//!
//! Restore writes the pieces in an order where none undoes another: the TSC
//! frequency first (it scales what the MSRs say of the TSC), special
//! registers (CR0/CR4/EFER decide what the rest means), general registers,
//! extended state and XCRs, debug registers, the LAPIC, the MSRs, then the
//! MP state and pending events last, as they may be refused or rewritten
//! by what came before.
//!
//! The byte format is ours: `TWBXVCPU`, a version, then sections (a tag, a
//! length, the bytes of one KVM structure as the kernel lays it out, or the
//! MSRs as index-value pairs). Everything in it is checked before use: a
//! known tag, each at most once, each the exact size of its structure, at
//! most [`MAX_MSRS`] MSRs, nothing after the end.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
};
use kvm_ioctls::VcpuFd;
use zerocopy::{FromBytes, IntoBytes};

use super::Error;
use crate::arch::msr;

/// What starts the bytes of a vCPU state.
pub const MAGIC: [u8; 8] = *b"TWBXVCPU";
/// The format's version.
pub const VERSION: u32 = 1;
/// The most MSRs a state may hold (KVM's index lists hold a few hundred).
pub const MAX_MSRS: usize = 1024;
/// The longest vCPU state accepted, in bytes.
pub const MAX_LEN: usize = 1 << 20;

const REGS: u32 = 1;
const SREGS: u32 = 2;
const XSAVE: u32 = 3;
const XCRS: u32 = 4;
const LAPIC: u32 = 5;
const EVENTS: u32 = 6;
const MP_STATE: u32 = 7;
const DEBUGREGS: u32 = 8;
const MSRS: u32 = 9;
const TSC_KHZ: u32 = 10;

/// One vCPU's architectural state.
#[derive(Default)]
pub struct VcpuState {
    /// General registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segments, control registers, EFER, APIC base, descriptor tables.
    pub sregs: kvm_sregs,
    /// x87, SSE and the XSAVE area.
    pub xsave: kvm_xsave,
    /// The extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// The local APIC's registers (KVM's in-kernel LAPIC).
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: kvm_vcpu_events,
    /// Running, halted, waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// DR0-DR3, DR6, DR7.
    pub debugregs: kvm_debugregs,
    /// Every MSR KVM would let us read, as (index, value).
    pub msrs: Vec<(u32, u64)>,
    /// The TSC frequency, in kHz (0: unknown, left as KVM has it).
    pub tsc_khz: u32,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("msrs", &self.msrs.len())
            .field("tsc_khz", &self.tsc_khz)
            .finish_non_exhaustive()
    }
}

impl PartialEq for VcpuState {
    fn eq(&self, other: &Self) -> bool {
        self.encode() == other.encode()
    }
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |e| Error::Kvm(what, e)
}

/// Completes what the last exit left pending in KVM (the second half of a
/// port or MMIO access), without running the guest: `KVM_RUN` with
/// `immediate_exit` set, as the KVM API asks before state is saved.
pub fn settle(vcpu: &mut VcpuFd) -> Result<(), Error> {
    vcpu.set_kvm_immediate_exit(1);
    let r = match vcpu.run() {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(e) => Err(Error::Kvm("KVM_RUN (immediate exit)", e)),
        Ok(_) => Ok(()),
    };
    vcpu.set_kvm_immediate_exit(0);
    r
}

impl VcpuState {
    /// Reads the state of `vcpu`, which is not running and has been
    /// [`settle`]d; the MSRs are those
    /// of `msr_indices` (KVM's index list) that it lets us read.
    pub fn capture(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<Self, Error> {
        let mut msrs = Vec::new();
        for &index in msr_indices {
            let entry = kvm_msr_entry {
                index,
                ..Default::default()
            };
            let mut one =
                Msrs::from_entries(&[entry]).map_err(|_| Error::TooManyMsrs(msr_indices.len()))?;
            if matches!(vcpu.get_msrs(&mut one), Ok(1)) {
                if let Some(e) = one.as_slice().first() {
                    msrs.push((e.index, e.data));
                }
            }
        }
        if msrs.len() > MAX_MSRS {
            return Err(Error::TooManyMsrs(msrs.len()));
        }
        Ok(Self {
            regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            msrs,
            tsc_khz: vcpu.get_tsc_khz().unwrap_or(0),
        })
    }

    /// Writes this state into `vcpu` (new, with its CPUID already set).
    pub fn restore(&self, vcpu: &VcpuFd) -> Result<(), Error> {
        if self.tsc_khz != 0 {
            vcpu.set_tsc_khz(self.tsc_khz)
                .map_err(kvm("KVM_SET_TSC_KHZ"))?;
        }
        vcpu.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        vcpu.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        // SAFETY: `self.xsave` is a whole `kvm_xsave` (4 KiB, its legacy
        // size), which is all KVM_SET_XSAVE reads; a host whose XSAVE area
        // is larger (AMX) needs KVM_SET_XSAVE2, which this does not use.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        vcpu.set_debug_regs(&self.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        vcpu.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let msrs = msr::msrs_of(&self.msrs).map_err(|_| Error::TooManyMsrs(self.msrs.len()))?;
        let written = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if written != self.msrs.len() {
            let refused = self.msrs.get(written).map_or(0, |e| e.0);
            return Err(Error::BadSection {
                tag: MSRS,
                why: format!(
                    "KVM refused MSR {refused:#x} ({written} of {} written)",
                    self.msrs.len()
                ),
            });
        }
        vcpu.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// The state as bytes (see the module's doc).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let mut section = |tag: u32, bytes: &[u8]| {
            out.extend_from_slice(&tag.to_le_bytes());
            // Every section is far below 4 GiB (MAX_MSRS bounds the largest).
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        };
        section(REGS, self.regs.as_bytes());
        section(SREGS, self.sregs.as_bytes());
        section(XSAVE, self.xsave.as_bytes());
        section(XCRS, self.xcrs.as_bytes());
        section(LAPIC, self.lapic.as_bytes());
        section(EVENTS, self.events.as_bytes());
        section(MP_STATE, self.mp_state.as_bytes());
        section(DEBUGREGS, self.debugregs.as_bytes());
        let msrs: Vec<u8> = self
            .msrs
            .iter()
            .flat_map(|(i, v)| i.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect();
        section(MSRS, &msrs);
        section(TSC_KHZ, &self.tsc_khz.to_le_bytes());
        out
    }

    /// Parses bytes made by [`encode`](Self::encode), trusting nothing.
    pub fn decode(data: &[u8]) -> Result<Self, Error> {
        if data.len() > MAX_LEN {
            return Err(Error::Truncated(MAX_LEN));
        }
        let mut r = Reader { data, at: 0 };
        let magic = r.take(MAGIC.len())?;
        let version = r.u32()?;
        if magic != MAGIC || version != VERSION {
            return Err(Error::Header(version));
        }
        let mut s = Self::default();
        let mut seen = 0u32;
        while r.at < data.len() {
            let tag = r.u32()?;
            let len = r.u32()? as usize;
            let bytes = r.take(len)?;
            if !(REGS..=TSC_KHZ).contains(&tag) {
                return Err(Error::UnknownSection(tag));
            }
            if seen & (1 << tag) != 0 {
                return Err(bad(tag, "appears twice".into()));
            }
            seen |= 1 << tag;
            match tag {
                REGS => s.regs = fixed(tag, bytes)?,
                SREGS => s.sregs = fixed(tag, bytes)?,
                XSAVE => s.xsave = fixed(tag, bytes)?,
                XCRS => s.xcrs = fixed(tag, bytes)?,
                LAPIC => s.lapic = fixed(tag, bytes)?,
                EVENTS => s.events = fixed(tag, bytes)?,
                MP_STATE => s.mp_state = fixed(tag, bytes)?,
                DEBUGREGS => s.debugregs = fixed(tag, bytes)?,
                MSRS => s.msrs = msrs(bytes)?,
                _ => s.tsc_khz = fixed::<u32>(tag, bytes)?,
            }
        }
        for (tag, name) in [
            (REGS, "regs"),
            (SREGS, "sregs"),
            (XSAVE, "xsave"),
            (XCRS, "xcrs"),
            (LAPIC, "lapic"),
            (EVENTS, "events"),
            (MP_STATE, "mp_state"),
            (DEBUGREGS, "debugregs"),
            (MSRS, "msrs"),
            (TSC_KHZ, "tsc_khz"),
        ] {
            if seen & (1 << tag) == 0 {
                return Err(Error::Missing(name));
            }
        }
        Ok(s)
    }
}

fn bad(tag: u32, why: String) -> Error {
    Error::BadSection { tag, why }
}

/// One KVM structure from exactly its size in bytes.
pub(crate) fn fixed<T: FromBytes>(tag: u32, bytes: &[u8]) -> Result<T, Error> {
    T::read_from_bytes(bytes).map_err(|_| {
        bad(
            tag,
            format!("{} bytes, want {}", bytes.len(), std::mem::size_of::<T>()),
        )
    })
}

fn msrs(bytes: &[u8]) -> Result<Vec<(u32, u64)>, Error> {
    if bytes.len() % 12 != 0 {
        return Err(bad(MSRS, format!("{} bytes, not pairs of 12", bytes.len())));
    }
    let n = bytes.len() / 12;
    if n > MAX_MSRS {
        return Err(Error::TooManyMsrs(n));
    }
    Ok(bytes
        .chunks_exact(12)
        .map(|c| {
            let mut i = [0u8; 4];
            let mut v = [0u8; 8];
            i.copy_from_slice(&c[..4]);
            v.copy_from_slice(&c[4..]);
            (u32::from_le_bytes(i), u64::from_le_bytes(v))
        })
        .collect())
}

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.at.checked_add(n).ok_or(Error::Truncated(self.at))?;
        let bytes = self
            .data
            .get(self.at..end)
            .ok_or(Error::Truncated(self.at))?;
        self.at = end;
        Ok(bytes)
    }
    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let mut s = VcpuState::default();
        s.regs.rip = 0x1000;
        s.regs.rbx = 41;
        s.sregs.cr0 = 0x10;
        s.xsave.region[0] = 0x37f;
        s.msrs = vec![(0x10, 12345), (0xc000_0080, 0x500)];
        s.tsc_khz = 2_100_000;
        s
    }

    #[test]
    fn the_state_round_trips_through_bytes() -> Result<(), Error> {
        let s = sample();
        let bytes = s.encode();
        let back = VcpuState::decode(&bytes)?;
        assert_eq!(back.regs.rbx, 41);
        assert_eq!(back.xsave.region[0], 0x37f);
        assert_eq!(back.msrs, s.msrs);
        assert_eq!(back, s);
        Ok(())
    }

    #[test]
    fn hostile_bytes_are_refused_with_a_reason() {
        let good = sample().encode();
        assert!(matches!(
            VcpuState::decode(b"TWBXVCPX\x01\0\0\0"),
            Err(Error::Header(1))
        ));
        let mut v2 = good.clone();
        v2[8] = 2;
        assert!(matches!(VcpuState::decode(&v2), Err(Error::Header(2))));
        // Every cut is refused, never a panic.
        for n in 0..good.len() {
            assert!(VcpuState::decode(&good[..n]).is_err(), "cut at {n} parsed");
        }
        // A section longer than the data.
        let mut long = good[..12].to_vec();
        long.extend_from_slice(&REGS.to_le_bytes());
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(VcpuState::decode(&long), Err(Error::Truncated(_))));
        // A repeated, unknown or wrongly sized section.
        let mut twice = good.clone();
        twice.extend_from_slice(&TSC_KHZ.to_le_bytes());
        twice.extend_from_slice(&4u32.to_le_bytes());
        twice.extend_from_slice(&[0; 4]);
        assert!(matches!(
            VcpuState::decode(&twice),
            Err(Error::BadSection { tag: TSC_KHZ, .. })
        ));
        let mut unknown = good[..12].to_vec();
        unknown.extend_from_slice(&99u32.to_le_bytes());
        unknown.extend_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            VcpuState::decode(&unknown),
            Err(Error::UnknownSection(99))
        ));
        let mut short = good[..12].to_vec();
        short.extend_from_slice(&REGS.to_le_bytes());
        short.extend_from_slice(&8u32.to_le_bytes());
        short.extend_from_slice(&[0; 8]);
        assert!(matches!(
            VcpuState::decode(&short),
            Err(Error::BadSection { tag: REGS, .. })
        ));
        // Too many MSRs, and MSR bytes that are not pairs.
        assert!(matches!(
            msrs(&vec![0; 12 * (MAX_MSRS + 1)]),
            Err(Error::TooManyMsrs(_))
        ));
        assert!(matches!(
            msrs(&[0; 13]),
            Err(Error::BadSection { tag: MSRS, .. })
        ));
        // A header alone lacks everything.
        assert!(matches!(
            VcpuState::decode(&good[..12]),
            Err(Error::Missing("regs"))
        ));
    }
}
