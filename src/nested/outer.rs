//! Boots the outer machine under QEMU's software CPU and brings its report
//! back.
//!
//! `qemu-system-x86_64 -M q35 -accel tcg,thread=multi -cpu max`: `max`
//! offers SVM with nested paging, so the outer kernel's `kvm_amd` works.
//! The initrd is the machine's base archive with the run's payload
//! appended; the console (ttyS0) and the results port (ttyS1) go to files.
//! All three are unnamed temporary files (`O_TMPFILE`) that QEMU opens
//! through `/proc/self/fd`, and QEMU dies with the thread that started it
//! (`PR_SET_PDEATHSIG`), so a killed twinbox leaves neither a process nor
//! a file behind.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::protocol::{self, Record};
use super::{machine, payload, Plan, Report};

/// The QEMU that runs the outer machine.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// How the outer machine is sized and bounded.
#[derive(Debug, Clone)]
pub struct Options {
    /// Its vCPUs (QEMU threads with `thread=multi`).
    pub smp: u32,
    /// Its memory, in MiB.
    pub memory_mib: u64,
    /// The whole run is killed after this long.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            smp: 2,
            memory_mib: 6144,
            timeout: Duration::from_secs(1200),
        }
    }
}

/// An unnamed file in the temporary directory.
fn unnamed() -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir)
        .with_context(|| format!("an unnamed file in {} (O_TMPFILE)", dir.display()))
}

fn fd_path(f: &File) -> String {
    format!("/proc/self/fd/{}", f.as_raw_fd())
}

/// The kernel command line of the outer machine; `$TWINBOX_NESTED_KERNEL_ARGS`
/// is added (to debug the outer kernel: `loglevel=7`, say).
fn cmdline() -> String {
    let extra = std::env::var("TWINBOX_NESTED_KERNEL_ARGS").unwrap_or_default();
    format!(
        "console=ttyS0 quiet panic=-1 random.trust_cpu=on {extra} rdinit={} -- nested agent",
        payload::AGENT_PATH
    )
}

