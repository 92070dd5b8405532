//! The mailbox: how a run reaches a guest restored from a warm-start
//! snapshot. It is a legacy-pmem block device (`/dev/pmem1`, 2 MiB) whose
//! content the VMM writes when init reports boot timer mark
//! [`crate::port::MARK_READY`]; init reads it right after that mark.
//!
//! Layout (little-endian; the VMM writes the same format, see
//! `vmm/src/mailbox.rs`):
//!
//! ```text
//! offset  size  field
//!  0       8    magic b"TWBXMAIL"
//!  8       4    version, u32 = 1
//! 12       4    payload length, u32, <= 2 MiB - 96
//! 16       8    host wall clock: seconds since the epoch, i64
//! 24       4    host wall clock: nanoseconds, u32, < 1e9
//! 28       4    entropy length, u32, <= 64
//! 32      64    entropy area: bytes 32..32+len are the entropy, the rest unused
//! 96       n    payload: the run spec as JSON (`Spec`)
//! ```
//!
//! [`parse`] is pure and bounds-checked; [`read`] reads the device with
//! `O_DIRECT` (the block device's page cache may hold pages from before the
//! snapshot) into a 4096-aligned buffer; [`set_clock`] and [`reseed`]
//! apply the wall clock and the entropy.

use std::alloc::Layout;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::ptr::NonNull;

/// First eight bytes of a mailbox.
pub const MAGIC: [u8; 8] = *b"TWBXMAIL";
/// The format version this init reads.
pub const VERSION: u32 = 1;
/// Size of the mailbox device.
pub const DEVICE_SIZE: usize = 2 << 20;
/// Size of the header (the payload's offset).
pub const HEADER_SIZE: usize = 96;
/// Longest payload.
pub const MAX_PAYLOAD: usize = DEVICE_SIZE - HEADER_SIZE;
/// Offset of the entropy area.
pub const ENTROPY_OFFSET: usize = 32;
/// Size of the entropy area (the longest entropy).
pub const MAX_ENTROPY: usize = 64;

/// The first read from the device, and the alignment of every buffer.
const PAGE: usize = 4096;
/// The block size every `O_DIRECT` length is a multiple of.
const SECTOR: usize = 512;

/// A decoded mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// Host wall clock, seconds since the epoch.
    pub wall_secs: i64,
    /// Host wall clock, nanoseconds (< 1e9).
    pub wall_nanos: u32,
    /// Bytes to mix into the kernel's RNG (at most [`MAX_ENTROPY`]).
    pub entropy: Vec<u8>,
    /// The run spec, JSON.
    pub payload: Vec<u8>,
}

/// The header fields.
struct Header {
    payload_len: usize,
    wall_secs: i64,
    wall_nanos: u32,
    entropy_len: usize,
}

fn array<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], String> {
    b.get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or_else(|| "mailbox: truncated header".to_string())
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    array(b, at).map(u32::from_le_bytes)
}

fn header(b: &[u8]) -> Result<Header, String> {
    if b.len() < HEADER_SIZE {
        return Err(format!(
            "mailbox: truncated header ({} of {HEADER_SIZE} bytes)",
            b.len()
        ));
    }
    let magic: [u8; 8] = array(b, 0)?;
    if magic != MAGIC {
        return Err(format!("mailbox: bad magic {magic:02x?}"));
    }
    let version = u32_at(b, 8)?;
    if version != VERSION {
        return Err(format!(
            "mailbox: version {version}, this init reads {VERSION}"
        ));
    }
    let payload_len = usize::try_from(u32_at(b, 12)?).unwrap_or(usize::MAX);
    if payload_len > MAX_PAYLOAD {
        return Err(format!(
            "mailbox: payload length {payload_len} > {MAX_PAYLOAD}"
        ));
    }
    let wall_secs = i64::from_le_bytes(array(b, 16)?);
    let wall_nanos = u32_at(b, 24)?;
    if wall_nanos >= 1_000_000_000 {
        return Err(format!("mailbox: nanoseconds {wall_nanos} >= 1e9"));
    }
    let entropy_len = usize::try_from(u32_at(b, 28)?).unwrap_or(usize::MAX);
    if entropy_len > MAX_ENTROPY {
        return Err(format!(
            "mailbox: entropy length {entropy_len} > {MAX_ENTROPY}"
        ));
    }
    Ok(Header {
        payload_len,
        wall_secs,
        wall_nanos,
        entropy_len,
    })
}

