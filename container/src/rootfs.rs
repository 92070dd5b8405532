//! The box's root: the image's rootfs read-only underneath, a writable
//! overlayfs layer on top, and `pivot_root` into it with the old root
//! unmounted and detached.
//!
//! The writable layer (overlay upper and work directories) lives on a tmpfs
//! mounted on the scratch directory *inside the box's own mount namespace*:
//! the host never sees it, and it is gone when the last process of the box
//! is, whatever way the run ends. Nothing needs cleaning up.

use std::ffi::CString;

use nix::errno::Errno;

use crate::cstring as c;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{lstat, Mode, SFlag};

/// What to mount, as C strings ready for the child.
#[derive(Debug, Clone)]
pub struct RootPlan {
    /// The scratch directory the tmpfs goes on.
    pub scratch: CString,
    /// tmpfs options (size, mode).
    pub tmpfs_opts: CString,
    /// upper, work and merged directories inside the scratch tmpfs.
    pub upper: CString,
    /// Overlay work directory.
    pub work: CString,
    /// Where the box's root is assembled.
    pub merged: CString,
    /// overlayfs options.
    pub overlay_opts: CString,
    /// Top-level directories the kernel file systems are mounted on; each
    /// must be a real directory, never an image's symlink.
    pub mount_points: Vec<CString>,
}

/// Plans the root for an image at `rootfs` (validated: no ',', ':' or '\',
/// which overlayfs options cannot carry) with a writable layer of `size`
/// bytes on `scratch`.
pub fn plan(rootfs: &str, scratch: &str, size: u64, user_namespace: bool) -> RootPlan {
    let merged = format!("{scratch}/merged");
    let mut overlay = format!("lowerdir={rootfs},upperdir={scratch}/upper,workdir={scratch}/work");
    if user_namespace {
        overlay.push_str(",userxattr");
    }
    RootPlan {
        scratch: c(scratch),
        tmpfs_opts: c(&format!("size={size},mode=0755")),
        upper: c(&format!("{scratch}/upper")),
        work: c(&format!("{scratch}/work")),
        merged: c(&merged),
        overlay_opts: c(&overlay),
        mount_points: ["proc", "sys", "dev"]
            .iter()
            .map(|d| c(&format!("{merged}/{d}")))
            .collect(),
    }
}

/// Where a step of [`assemble`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Making the mount tree private.
    Private,
    /// Mounting the scratch tmpfs.
    Scratch,
    /// Making the layer directories.
    Dirs,
    /// Mounting the overlay.
    Overlay,
    /// Making a mount point a real directory.
    MountPoint,
}

/// Makes the mount tree private (nothing propagates to or from the host),
/// mounts the scratch tmpfs and the overlay, and makes the mount points
/// (child side, system calls only).
pub fn assemble(p: &RootPlan) -> Result<(), (Step, Errno)> {
    let none = None::<&std::ffi::CStr>;
    mount(
        none,
        c"/",
        none,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        none,
    )
    .map_err(|e| (Step::Private, e))?;
    mount(
        Some(c"tmpfs"),
        p.scratch.as_c_str(),
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(p.tmpfs_opts.as_c_str()),
    )
    .map_err(|e| (Step::Scratch, e))?;
    for d in [&p.upper, &p.work, &p.merged] {
        nix::unistd::mkdir(d.as_c_str(), Mode::from_bits_truncate(0o755))
            .map_err(|e| (Step::Dirs, e))?;
    }
    mount(
        Some(c"overlay"),
        p.merged.as_c_str(),
        Some(c"overlay"),
        MsFlags::MS_NODEV,
        Some(p.overlay_opts.as_c_str()),
    )
    .map_err(|e| (Step::Overlay, e))?;
    for m in &p.mount_points {
        real_dir(m).map_err(|e| (Step::MountPoint, e))?;
    }
    Ok(())
}

/// Makes `path` a real directory: an image's symlink or file there is
/// removed first (in the writable layer), so a mount never follows a link
/// the image chose.
fn real_dir(path: &CString) -> Result<(), Errno> {
    match lstat(path.as_c_str()) {
        Ok(st) if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) == SFlag::S_IFDIR => {
            return Ok(())
        }
        Ok(_) => nix::unistd::unlink(path.as_c_str())?,
        Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    nix::unistd::mkdir(path.as_c_str(), Mode::from_bits_truncate(0o755))
}

/// Makes `merged` the root: `pivot_root(".", ".")` stacks the old root
/// under the new one, and a lazy unmount detaches it, so no path leads
/// back to the host's tree.
pub fn pivot(merged: &CString) -> Result<(), Errno> {
    nix::unistd::chdir(merged.as_c_str())?;
    nix::unistd::pivot_root(c".", c".")?;
    umount2(c".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir(c"/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_layers_on_scratch() {
        let p = plan("/img/rootfs", "/run/x", 1 << 20, false);
        assert_eq!(
            p.overlay_opts.to_str(),
            Ok("lowerdir=/img/rootfs,upperdir=/run/x/upper,workdir=/run/x/work")
        );
        assert_eq!(p.tmpfs_opts.to_str(), Ok("size=1048576,mode=0755"));
        assert_eq!(p.mount_points[2].to_str(), Ok("/run/x/merged/dev"));
        assert!(plan("/a", "/b", 1, true)
            .overlay_opts
            .to_str()
            .is_ok_and(|s| s.ends_with(",userxattr")));
    }

    #[test]
    fn real_dir_replaces_a_symlink_without_following_it() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let target = d.path().join("target");
        std::fs::create_dir(&target)?;
        let link = d.path().join("proc");
        std::os::unix::fs::symlink(&target, &link)?;
        let cl = c(&link.to_string_lossy());
        real_dir(&cl).map_err(std::io::Error::from)?;
        assert!(std::fs::symlink_metadata(&link)?.is_dir());
        assert!(target.is_dir(), "the link's target is untouched");
        real_dir(&cl).map_err(std::io::Error::from)?;
        Ok(())
    }
}
