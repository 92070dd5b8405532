//! Runs subjects interleaved: round after round, each subject once per
//! round, the first rounds discarded as warm-up. Drift of the machine
//! (other load, frequency, caches) then hits every subject alike. The order
//! rotates from round to round, so no subject always runs right after the
//! same neighbour (a box's asynchronous teardown, such as a network
//! namespace's cleanup or an RCU grace period, would otherwise always land
//! on the same next subject), and an optional quiet gap separates runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;

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
        })
        .collect();
    let active = results.iter().filter(|r| r.unavailable.is_none()).count();
    progress.set_length(((plan.warmup + plan.runs) * active) as u64);
    let n = subjects.len();
    for round in 0..plan.warmup + plan.runs {
        for k in 0..n {
            let i = (round + k) % n;
            let (subject, result) = (subjects[i], &mut results[i]);
            if result.unavailable.is_some() {
                continue;
            }
            if stop_requested() {
                return results;
            }
            if !plan.gap.is_zero() {
                std::thread::sleep(plan.gap);
            }
            progress.set_message(format!("{} (round {})", result.name, round + 1));
            let marker = subject.marker();
            let outcome = sample::measure(subject.command(), marker.as_deref(), plan.timeout);
            progress.inc(1);
            if round < plan.warmup {
                continue;
            }
            match outcome {
                Ok(s) => match judge(&s, subject) {
                    None => result.samples.push(s),
                    Some(why) => result.failures.push(why),
                },
                Err(e) => result.failures.push(e.to_string()),
            }
        }
    }
    results
}
