//! The boxes on this host: `$TWINBOX_HOME/boxes/<id>/`, one directory per
//! box holding `box.json` (its [`Record`], replaced atomically: written to
//! a temporary sibling, synced, renamed), `lock` (an `flock` that
//! serialises commands on the box), its log and its supervisor's control
//! socket. A store-wide lock (`boxes/.lock`) makes a new box's name unique.
//!
//! A record that says a box runs is believed only while its supervisor
//! lives (same pid, same start time): after a host reboot or a killed
//! supervisor the box is shown as exited, with the reason.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::id;
use super::record::{Record, Status};

/// Errors of the box store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record could not be read.
    #[error("box record {}: {source}", path.display())]
    Record {
        /// Its file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// No box has this id, prefix or name.
    #[error("no such box: {0}")]
    NotFound(String),
    /// A prefix matches several boxes.
    #[error("{0:?} matches several boxes: {list}; give more of the id", list = .1.join(", "))]
    Ambiguous(String, Vec<String>),
    /// The name is taken.
    #[error("the name {0:?} is already in use by box {1}; remove it or pick another name")]
    NameTaken(String, String),
    /// The name is malformed.
    #[error("{0}")]
    BadName(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// An `flock` held until dropped.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

/// Takes an exclusive `flock` on `path` (made 0600 if missing; never
/// through a symlink). Also the volume store's lock.
pub(crate) fn lock_file(path: &Path) -> Result<Lock, Error> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("opening", path))?;
    loop {
        // SAFETY: flock takes a descriptor we own and a flag.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(Lock(f));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io("locking", path)(e));
        }
    }
}

/// Replaces `dir/name` with `bytes` atomically: written (0600) to a
/// `.NAME.<pid>` sibling, synced, renamed. Also the volume store's.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io("writing", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_data())
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))
}

/// The box store.
#[derive(Debug, Clone)]
pub struct Boxes {
    dir: PathBuf,
}

/// Whether process `pid` is alive and started at `start` (clock ticks
/// since boot).
pub fn alive(pid: i32, start: Option<u64>) -> bool {
    match (start_time(pid), start) {
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Process `pid`'s start time (field 22 of `/proc/<pid>/stat`), or `None`
/// when it is gone or a zombie.
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (field 2) may hold spaces and parentheses: skip to the
    // last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    if f.next()? == "Z" {
        return None;
    }
    f.nth(18)?.parse().ok()
}

