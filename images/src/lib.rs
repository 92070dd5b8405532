//! twinbox-images: everything about the filesystem a workload runs from.
//!
//! - [`store`]: the image store (one unpacked rootfs per image, atomic).
//! - [`oci`]: import from `docker save` tarballs and OCI image layouts, with
//!   [`layer`] applying each layer confined to the rootfs ([`confined`]).
//! - [`base`]: the `busybox` base image, built from Debian's busybox-static.
//! - [`python`]: the `debian-python` image (python3 and busybox from Debian).
//! - [`initramfs`] and [`ext4`]: rootfs packers for the VM, cached by content.
//! - [`kernel`]: the guest kernel recipe (our config fragment on Debian's
//!   linux-source), built into a cache keyed by its inputs.
//!
//! It knows nothing of VMs, containers or benchmarks.

pub mod base;
pub mod cache;
pub mod command;
pub mod config;
pub mod confined;
pub mod derive;
pub mod digest;
pub mod ext4;
pub mod fsutil;
pub mod initramfs;
pub mod kernel;
pub mod layer;
pub mod oci;
pub mod python;
pub mod reference;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod walk;

pub use config::{ImageMeta, RunConfig};
pub use reference::Reference;
pub use store::{Image, Store};
