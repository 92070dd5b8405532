//! Volumes: `-v` on `run` and `create` ([`spec`]), named volumes on disk
//! ([`store`]), and what joins them to a box: the launcher's bind mounts
//! for a container ([`binds`]), Docker's "Mounts" for `inspect`
//! ([`mounts_json`]), which boxes use a volume ([`users`]), and the
//! shares of a VM box ([`for_vm`]: virtio-fs, one file server each).

pub mod spec;
pub mod store;

use std::path::Path;

use spec::{Kind, VolumeSpec};
use store::Volumes;

use crate::boxes::record::Record;
use crate::boxes::store::Lock;

/// Errors of joining volumes to a box.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `-v` value is malformed.
    #[error(transparent)]
    Spec(#[from] spec::Error),
    /// The volume store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A bind's host path is missing (Docker would make a directory
    /// there; twinbox does not, so a typo is not silently a new dir).
    #[error(
        "-v {0}:{1}: host path {0} does not exist (twinbox does not create it; make it first)"
    )]
    HostPath(String, String),
    /// More volumes than a VM has virtio-fs devices for.
    #[error("{0} volumes: a VM box takes at most {max}", max = twinbox_vmm::config::MAX_SHARES)]
    VmTooMany(usize),
    /// A VM shares directories only.
    #[error(
        "-v {0}: a VM box shares directories only (virtio-fs); bind the directory that holds it"
    )]
    VmNotDir(String),
}

/// Parses every `-v` value.
pub fn parse_all(values: &[String]) -> Result<Vec<VolumeSpec>, Error> {
    Ok(values
        .iter()
        .map(|v| spec::parse(v))
        .collect::<Result<_, _>>()?)
}

/// Checks that every bind's host path exists.
pub fn check_host(specs: &[VolumeSpec]) -> Result<(), Error> {
    for s in specs.iter().filter(|s| s.kind == Kind::Bind) {
        if std::fs::metadata(&s.source).is_err() {
            return Err(Error::HostPath(s.source.clone(), s.target.clone()));
        }
    }
    Ok(())
}

/// A VM box's volumes as the VM takes them: each a host directory the
/// guest mounts over virtio-fs (named volumes made if missing). A VM has
/// at most `MAX_SHARES` virtio-fs devices, and a share is a directory
/// (virtiofsd serves trees, not single files).
pub fn for_vm(
    home: &Path,
    specs: &[VolumeSpec],
) -> Result<Vec<crate::backends::vm::VmVolume>, Error> {
    if specs.len() > twinbox_vmm::config::MAX_SHARES {
        return Err(Error::VmTooMany(specs.len()));
    }
    check_host(specs)?;
    let _lock = make_named(home, specs)?;
    let v = Volumes::open(home)?;
    specs
        .iter()
        .map(|s| {
            let source = match s.kind {
                Kind::Bind => std::path::PathBuf::from(&s.source),
                Kind::Volume => v.data(&s.source),
            };
            if s.kind == Kind::Bind && !source.is_dir() {
                return Err(Error::VmNotDir(s.source.clone()));
            }
            Ok(crate::backends::vm::VmVolume {
                source,
                target: s.target.clone(),
                readonly: s.readonly,
            })
        })
        .collect()
}

/// Checks the binds and makes the named volumes that do not exist yet.
/// The returned lock (held when there are named volumes) keeps `volume
/// rm` and `prune` out until the caller has saved the box's record.
pub fn prepare(home: &Path, specs: &[VolumeSpec]) -> Result<Option<Lock>, Error> {
    check_host(specs)?;
    make_named(home, specs)
}

fn make_named(home: &Path, specs: &[VolumeSpec]) -> Result<Option<Lock>, Error> {
    if !specs.iter().any(|s| s.kind == Kind::Volume) {
        return Ok(None);
    }
    let v = Volumes::open(home)?;
    let lock = v.lock()?;
    for s in specs.iter().filter(|s| s.kind == Kind::Volume) {
        v.ensure(&s.source)?;
    }
    Ok(Some(lock))
}

