//! Builders of images for tests: tar layers with any entry (including the
//! hostile ones the `tar` crate refuses to write), OCI image layouts and
//! `docker save` directories. Compiled for this crate's tests and, with the
//! `testing` feature, for the end-to-end tests.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;
use tar::{EntryType, Header};

use crate::digest::Digest;

/// A tar archive built entry by entry, names written raw.
pub struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Self::new()
    }
}

fn raw(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

impl Tar {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Adds an entry; `path` and `link` go into the header unchecked
    /// (at most 100 bytes each).
    pub fn entry(
        &mut self,
        kind: EntryType,
        path: &str,
        mode: u32,
        link: &str,
        data: &[u8],
    ) -> &mut Self {
        let mut h = Header::new_old();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        raw(&mut h.as_old_mut().name, path.as_bytes());
        raw(&mut h.as_old_mut().linkname, link.as_bytes());
        if kind == EntryType::Char {
            let _ = h.set_device_major(1);
            let _ = h.set_device_minor(3);
        }
        h.set_cksum();
        // Writing into a Vec cannot fail.
        let _ = self.b.append(&h, data);
        self
    }
    /// Adds a directory.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(EntryType::Directory, path, mode, "", b"")
    }
    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(EntryType::Regular, path, mode, "", data)
    }
    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Symlink, path, 0o777, target, b"")
    }
    /// Adds a hard link.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Link, path, 0o644, target, b"")
    }
    /// The archive's bytes.
    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap_or_default()
    }
}

/// How a layer blob is compressed in a test image.
#[derive(Debug, Clone, Copy)]
pub enum Codec {
    /// Plain tar.
    Tar,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Codec {
    fn encode(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Tar => data.to_vec(),
            Self::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                let _ = e.write_all(data);
                e.finish().unwrap_or_default()
            }
            Self::Zstd => zstd::encode_all(data, 3).unwrap_or_default(),
        }
    }
    fn media_type(self) -> &'static str {
        match self {
            Self::Tar => "application/vnd.oci.image.layer.v1.tar",
            Self::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Self::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

fn put_blob(dir: &Path, data: &[u8]) -> std::io::Result<Digest> {
    let d = Digest::sha256_of(data);
    let p = dir.join(d.blob_path());
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(p, data)?;
    Ok(d)
}

/// The image config used by the builders.
pub fn config_json(diff_ids: &[String]) -> serde_json::Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--flag"],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/work",
            "User": "1000:1000"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    })
}

/// Writes an OCI image layout with `layers` into `dir`; `name` goes into the
/// index annotations.
pub fn oci_layout(
    dir: &Path,
    layers: &[(Vec<u8>, Codec)],
    name: Option<&str>,
) -> std::io::Result<()> {
    oci_layout_edited(dir, layers, name, &|_| {}, &|_| {})
}

/// Like [`oci_layout`], letting the test edit the config and the manifest
/// before they are hashed (so digests stay consistent).
pub fn oci_layout_edited(
    dir: &Path,
    layers: &[(Vec<u8>, Codec)],
    name: Option<&str>,
    edit_config: &dyn Fn(&mut serde_json::Value),
    edit_manifest: &dyn Fn(&mut serde_json::Value),
) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, codec) in layers {
        diff_ids.push(Digest::sha256_of(tar).to_string());
        let blob = codec.encode(tar);
        let d = put_blob(dir, &blob)?;
        descs.push(
            json!({"mediaType": codec.media_type(), "digest": d.to_string(), "size": blob.len()}),
        );
    }
    let mut config = config_json(&diff_ids);
    edit_config(&mut config);
    let config = serde_json::to_vec(&config)?;
    let cd = put_blob(dir, &config)?;
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()},
        "layers": descs,
    });
    edit_manifest(&mut manifest);
    let manifest = serde_json::to_vec(&manifest)?;
    let md = put_blob(dir, &manifest)?;
    let mut desc = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md.to_string(),
        "size": manifest.len(),
    });
    if let Some(n) = name {
        desc["annotations"] =
            json!({"io.containerd.image.name": n, "org.opencontainers.image.ref.name": "latest"});
    }
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [desc]}))?,
    )?;
    Ok(())
}

/// Writes a classic `docker save` directory (`manifest.json`, `<hex>.json`,
/// `<n>/layer.tar`) into `dir`.
pub fn docker_save(dir: &Path, layers: &[Vec<u8>], repo_tag: &str) -> std::io::Result<()> {
    docker_save_edited(dir, layers, repo_tag, &|_| {})
}

/// Like [`docker_save`], letting the test edit the image config first.
pub fn docker_save_edited(
    dir: &Path,
    layers: &[Vec<u8>],
    repo_tag: &str,
    edit_config: &dyn Fn(&mut serde_json::Value),
) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut paths = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, tar) in layers.iter().enumerate() {
        let rel = format!("{i}/layer.tar");
        fs::create_dir_all(dir.join(i.to_string()))?;
        fs::write(dir.join(&rel), tar)?;
        paths.push(rel);
        diff_ids.push(Digest::sha256_of(tar).to_string());
    }
    let mut config = config_json(&diff_ids);
    edit_config(&mut config);
    let config = serde_json::to_vec(&config)?;
    let cfg_name = format!("{}.json", Digest::sha256_of(&config).hex());
    fs::write(dir.join(&cfg_name), &config)?;
    fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(
            &json!([{"Config": cfg_name, "RepoTags": [repo_tag], "Layers": paths}]),
        )?,
    )?;
    Ok(())
}

/// A tar of the directory `dir` (what `docker save` or `tar -C dir .` gives).
pub fn tar_of_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir)?;
    b.into_inner()
}
