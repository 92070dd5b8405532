//! The two VMM ports (see twinbox-vmm's `devices::ports`): exit status on
//! 0x501, boot timer marks on 0x502. Userspace may touch them only after
//! `ioperm`, which PID 1 (root) grants itself.

use std::sync::atomic::{AtomicBool, Ordering};

/// Exit-status port.
pub const EXIT: u16 = 0x501;
/// Boot-timer port.
pub const BOOT_TIMER: u16 = 0x502;
/// Mark: init started.
pub const MARK_INIT: u8 = 1;
/// Mark: the workload is about to be executed.
pub const MARK_WORKLOAD: u8 = 2;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Asks the kernel for access to the two ports; false if refused (then the
/// ports are never touched).
pub fn enable() -> bool {
    // SAFETY: ioperm only changes this thread's I/O permission bitmap.
    let ok = unsafe { libc::ioperm(u64::from(EXIT), 2, 1) } == 0;
    ENABLED.store(ok, Ordering::Relaxed);
    ok
}

/// Gives the access up (before the workload runs).
pub fn disable() {
    if ENABLED.swap(false, Ordering::Relaxed) {
        // SAFETY: as in `enable`.
        unsafe { libc::ioperm(u64::from(EXIT), 2, 0) };
    }
}

/// Records boot timer mark `id`.
pub fn mark(id: u8) {
    if ENABLED.load(Ordering::Relaxed) {
        // SAFETY: ioperm granted access to this port; `out` touches no memory.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") BOOT_TIMER, in("al") id, options(nomem, nostack, preserves_flags))
        };
    }
}

/// Reports the exit status; the VMM stops the VM on this write.
pub fn exit(status: u32) {
    if ENABLED.load(Ordering::Relaxed) {
        // SAFETY: as in `mark`.
        unsafe {
            std::arch::asm!("out dx, eax", in("dx") EXIT, in("eax") status, options(nomem, nostack, preserves_flags))
        };
    }
}
