//! A snapshot on disk: a directory holding `state` (the machine's state in
//! a [`file`](super::file) for its key) and `memory` (its RAM,
//! [`memory`](super::memory)'s layout, zero pages as holes). Both files are
//! private to their owner and checked before use.
//!
//! The memory file's bytes are not digested (that would read all of it and
//! undo the lazy, shared mapping that makes a restore fast); it is checked
//! for who owns it, its mode, that it is a regular file and not a symlink,
//! and that its length is the one the (digested) state says.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::machine::MachineState;
use super::{file, memory, Error};
use crate::vm::Captured;

/// The state file's name in a snapshot directory.
pub const STATE: &str = "state";
/// The memory file's name.
pub const MEMORY: &str = "memory";

/// A snapshot read back, ready to restore.
pub struct Loaded {
    /// The machine's state.
    pub state: MachineState,
    /// The memory file, opened and checked.
    pub memory: File,
}

/// What saving cost.
#[derive(Debug, Clone, Default)]
pub struct Saved {
    /// Pages written to the memory file.
    pub pages: u64,
    /// Bytes the two files take on disk.
    pub disk_bytes: u64,
    /// How long it took.
    pub took: Duration,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Io(what, e)
}

/// Writes `captured` into `dir` (existing, empty, private) for `key`.
pub fn save(dir: &Path, key: &str, captured: &mut Captured) -> Result<Saved, Error> {
    let t0 = Instant::now();
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(MEMORY))
        .map_err(io("creating the memory file"))?;
    let ram: Vec<(u64, u64)> = captured
        .state
        .layout
        .regions
        .iter()
        .map(|&(start, len, _)| (start, len))
        .collect();
    let saved = memory::save(&captured.memory, &out, &ram)?;
    out.sync_all().map_err(io("syncing the memory file"))?;
    captured.state.layout = saved.layout;
    file::write(&dir.join(STATE), key, &captured.state.encode())?;
    let disk = |name| {
        std::fs::metadata(dir.join(name))
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap_or(0)
    };
    Ok(Saved {
        pages: saved.pages,
        disk_bytes: disk(STATE) + disk(MEMORY),
        took: t0.elapsed(),
    })
}

/// Reads the snapshot in `dir`, which must have been made for `key`: a
/// real directory (not a symlink) of this user's that no one else may
/// write to.
pub fn load(dir: &Path, key: &str) -> Result<Loaded, Error> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).map_err(io("reading the snapshot's directory"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(Error::Snapshot(format!(
            "{} is not a directory of this user's that only it may change",
            dir.display()
        )));
    }
    let bytes = file::read(&dir.join(STATE), key)?;
    let state = MachineState::decode(&bytes)?;
    let memory = file::open_checked(&dir.join(MEMORY), crate::config::MAX_MEMORY)?;
    Ok(Loaded { state, memory })
}

impl Loaded {
    /// Refuses a snapshot that is not of the machine about to be made:
    /// `memory` bytes of RAM, `vcpus`, the root disk and mailbox where
    /// they go now.
    pub fn check(
        &self,
        memory: u64,
        vcpus: u32,
        pmem: Option<(u64, u64)>,
        mailbox: Option<u64>,
    ) -> Result<(), Error> {
        let s = &self.state;
        let differs = |what: String| Err(Error::Snapshot(what));
        if s.memory != memory {
            return differs(format!("made with {} bytes of RAM, not {memory}", s.memory));
        }
        if s.vcpus.len() != vcpus as usize {
            return differs(format!("made with {} vCPUs, not {vcpus}", s.vcpus.len()));
        }
        if s.pmem != pmem || s.mailbox != mailbox {
            return differs("made with another root disk or mailbox".into());
        }
        let want = crate::arch::layout::ram_regions(memory);
        let have: Vec<(u64, u64)> = s.layout.regions.iter().map(|r| (r.0, r.1)).collect();
        if want != have {
            return differs("its RAM regions are not this VMM's".into());
        }
        let len = self
            .memory
            .metadata()
            .map_err(io("reading the memory file"))?
            .len();
        let need: u64 = s.layout.regions.iter().map(|r| r.1).sum();
        if len != need {
            return Err(Error::MemoryFileShort { need, have: len });
        }
        Ok(())
    }
}
