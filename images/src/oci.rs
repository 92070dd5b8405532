//! Import of an image from a `docker save` tarball or an OCI image layout
//! (a directory, or a tar of one, optionally gzip or zstd compressed).
//!
//! Everything in the input is untrusted: the archive is unpacked with the
//! same confined applier as layers (so its own symlinks cannot reach host
//! files), every JSON document is size-limited, every blob is checked
//! against its digest and size, and every layer's uncompressed stream against
//! the config's `diff_ids`. Media types we do not know are refused. The
//! rootfs is built in a staging directory of the store and appears only when
//! all of it is done (see [`crate::store`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::Deserialize;

use crate::config::{ImageMeta, OciConfig, RunConfig};
use crate::confined::{self, Root};
use crate::digest::{self, Digest, DigestReader};
use crate::layer;
use crate::reference::{self, Reference};
use crate::store::{self, Image, Store};

/// Errors of image import.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source file or directory cannot be read.
    #[error("{path:?}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The input is not an image we understand.
    #[error("not an image: {0}")]
    Layout(String),
    /// A JSON document of the image is malformed.
    #[error("{what} is not valid")]
    Json {
        /// Which document.
        what: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A descriptor names a media type we do not handle.
    #[error("unsupported media type {0:?}")]
    MediaType(String),
    /// A blob or layer does not match its digest or size.
    #[error(transparent)]
    Digest(#[from] digest::Error),
    /// Unpacking the outer archive failed.
    #[error("unpacking the archive")]
    Archive(#[source] layer::Error),
    /// Applying a layer failed.
    #[error("layer {index} ({digest})")]
    Layer {
        /// Layer number, from 1.
        index: usize,
        /// The layer's digest.
        digest: String,
        /// What went wrong.
        source: layer::Error,
    },
    /// A path inside the image is refused.
    #[error(transparent)]
    Path(#[from] confined::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// An image name is invalid.
    #[error(transparent)]
    Reference(#[from] reference::Error),
    /// The image carries no name and none was given.
    #[error("the image carries no name: give one with --name NAME:TAG")]
    NoName,
    /// The input holds several images and the choice is not clear.
    #[error("the input holds {} images ({}): choose one with --name", .0.len(), .0.join(", "))]
    Ambiguous(Vec<String>),
    /// The image is for another machine.
    #[error("the image is for {0}, this host runs linux/amd64")]
    Platform(String),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// Largest JSON document accepted from an image (index, manifest, config).
const MAX_JSON: u64 = 8 << 20;

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Name to store the image under (and to pick it from a multi-image input).
    pub name: Option<Reference>,
    /// Layer application settings (size limit, ownership).
    pub layer: layer::Options,
}

/// Imports `source` into `store`; returns the image and what unpacking did.
pub fn import(
    store: &Store,
    source: &Path,
    opts: &Options,
    progress: &ProgressBar,
) -> Result<(Image, layer::Report)> {
    let md = std::fs::metadata(source).map_err(|e| Error::Io {
        path: source.to_path_buf(),
        source: e,
    })?;
    let staging = store.staging("import")?;
    let mut report = layer::Report::default();
    let layout_dir = if md.is_dir() {
        source.to_path_buf()
    } else {
        let dir = staging.path().join("source");
        std::fs::create_dir(&dir).map_err(|e| io_err_at(&dir, e))?;
        progress.set_message("unpacking archive");
        let file = File::open(source).map_err(|e| io_err_at(source, e))?;
        progress.set_length(md.len());
        let reader = decompress(BufReader::new(progress.wrap_read(file)))
            .map_err(|e| io_err_at(source, e))?;
        let outer = layer::Options {
            whiteouts: false,
            chown: false,
            max_bytes: opts.layer.max_bytes,
        };
        let mut outer_report = layer::Report::default();
        layer::apply(&Root::open(&dir)?, reader, &outer, &mut outer_report)
            .map_err(Error::Archive)?;
        dir
    };
    let layout = Root::open(&layout_dir)?;
    let plan = plan(&layout, opts.name.as_ref())?;
    let name = match (&opts.name, &plan.name) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => Reference::parse(n)?,
        (None, None) => return Err(Error::NoName),
    };
    check_platform(&plan.config)?;
    if plan.config.rootfs.diff_ids.len() != plan.layers.len() {
        return Err(Error::Layout(format!(
            "the config lists {} layer digests but the manifest {} layers",
            plan.config.rootfs.diff_ids.len(),
            plan.layers.len()
        )));
    }

    let rootfs = Root::open(&staging.rootfs())?;
    let total: u64 = plan.layers.iter().map(|l| l.size).sum();
    progress.set_position(0);
    progress.set_length(total);
    for (i, (l, diff_id)) in plan
        .layers
        .iter()
        .zip(&plan.config.rootfs.diff_ids)
        .enumerate()
    {
        let index = i + 1;
        progress.set_message(format!("layer {index}/{}", plan.layers.len()));
        let layer_err = |source| Error::Layer {
            index,
            digest: diff_id.clone(),
            source,
        };
        let diff_id = Digest::parse(diff_id)?;
        if let Some(d) = &l.digest {
            verify_blob(&layout, &l.path, d, Some(l.size))?;
        }
        let file = layout.open_file(&l.path)?;
        let reader = BufReader::new(progress.wrap_read(file));
        let reader = match l.compression {
            Some(c) => c.open(reader),
            None => decompress(reader),
        }
        .map_err(|e| layer_err(layer::Error::Archive(e)))?;
        let mut hashed = DigestReader::new(reader, diff_id.algorithm());
        layer::apply(&rootfs, &mut hashed, &opts.layer, &mut report).map_err(layer_err)?;
        let (actual, _) = hashed
            .finish()
            .map_err(|e| layer_err(layer::Error::Archive(e)))?;
        diff_id.check(&format!("layer {index} (uncompressed)"), &actual)?;
    }
    progress.set_message("committing");
    let source_dir = staging.path().join("source");
    if source_dir.exists() {
        crate::fsutil::remove_tree(&source_dir).map_err(|e| io_err_at(&source_dir, e))?;
    }
    let size =
        crate::fsutil::tree_size(&staging.rootfs()).map_err(|e| io_err_at(&staging.rootfs(), e))?;
    let meta = ImageMeta {
        name: name.to_string(),
        id: plan.id.to_string(),
        config: RunConfig::from(plan.config.config.clone()),
        size,
        created: plan.config.created.clone(),
        imported: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        architecture: if plan.config.architecture.is_empty() {
            "amd64".into()
        } else {
            plan.config.architecture.clone()
        },
        layers: plan.config.rootfs.diff_ids.clone(),
        source: source.display().to_string(),
    };
    let image = store.commit(staging, &meta, &name)?;
    Ok((image, report))
}

fn io_err_at(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_platform(c: &OciConfig) -> Result<()> {
    let arch_ok = c.architecture.is_empty() || c.architecture == "amd64";
    let os_ok = c.os.is_empty() || c.os == "linux";
    if arch_ok && os_ok {
        Ok(())
    } else {
        Err(Error::Platform(format!("{}/{}", c.os, c.architecture)))
    }
}

/// A layer compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    fn open<'a, R: BufRead + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Self::None => Box::new(r),
            Self::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Self::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        })
    }

    fn from_media_type(mt: &str) -> Result<Self> {
        Ok(match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Self::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Self::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Self::Zstd,
            other => return Err(Error::MediaType(other.to_string())),
        })
    }
}