impl Boxes {
    /// The store under `home` (made if missing, mode 0700).
    pub fn open(home: &Path) -> Result<Self, Error> {
        let dir = home.join("boxes");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("creating", &dir))?;
        Ok(Self { dir })
    }

    /// A box's directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Takes the lock of box `id`.
    pub fn lock(&self, id: &str) -> Result<Lock, Error> {
        lock_file(&self.dir(id).join("lock"))
    }

    /// Adds a new box: its directory and record. `rec.name` empty gets a
    /// random one. Fails if the name is taken.
    pub fn create(&self, rec: &mut Record) -> Result<(), Error> {
        let _all = lock_file(&self.dir.join(".lock"))?;
        let existing = self.list()?;
        if rec.name.is_empty() {
            rec.name = id::random_name(|n| existing.iter().any(|r| r.name == n))
                .map_err(io("drawing a name", &self.dir))?;
        }
        id::check_name(&rec.name).map_err(Error::BadName)?;
        if let Some(r) = existing.iter().find(|r| r.name == rec.name) {
            return Err(Error::NameTaken(rec.name.clone(), r.short_id().into()));
        }
        let d = self.dir(&rec.id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&d)
            .map_err(io("creating", &d))?;
        self.save(rec)
    }

    /// Writes `rec` atomically.
    pub fn save(&self, rec: &Record) -> Result<(), Error> {
        let d = self.dir(&rec.id);
        let text = serde_json::to_vec_pretty(rec).map_err(|source| Error::Record {
            path: d.join("box.json"),
            source,
        })?;
        write_atomic(&d, "box.json", &text)
    }

    /// Reads box `id`'s record as its supervisor wrote it.
    pub fn load_raw(&self, id: &str) -> Result<Record, Error> {
        let path = self.dir(id).join("box.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(id.into()))
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| Error::Record { path, source })
    }

    /// Reads box `id`'s record, as it truly is: a running box whose
    /// supervisor is gone is exited.
    pub fn load(&self, id: &str) -> Result<Record, Error> {
        let mut r = self.load_raw(id)?;
        if matches!(r.state.status, Status::Running | Status::Starting) {
            let gone = r
                .state
                .supervisor
                .is_none_or(|p| !alive(p, r.state.supervisor_start));
            if gone {
                r.state.status = Status::Exited;
                r.state.exit_code = r.state.exit_code.or(Some(137));
                r.state.error = Some(format!(
                    "its supervisor (pid {}) is gone: it was killed, or the host restarted",
                    r.state.supervisor.unwrap_or(0)
                ));
                if r.state.finished_at.is_none() {
                    r.state.finished_at = Some(super::record::now());
                }
            }
        }
        Ok(r)
    }

    /// Every box, oldest first. Directories without a readable record
    /// (a `create` killed half-way) are skipped.
    pub fn list(&self) -> Result<Vec<Record>, Error> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let e = e.map_err(io("listing", &self.dir))?;
            let name = e.file_name();
            let Some(name) = name.to_str().filter(|n| id::is_full(n)) else {
                continue;
            };
            if let Ok(r) = self.load(name) {
                v.push(r);
            }
        }
        v.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(v)
    }

    /// The box `what` names: a full id, a name, or a unique id prefix.
    pub fn resolve(&self, what: &str) -> Result<Record, Error> {
        if id::is_full(what) {
            return self.load(what);
        }
        let all = self.list()?;
        if let Some(r) = all.iter().find(|r| r.name == what) {
            return Ok(r.clone());
        }
        let hits: Vec<&Record> = if what.is_empty() {
            Vec::new()
        } else {
            all.iter().filter(|r| r.id.starts_with(what)).collect()
        };
        match hits.as_slice() {
            [] => Err(Error::NotFound(what.into())),
            [one] => Ok((*one).clone()),
            many => Err(Error::Ambiguous(
                what.into(),
                many.iter()
                    .map(|r| format!("{} ({})", r.short_id(), r.name))
                    .collect(),
            )),
        }
    }

    /// Removes box `id`'s directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), Error> {
        let d = self.dir(id);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &d)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boxes::record::{Options, State};

    fn record(b: &Boxes, name: &str) -> Result<Record, Box<dyn std::error::Error>> {
        let mut r = Record {
            id: id::fresh()?,
            name: name.into(),
            created: crate::boxes::record::now(),
            workload: serde_json::from_value(serde_json::json!({
                "isolation": "container", "image": "busybox", "image_id": "x",
                "rootfs": "/nonexistent", "argv": ["true"], "env": [], "cwd": "/",
                "user": "", "limits": {"memory": null, "cpus": null, "pids": null, "timeout": null}
            }))?,
            image_command: Default::default(),
            options: Options::default(),
            state: State::created(),
        };
        b.create(&mut r)?;
        Ok(r)
    }

    #[test]
    fn boxes_are_found_by_id_prefix_and_name() -> Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let b = Boxes::open(home.path())?;
        let one = record(&b, "web")?;
        let two = record(&b, "")?;
        assert!(!two.name.is_empty());
        assert_eq!(b.resolve("web")?.id, one.id);
        assert_eq!(b.resolve(&one.id)?.name, "web");
        assert_eq!(b.resolve(&two.id[..12])?.id, two.id);
        assert!(matches!(b.resolve("nope"), Err(Error::NotFound(_))));
        assert!(matches!(b.resolve(""), Err(Error::NotFound(_))));
        // A one-digit prefix matches both or neither; for 16 digits both
        // ids start with one of them only by chance.
        let common: String = one
            .id
            .chars()
            .zip(two.id.chars())
            .take_while(|(a, b)| a == b)
            .map(|(a, _)| a)
            .collect();
        if !common.is_empty() {
            assert!(matches!(b.resolve(&common), Err(Error::Ambiguous(..))));
        }
        let mut dup = one.clone();
        dup.id = id::fresh()?;
        assert!(matches!(b.create(&mut dup), Err(Error::NameTaken(..))));
        let mut bad = one.clone();
        bad.id = id::fresh()?;
        bad.name = "-x".into();
        assert!(matches!(b.create(&mut bad), Err(Error::BadName(_))));
        b.remove(&one.id)?;
        assert!(matches!(b.resolve("web"), Err(Error::NotFound(_))));
        Ok(())
    }

    #[test]
    fn a_running_box_without_its_supervisor_is_exited() -> Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let b = Boxes::open(home.path())?;
        let mut r = record(&b, "ghost")?;
        // A child that has exited and been reaped: its pid is free.
        let mut c = std::process::Command::new("true").spawn()?;
        let pid = c.id() as i32;
        c.wait()?;
        r.state.status = Status::Running;
        r.state.supervisor = Some(pid);
        b.save(&r)?;
        let seen = b.load(&r.id)?;
        assert_eq!(seen.state.status, Status::Exited);
        assert!(seen.state.error.is_some_and(|e| e.contains("gone")));
        // Our own pid with a wrong start time is a reused pid.
        r.state.supervisor = Some(std::process::id() as i32);
        r.state.supervisor_start = start_time(std::process::id() as i32).map(|t| t + 1);
        b.save(&r)?;
        assert_eq!(b.load(&r.id)?.state.status, Status::Exited);
        r.state.supervisor_start = start_time(std::process::id() as i32);
        b.save(&r)?;
        assert_eq!(b.load(&r.id)?.state.status, Status::Running);
        Ok(())
    }
}
