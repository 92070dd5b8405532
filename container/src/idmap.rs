//! User-namespace id maps: root in the box is the caller outside (one id,
//! as `unshare --map-root-user` does), written by the parent into the
//! child's /proc files before the child goes on.

use std::path::PathBuf;

/// Errors of writing the maps.
#[derive(Debug, thiserror::Error)]
#[error("writing {}", .0.display())]
pub struct Error(PathBuf, #[source] std::io::Error);

/// Maps uid and gid 0 in `pid`'s user namespace to `uid` and `gid` outside.
/// `setgroups` is denied first, as the kernel requires of an unprivileged
/// gid map.
pub fn write(pid: i32, uid: u32, gid: u32) -> Result<(), Error> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    for (file, text) in [
        ("setgroups", "deny".to_string()),
        ("uid_map", format!("0 {uid} 1\n")),
        ("gid_map", format!("0 {gid} 1\n")),
    ] {
        let p = base.join(file);
        std::fs::write(&p, text).map_err(|e| Error(p, e))?;
    }
    Ok(())
}