/// Opens `r`, decompressing it if its first bytes say gzip or zstd.
fn decompress<'a, R: BufRead + 'a>(mut r: R) -> io::Result<Box<dyn Read + 'a>> {
    let head = r.fill_buf()?;
    for (magic, name, tool) in [
        (&b"\xfd7zXZ\0"[..], "xz", "xz -d"),
        (&b"BZh"[..], "bzip2", "bzip2 -d"),
    ] {
        if head.starts_with(magic) {
            return Err(io::Error::other(format!(
                "{name} compression is not supported (gzip and zstd are): decompress it first ({tool})"
            )));
        }
    }
    let c = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    c.open(r)
}

/// One layer to apply.
struct LayerRef {
    /// Path of the blob inside the layout.
    path: PathBuf,
    /// Known from the media type; `None` means sniff it.
    compression: Option<Compression>,
    /// The blob's digest, when the format gives it.
    digest: Option<Digest>,
    /// Size in bytes (of the blob file).
    size: u64,
}

/// What to import, read from the layout.
struct Plan {
    id: Digest,
    config: OciConfig,
    layers: Vec<LayerRef>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

const MANIFEST_TYPES: [&str; 2] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const CONFIG_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

fn exists(root: &Root, rel: &str) -> bool {
    root.open_file(Path::new(rel)).is_ok()
}

fn plan(layout: &Root, want: Option<&Reference>) -> Result<Plan> {
    if exists(layout, "index.json") {
        oci_plan(layout, want)
    } else if exists(layout, "manifest.json") {
        docker_plan(layout, want)
    } else {
        Err(Error::Layout(
            "no index.json (OCI image layout) or manifest.json (docker save) found".into(),
        ))
    }
}

fn read_limited(layout: &Root, rel: &Path) -> Result<Vec<u8>> {
    let file = layout.open_file(rel)?;
    let mut data = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_err_at(rel, e))?;
    if data.len() as u64 > MAX_JSON {
        return Err(Error::Layout(format!(
            "{} is larger than {MAX_JSON} bytes",
            rel.display()
        )));
    }
    Ok(data)
}

