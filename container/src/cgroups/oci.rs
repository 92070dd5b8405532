//! The groups of a box whose path is given (an OCI bundle's
//! `linux.cgroupsPath`, e.g. Docker's `/docker/<id>`) instead of named by
//! the launcher, with an OCI bundle's resources.
//!
//! An absolute path is taken from each hierarchy's root, a relative one
//! from this process's own group there (as runc does). On v1 and hybrid
//! hosts the box gets a group in every hierarchy an engine reads or
//! limits through (memory, cpu, cpuacct, pids, devices, freezer, blkio),
//! made with their parents where missing; on v2 one group. The groups
//! outlive the process that made them (an OCI `create` returns while the
//! box lives): [`super::Cgroup::keep`] hands their paths to the caller,
//! who removes them at `delete` ([`remove`]).

use std::path::{Path, PathBuf};

use super::{Dir, Error, Layout, Plan, Write};

/// The v1 hierarchies a box's group is made in, where mounted.
pub const V1_CONTROLLERS: [&str; 7] = [
    "memory", "cpu", "cpuacct", "pids", "devices", "freezer", "blkio",
];

/// One rule of the v1 device controller, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    /// Allow (else deny).
    pub allow: bool,
    /// `a` (all), `c` or `b`.
    pub kind: char,
    /// Major number (`None`: any).
    pub major: Option<i64>,
    /// Minor number (`None`: any).
    pub minor: Option<i64>,
    /// Some of `rwm`.
    pub access: String,
}

impl DeviceRule {
    /// The line written to `devices.allow` or `devices.deny`.
    pub fn line(&self) -> String {
        if self.kind == 'a' {
            return format!("a *:* {}", self.access);
        }
        let n = |v: Option<i64>| v.map_or("*".to_string(), |v| v.to_string());
        format!(
            "{} {}:{} {}",
            self.kind,
            n(self.major),
            n(self.minor),
            self.access
        )
    }
}

/// An OCI bundle's `linux.resources`, as far as this driver applies them.
/// Zero or absent values are left as the kernel has them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// `memory.limit`, bytes.
    pub memory: Option<i64>,
    /// `memory.swap`: memory plus swap, bytes (-1 unlimited).
    pub memory_swap: Option<i64>,
    /// `memory.reservation`, bytes.
    pub memory_reservation: Option<i64>,
    /// `memory.disableOOMKiller`.
    pub disable_oom_killer: bool,
    /// `cpu.shares`.
    pub cpu_shares: Option<u64>,
    /// `cpu.quota`, microseconds per period (-1 unlimited).
    pub cpu_quota: Option<i64>,
    /// `cpu.period`, microseconds.
    pub cpu_period: Option<u64>,
    /// `pids.limit` (0 or below: unlimited).
    pub pids: Option<i64>,
    /// `devices`, in order.
    pub devices: Vec<DeviceRule>,
}

fn w(file: &'static str, value: String) -> Write {
    Write {
        file,
        value,
        optional: false,
    }
}

/// Where a group at `path` lies under the hierarchy `mount`; `own` is
/// this process's group there.
fn under(mount: &Path, path: &str, own: &str) -> PathBuf {
    let rel = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", own.trim_end_matches('/'))
    };
    let mut p = mount.to_path_buf();
    for part in rel
        .split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
    {
        p.push(part);
    }
    p
}

