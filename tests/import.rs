//! End-to-end: `twinbox image import|ls|inspect|rm` on images the tests
//! build themselves, including every hostile case the importer must refuse
//! or confine.

mod common;

use std::fs;
use std::path::Path;

use common::{code, stderr, stdout, Env};
use twinbox_images::testing::{docker_save, oci_layout, oci_layout_edited, tar_of_dir, Codec, Tar};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn base_layer() -> Vec<u8> {
    Tar::new()
        .dir("bin/", 0o755)
        .file("bin/app", 0o755, b"#!/bin/sh\necho app\n")
        .symlink("bin/sh", "app")
        .dir("etc/", 0o755)
        .file("etc/gone", 0o644, b"old")
        .dir("var/cache/", 0o755)
        .file("var/cache/old", 0o644, b"old")
        .finish()
}

fn top_layer() -> Vec<u8> {
    Tar::new()
        .file("etc/.wh.gone", 0o644, b"")
        .file("var/cache/.wh..wh..opq", 0o644, b"")
        .file("var/cache/new", 0o644, b"new")
        .hardlink("bin/app-link", "bin/app")
        .file("etc/setuid", 0o4755, b"s")
        .finish()
}

fn rootfs_of(env: &Env, name: &str) -> Result<std::path::PathBuf, Box<dyn std::error::Error>> {
    let out = env.run(&["image", "inspect", name]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["rootfs"].as_str().ok_or("no rootfs")?.into())
}

fn check_layers_applied(root: &Path) -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::read(root.join("bin/app"))?, b"#!/bin/sh\necho app\n");
    assert_eq!(fs::read_link(root.join("bin/sh"))?, Path::new("app"));
    assert_eq!(
        fs::read(root.join("bin/app-link"))?,
        b"#!/bin/sh\necho app\n"
    );
    assert!(!root.join("etc/gone").exists(), "whiteout not applied");
    assert!(
        !root.join("var/cache/old").exists(),
        "opaque dir not applied"
    );
    assert_eq!(fs::read(root.join("var/cache/new"))?, b"new");
    assert_eq!(
        fs::metadata(root.join("etc/setuid"))?.permissions().mode() & 0o7777,
        0o4755
    );
    Ok(())
}

