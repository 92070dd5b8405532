//! A sampling profiler of the guest, done by the VMM: where each vCPU was
//! (its RIP) every few milliseconds, and KVM's counters of what the
//! hypervisor did for it in between.
//!
//! Why: on a software hypervisor (PVM) a Linux guest boots in tens of
//! seconds and the kernel's own tools (`initcall_debug`, printk times) only
//! say *which* phase is slow. Samples resolved against the kernel's
//! `System.map` say which function the time goes to, idle included (a vCPU
//! waiting in `HLT` shows up in the kernel's idle loop), without any help
//! from the guest.
//!
//! How: the VMM thread ticks every interval, marks each vCPU as due and
//! kicks its thread out of `KVM_RUN` with a signal; the vCPU thread reads
//! its registers (`KVM_GET_REGS`, already in its seccomp list) and records
//! the sample before it re-enters. A kick costs one exit per vCPU per tick.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most samples kept (a day at 100 Hz would be 8.6 M; the rest is dropped
/// and counted).
pub const MAX_SAMPLES: usize = 1 << 20;

/// Where one vCPU was at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Since the start of the VM run.
    pub at: Duration,
    /// Which vCPU.
    pub vcpu: u32,
    /// Its instruction pointer.
    pub rip: u64,
}

/// KVM's counters of one vCPU at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsPoint {
    /// Since the start of the VM run.
    pub at: Duration,
    /// Which vCPU.
    pub vcpu: u32,
    /// Values, in the order of [`Profile::stat_names`].
    pub values: Vec<u64>,
}

/// What a profiled run recorded.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Time between ticks.
    pub interval: Duration,
    /// RIP samples, in time order per vCPU.
    pub samples: Vec<Sample>,
    /// Samples dropped past [`MAX_SAMPLES`].
    pub dropped: u64,
    /// Names of KVM's counters (empty if the host has no binary stats).
    pub stat_names: Vec<String>,
    /// Counter readings, one per vCPU per tick.
    pub stats: Vec<StatsPoint>,
}

/// The state the VMM thread and the vCPU threads share while profiling.
pub(crate) struct Sampler {
    t0: Instant,
    due: Vec<AtomicBool>,
    samples: Mutex<(Vec<Sample>, u64)>,
}

impl Sampler {
    pub(crate) fn new(t0: Instant, vcpus: u32) -> Self {
        Self {
            t0,
            due: (0..vcpus).map(|_| AtomicBool::new(false)).collect(),
            samples: Mutex::new((Vec::new(), 0)),
        }
    }

    /// Marks every vCPU as due for a sample (the caller then kicks them).
    pub(crate) fn request(&self) {
        for d in &self.due {
            d.store(true, Ordering::Release);
        }
    }

    /// True once per request for vCPU `index`.
    pub(crate) fn take_due(&self, index: u32) -> bool {
        self.due
            .get(index as usize)
            .is_some_and(|d| d.swap(false, Ordering::AcqRel))
    }

    pub(crate) fn record(&self, vcpu: u32, rip: u64) {
        let at = self.t0.elapsed();
        if let Ok(mut s) = self.samples.lock() {
            if s.0.len() < MAX_SAMPLES {
                s.0.push(Sample { at, vcpu, rip });
            } else {
                s.1 += 1;
            }
        }
    }

    pub(crate) fn take(&self) -> (Vec<Sample>, u64) {
        self.samples
            .lock()
            .map(|mut s| (std::mem::take(&mut s.0), s.1))
            .unwrap_or_default()
    }
}

/// Kernel text symbols from a `System.map`, to name sampled addresses.
#[derive(Debug, Default)]
pub struct Symbols {
    /// (address, name), sorted by address.
    text: Vec<(u64, String)>,
    /// End of the kernel image (`_end`), if the map has it: init text lies
    /// past `_etext`, so that is not the bound.
    end: Option<u64>,
}

