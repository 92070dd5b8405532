//! KVM's own statistics of a vCPU (exits, halts, page faults, emulated
//! instructions...), read through the binary stats interface
//! (`KVM_GET_STATS_FD`, Linux 5.14+), which needs no debugfs.
//!
//! Used by the profiler: the counters say what kind of work the hypervisor
//! did for the guest in each interval, which RIP samples alone cannot (on
//! PVM every privileged instruction of the guest kernel is a trip through
//! the hypervisor that never reaches this process).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

/// Errors of reading KVM statistics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_STATS_FD failed (kernel before 5.14, or refused).
    #[error("KVM_GET_STATS_FD")]
    Open(#[source] std::io::Error),
    /// Reading the stats file failed.
    #[error("reading KVM statistics")]
    Read(#[source] std::io::Error),
    /// The stats file does not look like KVM's format.
    #[error("malformed KVM statistics: {0}")]
    Malformed(&'static str),
}

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

const HEADER_LEN: usize = 24;
const DESC_FIXED_LEN: usize = 16;
const TYPE_MASK: u32 = 0xf;
const TYPE_CUMULATIVE: u32 = 0;
const TYPE_INSTANT: u32 = 1;
const TYPE_PEAK: u32 = 2;

/// One scalar statistic: its name and where its value sits in the file.
#[derive(Debug, Clone)]
struct Desc {
    name: String,
    offset: u64,
}

/// The statistics file of one vCPU. Only scalar statistics (cumulative,
/// instant, peak) are read; histograms are skipped.
pub struct StatsFd {
    file: File,
    descs: Vec<Desc>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2)?.try_into().ok().map(u16::from_le_bytes)
}

impl StatsFd {
    /// Opens the statistics of `vcpu` and reads their descriptors.
    pub fn open(vcpu: &VcpuFd) -> Result<Self, Error> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new file
        // descriptor or -1; the vCPU fd is valid for the call.
        let fd = unsafe { ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(Error::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by the kernel and is owned by no one
        // else; the File closes it.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).map_err(Error::Read)?;
        let field = |i: usize| u32_at(&header, i * 4).ok_or(Error::Malformed("header"));
        let (name_size, num_desc, desc_offset, data_offset) =
            (field(1)?, field(2)?, field(4)?, field(5)?);
        if num_desc > 4096 || name_size > 4096 {
            return Err(Error::Malformed("absurd descriptor count or name size"));
        }
        let desc_len = DESC_FIXED_LEN + name_size as usize;
        let mut block = vec![0u8; desc_len * num_desc as usize];
        file.read_exact_at(&mut block, u64::from(desc_offset))
            .map_err(Error::Read)?;
        let mut descs = Vec::new();
        for d in block.chunks_exact(desc_len) {
            let flags = u32_at(d, 0).ok_or(Error::Malformed("descriptor"))?;
            let size = u16_at(d, 6).ok_or(Error::Malformed("descriptor"))?;
            let offset = u32_at(d, 8).ok_or(Error::Malformed("descriptor"))?;
            let kind = flags & TYPE_MASK;
            if size != 1 || !matches!(kind, TYPE_CUMULATIVE | TYPE_INSTANT | TYPE_PEAK) {
                continue;
            }
            let name = &d[DESC_FIXED_LEN..];
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            descs.push(Desc {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                offset: u64::from(data_offset) + u64::from(offset),
            });
        }
        Ok(Self { file, descs })
    }

    /// The names of the statistics, in the order [`StatsFd::read`] returns
    /// their values.
    pub fn names(&self) -> Vec<String> {
        self.descs.iter().map(|d| d.name.clone()).collect()
    }

    /// The current values.
    pub fn read(&self) -> Result<Vec<u64>, Error> {
        let mut out = Vec::with_capacity(self.descs.len());
        let mut b = [0u8; 8];
        for d in &self.descs {
            self.file
                .read_exact_at(&mut b, d.offset)
                .map_err(Error::Read)?;
            out.push(u64::from_le_bytes(b));
        }
        Ok(out)
    }
}

impl AsRawFd for StatsFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_ioctls::Kvm;

    #[test]
    fn a_new_vcpu_has_zero_exits_and_named_counters() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("no /dev/kvm: skipped");
            return;
        };
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let stats = StatsFd::open(&vcpu).expect("stats fd");
        let names = stats.names();
        let values = stats.read().expect("read");
        assert_eq!(names.len(), values.len());
        let exits = names
            .iter()
            .position(|n| n == "exits")
            .expect("an `exits` counter");
        assert_eq!(values[exits], 0, "a vCPU that never ran has no exits");
        assert!(names.iter().any(|n| n == "halt_exits"), "{names:?}");
        // Histograms are skipped, so no name appears twice.
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }
}
