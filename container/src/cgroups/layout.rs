//! Which cgroup layout the host has, read from `/proc/self/mountinfo`.
//!
//! - **v2** (unified): one `cgroup2` mount at `/sys/fs/cgroup`.
//! - **v1** (legacy): one `cgroup` mount per controller (or group of them).
//! - **hybrid**: v1 controllers plus a `cgroup2` mount (usually
//!   `/sys/fs/cgroup/unified`) that holds few or no controllers. crun refuses
//!   this layout; the launcher must use the v1 hierarchies for limits here.

use std::fmt;
use std::path::{Path, PathBuf};

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Unified hierarchy only.
    V2 {
        /// Its mount point.
        mount: PathBuf,
        /// Controllers enabled at its root.
        controllers: Vec<String>,
    },
    /// Per-controller v1 hierarchies only.
    V1 {
        /// (controller, mount point).
        controllers: Vec<(String, PathBuf)>,
    },
    /// v1 controllers and a v2 mount beside them.
    Hybrid {
        /// (controller, mount point) of the v1 hierarchies.
        v1: Vec<(String, PathBuf)>,
        /// The v2 mount.
        v2_mount: PathBuf,
        /// Controllers the v2 mount holds.
        v2_controllers: Vec<String>,
    },
    /// No cgroup file system is mounted.
    None,
}

const V1_CONTROLLERS: [&str; 14] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
];

/// Reads the layout of this process's mount namespace.
pub fn detect() -> std::io::Result<Layout> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse(&mountinfo, |p| {
        std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
    }))
}

/// Parses mountinfo text; `read_controllers` reads a v2 mount's
/// `cgroup.controllers`.
pub fn parse(mountinfo: &str, read_controllers: impl Fn(&Path) -> String) -> Layout {
    let mut v1: Vec<(String, PathBuf)> = Vec::new();
    let mut v2: Option<PathBuf> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount = left.split_whitespace().nth(4).map(PathBuf::from);
        let mut r = right.split_whitespace();
        let (fstype, _source, options) = (r.next(), r.next(), r.next().unwrap_or(""));
        match (fstype, mount) {
            // Prefer the canonical mount, then the shortest, if there are several.
            (Some("cgroup2"), Some(m))
                if v2.as_ref().is_none_or(|cur| {
                    m.as_path() == Path::new("/sys/fs/cgroup")
                        || cur.components().count() > m.components().count()
                }) =>
            {
                v2 = Some(m);
            }
            (Some("cgroup"), Some(m)) => {
                for opt in options.split(',') {
                    if V1_CONTROLLERS.contains(&opt) && !v1.iter().any(|(c, _)| c == opt) {
                        v1.push((opt.to_string(), m.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    let controllers = |m: &Path| -> Vec<String> {
        read_controllers(m)
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    match (v1.is_empty(), v2) {
        (true, Some(m)) => Layout::V2 {
            controllers: controllers(&m),
            mount: m,
        },
        (false, Some(m)) => Layout::Hybrid {
            v1,
            v2_controllers: controllers(&m),
            v2_mount: m,
        },
        (false, None) => Layout::V1 { controllers: v1 },
        (true, None) => Layout::None,
    }
}

impl Layout {
    /// Where the named controller can be used, if anywhere.
    pub fn has(&self, controller: &str) -> bool {
        match self {
            Self::V2 { controllers, .. } => controllers.iter().any(|c| c == controller),
            Self::V1 { controllers } => controllers.iter().any(|(c, _)| c == controller),
            Self::Hybrid {
                v1, v2_controllers, ..
            } => {
                v1.iter().any(|(c, _)| c == controller)
                    || v2_controllers.iter().any(|c| c == controller)
            }
            Self::None => false,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |v: &[(String, PathBuf)]| {
            v.iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(" ")
            }
        };
        match self {
            Self::V2 { mount, controllers } => write!(
                f,
                "v2 at {} (controllers: {})",
                mount.display(),
                list(controllers)
            ),
            Self::V1 { controllers } => write!(f, "v1 (controllers: {})", names(controllers)),
            Self::Hybrid {
                v1,
                v2_mount,
                v2_controllers,
            } => write!(
                f,
                "hybrid: v1 controllers ({}) plus v2 at {} (controllers: {})",
                names(v1),
                v2_mount.display(),
                list(v2_controllers)
            ),
            Self::None => f.write_str("no cgroup file system mounted"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn recognizes_hybrid_v1_and_v2() {
        let l = parse(HYBRID, |_| String::new());
        assert!(matches!(&l, Layout::Hybrid { v1, v2_mount, v2_controllers }
            if v1.len() == 3 && v2_mount == Path::new("/sys/fs/cgroup/unified") && v2_controllers.is_empty()));
        assert!(l.has("memory") && l.has("pids") && !l.has("io"));
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = parse(v2, |_| "cpu memory pids".into());
        assert!(matches!(&l, Layout::V2 { controllers, .. } if controllers.len() == 3));
        let v1: String = HYBRID
            .lines()
            .filter(|l| !l.contains("cgroup2"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(matches!(parse(&v1, |_| String::new()), Layout::V1 { .. }));
        assert_eq!(parse("", |_| String::new()), Layout::None);
    }
}
