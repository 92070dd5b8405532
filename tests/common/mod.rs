//! Helpers for the end-to-end tests: run the `twinbox` binary against a
//! private store and cache, and check what a run left behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod pty;
use std::process::{Command, Output};

/// A private twinbox home (store) and cache for one test.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// Runs twinbox with `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_twinbox"))
            .args(args)
            .env("TWINBOX_HOME", self.home())
            .env("TWINBOX_CACHE", self.cache())
            .output()
            .expect("run twinbox")
    }
    /// Names of the images in the store.
    pub fn images(&self) -> Vec<String> {
        let dir = self.home().join("images");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    /// Entries left in the store's staging area.
    pub fn leftovers(&self) -> usize {
        std::fs::read_dir(self.home().join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Env {
    /// A test that failed half-way may leave boxes running: their
    /// supervisors (whose environment names this home) are killed, and
    /// their boxes with them.
    fn drop(&mut self) {
        let want = format!("TWINBOX_HOME={}", self.home().display());
        let Ok(d) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in d.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            let mine = std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
                .unwrap_or(false);
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if mine && cmd.windows(9).any(|w| w == b"supervise") {
                // SAFETY: kill takes integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// Copies the tree at `from` to `to` (files with their modes, symlinks as
/// symlinks, directories).
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if meta.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        std::fs::set_permissions(
            to,
            std::fs::Permissions::from_mode(meta.permissions().mode()),
        )
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// What is in `dir` (for checks that a run left nothing behind).
pub fn entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect())
}

/// Copies the directory `from` (its plain files) to `to`, keeping modes
/// and the files' holes (`SEEK_DATA`/`SEEK_HOLE`): a snapshot's memory file
/// is mostly holes. Busybox's `cp` (the nested machine's) has no
/// `--sparse`.
pub fn copy_dir_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileExt, PermissionsExt};
    std::fs::create_dir(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let src = std::fs::File::open(e.path())?;
        let meta = src.metadata()?;
        let dst = std::fs::File::create(to.join(e.file_name()))?;
        dst.set_permissions(std::fs::Permissions::from_mode(meta.permissions().mode()))?;
        let len = meta.len() as i64;
        let mut at: i64 = 0;
        let mut buf = vec![0u8; 1 << 20];
        while at < len {
            // SAFETY: lseek on an open descriptor; a negative result is an
            // error (ENXIO: no data after `at`).
            let data = unsafe { libc::lseek(src.as_raw_fd(), at, libc::SEEK_DATA) };
            if data < 0 {
                break;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
            let end = if hole < 0 { len } else { hole };
            let mut off = data;
            while off < end {
                let n = ((end - off) as usize).min(buf.len());
                src.read_exact_at(&mut buf[..n], off as u64)?;
                dst.write_all_at(&buf[..n], off as u64)?;
                off += n as i64;
            }
            at = end;
        }
        dst.set_len(meta.len())?;
    }
    Ok(())
}

/// cgroup directories named after launcher `pid`, anywhere in the host's
/// cgroup trees (four levels deep covers nesting under the launcher's own).
pub fn cgroups_of(pid: u32) -> Vec<PathBuf> {
    let prefix = format!("twinbox-{pid}-");
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(e.path());
            } else if depth < 4 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found
}

/// Host processes whose command line holds `marker`.
pub fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .map(|c| {
                            String::from_utf8_lossy(&c)
                                .replace('\0', " ")
                                .contains(marker)
                        })
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Host mounts that name the store or an overlay of ours.
pub fn host_mounts_of(env: &Env) -> Vec<String> {
    let home = env.home().to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&home))
        .map(String::from)
        .collect()
}

/// An HTTP/1.0 GET of `path` on `port`: the status line and body length.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(String, usize)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    std::io::Write::write_all(&mut s, req.as_bytes())?;
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut all)?;
    let text = String::from_utf8_lossy(&all);
    let status = text.lines().next().unwrap_or("").to_string();
    let body = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| all.len() - i - 4)
        .unwrap_or(0);
    Ok((status, body))
}

/// Builds `tests/udp_echo/echo.c`, a libc-free static UDP echo server
/// (busybox has none), as `dir/udp-echo`; its path, or `None` if gcc
/// cannot build it.
pub fn udp_echo(dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/udp_echo/echo.c");
    let bin = dir.join("udp-echo");
    let ok = Command::new("gcc")
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-s",
            "-O2",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(bin)
}

/// Sends `what` from `c` to 127.0.0.1:`port` and reads one answer, which
/// must come from that address; `None` if none comes in `wait`.
pub fn udp_ask(
    c: &std::net::UdpSocket,
    port: u16,
    what: &[u8],
    wait: std::time::Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    c.set_read_timeout(Some(wait))?;
    c.send_to(what, ("127.0.0.1", port))?;
    let mut buf = vec![0u8; 65536];
    match c.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(
                from,
                std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                "an answer from elsewhere"
            );
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether `tool` is a file in a directory of `$PATH`.
#[allow(dead_code)]
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Detaches every mount at or under `dir`, deepest first (what an engine
/// left mounted under its private directories when a test failed).
#[allow(dead_code)]
pub fn unmount_under(dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut ours: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&dir))
        .collect();
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in ours {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The v1 hierarchies' roots (`/sys/fs/cgroup/<controller>`), every one
/// mounted, so a leftover check misses none (cpuacct is its own here).
#[allow(dead_code)]
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n != "unified"))
                .collect()
        })
        .unwrap_or_default()
}
