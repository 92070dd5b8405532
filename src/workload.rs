//! A workload: what to run (image, argv, env, cwd, user) and within which
//! limits, resolved and validated from the command line and the image's
//! config. Both backends take the same `Workload`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use twinbox_images::{Image, Reference, Store};

use crate::cli::{Isolation, RunArgs};
use crate::size;

/// Errors of resolving a workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image name is invalid.
    #[error(transparent)]
    Reference(#[from] twinbox_images::reference::Error),
    /// The image is not in the store (or the store failed).
    #[error(transparent)]
    Store(#[from] twinbox_images::store::Error),
    /// A size is malformed.
    #[error("--memory")]
    Size(#[from] size::Error),
    /// A limit is out of range.
    #[error("{0}")]
    Limit(String),
    /// An environment variable is malformed.
    #[error("--env {0:?}: want KEY=VALUE or KEY, with a non-empty KEY without '=' or NUL")]
    Env(String),
    /// Neither the command line nor the image names a command.
    #[error("no command: the image has no entrypoint or cmd, give one after the image name")]
    NoCommand,
}

/// Limits on a box.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in bytes.
    pub memory: Option<u64>,
    /// CPUs.
    pub cpus: Option<f64>,
    /// Most tasks alive at once (containers only).
    pub pids: Option<u64>,
    /// Wall-clock limit.
    #[serde(serialize_with = "ser_duration", deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
}

fn ser_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let secs: Option<f64> = Option::deserialize(d)?;
    secs.map(|s| Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom))
        .transpose()
}

/// One workload, ready for a backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    /// Which box.
    pub isolation: Isolation,
    /// The image name.
    pub image: String,
    /// The image id (names its content: the packed rootfs is cached under it).
    pub image_id: String,
    /// Host path of the image's rootfs.
    pub rootfs: std::path::PathBuf,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Environment, `KEY=VALUE`, later entries overriding earlier ones.
    pub env: Vec<String>,
    /// Working directory inside the box.
    pub cwd: String,
    /// User inside the box (`uid[:gid]` or a name; empty is root).
    pub user: String,
    /// Limits.
    pub limits: Limits,
    /// The image's own command (entrypoint and cmd) and its `PATH`: what a
    /// VM snapshot of the image preloads.
    #[serde(skip_serializing, default)]
    pub image_command: (Vec<String>, String),
}

/// Smallest memory a box of each kind can work with.
fn min_memory(isolation: Isolation) -> u64 {
    match isolation {
        // A Linux guest needs room for its kernel and page tables.
        Isolation::Vm => 32 << 20,
        // Docker's floor.
        Isolation::Container => 6 << 20,
    }
}

/// The host's physical memory, from /proc/meminfo.
pub fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn host_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Checks and resolves the limits given on the command line.
pub fn limits(args: &RunArgs) -> Result<Limits, Error> {
    let memory = match &args.memory {
        None => None,
        Some(s) => {
            let bytes = size::parse(s)?;
            let min = min_memory(args.isolation);
            if bytes < min {
                return Err(Error::Limit(format!(
                    "--memory {s}: at least {} is needed for --isolation {:?}",
                    size::human(min),
                    args.isolation
                )));
            }
            if let Some(host) = host_memory().filter(|&h| bytes > h) {
                return Err(Error::Limit(format!(
                    "--memory {s}: more than this host has ({})",
                    size::human(host)
                )));
            }
            Some(bytes)
        }
    };
    let cpus = match &args.cpus {
        None => None,
        Some(s) => {
            let n: f64 = s
                .trim()
                .parse()
                .ok()
                .filter(|n: &f64| n.is_finite() && *n > 0.0)
                .ok_or_else(|| Error::Limit(format!("--cpus {s:?}: want a positive number")))?;
            if n > host_cpus() as f64 {
                return Err(Error::Limit(format!(
                    "--cpus {s}: this host has {} CPUs",
                    host_cpus()
                )));
            }
            if args.isolation == Isolation::Vm && n.fract() != 0.0 {
                return Err(Error::Limit(format!(
                    "--cpus {s}: a VM takes a whole number of vCPUs"
                )));
            }
            Some(n)
        }
    };
    let timeout = match &args.timeout {
        None => None,
        Some(s) => {
            let d = humantime::parse_duration(s)
                .map_err(|e| Error::Limit(format!("--timeout {s:?}: {e} (e.g. 30s, 5m, 500ms)")))?;
            if d.is_zero() {
                return Err(Error::Limit("--timeout must be more than zero".into()));
            }
            Some(d)
        }
    };
    let pids = match args.pids_limit {
        None => None,
        Some(0) => return Err(Error::Limit("--pids-limit must be at least 1".into())),
        Some(_) if args.isolation == Isolation::Vm => {
            return Err(Error::Limit(
                "--pids-limit applies to containers: a VM's processes live in its own kernel"
                    .into(),
            ))
        }
        Some(n) => Some(n),
    };
    if args.userns && args.isolation == Isolation::Vm {
        return Err(Error::Limit(
            "--userns applies to containers: a VM has no host user namespace".into(),
        ));
    }
    Ok(Limits {
        memory,
        cpus,
        pids,
        timeout,
    })
}

/// Merges the image's env with `-e` settings (Docker's rules: `KEY=VALUE`
/// sets, bare `KEY` passes the host's value if it has one).
pub fn merge_env(image_env: &[String], args: &[String]) -> Result<Vec<String>, Error> {
    let mut env: Vec<String> = image_env.to_vec();
    for a in args {
        let (key, value) = match a.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (a.as_str(), std::env::var(a).ok()),
        };
        if key.is_empty() || a.contains('\0') {
            return Err(Error::Env(a.clone()));
        }
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        if let Some(v) = value {
            env.push(format!("{key}={v}"));
        }
    }
    Ok(env)
}

/// Resolves a workload from `twinbox run` arguments and the store.
pub fn resolve(store: &Store, args: &RunArgs) -> Result<Workload, Error> {
    let limits = limits(args)?;
    let image: Image = store.get(&Reference::parse(&args.image)?)?;
    let c = &image.meta.config;
    let mut argv = c.entrypoint.clone();
    argv.extend(if args.command.is_empty() {
        c.cmd.clone()
    } else {
        args.command.clone()
    });
    if argv.is_empty() {
        return Err(Error::NoCommand);
    }
    Ok(Workload {
        isolation: args.isolation,
        image: image.meta.name.clone(),
        image_id: image.meta.id.clone(),
        rootfs: image.rootfs(),
        argv,
        env: merge_env(&c.env, &args.env)?,
        cwd: match &args.workdir {
            Some(d) if !d.starts_with('/') => {
                return Err(Error::Limit(format!(
                    "--workdir {d:?}: want an absolute path"
                )))
            }
            Some(d) => d.clone(),
            None if c.workdir.is_empty() => "/".into(),
            None => c.workdir.clone(),
        },
        user: args.user.clone().unwrap_or_else(|| c.user.clone()),
        limits,
        image_command: (
            c.entrypoint.iter().chain(&c.cmd).cloned().collect(),
            c.env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .to_string(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_validates() -> Result<(), Error> {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let env = merge_env(&base, &["A=2".into(), "B=x=y".into()])?;
        assert_eq!(env, vec!["PATH=/bin", "A=2", "B=x=y"]);
        let env = merge_env(&base, &["TWINBOX_SURELY_UNSET_VAR".into()])?;
        assert_eq!(env, base);
        assert!(merge_env(&base, &["=v".into()]).is_err());
        Ok(())
    }
}
