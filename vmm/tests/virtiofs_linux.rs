//! End-to-end: a real Linux guest (the project's kernel, with virtio-fs)
//! mounts two host directories served by Debian's virtiofsd through our
//! virtio-fs device, under the VMM's seccomp filters. Its init (a
//! libc-free C program, `virtiofs_guest/init.c`, built here with gcc)
//! reports each step on the console; the host reads it while the guest
//! runs and checks the host files once the VM has ended.
//!
//! One boot covers it all (a Linux boot costs about 20 s on PVM):
//! - share `rw`: the guest reads a file the host put there, sees its
//!   mode, writes a file (mode 0604) the host then reads, makes a
//!   directory, chmods the host's file;
//! - share `ro` (read-only on the host side): the guest remounts it
//!   read-write and tries to create, truncate, write, unlink, chmod,
//!   mkdir and rename; every one is refused with EROFS and the host's
//!   files are unchanged;
//! - the `ro` share's virtiofsd is killed mid-run: that device goes to
//!   DEVICE_NEEDS_RESET (the guest sees 0x40 in its sysfs status), the
//!   VM goes on, the `rw` share still works, the VM ends normally;
//! - afterwards no virtiofsd of ours is left, their sockets are gone,
//!   and no mount leaked into the host's mount namespace.
//!
//! Other tests here need no guest: the real virtiofsd's negotiation, the
//! launcher's read-only mount namespace, and snapshots refused for a VM
//! with shares.
//!
//! Skipped, with a message, when not root, without /dev/kvm, gcc,
//! virtiofsd, or a built guest kernel with virtio-fs (`$TWINBOX_KERNEL`,
//! else the newest in `~/.cache/twinbox/kernel` whose config has
//! CONFIG_VIRTIO_FS).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twinbox_vmm::config::{ShareConfig, Snapshot};
use twinbox_vmm::virtiofsd::{self, Options, Virtiofsd};
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
                .is_ok_and(|c| c.lines().any(|l| l == "CONFIG_VIRTIO_FS=y"))
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

/// Why this host cannot run virtiofsd, if it cannot.
fn no_virtiofsd() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (virtiofsd's sandbox and our mount namespace need it)");
    }
    if !Path::new(virtiofsd::DEFAULT_BINARY).exists() {
        return Some("no /usr/lib/qemu/virtiofsd (package qemu-system-common)");
    }
    None
}

/// A newc cpio archive holding `/init`.
fn initramfs(init: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut entry = |name: &str, mode: u32, data: &[u8]| {
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
            name.len() + 1,
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
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/virtiofs_guest/init.c");
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

/// The console, kept whole for the test to read while the VM runs.
#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        self.0
            .lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }

    /// The value of the guest's `T: <what> <value>` line, if printed.
    fn value(&self, what: &str) -> Option<String> {
        let prefix = format!("T: {what} ");
        self.text().lines().find_map(|l| {
            l.trim_end_matches('\r')
                .strip_prefix(&prefix)
                .map(String::from)
        })
    }
}

fn mode(p: &Path) -> std::io::Result<u32> {
    Ok(std::fs::metadata(p)?.permissions().mode() & 0o7777)
}

/// Pids of processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

