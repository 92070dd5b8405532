//! `twinbox run`: resolve and validate the workload, then hand it to a
//! backend. No backend runs workloads yet: the VM comes with the microVM
//! issue, the container with the container issue.

use anyhow::{bail, Result};
use twinbox_images::Store;

use crate::cli::RunArgs;
use crate::workload;

/// Runs `twinbox run`; returns the workload's exit code.
pub fn run(store: &Store, args: &RunArgs) -> Result<u8> {
    let w = workload::resolve(store, args)?;
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&w)?);
        return Ok(0);
    }
    bail!(
        "the {:?} backend is not implemented yet: `run` only resolves and validates the workload \
         for now (see --dry-run)",
        w.isolation
    )
}
