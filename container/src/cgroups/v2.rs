//! cgroup v2: one group directly under the unified root (the root is the one
//! group exempt from the no-internal-processes rule, so it can delegate
//! controllers however the launcher itself is placed). Limits use
//! `memory.max` with `memory.swap.max` 0, `pids.max` and `cpu.max`.

use std::path::Path;

use super::{v1::quota, v1::CFS_PERIOD_US, Dir, Error, Plan, Write};
use crate::config::Limits;

/// The plan on a unified hierarchy at `mount` whose root offers
/// `controllers`.
pub fn plan(
    mount: &Path,
    controllers: &[String],
    name: &str,
    limits: &Limits,
) -> Result<Plan, Error> {
    let has = |c: &str| controllers.iter().any(|x| x == c);
    let mut writes = Vec::new();
    let mut need = Vec::new();
    if let Some(m) = limits.memory {
        need.push("memory");
        writes.push(Write {
            file: "memory.max",
            value: m.to_string(),
            optional: false,
        });
        writes.push(Write {
            file: "memory.swap.max",
            value: "0".into(),
            optional: true,
        });
    }
    if let Some(p) = limits.pids {
        need.push("pids");
        writes.push(Write {
            file: "pids.max",
            value: p.to_string(),
            optional: false,
        });
    }
    if let Some(n) = limits.cpus {
        need.push("cpu");
        writes.push(Write {
            file: "cpu.max",
            value: format!("{} {}", quota(n), CFS_PERIOD_US),
            optional: false,
        });
    }
    if let Some(c) = need.iter().find(|c| !has(c)) {
        return Err(Error::Unavailable(format!(
            "the {c} controller is not available on the cgroup2 mount {}",
            mount.display()
        )));
    }
    Ok(Plan {
        version: 2,
        dirs: vec![Dir {
            path: mount.join(name),
            writes,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_group_with_all_limits() -> Result<(), Error> {
        let cs: Vec<String> = ["cpu", "memory", "pids"].map(String::from).to_vec();
        let limits = Limits {
            memory: Some(256 << 20),
            pids: Some(100),
            cpus: Some(1.5),
        };
        let p = plan(Path::new("/sys/fs/cgroup"), &cs, "twinbox-2-3", &limits)?;
        assert_eq!(p.dirs.len(), 1);
        assert_eq!(p.dirs[0].path, Path::new("/sys/fs/cgroup/twinbox-2-3"));
        let w: Vec<_> = p.dirs[0]
            .writes
            .iter()
            .map(|w| (w.file, w.value.as_str()))
            .collect();
        assert_eq!(
            w,
            vec![
                ("memory.max", "268435456"),
                ("memory.swap.max", "0"),
                ("pids.max", "100"),
                ("cpu.max", "150000 100000"),
            ]
        );
        let e = plan(Path::new("/x"), &[], "n", &limits).expect_err("no controllers");
        assert!(e.to_string().contains("memory controller"));
        Ok(())
    }
}
