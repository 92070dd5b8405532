//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and a reader that
//! computes one while data streams through it.
//!
//! Digests name blobs on disk (`blobs/<algorithm>/<hex>`), so a digest string
//! from a manifest is parsed strictly: a known algorithm and lowercase hex of
//! the right length, nothing that could act as a path.

use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;

use sha2::{Digest as _, Sha256, Sha512};

/// Errors of digest parsing and checking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The digest string is not `<algorithm>:<hex>` with a supported algorithm.
    #[error("malformed or unsupported digest {0:?} (want sha256:<64 hex> or sha512:<128 hex>)")]
    Malformed(String),
    /// Content does not match its digest.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    Mismatch {
        /// What was checked.
        what: String,
        /// The digest that was promised.
        expected: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// Content does not have the size its descriptor promised.
    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    Size {
        /// What was checked.
        what: String,
        /// Bytes promised.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
}

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// SHA-256, the one nearly every image uses.
    Sha256,
    /// SHA-512, allowed by the OCI image spec.
    Sha512,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha512 => 128,
        }
    }
}

/// A parsed, validated digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `sha256:<hex>` or `sha512:<hex>`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::Malformed(s.chars().take(200).collect());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(bad()),
        };
        let valid = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(bad());
        }
        Ok(Self {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// The SHA-256 digest of `data`.
    pub fn sha256_of(data: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Where an OCI image layout keeps the blob: `blobs/<alg>/<hex>`.
    pub fn blob_path(&self) -> PathBuf {
        PathBuf::from("blobs")
            .join(self.algorithm.name())
            .join(&self.hex)
    }

    /// Checks that `actual` is this digest.
    pub fn check(&self, what: &str, actual: &Digest) -> Result<(), Error> {
        if self == actual {
            Ok(())
        } else {
            Err(Error::Mismatch {
                what: what.to_string(),
                expected: self.clone(),
                actual: actual.clone(),
            })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// A reader that hashes and counts what passes through it.
pub struct DigestReader<R> {
    inner: R,
    hasher: Hasher,
    bytes: u64,
}

impl<R: Read> DigestReader<R> {
    /// Wraps `inner`, hashing with `algorithm`.
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        let hasher = match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        };
        Self {
            inner,
            hasher,
            bytes: 0,
        }
    }

    /// Reads the rest of the stream (so trailing bytes are hashed too) and
    /// returns the digest and the byte count.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let (algorithm, hex) = match self.hasher {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Ok((Digest { algorithm, hex }, self.bytes))
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let data = &buf[..n];
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_refuses_paths_and_junk() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert!(Digest::parse(&ok).is_ok());
        for bad in [
            "sha256:../../etc/passwd",
            "sha256:ABC",
            "md5:abcd",
            "sha256",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}/", "a".repeat(63)),
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn reader_hashes_what_passes() -> io::Result<()> {
        let data = b"hello world";
        let (d, n) = DigestReader::new(&data[..], Algorithm::Sha256).finish()?;
        assert_eq!(n, 11);
        assert_eq!(
            d.to_string(),
            "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        assert_eq!(d, Digest::sha256_of(data));
        Ok(())
    }
}
