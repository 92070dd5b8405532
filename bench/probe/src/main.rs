//! twinbox-probe: the isolation probe. The same static binary runs inside
//! both kinds of box and prints one JSON object with what it can see (host
//! name, processes, mounts, network interfaces, memory, CPUs, kernel) and
//! what it can do (capabilities, seccomp, and a list of system calls a box
//! should not get, each tried with harmless arguments). The host side
//! compares the reports; the probe judges nothing itself.
//!
//! `twinbox-probe [--canary PATH]` prints the report (with `--canary`, also
//! whether a host file the benchmark placed is visible);
//! `twinbox-probe syscalls` prints only the attempts; `twinbox-probe speed
//! cpu|syscall|memory|io` runs one micro-workload and prints its time;
//! `twinbox-probe random` prints one line, `urandom=<64 hex> getrandom=<64
//! hex>`: 32 bytes from /dev/urandom and 32 from getrandom(2), so that the
//! host can check that guests restored from one snapshot do not share
//! random state (exit 1 if either source fails).

mod attempts;
mod speed;
mod syscalls;

use serde_json::{json, Map, Value};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn status_field(key: &str) -> Option<String> {
    read("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

fn meminfo_kib(key: &str) -> Option<u64> {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn uname() -> (String, String) {
    // SAFETY: utsname is plain data; uname fills the struct we own.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let s = |f: &[libc::c_char]| {
        let b: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    (s(&u.nodename), s(&u.release))
}

fn pids() -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

fn interfaces() -> Vec<String> {
    read("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split(':').next()?.trim().to_string()))
        .collect()
}

fn cpus_allowed() -> usize {
    // SAFETY: cpu_set_t is plain data; the call fills the one we own.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above, with its exact size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return 0;
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads the set we own within its size.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .count()
}

fn exes() -> Vec<String> {
    pids()
        .iter()
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

fn report() -> Value {
    let (hostname, release) = uname();
    let mounts = read("/proc/self/mountinfo");
    let mut m = Map::new();
    m.insert("hostname".into(), json!(hostname));
    m.insert("kernel".into(), json!(release));
    m.insert("pid".into(), json!(std::process::id()));
    m.insert("pids_visible".into(), json!(pids()));
    m.insert("exes_visible".into(), json!(exes()));
    // SAFETY: getuid and getgid take no arguments.
    m.insert("uid".into(), json!(unsafe { libc::getuid() }));
    m.insert("cap_eff".into(), json!(status_field("CapEff")));
    m.insert("cap_bnd".into(), json!(status_field("CapBnd")));
    m.insert("seccomp".into(), json!(status_field("Seccomp")));
    m.insert("no_new_privs".into(), json!(status_field("NoNewPrivs")));
    m.insert("uid_map".into(), json!(read("/proc/self/uid_map").trim()));
    m.insert("mounts".into(), json!(mounts.lines().count()));
    m.insert("interfaces".into(), json!(interfaces()));
    m.insert("mem_total_kib".into(), json!(meminfo_kib("MemTotal")));
    m.insert("cpus_allowed".into(), json!(cpus_allowed()));
    m.insert(
        "cpus_online".into(),
        json!(read("/sys/devices/system/cpu/online").trim()),
    );
    m.insert(
        "boot_id".into(),
        json!(read("/proc/sys/kernel/random/boot_id").trim()),
    );
    m.insert("syscalls".into(), syscalls::all());
    m.insert("attempts".into(), attempts::all());
    Value::Object(m)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from /dev/urandom and 32 from getrandom(2) (flags 0).
fn random_bytes() -> Result<([u8; 32], [u8; 32]), String> {
    use std::io::Read;
    let mut urandom = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut urandom))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let mut getrandom = [0u8; 32];
    let mut done = 0;
    while done < getrandom.len() {
        let rest = &mut getrandom[done..];
        // SAFETY: the pointer and length describe the unfilled part of the
        // array we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("getrandom: {e}"));
        }
        done += n as usize;
    }
    Ok((urandom, getrandom))
}

/// The `random` subcommand's line.
fn random_line() -> Result<String, String> {
    let (u, g) = random_bytes()?;
    Ok(format!("urandom={} getrandom={}", hex(&u), hex(&g)))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let v = match args.first().map(String::as_str) {
        Some("random") => match random_line() {
            Ok(line) => {
                println!("{line}");
                return;
            }
            Err(e) => {
                eprintln!("twinbox-probe: {e}");
                std::process::exit(1);
            }
        },
        Some("syscalls") => syscalls::all(),
        Some("speed") => match speed::run(args.get(1).map_or("", String::as_str)) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("twinbox-probe: {e}");
                std::process::exit(2);
            }
        },
        Some("--canary") => {
            let mut v = report();
            let path = args.get(1).map_or("", String::as_str);
            v["canary_visible"] = json!(!path.is_empty() && std::path::Path::new(path).exists());
            v
        }
        _ => report(),
    };
    println!("{v}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_lines_differ_and_have_the_right_shape() {
        let (a, b) = match (random_line(), random_line()) {
            (Ok(a), Ok(b)) => (a, b),
            (a, b) => panic!("{a:?} {b:?}"),
        };
        assert_ne!(a, b);
        for line in [&a, &b] {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 2, "{line}");
            let u = fields[0].strip_prefix("urandom=").unwrap_or_default();
            let g = fields[1].strip_prefix("getrandom=").unwrap_or_default();
            for h in [u, g] {
                assert_eq!(h.len(), 64, "{line}");
                assert!(h
                    .bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
            }
            assert_ne!(u, g);
        }
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }
}
