//! End-to-end: `twinbox bench floor` runs every subject it can, reports the
//! ones it cannot with the reason, and writes every sample as JSON.

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
        assert!(s["max_rss_kib"].as_u64().unwrap_or(0) > 0);
    }
    Ok(())
}
