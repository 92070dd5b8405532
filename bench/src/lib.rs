//! twinbox-bench: the measurement framework.
//!
//! It drives *subjects* (twinbox's VM and container backends, native
//! execution, and the anchors found on the machine: crun, runc, runsc, QEMU
//! microvm, Firecracker) through one trait, runs scenarios (startup, memory,
//! isolation, workload speed) with subjects interleaved so machine drift
//! cancels, and owns the statistics and the reports (JSON, Markdown, HTML
//! with SVG charts). It knows nothing of how a box is made.
//!
//! Empty for now: it is built in the benchmark issue.
