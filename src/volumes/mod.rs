//! Volumes: `-v` on `run` and `create` ([`spec`]), named volumes on disk
//! ([`store`]), and what joins them to a box: the launcher's bind mounts
//! for a container ([`binds`]), Docker's "Mounts" for `inspect`
//! ([`mounts_json`]), which boxes use a volume ([`users`]). A VM box has
//! no way to share a host directory yet: [`for_vm`] says so.

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
    /// VM boxes cannot take volumes yet.
    #[error("volumes in VM boxes: not yet (use --isolation container)")]
    VmNotYet,
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

/// The one place a VM box's volumes are turned into what the VM needs.
/// Until the VMM can share a host directory (virtio-fs), any volume is
/// refused here.
pub fn for_vm(specs: &[VolumeSpec]) -> Result<(), Error> {
    if specs.is_empty() {
        Ok(())
    } else {
        Err(Error::VmNotYet)
    }
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
    fn vm_boxes_refuse_volumes_and_binds_must_exist() -> Result<(), Box<dyn std::error::Error>> {
        assert!(for_vm(&[]).is_ok());
        let specs = parse_all(&["/definitely/not/here:/data".into()])?;
        assert!(for_vm(&specs)
            .expect_err("vm")
            .to_string()
            .contains("not yet"));
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
