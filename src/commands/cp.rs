//! `twinbox cp BOX:PATH HOST_PATH` and `twinbox cp HOST_PATH BOX:PATH`,
//! Docker's forms, for a running box of either kind, placed as `docker
//! cp` places them: into an existing directory under the source's name
//! (into it directly when the source ends in `/.`, its contents), else at
//! the path named.
//!
//! A container box: its root is its first process's `/proc/<pid>/root`,
//! opened once (the pid checked to be the box's, by its parent the
//! supervisor and a pidfd held across the open), and every box path is
//! resolved inside it ([`crate::boxfs`]).
//!
//! A VM box: its files are in its guest, reached through the guest agent
//! on the VM's vsock socket (`CopyOut`, `CopyIn`): the guest resolves box
//! paths and walks or writes the tree there; the host writes or reads its
//! side with the same code as for a container (`twinbox_agent::copy`),
//! and checks everything the guest sends against the tree's shape and
//! limits before writing a byte of it.
//!
//! A stopped box has nothing to copy: its writable layer was a tmpfs
//! inside the box (a container's) or its guest (a VM's) and went with it,
//! and the image underneath is shared by every box of it.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use twinbox_agent::client::{connect_vm, Client};
use twinbox_agent::copy::{self as tree, At, FsSink, Policy};
use twinbox_agent::tree::Limits;
use twinbox_images::confined::{self, Root};
use twinbox_images::Store;

use crate::boxes::control;
use crate::boxes::record::{Record, Status};
use crate::boxes::store::Boxes;
use crate::boxfs;
use crate::cli::Isolation;

/// Longest a VM copy waits for the guest to send or take anything.
const GUEST_IDLE: Duration = Duration::from_secs(60);

/// What lands on the host: the caller's, without set-id bits.
const TO_HOST: Policy = Policy {
    owner: None,
    mode_mask: 0o1777,
};

/// `BOX:PATH` as Docker tells it from a host path: a colon, and no `/`
/// before it (so `./a:b` and `/a:b` are host paths).
fn box_arg(s: &str) -> Option<(&str, &str)> {
    if s.starts_with('/') || s.starts_with('.') {
        return None;
    }
    let (name, path) = s.split_once(':')?;
    (!name.is_empty() && !name.contains('/')).then_some((name, path))
}

/// A source ending in `/.` (or `.` itself): its contents are copied.
fn contents(path: &str) -> bool {
    path == "." || path.ends_with("/.")
}

/// Field `n` (1-based) of `/proc/<pid>/stat`.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split(' ').nth(n - 3).map(String::from)
}

/// uid 0 and gid 0 of the box as the host sees them.
fn box_root_ids(pid: i32) -> (u32, u32) {
    let zero_of = |file: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let f: Vec<u32> = l
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    (f.len() == 3 && f[0] == 0).then(|| f[1])
                })
            })
            .unwrap_or(0)
    };
    (zero_of("uid_map"), zero_of("gid_map"))
}

/// A stopped box's error: its files went with it.
fn not_running(rec: &Record) -> anyhow::Error {
    let (kind, place) = match rec.workload.isolation {
        Isolation::Vm => ("VM", "its guest"),
        Isolation::Container => ("container", "the box"),
    };
    anyhow::anyhow!(
        "box {} is not running ({}): a {kind} box's files live in a tmpfs inside {place}, gone when it stops; cp needs it running",
        rec.name,
        rec.status_text()
    )
}

/// The root of running container box `rec`, with its first process's pid.
fn open_root(rec: &Record) -> Result<(Root, i32)> {
    if rec.state.status != Status::Running {
        return Err(not_running(rec));
    }
    let (Some(pid), Some(sup)) = (rec.state.pid, rec.state.supervisor) else {
        bail!("box {} has no process on record", rec.name);
    };
    // SAFETY: pidfd_open takes a pid and flags; a valid result is a new
    // descriptor we own.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if raw < 0 {
        bail!("box {}: its process {pid} is gone", rec.name);
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    if stat_field(pid, 4).and_then(|p| p.parse::<i32>().ok()) != Some(sup) {
        bail!("box {}: process {pid} is no longer the box's", rec.name);
    }
    let root = Root::open(Path::new(&format!("/proc/{pid}/root")))
        .with_context(|| format!("opening box {}'s root", rec.name))?;
    // The pid was the box's when checked and still is now: the root
    // opened between is the box's.
    // SAFETY: pidfd_send_signal with signal 0 only checks; no pointers.
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    if !alive {
        bail!("box {} stopped", rec.name);
    }
    Ok((root, pid))
}

