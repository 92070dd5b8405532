//! `VmConfig`: everything a VM is made from, and the checks that refuse a
//! configuration that cannot work before anything is created.

use std::path::PathBuf;
use std::time::Duration;

use crate::arch::layout;

/// Errors of a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Memory size out of range.
    #[error("memory size {size} bytes: {why}")]
    Memory {
        /// The size asked for.
        size: u64,
        /// Why it cannot work.
        why: String,
    },
    /// vCPU count out of range.
    #[error("{count} vCPUs: {why}")]
    Vcpus {
        /// The count asked for.
        count: u32,
        /// Why it cannot work.
        why: String,
    },
    /// Profiling interval out of range.
    #[error("profiling every {0:?}: want 1 ms to 10 s")]
    Profile(Duration),
    /// Command line too long or with a NUL byte.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// A vsock device that cannot work.
    #[error("vsock: {0}")]
    Vsock(String),
    /// A shared directory that cannot work.
    #[error("share {index}: {why}")]
    Share {
        /// Which share, from 0.
        index: usize,
        /// Why it cannot work.
        why: String,
    },
    /// More shared directories than virtio-mmio slots set aside for them.
    #[error("{0} shared directories: at most {MAX_SHARES}")]
    TooManyShares(usize),
}

/// Smallest guest memory: room for the boot structures, a kernel and a stack.
pub const MIN_MEMORY: u64 = 8 << 20;
/// Largest guest memory this VMM maps (guest-physical address space it sets up).
pub const MAX_MEMORY: u64 = 1 << 40;
/// Most vCPUs (the MP table's APIC ids are 8 bits; 255 is broadcast).
pub const MAX_VCPUS: u32 = 254;

/// Shortest profiling interval: each tick costs every vCPU an exit.
pub const PROFILE_MIN_INTERVAL: Duration = Duration::from_millis(1);
/// Longest profiling interval.
pub const PROFILE_MAX_INTERVAL: Duration = Duration::from_secs(10);

/// What a VM is made of.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Kernel: an ELF (vmlinux, or any 64-bit ELF) or a bzImage.
    pub kernel: PathBuf,
    /// Initial ramdisk, in parts placed back to back (each padded to 512
    /// bytes): the kernel unpacks concatenated cpio archives in order.
    pub initrd: Vec<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in bytes (rounded up to 4 KiB).
    pub memory: u64,
    /// Stop the VM after this long.
    pub timeout: Option<Duration>,
    /// Install the seccomp filters (on unless debugging the VMM itself).
    pub seccomp: bool,
    /// Give the guest a legacy i8254 PIT (in-kernel). Off by default: a
    /// Linux guest with kvm-clock and the LAPIC timer does not need it (as a
    /// KVM guest it also skips the IO-APIC timer check: `no_timer_check` is
    /// set in arch/x86/kernel/kvm.c), and
    /// KVM frees it with a full SRCU grace period (`kvm_pit_set_reinject`),
    /// which cost 15-24 ms per VM at exit on the PVM host where this was
    /// measured. QEMU's microvm machine has the same switch (`pit=off`).
    pub pit: bool,
    /// Where the interrupt controllers live; see [`Irqchip`].
    pub irqchip: Irqchip,
    /// A disk image the guest sees as `/dev/pmem0` ([`crate::pmem`]): its
    /// size a multiple of 2 MiB; mapped private, never written.
    pub pmem: Option<PathBuf>,
    /// Sample every vCPU's RIP and KVM's counters this often
    /// ([`crate::profile`]); off by default.
    pub profile: Option<Duration>,
    /// The run's data for the guest's mailbox ([`crate::mailbox`]): with
    /// it (and [`pmem`](Self::pmem)), the guest gets a mailbox region after
    /// its root disk, filled when its init marks *ready*.
    pub mailbox: Option<Vec<u8>>,
    /// Warm start: stop at init's ready mark and hand the machine back to
    /// be saved, or start from a saved one.
    pub snapshot: Snapshot,
    /// A virtio-vsock device whose host side is a Unix socket
    /// ([`crate::devices::vsock`]); none by default.
    pub vsock: Option<VsockConfig>,
    /// Host directories the guest mounts with `mount -t virtiofs TAG
    /// DIR`: one virtio-fs device each ([`crate::devices::virtiofs`]),
    /// whose file server (a vhost-user backend such as virtiofsd, see
    /// [`crate::virtiofsd`]) already listens on its socket. With any,
    /// guest RAM is a shared memfd, and the VM can neither be snapshotted
    /// nor restored ([`crate::vm::Error::SnapshotWithShares`]). At most
    /// [`MAX_SHARES`], tags unique.
    pub shares: Vec<ShareConfig>,
}