fn parse_json<T: for<'de> Deserialize<'de>>(what: &str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })
}

/// Reads a blob named by a descriptor, checking digest and size.
fn read_blob(layout: &Root, d: &Descriptor) -> Result<(Digest, Vec<u8>)> {
    let digest = Digest::parse(&d.digest)?;
    let data = read_limited(layout, &digest.blob_path())?;
    if data.len() as u64 != d.size {
        return Err(digest::Error::Size {
            what: d.digest.clone(),
            expected: d.size,
            actual: data.len() as u64,
        }
        .into());
    }
    let (actual, _) = DigestReader::new(&data[..], digest.algorithm())
        .finish()
        .map_err(|e| io_err_at(&digest.blob_path(), e))?;
    digest.check(&d.digest, &actual)?;
    Ok((digest, data))
}

/// Streams a blob file through its digest.
fn verify_blob(layout: &Root, rel: &Path, digest: &Digest, size: Option<u64>) -> Result<()> {
    let file = layout.open_file(rel)?;
    let (actual, n) = DigestReader::new(BufReader::new(file), digest.algorithm())
        .finish()
        .map_err(|e| io_err_at(rel, e))?;
    if let Some(expected) = size.filter(|&s| s != n) {
        return Err(digest::Error::Size {
            what: digest.to_string(),
            expected,
            actual: n,
        }
        .into());
    }
    digest.check(&digest.to_string(), &actual)?;
    Ok(())
}

fn ref_name(d: &Descriptor) -> Option<String> {
    if let Some(n) = d.annotations.get("io.containerd.image.name") {
        return Some(n.clone());
    }
    // `org.opencontainers.image.ref.name` often holds only a tag; a full
    // reference has a ':' or a '/'.
    d.annotations
        .get("org.opencontainers.image.ref.name")
        .filter(|n| n.contains(':') || n.contains('/'))
        .cloned()
}

fn platform_ok(d: &Descriptor) -> bool {
    d.platform
        .as_ref()
        .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
}

/// Picks the one manifest to import from an index, descending into nested
/// indexes (multi-platform images) up to a small depth.
fn pick_manifest(
    layout: &Root,
    manifests: Vec<Descriptor>,
    want: Option<&Reference>,
    depth: u32,
) -> Result<(Descriptor, Option<String>)> {
    if depth > 4 {
        return Err(Error::Layout("image indexes nested too deep".into()));
    }
    for d in &manifests {
        if !MANIFEST_TYPES.contains(&d.media_type.as_str())
            && !INDEX_TYPES.contains(&d.media_type.as_str())
        {
            return Err(Error::MediaType(d.media_type.clone()));
        }
    }
    let mut candidates: Vec<Descriptor> = manifests.into_iter().filter(platform_ok).collect();
    if let Some(w) = want {
        let named: Vec<usize> = candidates
            .iter()
            .enumerate()
            .filter(|(_, d)| {
                ref_name(d).and_then(|n| Reference::parse(&n).ok()).as_ref() == Some(w)
            })
            .map(|(i, _)| i)
            .collect();
        if named.len() == 1 {
            candidates = vec![candidates.swap_remove(named[0])];
        }
    }
    let chosen = match candidates.len() {
        0 => return Err(Error::Layout("no linux/amd64 image in the index".into())),
        1 => candidates.remove(0),
        _ => {
            return Err(Error::Ambiguous(
                candidates
                    .iter()
                    .map(|d| ref_name(d).unwrap_or_else(|| d.digest.clone()))
                    .collect(),
            ))
        }
    };
    let name = ref_name(&chosen);
    if INDEX_TYPES.contains(&chosen.media_type.as_str()) {
        let (_, data) = read_blob(layout, &chosen)?;
        let index: Index = parse_json("nested image index", &data)?;
        let (d, inner) = pick_manifest(layout, index.manifests, want, depth + 1)?;
        return Ok((d, name.or(inner)));
    }
    Ok((chosen, name))
}