#[test]
fn imports_oci_layouts_in_every_compression_as_dir_and_tar() -> TestResult {
    for (i, codec) in [Codec::Tar, Codec::Gzip, Codec::Zstd]
        .into_iter()
        .enumerate()
    {
        let env = Env::new();
        let layout = env.path().join("layout");
        oci_layout(
            &layout,
            &[(base_layer(), codec), (top_layer(), codec)],
            Some("docker.io/library/demo:1.0"),
        )?;
        // As a directory.
        let out = env.run(&["image", "import", layout.to_str().ok_or("path")?]);
        assert_eq!(code(&out), 0, "{codec:?}: {}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "demo:1.0");
        check_layers_applied(&rootfs_of(&env, "demo:1.0")?)?;
        // As a tar, under another name.
        let tar = env.path().join(format!("layout{i}.tar"));
        fs::write(&tar, tar_of_dir(&layout)?)?;
        let out = env.run(&[
            "image",
            "import",
            tar.to_str().ok_or("path")?,
            "--name",
            "other/demo:2",
        ]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(stdout(&out).trim(), "other/demo:2");
        check_layers_applied(&rootfs_of(&env, "other/demo:2")?)?;
        assert_eq!(env.leftovers(), 0);
    }
    Ok(())
}

#[test]
fn imports_docker_save_and_lists_inspects_removes() -> TestResult {
    let env = Env::new();
    let dir = env.path().join("save");
    docker_save(&dir, &[base_layer(), top_layer()], "app:v1")?;
    let tar = env.path().join("save.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar_of_dir(&dir)?)?;
    fs::write(&tar, gz.finish()?)?;
    let out = env.run(&["image", "import", tar.to_str().ok_or("path")?]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "app:v1");
    check_layers_applied(&rootfs_of(&env, "app:v1")?)?;

    let out = env.run(&["image", "inspect", "app:v1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["name"], "app:v1");
    assert_eq!(v["config"]["entrypoint"], serde_json::json!(["/bin/app"]));
    assert_eq!(v["config"]["cmd"], serde_json::json!(["--flag"]));
    assert_eq!(v["config"]["env"], serde_json::json!(["PATH=/bin", "A=1"]));
    assert_eq!(v["config"]["workdir"], "/work");
    assert_eq!(v["config"]["user"], "1000:1000");
    assert!(v["size"].as_u64().ok_or("size")? > 0);

    let out = env.run(&["image", "ls"]);
    assert_eq!(code(&out), 0);
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("app:v1")),
        "{}",
        stdout(&out)
    );

    let out = env.run(&["image", "rm", "app:v1"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(env.images().is_empty());
    let out = env.run(&["image", "rm", "app:v1"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("no such image"), "{}", stderr(&out));
    let out = env.run(&["image", "inspect", "nope"]);
    assert_eq!(code(&out), 125);
    assert_eq!(env.leftovers(), 0);
    Ok(())
}

/// Imports a single-layer OCI layout with `layer`; returns the output.
fn import_layer(
    env: &Env,
    layer: Vec<u8>,
) -> Result<std::process::Output, Box<dyn std::error::Error>> {
    let layout = env.path().join("layout");
    let _ = fs::remove_dir_all(&layout);
    oci_layout(&layout, &[(layer, Codec::Gzip)], None)?;
    Ok(env.run(&[
        "image",
        "import",
        layout.to_str().ok_or("path")?,
        "--name",
        "hostile",
    ]))
}

/// A failed import: exit 125, a message, no image, no staging left.
fn assert_refused(env: &Env, out: &std::process::Output, words: &str) {
    assert_eq!(
        code(out),
        125,
        "stdout {} stderr {}",
        stdout(out),
        stderr(out)
    );
    assert!(
        stderr(out).contains(words),
        "expected {words:?} in: {}",
        stderr(out)
    );
    assert!(
        env.images().is_empty(),
        "an image was left: {:?}",
        env.images()
    );
    assert_eq!(env.leftovers(), 0, "staging left behind");
}

#[test]
fn dotdot_paths_are_refused_and_nothing_is_written_outside() -> TestResult {
    let env = Env::new();
    let out = import_layer(
        &env,
        Tar::new()
            .file("a/../../../../escaped-by-dotdot", 0o644, b"x")
            .finish(),
    )?;
    assert_refused(&env, &out, "escapes the root");
    assert!(!env.path().join("escaped-by-dotdot").exists());
    assert!(!env.home().join("escaped-by-dotdot").exists());
    Ok(())
}

#[test]
fn absolute_paths_and_symlinks_to_root_are_confined() -> TestResult {
    let env = Env::new();
    let marker = format!("twinbox-test-{}", std::process::id());
    let layer = Tar::new()
        .file(&format!("/{marker}-abs"), 0o644, b"abs")
        .symlink("evil", "/")
        .file(&format!("evil/{marker}-evil"), 0o644, b"evil")
        .symlink("up", "../../../../../../..")
        .file(&format!("up/{marker}-up"), 0o644, b"up")
        .finish();
    let out = import_layer(&env, layer)?;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let root = rootfs_of(&env, "hostile")?;
    for suffix in ["abs", "evil", "up"] {
        let name = format!("{marker}-{suffix}");
        assert_eq!(
            fs::read(root.join(&name))?,
            suffix.as_bytes(),
            "{name} not inside the rootfs"
        );
        assert!(
            !Path::new("/").join(&name).exists(),
            "/{name} was written on the host"
        );
    }
    Ok(())
}

#[test]
fn symlink_to_a_host_directory_cannot_be_written_through() -> TestResult {
    let env = Env::new();
    let host_dir = env.path().join("host-dir");
    fs::create_dir(&host_dir)?;
    let layer = Tar::new()
        .symlink("link", host_dir.to_str().ok_or("path")?)
        .file("link/pwned", 0o644, b"x")
        .finish();
    let out = import_layer(&env, layer)?;
    assert_refused(&env, &out, "leads nowhere inside the root");
    assert_eq!(
        fs::read_dir(&host_dir)?.count(),
        0,
        "wrote through the symlink"
    );
    // And a file entry on top of a symlink to a host file replaces the link.
    let victim = env.path().join("victim");
    fs::write(&victim, b"safe")?;
    let layer = Tar::new()
        .symlink("v", victim.to_str().ok_or("path")?)
        .file("v", 0o644, b"pwned")
        .hardlink("h", victim.to_str().ok_or("path")?)
        .finish();
    let out = import_layer(&env, layer)?;
    assert_refused(&env, &out, "hard link");
    assert_eq!(fs::read(&victim)?, b"safe");
    Ok(())
}

#[test]
fn device_nodes_are_skipped_with_a_warning() -> TestResult {
    let env = Env::new();
    let layer = Tar::new()
        .file("ok", 0o644, b"ok")
        .entry(tar::EntryType::Char, "dev/mem", 0o600, "", b"")
        .entry(tar::EntryType::Block, "dev/sda", 0o600, "", b"")
        .finish();
    let out = import_layer(&env, layer)?;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: skipped device node dev/mem"),
        "{}",
        stderr(&out)
    );
    let root = rootfs_of(&env, "hostile")?;
    assert!(!root.join("dev/mem").exists() && !root.join("dev/sda").exists());
    assert!(root.join("ok").exists());
    Ok(())
}

#[test]
fn truncated_garbage_and_missing_manifests_are_clear_errors() -> TestResult {
    let env = Env::new();
    // A tar truncated in the middle of a file.
    let layout = env.path().join("layout");
    oci_layout(&layout, &[(base_layer(), Codec::Tar)], Some("x:1"))?;
    let full = tar_of_dir(&layout)?;
    let truncated = env.path().join("truncated.tar");
    fs::write(&truncated, &full[..full.len() / 2])?;
    let out = env.run(&["image", "import", truncated.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "twinbox: importing");
    // Garbage.
    let garbage = env.path().join("garbage.tar");
    fs::write(
        &garbage,
        (0..100_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    )?;
    let out = env.run(&["image", "import", garbage.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "twinbox: importing");
    // A tar with no manifest at all.
    let empty = env.path().join("empty.tar");
    fs::write(&empty, Tar::new().file("hello", 0o644, b"hi").finish())?;
    let out = env.run(&["image", "import", empty.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "no index.json");
    // A source that does not exist.
    let out = env.run(&["image", "import", "/nonexistent/image.tar"]);
    assert_refused(&env, &out, "/nonexistent/image.tar");
    Ok(())
}

#[test]
fn tampered_blobs_are_refused() -> TestResult {
    let env = Env::new();
    let layout = env.path().join("layout");
    oci_layout(&layout, &[(base_layer(), Codec::Gzip)], Some("x:1"))?;
    // Flip a byte of the largest blob (the layer).
    let layer = fs::read_dir(layout.join("blobs/sha256"))?
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .ok_or("no blob")?;
    let mut data = fs::read(&layer)?;
    let last = data.len() - 1;
    data[last] ^= 0xff;
    fs::write(&layer, data)?;
    let out = env.run(&["image", "import", layout.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "digest mismatch");
    Ok(())
}

#[test]
fn unknown_media_types_and_foreign_platforms_are_refused() -> TestResult {
    let env = Env::new();
    let layout = env.path().join("layout");
    let layers = [(base_layer(), Codec::Gzip)];
    oci_layout_edited(&layout, &layers, Some("x:1"), &|_| {}, &|m| {
        m["layers"][0]["mediaType"] = "application/x-mystery".into();
    })?;
    let out = env.run(&["image", "import", layout.to_str().ok_or("path")?]);
    assert_refused(
        &env,
        &out,
        "unsupported media type \"application/x-mystery\"",
    );

    fs::remove_dir_all(&layout)?;
    oci_layout_edited(
        &layout,
        &layers,
        Some("x:1"),
        &|c| c["architecture"] = "arm64".into(),
        &|_| {},
    )?;
    let out = env.run(&["image", "import", layout.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "the image is for linux/arm64");
    Ok(())
}

#[test]
fn a_layout_whose_blob_is_a_symlink_to_a_host_file_is_refused() -> TestResult {
    let env = Env::new();
    let dir = env.path().join("save");
    docker_save(&dir, &[base_layer()], "x:1")?;
    let secret = env.path().join("secret.tar");
    fs::write(&secret, base_layer())?;
    fs::remove_file(dir.join("0/layer.tar"))?;
    std::os::unix::fs::symlink(&secret, dir.join("0/layer.tar"))?;
    // The symlink is resolved inside the layout, where that path does not exist.
    let out = env.run(&["image", "import", dir.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "No such file");
    Ok(())
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_refused() -> TestResult {
    let env = Env::new();
    let dir = env.path().join("save");
    docker_save(&dir, &[base_layer()], "x:1")?;
    // Swap the layer for another valid tar: the diff_id no longer matches.
    fs::write(
        dir.join("0/layer.tar"),
        Tar::new().file("other", 0o644, b"o").finish(),
    )?;
    let out = env.run(&["image", "import", dir.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "layer 1 (uncompressed): digest mismatch");
    Ok(())
}

#[test]
fn a_decompression_bomb_hits_the_size_limit() -> TestResult {
    let env = Env::new();
    let layout = env.path().join("layout");
    oci_layout(
        &layout,
        &[(
            Tar::new()
                .file("zeros", 0o644, &vec![0u8; 4 << 20])
                .finish(),
            Codec::Zstd,
        )],
        Some("bomb:1"),
    )?;
    let out = env.run(&[
        "image",
        "import",
        layout.to_str().ok_or("path")?,
        "--max-size",
        "1m",
    ]);
    assert_refused(&env, &out, "exceeds the size limit");
    Ok(())
}

#[test]
fn names_are_validated() -> TestResult {
    let env = Env::new();
    let layout = env.path().join("layout");
    oci_layout(&layout, &[(base_layer(), Codec::Tar)], None)?;
    let out = env.run(&["image", "import", layout.to_str().ok_or("path")?]);
    assert_refused(&env, &out, "give one with --name");
    let out = env.run(&[
        "image",
        "import",
        layout.to_str().ok_or("path")?,
        "--name",
        "../evil",
    ]);
    assert_refused(&env, &out, "invalid image name");
    Ok(())
}