/// A connection to running VM box `rec`'s guest agent, greeted.
fn open_agent(b: &Boxes, rec: &Record) -> Result<Client<UnixStream>> {
    if rec.state.status != Status::Running {
        return Err(not_running(rec));
    }
    let dir = b.dir(&rec.id);
    let reach = || -> Result<Client<UnixStream>> {
        let d = control::open_dir(&dir)?;
        let sock = control::short_path(&dir.join("vsock.sock"), d.as_raw_fd());
        let s = connect_vm(&sock, twinbox_agent::PORT)?;
        s.set_read_timeout(Some(GUEST_IDLE))?;
        s.set_write_timeout(Some(GUEST_IDLE))?;
        Ok(Client::hello(s)?)
    };
    reach().with_context(|| format!("reaching box {}'s guest agent", rec.name))
}

/// `twinbox cp SRC DST`.
pub fn run(store: &Store, src: &str, dst: &str) -> Result<u8> {
    let b = Boxes::open(store.home())?;
    match (box_arg(src), box_arg(dst)) {
        (Some(_), Some(_)) => bail!("copying between boxes is not supported"),
        (None, None) => bail!("one of SRC and DST must be BOX:PATH"),
        (Some((name, path)), None) => {
            let rec = b.resolve(name)?;
            match rec.workload.isolation {
                Isolation::Container => {
                    let (root, _) = open_root(&rec)?;
                    copy_out(&root, name, path, Path::new(dst))?;
                }
                Isolation::Vm => {
                    let mut agent = open_agent(&b, &rec)?;
                    vm_copy_out(&mut agent, name, path, Path::new(dst))?;
                }
            }
        }
        (None, Some((name, path))) => {
            let rec = b.resolve(name)?;
            match rec.workload.isolation {
                Isolation::Container => {
                    let (root, pid) = open_root(&rec)?;
                    let owner = nix::unistd::geteuid().is_root().then(|| box_root_ids(pid));
                    copy_in(src, &root, name, path, owner)?;
                }
                Isolation::Vm => {
                    let mut agent = open_agent(&b, &rec)?;
                    vm_copy_in(&mut agent, src, name, path)?;
                }
            }
        }
    }
    Ok(0)
}

/// Where a copy out of a box goes on the host: into `dst` under the
/// source's name if `dst` is a directory (into `dst` itself for `SRC/.`),
/// else at `dst`. The directory, the name in it, and the path for messages.
fn host_target(
    dst: &Path,
    src_name: &OsStr,
    contents: bool,
) -> Result<(OwnedFd, OsString, PathBuf)> {
    Ok(match boxfs::host_dir(dst) {
        Some(fd) if contents => (fd, ".".into(), dst.to_path_buf()),
        Some(fd) => (fd, src_name.to_os_string(), dst.join(src_name)),
        None => {
            let (fd, n) = boxfs::host_parent(dst)?;
            (fd, n, dst.to_path_buf())
        }
    })
}

/// A host source: its directory and name, or, for `SRC/.`, the directory
/// it names (followed) and `.`.
fn host_source(src: &str) -> Result<(OwnedFd, OsString)> {
    let p = Path::new(src);
    if contents(src) {
        return Ok((boxfs::host_contents_dir(p)?, ".".into()));
    }
    Ok(boxfs::host_parent(p)?)
}

/// A box path without its leading `/`, `..` refused (as the box's root
/// takes it), and its last component; the root itself is refused.
fn box_rel(path: &str) -> Result<(PathBuf, OsString)> {
    let rel = confined::normalize(Path::new(path)).map_err(boxfs::Error::from)?;
    let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
        bail!("copying a box's whole root is not supported: name a path in it");
    };
    Ok((rel, name))
}

fn copy_out(root: &Root, name: &str, path: &str, dst: &Path) -> Result<()> {
    let src_path = PathBuf::from(format!("{name}:{path}"));
    let (_, sname) = box_rel(path)?;
    let (sfd, sat): (OwnedFd, OsString) = if contents(path) {
        (boxfs::box_contents_dir(root, path, &src_path)?, ".".into())
    } else {
        boxfs::box_parent(root, path)?.ok_or_else(|| anyhow::anyhow!("{name}:{path}: no name"))?
    };
    let (dfd, dname, dst_path) = host_target(dst, &sname, contents(path))?;
    boxfs::copy(
        &At {
            dir: sfd.as_fd(),
            name: &sat,
        },
        &src_path,
        &At {
            dir: dfd.as_fd(),
            name: &dname,
        },
        &dst_path,
        &TO_HOST,
    )?;
    Ok(())
}

