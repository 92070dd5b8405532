//! What a VM snapshot of an image preloads: the image's own command,
//! resolved in the image (its `PATH`, its symlinks), and that program's
//! ELF interpreter. Init reads them once before the ready mark, so every
//! guest restored from the snapshot finds them in its page cache instead
//! of reading them from the root disk again at the hypervisor's speed.
//!
//! Paths are resolved inside the image's rootfs as the guest would see
//! them: an absolute symlink target starts at the image's root, `..`
//! stops there, and a loop or a missing file ends the search (preloading
//! only saves time; it never fails a run).

use std::path::{Component, Path, PathBuf};

/// Most symlinks followed for one path.
const MAX_LINKS: usize = 16;
/// Most files preloaded.
const MAX_FILES: usize = 8;

/// The guest path `path` resolves to in `rootfs`, following symlinks, if
/// it is a regular file there.
fn resolve(rootfs: &Path, path: &str) -> Option<String> {
    let mut todo: Vec<String> = path.split('/').rev().map(String::from).collect();
    let mut done: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(part);
        let host = rootfs.join(done.join("/"));
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            done.pop();
            if target.is_absolute() {
                done.clear();
            }
            let parts: Vec<String> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                })
                .collect();
            todo.extend(parts.into_iter().rev());
        }
    }
    let host: PathBuf = rootfs.join(done.join("/"));
    std::fs::symlink_metadata(&host)
        .ok()
        .filter(|m| m.is_file())
        .map(|_| format!("/{}", done.join("/")))
}

/// The files to preload for an image whose rootfs is `rootfs`, whose own
/// command is `argv` and whose `PATH` is `path_var`.
pub fn files(rootfs: &Path, argv: &[String], path_var: &str) -> Vec<String> {
    let Some(program) = argv.first().filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let found = if program.contains('/') {
        resolve(rootfs, program)
    } else {
        path_var
            .split(':')
            .filter(|d| d.starts_with('/'))
            .find_map(|d| resolve(rootfs, &format!("{d}/{program}")))
    };
    let mut out = Vec::new();
    if let Some(p) = found {
        let host = rootfs.join(p.trim_start_matches('/'));
        out.push(p);
        if let Some(interp) = super::elf::interpreter(&host).and_then(|i| resolve(rootfs, &i)) {
            out.push(interp);
        }
    }
    out.truncate(MAX_FILES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn the_command_is_found_through_path_and_symlinks_inside_the_image(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::write(root.join("bin/busybox"), b"not an elf")?;
        symlink("busybox", root.join("bin/sh"))?;
        symlink("/bin/../bin/busybox", root.join("bin/abs"))?;
        // A link out of the image resolves inside it, and is not there.
        symlink("/../../../etc/passwd", root.join("bin/escape"))?;
        symlink("loop", root.join("bin/loop"))?;
        let path = "/usr/bin:/bin";
        assert_eq!(files(root, &["sh".into()], path), vec!["/bin/busybox"]);
        assert_eq!(
            files(root, &["/bin/abs".into()], path),
            vec!["/bin/busybox"]
        );
        assert!(files(root, &["escape".into()], path).is_empty());
        assert!(files(root, &["loop".into()], path).is_empty());
        assert!(files(root, &["missing".into()], path).is_empty());
        assert!(files(root, &[], path).is_empty());
        Ok(())
    }

    #[test]
    fn a_dynamic_program_brings_its_interpreter() -> Result<(), Box<dyn std::error::Error>> {
        // This test binary is dynamic; put it in a fake root with its
        // interpreter.
        let exe = std::env::current_exe()?;
        let interp =
            super::super::elf::interpreter(&exe).ok_or("the test binary has no PT_INTERP")?;
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("bin"))?;
        std::fs::copy(&exe, root.join("bin/prog"))?;
        let at = root.join(interp.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().ok_or("no parent")?)?;
        std::fs::write(&at, b"ld.so")?;
        assert_eq!(
            files(root, &["prog".into()], "/bin"),
            vec!["/bin/prog".to_string(), interp]
        );
        Ok(())
    }
}
