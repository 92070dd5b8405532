//! What a container is made of: `ContainerConfig`, checked before anything
//! is created, so a bad value is an error and not a half-built box.

use std::path::PathBuf;
use std::time::Duration;

/// Errors of a configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command is empty.
    #[error("no command to run")]
    NoCommand,
    /// A string holds a NUL byte, which no system call can take.
    #[error("{0} holds a NUL byte")]
    Nul(&'static str),
    /// The rootfs is not a directory.
    #[error("rootfs {0}: not a directory")]
    Rootfs(PathBuf),
    /// A path overlayfs cannot take in its mount options.
    #[error("{0}: overlayfs cannot take a path with ',', ':' or '\\\\'")]
    OverlayPath(PathBuf),
    /// The scratch directory is missing.
    #[error("scratch directory {0}: not a directory")]
    Scratch(PathBuf),
    /// The working directory is not absolute.
    #[error("working directory {0:?}: must be an absolute path")]
    Cwd(String),
    /// An environment entry is not `KEY=VALUE`.
    #[error("environment entry {0:?}: want KEY=VALUE")]
    Env(String),
    /// The hostname is not a valid host name.
    #[error("hostname {0:?}: want 1-64 letters, digits, '-' or '.'")]
    Hostname(String),
    /// A limit is out of range.
    #[error("{0}")]
    Limit(String),
    /// A bind mount's source or box path cannot be used.
    #[error("volume {0}: {1}")]
    Bind(String, String),
}

/// Resource limits, enforced by cgroups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Memory in bytes (swap is not allowed on top).
    pub memory: Option<u64>,
    /// Most tasks (processes and threads) alive at once.
    pub pids: Option<u64>,
    /// CPU time as a number of CPUs (CFS quota over a 100 ms period).
    pub cpus: Option<f64>,
}

/// One container.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// The image's root file system: the read-only lower layer.
    pub rootfs: PathBuf,
    /// An existing host directory. Inside the box's own mount namespace a
    /// tmpfs is mounted on it to hold the writable layer, so the layer
    /// vanishes with the box and the host never sees it.
    pub scratch: PathBuf,
    /// Size of that tmpfs (default: the memory limit, or 1 GiB).
    pub writable_size: Option<u64>,
    /// The program and its arguments; a program without '/' is looked up
    /// in the box's `PATH`.
    pub argv: Vec<String>,
    /// Environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the box (created if missing).
    pub cwd: String,
    /// User inside the box: `""` (root), `uid[:gid]` or `name[:group]`
    /// from the image's /etc/passwd and /etc/group.
    pub user: String,
    /// Host name inside the box.
    pub hostname: String,
    /// Resource limits.
    pub limits: Limits,
    /// Wall-clock limit: the whole box is killed when it passes.
    pub timeout: Option<Duration>,
    /// Also a user namespace: root in the box is the caller outside, with
    /// capabilities only over the box's own namespaces.
    pub user_namespace: bool,
    /// The default seccomp profile (on unless turned off for a comparison).
    pub seccomp: bool,
    /// Where the workload's stdin, stdout and stderr go (default: the
    /// launcher's own).
    pub stdio: Stdio,
    /// Host paths bind-mounted into the box ([`crate::binds`]), in order.
    pub binds: Vec<Bind>,
}

/// A host file or directory bind-mounted into the box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (absolute, existing; followed on the host).
    pub source: PathBuf,
    /// Where it appears in the box: absolute, resolved inside the box's
    /// root (an image's symlinks never lead out of it).
    pub target: String,
    /// Read-only in the box.
    pub readonly: bool,
}

impl Bind {
    /// Checks what can be checked without the box: `source` an existing
    /// absolute path, `target` absolute, without `.` or `..` components,
    /// not `/`, not under the box's own /proc, /sys or /dev.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: &str| Err(Error::Bind(self.target.clone(), why.to_string()));
        let src = self.source.as_os_str().as_encoded_bytes();
        if !self.source.is_absolute() || src.contains(&0) {
            return bad("the host path must be absolute");
        }
        if std::fs::metadata(&self.source).is_err() {
            return Err(Error::Bind(
                self.target.clone(),
                format!("host path {} does not exist", self.source.display()),
            ));
        }
        check_box_path(&self.target).or_else(bad)
    }
}

/// Checks a volume's box path: absolute, without `.` or `..` components
/// or NUL, not `/`, not under the box's own /proc, /sys or /dev (mounted
/// over volumes). The error says why.
pub fn check_box_path(target: &str) -> Result<(), &'static str> {
    if !target.starts_with('/') || target.contains('\0') {
        return Err("the box path must be absolute");
    }
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err("the box path must not hold '.' or '..'");
    }
    match parts.first() {
        None => Err("the box path cannot be / (the box's root)"),
        Some(&("proc" | "sys" | "dev")) => {
            Err("the box's own /proc, /sys and /dev cover that path")
        }
        Some(_) => Ok(()),
    }
}

