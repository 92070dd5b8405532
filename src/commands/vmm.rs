//! `twinbox vmm boot|null-guest`: the VMM on its own, for trying kernels
//! and for measuring the monitor against others with the null guest.

use std::time::Duration;

use std::path::PathBuf;

use anyhow::{Context, Result};
use twinbox_vmm::null_guest::{self, Program};
use twinbox_vmm::seccomp::Thread;
use twinbox_vmm::{vm, StopReason, VmConfig};

use crate::cli::VmmCommand;
use crate::size;

/// Runs a vmm command; returns the exit code.
pub fn run(cmd: VmmCommand) -> Result<u8> {
    match cmd {
        VmmCommand::NullGuest {
            out,
            exit,
            spin,
            idle,
        } => {
            let program = match (spin, idle) {
                (true, _) => Program::Spin,
                (_, true) => Program::Idle,
                _ => Program::Exit(exit),
            };
            std::fs::write(&out, null_guest::elf(program))
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(0)
        }
        VmmCommand::Seccomp => {
            for t in [Thread::Vcpu, Thread::Vmm] {
                let list = t.allowed();
                let names: Vec<String> = list
                    .iter()
                    .map(|a| {
                        if a.arg1.is_empty() {
                            a.name.to_string()
                        } else {
                            format!("{}({} values)", a.name, a.arg1.len())
                        }
                    })
                    .collect();
                println!(
                    "{:?}: {} syscalls, {} BPF instructions: {}",
                    t,
                    list.len(),
                    t.program().len(),
                    names.join(" ")
                );
            }
            Ok(0)
        }
        VmmCommand::Boot {
            kernel,
            initrd,
            pmem,
            cmdline,
            memory,
            cpus,
            timeout,
            json,
            no_seccomp,
            pit,
            irqchip,
        } => {
            // The null guest lives in a memfd, named by its /proc/self/fd
            // path: no file to leave behind, even if the run is killed.
            let _memfd;
            let kernel_path = if kernel == "null" {
                let fd = nix::sys::memfd::memfd_create(
                    c"twinbox-null-guest",
                    nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
                )
                .context("memfd_create for the null guest")?;
                let mut f = std::fs::File::from(fd);
                std::io::Write::write_all(&mut f, &null_guest::elf(Program::Exit(0)))?;
                let p = PathBuf::from(format!(
                    "/proc/self/fd/{}",
                    std::os::fd::AsRawFd::as_raw_fd(&f)
                ));
                _memfd = f;
                p
            } else {
                kernel.into()
            };
            let mut c = VmConfig::new(kernel_path);
            c.initrd = initrd;
            c.pmem = pmem;
            c.cmdline = cmdline;
            c.memory = size::parse(&memory).context("--memory")?;
            c.vcpus = cpus;
            c.seccomp = !no_seccomp;
            c.pit = pit;
            c.irqchip = irqchip;
            c.timeout = timeout
                .map(|t| humantime::parse_duration(&t))
                .transpose()
                .context("--timeout")?;
            let o = vm::run(&c, Box::new(std::io::stdout()))?;
            report(&o, json);
            match o.reason {
                StopReason::Exited(code) => Ok((code & 0xff) as u8),
                other => anyhow::bail!("the VM stopped without an exit status: {other:?}"),
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(o: &vm::Outcome, json: bool) {
    let t = &o.timings;
    if json {
        let v = serde_json::json!({
            "reason": format!("{:?}", o.reason),
            "marks_ms": o.marks.iter().map(|m| (m.id, ms(m.at))).collect::<Vec<_>>(),
            "timings_ms": {
                "vm_created": ms(t.vm_created),
                "memory_ready": ms(t.memory_ready),
                "guest_loaded": ms(t.guest_loaded),
                "vcpus_started": ms(t.vcpus_started),
                "stopped": ms(t.stopped),
                "torn_down": ms(t.torn_down),
            },
        });
        eprintln!("{v}");
    } else {
        eprintln!(
            "vmm: {:?} | VM {:.2} ms, memory {:.2}, loaded {:.2}, vCPUs started {:.2}, stopped {:.2}, torn down {:.2} ms | marks {}",
            o.reason,
            ms(t.vm_created),
            ms(t.memory_ready),
            ms(t.guest_loaded),
            ms(t.vcpus_started),
            ms(t.stopped),
            ms(t.torn_down),
            o.marks.iter().map(|m| format!("{}@{:.2}ms", m.id, ms(m.at))).collect::<Vec<_>>().join(" ")
        );
    }
}
