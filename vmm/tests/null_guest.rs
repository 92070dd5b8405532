//! The VMM booting the null guest: exit status, marker, boot timer, vCPU
//! counts, memory sizes, bad kernels, a guest that never stops, a guest that
//! triple-faults, and many boots in a row leaving nothing behind.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use twinbox_vmm::config::Irqchip;
use twinbox_vmm::null_guest::{self, Program};
use twinbox_vmm::{vm, StopReason, VmConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }
}

fn guest(dir: &Path, name: &str, program: Program) -> std::io::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, null_guest::elf(program))?;
    Ok(p)
}

/// An error and its sources, as the CLI prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn config(kernel: PathBuf) -> VmConfig {
    let mut c = VmConfig::new(kernel);
    c.memory = 32 << 20;
    c.timeout = Some(Duration::from_secs(20));
    c
}

#[test]
fn exit_status_and_marker_come_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    for code in [0u32, 1, 42, 255] {
        let out = Captured::default();
        let o = vm::run(
            &config(guest(dir.path(), "g", Program::Exit(code))?),
            Box::new(out.clone()),
        )?;
        assert_eq!(
            o.reason,
            StopReason::Exited(code as i32),
            "console: {}",
            o.console_tail
        );
        assert_eq!(out.text(), null_guest::MARKER);
        assert_eq!(
            o.marks.first().map(|m| m.id),
            Some(1),
            "boot timer mark missing"
        );
    }
    Ok(())
}

#[test]
fn one_and_two_vcpus_boot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = guest(dir.path(), "g", Program::Exit(3))?;
    for vcpus in [1, 2] {
        // The split irqchip (the default) and KVM's whole one.
        for chip in [Irqchip::Split, Irqchip::Full] {
            let mut c = config(kernel.clone());
            c.vcpus = vcpus;
            c.irqchip = chip;
            let o = vm::run(&c, Box::new(std::io::sink()))?;
            assert_eq!(o.reason, StopReason::Exited(3), "{vcpus} vCPUs, {chip:?}");
        }
    }
    Ok(())
}

#[test]
fn the_guest_programs_the_io_apic_in_either_irqchip_and_garbage_is_contained() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = guest(dir.path(), "g", Program::Ioapic)?;
    for chip in [Irqchip::Split, Irqchip::Full] {
        for vcpus in [1, 2] {
            // Seccomp on: the route the write makes is installed by the
            // vCPU thread, under its filter.
            let mut c = config(kernel.clone());
            c.irqchip = chip;
            c.vcpus = vcpus;
            let o = vm::run(&c, Box::new(std::io::sink()))?;
            assert_eq!(
                o.reason,
                StopReason::Exited(0x31),
                "{chip:?}, {vcpus} vCPUs: {}",
                o.console_tail
            );
        }
    }
    Ok(())
}

#[test]
fn memory_sizes_below_and_above_the_mmio_gap() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = guest(dir.path(), "g", Program::Exit(0))?;
    for mib in [8u64, 33, 1024, 4096, 8192] {
        let mut c = config(kernel.clone());
        c.memory = mib << 20;
        let o = vm::run(&c, Box::new(std::io::sink()))?;
        assert_eq!(o.reason, StopReason::Exited(0), "{mib} MiB");
    }
    // Sizes that cannot work are refused before anything is built.
    for bytes in [1u64 << 20, u64::MAX, 1 << 50] {
        let mut c = config(kernel.clone());
        c.memory = bytes;
        let e = vm::run(&c, Box::new(std::io::sink()));
        assert!(matches!(e, Err(vm::Error::Config(_))), "{bytes}: {e:?}");
    }
    Ok(())
}

#[test]
fn garbage_truncated_and_misplaced_kernels_are_clear_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage");
    std::fs::write(
        &garbage,
        (0..100_000u32)
            .map(|i| (i * 31 % 253) as u8)
            .collect::<Vec<_>>(),
    )?;
    let e = vm::run(&config(garbage), Box::new(std::io::sink()));
    let msg = e.err().map(|e| chain(&e)).unwrap_or_default();
    assert!(msg.contains("is not a kernel"), "{msg}");

    let elf = null_guest::elf(Program::Exit(0));
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &elf[..100])?;
    let e = vm::run(&config(truncated), Box::new(std::io::sink()));
    assert!(matches!(e, Err(vm::Error::Load(_))), "{e:?}");

    // A segment placed beyond guest memory.
    let mut far = elf.clone();
    far[64 + 24..64 + 32].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let far_path = dir.path().join("far");
    std::fs::write(&far_path, &far)?;
    let e = vm::run(&config(far_path), Box::new(std::io::sink()));
    assert!(matches!(e, Err(vm::Error::Load(_))), "{e:?}");

    let e = vm::run(
        &config(dir.path().join("missing")),
        Box::new(std::io::sink()),
    );
    assert!(matches!(e, Err(vm::Error::Load(_))), "{e:?}");

    // A fake bzImage: the magic, and nothing behind it.
    let mut bz = vec![0u8; 0x1000];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let bz_path = dir.path().join("bz");
    std::fs::write(&bz_path, &bz)?;
    let e = vm::run(&config(bz_path), Box::new(std::io::sink()));
    assert!(matches!(e, Err(vm::Error::Load(_))), "{e:?}");
    Ok(())
}

