//! 200 boots in a row leave no thread, file descriptor or mapping behind.
//! Alone in its test binary, so no other test's threads or files disturb
//! the counts.

use std::time::Duration;

use twinbox_vmm::null_guest::{self, Program};
use twinbox_vmm::{vm, StopReason, VmConfig};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().count())
        .unwrap_or(0)
}

#[test]
fn two_hundred_boots_leave_nothing_behind() -> Result<(), Box<dyn std::error::Error>> {
    // glibc gives threads that contend for malloc arenas of their own,
    // made lazily (two mappings each) and kept for reuse: not a leak, but
    // they made the mapping count flaky on a loaded host (48 against 46).
    // One arena for every thread keeps the count about our own mappings.
    // SAFETY: mallopt only changes the allocator's tuning; it is called
    // before this test starts any thread of its own.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let dir = tempfile::tempdir()?;
    let kernel = dir.path().join("g");
    std::fs::write(&kernel, null_guest::elf(Program::Exit(9)))?;
    let mut c = VmConfig::new(&kernel);
    c.memory = 64 << 20;
    c.vcpus = 2;
    c.timeout = Some(Duration::from_secs(20));
    // One boot first: one-time setup (the kick signal handler) is not a leak.
    assert_eq!(
        vm::run(&c, Box::new(std::io::sink()))?.reason,
        StopReason::Exited(9)
    );
    let (fds, threads, mappings) = (count("/proc/self/fd"), count("/proc/self/task"), maps());
    for i in 0..200 {
        let o = vm::run(&c, Box::new(std::io::sink()))?;
        assert_eq!(o.reason, StopReason::Exited(9), "boot {i}");
    }
    assert_eq!(count("/proc/self/fd"), fds, "file descriptors leaked");
    assert_eq!(count("/proc/self/task"), threads, "threads leaked");
    assert_eq!(maps(), mappings, "mappings leaked");
    Ok(())
}