/// One shared directory: the tag the guest mounts it by and the
/// vhost-user socket of the file server that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// What the guest names it in `mount -t virtiofs TAG`: 1 to
    /// [`TAG_MAX`] bytes of UTF-8, no NUL.
    pub tag: String,
    /// The file server's listening vhost-user socket (1 to
    /// [`UDS_PATH_MAX`] bytes).
    pub socket: PathBuf,
}

/// Longest share tag: the `tag` field of virtio-fs's configuration
/// space (virtio 1.2, 5.11.4).
pub const TAG_MAX: usize = 36;

/// Most shared directories of one VM: each takes a virtio-mmio slot and
/// a GSI, and a thread and a file server on the host.
pub const MAX_SHARES: usize = 4;

/// The vsock device: the guest's CID and the VM's Unix socket.
///
/// While the VM runs, the VMM serves a Unix socket at `uds_path` (made
/// by it, mode 0600, removed when the VM ends; a stale socket there is
/// replaced, one another process serves or anything else is refused).
/// A host process connects to it, writes `CONNECT <port>\n`, reads
/// `OK <host port>\n` once the guest accepted the connection on vsock
/// port `<port>`, and then has the byte stream; the socket is closed if
/// the guest refuses (or is not up yet: retry). A guest connecting to the
/// host (CID 2) port `P` is connected to the Unix socket `<uds_path>_<P>`,
/// if one listens there (else refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID: 3 or more (0-2 are reserved), below
    /// 2^32 - 1 (Linux keeps CIDs in 32 bits; all ones is "any").
    pub guest_cid: u64,
    /// Where the VM's Unix socket goes.
    pub uds_path: PathBuf,
}

/// Longest socket path (`sockaddr_un` holds 108 bytes with the NUL);
/// guest-initiated connections add `_<port>` (up to 11 more) to it.
pub const UDS_PATH_MAX: usize = 107;

/// What a run does with snapshots ([`crate::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Snapshot {
    /// Boot, and run to the end.
    #[default]
    None,
    /// Boot, stop at the guest's ready mark (boot timer mark 3), and give
    /// the machine back in [`crate::vm::Outcome::captured`].
    Take,
    /// Start from the snapshot in `dir`, which must have been made for
    /// `key`, instead of booting.
    Restore {
        /// Its directory (`state` and `memory`).
        dir: PathBuf,
        /// What it must have been made from.
        key: String,
    },
}

/// Where the guest's interrupt controllers are emulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Irqchip {
    /// LAPICs in KVM, the I/O APIC in the VMM
    /// ([`crate::devices::ioapic`]), no PIC: a VM is destroyed in 0.2 ms
    /// instead of 15. The default; where the host lacks
    /// `KVM_CAP_SPLIT_IRQCHIP`, or with [`VmConfig::pit`] (KVM's PIT needs
    /// its PIC), the VM gets [`Irqchip::Full`] instead.
    #[default]
    Split,
    /// PIC, I/O APIC and LAPICs all in KVM (`KVM_CREATE_IRQCHIP`), as
    /// Firecracker does.
    Full,
}

