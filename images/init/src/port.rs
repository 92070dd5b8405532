//! The two VMM ports (see twinbox-vmm's `devices::ports`): exit status on
//! 0x501, boot timer marks on 0x502, one byte each.
//!
//! Two ways to reach them, chosen once by [`enable`]:
//! - `/dev/port` (our guest kernel has it): a one-byte `pwrite` at the
//!   port's offset makes the kernel do the OUT. This works on every
//!   hypervisor, including PVM's native mode, where a user program's own
//!   OUT never reaches the VMM.
//! - otherwise `ioperm` on the two ports and an OUT from init itself.
//!
//! The `/dev/port` descriptor is close-on-exec, and the `ioperm` grant is
//! given up before the workload runs ([`disable`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Exit-status port.
pub const EXIT: u16 = 0x501;
/// Boot-timer port.
pub const BOOT_TIMER: u16 = 0x502;
/// Mark: init started.
pub const MARK_INIT: u8 = 1;
/// Mark: the workload is about to be executed.
pub const MARK_WORKLOAD: u8 = 2;
/// Mark: init is ready for a workload: the VMM may snapshot the guest
/// here; nothing of a run is in the guest before this point. (With a
/// mailbox, the VMM fills it on this mark; init reads it right after.)
pub const MARK_READY: u8 = 3;

/// How the ports are reached.
const OFF: i32 = -1;
const IOPERM: i32 = -2;
static MODE: AtomicI32 = AtomicI32::new(OFF);
static mut DEV_PORT: Option<OwnedFd> = None;

/// Opens `/dev/port`, or asks the kernel for the two ports with `ioperm`;
/// false if neither works (then the ports are never touched).
pub fn enable() -> bool {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/port") {
        let fd = OwnedFd::from(f);
        MODE.store(fd.as_raw_fd(), Ordering::Relaxed);
        // SAFETY: init is single-threaded when it calls enable(); the
        // descriptor is kept for the life of the process.
        unsafe { DEV_PORT = Some(fd) };
        return true;
    }
    // SAFETY: ioperm only changes this thread's I/O permission bitmap.
    let ok = unsafe { libc::ioperm(u64::from(EXIT), 2, 1) } == 0;
    MODE.store(if ok { IOPERM } else { OFF }, Ordering::Relaxed);
    ok
}

/// Gives the `ioperm` grant up (before the workload runs); `/dev/port` is
/// close-on-exec and stays open for the exit report.
pub fn disable() {
    if MODE.load(Ordering::Relaxed) == IOPERM {
        // SAFETY: as in `enable`.
        unsafe { libc::ioperm(u64::from(EXIT), 2, 0) };
    }
}

fn write(port: u16, value: u8) {
    match MODE.load(Ordering::Relaxed) {
        OFF => {}
        IOPERM => {
            // SAFETY: ioperm granted access to this port; OUT touches no memory.
            unsafe {
                std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
            };
        }
        fd => {
            // SAFETY: a one-byte write from a local to our open descriptor.
            unsafe { libc::pwrite(fd, (&value as *const u8).cast(), 1, libc::off_t::from(port)) };
        }
    }
}

/// Records boot timer mark `id`.
pub fn mark(id: u8) {
    write(BOOT_TIMER, id);
}

/// Reports the exit status (0-255); the VMM stops the VM on this write.
pub fn exit(status: u32) {
    write(EXIT, (status & 0xff) as u8);
}
