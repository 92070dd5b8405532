//! One module per top-level command.

pub mod bench;
pub mod bench_boot;
pub mod bench_container;
pub mod bench_full;
pub mod bench_lifecycle;
pub mod bench_web;
pub mod boxes;
pub mod cp;
pub mod doctor;
pub mod image;
pub mod kernel;
pub mod nested;
pub mod run;
pub mod snapshot;
pub mod vmm;
pub mod volume;

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner on stderr for long work (hidden when stderr is not a terminal).
pub fn spinner(prefix: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_prefix(prefix.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

/// A progress bar on stderr with `template` (indicatif's syntax).
fn bar(prefix: &str, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_prefix(prefix.to_string());
    pb
}

/// A byte progress bar on stderr.
pub fn bytes_bar(prefix: &str) -> ProgressBar {
    bar(
        prefix,
        "{prefix} [{elapsed}] {bar:30} {bytes}/{total_bytes} {msg}",
    )
}

/// A progress bar counting steps (runs, items) on stderr.
pub fn count_bar(prefix: &str) -> ProgressBar {
    bar(prefix, "{prefix} [{elapsed}] {bar:30} {pos}/{len} {msg}")
}