impl std::str::FromStr for Irqchip {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "split" => Ok(Self::Split),
            "full" => Ok(Self::Full),
            other => Err(format!("irqchip {other:?}: split or full")),
        }
    }
}

impl VsockConfig {
    /// Checks the CID and the socket path.
    pub fn validate(&self) -> Result<(), Error> {
        if !(3..u64::from(u32::MAX)).contains(&self.guest_cid) {
            return Err(Error::Vsock(format!(
                "guest CID {}: want 3 to {}",
                self.guest_cid,
                u32::MAX - 1
            )));
        }
        let len = self.uds_path.as_os_str().len();
        if len == 0 || len > UDS_PATH_MAX {
            return Err(Error::Vsock(format!(
                "socket path {}: want 1 to {UDS_PATH_MAX} bytes",
                self.uds_path.display()
            )));
        }
        Ok(())
    }
}

impl ShareConfig {
    /// Checks the tag and the socket path.
    pub fn validate(&self, index: usize) -> Result<(), Error> {
        let err = |why: String| Error::Share { index, why };
        if self.tag.is_empty() || self.tag.len() > TAG_MAX {
            return Err(err(format!(
                "tag {:?}: want 1 to {TAG_MAX} bytes",
                self.tag
            )));
        }
        if self.tag.contains('\0') {
            return Err(err("the tag contains a NUL byte".into()));
        }
        let len = self.socket.as_os_str().len();
        if len == 0 || len > UDS_PATH_MAX {
            return Err(err(format!(
                "socket path {}: want 1 to {UDS_PATH_MAX} bytes",
                self.socket.display()
            )));
        }
        Ok(())
    }
}

