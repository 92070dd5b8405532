//! Isolation: the probe's report from inside each box, compared with the
//! same probe on the host, as a matrix of rows (one fact or attempt each,
//! with what it means); containment of a fork bomb and a memory bomb under
//! limits while the host's responsiveness is measured; and the distinct
//! host system calls one run of each subject makes (counted with strace).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stats::{summarize, Summary};
use crate::subject::Subject;

/// One cell of the matrix.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    /// What to show.
    pub text: String,
    /// `good` (isolated / denied), `bad` (shared / allowed) or `info`.
    pub class: &'static str,
}

/// One row of the matrix.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    /// Short name.
    pub label: String,
    /// What the row means and why the two kinds of box differ.
    pub explain: String,
    /// One cell per subject, in the order of `Isolation::subjects`.
    pub cells: Vec<Cell>,
}

/// Containment of one bomb in one subject.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Containment {
    /// Subject.
    pub subject: String,
    /// `fork bomb` or `memory bomb`.
    pub bomb: String,
    /// The box's exit status (137: killed by the timeout or the OOM killer).
    pub status: Option<i32>,
    /// How long until the box was gone, s.
    pub seconds: f64,
    /// Host spawn latency of `true` while the bomb ran, ms.
    pub host_spawn_ms: Option<Summary>,
    /// Host spawn latency before the bomb, ms (the reference).
    pub host_spawn_idle_ms: Option<Summary>,
}

/// The isolation scenario's results.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Isolation {
    /// Column names: `host` then the subjects.
    pub subjects: Vec<String>,
    /// Subjects that could not run the probe, and why.
    pub unavailable: Vec<(String, String)>,
    /// The raw reports.
    pub reports: Vec<(String, Value)>,
    /// The matrix.
    pub rows: Vec<Row>,
    /// Fork and memory bombs.
    pub containment: Vec<Containment>,
    /// Distinct host system calls made by one `/bin/true` run, per subject.
    pub host_syscalls: Vec<(String, Option<usize>)>,
    /// Host-side attack surface as the caller knows it (seccomp lists).
    pub attack_surface: Vec<(String, String)>,
}

/// Runs `cmd`, returns its stdout parsed as JSON.
pub fn run_json(mut cmd: Command) -> Result<Value, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("starting: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("no JSON report: {e}"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn cell(text: impl Into<String>, class: &'static str) -> Cell {
    Cell {
        text: text.into(),
        class,
    }
}

/// Whether `v` comes from a kernel other than the host's (a VM): what it
/// sees and may do then concerns its own kernel, not the host.
fn own_kernel(v: &Value, host: &Value) -> bool {
    v["boot_id"] != host["boot_id"]
}