/// The workload's standard streams: descriptors of the launcher's that
/// become the box's fds 0, 1 and 2 (`None`: the launcher's own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    /// The box's stdin.
    pub stdin: Option<std::os::fd::RawFd>,
    /// The box's stdout.
    pub stdout: Option<std::os::fd::RawFd>,
    /// The box's stderr.
    pub stderr: Option<std::os::fd::RawFd>,
    /// stdin is a terminal's slave side: the workload starts a session and
    /// takes it as its controlling terminal.
    pub tty: bool,
    /// A new PTY inside the box, of (rows, columns) (0 unknown), for all
    /// three streams and as the controlling terminal (what `-t` gives;
    /// [`crate::pty`]); the launcher gets its master. Overrides the rest.
    pub pty: Option<(u16, u16)>,
}

impl ContainerConfig {
    /// A configuration with the defaults: root, `/`, hostname `twinbox`,
    /// no limits, seccomp on, no user namespace.
    pub fn new(rootfs: PathBuf, scratch: PathBuf, argv: Vec<String>) -> Self {
        Self {
            rootfs,
            scratch,
            writable_size: None,
            argv,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            hostname: "twinbox".into(),
            limits: Limits::default(),
            timeout: None,
            user_namespace: false,
            seccomp: true,
            stdio: Stdio::default(),
            binds: Vec::new(),
        }
    }

    /// Checks every field that does not need the host.
    pub fn validate(&self) -> Result<(), Error> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Error::NoCommand);
        }
        let nul = |s: &str| s.contains('\0');
        if self.argv.iter().any(|a| nul(a)) {
            return Err(Error::Nul("an argument"));
        }
        for e in &self.env {
            if nul(e) {
                return Err(Error::Nul("an environment entry"));
            }
            if e.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
                return Err(Error::Env(e.clone()));
            }
        }
        if nul(&self.user) {
            return Err(Error::Nul("the user"));
        }
        if !self.cwd.starts_with('/') || nul(&self.cwd) {
            return Err(Error::Cwd(self.cwd.clone()));
        }
        let h = &self.hostname;
        if h.is_empty()
            || h.len() > 64
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(Error::Hostname(h.clone()));
        }
        for p in [&self.rootfs, &self.scratch] {
            let s = p.as_os_str().as_encoded_bytes();
            if s.iter().any(|b| matches!(b, b',' | b':' | b'\\' | 0)) {
                return Err(Error::OverlayPath(p.clone()));
            }
        }
        if !self.rootfs.is_dir() {
            return Err(Error::Rootfs(self.rootfs.clone()));
        }
        if !self.scratch.is_dir() {
            return Err(Error::Scratch(self.scratch.clone()));
        }
        for b in &self.binds {
            b.validate()?;
        }
        let l = &self.limits;
        if l.memory.is_some_and(|m| m < 4 << 20) {
            return Err(Error::Limit("memory limit: at least 4 MiB".into()));
        }
        if l.pids == Some(0) {
            return Err(Error::Limit("pids limit: at least 1".into()));
        }
        if let Some(c) = l.cpus {
            if !(0.01..=4096.0).contains(&c) {
                return Err(Error::Limit(format!(
                    "cpus {c}: want a number from 0.01 to the host's CPUs"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> ContainerConfig {
        ContainerConfig::new("/".into(), "/tmp".into(), vec!["/bin/true".into()])
    }

    fn bind(source: &str, target: &str) -> Bind {
        Bind {
            source: source.into(),
            target: target.into(),
            readonly: false,
        }
    }

    #[test]
    fn takes_good_binds() {
        let mut c = ok();
        c.binds.push(bind("/tmp", "/data"));
        c.binds.push(bind("/tmp", "/a/b/c/"));
        c.binds.push(bind("/tmp", "/procs"));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn refuses_what_cannot_work() {
        assert!(ok().validate().is_ok());
        type Edit = fn(&mut ContainerConfig);
        let cases: Vec<(Edit, &str)> = vec![
            (|c| c.argv.clear(), "no command"),
            (|c| c.argv.push("a\0b".into()), "NUL"),
            (|c| c.env.push("NOEQUALS".into()), "KEY=VALUE"),
            (|c| c.env.push("=x".into()), "KEY=VALUE"),
            (|c| c.cwd = "relative".into(), "absolute"),
            (|c| c.hostname = "bad host".into(), "hostname"),
            (|c| c.hostname = "x".repeat(65), "hostname"),
            (|c| c.rootfs = "/a,lowerdir=/etc".into(), "overlayfs"),
            (
                |c| c.rootfs = "/definitely/not/here".into(),
                "not a directory",
            ),
            (|c| c.limits.memory = Some(1024), "4 MiB"),
            (|c| c.limits.pids = Some(0), "at least 1"),
            (|c| c.limits.cpus = Some(f64::NAN), "cpus"),
            (|c| c.limits.cpus = Some(0.0), "cpus"),
            (|c| c.binds.push(bind("/tmp", "relative")), "absolute"),
            (|c| c.binds.push(bind("tmp", "/x")), "absolute"),
            (
                |c| c.binds.push(bind("/definitely/not/here", "/x")),
                "exist",
            ),
            (|c| c.binds.push(bind("/tmp", "/a/../b")), "'..'"),
            (|c| c.binds.push(bind("/tmp", "/a/./b")), "'..'"),
            (|c| c.binds.push(bind("/tmp", "//")), "root"),
            (|c| c.binds.push(bind("/tmp", "/proc/x")), "/proc"),
            (|c| c.binds.push(bind("/tmp", "/dev")), "/proc"),
        ];
        for (edit, want) in cases {
            let mut c = ok();
            edit(&mut c);
            let e = c.validate().expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }
}
