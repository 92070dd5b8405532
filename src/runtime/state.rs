//! The runtime's record of a container: `<root>/<id>/state.json`
//! (written to a temporary sibling and renamed), beside the exec fifo
//! while the container waits for `start`. The status is never stored: it
//! is read from the process (alive, with the start time recorded, and not
//! a zombie) and the fifo (there: created; gone: running).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the state directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The id cannot name a directory.
    #[error("container id {0:?}: want 1-1024 letters, digits, '_', '+', '-' or '.'")]
    BadId(String),
    /// No container of this id.
    #[error("container \"{0}\" does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container with id \"{0}\" exists already")]
    Exists(String),
    /// A file of the state directory could not be read or written.
    #[error("{what} {}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// state.json does not parse.
    #[error("{}: not a twinbox-runtime state", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What is kept of a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Its id.
    pub id: String,
    /// Its first process (host pid).
    pub pid: i32,
    /// That process's start time (field 22 of /proc/PID/stat).
    pub pid_start: u64,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// When it was created (RFC 3339).
    pub created: String,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Its cgroup directories.
    #[serde(default)]
    pub cgroups: Vec<PathBuf>,
}

/// The spec's statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Set up, waiting for `start`.
    Created,
    /// Its program runs.
    Running,
    /// Its first process has ended.
    Stopped,
}

impl Status {
    /// As the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Stopped => "stopped",
        }
    }
}

/// Checks an id as runc does: it names a directory under the root.
pub fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadId(id.to_string()))
    }
}

/// The state directory of `id` under `root`.
pub fn dir(root: &Path, id: &str) -> Result<PathBuf, Error> {
    check_id(id)?;
    Ok(root.join(id))
}

/// The exec fifo of a container's directory.
pub fn fifo(dir: &Path) -> PathBuf {
    dir.join("exec.fifo")
}

/// Makes the directory of a new container (0711; its parent made too).
pub fn make(root: &Path, id: &str) -> Result<PathBuf, Error> {
    use std::os::unix::fs::DirBuilderExt;
    let d = dir(root, id)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(root)
        .map_err(io("creating", root))?;
    match std::fs::DirBuilder::new().mode(0o711).create(&d) {
        Ok(()) => Ok(d),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Error::Exists(id.to_string()))
        }
        Err(e) => Err(io("creating", &d)(e)),
    }
}

/// Writes `s` into `dir` (a temporary sibling, synced, renamed).
pub fn save(dir: &Path, s: &State) -> Result<(), Error> {
    let path = dir.join("state.json");
    let tmp = dir.join(format!(".state.json.{}", std::process::id()));
    let text = serde_json::to_vec(s).map_err(|e| Error::Parse(path.clone(), e))?;
    let f = std::fs::File::create(&tmp).map_err(io("writing", &tmp))?;
    std::io::Write::write_all(&mut &f, &text).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))
}

/// Reads the state of `id`.
pub fn load(root: &Path, id: &str) -> Result<(PathBuf, State), Error> {
    let d = dir(root, id)?;
    let path = d.join("state.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound(id.to_string()))
        }
        Err(e) => return Err(io("reading", &path)(e)),
    };
    let s = serde_json::from_slice(&text).map_err(|e| Error::Parse(path, e))?;
    Ok((d, s))
}

/// Field 22 (start time) and field 3 (state) of /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and ')': fields after
    // the last ')' are fixed.
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let start = f.nth(18)?.parse().ok()?;
    Some((start, state))
}

/// The container's status now.
pub fn status(dir: &Path, s: &State) -> Status {
    match proc_stat(s.pid) {
        Some((start, st)) if start == s.pid_start && st != 'Z' && st != 'X' => {
            if fifo(dir).exists() {
                Status::Created
            } else {
                Status::Running
            }
        }
        _ => Status::Stopped,
    }
}

/// Removes a container's directory.
pub fn remove(dir: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_names_not_paths() {
        assert!(
            check_id("17653ed58189ee24a4ebd151b7833a73f26fbd86ccf1822751e41cc03043f2e6").is_ok()
        );
        assert!(check_id("a_b+c-d.e").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn state_round_trips_and_status_follows_the_process() -> Result<(), Error> {
        let root = tempfile::tempdir().map_err(io("tmp", Path::new("/tmp")))?;
        let d = make(root.path(), "x")?;
        assert!(matches!(make(root.path(), "x"), Err(Error::Exists(_))));
        let me = std::process::id() as i32;
        let (start, _) = proc_stat(me).unwrap_or((0, '?'));
        let s = State {
            id: "x".into(),
            pid: me,
            pid_start: start,
            bundle: "/b".into(),
            created: "2026-01-01T00:00:00Z".into(),
            annotations: BTreeMap::new(),
            cgroups: vec![],
        };
        save(&d, &s)?;
        let (_, back) = load(root.path(), "x")?;
        assert_eq!(back.pid, me);
        assert_eq!(status(&d, &back), Status::Running);
        std::fs::write(fifo(&d), b"").map_err(io("fifo", &d))?;
        assert_eq!(status(&d, &back), Status::Created);
        let reused = State {
            pid_start: start + 1,
            ..back
        };
        assert_eq!(status(&d, &reused), Status::Stopped, "a reused pid");
        remove(&d)?;
        assert!(matches!(load(root.path(), "x"), Err(Error::NotFound(_))));
        Ok(())
    }
}
