//! End-to-end: `twinbox nested run`, the harness that runs commands in an
//! outer machine with AMD SVM under QEMU's TCG. One boot checks what comes
//! back of each step (exit codes, signals, output, timeouts, a missing
//! program, fetched files, the machine's view of /dev/kvm); another checks
//! that a twinbox killed mid-run leaves neither QEMU nor a file behind.
//!
//! Not skipped where QEMU or the Debian packages are missing: the harness
//! is part of CI, so it fails and says why.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{code, stderr};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn twinbox() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twinbox"))
}

#[test]
fn each_step_brings_back_its_code_output_and_time() -> TestResult {
    let dir = tempfile::tempdir()?;
    let carried = dir.path().join("carried.txt");
    std::fs::write(&carried, "carried in from the host\n")?;
    let plan = serde_json::json!({
        "put": [{"host": carried, "guest": "/data/in.txt"}],
        "env": [["GREETING", "hello"]],
        "steps": [
            {"argv": ["sh", "-c", "echo $GREETING; cat /data/in.txt; echo oops >&2; exit 3"]},
            {"argv": ["sh", "-c", "kill -TERM $$"]},
            {"argv": ["sleep", "100"], "timeout_s": 1},
            {"argv": ["/no/such/program"]},
            {"argv": ["sh", "-c", "echo written > /tmp/out.txt; ls /dev/kvm"], "cwd": "/tmp"},
        ],
        "fetch": ["/tmp/out.txt", "/no/such/file"],
    });
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, serde_json::to_vec(&plan)?)?;
    let out = twinbox()
        .args(["nested", "run", "--json", "--timeout", "5m", "--plan"])
        .arg(&plan_file)
        .output()?;
    // Several steps and some failed, so twinbox says 1; the report is
    // there all the same.
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let steps = r["steps"].as_array().ok_or("no steps")?;
    assert_eq!(steps.len(), 5, "{r}");
    assert_eq!(steps[0]["code"], 3);
    assert_eq!(
        steps[0]["stdout"], "hello\ncarried in from the host\n",
        "{}",
        steps[0]
    );
    assert_eq!(steps[0]["stderr"], "oops\n");
    assert_eq!(steps[1]["signal"], 15, "{}", steps[1]);
    assert_eq!(steps[2]["timed_out"], true, "{}", steps[2]);
    assert_eq!(steps[2]["signal"], 9, "{}", steps[2]);
    let t = steps[2]["seconds"].as_f64().ok_or("no seconds")?;
    assert!((1.0..30.0).contains(&t), "killed after {t} s");
    assert!(
        steps[3]["error"]
            .as_str()
            .is_some_and(|e| e.contains("/no/such/program")),
        "{}",
        steps[3]
    );
    assert_eq!(steps[4]["code"], 0, "{}", steps[4]);
    assert_eq!(steps[4]["stdout"], "/dev/kvm\n");
    let files = r["files"].as_array().ok_or("no files")?;
    assert_eq!(files[0], serde_json::json!(["/tmp/out.txt", "written\n"]));
    assert!(
        files[1][1]
            .as_str()
            .is_some_and(|d| d.starts_with("(unreadable")),
        "{}",
        files[1]
    );
    assert_eq!(r["hypervisor"], "hardware KVM (AMD-V)", "{r}");
    assert!(r["kernel_boot_s"].as_f64().is_some_and(|s| s > 0.0), "{r}");
    Ok(())
}

/// The QEMU processes whose parent is `pid`.
fn qemu_children(pid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // comm is in parentheses; the parent pid is the second field after it.
            let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
            let ppid = after.split_whitespace().nth(1).and_then(|v| v.parse().ok());
            ppid == Some(pid) && stat.contains("(qemu-system-x86")
        })
        .collect()
}

#[test]
fn a_killed_run_leaves_no_qemu_and_no_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp)?;
    let mut child = twinbox()
        .args(["nested", "run", "--", "sleep", "1000"])
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let qemu = loop {
        if let Some(&q) = qemu_children(child.id()).first() {
            break q;
        }
        assert!(Instant::now() < deadline, "no QEMU within 120 s");
        assert!(
            child.try_wait()?.is_none(),
            "the run ended before QEMU started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Let the machine boot a little, then kill twinbox hard.
    std::thread::sleep(Duration::from_secs(2));
    child.kill()?;
    child.wait()?;
    let gone = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{qemu}")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{qemu}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, a)| a.starts_with('Z')));
        if zombie {
            break;
        }
        assert!(
            Instant::now() < gone,
            "QEMU {qemu} outlived the killed twinbox"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = common::entries(&tmp)?;
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
    Ok(())
}

#[test]
fn one_command_gives_its_own_exit_code_and_output() -> TestResult {
    let out = twinbox()
        .args([
            "nested",
            "run",
            "--",
            "sh",
            "-c",
            "echo from the outer machine; exit 7",
        ])
        .output()?;
    assert_eq!(code(&out), 7, "{}", stderr(&out));
    assert_eq!(common::stdout(&out), "from the outer machine\n");
    assert!(
        stderr(&out).contains("hardware KVM (AMD-V)"),
        "{}",
        stderr(&out)
    );
    Ok(())
}
