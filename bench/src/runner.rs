//! Runs subjects interleaved: round after round, each subject once per
//! round, the first rounds discarded as warm-up. Drift of the machine
//! (other load, frequency, caches) then hits every subject alike. The order
//! rotates from round to round, so no subject always runs right after the
//! same neighbour (a box's asynchronous teardown, such as a network
//! namespace's cleanup or an RCU grace period, would otherwise always land
//! on the same next subject), and an optional quiet gap separates runs.
//! After the timed rounds, optional traced rounds measure each subject's
//! peak RSS ([`crate::peak_rss`]); they are never timed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;

use crate::peak_rss;
use crate::sample::{self, Sample};
use crate::subject::Subject;

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks a running benchmark to stop after the run in flight (async-signal
/// safe: a signal handler may call it).
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// How many runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Measured rounds.
    pub runs: usize,
    /// Rounds run first and discarded.
    pub warmup: usize,
    /// A run taking longer is killed and counted as a failure.
    pub timeout: Duration,
    /// Idle time before each run, for the previous run's asynchronous
    /// teardown to finish.
    pub gap: Duration,
    /// Traced rounds after the timed ones, for peak RSS (0: none).
    pub rss_runs: usize,
}

/// What one subject gave.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SubjectResult {
    /// Its name.
    pub name: String,
    /// Why it did not run, if it did not.
    pub unavailable: Option<String>,
    /// Good runs.
    pub samples: Vec<Sample>,
    /// Runs that failed, and how.
    pub failures: Vec<String>,
    /// Peak RSS of each good traced run, KiB.
    pub peak_rss_kib: Vec<u64>,
}

/// Why a sample is not a good run, if it is not.
fn judge(s: &Sample, subject: &dyn Subject) -> Option<String> {
    if s.timed_out {
        return Some(format!("timed out after {:?}", s.to_exit));
    }
    if s.status != subject.expected_status() {
        return Some(format!(
            "exit status {} (expected {})",
            s.status,
            subject.expected_status()
        ));
    }
    if subject.marker().is_some() && s.to_marker.is_none() {
        return Some("marker never appeared".into());
    }
    None
}

/// Runs `plan` over `subjects`, ticking `progress` once per run.
pub fn run_interleaved(
    subjects: &[&dyn Subject],
    plan: &Plan,
    progress: &ProgressBar,
) -> Vec<SubjectResult> {
    let mut results: Vec<SubjectResult> = subjects
        .iter()
        .map(|s| SubjectResult {
            name: s.name(),
            unavailable: s.unavailable(),
            samples: Vec::new(),
            failures: Vec::new(),
            peak_rss_kib: Vec::new(),
        })
        .collect();
    let active = results.iter().filter(|r| r.unavailable.is_none()).count();
    progress.set_length(((plan.warmup + plan.runs + plan.rss_runs) * active) as u64);
    let timed = rounds(
        subjects,
        &mut results,
        plan.warmup + plan.runs,
        plan.gap,
        progress,
        |subject, result, round| {
            let marker = subject.marker();
            let outcome = sample::measure(subject.command(), marker.as_deref(), plan.timeout);
            if round < plan.warmup {
                return;
            }
            match outcome {
                Ok(s) => match judge(&s, subject) {
                    None => result.samples.push(s),
                    Some(why) => result.failures.push(why),
                },
                Err(e) => result.failures.push(e.to_string()),
            }
        },
    );
    if !timed {
        return results;
    }
    rounds(
        subjects,
        &mut results,
        plan.rss_runs,
        plan.gap,
        progress,
        |subject, result, _| match peak_rss::measure(subject.command(), plan.timeout) {
            Ok(p) if p.timed_out || p.status != subject.expected_status() => result
                .failures
                .push(format!("traced run: exit status {}", p.status)),
            Ok(p) => match p.kib {
                Some(kib) => result.peak_rss_kib.push(kib),
                None => result
                    .failures
                    .push("traced run: no exit stop, peak RSS unknown".into()),
            },
            Err(e) => result.failures.push(e.to_string()),
        },
    );
    results
}

/// `count` rounds over the available subjects, the order rotating each
/// round, `gap` before each run; false if a stop was requested.
fn rounds(
    subjects: &[&dyn Subject],
    results: &mut [SubjectResult],
    count: usize,
    gap: Duration,
    progress: &ProgressBar,
    mut run: impl FnMut(&dyn Subject, &mut SubjectResult, usize),
) -> bool {
    let n = subjects.len();
    for round in 0..count {
        for k in 0..n {
            let i = (round + k) % n;
            let (subject, result) = (subjects[i], &mut results[i]);
            if result.unavailable.is_some() {
                continue;
            }
            if stop_requested() {
                return false;
            }
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
            progress.set_message(format!("{} (round {})", result.name, round + 1));
            run(subject, result, round);
            progress.inc(1);
        }
    }
    true
}