fn copy_in(
    src: &str,
    root: &Root,
    name: &str,
    path: &str,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let (sfd, sname) = host_source(src)?;
    let (dfd, dname, dst_path) = match boxfs::box_dir(root, path)? {
        Some(fd) if contents(src) => (fd, ".".into(), PathBuf::from(format!("{name}:{path}"))),
        Some(fd) => {
            let p = PathBuf::from(format!("{name}:{path}")).join(&sname);
            (fd, sname.clone(), p)
        }
        None => {
            let Some((fd, n)) = boxfs::box_parent(root, path)? else {
                bail!("{name}:{path}: not a directory");
            };
            (fd, n, PathBuf::from(format!("{name}:{path}")))
        }
    };
    boxfs::copy(
        &At {
            dir: sfd.as_fd(),
            name: &sname,
        },
        Path::new(src),
        &At {
            dir: dfd.as_fd(),
            name: &dname,
        },
        &dst_path,
        &Policy {
            owner,
            mode_mask: 0o7777,
        },
    )?;
    Ok(())
}

/// A VM copy's error for the user: the guest's reason names the guest
/// path first, so it reads as the container's does (`web:/x: ...`).
fn from_guest(name: &str, e: tree::Error) -> anyhow::Error {
    match e {
        tree::Error::Peer(m) if m.starts_with('/') => {
            anyhow::anyhow!("{name}:{}", tree::escape(&m))
        }
        tree::Error::Peer(m) => anyhow::anyhow!("{name}: {}", tree::escape(&m)),
        e => anyhow::Error::new(e),
    }
}

fn vm_copy_out(agent: &mut Client<UnixStream>, name: &str, path: &str, dst: &Path) -> Result<()> {
    let (rel, sname) = box_rel(path)?;
    let (dfd, dname, dst_path) = host_target(dst, &sname, contents(path))?;
    let guest = Path::new("/").join(&rel);
    let mut sink = FsSink::new(
        &At {
            dir: dfd.as_fd(),
            name: &dname,
        },
        &dst_path,
        TO_HOST,
    );
    agent
        .copy_out(
            &guest.to_string_lossy(),
            contents(path),
            &mut sink,
            Path::new(&format!("{name}:{path}")),
            Limits::default(),
        )
        .map_err(|e| from_guest(name, e))
}

fn vm_copy_in(agent: &mut Client<UnixStream>, src: &str, name: &str, path: &str) -> Result<()> {
    let rel = confined::normalize(Path::new(path)).map_err(boxfs::Error::from)?;
    let (sfd, sname) = host_source(src)?;
    let at = At {
        dir: sfd.as_fd(),
        name: &sname,
    };
    // Refused here, before the guest is asked for anything.
    tree::check_source(&at, Path::new(src)).map_err(boxfs::Error::from)?;
    // For `SRC/.` the guest places by the destination alone; the top
    // entry still needs a name.
    let top = if sname == "." {
        OsStr::new("_")
    } else {
        &sname
    };
    let guest = Path::new("/").join(&rel);
    agent
        .copy_in(
            &guest.to_string_lossy(),
            contents(src),
            &at,
            Path::new(src),
            top,
        )
        .map_err(|e| from_guest(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_paths_are_told_from_host_paths() {
        assert_eq!(box_arg("web:/etc/x"), Some(("web", "/etc/x")));
        assert_eq!(box_arg("abc123:rel"), Some(("abc123", "rel")));
        assert_eq!(box_arg("/host/a:b"), None);
        assert_eq!(box_arg("./a:b"), None);
        assert_eq!(box_arg("dir/a:b"), None);
        assert_eq!(box_arg("plain"), None);
        assert_eq!(box_arg(":x"), None);
    }

    #[test]
    fn a_trailing_dot_asks_for_the_contents() {
        assert!(contents("/srv/t/."));
        assert!(contents("."));
        assert!(contents("dir/."));
        assert!(!contents("/srv/t"));
        assert!(!contents("/srv/t/"));
        assert!(!contents("/srv/.t"));
        assert!(!contents("/srv/t/.."));
    }

    #[test]
    fn copies_out_land_as_docker_cp_puts_them() -> Result<()> {
        let d = tempfile::tempdir()?;
        std::fs::create_dir(d.path().join("dir"))?;
        let (_, n, p) = host_target(&d.path().join("dir"), OsStr::new("f"), false)?;
        assert_eq!(
            (n.as_os_str(), p),
            (OsStr::new("f"), d.path().join("dir/f"))
        );
        let (_, n, p) = host_target(&d.path().join("dir"), OsStr::new("f"), true)?;
        assert_eq!((n.as_os_str(), p), (OsStr::new("."), d.path().join("dir")));
        let (_, n, p) = host_target(&d.path().join("new"), OsStr::new("f"), true)?;
        assert_eq!(
            (n.as_os_str(), p),
            (OsStr::new("new"), d.path().join("new"))
        );
        assert!(box_rel("/").is_err());
        assert!(box_rel("/a/../..").is_err());
        assert_eq!(box_rel("/srv/t/.")?.1, OsString::from("t"));
        Ok(())
    }
}