/// The launcher's bind mounts for a container box's volumes (named ones
/// made if missing; a bind's missing host path is the launcher's error,
/// which a box's supervisor reports as the box's failure to start).
pub fn binds(home: &Path, specs: &[VolumeSpec]) -> Result<Vec<twinbox_container::Bind>, Error> {
    let _lock = make_named(home, specs)?;
    let v = Volumes::open(home)?;
    Ok(specs
        .iter()
        .map(|s| twinbox_container::Bind {
            source: match s.kind {
                Kind::Bind => s.source.clone().into(),
                Kind::Volume => v.data(&s.source),
            },
            target: s.target.clone(),
            readonly: s.readonly,
        })
        .collect())
}

/// Docker's "Mounts" of `inspect` for `specs`.
pub fn mounts_json(home: &Path, specs: &[VolumeSpec]) -> serde_json::Value {
    let data = |name: &str| home.join("volumes").join(name).join("_data");
    serde_json::Value::Array(
        specs
            .iter()
            .map(|s| match s.kind {
                Kind::Bind => serde_json::json!({
                    "Type": "bind", "Source": s.source, "Destination": s.target,
                    "Mode": if s.readonly { "ro" } else { "" }, "RW": !s.readonly,
                    "Propagation": "rprivate",
                }),
                Kind::Volume => serde_json::json!({
                    "Type": "volume", "Name": s.source,
                    "Source": data(&s.source), "Destination": s.target,
                    "Driver": "local", "Mode": if s.readonly { "ro" } else { "z" },
                    "RW": !s.readonly, "Propagation": "",
                }),
            })
            .collect(),
    )
}

/// A box's record as `inspect` prints it: the record, and "Mounts".
pub fn inspect_value(home: &Path, rec: &Record) -> serde_json::Result<serde_json::Value> {
    let mut v = serde_json::to_value(rec)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("Mounts".into(), mounts_json(home, &rec.options.volumes));
    }
    Ok(v)
}

/// The boxes (of `all`) that use volume `name`, running or not.
pub fn users<'a>(all: &'a [Record], name: &str) -> Vec<&'a Record> {
    all.iter()
        .filter(|r| {
            r.options
                .volumes
                .iter()
                .any(|s| s.kind == Kind::Volume && s.source == name)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_volumes_are_directories_few_enough_and_binds_must_exist(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        assert!(for_vm(home.path(), &[])?.is_empty());
        let specs = parse_all(&["/tmp:/host:ro".into(), "db:/var/db".into()])?;
        let v = for_vm(home.path(), &specs)?;
        assert_eq!(v[0].source, Path::new("/tmp"));
        assert!(v[0].readonly && !v[1].readonly);
        assert_eq!(v[1].source, home.path().join("volumes/db/_data"));
        assert!(v[1].source.is_dir(), "the named volume was made");
        let file = parse_all(&["/etc/passwd:/p".into()])?;
        assert!(matches!(
            for_vm(home.path(), &file),
            Err(Error::VmNotDir(_))
        ));
        let many: Vec<String> = (0..5).map(|i| format!("v{i}:/d{i}")).collect();
        assert!(matches!(
            for_vm(home.path(), &parse_all(&many)?),
            Err(Error::VmTooMany(5))
        ));
        let specs = parse_all(&["/definitely/not/here:/data".into()])?;
        assert!(check_host(&specs)
            .expect_err("missing")
            .to_string()
            .contains("does not exist"));
        Ok(())
    }

    #[test]
    fn named_volumes_become_binds_of_their_data() -> Result<(), Box<dyn std::error::Error>> {
        let home = tempfile::tempdir()?;
        let specs = parse_all(&["/tmp:/host:ro".into(), "db:/var/db".into()])?;
        let b = binds(home.path(), &specs)?;
        assert_eq!(b[0].source, Path::new("/tmp"));
        assert!(b[0].readonly);
        assert_eq!(b[1].source, home.path().join("volumes/db/_data"));
        assert!(b[1].source.is_dir());
        let m = mounts_json(home.path(), &specs);
        assert_eq!(m[0]["Type"], "bind");
        assert_eq!(m[0]["RW"], false);
        assert_eq!(m[1]["Type"], "volume");
        assert_eq!(m[1]["Name"], "db");
        assert_eq!(m[1]["Destination"], "/var/db");
        Ok(())
    }
}
