//! End-to-end: `twinbox bench floor` runs every subject it can, reports the
//! ones it cannot with the reason, and writes every sample as JSON; and
//! `twinbox bench --quick` runs every scenario and writes its reports.

mod common;

use common::{code, stderr, stdout, Env};

#[test]
fn the_floor_benchmark_reports_every_subject() -> Result<(), Box<dyn std::error::Error>> {
    let env = Env::new();
    let json = env.path().join("floor.json");
    let out = env.run(&[
        "bench",
        "floor",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--json",
        json.to_str().ok_or("path")?,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.lines().any(|l| l.starts_with("| twinbox-vmm | 3 |")),
        "{table}"
    );
    assert!(
        table.contains("| firecracker | - | not run: not given (--firecracker PATH)"),
        "{table}"
    );
    // QEMU is either measured or reported missing, never dropped.
    assert!(
        table.lines().any(|l| l.starts_with("| qemu-microvm |")),
        "{table}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let ours = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == "twinbox-vmm"))
        .ok_or("no twinbox-vmm")?;
    let samples = ours["samples"].as_array().ok_or("no samples")?;
    assert_eq!(samples.len(), 3);
    for s in samples {
        assert_eq!(s["status"], 0);
        assert!(s["to_marker"].is_object(), "marker missing: {s}");
    }
    // Its peak RSS, from traced runs. This is the debug build (about
    // 8.5 MiB); the release build's figure is the benchmark's business.
    let peaks = ours["peak_rss_kib"].as_array().ok_or("no peak_rss_kib")?;
    assert!(!peaks.is_empty(), "{ours}");
    for p in peaks {
        let kib = p.as_u64().unwrap_or(0);
        assert!(kib > 1024 && kib < 32 * 1024, "peak RSS {kib} KiB");
    }
    assert!(table.contains("peak RSS p50 (MiB)"), "{table}");
    Ok(())
}

/// `twinbox bench --quick` end to end: every scenario, native and both
/// twinbox subjects present (measured, or reported with the reason), the
/// three result files written, the HTML well formed with one chart per
/// scenario, and the probe's verdicts true: a container shares the host's
/// kernel (release and boot id), a VM (where one runs) does not.
#[test]
fn a_quick_full_run_measures_and_reports_every_scenario() -> Result<(), Box<dyn std::error::Error>>
{
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let dir = env.path().join("results");
    let out = env.run(&["bench", "--quick", "--out", dir.to_str().ok_or("path")?]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for f in ["results.json", "report.md", "report.html"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("results.json"))?)?;
    let startup = v["startup"]["subjects"].as_array().ok_or("startup")?;
    let find = |name: &str| startup.iter().find(|s| s["name"] == name).cloned();
    // twinbox-runtime, the OCI runtime, on the same bundles as crun and runc.
    for name in ["native", "twinbox-container", "twinbox-runtime"] {
        let s = find(name).ok_or(name)?;
        assert_eq!(
            s["samples"].as_array().map(Vec::len),
            Some(5),
            "{name}: {s}"
        );
    }
    let vm = find("twinbox-vm").ok_or("twinbox-vm")?;
    let vm_ran = vm["unavailable"].is_null();
    if !vm_ran {
        assert!(vm["unavailable"].as_str().unwrap_or("").len() > 10, "{vm}");
    }

    // The probe's verdicts against the truth the test reads itself.
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let reports = v["isolation"]["reports"].as_array().ok_or("reports")?;
    let report = |name: &str| reports.iter().find(|r| r[0] == name).map(|r| r[1].clone());
    let c = report("twinbox-container").ok_or("no container report")?;
    assert_eq!(c["boot_id"].as_str(), Some(host_boot.trim()));
    assert_eq!(c["kernel"].as_str(), Some(host_release.trim()));
    assert_eq!(c["pid"], 1);
    assert_eq!(c["canary_visible"], false);
    let h = report("host").ok_or("no host report")?;
    assert_eq!(
        h["canary_visible"], true,
        "the canary must be visible on the host"
    );
    if let Some(vm) = report("twinbox-vm") {
        assert_ne!(vm["boot_id"].as_str(), Some(host_boot.trim()));
    } else {
        assert!(!vm_ran, "the VM ran but gave no probe report");
    }
    let rows = v["isolation"]["rows"].as_array().ok_or("rows")?;
    let kernel = rows
        .iter()
        .find(|r| r["label"] == "kernel")
        .ok_or("kernel row")?;
    assert_eq!(
        kernel["cells"][1]["class"], "bad",
        "a container shares the kernel"
    );

    // The page parses and holds one chart per scenario.
    let html = std::fs::read_to_string(dir.join("report.html"))?;
    let opt = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&html, opt)?;
    let charts: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.attribute("data-scenario"))
        .collect();
    for s in ["startup", "memory", "isolation", "speed"] {
        assert_eq!(
            charts.iter().filter(|c| **c == s).count(),
            1,
            "{s}: {charts:?}"
        );
    }
    // Speed inside the container is measured relative to native.
    let speed = v["speed"]["subjects"].as_array().ok_or("speed")?;
    let ours = speed
        .iter()
        .find(|s| s["name"] == "twinbox-container")
        .ok_or("speed: container")?;
    assert!(ours["unavailable"].is_null(), "{ours}");
    assert_eq!(ours["tests"].as_array().map(Vec::len), Some(4));
    Ok(())
}

/// `twinbox bench web` with one-second wrk runs, native and the container
/// only: both rows measured (requests served, latencies read), the VM and
/// Docker rows saying why they did not run, and no box left behind.
#[test]
fn the_web_benchmark_measures_the_container_behind_p() -> Result<(), Box<dyn std::error::Error>> {
    if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("wrk").is_file())
    {
        eprintln!("skipped: no wrk on PATH (scripts/bootstrap installs it)");
        return Ok(());
    }
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let json = env.path().join("web.json");
    let out = env.run(&[
        "bench",
        "web",
        "-t1",
        "-c4",
        "-d1s",
        "--warmup",
        "0s",
        "--rounds",
        "1",
        "--vm-duration",
        "0s",
        "--no-docker",
        "--json",
        json.to_str().ok_or("path")?,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = stdout(&out);
    assert!(
        table.contains("| twinbox vm (-p) | 1 KiB | 0 |")
            && table.contains("not run: --vm-duration 0"),
        "{table}"
    );
    assert!(table.contains("not run: --no-docker"), "{table}");
    assert!(table.contains("not checked, a row is missing"), "{table}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let rows = v["rows"].as_array().ok_or("rows")?;
    for subject in ["native (host loopback)", "twinbox container (-p)"] {
        for file in ["1k", "1m"] {
            let r = rows
                .iter()
                .find(|r| r["subject"] == subject && r["file"] == file)
                .ok_or(format!("no row {subject} {file}"))?;
            assert!(r["rps"].as_f64().is_some_and(|x| x > 0.0), "{r}");
            assert!(r["p99_ms"].as_f64().is_some_and(|x| x > 0.0), "{r}");
            assert_eq!(r["errors"], 0, "{r}");
            assert!(
                r["runs"][0]["requests"].as_u64().is_some_and(|n| n > 0),
                "{r}"
            );
        }
    }
    // Every box it started is gone.
    let ps = env.run(&["ps", "-a", "-q"]);
    assert_eq!(stdout(&ps).trim(), "", "boxes left behind");
    Ok(())
}