/// The length of the whole mailbox (header and payload) that starts with
/// `first` (at least the header), after checking the header.
pub fn total_len(first: &[u8]) -> Result<usize, String> {
    header(first).map(|h| HEADER_SIZE + h.payload_len)
}

/// Decodes a mailbox from its bytes (header and payload; anything after
/// the payload, such as the rest of a sector, is ignored). Never panics.
pub fn parse(header_and_payload: &[u8]) -> Result<Mailbox, String> {
    let b = header_and_payload;
    let h = header(b)?;
    let entropy = b
        .get(ENTROPY_OFFSET..ENTROPY_OFFSET + h.entropy_len)
        .ok_or("mailbox: truncated entropy")?
        .to_vec();
    let payload = b
        .get(HEADER_SIZE..HEADER_SIZE + h.payload_len)
        .ok_or_else(|| {
            format!(
                "mailbox: truncated payload ({} of {} bytes)",
                b.len().saturating_sub(HEADER_SIZE),
                h.payload_len
            )
        })?
        .to_vec();
    Ok(Mailbox {
        wall_secs: h.wall_secs,
        wall_nanos: h.wall_nanos,
        entropy,
        payload,
    })
}

/// Encodes `m` (the header and the payload, no padding): the inverse of
/// [`parse`]. Init only reads mailboxes (the VMM has its own writer), so
/// outside the tests this is unused.
#[cfg_attr(not(test), allow(dead_code))]
pub fn encode(m: &Mailbox) -> Result<Vec<u8>, String> {
    if m.entropy.len() > MAX_ENTROPY {
        return Err(format!("mailbox: entropy longer than {MAX_ENTROPY}"));
    }
    if m.payload.len() > MAX_PAYLOAD {
        return Err(format!("mailbox: payload longer than {MAX_PAYLOAD}"));
    }
    if m.wall_nanos >= 1_000_000_000 {
        return Err("mailbox: nanoseconds >= 1e9".into());
    }
    let len32 = |n: usize| u32::try_from(n).map_err(|_| "mailbox: length overflow".to_string());
    let mut b = Vec::with_capacity(HEADER_SIZE + m.payload.len());
    b.extend_from_slice(&MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&len32(m.payload.len())?.to_le_bytes());
    b.extend_from_slice(&m.wall_secs.to_le_bytes());
    b.extend_from_slice(&m.wall_nanos.to_le_bytes());
    b.extend_from_slice(&len32(m.entropy.len())?.to_le_bytes());
    b.extend_from_slice(&m.entropy);
    b.resize(HEADER_SIZE, 0);
    b.extend_from_slice(&m.payload);
    Ok(b)
}

/// A zeroed heap buffer aligned to [`PAGE`], as `O_DIRECT` needs.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// A buffer of `len` bytes (> 0).
    fn new(len: usize) -> Result<Self, String> {
        let layout = Layout::from_size_align(len.max(1), PAGE)
            .map_err(|e| format!("mailbox buffer of {len} bytes: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| format!("mailbox buffer of {len} bytes: out of memory"))?;
        Ok(Self { ptr, layout })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialized (zeroed)
        // bytes owned by `self`, borrowed for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, borrowed exclusively through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this very layout and
        // is freed once, here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Fills `buf` from `offset` with `pread`s; returns the bytes read (fewer
/// than `buf.len()` only at the end of the device).
fn read_full(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<usize, String> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset + done as u64;
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the mailbox at {at}: {e}")),
        }
    }
    Ok(done)
}

/// Reads and decodes the mailbox on the block device `path`, bypassing the
/// page cache: the first page, then the rest of the payload if longer.
pub fn read(path: &str) -> Result<Mailbox, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("opening the mailbox {path}: {e}"))?;
    let mut first = AlignedBuf::new(PAGE)?;
    let n = read_full(&file, first.as_mut_slice(), 0)?;
    let total = total_len(&first.as_slice()[..n])?;
    if total <= n {
        return parse(&first.as_slice()[..n]);
    }
    // total > n means n is the whole first page (a shorter read is the end
    // of the device): the rest follows it, in whole sectors.
    let mut all = AlignedBuf::new(round_up(total, PAGE))?;
    all.as_mut_slice()[..PAGE].copy_from_slice(first.as_slice());
    let end = round_up(total, SECTOR);
    let m = read_full(&file, &mut all.as_mut_slice()[PAGE..end], PAGE as u64)?;
    parse(&all.as_slice()[..PAGE + m])
}

