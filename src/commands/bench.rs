//! `twinbox bench floor`: the monitors side by side on the null guest.

use std::time::Duration;

use anyhow::{Context, Result};
use twinbox_bench::{report, run_interleaved, Plan, Subject};
use twinbox_vmm::hypervisor;
use twinbox_vmm::null_guest::{self, Program};

use crate::cli::BenchCommand;
use crate::subjects::floor::{Firecracker, QemuMicrovm, TwinboxVmm};

/// Runs a bench command.
pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Floor {
            runs,
            warmup,
            firecracker,
            json,
        } => {
            let dir = tempfile::tempdir()?;
            let kernel = dir.path().join("null-guest.elf");
            std::fs::write(&kernel, null_guest::elf(Program::Exit(0)))?;
            let ours = TwinboxVmm {
                exe: std::env::current_exe().context("finding the twinbox binary")?,
                kernel: kernel.clone(),
            };
            let qemu = QemuMicrovm::find(&kernel);
            let fc = Firecracker::new(firecracker, &kernel, dir.path())?;
            let subjects: [&dyn Subject; 3] = [&ours, &qemu, &fc];
            let plan = Plan {
                runs,
                warmup,
                timeout: Duration::from_secs(30),
            };
            let pb = super::count_bar("bench floor");
            let results = run_interleaved(&subjects, &plan, &pb);
            pb.finish_and_clear();
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
                "\nqemu-microvm uses -cpu {} here. Peak RSS is the monitor process's (wait4).",
                QemuMicrovm::cpu_model()
            );
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_vec_pretty(&results)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}