impl Symbols {
    /// Parses `System.map` text (`ffffffff81000000 T _stext` lines); lines
    /// that do not parse are skipped.
    pub fn from_system_map(text: &str) -> Self {
        let mut syms = Vec::new();
        let mut end = None;
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(a), Some(t), Some(name)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(a, 16) else {
                continue;
            };
            if name == "_end" {
                end = Some(addr);
            }
            if matches!(t, "T" | "t" | "W" | "w") {
                syms.push((addr, name.to_string()));
            }
        }
        syms.sort();
        Self { text: syms, end }
    }

    /// The name of the function holding `rip`: a symbol, `[user]` for a
    /// user-space address, `[?]` otherwise.
    pub fn name(&self, rip: u64) -> &str {
        if rip < 0x8000_0000_0000 {
            return "[user]";
        }
        if self.end.is_some_and(|e| rip >= e) {
            return "[?]";
        }
        match self.text.partition_point(|(a, _)| *a <= rip) {
            0 => "[?]",
            i => &self.text[i - 1].1,
        }
    }
}

/// KVM counters shown in the timeline, when the host has them.
const TIMELINE_COUNTERS: &[&str] = &[
    "exits",
    "halt_exits",
    "io_exits",
    "pf_taken",
    "pf_guest",
    "insn_emulation",
    "irq_injections",
    "tlb_flush",
];

