//! The box's minimal /dev: the six harmless character devices, the standard
//! links, and mount points for pts, shm and mqueue. As root the nodes are
//! made with `mknod`; in a user namespace (where `mknod` is refused) the
//! host's nodes are bind-mounted onto empty files.
//!
//! There is no /dev/console unless the box's stdout is a terminal: then that
//! terminal is bound there, as Docker does with `-t`.

use std::ffi::CString;

use nix::errno::Errno;

use crate::cstring as c;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// (name, major, minor) of the nodes a box gets.
pub const NODES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// (link, target) of the standard links.
pub const LINKS: [(&str, &str); 6] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
    ("core", "/proc/kcore"),
];

/// Directories under /dev that get a file system of their own.
pub const DIRS: [&str; 3] = ["pts", "shm", "mqueue"];

/// What to make in /dev, as C strings ready for the child.
#[derive(Debug, Clone)]
pub struct DevPlan {
    /// (path under the new /dev, host node for binding, major, minor).
    pub nodes: Vec<(CString, CString, u64, u64)>,
    /// (target, link path).
    pub links: Vec<(CString, CString)>,
    /// Directories to make.
    pub dirs: Vec<CString>,
    /// (host terminal, /dev/console path) when stdout is a terminal.
    pub console: Option<(CString, CString)>,
    /// Bind host nodes instead of `mknod` (user namespace).
    pub bind: bool,
}

/// Plans /dev under `root` (the merged rootfs before `pivot_root`).
/// `console` is the host terminal of stdout, if any.
pub fn plan(root: &str, bind: bool, console: Option<&str>) -> DevPlan {
    DevPlan {
        nodes: NODES
            .iter()
            .map(|(n, ma, mi)| {
                (
                    c(&format!("{root}/dev/{n}")),
                    c(&format!("/dev/{n}")),
                    *ma,
                    *mi,
                )
            })
            .collect(),
        links: LINKS
            .iter()
            .map(|(l, t)| (c(t), c(&format!("{root}/dev/{l}"))))
            .collect(),
        dirs: DIRS.iter().map(|d| c(&format!("{root}/dev/{d}"))).collect(),
        console: console.map(|t| (c(t), c(&format!("{root}/dev/console")))),
        bind,
    }
}

/// Makes the nodes, links and directories (child side, system calls only).
pub fn apply(p: &DevPlan) -> Result<(), Errno> {
    let rw = Mode::from_bits_truncate(0o666);
    for (path, host, major, minor) in &p.nodes {
        if p.bind {
            touch(path)?;
            mount(
                Some(host.as_c_str()),
                path.as_c_str(),
                None::<&std::ffi::CStr>,
                MsFlags::MS_BIND,
                None::<&std::ffi::CStr>,
            )?;
        } else {
            mknod(path.as_c_str(), SFlag::S_IFCHR, rw, makedev(*major, *minor))?;
            // mknod applies the umask; the nodes must be 0666.
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path.as_c_str(),
                rw,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
        }
    }
    for (target, link) in &p.links {
        nix::unistd::symlinkat(target.as_c_str(), nix::fcntl::AT_FDCWD, link.as_c_str())?;
    }
    for d in &p.dirs {
        nix::unistd::mkdir(d.as_c_str(), Mode::from_bits_truncate(0o755))?;
    }
    if let Some((tty, path)) = &p.console {
        touch(path)?;
        mount(
            Some(tty.as_c_str()),
            path.as_c_str(),
            None::<&std::ffi::CStr>,
            MsFlags::MS_BIND,
            None::<&std::ffi::CStr>,
        )?;
    }
    Ok(())
}

fn touch(path: &CString) -> Result<(), Errno> {
    let fd = nix::fcntl::open(
        path.as_c_str(),
        nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o666),
    )?;
    drop(fd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_nodes_links_and_console() {
        let p = plan("/m", false, Some("/dev/pts/3"));
        assert_eq!(p.nodes.len(), 6);
        assert_eq!(p.nodes[0].0.to_str(), Ok("/m/dev/null"));
        assert!(p
            .links
            .iter()
            .any(|(t, l)| t.to_str() == Ok("pts/ptmx") && l.to_str() == Ok("/m/dev/ptmx")));
        assert_eq!(
            p.console.as_ref().map(|(_, c)| c.to_str()),
            Some(Ok("/m/dev/console"))
        );
        assert!(plan("/m", true, None).console.is_none());
    }
}
