//! twinbox's side of the benchmark: the subjects bench drives. Each knows
//! how to start one box of its kind; bench knows only commands and markers.

pub mod container;
pub mod floor;
pub mod lab;
pub mod vm;
