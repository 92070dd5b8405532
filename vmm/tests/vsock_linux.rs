//! End-to-end: a real Linux guest (the project's kernel, with vsock)
//! drives the vsock device through Linux's own virtio-mmio and
//! virtio-vsock drivers, under the VMM's seccomp filters. Its init (a
//! libc-free C program, `vsock_guest/init.c`, built here with gcc)
//! listens on port 1234, writes the ready mark, connects to the host's
//! port 5000 to say it is up, and echoes one connection.
//!
//! What the host checks ([`talk`]): the guest's `up` reaches
//! `<uds_path>_5000` (guest-initiated), a host `CONNECT 999` is refused by
//! the guest kernel (nobody listens there: RST, the client is closed),
//! `CONNECT 1234` gets `OK` and an echo of 200 KB (many times either
//! side's credit). Once on a booted VM with the whole irqchip in KVM, once
//! on a VM restored from a snapshot taken at the ready mark (split
//! irqchip, our I/O APIC): its driver keeps the saved queues and gets the
//! transport reset event.
//!
//! Skipped, with a message, without /dev/kvm, gcc, or a built guest
//! kernel with vsock (`$TWINBOX_KERNEL`, else the newest in
//! `~/.cache/twinbox/kernel` whose config has CONFIG_VIRTIO_VSOCKETS).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use twinbox_vmm::config::{Snapshot, VsockConfig};
use twinbox_vmm::{StopReason, VmConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("TWINBOX_KERNEL") {
        return Some(PathBuf::from(k));
    }
    let cache = PathBuf::from(std::env::var_os("HOME")?).join(".cache/twinbox/kernel");
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| {
            std::fs::read_to_string(d.join("config"))
                .is_ok_and(|c| c.lines().any(|l| l == "CONFIG_VIRTIO_VSOCKETS=y"))
        })
        .filter_map(|d| {
            let k = d.join("vmlinux");
            let t = std::fs::metadata(&k).and_then(|m| m.modified()).ok()?;
            Some((t, k))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, k)| k)
}

/// A newc cpio archive holding `/init`.
fn initramfs(init: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8]| {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            1,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesize,
            0
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    entry("init", 0o100755, init);
    entry("TRAILER!!!", 0, &[]);
    out
}

