// Assembles the profile in profile.rs into classic BPF for seccomp, as a
// list of (code, jt, jf, k). `include!`d by build.rs (which writes the
// program out as Rust source) and by the tests in `seccomp/mod.rs`.

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
const RET_K: u16 = 0x06;

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// Offsets in struct seccomp_data.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LO: u32 = 16;
const OFF_ARG1_LO: u32 = 24;

/// The profile as BPF instructions.
pub fn assemble(denied: &[(i64, i32)], clone_nr: i64, ns_flags: u32, ioctl_nr: i64, tiocsti: u32) -> Vec<(u16, u8, u8, u32)> {
    let mut p = vec![
        (LD_W_ABS, 0, 0, OFF_ARCH),
        (JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (RET_K, 0, 0, RET_KILL_PROCESS),
        (LD_W_ABS, 0, 0, OFF_NR),
        (JGE_K, 0, 1, X32_SYSCALL_BIT),
        (RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
    ];
    for &(nr, errno) in denied {
        p.push((JEQ_K, 0, 1, nr as u32));
        p.push((RET_K, 0, 0, RET_ERRNO | errno as u32));
    }
    // clone: refuse namespace flags in the low word of its first argument.
    p.push((JEQ_K, 0, 4, clone_nr as u32));
    p.push((LD_W_ABS, 0, 0, OFF_ARG0_LO));
    p.push((JSET_K, 0, 1, ns_flags));
    p.push((RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
    p.push((RET_K, 0, 0, RET_ALLOW));
    // ioctl: refuse TIOCSTI.
    p.push((JEQ_K, 0, 4, ioctl_nr as u32));
    p.push((LD_W_ABS, 0, 0, OFF_ARG1_LO));
    p.push((JEQ_K, 0, 1, tiocsti));
    p.push((RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
    p.push((RET_K, 0, 0, RET_ALLOW));
    p.push((RET_K, 0, 0, RET_ALLOW));
    p
}
