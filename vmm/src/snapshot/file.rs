//! The snapshot state file: a header with a format version and the hash
//! of the snapshot's key, the state bytes, and a digest over both, so a
//! file from other inputs, from another version, cut short, or changed is
//! refused before any of it is used.
//!
//! `TWBXSNAP`, version (u32), SHA-256 of the key (32 bytes), state length
//! (u64), the state, SHA-256 of everything before it (32 bytes). All
//! little-endian.
//!
//! Snapshot files hold a guest's memory and registers, so they are the
//! user's secrets: written 0600 to a temporary sibling, synced and renamed
//! into place (a reader sees a whole file or none, and a killed writer
//! leaves only a temporary name); opened without following symlinks, and
//! refused unless they are regular files owned by this user with no group
//! or other permission bits.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::Error;

/// What starts a state file.
pub const MAGIC: [u8; 8] = *b"TWBXSNAP";
/// The format's version.
pub const VERSION: u32 = 1;
/// The longest state file accepted (vCPU states are a few KiB each).
pub const MAX_LEN: u64 = 64 << 20;

const HEADER: usize = 8 + 4 + 32 + 8;
const DIGEST: usize = 32;

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The bytes of a state file for `key` holding `state`.
pub fn encode(key: &str, state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + state.len() + DIGEST);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&sha(key.as_bytes()));
    out.extend_from_slice(&(state.len() as u64).to_le_bytes());
    out.extend_from_slice(state);
    let digest = sha(&out);
    out.extend_from_slice(&digest);
    out
}

/// The state in `data`, a state file that must be for `key`.
pub fn decode<'a>(data: &'a [u8], key: &str) -> Result<&'a [u8], Error> {
    if data.len() < HEADER + DIGEST {
        return Err(Error::Snapshot(format!(
            "{} bytes, shorter than a header",
            data.len()
        )));
    }
    let (magic, rest) = data.split_at(8);
    if magic != MAGIC {
        return Err(Error::Snapshot("not a twinbox snapshot (bad magic)".into()));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&rest[..4]);
    let version = u32::from_le_bytes(v);
    if version != VERSION {
        return Err(Error::Snapshot(format!(
            "format version {version}, this twinbox reads {VERSION}"
        )));
    }
    if rest[4..36] != sha(key.as_bytes()) {
        return Err(Error::Snapshot(
            "made from other inputs (kernel, init, image, VMM, memory or vCPUs)".into(),
        ));
    }
    let mut l = [0u8; 8];
    l.copy_from_slice(&rest[36..44]);
    let len = u64::from_le_bytes(l);
    let want = (HEADER + DIGEST) as u64 + len.min(MAX_LEN);
    if len > MAX_LEN || data.len() as u64 != want {
        return Err(Error::Snapshot(format!(
            "{} bytes where its header says {}",
            data.len(),
            ((HEADER + DIGEST) as u64).saturating_add(len)
        )));
    }
    let (body, digest) = data.split_at(data.len() - DIGEST);
    if digest != sha(body) {
        return Err(Error::Snapshot(
            "its digest does not match: changed or damaged".into(),
        ));
    }
    Ok(&body[HEADER..])
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Io(what, e)
}

/// Writes the state file `path` for `key`: mode 0600, to a temporary
/// sibling first, synced, then renamed over `path`.
pub fn write(path: &Path, key: &str, state: &[u8]) -> Result<(), Error> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io("creating the snapshot file"))?;
        f.write_all(&encode(key, state))
            .map_err(io("writing the snapshot file"))?;
        f.sync_all().map_err(io("syncing the snapshot file"))?;
        std::fs::rename(&tmp, path).map_err(io("publishing the snapshot file"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A name beside `path` that no other writer uses.
fn temp_sibling(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Opens a snapshot file (state or memory) for reading, if it is safe to
/// use: not a symlink, a regular file, owned by this user, no group or
/// other permission bits, at most `max` bytes.
pub fn open_checked(path: &Path, max: u64) -> Result<File, Error> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Error::Snapshot(format!("{} is a symlink", path.display())),
            _ => Error::Io("opening the snapshot file", e),
        })?;
    let m = f.metadata().map_err(io("reading the snapshot file"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let why = if !m.file_type().is_file() {
        Some("is not a regular file".to_string())
    } else if m.uid() != me {
        Some(format!("is owned by uid {}, not {me}", m.uid()))
    } else if m.mode() & 0o077 != 0 {
        Some(format!(
            "has mode {:o}: others may read or change it",
            m.mode() & 0o777
        ))
    } else if m.len() > max {
        Some(format!("is {} bytes, more than {max}", m.len()))
    } else {
        None
    };
    match why {
        Some(w) => Err(Error::Snapshot(format!("{} {w}", path.display()))),
        None => Ok(f),
    }
}

/// Reads the state file `path`, which must be for `key` and safe to use.
pub fn read(path: &Path, key: &str) -> Result<Vec<u8>, Error> {
    let mut data = Vec::new();
    open_checked(path, MAX_LEN + (HEADER + DIGEST) as u64)?
        .read_to_end(&mut data)
        .map_err(io("reading the snapshot file"))?;
    decode(&data, key).map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "image sha256:ab kernel 3e93 init 1 vmm 0.1.0 mem 256M cpus 1";

    #[test]
    fn a_state_file_round_trips_and_is_private() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(io("tempdir"))?;
        let path = dir.path().join("snap.state");
        write(&path, KEY, b"the state")?;
        assert_eq!(read(&path, KEY)?, b"the state");
        let mode = std::fs::metadata(&path).map_err(io("stat"))?.mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .map_err(io("ls"))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "a temporary was left: {names:?}");
        Ok(())
    }

    #[test]
    fn other_inputs_cuts_and_changes_are_refused() {
        let good = encode(KEY, b"0123456789");
        assert!(decode(&good, KEY).is_ok());
        let other = decode(&good, "another key").map(|_| ()).err();
        assert!(other.is_some_and(|e| e.to_string().contains("other inputs")));
        for n in 0..good.len() {
            assert!(decode(&good[..n], KEY).is_err(), "cut at {n} accepted");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, KEY).is_err(), "flip at {i} accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer, KEY).is_err());
        let mut huge = good[..HEADER].to_vec();
        huge[44..52].copy_from_slice(&u64::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; DIGEST]);
        assert!(decode(&huge, KEY).is_err());
    }

    #[test]
    fn symlinks_and_shared_files_are_refused() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(io("tempdir"))?;
        let path = dir.path().join("snap.state");
        write(&path, KEY, b"s")?;
        let link = dir.path().join("link.state");
        std::os::unix::fs::symlink(&path, &link).map_err(io("symlink"))?;
        let e = read(&link, KEY)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("symlink"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(io("chmod"))?;
        let e = read(&path, KEY)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("mode 666"), "{e}");
        let e = read(dir.path(), KEY)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!e.is_empty(), "a directory was read as a snapshot");
        Ok(())
    }
}
