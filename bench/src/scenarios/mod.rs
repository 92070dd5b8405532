//! The benchmark's scenarios, each driving subjects through the
//! [`Subject`](crate::Subject) trait only: [`startup`] (time to exit, to
//! marker), [`memory`] (an idle box's host memory, and density),
//! [`isolation`] (the probe's report from inside each box, turned into a
//! matrix, plus containment under limits and the host syscalls a run
//! makes), [`speed`] (micro-workloads relative to native).

pub mod isolation;
pub mod memory;
pub mod speed;
pub mod startup;
