//! End-to-end: the command line's contract. `--help` everywhere, Docker's
//! exit codes (125 for twinbox's own errors, bad flags included), and
//! `twinbox run` resolving and validating a workload.

mod common;

use common::{code, stderr, stdout, Env};
use twinbox_images::testing::{oci_layout, Codec, Tar};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn every_command_has_help() {
    let env = Env::new();
    for args in [
        vec!["--help"],
        vec!["image", "--help"],
        vec!["image", "import", "--help"],
        vec!["image", "ls", "--help"],
        vec!["image", "rm", "--help"],
        vec!["image", "inspect", "--help"],
        vec!["image", "build-base", "--help"],
        vec!["run", "--help"],
        vec!["doctor", "--help"],
        vec!["kernel", "--help"],
        vec!["kernel", "build", "--help"],
        vec!["kernel", "fetch-debian", "--help"],
        vec!["kernel", "show", "--help"],
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 0, "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("Usage: twinbox"),
            "{args:?}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn bad_command_lines_exit_125() {
    let env = Env::new();
    for args in [
        vec!["nonsense"],
        vec!["run"],
        vec!["run", "--isolation", "jail", "x"],
        vec!["image", "rm"],
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 125, "{args:?}");
        assert!(!stderr(&out).is_empty());
    }
}

/// An env with a small image `app:1` (entrypoint /bin/app, cmd --flag,
/// env PATH=/bin A=1, workdir /work, user 1000:1000).
fn env_with_image() -> Result<Env, Box<dyn std::error::Error>> {
    let env = Env::new();
    let layout = env.path().join("layout");
    oci_layout(
        &layout,
        &[(Tar::new().file("bin/app", 0o755, b"x").finish(), Codec::Tar)],
        Some("app:1"),
    )?;
    let out = env.run(&["image", "import", layout.to_str().ok_or("path")?]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    Ok(env)
}

#[test]
fn run_resolves_the_workload_docker_style() -> TestResult {
    let env = env_with_image()?;
    let out = env.run(&["run", "--dry-run", "app:1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let w: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(w["isolation"], "vm", "vm is the default");
    assert_eq!(w["argv"], serde_json::json!(["/bin/app", "--flag"]));
    assert_eq!(w["cwd"], "/work");
    assert_eq!(w["user"], "1000:1000");

    let out = env.run(&[
        "run",
        "--dry-run",
        "--isolation",
        "container",
        "-m",
        "64m",
        "--cpus",
        "0.5",
        "--timeout",
        "1m30s",
        "-e",
        "A=2",
        "-e",
        "B=x",
        "app:1",
        "-x",
        "--y",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let w: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(w["isolation"], "container");
    assert_eq!(
        w["argv"],
        serde_json::json!(["/bin/app", "-x", "--y"]),
        "command replaces cmd, not entrypoint"
    );
    assert_eq!(w["env"], serde_json::json!(["PATH=/bin", "A=2", "B=x"]));
    assert_eq!(w["limits"]["memory"], 64 << 20);
    assert_eq!(w["limits"]["cpus"], 0.5);
    assert_eq!(w["limits"]["timeout"], 90.0);
    Ok(())
}

#[test]
fn run_refuses_bad_limits_and_unknown_images_with_125() -> TestResult {
    let env = env_with_image()?;
    for (args, words) in [
        (vec!["run", "-m", "12q", "app:1"], "invalid size"),
        (
            vec!["run", "-m", "999999g", "app:1"],
            "more than this host has",
        ),
        (
            vec!["run", "-m", "99999999999999999999t", "app:1"],
            "too large",
        ),
        (vec!["run", "-m", "1m", "app:1"], "at least 32 MiB"),
        (vec!["run", "--cpus", "0", "app:1"], "positive number"),
        (vec!["run", "--cpus", "100000", "app:1"], "this host has"),
        (vec!["run", "--cpus", "1.5", "app:1"], "whole number"),
        (vec!["run", "--timeout", "soon", "app:1"], "--timeout"),
        (vec!["run", "--timeout", "0s", "app:1"], "more than zero"),
        (vec!["run", "-e", "=x", "app:1"], "--env"),
        (
            vec!["run", "missing:latest"],
            "no such image: missing:latest",
        ),
        (vec!["run", "Bad/Name"], "invalid image name"),
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 125, "{args:?}");
        assert!(
            stderr(&out).contains(words),
            "{args:?}: expected {words:?} in {}",
            stderr(&out)
        );
    }
    // Flags of one kind of box are refused for the other.
    for (args, words) in [
        (
            vec!["run", "--pids-limit", "10", "app:1"],
            "applies to containers",
        ),
        (vec!["run", "--userns", "app:1"], "applies to containers"),
        (
            vec![
                "run",
                "--isolation",
                "container",
                "--pids-limit",
                "0",
                "app:1",
            ],
            "at least 1",
        ),
        (
            vec!["run", "--isolation", "container", "-w", "rel", "app:1"],
            "absolute path",
        ),
    ] {
        let out = env.run(&args);
        assert_eq!(code(&out), 125, "{args:?}");
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }
    Ok(())
}

#[test]
fn doctor_reports_every_check_and_its_exit_code_matches() {
    let env = Env::new();
    let out = env.run(&["doctor"]);
    let text = stdout(&out);
    for check in [
        "/dev/kvm",
        "namespaces",
        "cgroups",
        "guest kernel",
        "base image",
        "host tools",
    ] {
        assert!(
            text.lines().any(|l| l.contains(check)),
            "no {check} line in:\n{text}"
        );
    }
    // A fresh store has no base image: that check fails, so doctor exits 1.
    assert!(text.contains("[FAIL] base image"), "{text}");
    assert_eq!(code(&out), 1);
    // The cgroup line says what this host's layout is.
    let layout = twinbox_container::cgroups::layout::detect()
        .map(|l| l.to_string())
        .unwrap_or_default();
    assert!(
        text.contains(&layout),
        "doctor does not report {layout:?}:\n{text}"
    );
}