/// The matrix from the host's report and each box's (`None`: no report).
pub fn rows(host: &Value, boxes: &[Option<&Value>]) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |label: &str, explain: &str, f: &dyn Fn(&Value, bool) -> Cell| {
        let mut cells = vec![f(host, true)];
        for b in boxes {
            cells.push(b.map_or_else(|| cell("not run", "info"), |b| f(b, false)));
        }
        rows.push(Row {
            label: label.into(),
            explain: explain.into(),
            cells,
        });
    };
    add(
        "kernel",
        "Whose kernel runs the workload: a container shares the host's (same release and boot id), so a kernel bug is a way out; a VM has its own.",
        &|v, is_host| {
            let own = v["boot_id"] != host["boot_id"];
            let text = format!("{} ({})", s(&v["kernel"]), if own { "own" } else { "host's" });
            cell(text, if is_host { "info" } else if own { "good" } else { "bad" })
        },
    );
    add(
        "processes visible",
        "PIDs the workload can see in /proc: a PID namespace shows only the box's own; a guest shows its own kernel's threads, never the host's.",
        &|v, is_host| {
            let n = v["pids_visible"].as_array().map_or(0, Vec::len);
            let own = own_kernel(v, host);
            let text = if own {
                format!("{n} (guest's)")
            } else {
                n.to_string()
            };
            let class = if is_host {
                "info"
            } else if n <= 3 || own {
                "good"
            } else {
                "bad"
            };
            cell(text, class)
        },
    );
    add(
        "host file visible",
        "Whether a canary file the benchmark put on the host can be seen: a container's root is pivoted away, a VM has no path to the host's disks.",
        &|v, is_host| {
            let seen = v["canary_visible"].as_bool().unwrap_or(false);
            cell(if seen { "yes" } else { "no" }, if is_host { "info" } else if seen { "bad" } else { "good" })
        },
    );
    add(
        "network interfaces",
        "Interfaces the workload sees: a new network namespace has only loopback; a VM sees only its virtual devices.",
        &|v, is_host| {
            let list: Vec<String> = v["interfaces"].as_array().map_or(vec![], |a| a.iter().map(s).collect());
            let only_lo = list.iter().all(|i| i == "lo");
            let own = own_kernel(v, host);
            let text = if own { format!("{} (guest's)", list.join(" ")) } else { list.join(" ") };
            cell(text, if is_host { "info" } else if only_lo || own { "good" } else { "bad" })
        },
    );
    add(
        "hostname",
        "The UTS namespace (or a guest) gives the box its own name.",
        &|v, is_host| {
            let same = v["hostname"] == host["hostname"];
            cell(
                s(&v["hostname"]),
                if is_host {
                    "info"
                } else if same {
                    "bad"
                } else {
                    "good"
                },
            )
        },
    );
    add(
        "memory in /proc/meminfo",
        "What the workload believes it has: a container sees the host's total (its cgroup limit is not shown there); a VM sees its own RAM.",
        &|v, is_host| {
            let kib = v["mem_total_kib"].as_u64().unwrap_or(0);
            let same = v["mem_total_kib"] == host["mem_total_kib"];
            cell(format!("{} MiB", kib / 1024), if is_host { "info" } else if same { "bad" } else { "good" })
        },
    );
    add(
        "CPUs visible",
        "CPUs online as the workload sees them: a container sees the host's; a VM its vCPUs.",
        &|v, _| cell(s(&v["cpus_online"]), "info"),
    );
    add(
        "capabilities (effective)",
        "Root's powers left to the workload: a container drops most; in a VM root holds all of them over its own kernel only.",
        &|v, _| cell(s(&v["cap_eff"]), "info"),
    );
    add(
        "seccomp",
        "Seccomp mode of the workload (2 = filter): a container's filter guards the shared kernel; a VM's guest kernel is the guard, and the VMM is filtered on the host.",
        &|v, is_host| {
            let on = v["seccomp"] == "2";
            cell(s(&v["seccomp"]), if is_host { "info" } else if on { "good" } else { "info" })
        },
    );
    add(
        "uid map",
        "How the box's user ids map to the host's (/proc/self/uid_map): \"0 0 4294967295\" means root in the box is root on the host (no user namespace), guarded only by capabilities and seccomp; in a VM, guest root is no host user at all.",
        &|v, _| {
            let m = s(&v["uid_map"]).split_whitespace().collect::<Vec<_>>().join(" ");
            cell(m, "info")
        },
    );
    add(
        "no_new_privs",
        "Whether setuid programs can gain privileges.",
        &|v, _| cell(s(&v["no_new_privs"]), "info"),
    );
    for call in [
        "keyctl",
        "finit_module",
        "mount",
        "unshare_user",
        "ptrace",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "reboot",
    ] {
        add(
            &format!("{call}()"),
            "A system call with a history of kernel exploits or host-wide effect, tried harmlessly: EPERM means the box refused it. In a VM an allowed call reaches only the guest's kernel.",
            &|v, is_host| {
                let r = s(&v["syscalls"][call]);
                let denied = r == "EPERM" || r == "ENOSYS";
                if !is_host && !denied && own_kernel(v, host) {
                    return cell(format!("{r} (guest kernel)"), "good");
                }
                cell(r, if is_host { "info" } else if denied { "good" } else { "bad" })
            },
        );
    }
    for a in [
        "mknod_block_device",
        "raw_socket",
        "ptrace_other_process",
        "open_sysrq_trigger",
        "open_dev_kvm",
        "set_clock",
        "write_proc_sys",
    ] {
        add(
            &a.replace('_', " "),
            "An action tried without harm (no device opened for I/O, the clock set to itself, a setting written back): denied is isolated.",
            &|v, is_host| {
                let r = s(&v["attempts"][a]);
                let allowed = r == "allowed";
                if !is_host && allowed && own_kernel(v, host) {
                    return cell("allowed (guest kernel)", "good");
                }
                cell(r, if is_host { "info" } else if allowed { "bad" } else { "good" })
            },
        );
    }
    rows
}

