//! Image names: `NAME[:TAG]`, Docker's grammar, made strict.
//!
//! A name becomes a directory in the store, so it is validated before it is
//! used: lowercase path components of `[a-z0-9]` joined by `.`, `_`, `-`,
//! separated by `/`; a tag of `[A-Za-z0-9_.-]`, at most 128 characters,
//! `latest` when absent. Nothing in that grammar can be `..` or hold a
//! store-separator character, so the mapping to a directory name is
//! reversible and safe.

use std::fmt;
use std::str::FromStr;

/// Errors of image name parsing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name does not follow the grammar.
    #[error("invalid image name {0:?}: want NAME[:TAG], NAME lowercase letters, digits and . _ - / separators")]
    Invalid(String),
}

/// A validated image name with its tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    name: String,
    tag: String,
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|&x| {
            x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
        })
        && !c.contains("..")
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'.' | b'_' | b'-'))
}

impl Reference {
    /// Parses `NAME[:TAG]`. A leading `docker.io/library/` or `docker.io/`
    /// is dropped, as Docker shows names.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::Invalid(s.chars().take(300).collect());
        let (name, tag) = match s.rsplit_once(':') {
            // A ':' before the last '/' would be a registry port: not supported.
            Some((n, t)) if !t.contains('/') => (n, t),
            Some(_) => return Err(bad()),
            None => (s, "latest"),
        };
        let name = name
            .strip_prefix("docker.io/library/")
            .or_else(|| name.strip_prefix("docker.io/"))
            .unwrap_or(name);
        if name.len() > 255 || !name.split('/').all(valid_component) || !valid_tag(tag) {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    /// True when `s` is a bare tag (what OCI's `ref.name` annotation often holds).
    pub fn is_tag(s: &str) -> bool {
        valid_tag(s)
    }

    /// The repository name without the tag.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The store directory name: `/` becomes `+` and `:` becomes `@`
    /// (neither can appear in a valid name).
    pub fn dir_name(&self) -> String {
        format!("{}@{}", self.name.replace('/', "+"), self.tag)
    }

    /// The inverse of [`Reference::dir_name`].
    pub fn from_dir_name(d: &str) -> Result<Self, Error> {
        let (n, t) = d
            .rsplit_once('@')
            .ok_or_else(|| Error::Invalid(d.to_string()))?;
        Self::parse(&format!("{}:{}", n.replace('+', "/"), t))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults_tag() -> Result<(), Error> {
        let r = Reference::parse("busybox")?;
        assert_eq!(r.to_string(), "busybox:latest");
        let r = Reference::parse("docker.io/library/alpine:3.19")?;
        assert_eq!(r.to_string(), "alpine:3.19");
        let r = Reference::parse("my.org/team/app_1:v1.2-rc")?;
        assert_eq!(r.name(), "my.org/team/app_1");
        assert_eq!(Reference::from_dir_name(&r.dir_name())?, r);
        Ok(())
    }

    #[test]
    fn refuses_what_could_be_a_path_or_junk() {
        for bad in [
            "",
            "..",
            "../x",
            "a/../b",
            "a//b",
            "/abs",
            "UPPER",
            "a b",
            "a:",
            "a:b/c",
            "host:5000/x",
            "x@sha256:00",
            "a+b",
            "a:b@c",
            ".hidden",
            "a/.",
            "name:tag:more",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
