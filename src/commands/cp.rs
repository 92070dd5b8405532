//! `twinbox cp BOX:PATH HOST_PATH` and `twinbox cp HOST_PATH BOX:PATH`,
//! Docker's forms, for a running container box: the box's root is its
//! first process's `/proc/<pid>/root`, opened once (the pid checked to be
//! the box's, by its parent the supervisor and a pidfd held across the
//! open), and every box path is resolved inside it ([`crate::boxfs`]).
//!
//! A stopped container box has nothing to copy: its writable layer was a
//! tmpfs inside the box and went with it, and the image underneath is
//! shared by every box of it. A VM box's files are inside its guest:
//! [`vm_not_yet`].

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use twinbox_images::confined::Root;
use twinbox_images::Store;

use crate::boxes::record::{Record, Status};
use crate::boxes::store::Boxes;
use crate::boxfs::{self, At, Policy};
use crate::cli::Isolation;

/// `BOX:PATH` as Docker tells it from a host path: a colon, and no `/`
/// before it (so `./a:b` and `/a:b` are host paths).
fn box_arg(s: &str) -> Option<(&str, &str)> {
    if s.starts_with('/') || s.starts_with('.') {
        return None;
    }
    let (name, path) = s.split_once(':')?;
    (!name.is_empty() && !name.contains('/')).then_some((name, path))
}

/// The one place `cp` meets a VM box.
fn vm_not_yet() -> anyhow::Error {
    anyhow::anyhow!("cp for VM boxes: not yet (container boxes only)")
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

/// The root of running container box `rec`, with its first process's pid.
fn open_root(rec: &Record) -> Result<(Root, i32)> {
    if rec.workload.isolation == Isolation::Vm {
        return Err(vm_not_yet());
    }
    if rec.state.status != Status::Running {
        bail!(
            "box {} is not running ({}): a container box's files live in a tmpfs inside the box, gone when it stops; cp needs it running",
            rec.name,
            rec.status_text()
        );
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

/// `twinbox cp SRC DST`.
pub fn run(store: &Store, src: &str, dst: &str) -> Result<u8> {
    let b = Boxes::open(store.home())?;
    match (box_arg(src), box_arg(dst)) {
        (Some(_), Some(_)) => bail!("copying between boxes is not supported"),
        (None, None) => bail!("one of SRC and DST must be BOX:PATH"),
        (Some((name, path)), None) => {
            let (root, _) = open_root(&b.resolve(name)?)?;
            copy_out(&root, name, path, Path::new(dst))?;
        }
        (None, Some((name, path))) => {
            let (root, pid) = open_root(&b.resolve(name)?)?;
            let owner = nix::unistd::geteuid().is_root().then(|| box_root_ids(pid));
            copy_in(Path::new(src), &root, name, path, owner)?;
        }
    }
    Ok(0)
}

fn copy_out(root: &Root, name: &str, path: &str, dst: &Path) -> Result<()> {
    let Some((sfd, sname)) = boxfs::box_parent(root, path)? else {
        bail!("copying a box's whole root is not supported: name a path in it");
    };
    let (dfd, dname): (OwnedFd, OsString) = match boxfs::host_dir(dst) {
        Some(fd) => (fd, sname.clone()),
        None => boxfs::host_parent(dst)?,
    };
    let src_path = PathBuf::from(format!("{name}:{path}"));
    let dst_path = match boxfs::host_dir(dst) {
        Some(_) => dst.join(&sname),
        None => dst.to_path_buf(),
    };
    boxfs::copy(
        &At {
            dir: sfd.as_fd(),
            name: &sname,
        },
        &src_path,
        &At {
            dir: dfd.as_fd(),
            name: &dname,
        },
        &dst_path,
        &Policy {
            owner: None,
            mode_mask: 0o1777,
        },
    )?;
    Ok(())
}

fn copy_in(
    src: &Path,
    root: &Root,
    name: &str,
    path: &str,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let (sfd, sname) = boxfs::host_parent(src)?;
    let (dfd, dname, dst_path) = match boxfs::box_dir(root, path)? {
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
        src,
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
}
