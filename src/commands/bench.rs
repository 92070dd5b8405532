//! `twinbox bench`: the full run (`bench_full`), or a focused one: `floor`
//! (the monitors side by side on the null guest, here) or `container`
//! (`bench_container`).

use std::time::Duration;

use anyhow::{Context, Result};
use twinbox_bench::{report, run_interleaved, Plan, Subject};
use twinbox_vmm::hypervisor;
use twinbox_vmm::null_guest::{self, Program};

use crate::cli::{BenchArgs, BenchCommand};
use crate::subjects::floor::{Firecracker, QemuMicrovm, TwinboxVmm};

extern "C" fn on_stop_signal(_: libc::c_int) {
    twinbox_bench::request_stop();
}

/// Makes SIGINT and SIGTERM stop a benchmark after the run in flight, so
/// its temporary files and the runtimes' state are removed on the way out.
pub fn stop_on_signals() -> Result<()> {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_stop_signal),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for sig in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { nix::sys::signal::sigaction(sig, &action) }?;
    }
    Ok(())
}

/// Fails if a stop signal came during the benchmark.
pub fn check_stopped() -> Result<()> {
    anyhow::ensure!(
        !twinbox_bench::stop_requested(),
        "interrupted: stopped after the run in flight and cleaned up"
    );
    Ok(())
}

/// Runs a bench command.
pub fn run(args: BenchArgs) -> Result<()> {
    stop_on_signals()?;
    let Some(cmd) = args.cmd else {
        return super::bench_full::run(&args);
    };
    match cmd {
        BenchCommand::Floor {
            runs,
            warmup,
            rss_runs,
            firecracker,
            json,
        } => {
            let dir = tempfile::tempdir()?;
            let kernel = dir.path().join("null-guest.elf");
            std::fs::write(&kernel, null_guest::elf(Program::Exit(0)))?;
            let ours = TwinboxVmm {
                exe: std::env::current_exe().context("finding the twinbox binary")?,
                kernel: kernel.clone(),
                spin: None,
            };
            let qemu = QemuMicrovm::find(&kernel);
            let fc = Firecracker::new(firecracker, &kernel, None, dir.path())?;
            let subjects: [&dyn Subject; 3] = [&ours, &qemu, &fc];
            let plan = Plan {
                runs,
                warmup,
                timeout: Duration::from_secs(30),
                gap: Duration::ZERO,
                rss_runs,
            };
            let pb = super::count_bar("bench floor");
            let results = run_interleaved(&subjects, &plan, &pb);
            pb.finish_and_clear();
            check_stopped()?;
            println!(
                "Monitor floor: null guest, 1 vCPU, 128 MiB; {runs} runs each after {warmup} warm-up, interleaved. Host: {} ({} CPUs).\n",
                hypervisor::detect_kind(),
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
            );
            let baseline = if results
                .iter()
                .any(|r| r.name == "firecracker" && !r.samples.is_empty())
            {
                "firecracker"
            } else {
                "qemu-microvm"
            };
            print!("{}", report::startup_table(&results, baseline));
            println!(
                "\nqemu-microvm uses -cpu {} here.",
                QemuMicrovm::cpu_model()
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        BenchCommand::Container(args) => super::bench_container::run(args),
        BenchCommand::Boot(args) => super::bench_boot::run(args),
        BenchCommand::Lifecycle(args) => super::bench_lifecycle::run(args),
        BenchCommand::Web(args) => super::bench_web::run(args),
    }
}
