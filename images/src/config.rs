//! What an image says about how to run it, and what the store records
//! about each image.
//!
//! [`RunConfig`] is the subset of the OCI image config that a run needs
//! (entrypoint, cmd, env, workdir, user); [`ImageMeta`] is the store's record
//! (`image.json` beside the rootfs).

use serde::{Deserialize, Serialize};

/// How the image asks to be run (from the OCI config's `config` object).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunConfig {
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `Env`, as `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WorkingDir`; empty means `/`.
    #[serde(default)]
    pub workdir: String,
    /// `User`: `uid`, `uid:gid` or a name; empty means root.
    #[serde(default)]
    pub user: String,
}

/// The OCI image config as found in an image (only the fields we use).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OciConfig {
    /// CPU architecture (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// Creation time, RFC 3339.
    #[serde(default)]
    pub created: Option<String>,
    /// Run settings.
    #[serde(default)]
    pub config: Option<OciRunConfig>,
    /// Layer digests of the uncompressed tars.
    pub rootfs: OciRootfs,
}

/// The OCI config's `config` object.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct OciRunConfig {
    /// Entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Cmd.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Env.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// WorkingDir.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
}

/// The OCI config's `rootfs` object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OciRootfs {
    /// Always `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Digests of the uncompressed layer tars, in order.
    pub diff_ids: Vec<String>,
}

impl From<Option<OciRunConfig>> for RunConfig {
    fn from(c: Option<OciRunConfig>) -> Self {
        let c = c.unwrap_or_default();
        Self {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            workdir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        }
    }
}

/// The store's record of one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageMeta {
    /// `NAME:TAG`.
    pub name: String,
    /// The image id: the digest of its config blob (or of what the base
    /// image builder made).
    pub id: String,
    /// How to run it.
    pub config: RunConfig,
    /// Bytes of file data in the unpacked rootfs.
    pub size: u64,
    /// When the image was created (from its config), RFC 3339.
    pub created: Option<String>,
    /// When it was imported here, RFC 3339.
    pub imported: String,
    /// CPU architecture.
    pub architecture: String,
    /// Digests of the layers applied (uncompressed), in order.
    pub layers: Vec<String>,
    /// Where it came from (a file path, or how it was built).
    pub source: String,
}
