//! twinbox-bench: the measurement framework.
//!
//! It drives *subjects* (twinbox's VM and container backends, native
//! execution, and the anchors found on the machine: crun, runc, runsc, QEMU
//! microvm, Firecracker) through one trait, runs them interleaved (A B C A B
//! C ...) so that machine drift cancels, and owns the statistics and the
//! reports. It knows nothing of how a box is made: a subject is a command to
//! spawn and a marker to wait for.
//!
//! Modules: [`subject`] (the trait), [`sample`] (one timed run of a
//! process), [`peak_rss`] (one traced run, for its peak RSS), [`runner`] (interleaved runs with warm-up), [`scenarios`]
//! (startup, memory, isolation, speed), [`pss`], [`stats`], [`results`]
//! (everything a run found, as one serializable value), [`report`]
//! (Markdown tables), [`html`] and [`svg`] (the self-contained page).

pub mod html;
pub mod peak_rss;
pub mod pss;
pub mod report;
pub mod results;
pub mod runner;
pub mod sample;
pub mod scenarios;
pub mod stats;
pub mod subject;
pub mod svg;
pub mod watchdog;

pub use runner::{request_stop, run_interleaved, stop_requested, Plan, SubjectResult};
pub use subject::{Idle, Ready, Subject};