fn share(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

fn top<'a>(counts: &BTreeMap<&'a str, usize>, n: usize) -> Vec<(&'a str, usize)> {
    let mut v: Vec<(&str, usize)> = counts.iter().map(|(k, c)| (*k, *c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.truncate(n);
    v
}

impl Profile {
    /// A text report: where the samples fell overall (top `n` functions),
    /// then a timeline in `bucket`-long slices with the top functions of
    /// each and the KVM counters' increase (summed over vCPUs).
    pub fn report(&self, symbols: &Symbols, n: usize, bucket: Duration) -> String {
        let mut out = String::new();
        let total = self.samples.len();
        let vcpus = self
            .samples
            .iter()
            .map(|s| s.vcpu)
            .max()
            .map_or(0, |m| m + 1);
        let _ = writeln!(
            out,
            "{total} samples every {} ms on {vcpus} vCPU(s){}",
            self.interval.as_millis(),
            match self.dropped {
                0 => String::new(),
                d => format!(" ({d} dropped past the limit)"),
            }
        );
        let mut all: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &self.samples {
            *all.entry(symbols.name(s.rip)).or_default() += 1;
        }
        let _ = writeln!(out, "\nwhere the vCPUs were (share of samples):");
        for (name, c) in top(&all, n) {
            let _ = writeln!(out, "  {:5.1}%  {c:7}  {name}", share(c, total));
        }

        let bucket_ms = bucket.as_millis().max(1);
        let slot = |at: Duration| (at.as_millis() / bucket_ms) as u64;
        let mut slices: BTreeMap<u64, BTreeMap<&str, usize>> = BTreeMap::new();
        for s in &self.samples {
            *slices
                .entry(slot(s.at))
                .or_default()
                .entry(symbols.name(s.rip))
                .or_default() += 1;
        }
        let shown: Vec<(usize, &str)> = TIMELINE_COUNTERS
            .iter()
            .filter_map(|c| self.stat_names.iter().position(|n| n == c).map(|i| (i, *c)))
            .collect();
        // Last reading of each vCPU in each slice; increases are taken
        // between consecutive slices.
        let mut last: BTreeMap<(u64, u32), &Vec<u64>> = BTreeMap::new();
        for p in &self.stats {
            last.insert((slot(p.at), p.vcpu), &p.values);
        }
        let mut sums: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut prev: BTreeMap<u32, &Vec<u64>> = BTreeMap::new();
        for ((sl, vcpu), values) in &last {
            let base = prev.get(vcpu);
            let row = sums.entry(*sl).or_insert_with(|| vec![0; shown.len()]);
            for (k, (i, _)) in shown.iter().enumerate() {
                let now = values.get(*i).copied().unwrap_or(0);
                let before = base.and_then(|b| b.get(*i)).copied().unwrap_or(0);
                row[k] += now.saturating_sub(before);
            }
            prev.insert(*vcpu, values);
        }
        let _ = writeln!(
            out,
            "\ntimeline ({} ms slices): top functions; KVM counters' increase ({})",
            bucket_ms,
            shown.iter().map(|(_, c)| *c).collect::<Vec<_>>().join(" ")
        );
        for (sl, counts) in &slices {
            let in_slice: usize = counts.values().sum();
            let tops: Vec<String> = top(counts, 3)
                .into_iter()
                .map(|(name, c)| format!("{name} {:.0}%", share(c, in_slice)))
                .collect();
            let counters = sums
                .get(sl)
                .map(|v| {
                    v.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let start = *sl as f64 * bucket_ms as f64 / 1000.0;
            let _ = writeln!(out, "  {start:7.1}s  {}  | {counters}", tops.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _stext
ffffffff81000000 T startup_64
ffffffff81001000 t native_safe_halt
ffffffff81002000 T memset
ffffffff81003000 D some_data
ffffffff81004000 T _etext
ffffffff81005000 T _sinittext
ffffffff81005000 T start_kernel
ffffffff81006000 B _end
not a line
";

    #[test]
    fn addresses_resolve_to_the_function_below_them() {
        let s = Symbols::from_system_map(MAP);
        assert_eq!(s.name(0xffff_ffff_8100_1004), "native_safe_halt");
        assert_eq!(s.name(0xffff_ffff_8100_2fff), "memset");
        assert_eq!(s.name(0x401000), "[user]");
        assert_eq!(s.name(0xffff_ffff_8000_0000), "[?]");
        assert_eq!(s.name(0xffff_ffff_8100_5004), "start_kernel", "init text");
        assert_eq!(s.name(0xffff_ffff_8100_6000), "[?]", "past _end");
    }

    #[test]
    fn the_report_counts_samples_and_counter_increases() {
        let s = Symbols::from_system_map(MAP);
        let at = Duration::from_millis;
        let sample = |ms, rip| Sample {
            at: at(ms),
            vcpu: 0,
            rip,
        };
        let p = Profile {
            interval: at(10),
            samples: vec![
                sample(5, 0xffff_ffff_8100_1001),
                sample(15, 0xffff_ffff_8100_1001),
                sample(25, 0xffff_ffff_8100_2001),
                sample(1500, 0x400000),
            ],
            dropped: 0,
            stat_names: vec!["exits".into(), "halt_exits".into()],
            stats: vec![
                StatsPoint {
                    at: at(900),
                    vcpu: 0,
                    values: vec![100, 3],
                },
                StatsPoint {
                    at: at(1900),
                    vcpu: 0,
                    values: vec![250, 3],
                },
            ],
        };
        let r = p.report(&s, 10, at(1000));
        assert!(r.starts_with("4 samples every 10 ms on 1 vCPU(s)"), "{r}");
        assert!(r.contains(" 50.0%        2  native_safe_halt"), "{r}");
        assert!(r.contains(" 25.0%        1  [user]"), "{r}");
        assert!(
            r.contains("0.0s  native_safe_halt 67%, memset 33%  | 100 3"),
            "{r}"
        );
        assert!(r.contains("1.0s  [user] 100%  | 150 0"), "{r}");
    }

    #[test]
    fn the_sampler_records_once_per_request_and_caps_its_memory() {
        let sampler = Sampler::new(Instant::now(), 2);
        assert!(!sampler.take_due(0));
        sampler.request();
        assert!(sampler.take_due(1));
        assert!(!sampler.take_due(1));
        assert!(sampler.take_due(0));
        assert!(!sampler.take_due(7), "an unknown vCPU is never due");
        sampler.record(0, 1);
        sampler.record(1, 2);
        let (samples, dropped) = sampler.take();
        assert_eq!(samples.len(), 2);
        assert_eq!(dropped, 0);
        assert!(sampler.take().0.is_empty());
    }
}
