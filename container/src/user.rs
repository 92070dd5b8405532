//! Who the workload runs as: `""` (root), `uid[:gid]`, or `name[:group]`
//! looked up in the image's /etc/passwd and /etc/group, with the
//! supplementary groups listed there. The files are opened with
//! `openat2(RESOLVE_IN_ROOT)`, so an image whose /etc/passwd is a symlink
//! cannot make the launcher read a host file.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

/// Errors of resolving a user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name is not in the image's files.
    #[error("user {0:?}: no such {1} in the image's /etc/{1}")]
    Unknown(String, &'static str),
    /// The rootfs could not be opened.
    #[error("opening the rootfs {0}")]
    Rootfs(String, #[source] nix::errno::Errno),
}

/// The resolved ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

const MAX_FILE: u64 = 1 << 20;

fn read_in_root(root: &Path, file: &str) -> Result<String, Error> {
    let dir = nix::fcntl::open(
        root,
        OFlag::O_DIRECTORY | OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::Rootfs(root.display().to_string(), e))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // A missing or unreadable file is an empty database, as for getpwnam.
    let Ok(fd) = openat2(dir.as_fd(), file, how) else {
        return Ok(String::new());
    };
    let mut s = String::new();
    let _ = std::fs::File::from(fd)
        .take(MAX_FILE)
        .read_to_string(&mut s);
    Ok(s)
}

/// Resolves `spec` against the image rooted at `root`.
pub fn resolve(root: &Path, spec: &str) -> Result<Ids, Error> {
    if spec.is_empty() {
        return Ok(Ids {
            uid: 0,
            gid: 0,
            groups: vec![],
        });
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let needs_passwd = user.parse::<u32>().is_err() || group.is_none();
    let passwd = if needs_passwd {
        read_in_root(root, "etc/passwd")?
    } else {
        String::new()
    };
    let group_db = read_in_root(root, "etc/group")?;
    resolve_in(spec, user, group, &passwd, &group_db)
}

fn resolve_in(
    spec: &str,
    user: &str,
    group: Option<&str>,
    passwd: &str,
    group_db: &str,
) -> Result<Ids, Error> {
    // name:x:uid:gid:...
    let pw = passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            f.first()?.to_string(),
            f.get(2)?.parse::<u32>().ok()?,
            f.get(3)?.parse::<u32>().ok()?,
        ))
    });
    let (name, uid, pw_gid) = match user.parse::<u32>() {
        Ok(uid) => {
            let entry = pw.clone().find(|(_, u, _)| *u == uid);
            (
                entry.as_ref().map(|e| e.0.clone()),
                uid,
                entry.map_or(0, |e| e.2),
            )
        }
        Err(_) => {
            let (n, u, g) = pw
                .clone()
                .find(|(n, _, _)| n == user)
                .ok_or_else(|| Error::Unknown(spec.to_string(), "passwd"))?;
            (Some(n), u, g)
        }
    };
    // name:x:gid:member,member
    let gr = group_db.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some((
            f.first()?.to_string(),
            f.get(2)?.parse::<u32>().ok()?,
            f.get(3).copied().unwrap_or("").to_string(),
        ))
    });
    let gid = match group {
        None => pw_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => gr
                .clone()
                .find(|(n, _, _)| n == g)
                .map(|(_, id, _)| id)
                .ok_or_else(|| Error::Unknown(spec.to_string(), "group"))?,
        },
    };
    let groups = match (&name, group) {
        (Some(n), None) => gr
            .filter(|(_, _, members)| members.split(',').any(|m| m == n))
            .map(|(_, id, _)| id)
            .filter(|&id| id != gid)
            .collect(),
        _ => vec![],
    };
    Ok(Ids { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\nbad line\n";
    const GROUP: &str = "root:x:0:\nwww:x:33:\naudio:x:29:www,other\n";

    fn r(spec: &str) -> Result<Ids, Error> {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        resolve_in(spec, u, g, PASSWD, GROUP)
    }

    #[test]
    fn names_numbers_and_groups() -> Result<(), Error> {
        assert_eq!(
            r("www")?,
            Ids {
                uid: 33,
                gid: 33,
                groups: vec![29]
            }
        );
        assert_eq!(
            r("www:audio")?,
            Ids {
                uid: 33,
                gid: 29,
                groups: vec![]
            }
        );
        assert_eq!(
            r("1000")?,
            Ids {
                uid: 1000,
                gid: 0,
                groups: vec![]
            }
        );
        assert_eq!(
            r("1000:1000")?,
            Ids {
                uid: 1000,
                gid: 1000,
                groups: vec![]
            }
        );
        assert!(r("nobody").is_err_and(|e| e.to_string().contains("passwd")));
        assert!(r("www:nogroup").is_err_and(|e| e.to_string().contains("group")));
        Ok(())
    }

    #[test]
    fn passwd_symlink_to_host_is_resolved_inside_the_root() -> Result<(), Box<dyn std::error::Error>>
    {
        let d = tempfile::tempdir()?;
        std::fs::create_dir(d.path().join("etc"))?;
        // A hostile image: /etc/passwd points at a host file.
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("etc/passwd"))?;
        assert_eq!(
            read_in_root(d.path(), "etc/passwd")?,
            "",
            "no host file read"
        );
        // The same link finds the image's own file of that name.
        std::fs::write(d.path().join("etc/hostname"), "inside")?;
        assert_eq!(read_in_root(d.path(), "etc/passwd")?, "inside");
        Ok(())
    }
}