fn build_init(dir: &Path) -> Option<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vsock_guest/init.c");
    let bin = dir.join("init");
    let ok = Command::new("gcc")
        .args([
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-O2",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(bin)
}

/// Reads one line from `s`, or `None` if it is closed first.
fn line(s: &UnixStream) -> std::io::Result<Option<String>> {
    let mut l = String::new();
    BufReader::new(s).read_line(&mut l)?;
    Ok((!l.is_empty()).then_some(l))
}

/// What the host does with the running guest: waits for its `up` on
/// `up`, is refused on port 999, gets an echo of 200 KB on port 1234
/// (after which, once the host has closed, the guest ends the VM).
fn talk(up: &UnixListener, uds: &Path) -> TestResult {
    let (s, _) = up.accept()?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    assert_eq!(line(&s)?.as_deref(), Some("up\n"));

    let refused = UnixStream::connect(uds)?;
    refused.set_read_timeout(Some(Duration::from_secs(30)))?;
    (&refused).write_all(b"CONNECT 999\n")?;
    let mut b = Vec::new();
    (&refused).read_to_end(&mut b)?;
    assert!(b.is_empty(), "a refused connect got {b:?}");

    let mut echo = UnixStream::connect(uds)?;
    echo.set_read_timeout(Some(Duration::from_secs(30)))?;
    echo.write_all(b"CONNECT 1234\n")?;
    let ok = line(&echo)?.ok_or("closed before OK")?;
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let writer = {
        let mut w = echo.try_clone()?;
        let big = big.clone();
        std::thread::spawn(move || {
            let r = w.write_all(&big);
            let _ = w.shutdown(std::net::Shutdown::Write);
            r
        })
    };
    let mut back = Vec::new();
    echo.read_to_end(&mut back)?;
    writer.join().map_err(|_| "writer panicked")??;
    assert_eq!(back.len(), big.len());
    assert!(back == big, "the echo differs");
    Ok(())
}

/// The guest's config, in `dir`; `None` (and a message) if this host
/// cannot run it.
fn guest(dir: &Path) -> Result<Option<VmConfig>, Box<dyn std::error::Error>> {
    let (Some(k), true) = (kernel(), Path::new("/dev/kvm").exists()) else {
        eprintln!("skipped: no /dev/kvm or no guest kernel with vsock");
        return Ok(None);
    };
    let Some(init) = build_init(dir) else {
        eprintln!("skipped: gcc cannot build the guest's init");
        return Ok(None);
    };
    let rd = dir.join("initrd");
    std::fs::write(&rd, initramfs(&std::fs::read(init)?))?;
    let mut c = VmConfig::new(&k);
    c.initrd = vec![rd];
    c.cmdline = "console=ttyS0 reboot=k panic=-1 rdinit=/init".into();
    c.memory = 128 << 20;
    c.timeout = Some(Duration::from_secs(120));
    c.vsock = Some(VsockConfig {
        guest_cid: 3,
        uds_path: dir.join("vm.sock"),
    });
    Ok(Some(c))
}

fn up_listener(uds: &Path) -> std::io::Result<UnixListener> {
    let mut up = uds.as_os_str().to_owned();
    up.push("_5000");
    UnixListener::bind(up)
}

#[test]
fn a_booted_linux_guest_talks_vsock_with_the_whole_irqchip_in_kvm() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Some(mut c) = guest(dir.path())? else {
        return Ok(());
    };
    c.irqchip = twinbox_vmm::config::Irqchip::Full;
    let uds = dir.path().join("vm.sock");
    let up = up_listener(&uds)?;
    let vm = std::thread::spawn(move || twinbox_vmm::vm::run(&c, Box::new(std::io::sink())));
    talk(&up, &uds)?;
    let o = vm.join().map_err(|_| "the VM thread panicked")??;
    assert_eq!(o.reason, StopReason::Exited(0), "{}", o.console_tail);
    assert!(!uds.exists(), "the VM's socket outlived the VM");
    Ok(())
}

#[test]
fn a_linux_guest_talks_vsock_after_a_snapshot() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Some(c) = guest(dir.path())? else {
        return Ok(());
    };
    let uds = dir.path().join("vm.sock");

    // Boot to the ready mark and save.
    let mut take = c.clone();
    take.snapshot = Snapshot::Take;
    let o = twinbox_vmm::vm::run(&take, Box::new(std::io::sink()))?;
    assert_eq!(o.reason, StopReason::Ready, "{}", o.console_tail);
    assert!(!uds.exists(), "the VM's socket outlived the VM");
    let mut captured = o.captured.ok_or("no machine came back")?;
    let vs = captured.state.vsock.clone().ok_or("no vsock state")?;
    assert_eq!(vs.status & 0x4, 0x4, "the driver set DRIVER_OK: {vs:?}");
    assert!(vs.queues.iter().all(|q| q.ready), "{vs:?}");
    assert!(vs.queues[0].next_avail == 0, "nothing was received yet");
    let snap = dir.path().join("snap");
    std::fs::create_dir(&snap)?;
    twinbox_vmm::snapshot::dir::save(&snap, "vsock", &mut captured)?;

    // Restore, and talk to it.
    let up = up_listener(&uds)?;
    let mut r = c.clone();
    r.snapshot = Snapshot::Restore {
        dir: snap.clone(),
        key: "vsock".into(),
    };
    let vm = std::thread::spawn(move || twinbox_vmm::vm::run(&r, Box::new(std::io::sink())));
    talk(&up, &uds)?;
    let o = vm.join().map_err(|_| "the VM thread panicked")??;
    assert_eq!(o.reason, StopReason::Exited(0), "{}", o.console_tail);
    assert!(!uds.exists(), "the VM's socket outlived the VM");
    Ok(())
}