/// QEMU arguments from `$TWINBOX_NESTED_QEMU_ARGS` (split at spaces), added
/// to debug the outer machine (`-monitor unix:/tmp/m.sock,server,nowait`).
fn extra_qemu_args() -> Vec<String> {
    std::env::var("TWINBOX_NESTED_QEMU_ARGS")
        .map(|s| s.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    twinbox_images::command::tail(text, n)
}

fn read_all(f: &mut File, limit: u64) -> Result<Vec<u8>> {
    f.seek(SeekFrom::Start(0))?;
    let mut v = Vec::new();
    f.take(limit + 1).read_to_end(&mut v)?;
    Ok(v)
}

/// How long past a step's own timeout (and the agent's 10 s grace) the
/// host waits for its record before it takes the outer machine as hung.
const STALL_MARGIN: Duration = Duration::from_secs(30);
/// How long the outer machine may take to boot and say it is ready.
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How many times a hung outer machine is replaced before the run fails.
pub const MAX_RESTARTS: usize = 2;

/// Runs `plan` in a new outer machine; `progress` is told of each step as
/// it ends (how many of the plan's steps have).
///
/// The outer machine is emulated, and QEMU's TCG with nested SVM has been
/// seen to stop making progress altogether (every vCPU busy, interrupts
/// off, no record for minutes) after many VM runs; our agent then cannot
/// report even a step's timeout. So when a step's record is overdue (its
/// timeout, the agent's grace and [`STALL_MARGIN`]), the machine is killed
/// and a new one runs the steps not yet reported, at most [`MAX_RESTARTS`]
/// times; each restart is named in [`Report::restarts`].
pub fn run(plan: &Plan, opts: &Options, progress: &dyn Fn(usize)) -> Result<Report> {
    if !Path::new(QEMU).exists() {
        bail!("{QEMU} is not installed (Debian package qemu-system-x86; scripts/bootstrap installs it)");
    }
    let m = machine::ensure().context("the outer machine")?;
    let mut report = Report {
        machine: Some(m.info.clone()),
        ..Report::default()
    };
    let mut from = 0;
    loop {
        let part = Plan {
            steps: plan.steps[from..].to_vec(),
            ..plan.clone()
        };
        let done = from;
        let outcome = boot(&m, &part, opts, &|n| progress(done + n))?;
        let got = outcome.report;
        report.wall_s += got.wall_s;
        report.payload_s += got.payload_s;
        if report.hypervisor.is_empty() {
            report.kernel_boot_s = got.kernel_boot_s;
            report.modules_s = got.modules_s;
            report.hypervisor = got.hypervisor;
        }
        from += got.steps.len();
        report.steps.extend(got.steps);
        report.files = got.files;
        report.kernel_log = got.kernel_log;
        match outcome.hung {
            None => return Ok(report),
            Some(why) if report.restarts.len() < MAX_RESTARTS && from < plan.steps.len() => {
                report.restarts.push(why);
            }
            Some(why) => bail!(
                "{why}; {} of {} steps reported, after {} restart(s)",
                from,
                plan.steps.len(),
                report.restarts.len()
            ),
        }
    }
}

/// One boot's report, and why the machine was taken as hung, if it was.
struct Boot {
    report: Report,
    hung: Option<String>,
}

/// Boots one outer machine for `plan` and collects what it reported.
fn boot(
    m: &machine::Machine,
    plan: &Plan,
    opts: &Options,
    progress: &dyn Fn(usize),
) -> Result<Boot> {
    let t = Instant::now();
    let mut initrd = unnamed()?;
    std::io::copy(
        &mut File::open(m.base_cpio()).context("the machine's base archive")?,
        &mut initrd,
    )?;
    payload::write(plan, &mut initrd).context("writing the payload")?;
    let payload_s = t.elapsed().as_secs_f64();
    let mut console = unnamed()?;
    let mut results = unnamed()?;
    let mut errors = unnamed()?;

    let mut cmd = Command::new(QEMU);
    cmd.args(["-M", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"])
        .args(["-smp", &opts.smp.to_string()])
        .args(["-m", &format!("{}M", opts.memory_mib)])
        .args(["-display", "none", "-nodefaults", "-no-reboot"])
        .arg("-kernel")
        .arg(m.vmlinuz())
        .args(["-initrd", &fd_path(&initrd)])
        .args(["-append", &cmdline()])
        .args(["-serial", &format!("file:{}", fd_path(&console))])
        .args(["-serial", &format!("file:{}", fd_path(&results))])
        .args(extra_qemu_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(errors.try_clone()?));
    let inherit = [initrd.as_raw_fd(), console.as_raw_fd(), results.as_raw_fd()];
    // SAFETY: between fork and exec the closure makes only async-signal-safe
    // calls (prctl, fcntl) on fds that stay open in the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let mut seen = 0;
    let mut last = start;
    let mut hung = None;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if start.elapsed() > opts.timeout {
            let _ = child.kill();
            let _ = child.wait();
            let text = String::from_utf8_lossy(&read_all(&mut console, 1 << 20)?).into_owned();
            bail!(
                "the outer machine did not finish within {:?}; its console ended:\n{}",
                opts.timeout,
                tail(&text, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        let steps = count_steps(&mut results);
        if steps != seen {
            seen = steps;
            last = Instant::now();
            progress(steps);
        }
        // The next step's record is due by its timeout, the agent's grace
        // and a margin after the last one (the first, after the boot too).
        let due = plan.steps.get(seen).map(|s| {
            let boot = if seen == 0 {
                BOOT_LIMIT
            } else {
                Duration::ZERO
            };
            boot + Duration::from_secs(s.timeout_s) + super::agent::GRACE + STALL_MARGIN
        });
        if let Some(due) = due {
            if last.elapsed() > due {
                let _ = child.kill();
                let _ = child.wait();
                hung = Some(format!(
                    "the outer machine hung: no record of step {} ({}) within {due:?}",
                    seen + 1,
                    plan.steps[seen].argv.join(" ")
                ));
                break None;
            }
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    let mut raw = read_all(&mut results, protocol::MAX_STREAM)?;
    if hung.is_some() {
        // Killed mid-write, perhaps: only whole lines count.
        let whole = raw.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        raw.truncate(whole);
    }
    let records = protocol::decode(&raw).context("reading the outer machine's results")?;
    let mut report = Report {
        wall_s,
        payload_s,
        ..Report::default()
    };
    let mut done = false;
    let mut fatal = None;
    for r in records {
        match r {
            Record::Ready {
                uptime_s,
                modules_s,
                hypervisor,
            } => {
                report.kernel_boot_s = uptime_s;
                report.modules_s = modules_s;
                report.hypervisor = hypervisor;
            }
            Record::Step(s) => report.steps.push(s),
            Record::File { path, data } => report
                .files
                .push((path, data.unwrap_or_else(|e| format!("(unreadable: {e})")))),
            Record::Log { text } => report.kernel_log = text,
            Record::Fatal { error } => fatal = Some(error),
            Record::Done => done = true,
        }
    }
    if let Some(e) = fatal {
        bail!("the outer machine's agent failed: {e}");
    }
    if hung.is_none() && !done {
        let text = String::from_utf8_lossy(&read_all(&mut console, 1 << 20)?).into_owned();
        let qemu = String::from_utf8_lossy(&read_all(&mut errors, 1 << 16)?).into_owned();
        bail!(
            "the outer machine stopped ({}) before its agent finished ({} of {} steps reported); QEMU said: {}\nits console ended:\n{}",
            status.map_or("killed".to_string(), |s| s.to_string()),
            report.steps.len(),
            plan.steps.len(),
            qemu.trim(),
            tail(&text, 30)
        );
    }
    Ok(Boot { report, hung })
}

/// How many step records the results file holds so far.
fn count_steps(f: &mut File) -> usize {
    let Ok(data) = read_all(f, protocol::MAX_STREAM) else {
        return 0;
    };
    let marker = format!("{}{{\"kind\":\"step\"", protocol::PREFIX);
    data.windows(marker.len())
        .filter(|w| *w == marker.as_bytes())
        .count()
}
