//! Workload speed: the probe's micro-workloads (CPU hashing, a million
//! `getppid`, memory copies, file write+fsync+read) run inside each box,
//! timed by the probe itself, repeated, and compared with native.

use crate::scenarios::isolation::run_json;
use crate::stats::{summarize, Summary};
use crate::subject::Subject;

/// The tests the probe knows.
pub const TESTS: [&str; 4] = ["cpu", "syscall", "memory", "io"];

/// One subject's timings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpeedResult {
    /// Subject.
    pub name: String,
    /// Why it was not measured.
    pub unavailable: Option<String>,
    /// Per test: the summary of seconds.
    pub tests: Vec<(String, Option<Summary>)>,
}

/// The speed scenario's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Speed {
    /// Repetitions per test.
    pub reps: usize,
    /// The subject ratios are taken to (native).
    pub baseline: String,
    /// Per subject.
    pub subjects: Vec<SpeedResult>,
}

/// Runs every test `reps` times in each subject, interleaved by subject.
pub fn run(subjects: &[&dyn Subject], reps: usize, baseline: &str) -> Speed {
    let mut results: Vec<SpeedResult> = subjects
        .iter()
        .map(|s| SpeedResult {
            name: s.name(),
            unavailable: s.unavailable(),
            tests: vec![],
        })
        .collect();
    for test in TESTS {
        let mut samples: Vec<Vec<f64>> = vec![vec![]; subjects.len()];
        for _ in 0..reps {
            for (i, s) in subjects.iter().enumerate() {
                if results[i].unavailable.is_some() || crate::stop_requested() {
                    continue;
                }
                let Some(cmd) = s.probe(&["speed", test]) else {
                    results[i].unavailable = Some("cannot run the probe".into());
                    continue;
                };
                match run_json(cmd) {
                    Ok(v) => {
                        if let Some(sec) = v["seconds"].as_f64() {
                            samples[i].push(sec);
                        }
                    }
                    Err(e) => results[i].unavailable = Some(format!("{test}: {e}")),
                }
            }
        }
        for (i, v) in samples.into_iter().enumerate() {
            if results[i].unavailable.is_none() {
                results[i].tests.push((test.to_string(), summarize(&v)));
            }
        }
    }
    Speed {
        reps,
        baseline: baseline.into(),
        subjects: results,
    }
}