fn v1_writes(controller: &str, r: &Resources) -> Vec<Write> {
    let mut v = Vec::new();
    match controller {
        "memory" => {
            if let Some(m) = r.memory.filter(|m| *m > 0) {
                v.push(w("memory.limit_in_bytes", m.to_string()));
            }
            if let Some(s) = r.memory_swap.filter(|s| *s != 0) {
                v.push(Write {
                    optional: true,
                    ..w("memory.memsw.limit_in_bytes", s.to_string())
                });
            }
            if let Some(m) = r.memory_reservation.filter(|m| *m > 0) {
                v.push(w("memory.soft_limit_in_bytes", m.to_string()));
            }
            if r.disable_oom_killer {
                v.push(w("memory.oom_control", "1".into()));
            }
        }
        "cpu" => {
            if let Some(s) = r.cpu_shares.filter(|s| *s > 0) {
                v.push(w("cpu.shares", s.to_string()));
            }
            if let Some(p) = r.cpu_period.filter(|p| *p > 0) {
                v.push(w("cpu.cfs_period_us", p.to_string()));
            }
            if let Some(q) = r.cpu_quota.filter(|q| *q != 0) {
                v.push(w("cpu.cfs_quota_us", q.to_string()));
            }
        }
        "pids" => {
            if let Some(p) = r.pids {
                let value = if p > 0 { p.to_string() } else { "max".into() };
                v.push(w("pids.max", value));
            }
        }
        "devices" => {
            for d in &r.devices {
                let file = if d.allow {
                    "devices.allow"
                } else {
                    "devices.deny"
                };
                v.push(w(file, d.line()));
            }
        }
        _ => {}
    }
    v
}

fn v2_writes(r: &Resources) -> Vec<Write> {
    let mut v = Vec::new();
    if let Some(m) = r.memory.filter(|m| *m > 0) {
        v.push(w("memory.max", m.to_string()));
        if let Some(s) = r.memory_swap.filter(|s| *s != 0) {
            let swap = if s < 0 {
                "max".to_string()
            } else {
                s.saturating_sub(m).max(0).to_string()
            };
            v.push(Write {
                optional: true,
                ..w("memory.swap.max", swap)
            });
        }
    }
    if let Some(m) = r.memory_reservation.filter(|m| *m > 0) {
        v.push(w("memory.low", m.to_string()));
    }
    if let Some(s) = r.cpu_shares.filter(|s| *s > 0) {
        // runc's conversion of v1 shares (2-262144) to v2 weight (1-10000).
        let weight = 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142;
        v.push(w("cpu.weight", weight.to_string()));
    }
    if r.cpu_quota.is_some_and(|q| q != 0) || r.cpu_period.is_some_and(|p| p > 0) {
        let quota = match r.cpu_quota {
            Some(q) if q > 0 => q.to_string(),
            _ => "max".into(),
        };
        let period = r.cpu_period.filter(|p| *p > 0).unwrap_or(100_000);
        v.push(w("cpu.max", format!("{quota} {period}")));
    }
    if let Some(p) = r.pids {
        let value = if p > 0 { p.to_string() } else { "max".into() };
        v.push(w("pids.max", value));
    }
    v
}

/// The plan for a group at `path` with `r` on `layout`; `own` maps a v1
/// controller (or `""` for v2) to this process's group there.
pub fn plan(
    layout: &Layout,
    path: &str,
    r: &Resources,
    own: &dyn Fn(&str) -> String,
) -> Result<Plan, Error> {
    match layout {
        Layout::V2 { mount, .. } => {
            if !r.devices.is_empty() && r.devices.iter().any(|d| d.kind != 'a' || !d.allow) {
                // Device rules on v2 are an eBPF program; not made here.
                return Err(Error::Unavailable(
                    "device rules on cgroup v2 (an eBPF program) are not supported".into(),
                ));
            }
            Ok(Plan {
                version: 2,
                dirs: vec![Dir {
                    path: under(mount, path, &own("")),
                    writes: v2_writes(r),
                }],
            })
        }
        Layout::V1 { controllers }
        | Layout::Hybrid {
            v1: controllers, ..
        } => {
            let mut dirs: Vec<Dir> = Vec::new();
            for c in V1_CONTROLLERS {
                let Some((_, mount)) = controllers.iter().find(|(m, _)| m == c) else {
                    let needed = match c {
                        "memory" => r.memory.is_some_and(|m| m > 0),
                        "pids" => r.pids.is_some_and(|p| p > 0),
                        "devices" => !r.devices.is_empty(),
                        "cpu" => r.cpu_quota.is_some_and(|q| q > 0),
                        _ => false,
                    };
                    if needed {
                        return Err(Error::Unavailable(format!(
                            "the {c} controller is not mounted, so its limit cannot be set"
                        )));
                    }
                    continue;
                };
                let dir = under(mount, path, &own(c));
                let writes = v1_writes(c, r);
                match dirs.iter_mut().find(|d| d.path == dir) {
                    Some(d) => d.writes.extend(writes),
                    None => dirs.push(Dir { path: dir, writes }),
                }
            }
            if dirs.is_empty() {
                return Err(Error::Unavailable(
                    "no cgroup v1 hierarchy is mounted".into(),
                ));
            }
            Ok(Plan { version: 1, dirs })
        }
        Layout::None => Err(Error::Unavailable(
            "no cgroup file system is mounted".into(),
        )),
    }
}