/// Sets the guest's wall clock to the host's.
pub fn set_clock(m: &Mailbox) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: m.wall_secs,
        tv_nsec: libc::c_long::from(m.wall_nanos),
    };
    // SAFETY: clock_settime reads the timespec we own.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "setting the clock to {}.{:09}: {}",
            m.wall_secs,
            m.wall_nanos,
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// `struct rand_pool_info` with room for [`MAX_ENTROPY`] bytes.
#[repr(C)]
struct RandPoolInfo {
    /// Bits credited.
    entropy_count: libc::c_int,
    /// Bytes in `buf`.
    buf_size: libc::c_int,
    buf: [u32; MAX_ENTROPY / 4],
}

/// Mixes the mailbox's entropy into the kernel's RNG, credits it, and
/// rekeys the CRNG now, so that guests restored from one snapshot stop
/// sharing random state. Nothing to do for empty entropy.
pub fn reseed(m: &Mailbox) -> Result<(), String> {
    if m.entropy.is_empty() {
        return Ok(());
    }
    let len = m.entropy.len().min(MAX_ENTROPY);
    let mut info = RandPoolInfo {
        entropy_count: 0,
        buf_size: 0,
        buf: [0; MAX_ENTROPY / 4],
    };
    for (word, chunk) in info.buf.iter_mut().zip(m.entropy[..len].chunks(4)) {
        let mut b = [0u8; 4];
        b[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(b);
    }
    // len <= 64, so these fit.
    info.buf_size = len as libc::c_int;
    info.entropy_count = (8 * len) as libc::c_int;
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("opening /dev/urandom: {e}"))?;
    let fd = urandom.as_raw_fd();
    // SAFETY: the ioctl reads a rand_pool_info we own whose buffer holds
    // `buf_size` bytes; `fd` is open for the call.
    if unsafe { libc::ioctl(fd, RNDADDENTROPY, &info as *const RandPoolInfo) } != 0 {
        return Err(format!(
            "adding entropy (RNDADDENTROPY): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument; `fd` is open for the call.
    if unsafe { libc::ioctl(fd, RNDRESEEDCRNG) } != 0 {
        return Err(format!(
            "reseeding the CRNG (RNDRESEEDCRNG): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Mailbox {
        Mailbox {
            wall_secs: 1_700_000_000,
            wall_nanos: 123_456_789,
            entropy: (0..64).collect(),
            payload: br#"{"argv":["true"],"env":[],"cwd":"/","user":"","hostname":"box"}"#.to_vec(),
        }
    }

    fn good() -> Vec<u8> {
        encode(&sample()).unwrap_or_default()
    }

    fn with_u32(mut b: Vec<u8>, at: usize, v: u32) -> Vec<u8> {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        b
    }

    #[test]
    fn round_trips() {
        let b = good();
        assert_eq!(b.len(), HEADER_SIZE + sample().payload.len());
        assert_eq!(&b[..8], b"TWBXMAIL");
        assert_eq!(parse(&b), Ok(sample()));
        assert_eq!(total_len(&b), Ok(b.len()));
        // Sector padding after the payload is ignored.
        let mut padded = b.clone();
        padded.resize(4096, 0xaa);
        assert_eq!(parse(&padded), Ok(sample()));
        // Short entropy, negative time, empty payload.
        let m = Mailbox {
            wall_secs: -5,
            wall_nanos: 0,
            entropy: vec![7; 3],
            payload: Vec::new(),
        };
        assert_eq!(encode(&m).and_then(|b| parse(&b)), Ok(m));
        // A payload beyond the first page.
        let big = Mailbox {
            payload: vec![b'x'; 10_000],
            ..sample()
        };
        assert_eq!(encode(&big).and_then(|b| parse(&b)), Ok(big));
    }

    #[test]
    fn layout_is_fixed() {
        let b = good();
        assert_eq!(u32::from_le_bytes([b[8], b[9], b[10], b[11]]), 1);
        assert_eq!(
            u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize,
            sample().payload.len()
        );
        assert_eq!(
            i64::from_le_bytes([b[16], b[17], b[18], b[19], b[20], b[21], b[22], b[23]]),
            1_700_000_000
        );
        assert_eq!(
            u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
            123_456_789
        );
        assert_eq!(u32::from_le_bytes([b[28], b[29], b[30], b[31]]), 64);
        assert_eq!(b[32], 0);
        assert_eq!(b[95], 63);
        assert_eq!(b[96], b'{');
    }

    #[test]
    fn refuses_bad_headers() {
        let mut bad_magic = good();
        bad_magic[0] = b'X';
        assert!(parse(&bad_magic).is_err_and(|e| e.contains("magic")));
        assert!(parse(&vec![0; 4096]).is_err_and(|e| e.contains("magic")));
        assert!(parse(&with_u32(good(), 8, 2)).is_err_and(|e| e.contains("version")));
        assert!(parse(&with_u32(good(), 8, 0)).is_err());
        let over = (MAX_PAYLOAD + 1) as u32;
        assert!(parse(&with_u32(good(), 12, over)).is_err_and(|e| e.contains("payload length")));
        assert!(total_len(&with_u32(good(), 12, u32::MAX)).is_err());
        assert!(parse(&with_u32(good(), 28, 65)).is_err_and(|e| e.contains("entropy length")));
        assert!(parse(&with_u32(good(), 28, u32::MAX)).is_err());
        assert!(parse(&with_u32(good(), 24, 1_000_000_000)).is_err_and(|e| e.contains("nano")));
        assert!(parse(&with_u32(good(), 24, u32::MAX)).is_err());
        assert!(parse(&with_u32(good(), 24, 999_999_999)).is_ok());
        // The largest payload length is accepted by the header check.
        assert_eq!(
            total_len(&with_u32(good(), 12, MAX_PAYLOAD as u32)),
            Ok(DEVICE_SIZE)
        );
    }

    #[test]
    fn refuses_truncation() {
        let b = good();
        for n in 0..b.len() {
            assert!(parse(&b[..n]).is_err(), "accepted {n} bytes");
        }
        assert!(total_len(&b[..HEADER_SIZE - 1]).is_err());
        assert_eq!(total_len(&b[..HEADER_SIZE]), Ok(b.len()));
        assert!(parse(&b[..HEADER_SIZE]).is_err_and(|e| e.contains("truncated payload")));
    }

    #[test]
    fn never_panics_on_mutations() {
        // A small xorshift: deterministic, no dependency.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = good();
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let cut = (next() as usize) % (b.len() + 1);
            let _ = parse(&b[..cut]);
            let _ = total_len(&b[..cut]);
        }
    }

    #[test]
    fn encode_refuses_what_parse_would() {
        let long_entropy = Mailbox {
            entropy: vec![0; 65],
            ..sample()
        };
        assert!(encode(&long_entropy).is_err());
        let bad_nanos = Mailbox {
            wall_nanos: 1_000_000_000,
            ..sample()
        };
        assert!(encode(&bad_nanos).is_err());
        let long_payload = Mailbox {
            payload: vec![0; MAX_PAYLOAD + 1],
            ..sample()
        };
        assert!(encode(&long_payload).is_err());
    }

    #[test]
    fn aligned_buffers() {
        for len in [1, 512, 4096, 10_000, DEVICE_SIZE] {
            let mut b = match AlignedBuf::new(len) {
                Ok(b) => b,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(b.as_slice().as_ptr() as usize % PAGE, 0);
            assert!(b.as_slice().len() >= len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            b.as_mut_slice()[len - 1] = 1;
            assert_eq!(b.as_slice()[len - 1], 1);
        }
        assert_eq!(round_up(1, SECTOR), 512);
        assert_eq!(round_up(512, SECTOR), 512);
        assert_eq!(round_up(4097, PAGE), 8192);
    }

    #[test]
    fn reads_a_file_in_pages() {
        // O_DIRECT on a regular file works on most file systems; where the
        // temporary directory's does not support it (tmpfs), skip.
        let big = Mailbox {
            payload: vec![b'y'; 9_000],
            ..sample()
        };
        let Ok(mut bytes) = encode(&big) else {
            panic!("encode");
        };
        bytes.resize(round_up(bytes.len(), PAGE) + PAGE, 0);
        let path = std::env::temp_dir().join(format!("twinbox-mailbox-{}.bin", std::process::id()));
        if std::fs::write(&path, &bytes).is_err() {
            return;
        }
        let got = read(&path.to_string_lossy());
        let _ = std::fs::remove_file(&path);
        match got {
            Ok(m) => assert_eq!(m, big),
            Err(e) => assert!(e.contains("opening"), "{e}"),
        }
    }
}