fn mountinfo_mentions(needle: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| m.contains(needle))
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn a_linux_guest_uses_a_share_cannot_write_a_read_only_one_and_outlives_a_dead_server() -> TestResult
{
    if let Some(why) = no_virtiofsd() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let (Some(k), true) = (kernel(), Path::new("/dev/kvm").exists()) else {
        eprintln!("skipped: no /dev/kvm or no guest kernel with CONFIG_VIRTIO_FS");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let Some(init) = build_init(dir.path()) else {
        eprintln!("skipped: gcc cannot build the guest's init");
        return Ok(());
    };
    let rd = dir.path().join("initrd");
    std::fs::write(&rd, initramfs(&std::fs::read(init)?))?;
    let (rw, ro) = (dir.path().join("rw"), dir.path().join("ro"));
    std::fs::create_dir(&rw)?;
    std::fs::create_dir(&ro)?;
    std::fs::write(rw.join("hello.txt"), "hello from the host\n")?;
    std::fs::set_permissions(rw.join("hello.txt"), std::fs::Permissions::from_mode(0o640))?;
    std::fs::write(ro.join("keep.txt"), "keep me\n")?;
    std::fs::set_permissions(ro.join("keep.txt"), std::fs::Permissions::from_mode(0o644))?;
    let needle = dir.path().to_string_lossy().into_owned();
    let mounts_before = mountinfo_mentions(&needle);

    let rw_sock = dir.path().join("rw.sock");
    let ro_sock = dir.path().join("ro.sock");
    let rw_server = virtiofsd::spawn(&Options::new(&rw, &rw_sock))?;
    let mut ro_opts = Options::new(&ro, &ro_sock);
    ro_opts.read_only = true;
    let ro_server = virtiofsd::spawn(&ro_opts)?;
    assert!(!mountinfo_mentions(&needle), "a mount leaked to the host");

    let mut c = VmConfig::new(&k);
    c.initrd = vec![rd];
    c.cmdline = "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet".into();
    c.memory = 128 << 20;
    c.timeout = Some(Duration::from_secs(240));
    c.shares = vec![
        ShareConfig {
            tag: "rw".into(),
            socket: rw_sock.clone(),
        },
        ShareConfig {
            tag: "ro".into(),
            socket: ro_sock.clone(),
        },
    ];
    let console = Console::default();
    let out = console.clone();
    let vm = std::thread::spawn(move || twinbox_vmm::vm::run(&c, Box::new(out)));

    // The guest asks for the ro share's server to die: SIGKILL, as a
    // crash would.
    let asked = wait_until(Duration::from_secs(220), || {
        console.text().contains("T: killme") || vm.is_finished()
    });
    assert!(
        asked && !vm.is_finished(),
        "the guest never got that far:\n{}",
        console.text()
    );
    ro_server.kill();
    assert!(wait_until(Duration::from_secs(10), || ro_server.has_exited()));
    let ro_needle = ro.to_string_lossy().into_owned();
    assert!(
        wait_until(Duration::from_secs(10), || processes_with(&ro_needle)
            .is_empty()),
        "the killed server's processes: {:?}",
        processes_with(&ro_needle)
    );

    let o = vm.join().map_err(|_| "the VM thread panicked")??;
    let text = console.text();
    assert_eq!(o.reason, StopReason::Exited(0), "{text}");
    let v = |what: &str| {
        console
            .value(what)
            .unwrap_or_else(|| format!("<none> in\n{text}"))
    };

    // The read-write share.
    assert_eq!(v("mount-rw"), "0");
    assert_eq!(v("read"), "hello from the host");
    assert_eq!(v("mode"), "100640");
    assert_eq!(v("write"), "0");
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest.txt"))?,
        "written by the guest\n"
    );
    assert_eq!(mode(&rw.join("from-guest.txt"))?, 0o604);
    assert!(rw.join("dir").is_dir());
    assert_eq!(mode(&rw.join("dir"))?, 0o750);
    assert_eq!(mode(&rw.join("hello.txt"))?, 0o600);

    // The read-only share: the guest remounted it read-write, and the
    // host refused every change.
    assert_eq!(v("mount-ro"), "0");
    assert_eq!(v("remount-rw"), "0");
    assert_eq!(v("ro-read"), "keep me");
    for what in [
        "ro-create",
        "ro-truncate",
        "ro-open-rw",
        "ro-unlink",
        "ro-chmod",
        "ro-mkdir",
        "ro-rename",
    ] {
        assert_eq!(v(what), "-30", "{what}: want EROFS");
    }
    assert_eq!(v("ro-read-again"), "keep me");
    assert_eq!(std::fs::read_to_string(ro.join("keep.txt"))?, "keep me\n");
    assert_eq!(mode(&ro.join("keep.txt"))?, 0o644);
    let mut names: Vec<_> = std::fs::read_dir(&ro)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    assert_eq!(names, ["keep.txt"]);

    // The killed server: that device needs a reset, the other is fine and
    // still works.
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("T: ")).collect();
    eprintln!("the guest said:\n{}", lines.join("\n"));
    // virtio1 is share 1 ("ro"): the command line's second device.
    assert!(
        v("where1").ends_with("virtio-mmio.1/virtio1"),
        "{}",
        v("where1")
    );
    let status1 = u32::from_str_radix(v("status1").trim_start_matches("0x"), 16)?;
    let status0 = u32::from_str_radix(v("status0").trim_start_matches("0x"), 16)?;
    assert_ne!(status1 & 0x40, 0, "virtio1 {status1:#x}");
    assert_eq!(status0 & 0x40, 0, "virtio0 {status0:#x}");
    assert_eq!(status0 & 0x4, 0x4, "virtio0 {status0:#x}");
    assert_eq!(v("after"), "0");
    assert_eq!(std::fs::read_to_string(rw.join("after.txt"))?, "after\n");

    // Nothing left behind.
    drop(rw_server);
    drop(ro_server);
    assert!(!rw_sock.exists() && !ro_sock.exists(), "a socket stayed");
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&needle)
            .is_empty()),
        "virtiofsd processes left: {:?}",
        processes_with(&needle)
    );
    assert_eq!(mountinfo_mentions(&needle), mounts_before, "a mount leaked");
    Ok(())
}