/// Removes a box's groups (their paths as [`super::Cgroup::keep`] gave
/// them), killing what is left in them; the parents stay.
pub fn remove(paths: &[PathBuf]) -> Result<(), Error> {
    let dirs: Vec<Dir> = paths
        .iter()
        .map(|p| Dir {
            path: p.clone(),
            writes: Vec::new(),
        })
        .collect();
    super::remove_dirs(&dirs)
}

/// The pids (as the host sees them) in a box's groups: those of the
/// first that can be read.
pub fn pids(paths: &[PathBuf]) -> Vec<i32> {
    paths
        .iter()
        .find_map(|p| std::fs::read_to_string(p.join("cgroup.procs")).ok())
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hybrid() -> Layout {
        Layout::Hybrid {
            v1: ["cpu", "cpuacct", "memory", "pids", "devices"]
                .iter()
                .map(|c| (c.to_string(), PathBuf::from(format!("/sys/fs/cgroup/{c}"))))
                .collect(),
            v2_mount: "/sys/fs/cgroup/unified".into(),
            v2_controllers: vec![],
        }
    }

    #[test]
    fn absolute_paths_start_at_the_root_and_relative_ones_at_our_group() -> Result<(), Error> {
        let r = Resources {
            memory: Some(64 << 20),
            memory_swap: Some(128 << 20),
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            pids: Some(10),
            devices: vec![
                DeviceRule {
                    allow: false,
                    kind: 'a',
                    major: None,
                    minor: None,
                    access: "rwm".into(),
                },
                DeviceRule {
                    allow: true,
                    kind: 'c',
                    major: Some(1),
                    minor: Some(3),
                    access: "rwm".into(),
                },
            ],
            ..Resources::default()
        };
        let own = |c: &str| {
            if c == "memory" {
                "/process_api/x".to_string()
            } else {
                "/".to_string()
            }
        };
        let p = plan(&hybrid(), "/docker/abc", &r, &own)?;
        let mem = &p.dirs[0];
        assert_eq!(mem.path, PathBuf::from("/sys/fs/cgroup/memory/docker/abc"));
        assert_eq!(mem.writes[0].value, (64u64 << 20).to_string());
        assert_eq!(mem.writes[1].file, "memory.memsw.limit_in_bytes");
        let dev = p
            .dirs
            .iter()
            .find(|d| d.path.ends_with("devices/docker/abc"));
        let lines: Vec<_> = dev
            .map(|d| d.writes.iter().map(|w| (w.file, w.value.clone())).collect())
            .unwrap_or_default();
        assert_eq!(
            lines,
            vec![
                ("devices.deny", "a *:* rwm".to_string()),
                ("devices.allow", "c 1:3 rwm".to_string())
            ]
        );
        let rel = plan(&hybrid(), "box/../1", &Resources::default(), &own)?;
        assert_eq!(
            rel.dirs[0].path,
            PathBuf::from("/sys/fs/cgroup/memory/process_api/x/box/1"),
            "'..' never climbs"
        );
        let v2 = Layout::V2 {
            mount: "/sys/fs/cgroup".into(),
            controllers: vec![],
        };
        let p = plan(
            &v2,
            "/a",
            &Resources {
                devices: vec![],
                ..r
            },
            &|_| "/".into(),
        )?;
        let files: Vec<_> = p.dirs[0]
            .writes
            .iter()
            .map(|w| (w.file, w.value.as_str()))
            .collect();
        assert!(files.contains(&("memory.swap.max", "67108864")));
        assert!(files.contains(&("cpu.max", "50000 100000")));
        assert!(files.contains(&("cpu.weight", "20")));
        Ok(())
    }
}
