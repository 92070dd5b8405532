//! The two kinds of box behind one trait: a backend takes a [`Workload`]
//! and runs it to an exit code.

pub mod container;
pub mod elf;
pub mod preload;
pub mod vm;

use crate::workload::Workload;

/// Runs workloads in one kind of box.
pub trait Backend {
    /// Runs `w`; returns the workload's exit code (128 + N for signal N).
    fn run(&self, w: &Workload) -> anyhow::Result<i32>;
}
