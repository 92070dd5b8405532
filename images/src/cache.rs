//! The build cache: kernels, initramfs and ext4 images, outside the repo.
//!
//! `$TWINBOX_CACHE`, else `$XDG_CACHE_HOME/twinbox`, else `~/.cache/twinbox`.
//! Every entry is named by a hash of its inputs and published with a rename,
//! so a reader sees a whole entry or none, and a changed input never reuses
//! a stale one.

use std::path::PathBuf;

/// The cache's root directory.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TWINBOX_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("twinbox");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".cache/twinbox")
}

/// A name for a temporary sibling of a cache entry, unique to this process.
pub fn tmp_name(final_name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{final_name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// True if process `pid` exists.
pub fn pid_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Removes temporaries in `dir` (named by [`tmp_name`]) whose process is gone:
/// what a killed build left behind.
pub fn collect_stale(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, rest)| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = crate::fsutil::remove_tree(&e.path());
        }
    }
}

/// The entry `<cache>/<kind>/<name>`, made first with `make(temporary path)`
/// if it is not there: written beside it and published once (a maker that
/// lost a race keeps the winner's entry), the temporary removed if `make`
/// fails. `io` turns an I/O error on a path into
/// the caller's error.
pub fn produce<E>(
    kind: &str,
    name: &str,
    make: impl FnOnce(&std::path::Path) -> Result<(), E>,
    io: impl Fn(&std::path::Path, std::io::Error) -> E,
) -> Result<PathBuf, E> {
    let dir = dir().join(kind);
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    let dest = dir.join(name);
    if dest.exists() {
        return Ok(dest);
    }
    collect_stale(&dir);
    let tmp = dir.join(tmp_name(name));
    let r = make(&tmp)
        .and_then(|()| crate::fsutil::publish_once(&tmp, &dest).map_err(|e| io(&dest, e)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| dest)
}
