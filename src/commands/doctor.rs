//! `twinbox doctor`: what this host offers and what is missing, line by
//! line, each missing piece with its fix.

use std::path::Path;

use twinbox_container::{cgroups, namespaces};
use twinbox_images::{base, kernel, Reference, Store};
use twinbox_vmm::hypervisor;

use crate::host::on_path;
use crate::size;

/// The verdict of one check.
enum Verdict {
    Ok,
    /// Works, with a caveat.
    Warn,
    /// Missing or broken: the part of twinbox that needs it cannot work.
    Fail,
}

struct Report {
    failed: usize,
}

impl Report {
    fn line(&mut self, v: Verdict, what: &str, detail: &str, fix: Option<&str>) {
        let tag = match v {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => {
                self.failed += 1;
                "FAIL"
            }
        };
        println!("[{tag}] {what:<18} {detail}");
        if let Some(f) = fix {
            println!("       {:<18} fix: {f}", "");
        }
    }
}

/// Runs the checks; returns true when nothing failed.
pub fn run(store: &Store) -> bool {
    let mut r = Report { failed: 0 };
    println!("twinbox doctor: this host, for VM and container boxes\n");

    match hypervisor::probe() {
        Ok(p) => {
            r.line(
                Verdict::Ok,
                "/dev/kvm",
                &format!(
                    "usable (API {}, irqchip {}, split irqchip {}, PIT {}, up to {} vCPUs)",
                    p.api_version,
                    yes(p.irqchip),
                    yes(p.split_irqchip),
                    yes(p.pit),
                    p.max_vcpus
                ),
                None,
            );
            let v = if matches!(p.kind, hypervisor::Kind::Pvm { .. }) { Verdict::Warn } else { Verdict::Ok };
            let mut note = if matches!(p.kind, hypervisor::Kind::Pvm { .. }) {
                format!(
                    " -- Linux guests run here, but a boot takes {} (README)",
                    crate::subjects::vm::PVM_BOOT
                )
            } else {
                String::new()
            };
            note.push_str(if hypervisor::host_is_virtual() {
                "; nested: this host is itself a virtual machine (CPUID hypervisor bit)"
            } else {
                "; not nested (bare metal)"
            });
            r.line(v, "hypervisor", &format!("{}{note}", p.kind), None);
        }
        Err(e) => r.line(
            Verdict::Fail,
            "/dev/kvm",
            &format!("{:#}", anyhow::Error::from(e)),
            Some("enable virtualization (VT-x/AMD-V) and load kvm_intel or kvm_amd; run as root or join the kvm group"),
        ),
    }

    let mut ok = Vec::new();
    let mut missing = Vec::new();
    for (name, flag) in namespaces::KINDS {
        match namespaces::can_unshare(flag) {
            Ok(None) => ok.push(name),
            Ok(Some(e)) => missing.push(format!("{name} ({e})")),
            Err(e) => missing.push(format!("{name} ({:#})", anyhow::Error::from(e))),
        }
    }
    if missing.is_empty() {
        r.line(Verdict::Ok, "namespaces", &ok.join(" "), None);
    } else {
        r.line(
            Verdict::Fail,
            "namespaces",
            &format!("usable: {}; refused: {}", ok.join(" "), missing.join(", ")),
            Some("run as root, or allow user namespaces (sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces>0)"),
        );
    }

    match cgroups::layout::detect() {
        Ok(l) => {
            let needed = ["memory", "pids", "cpu"];
            let lacking: Vec<&str> = needed.iter().copied().filter(|c| !l.has(c)).collect();
            if lacking.is_empty() {
                r.line(Verdict::Ok, "cgroups", &l.to_string(), None);
            } else {
                r.line(
                    Verdict::Fail,
                    "cgroups",
                    &format!("{l}; missing controllers: {}", lacking.join(" ")),
                    Some("mount the cgroup file system with the memory, pids and cpu controllers"),
                );
            }
        }
        Err(e) => r.line(
            Verdict::Fail,
            "cgroups",
            &format!("cannot read mountinfo: {e}"),
            None,
        ),
    }

    match kernel::Source::find() {
        Ok(src) => match kernel::cached(&src) {
            Some(k) => r.line(
                Verdict::Ok,
                "guest kernel",
                &format!(
                    "built: {} (bzImage {}, vmlinux {}, {} {})",
                    k.bzimage().display(),
                    size::human(k.info.bzimage_bytes),
                    size::human(k.info.vmlinux_bytes),
                    kernel::SOURCE_PACKAGE,
                    src.version
                ),
                None,
            ),
            None => match kernel::cached_debian() {
                Some(k) => r.line(
                    Verdict::Warn,
                    "guest kernel",
                    &format!(
                        "only Debian's fallback: {} ({})",
                        k.bzimage().display(),
                        k.info.source
                    ),
                    Some("twinbox kernel build"),
                ),
                None => r.line(
                    Verdict::Fail,
                    "guest kernel",
                    &format!("not built (recipe key {})", src.key()),
                    Some("twinbox kernel build   (or: twinbox kernel fetch-debian)"),
                ),
            },
        },
        Err(e) => r.line(
            Verdict::Fail,
            "guest kernel",
            &format!("{:#}", anyhow::Error::from(e)),
            Some(&format!(
                "apt-get install {} && twinbox kernel build",
                kernel::SOURCE_PACKAGE
            )),
        ),
    }

    let base_ref = Reference::parse(base::NAME);
    match base_ref.map(|r| store.get(&r)) {
        Ok(Ok(img)) => r.line(
            Verdict::Ok,
            "base image",
            &format!(
                "{} ({}, {})",
                img.meta.name,
                size::human(img.meta.size),
                img.meta.source
            ),
            None,
        ),
        _ => r.line(
            Verdict::Fail,
            "base image",
            &format!("{} is not in {}", base::NAME, store.home().display()),
            Some("twinbox image build-base"),
        ),
    }

    let tools = [
        ("mkfs.ext4", "e2fsprogs"),
        ("debugfs", "e2fsprogs"),
        ("dpkg-deb", "dpkg"),
        ("apt-get", "apt"),
        ("make", "build-essential"),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
    ];
    let absent: Vec<(&str, &str)> = tools
        .iter()
        .copied()
        .filter(|(t, _)| on_path(t).is_none())
        .collect();
    if absent.is_empty() {
        r.line(
            Verdict::Ok,
            "host tools",
            &tools.map(|(t, _)| t).join(" "),
            None,
        );
    } else {
        let pkgs: Vec<&str> = absent.iter().map(|(_, p)| *p).collect();
        r.line(
            Verdict::Fail,
            "host tools",
            &format!(
                "missing: {}",
                absent.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(" ")
            ),
            Some(&format!("apt-get install {}", pkgs.join(" "))),
        );
    }
    let store_fs = store.home();
    r.line(
        Verdict::Ok,
        "image store",
        &store_fs.display().to_string(),
        None,
    );
    if Path::new("/sys/fs/selinux/enforce").exists() {
        r.line(
            Verdict::Warn,
            "selinux",
            "present: not tested with twinbox",
            None,
        );
    }
    println!();
    if r.failed == 0 {
        println!("everything twinbox needs is here");
    } else {
        println!("{} check(s) failed; the fixes are above", r.failed);
    }
    r.failed == 0
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
