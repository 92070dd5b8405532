//! Micro-workloads for the speed scenario, each timed inside the box with
//! CLOCK_MONOTONIC (the VM's own clock in a VM), printed as
//! `{"test": ..., "seconds": ..., "work": ...}`.
//!
//! - `cpu`: a 64-bit FNV-1a hash over 64 MiB, 4 times (pure user-space CPU);
//! - `syscall`: one million `getppid` (the cost of entering the kernel);
//! - `memory`: copying a 64 MiB buffer 8 times (memory bandwidth);
//! - `io`: writing 32 MiB to a file in /tmp with fsync, then reading it back.

use std::io::{Read, Write};
use std::time::Instant;

use serde_json::{json, Value};

const MIB: usize = 1 << 20;

fn cpu() -> (f64, String) {
    let buf: Vec<u8> = (0..64 * MIB).map(|i| (i * 31 + 7) as u8).collect();
    let t = Instant::now();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..4 {
        for &b in &buf {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let s = t.elapsed().as_secs_f64();
    (s, format!("fnv1a 256 MiB -> {h:016x}"))
}

fn syscall() -> (f64, String) {
    let t = Instant::now();
    let mut acc: i64 = 0;
    for _ in 0..1_000_000 {
        // SAFETY: getppid takes no arguments; the raw syscall avoids any
        // libc caching.
        acc = acc.wrapping_add(unsafe { libc::syscall(libc::SYS_getppid) });
    }
    (
        t.elapsed().as_secs_f64(),
        format!("1e6 getppid (sum {acc})"),
    )
}

fn memory() -> (f64, String) {
    let src = vec![0x5au8; 64 * MIB];
    let mut dst = vec![0u8; 64 * MIB];
    let t = Instant::now();
    for i in 0..8 {
        dst.copy_from_slice(std::hint::black_box(&src));
        dst[i] ^= 1;
        std::hint::black_box(&mut dst);
    }
    let s = t.elapsed().as_secs_f64();
    (
        s,
        format!("8 x 64 MiB copy ({} GiB/s)", fmt_rate(512.0 / 1024.0, s)),
    )
}

fn fmt_rate(gib: f64, s: f64) -> String {
    if s > 0.0 {
        format!("{:.2}", gib / s)
    } else {
        "-".into()
    }
}

fn io() -> std::io::Result<(f64, String)> {
    let path = format!("/tmp/.twinbox-probe-io-{}", std::process::id());
    let chunk = vec![0xa5u8; MIB];
    let t = Instant::now();
    {
        let mut f = std::fs::File::create(&path)?;
        for _ in 0..32 {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    let mut back = Vec::with_capacity(32 * MIB);
    std::fs::File::open(&path)?.read_to_end(&mut back)?;
    let s = t.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    if back.len() != 32 * MIB {
        return Err(std::io::Error::other("short read"));
    }
    Ok((s, "32 MiB write + fsync + read".into()))
}

/// Runs the named test.
pub fn run(name: &str) -> Result<Value, String> {
    let (seconds, work) = match name {
        "cpu" => cpu(),
        "syscall" => syscall(),
        "memory" => memory(),
        "io" => io().map_err(|e| format!("io: {e}"))?,
        other => {
            return Err(format!(
                "unknown speed test {other:?}: cpu, syscall, memory, io"
            ))
        }
    };
    Ok(json!({"test": name, "seconds": seconds, "work": work}))
}
