//! A box's log: what its workload wrote to stdout and stderr, kept after
//! it exits, capped so that a box flooding its output cannot fill the
//! host's disk.
//!
//! Two files, `log` (being written) and `log.1` (the one before). Each
//! holds records of one line (or up to [`CHUNK`] bytes of one):
//! `stream: u8` (1 stdout, 2 stderr), `time: u64` (ns since the epoch,
//! little endian), `len: u32`, then the bytes. When `log` would pass half
//! the cap it becomes `log.1`, dropping the older one, so the two never
//! hold more than the cap (plus one record). The box's output is only
//! ever inside a record; a torn last record (its supervisor killed
//! mid-write) ends the reading of its file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The default cap, Docker's `max-size` times its `max-file` of 1.
pub const DEFAULT_MAX: u64 = 10 << 20;

/// Longest record payload (Docker splits lines at 16 KiB too).
pub const CHUNK: usize = 16 << 10;

const HEADER: usize = 13;

/// Which stream a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout.
    Stdout = 1,
    /// stderr.
    Stderr = 2,
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its stream.
    pub stream: Stream,
    /// When the supervisor got it (ns since the epoch).
    pub time_ns: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Appends to a box's log.
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    max: u64,
    file: File,
    len: u64,
    /// A line not yet ended, per stream.
    partial: [Vec<u8>; 2],
}

fn open_append(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl Writer {
    /// A writer of the log in `dir`, keeping at most `max` bytes.
    pub fn open(dir: &Path, max: u64) -> std::io::Result<Self> {
        let file = open_append(&dir.join("log"))?;
        let len = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            max: max.max(2 * (HEADER + CHUNK) as u64),
            file,
            len,
            partial: [Vec::new(), Vec::new()],
        })
    }

    /// Takes `data` from `stream`: whole lines are written now, the rest
    /// when its line ends, passes [`CHUNK`], or at [`Writer::flush_partial`].
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) -> std::io::Result<()> {
        let i = stream as usize - 1;
        while !data.is_empty() {
            let room = CHUNK - self.partial[i].len();
            let take = match data.iter().take(room).position(|&b| b == b'\n') {
                Some(p) => p + 1,
                None => data.len().min(room),
            };
            self.partial[i].extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial[i].ends_with(b"\n") || self.partial[i].len() >= CHUNK {
                let line = std::mem::take(&mut self.partial[i]);
                self.record(stream, &line)?;
            }
        }
        Ok(())
    }

    /// Writes out unfinished lines (at the box's end).
    pub fn flush_partial(&mut self) -> std::io::Result<()> {
        for (i, s) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let line = std::mem::take(&mut self.partial[i]);
            if !line.is_empty() {
                self.record(s, &line)?;
            }
        }
        Ok(())
    }

    fn record(&mut self, stream: Stream, data: &[u8]) -> std::io::Result<()> {
        let n = (HEADER + data.len()) as u64;
        if self.len > 0 && self.len + n > self.max / 2 {
            std::fs::rename(self.dir.join("log"), self.dir.join("log.1"))?;
            self.file = open_append(&self.dir.join("log"))?;
            self.len = 0;
        }
        let mut rec = Vec::with_capacity(HEADER + data.len());
        rec.push(stream as u8);
        rec.extend_from_slice(&now_ns().to_le_bytes());
        rec.extend_from_slice(&(data.len() as u32).to_le_bytes());
        rec.extend_from_slice(data);
        self.file.write_all(&rec)?;
        self.len += n;
        Ok(())
    }
}

/// Reads the records of one log file from `offset`; returns them and the
/// offset after the last whole one.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Entry>, u64)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(h) = buf.get(at..at + HEADER) {
        let stream = match h[0] {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            _ => break,
        };
        let time_ns = u64::from_le_bytes([h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]]);
        let len = u32::from_le_bytes([h[9], h[10], h[11], h[12]]) as usize;
        if len > CHUNK {
            break;
        }
        let Some(data) = buf.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        out.push(Entry {
            stream,
            time_ns,
            data: data.to_vec(),
        });
        at += HEADER + len;
    }
    Ok((out, offset + at as u64))
}

/// Every record of the log in `dir`, oldest first.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let (mut v, _) = read_from(&dir.join("log.1"), 0)?;
    v.extend(read_from(&dir.join("log"), 0)?.0);
    Ok(v)
}

/// Bytes the log in `dir` takes.
#[cfg(test)]
pub fn size(dir: &Path) -> u64 {
    ["log", "log.1"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_back_with_their_stream() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let mut w = Writer::open(d.path(), DEFAULT_MAX)?;
        w.write(Stream::Stdout, b"one\ntw")?;
        w.write(Stream::Stderr, b"err\n")?;
        w.write(Stream::Stdout, b"o\nend")?;
        w.flush_partial()?;
        let v = read_all(d.path())?;
        let got: Vec<(Stream, &[u8])> = v.iter().map(|e| (e.stream, &e.data[..])).collect();
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, &b"one\n"[..]),
                (Stream::Stderr, b"err\n"),
                (Stream::Stdout, b"two\n"),
                (Stream::Stdout, b"end"),
            ]
        );
        Ok(())
    }

    #[test]
    fn a_flood_is_capped_and_keeps_the_newest() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let max = 256 << 10;
        let mut w = Writer::open(d.path(), max)?;
        for i in 0..20_000u32 {
            w.write(Stream::Stdout, format!("line {i:08}\n").as_bytes())?;
        }
        w.write(Stream::Stdout, &vec![b'x'; 100_000])?;
        w.flush_partial()?;
        assert!(
            size(d.path()) <= max + (HEADER + CHUNK) as u64,
            "{}",
            size(d.path())
        );
        let v = read_all(d.path())?;
        assert!(v.iter().all(|e| e.data.len() <= CHUNK));
        assert_eq!(v.last().map(|e| e.data.len()), Some(100_000 % CHUNK));
        assert!(!v.iter().any(|e| e.data == b"line 00000000\n"));
        Ok(())
    }

    #[test]
    fn a_torn_or_garbled_tail_ends_the_file() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let mut w = Writer::open(d.path(), DEFAULT_MAX)?;
        w.write(Stream::Stdout, b"ok\n")?;
        drop(w);
        let mut f = open_append(&d.path().join("log"))?;
        f.write_all(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, b'x'])?;
        let (v, off) = read_from(&d.path().join("log"), 0)?;
        assert_eq!(v.len(), 1);
        assert_eq!(off, (HEADER + 3) as u64);
        f.write_all(&[9; 40])?;
        assert_eq!(read_all(d.path())?.len(), 1);
        Ok(())
    }
}
