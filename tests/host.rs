//! End-to-end tests that need what `scripts/bootstrap` installs on a host:
//! Debian's busybox-static package (fetched with apt-get) and the guest
//! kernel built through the cache. `.ci/run` runs the bootstrap first.

mod common;

use std::fs;
use std::path::Path;

use common::{code, stderr, stdout, Env};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn base_image_is_busybox_with_applet_links() -> TestResult {
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "busybox:latest");
    let out = env.run(&["image", "inspect", "busybox"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let root = Path::new(v["rootfs"].as_str().ok_or("rootfs")?).to_path_buf();
    for applet in [
        "bin/sh",
        "bin/ls",
        "bin/cat",
        "sbin/poweroff",
        "usr/bin/env",
    ] {
        assert_eq!(
            fs::read_link(root.join(applet))?,
            Path::new("/bin/busybox"),
            "{applet}"
        );
    }
    assert!(fs::read_to_string(root.join("etc/passwd"))?.starts_with("root:x:0:0:"));
    // The binary is static and runs as it is.
    let out = std::process::Command::new(root.join("bin/busybox"))
        .args(["echo", "twinbox"])
        .output()?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "twinbox\n");
    assert_eq!(v["config"]["cmd"], serde_json::json!(["sh"]));
    // `run` resolves against it.
    let out = env.run(&["run", "--dry-run", "busybox", "echo", "hi"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(env.leftovers(), 0);
    Ok(())
}

/// The kernel recipe's output in the real cache (TWINBOX_CACHE is not
/// overridden here: the kernel is built once per machine).
#[test]
fn the_guest_kernel_is_built_and_cached() -> TestResult {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinbox"))
        .args(["kernel", "show"])
        .output()?;
    assert_eq!(
        code(&out),
        0,
        "no kernel: run scripts/bootstrap first\n{}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        v["origin"], "twinbox",
        "expected our recipe's kernel, not the fallback"
    );
    let bz = fs::read(v["bzimage"].as_str().ok_or("bzimage")?)?;
    // The x86 boot protocol header: "HdrS" at 0x202.
    assert_eq!(&bz[0x202..0x206], b"HdrS");
    let elf = fs::read(v["vmlinux"].as_str().ok_or("vmlinux")?)?;
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(elf[4], 2, "vmlinux must be a 64-bit ELF");
    // Every option of our fragment is in the built config.
    let config = fs::read_to_string(
        Path::new(v["bzimage"].as_str().ok_or("bzimage")?).with_file_name("config"),
    )?;
    assert!(
        twinbox_images::kernel::dropped_options(twinbox_images::kernel::FRAGMENT, &config)
            .is_empty()
    );
    Ok(())
}