#[test]
fn the_real_server_negotiates_and_a_read_only_one_sees_a_read_only_mount() -> TestResult {
    if let Some(why) = no_virtiofsd() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    std::fs::create_dir(&src)?;
    let sock = dir.path().join("fs.sock");
    let needle = src.to_string_lossy().into_owned();
    let mut o = Options::new(&src, &sock);
    o.read_only = true;
    let server: Virtiofsd = virtiofsd::spawn(&o)?;
    assert_eq!(
        std::fs::metadata(&sock)?.permissions().mode() & 0o777,
        0o600
    );
    // The read-only bind is in the server's namespace only.
    let pid = server.pid().ok_or("no pid")?;
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let line = theirs
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*needle))
        .ok_or("no bind mount in the server's namespace")?;
    let opts = line.split(' ').nth(5).unwrap_or("");
    assert!(opts.split(',').any(|o| o == "ro"), "{line}");
    assert!(
        !mountinfo_mentions(&needle),
        "the bind mount leaked to the host"
    );
    // What virtiofsd offers, through our frontend.
    let b = twinbox_vmm::devices::virtiofs::vhost::Backend::connect(&sock, 2)?;
    let f = b.guest_features();
    assert_ne!(f & (1 << 32), 0, "VERSION_1: {f:#x}");
    drop(b);
    // It ends when its one connection closes (or at the latest when
    // dropped), and takes its socket with it.
    drop(server);
    assert!(!sock.exists());
    assert!(
        wait_until(Duration::from_secs(5), || processes_with(&needle)
            .is_empty()),
        "left: {:?}",
        processes_with(&needle)
    );
    Ok(())
}

#[test]
fn a_vm_with_shares_is_neither_snapshotted_nor_restored() {
    let mut c = VmConfig::new("/nonexistent/vmlinux");
    c.shares = vec![ShareConfig {
        tag: "data".into(),
        socket: "/nonexistent/fs.sock".into(),
    }];
    for snapshot in [
        Snapshot::Take,
        Snapshot::Restore {
            dir: "/nonexistent".into(),
            key: "k".into(),
        },
    ] {
        c.snapshot = snapshot;
        let r = twinbox_vmm::vm::run(&c, Box::new(std::io::sink()));
        assert!(
            matches!(r, Err(twinbox_vmm::vm::Error::SnapshotWithShares)),
            "{r:?}"
        );
    }
    let msg = twinbox_vmm::vm::Error::SnapshotWithShares.to_string();
    assert!(
        msg.contains("private") && msg.contains("boot it instead"),
        "{msg}"
    );
}

#[test]
fn a_device_sees_its_real_server_die() -> TestResult {
    use twinbox_vmm::devices::virtiofs;
    use twinbox_vmm::virtio::mmio::{status, MmioTransport};
    use vmm_sys_util::eventfd::EventFd;
    if let Some(why) = no_virtiofsd() {
        eprintln!("skipped: {why}");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src");
    std::fs::create_dir(&src)?;
    let sock = dir.path().join("fs.sock");
    let server = virtiofsd::spawn(&Options::new(&src, &sock))?;
    let dev = virtiofs::VirtioFs::connect("data", &sock)?;
    let mem = vm_memory::GuestMemoryMmap::from_regions(twinbox_vmm::memory::shared_ram(1 << 20)?)?;
    let t = MmioTransport::new(dev, mem, EventFd::new(0)?, EventFd::new(0)?)?;
    let shared = std::sync::Arc::new(std::sync::Mutex::new(t));
    let worker = virtiofs::spawn(shared.clone(), 0, true)?;
    std::thread::sleep(Duration::from_millis(300));
    server.kill();
    assert!(wait_until(Duration::from_secs(10), || shared
        .lock()
        .is_ok_and(|t| t.status() & status::NEEDS_RESET != 0)));
    worker.stop()?;
    Ok(())
}
