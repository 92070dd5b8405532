//! `twinbox kernel build|fetch-debian|show`.

use anyhow::{Context, Result};
use twinbox_images::kernel;

use crate::cli::KernelCommand;
use crate::size;

/// Runs a kernel command.
pub fn run(cmd: KernelCommand) -> Result<()> {
    let k = match cmd {
        KernelCommand::Build { jobs } => {
            let source = kernel::Source::find()?;
            if let Some(k) = kernel::cached(&source) {
                eprintln!("kernel {} is already built", k.info.key);
                k
            } else {
                let jobs = jobs.unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                });
                let pb = super::spinner("kernel");
                let r = kernel::build(&source, jobs, &pb);
                pb.finish_and_clear();
                r.context("building the guest kernel")?
            }
        }
        KernelCommand::FetchDebian => {
            let pb = super::spinner("debian kernel");
            let r = kernel::fetch_debian(&pb);
            pb.finish_and_clear();
            r.context("fetching Debian's kernel")?
        }
        KernelCommand::Show => {
            kernel::find().context("no guest kernel yet: run `twinbox kernel build`")?
        }
    };
    eprintln!(
        "{} ({}): bzImage {}, vmlinux {}, built in {:.0}s",
        k.dir.display(),
        k.info.source,
        size::human(k.info.bzimage_bytes),
        k.vmlinux()
            .map_or("none".to_string(), |_| size::human(k.info.vmlinux_bytes)),
        k.info.build_seconds
    );
    let mut v = serde_json::to_value(&k.info)?;
    v["bzimage"] = k.bzimage().display().to_string().into();
    v["vmlinux"] = k.vmlinux().map(|p| p.display().to_string()).into();
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