#[test]
fn a_guest_that_never_stops_is_killed_at_the_timeout() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut c = config(guest(dir.path(), "spin", Program::Spin)?);
    c.vcpus = 2;
    // Long enough for the guest to print its marker first, even nested
    // under QEMU's software CPU with other VMs running (300 ms was not).
    let timeout = Duration::from_millis(1500);
    c.timeout = Some(timeout);
    let start = std::time::Instant::now();
    let o = vm::run(&c, Box::new(std::io::sink()))?;
    assert_eq!(o.reason, StopReason::TimedOut(timeout));
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    // It ran: its marker, or the start of it where the host is so slow
    // (nested, emulated, loaded) that the timeout came mid-line.
    assert!(
        !o.console_tail.is_empty() && null_guest::MARKER.starts_with(&o.console_tail),
        "{:?}",
        o.console_tail
    );
    Ok(())
}

#[test]
fn a_triple_fault_is_reported_with_the_last_console_output() -> TestResult {
    let dir = tempfile::tempdir()?;
    let o = vm::run(
        &config(guest(dir.path(), "tf", Program::TripleFault)?),
        Box::new(std::io::sink()),
    )?;
    assert_eq!(o.reason, StopReason::TripleFault { vcpu: 0 });
    assert_eq!(o.console_tail, null_guest::MARKER);
    Ok(())
}

#[test]
fn bad_vcpu_counts_and_command_lines_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let kernel = guest(dir.path(), "g", Program::Exit(0))?;
    for n in [0, 100_000] {
        let mut c = config(kernel.clone());
        c.vcpus = n;
        assert!(matches!(
            vm::run(&c, Box::new(std::io::sink())),
            Err(vm::Error::Config(_))
        ));
    }
    let mut c = config(kernel);
    c.cmdline = "console=ttyS0\nevil".into();
    let e = vm::run(&c, Box::new(std::io::sink()));
    assert!(matches!(e, Err(vm::Error::Load(_))), "{e:?}");
    Ok(())
}

#[test]
fn the_profiler_samples_every_vcpu_where_it_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut c = config(guest(dir.path(), "spin", Program::Spin)?);
    c.vcpus = 2;
    // Long enough for both vCPUs to be sampled even nested under QEMU's
    // software CPU with other VMs running (400 ms left one unsampled there).
    let timeout = Duration::from_millis(1500);
    c.timeout = Some(timeout);
    c.profile = Some(Duration::from_millis(5));
    let o = vm::run(&c, Box::new(std::io::sink()))?;
    assert_eq!(o.reason, StopReason::TimedOut(timeout));
    let p = o.profile.ok_or("no profile from a profiled run")?;
    for vcpu in 0..2 {
        let mine: Vec<_> = p.samples.iter().filter(|s| s.vcpu == vcpu).collect();
        // 1.5 s at 5 ms is 300 ticks; a few are enough to show the vCPU
        // is sampled, and leave room for a slow host (nested under QEMU's
        // TCG and loaded, one got 9).
        assert!(mine.len() >= 3, "vCPU {vcpu}: {} samples", mine.len());
        for s in mine {
            assert!(
                (null_guest::LOAD_ADDR..null_guest::LOAD_ADDR + 4096).contains(&s.rip),
                "vCPU {vcpu} sampled at {:#x}, outside the guest's code",
                s.rip
            );
        }
    }
    // KVM's counters, where the host has binary stats (Linux 5.14+): every
    // kick that lands in KVM_RUN is a signal exit, and counters only grow.
    if let Some(exits) = p.stat_names.iter().position(|n| n == "signal_exits") {
        let of = |vcpu| -> Vec<u64> {
            p.stats
                .iter()
                .filter(|s| s.vcpu == vcpu)
                .map(|s| s.values[exits])
                .collect()
        };
        for vcpu in 0..2 {
            let seen = of(vcpu);
            assert!(seen.len() >= 3, "vCPU {vcpu}: {} readings", seen.len());
            assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
            assert!(seen.last() > Some(&0), "{seen:?}");
        }
    }

    c.profile = None;
    let o = vm::run(&c, Box::new(std::io::sink()))?;
    assert!(o.profile.is_none());
    Ok(())
}