fn oci_plan(layout: &Root, want: Option<&Reference>) -> Result<Plan> {
    if let Ok(data) = read_limited(layout, Path::new("oci-layout")) {
        #[derive(Deserialize)]
        struct OciLayout {
            #[serde(rename = "imageLayoutVersion")]
            version: String,
        }
        let l: OciLayout = parse_json("oci-layout", &data)?;
        if !l.version.starts_with("1.") {
            return Err(Error::Layout(format!(
                "unsupported OCI layout version {}",
                l.version
            )));
        }
    }
    let index: Index = parse_json(
        "index.json",
        &read_limited(layout, Path::new("index.json"))?,
    )?;
    let (desc, name) = pick_manifest(layout, index.manifests, want, 0)?;
    let (_, data) = read_blob(layout, &desc)?;
    let manifest: Manifest = parse_json("image manifest", &data)?;
    if !CONFIG_TYPES.contains(&manifest.config.media_type.as_str()) {
        return Err(Error::MediaType(manifest.config.media_type));
    }
    let (id, data) = read_blob(layout, &manifest.config)?;
    let config: OciConfig = parse_json("image config", &data)?;
    let layers = manifest
        .layers
        .iter()
        .map(|l| {
            let digest = Digest::parse(&l.digest)?;
            Ok(LayerRef {
                path: digest.blob_path(),
                compression: Some(Compression::from_media_type(&l.media_type)?),
                digest: Some(digest),
                size: l.size,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        id,
        config,
        layers,
        name,
    })
}

/// The digest a docker-save path names, if it names one: `blobs/sha256/<hex>`
/// or `<hex>.json` (older docker).
fn digest_in_path(p: &Path) -> Option<Digest> {
    let name = p.file_name()?.to_str()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    Digest::parse(&format!("sha256:{hex}")).ok()
}

fn docker_plan(layout: &Root, want: Option<&Reference>) -> Result<Plan> {
    let mut entries: Vec<DockerManifest> = parse_json(
        "manifest.json",
        &read_limited(layout, Path::new("manifest.json"))?,
    )?;
    let tags = |m: &DockerManifest| m.repo_tags.clone().unwrap_or_default();
    let pos = match (entries.len(), want) {
        (0, _) => return Err(Error::Layout("manifest.json lists no image".into())),
        (1, _) => 0,
        (_, Some(w)) => entries
            .iter()
            .position(|m| {
                tags(m)
                    .iter()
                    .any(|t| Reference::parse(t).ok().as_ref() == Some(w))
            })
            .ok_or_else(|| Error::Ambiguous(entries.iter().flat_map(tags).collect()))?,
        (_, None) => return Err(Error::Ambiguous(entries.iter().flat_map(tags).collect())),
    };
    let m = entries.swap_remove(pos);
    let name = m.repo_tags.as_ref().and_then(|t| t.first().cloned());
    let config_path = confined::normalize(Path::new(&m.config))?;
    let data = read_limited(layout, &config_path)?;
    let id = Digest::sha256_of(&data);
    if let Some(named) = digest_in_path(&config_path) {
        named.check(&m.config, &id)?;
    }
    let config: OciConfig = parse_json("image config", &data)?;
    let layers = m
        .layers
        .iter()
        .map(|l| {
            let path = confined::normalize(Path::new(l))?;
            let size = layout
                .open_file(&path)?
                .metadata()
                .map_err(|e| io_err_at(&path, e))?
                .len();
            Ok(LayerRef {
                digest: digest_in_path(&path).filter(|_| path.starts_with("blobs")),
                path,
                compression: None,
                size,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan {
        id,
        config,
        layers,
        name,
    })
}
