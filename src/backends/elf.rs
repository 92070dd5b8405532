//! The little of ELF that VM mode reads: whether a program asks for an
//! interpreter (`PT_INTERP`), and which. Only the header, the program
//! headers and the interpreter's name are read, never the whole file: the
//! static init (6 MiB) and the image's command are looked at on every VM
//! run.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

const PT_INTERP: u32 = 3;
/// Most bytes of program headers read (a few dozen entries of 56 bytes).
const MAX_PHDRS: u64 = 64 << 10;
/// Longest interpreter path read.
const MAX_INTERP: u64 = 4096;

/// The `PT_INTERP` segment of the ELF file at `path` (file offset, size),
/// if it has one; an error if it is not a 64-bit ELF or its header is cut.
fn interp_segment(f: &File, path: &Path) -> Result<Option<(u64, u64)>> {
    let len = f.metadata()?.len();
    let mut h = [0u8; 64];
    if len < 64 || f.read_exact_at(&mut h, 0).is_err() {
        bail!("{} is a truncated ELF", path.display());
    }
    if h[..5] != *b"\x7fELF\x02" {
        bail!("{} is not a 64-bit ELF", path.display());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(v)
    };
    let (phoff, phentsize, phnum) = (u64_at(&h, 32), u16_at(&h, 54), u16_at(&h, 56));
    let size = phentsize as usize;
    if size < 40 {
        return Ok(None);
    }
    // Program headers past the end of the file are not there.
    let want = (u64::from(phnum) * size as u64)
        .min(len.saturating_sub(phoff))
        .min(MAX_PHDRS);
    let mut table = vec![0u8; want as usize];
    f.read_exact_at(&mut table, phoff)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(table.chunks_exact(size).find_map(|p| {
        let kind = u32::from_le_bytes([p[0], p[1], p[2], p[3]]);
        (kind == PT_INTERP).then(|| (u64_at(p, 8), u64_at(p, 32)))
    }))
}

/// True if the ELF file at `path` asks for a program interpreter (is
/// dynamically linked): such an init cannot run in an initramfs.
pub fn is_dynamic(path: &Path) -> Result<bool> {
    let f = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(interp_segment(&f, path)?.is_some())
}

/// The interpreter the ELF file at `path` names, if it is one that does.
pub fn interpreter(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let (off, size) = interp_segment(&f, path).ok()??;
    let mut name = vec![0u8; size.min(MAX_INTERP) as usize];
    f.read_exact_at(&mut name, off).ok()?;
    let s = std::str::from_utf8(&name).ok()?.trim_end_matches('\0');
    Some(s.to_string())
}
