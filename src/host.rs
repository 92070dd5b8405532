//! What this host has that the CLI looks for: programs on PATH.

use std::path::{Path, PathBuf};

/// The first `program` on `PATH`, if any.
pub fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// Finds one of the project's static binaries (`twinbox-init`,
/// `twinbox-probe`): `$env_var` if set, else where `scripts/bootstrap`
/// builds it (the gnu target with crt-static) or beside the twinbox binary.
/// A dynamically linked build of the same name (a plain `cargo build` of
/// the workspace makes one) is skipped: it could not run in a box.
pub fn find_static(name: &str, env_var: &str) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().context("finding the twinbox binary")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join("../x86_64-unknown-linux-gnu/release").join(name),
        dir.join("../../x86_64-unknown-linux-gnu/release")
            .join(name),
        dir.join(name),
    ];
    let mut dynamic = None;
    for c in candidates.iter().filter(|p| p.is_file()) {
        match crate::backends::vm::is_dynamic(c) {
            Ok(false) => return Ok(c.clone()),
            _ => dynamic = dynamic.or(Some(c.clone())),
        }
    }
    match dynamic {
        Some(d) => anyhow::bail!(
            "{} is dynamically linked, and no static {name} was found: run scripts/bootstrap",
            d.display()
        ),
        None => anyhow::bail!("{name} is not built: run scripts/bootstrap"),
    }
}
