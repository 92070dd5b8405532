//! cgroup v1: one group per controller hierarchy, nested under the
//! launcher's own group there. The limits use `memory.limit_in_bytes` (and
//! `memory.memsw.limit_in_bytes` when swap accounting exists, so the limit
//! cannot be dodged into swap), `pids.max` and the CFS quota.

use std::path::PathBuf;

use super::{Dir, Error, Plan, Write};
use crate::config::Limits;

/// The controllers every box gets a group in: memory and pids always (for
/// accounting, OOM reports and a place to kill from), cpu for the quota.
pub const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// CFS period in microseconds.
pub const CFS_PERIOD_US: u64 = 100_000;

/// The plan on v1 hierarchies `mounts` (controller, mount point).
pub fn plan(
    mounts: &[(String, PathBuf)],
    name: &str,
    limits: &Limits,
    own: &dyn Fn(&str) -> String,
) -> Result<Plan, Error> {
    let mut dirs: Vec<Dir> = Vec::new();
    for c in CONTROLLERS {
        let Some((_, mount)) = mounts.iter().find(|(m, _)| m == c) else {
            let needed = match c {
                "memory" => limits.memory.is_some(),
                "pids" => limits.pids.is_some(),
                _ => limits.cpus.is_some(),
            };
            if needed {
                return Err(Error::Unavailable(format!(
                    "the {c} controller is not mounted, so its limit cannot be set"
                )));
            }
            continue;
        };
        let parent = mount.join(own(c).trim_start_matches('/'));
        let path = parent.join(name);
        let writes = match c {
            "memory" => limits
                .memory
                .map(|m| {
                    vec![
                        Write {
                            file: "memory.limit_in_bytes",
                            value: m.to_string(),
                            optional: false,
                        },
                        Write {
                            file: "memory.memsw.limit_in_bytes",
                            value: m.to_string(),
                            optional: true,
                        },
                    ]
                })
                .unwrap_or_default(),
            "pids" => limits
                .pids
                .map(|p| {
                    vec![Write {
                        file: "pids.max",
                        value: p.to_string(),
                        optional: false,
                    }]
                })
                .unwrap_or_default(),
            _ => limits
                .cpus
                .map(|n| {
                    vec![
                        Write {
                            file: "cpu.cfs_period_us",
                            value: CFS_PERIOD_US.to_string(),
                            optional: false,
                        },
                        Write {
                            file: "cpu.cfs_quota_us",
                            value: quota(n).to_string(),
                            optional: false,
                        },
                    ]
                })
                .unwrap_or_default(),
        };
        // Controllers co-mounted in one hierarchy (cpu,cpuacct) share a
        // directory: make it once, with both sets of writes.
        if let Some(d) = dirs.iter_mut().find(|d| d.path == path) {
            d.writes.extend(writes);
        } else {
            dirs.push(Dir { path, writes });
        }
    }
    if dirs.is_empty() {
        return Err(Error::Unavailable(
            "none of the memory, pids or cpu controllers is mounted".into(),
        ));
    }
    Ok(Plan { version: 1, dirs })
}

/// CFS quota in microseconds per period for `cpus` CPUs (at least 1 ms,
/// the kernel's floor).
pub fn quota(cpus: f64) -> u64 {
    ((cpus * CFS_PERIOD_US as f64).round() as u64).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<(String, PathBuf)> {
        ["cpu", "memory", "pids"]
            .iter()
            .map(|c| (c.to_string(), PathBuf::from(format!("/sys/fs/cgroup/{c}"))))
            .collect()
    }

    #[test]
    fn nests_under_own_group_and_writes_limits() -> Result<(), Error> {
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(32),
            cpus: Some(0.5),
        };
        let own = |c: &str| {
            if c == "memory" {
                "/process_api/x".to_string()
            } else {
                "/".to_string()
            }
        };
        let p = plan(&mounts(), "twinbox-1-0", &limits, &own)?;
        assert_eq!(p.version, 1);
        let paths: Vec<_> = p.dirs.iter().map(|d| d.path.clone()).collect();
        assert_eq!(
            paths,
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/process_api/x/twinbox-1-0"),
                PathBuf::from("/sys/fs/cgroup/pids/twinbox-1-0"),
                PathBuf::from("/sys/fs/cgroup/cpu/twinbox-1-0"),
            ]
        );
        assert_eq!(p.dirs[0].writes[0].value, (64u64 << 20).to_string());
        assert!(p.dirs[0].writes[1].optional);
        assert_eq!(p.dirs[1].writes[0].value, "32");
        assert_eq!(p.dirs[2].writes[1].value, "50000");
        Ok(())
    }

    #[test]
    fn comounted_controllers_share_a_directory_and_missing_ones_fail_only_if_needed() {
        let m = vec![
            ("memory".to_string(), PathBuf::from("/c/memory")),
            ("pids".to_string(), PathBuf::from("/c/pids,memory")),
        ];
        let own = |_: &str| "/".to_string();
        let limits = Limits {
            memory: Some(1 << 30),
            ..Limits::default()
        };
        assert!(plan(&m, "n", &limits, &own).is_ok());
        let cpu = Limits {
            cpus: Some(1.0),
            ..Limits::default()
        };
        let e = plan(&m, "n", &cpu, &own).expect_err("cpu is missing");
        assert!(e.to_string().contains("cpu controller"));
        let shared = vec![
            ("memory".to_string(), PathBuf::from("/c/mp")),
            ("pids".to_string(), PathBuf::from("/c/mp")),
        ];
        let p = plan(&shared, "n", &Limits::default(), &own).expect("plan");
        assert_eq!(p.dirs.len(), 1);
        assert_eq!(quota(0.001), 1000);
    }
}