/// Spawn latency of `true` on the host, `n` times, ms.
pub fn host_spawn_latency(n: usize) -> Option<Summary> {
    let mut v = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        if Command::new("true").status().is_ok() {
            v.push(t.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    summarize(&v)
}

/// Runs `argv` (a bomb) in `subject`'s limited box while measuring the
/// host's spawn latency.
pub fn contain(subject: &dyn Subject, bomb: &str, argv: &[&str]) -> Option<Containment> {
    let mut cmd = subject.limited(argv)?;
    let idle = host_spawn_latency(10);
    let t = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let during = host_spawn_latency(40);
    let status = child.wait().ok().and_then(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().or(s.signal().map(|n| 128 + n))
    });
    Some(Containment {
        subject: subject.name(),
        bomb: bomb.into(),
        status,
        seconds: t.elapsed().as_secs_f64(),
        host_spawn_ms: during,
        host_spawn_idle_ms: idle,
    })
}

/// Distinct system calls the host kernel served for one run of `cmd`
/// (every process and thread it made, counted by `strace -f`), if strace
/// is there and left a log.
pub fn distinct_host_syscalls(cmd: Command) -> Option<usize> {
    let dir = tempfile::tempdir().ok()?;
    let log = dir.path().join("strace.log");
    let mut st = Command::new("strace");
    st.arg("-f")
        .arg("-qq")
        .arg("-o")
        .arg(&log)
        .arg(cmd.get_program());
    st.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => st.env(k, v),
            None => st.env_remove(k),
        };
    }
    // The run's own exit status does not matter (QEMU's debug exit is 1).
    st.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&log).ok()?;
    let names: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| {
            // "<pid> name(args..." or "<pid> <... name resumed>"
            let rest = l.split_once(' ')?.1.trim_start();
            if rest.starts_with("<...") || rest.starts_with("+++") || rest.starts_with("---") {
                return None;
            }
            let name = rest.split('(').next()?;
            (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .then_some(name)
        })
        .collect();
    Some(names.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(kernel: &str, boot: &str, pids: usize, keyctl: &str) -> Value {
        json!({
            "kernel": kernel, "boot_id": boot, "pids_visible": (1..=pids).collect::<Vec<_>>(),
            "canary_visible": pids > 3, "interfaces": if pids > 3 { json!(["lo", "eth0"]) } else { json!(["lo"]) },
            "hostname": if pids > 3 { "host" } else { "box" }, "mem_total_kib": 1024,
            "syscalls": {"keyctl": keyctl}, "attempts": {"raw_socket": "allowed"}
        })
    }

    #[test]
    fn a_container_shares_the_kernel_and_a_vm_does_not() {
        let host = report("6.18", "aaa", 200, "ENOKEY");
        let container = report("6.18", "aaa", 1, "EPERM");
        let vm = report("6.1", "bbb", 2, "ENOKEY");
        let r = rows(&host, &[Some(&container), Some(&vm), None]);
        let kernel = &r[0];
        assert_eq!(kernel.cells.len(), 4);
        assert_eq!(kernel.cells[1].class, "bad");
        assert!(kernel.cells[1].text.contains("host's"));
        assert_eq!(kernel.cells[2].class, "good");
        assert_eq!(kernel.cells[3].text, "not run");
        let pids = &r[1];
        assert_eq!((pids.cells[1].class, pids.cells[2].class), ("good", "good"));
        let keyctl = r
            .iter()
            .find(|r| r.label == "keyctl()")
            .expect("keyctl row");
        assert_eq!(keyctl.cells[1].class, "good");
        // Allowed in a VM: it reaches only the guest's kernel.
        assert_eq!(keyctl.cells[2].class, "good");
        assert!(keyctl.cells[2].text.contains("guest kernel"));
        // The same answer from the host's kernel would be a hole.
        let leaky = report("6.18", "aaa", 1, "ENOKEY");
        let r2 = rows(&host, &[Some(&leaky)]);
        let k2 = r2
            .iter()
            .find(|r| r.label == "keyctl()")
            .expect("keyctl row");
        assert_eq!(k2.cells[1].class, "bad");
        assert!(r.iter().all(|row| !row.explain.is_empty()));
    }

    #[test]
    fn strace_counts_distinct_calls() {
        if Command::new("strace").arg("-V").output().is_err() {
            return;
        }
        let n = distinct_host_syscalls(Command::new("true")).unwrap_or(0);
        assert!((5..200).contains(&n), "{n}");
    }
}
