//! Startup: cold start-to-exit (and to the marker, where the subject has
//! one), subjects interleaved; see [`crate::runner`].

use indicatif::ProgressBar;

use crate::runner::{run_interleaved, Plan, SubjectResult};
use crate::subject::Subject;

/// The startup scenario's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Startup {
    /// How it was run.
    pub runs: usize,
    /// Warm-up rounds discarded.
    pub warmup: usize,
    /// Idle time before each run, ms.
    pub gap_ms: u64,
    /// The subject ratios are taken to.
    pub baseline: String,
    /// One result per subject.
    pub subjects: Vec<SubjectResult>,
}

/// Runs the subjects interleaved and picks the baseline: the first of
/// `preferred` that has good runs.
pub fn run(
    subjects: &[&dyn Subject],
    plan: &Plan,
    preferred: &[&str],
    progress: &ProgressBar,
) -> Startup {
    let results = run_interleaved(subjects, plan, progress);
    let baseline = preferred
        .iter()
        .find(|p| {
            results
                .iter()
                .any(|r| r.name == **p && !r.samples.is_empty())
        })
        .map_or_else(
            || results.first().map_or(String::new(), |r| r.name.clone()),
            |s| s.to_string(),
        );
    Startup {
        runs: plan.runs,
        warmup: plan.warmup,
        gap_ms: plan.gap.as_millis() as u64,
        baseline,
        subjects: results,
    }
}
