//! `-v` on `run` and `create`, as Docker spells it: `HOST_PATH:BOX_PATH`
//! (a bind mount of an existing absolute host path) or `NAME:BOX_PATH` (a
//! named volume, made on first use), either with `:ro` or `:rw`. Parsed
//! here into a [`VolumeSpec`], which the box's record keeps and `inspect`
//! shows as Docker's "Mounts".
//!
//! Not taken: `-v BOX_PATH` alone (Docker's anonymous volume), options
//! other than `ro`/`rw` (SELinux labels, propagation, `nocopy`).

use serde::{Deserialize, Serialize};

/// Errors of a `-v` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not `SRC:DST[:MODE]`.
    #[error("-v {0:?}: want HOST_PATH:BOX_PATH[:ro|:rw] or NAME:BOX_PATH[:ro|:rw]")]
    Form(String),
    /// A box path alone: an anonymous volume.
    #[error(
        "-v {0:?}: anonymous volumes (a box path alone) are not supported; name one: -v NAME:{0}"
    )]
    Anonymous(String),
    /// The mode is not `ro` or `rw`.
    #[error("-v {0:?}: unknown mode {1:?} (ro or rw)")]
    Mode(String, String),
    /// The source is neither an absolute path nor a volume name.
    #[error("-v {0:?}: {1:?} is not a volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+); a host path must be absolute")]
    Source(String, String),
    /// The box path cannot be used.
    #[error("-v {0:?}: {1}")]
    Target(String, &'static str),
}

/// What is mounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A host path.
    Bind,
    /// A named volume under `$TWINBOX_HOME/volumes/`.
    Volume,
}

/// One `-v`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// A bind or a named volume.
    pub kind: Kind,
    /// The host path (bind) or the volume's name.
    pub source: String,
    /// Where it appears in the box.
    pub target: String,
    /// Read-only in the box.
    pub readonly: bool,
}

/// Whether `name` follows Docker's rule for volume names
/// (`[a-zA-Z0-9][a-zA-Z0-9_.-]+`, so at least two characters).
pub fn is_volume_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && name.len() <= 255
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// Parses one `-v` value (no file system checks: see [`super::check_host`]).
pub fn parse(s: &str) -> Result<VolumeSpec, Error> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [one] if one.starts_with('/') => return Err(Error::Anonymous(s.into())),
        [src, dst] => (*src, *dst, None),
        [src, dst, mode] => (*src, *dst, Some(*mode)),
        _ => return Err(Error::Form(s.into())),
    };
    if source.is_empty() || target.is_empty() {
        return Err(Error::Form(s.into()));
    }
    let readonly = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(Error::Mode(s.into(), m.into())),
    };
    let kind = if source.starts_with('/') {
        Kind::Bind
    } else if is_volume_name(source) {
        Kind::Volume
    } else {
        return Err(Error::Source(s.into(), source.into()));
    };
    if kind == Kind::Bind && source.split('/').any(|p| p == "..") {
        return Err(Error::Source(s.into(), source.into()));
    }
    twinbox_container::config::check_box_path(target)
        .map_err(|why| Error::Target(s.into(), why))?;
    Ok(VolumeSpec {
        kind,
        source: source.into(),
        target: target.into(),
        readonly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_binds_and_named_volumes() {
        let v = parse("/srv/data:/data").expect("bind");
        assert_eq!(
            v,
            VolumeSpec {
                kind: Kind::Bind,
                source: "/srv/data".into(),
                target: "/data".into(),
                readonly: false
            }
        );
        assert!(parse("/srv:/data:ro").expect("ro").readonly);
        assert!(!parse("/srv:/data:rw").expect("rw").readonly);
        let n = parse("cache_1.x-y:/var/cache:ro").expect("named");
        assert_eq!((n.kind, n.source.as_str()), (Kind::Volume, "cache_1.x-y"));
        assert!(n.readonly);
        assert_eq!(parse("db:/a/b/c/").expect("deep").target, "/a/b/c/");
    }

    #[test]
    fn refuses_bad_forms() {
        let bad = [
            ("/data", "anonymous"),
            ("", "want"),
            (":/data", "want"),
            ("/a:", "want"),
            ("/a:/b:ro:extra", "want"),
            ("/a:/b:rx", "unknown mode"),
            ("/a:/b:", "unknown mode"),
            ("./rel:/data", "not a volume name"),
            ("rel/dir:/data", "not a volume name"),
            ("x:/data", "not a volume name"),
            ("_x:/data", "not a volume name"),
            ("-x:/data", "not a volume name"),
            ("/a/../etc:/data", "not a volume name"),
            ("/a:data", "absolute"),
            ("/a:/", "root"),
            ("/a:/data/../etc", "'..'"),
            ("/a:/./x", "'..'"),
            ("/a:/proc", "/proc"),
            ("/a:/sys/fs", "/proc"),
            ("/a:/dev/shm", "/proc"),
        ];
        for (s, want) in bad {
            let e = parse(s).expect_err(s).to_string();
            assert!(e.contains(want), "{s:?}: {e:?} should say {want:?}");
        }
    }

    #[test]
    fn volume_names_follow_dockers_rule() {
        assert!(is_volume_name("ab"));
        assert!(is_volume_name("A1_b.c-d"));
        assert!(!is_volume_name("a"));
        assert!(!is_volume_name(".ab"));
        assert!(!is_volume_name("a/b"));
        assert!(!is_volume_name("a b"));
        assert!(!is_volume_name(&"a".repeat(256)));
    }
}