impl VmConfig {
    /// A config with 1 vCPU and 128 MiB.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: Vec::new(),
            cmdline: String::new(),
            vcpus: 1,
            memory: 128 << 20,
            timeout: None,
            seccomp: true,
            pit: false,
            irqchip: Irqchip::Split,
            pmem: None,
            profile: None,
            mailbox: None,
            snapshot: Snapshot::None,
            vsock: None,
            shares: Vec::new(),
        }
    }

    /// Checks the config against the VMM's limits and, for memory, the host's.
    pub fn validate(&self, host_memory: Option<u64>, max_vcpus: u32) -> Result<(), Error> {
        let mem_err = |why: String| Error::Memory {
            size: self.memory,
            why,
        };
        if self.memory < MIN_MEMORY {
            return Err(mem_err(format!(
                "below the minimum of {} MiB",
                MIN_MEMORY >> 20
            )));
        }
        if self.memory > MAX_MEMORY {
            return Err(mem_err(format!(
                "above the maximum of {} GiB",
                MAX_MEMORY >> 30
            )));
        }
        if let Some(h) = host_memory.filter(|&h| self.memory > h) {
            return Err(mem_err(format!("more than the host's {} MiB", h >> 20)));
        }
        let limit = max_vcpus.min(MAX_VCPUS);
        if self.vcpus == 0 || self.vcpus > limit {
            return Err(Error::Vcpus {
                count: self.vcpus,
                why: format!("want 1 to {limit}"),
            });
        }
        if self.cmdline.len() >= layout::CMDLINE_MAX {
            return Err(Error::Cmdline(format!(
                "longer than {} bytes",
                layout::CMDLINE_MAX - 1
            )));
        }
        if self.cmdline.contains('\0') {
            return Err(Error::Cmdline("contains a NUL byte".into()));
        }
        if let Some(p) = self
            .profile
            .filter(|p| *p < PROFILE_MIN_INTERVAL || *p > PROFILE_MAX_INTERVAL)
        {
            return Err(Error::Profile(p));
        }
        if let Some(v) = &self.vsock {
            v.validate()?;
        }
        self.validate_shares()
    }

    /// Checks the shares: how many, each one, and that no two have one tag.
    pub fn validate_shares(&self) -> Result<(), Error> {
        if self.shares.len() > MAX_SHARES {
            return Err(Error::TooManyShares(self.shares.len()));
        }
        for (index, share) in self.shares.iter().enumerate() {
            share.validate(index)?;
            if self.shares[..index].iter().any(|s| s.tag == share.tag) {
                return Err(Error::Share {
                    index,
                    why: format!("tag {:?} is taken by an earlier share", share.tag),
                });
            }
        }
        Ok(())
    }

    /// Memory size rounded up to whole pages.
    pub fn memory_pages_bytes(&self) -> u64 {
        self.memory.div_ceil(4096) * 4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_cannot_work() {
        let mut c = VmConfig::new("k");
        assert!(c.validate(Some(1 << 30), 2).is_ok());
        c.memory = 1 << 20;
        assert!(matches!(c.validate(None, 2), Err(Error::Memory { .. })));
        c.memory = u64::MAX;
        assert!(matches!(c.validate(None, 2), Err(Error::Memory { .. })));
        c.memory = 2 << 30;
        assert!(matches!(
            c.validate(Some(1 << 30), 2),
            Err(Error::Memory { .. })
        ));
        c.memory = 64 << 20;
        c.vcpus = 0;
        assert!(matches!(c.validate(None, 2), Err(Error::Vcpus { .. })));
        c.vcpus = 3;
        assert!(matches!(c.validate(None, 2), Err(Error::Vcpus { .. })));
        c.vcpus = 1;
        c.cmdline = "x".repeat(5000);
        assert!(matches!(c.validate(None, 2), Err(Error::Cmdline(_))));
        c.cmdline.clear();
        c.profile = Some(Duration::ZERO);
        assert!(matches!(c.validate(None, 2), Err(Error::Profile(_))));
        c.profile = Some(Duration::from_secs(3600));
        assert!(matches!(c.validate(None, 2), Err(Error::Profile(_))));
        c.profile = Some(Duration::from_millis(10));
        assert!(c.validate(None, 2).is_ok());
        for (cid, path, ok) in [
            (3, "/tmp/v.sock", true),
            (2, "/tmp/v.sock", false),
            (u64::from(u32::MAX), "/tmp/v.sock", false),
            (3, "", false),
            (3, &*"x".repeat(108), false),
        ] {
            c.vsock = Some(VsockConfig {
                guest_cid: cid,
                uds_path: path.into(),
            });
            assert_eq!(c.validate(None, 2).is_ok(), ok, "{cid} {path}");
        }
    }

    #[test]
    fn shares_are_bounded_and_their_tags_checked() {
        let mut c = VmConfig::new("k");
        let share = |tag: &str| ShareConfig {
            tag: tag.into(),
            socket: "/tmp/fs.sock".into(),
        };
        for (tag, ok) in [
            ("data", true),
            (&*"t".repeat(TAG_MAX), true),
            (&*"t".repeat(TAG_MAX + 1), false),
            ("", false),
            ("a\0b", false),
            // 36 bytes of UTF-8, fewer characters.
            (&*"é".repeat(18), true),
            (&*"é".repeat(19), false),
        ] {
            c.shares = vec![share(tag)];
            assert_eq!(c.validate(None, 2).is_ok(), ok, "{tag:?}");
        }
        c.shares = vec![ShareConfig {
            tag: "x".into(),
            socket: "".into(),
        }];
        assert!(matches!(c.validate(None, 2), Err(Error::Share { .. })));
        c.shares[0].socket = "x".repeat(UDS_PATH_MAX + 1).into();
        assert!(matches!(c.validate(None, 2), Err(Error::Share { .. })));
        c.shares = vec![share("a"), share("b"), share("a")];
        assert!(matches!(
            c.validate(None, 2),
            Err(Error::Share { index: 2, .. })
        ));
        c.shares = (0..MAX_SHARES).map(|i| share(&i.to_string())).collect();
        assert!(c.validate(None, 2).is_ok());
        c.shares.push(share("one more"));
        assert!(matches!(c.validate(None, 2), Err(Error::TooManyShares(5))));
    }
}
