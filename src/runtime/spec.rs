//! A bundle's `config.json` (the OCI runtime spec, as engines write it):
//! typed with serde, bounded, and translated into the container crate's
//! [`twinbox_container::oci::Bundle`]. What the spec says and this runtime
//! cannot do is refused with a message naming it, never ignored: a box
//! that looks confined and is not would be worse than no box.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use serde::Deserialize;
use twinbox_container::caps;
use twinbox_container::cgroups::oci::{DeviceRule, Resources};
use twinbox_container::oci::{Bundle, Mount, MountKind, Namespaces, Process};
use twinbox_container::seccomp::{filter, syscalls};

/// The largest `config.json` (or `--process` file) read.
pub const MAX_SPEC: u64 = 4 << 20;

/// Errors of reading and translating a spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// The file is larger than [`MAX_SPEC`].
    #[error("{}: larger than {} bytes", .0.display(), MAX_SPEC)]
    TooLarge(PathBuf),
    /// The JSON does not parse as a spec.
    #[error("{}: not a valid OCI spec", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
    /// A field's value cannot be used.
    #[error("config.json: {0}")]
    Invalid(String),
    /// A field this runtime does not support (yet) is set.
    #[error("config.json: {0} is not supported by twinbox-runtime")]
    Unsupported(String),
    /// The seccomp filter does not compile.
    #[error(transparent)]
    Seccomp(#[from] filter::Error),
}

/// The spec, as far as twinbox reads it (other fields are ignored).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The spec's version.
    #[serde(default)]
    pub oci_version: String,
    /// The process.
    pub process: Option<ProcessSpec>,
    /// The root file system.
    pub root: Option<Root>,
    /// Host name.
    pub hostname: Option<String>,
    /// Mounts, in order.
    #[serde(default)]
    pub mounts: Vec<MountSpec>,
    /// Hooks.
    #[serde(default)]
    pub hooks: Hooks,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Linux settings.
    #[serde(default)]
    pub linux: Linux,
}

/// `process`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    #[serde(default)]
    terminal: bool,
    console_size: Option<ConsoleSize>,
    #[serde(default)]
    user: User,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    cwd: String,
    capabilities: Option<Capabilities>,
    #[serde(default)]
    rlimits: Vec<Rlimit>,
    #[serde(default)]
    no_new_privileges: bool,
    oom_score_adj: Option<i32>,
    apparmor_profile: Option<String>,
    selinux_label: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
struct ConsoleSize {
    height: u16,
    width: u16,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
struct User {
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default)]
    additional_gids: Vec<u32>,
}

#[derive(Debug, Deserialize, Default, Clone)]
struct Capabilities {
    #[serde(default)]
    bounding: Vec<String>,
    #[serde(default)]
    effective: Vec<String>,
    #[serde(default)]
    inheritable: Vec<String>,
    #[serde(default)]
    permitted: Vec<String>,
    #[serde(default)]
    ambient: Vec<String>,
}

#[derive(Debug, Deserialize, Clone)]
struct Rlimit {
    #[serde(rename = "type")]
    kind: String,
    hard: u64,
    soft: u64,
}

/// `root`.
#[derive(Debug, Deserialize)]
pub struct Root {
    path: String,
    #[serde(default)]
    readonly: bool,
}

/// One of `mounts`.
#[derive(Debug, Deserialize)]
pub struct MountSpec {
    destination: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    source: Option<String>,
    #[serde(default)]
    options: Vec<String>,
}

/// `hooks`.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Run by `create` in the runtime's namespaces (deprecated, but what
    /// Docker 20.10 uses to set up the box's network).
    #[serde(default)]
    pub prestart: Vec<Hook>,
    /// Run by `create` in the runtime's namespaces.
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    create_container: Vec<Hook>,
    #[serde(default)]
    start_container: Vec<Hook>,
    /// Run by `start` after the process was released.
    #[serde(default)]
    pub poststart: Vec<Hook>,
    /// Run by `delete`.
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

/// One hook.
#[derive(Debug, Deserialize, Clone)]
pub struct Hook {
    /// The program (absolute).
    pub path: String,
    /// Its argv, argv[0] included.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds it may take.
    pub timeout: Option<u64>,
}

/// `linux`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    uid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    gid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    devices: Vec<serde_json::Value>,
    /// The cgroups' path.
    pub cgroups_path: Option<String>,
    #[serde(default)]
    resources: ResourcesSpec,
    rootfs_propagation: Option<String>,
    seccomp: Option<Seccomp>,
    #[serde(default)]
    sysctl: BTreeMap<String, String>,
    #[serde(default)]
    masked_paths: Vec<String>,
    #[serde(default)]
    readonly_paths: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct NamespaceSpec {
    #[serde(rename = "type")]
    kind: String,
    path: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ResourcesSpec {
    #[serde(default)]
    devices: Vec<DeviceSpec>,
    memory: Option<MemorySpec>,
    cpu: Option<CpuSpec>,
    pids: Option<PidsSpec>,
}

#[derive(Debug, Deserialize)]
struct DeviceSpec {
    allow: bool,
    #[serde(rename = "type")]
    kind: Option<String>,
    major: Option<i64>,
    minor: Option<i64>,
    access: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MemorySpec {
    limit: Option<i64>,
    reservation: Option<i64>,
    swap: Option<i64>,
    #[serde(rename = "disableOOMKiller")]
    disable_oom_killer: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct CpuSpec {
    shares: Option<u64>,
    quota: Option<i64>,
    period: Option<u64>,
    cpus: Option<String>,
    mems: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PidsSpec {
    limit: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Seccomp {
    default_action: String,
    default_errno_ret: Option<u32>,
    #[serde(default)]
    flags: Vec<String>,
    listener_path: Option<String>,
    #[serde(default)]
    syscalls: Vec<SyscallSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SyscallSpec {
    #[serde(default)]
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<ArgSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArgSpec {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

/// Reads a JSON file of at most [`MAX_SPEC`] bytes.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::Read(path.into(), e))?;
    let mut text = Vec::new();
    f.take(MAX_SPEC + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::Read(path.into(), e))?;
    if text.len() as u64 > MAX_SPEC {
        return Err(Error::TooLarge(path.into()));
    }
    serde_json::from_slice(&text).map_err(|e| Error::Parse(path.into(), e))
}

/// Reads `config.json` of a bundle.
pub fn load(bundle: &Path) -> Result<Spec, Error> {
    read_json(&bundle.join("config.json"))
}

fn invalid(s: impl Into<String>) -> Error {
    Error::Invalid(s.into())
}

fn no_nul<'a>(what: &str, items: impl IntoIterator<Item = &'a String>) -> Result<(), Error> {
    match items.into_iter().any(|s| s.contains('\0')) {
        true => Err(invalid(format!("{what} holds a NUL byte"))),
        false => Ok(()),
    }
}

/// A path in the box: absolute, no `..`.
fn box_path(what: &str, p: &str) -> Result<String, Error> {
    if !p.starts_with('/') || p.contains('\0') || p.split('/').any(|c| c == "..") {
        return Err(invalid(format!(
            "{what} {p:?}: want an absolute path without '..'"
        )));
    }
    Ok(p.to_string())
}

fn cap_mask(names: &[String]) -> u64 {
    // Names this kernel table does not know are left out, as runc does.
    names
        .iter()
        .filter_map(|n| caps::number(n))
        .filter(|n| *n < 64)
        .fold(0, |m, n| m | (1 << n))
}

fn rlimit_number(name: &str) -> Option<u32> {
    let n = match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    };
    Some(n)
}

/// Translates a `process` (the bundle's or an exec's).
pub fn process(p: &ProcessSpec) -> Result<Process, Error> {
    if p.args.is_empty() || p.args[0].is_empty() {
        return Err(invalid("process.args is empty"));
    }
    if p.args.len() > 65_536 || p.env.len() > 65_536 {
        return Err(invalid(
            "process.args or process.env has more than 65536 entries",
        ));
    }
    no_nul("process.args", &p.args)?;
    no_nul("process.env", &p.env)?;
    if let Some(e) = p.env.iter().find(|e| !e.contains('=')) {
        return Err(invalid(format!("process.env entry {e:?}: want KEY=VALUE")));
    }
    let cwd = box_path("process.cwd", if p.cwd.is_empty() { "/" } else { &p.cwd })?;
    if p.apparmor_profile.as_deref().is_some_and(|a| !a.is_empty()) {
        return Err(Error::Unsupported(
            "process.apparmorProfile (AppArmor; run with --security-opt apparmor=unconfined)"
                .into(),
        ));
    }
    if p.selinux_label.as_deref().is_some_and(|a| !a.is_empty()) {
        return Err(Error::Unsupported("process.selinuxLabel (SELinux)".into()));
    }
    let c = p.capabilities.clone().unwrap_or_default();
    let mut rlimits = Vec::new();
    for r in &p.rlimits {
        let n = rlimit_number(&r.kind)
            .ok_or_else(|| invalid(format!("rlimit {:?}: unknown", r.kind)))?;
        if r.soft > r.hard {
            return Err(invalid(format!("rlimit {}: soft above hard", r.kind)));
        }
        rlimits.push((n, r.soft, r.hard));
    }
    if let Some(a) = p.oom_score_adj.filter(|a| !(-1000..=1000).contains(a)) {
        return Err(invalid(format!(
            "process.oomScoreAdj {a}: want -1000 to 1000"
        )));
    }
    Ok(Process {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd,
        uid: p.user.uid,
        gid: p.user.gid,
        additional_gids: p.user.additional_gids.clone(),
        caps: caps::Sets {
            bounding: cap_mask(&c.bounding),
            effective: cap_mask(&c.effective),
            permitted: cap_mask(&c.permitted),
            inheritable: cap_mask(&c.inheritable),
            ambient: cap_mask(&c.ambient),
        },
        rlimits,
        no_new_privs: p.no_new_privileges,
        oom_score_adj: p.oom_score_adj,
        terminal: p.terminal,
        console_size: p.console_size.map(|s| (s.height, s.width)),
    })
}

/// The flags and data of a mount's options.
fn mount_options(opts: &[String]) -> (MsFlags, MsFlags, Option<bool>, Vec<String>) {
    let (mut flags, mut prop, mut bind, mut data) =
        (MsFlags::empty(), MsFlags::empty(), None, Vec::new());
    for o in opts {
        let set = |f: MsFlags| (f, true);
        let clear = |f: MsFlags| (f, false);
        let (f, on) = match o.as_str() {
            "bind" => {
                bind = Some(false);
                continue;
            }
            "rbind" => {
                bind = Some(true);
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                prop = match o.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                if o.starts_with('r') {
                    prop |= MsFlags::MS_REC;
                }
                continue;
            }
            "ro" => set(MsFlags::MS_RDONLY),
            "rw" => clear(MsFlags::MS_RDONLY),
            "nosuid" => set(MsFlags::MS_NOSUID),
            "suid" => clear(MsFlags::MS_NOSUID),
            "nodev" => set(MsFlags::MS_NODEV),
            "dev" => clear(MsFlags::MS_NODEV),
            "noexec" => set(MsFlags::MS_NOEXEC),
            "exec" => clear(MsFlags::MS_NOEXEC),
            "sync" => set(MsFlags::MS_SYNCHRONOUS),
            "async" => clear(MsFlags::MS_SYNCHRONOUS),
            "dirsync" => set(MsFlags::MS_DIRSYNC),
            "noatime" => set(MsFlags::MS_NOATIME),
            "atime" => clear(MsFlags::MS_NOATIME),
            "nodiratime" => set(MsFlags::MS_NODIRATIME),
            "diratime" => clear(MsFlags::MS_NODIRATIME),
            "relatime" => set(MsFlags::MS_RELATIME),
            "norelatime" => clear(MsFlags::MS_RELATIME),
            "strictatime" => set(MsFlags::MS_STRICTATIME),
            "nostrictatime" => clear(MsFlags::MS_STRICTATIME),
            "defaults" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        if on {
            flags |= f;
        } else {
            flags &= !f;
        }
    }
    (flags, prop, bind, data)
}

fn mounts(spec: &[MountSpec]) -> Result<Vec<Mount>, Error> {
    let mut out = Vec::new();
    for m in spec {
        let destination = box_path("mount destination", &m.destination)?;
        no_nul("a mount", m.options.iter().chain(m.source.iter()))?;
        let (flags, propagation, bind, data) = mount_options(&m.options);
        let kind_s = m.kind.as_deref().unwrap_or("");
        let source = m.source.clone().unwrap_or_default();
        let kind = if kind_s == "bind" || bind.is_some() {
            if !source.starts_with('/') {
                return Err(invalid(format!(
                    "bind mount of {destination}: the source {source:?} is not absolute"
                )));
            }
            MountKind::Bind {
                recursive: bind.unwrap_or(false),
            }
        } else if kind_s == "cgroup" {
            MountKind::Cgroup
        } else if kind_s.is_empty() {
            return Err(invalid(format!("mount of {destination}: no type")));
        } else {
            MountKind::Fs(kind_s.to_string())
        };
        out.push(Mount {
            destination,
            kind,
            source,
            flags,
            propagation,
            data: data.join(","),
        });
    }
    Ok(out)
}

fn namespaces(spec: &[NamespaceSpec]) -> Result<Namespaces, Error> {
    let mut ns = Namespaces::default();
    for n in spec {
        let flag = match n.kind.as_str() {
            "pid" => CloneFlags::CLONE_NEWPID,
            "network" => CloneFlags::CLONE_NEWNET,
            "mount" => CloneFlags::CLONE_NEWNS,
            "ipc" => CloneFlags::CLONE_NEWIPC,
            "uts" => CloneFlags::CLONE_NEWUTS,
            "cgroup" => CloneFlags::CLONE_NEWCGROUP,
            "user" => {
                return Err(Error::Unsupported(
                    "a user namespace (linux.namespaces type user)".into(),
                ))
            }
            other => return Err(invalid(format!("namespace type {other:?}"))),
        };
        if ns.has(flag) {
            return Err(invalid(format!("namespace {} listed twice", n.kind)));
        }
        match n.path.as_deref().filter(|p| !p.is_empty()) {
            None => ns.new |= flag,
            Some(p) => {
                let joinable =
                    CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
                if !joinable.contains(flag) {
                    return Err(Error::Unsupported(format!(
                        "joining a {} namespace by path",
                        n.kind
                    )));
                }
                if !p.starts_with('/') || p.contains('\0') {
                    return Err(invalid(format!("namespace path {p:?}: not absolute")));
                }
                ns.join.push((flag, PathBuf::from(p)));
            }
        }
    }
    if !ns.new.contains(CloneFlags::CLONE_NEWNS) {
        return Err(Error::Unsupported(
            "a box without its own mount namespace".into(),
        ));
    }
    Ok(ns)
}

fn resources(r: &ResourcesSpec) -> Result<Resources, Error> {
    let mut out = Resources::default();
    if let Some(m) = &r.memory {
        out.memory = m.limit;
        out.memory_swap = m.swap;
        out.memory_reservation = m.reservation;
        out.disable_oom_killer = m.disable_oom_killer.unwrap_or(false);
    }
    if let Some(c) = &r.cpu {
        if c.cpus.as_deref().is_some_and(|s| !s.is_empty())
            || c.mems.as_deref().is_some_and(|s| !s.is_empty())
        {
            return Err(Error::Unsupported(
                "linux.resources.cpu.cpus/mems (cpusets)".into(),
            ));
        }
        out.cpu_shares = c.shares;
        out.cpu_quota = c.quota;
        out.cpu_period = c.period;
    }
    out.pids = r.pids.as_ref().map(|p| p.limit);
    for d in &r.devices {
        let kind = match d.kind.as_deref().unwrap_or("a") {
            "a" => 'a',
            "c" => 'c',
            "b" => 'b',
            other => return Err(invalid(format!("device rule type {other:?}"))),
        };
        let access = d.access.clone().unwrap_or_else(|| "rwm".into());
        if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
            return Err(invalid(format!("device rule access {access:?}")));
        }
        out.devices.push(DeviceRule {
            allow: d.allow,
            kind,
            major: d.major,
            minor: d.minor,
            access,
        });
    }
    if !out.devices.is_empty() {
        // The nodes every box gets and what its terminals need, allowed
        // after the engine's rules as runc does (Docker's list leaves
        // out /dev/full and the pty devices, counting on that).
        let defaults: [(char, Option<i64>, Option<i64>, &str); 11] = [
            ('c', None, None, "m"),
            ('b', None, None, "m"),
            ('c', Some(1), Some(3), "rwm"),
            ('c', Some(1), Some(5), "rwm"),
            ('c', Some(1), Some(7), "rwm"),
            ('c', Some(1), Some(8), "rwm"),
            ('c', Some(1), Some(9), "rwm"),
            ('c', Some(5), Some(0), "rwm"),
            ('c', Some(5), Some(1), "rwm"),
            ('c', Some(5), Some(2), "rwm"),
            ('c', Some(136), None, "rwm"),
        ];
        for (kind, major, minor, access) in defaults {
            out.devices.push(DeviceRule {
                allow: true,
                kind,
                major,
                minor,
                access: access.into(),
            });
        }
    }
    Ok(out)
}

fn seccomp_action(name: &str, errno: Option<u32>, what: &str) -> Result<filter::Action, Error> {
    let e = errno.unwrap_or(libc::EPERM as u32);
    let e = u16::try_from(e).map_err(|_| invalid(format!("seccomp errnoRet {e}")))?;
    Ok(match name {
        "SCMP_ACT_ALLOW" => filter::Action::Allow,
        "SCMP_ACT_ERRNO" => filter::Action::Errno(e),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => filter::Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => filter::Action::KillProcess,
        "SCMP_ACT_TRAP" => filter::Action::Trap,
        "SCMP_ACT_LOG" => filter::Action::Log,
        "SCMP_ACT_TRACE" => filter::Action::Trace(e),
        other => {
            return Err(Error::Unsupported(format!(
                "the seccomp action {other} ({what})"
            )))
        }
    })
}

/// The group, under each hierarchy's root, of containers whose spec
/// gives no `cgroupsPath`: theirs are `/<this>/<id>`.
pub const DEFAULT_CGROUP_PARENT: &str = "twinbox-runtime";

/// Compiles `linux.seccomp` to BPF (`None`: no filter).
pub fn seccomp(spec: &Spec) -> Result<Option<Vec<libc::sock_filter>>, Error> {
    let Some(s) = &spec.linux.seccomp else {
        return Ok(None);
    };
    if !s.flags.is_empty() {
        return Err(Error::Unsupported(format!("seccomp flags {:?}", s.flags)));
    }
    if s.listener_path.is_some() {
        return Err(Error::Unsupported(
            "a seccomp listener (SCMP_ACT_NOTIFY)".into(),
        ));
    }
    let default = seccomp_action(&s.default_action, s.default_errno_ret, "the default")?;
    let mut rules = Vec::new();
    for r in &s.syscalls {
        let action = seccomp_action(&r.action, r.errno_ret, "a rule")?;
        let mut args = Vec::new();
        for a in &r.args {
            let (op, value) = match a.op.as_str() {
                "SCMP_CMP_EQ" => (filter::Op::Eq, a.value),
                "SCMP_CMP_NE" => (filter::Op::Ne, a.value),
                "SCMP_CMP_LT" => (filter::Op::Lt, a.value),
                "SCMP_CMP_LE" => (filter::Op::Le, a.value),
                "SCMP_CMP_GT" => (filter::Op::Gt, a.value),
                "SCMP_CMP_GE" => (filter::Op::Ge, a.value),
                // libseccomp's order: the mask first, the value second.
                "SCMP_CMP_MASKED_EQ" => (filter::Op::MaskedEq(a.value), a.value_two),
                other => {
                    return Err(Error::Unsupported(format!(
                        "the seccomp comparison {other}"
                    )))
                }
            };
            args.push(filter::ArgCmp {
                index: a.index,
                value,
                op,
            });
        }
        // Names this x86_64 table does not know (other architectures'
        // calls, newer ones) are skipped, as libseccomp does.
        for nr in r.names.iter().filter_map(|n| syscalls::number(n)) {
            rules.push(filter::Rule {
                nr,
                args: args.clone(),
                action,
            });
        }
    }
    Ok(Some(filter::compile(&filter::Filter { default, rules })?))
}

/// The paths and flags a bundle's box is made with, outside the spec.
pub struct Context<'a> {
    /// The bundle directory (absolute).
    pub bundle: &'a Path,
    /// The container's id.
    pub id: &'a str,
    /// `--console-socket`.
    pub console_socket: Option<PathBuf>,
    /// `--no-pivot`.
    pub no_pivot: bool,
    /// The exec fifo in the state directory.
    pub exec_fifo: PathBuf,
}

/// Translates the whole spec.
pub fn bundle(spec: &Spec, cx: Context<'_>) -> Result<Bundle, Error> {
    let l = &spec.linux;
    if !spec.oci_version.is_empty() && !spec.oci_version.starts_with("1.") {
        return Err(Error::Unsupported(format!(
            "ociVersion {:?}",
            spec.oci_version
        )));
    }
    let Some(p) = &spec.process else {
        return Err(invalid("no process"));
    };
    let Some(root) = &spec.root else {
        return Err(invalid("no root"));
    };
    if root.path.is_empty() || root.path.contains('\0') {
        return Err(invalid("root.path is empty"));
    }
    let root_path = cx.bundle.join(&root.path);
    if !root_path.is_dir() {
        return Err(invalid(format!(
            "root.path {}: not a directory",
            root_path.display()
        )));
    }
    if !l.uid_mappings.is_empty() || !l.gid_mappings.is_empty() {
        return Err(Error::Unsupported(
            "uid/gid mappings (a user namespace)".into(),
        ));
    }
    if !l.devices.is_empty() {
        return Err(Error::Unsupported(
            "linux.devices (docker run --device)".into(),
        ));
    }
    if !spec.hooks.create_container.is_empty() || !spec.hooks.start_container.is_empty() {
        return Err(Error::Unsupported(
            "createContainer and startContainer hooks".into(),
        ));
    }
    if l.rootfs_propagation
        .as_deref()
        .is_some_and(|p| p != "private" && p != "rprivate")
    {
        return Err(Error::Unsupported(format!(
            "linux.rootfsPropagation {:?}",
            l.rootfs_propagation
        )));
    }
    if let Some(h) = &spec.hostname {
        if h.len() > 64 || h.contains('\0') {
            return Err(invalid(format!("hostname {h:?}")));
        }
    }
    let mut sysctls = Vec::new();
    for (k, v) in &l.sysctl {
        if k.is_empty()
            || k.contains(['/', '\0'])
            || k.split('.').any(|p| p.is_empty() || p == "..")
            || v.contains('\0')
        {
            return Err(invalid(format!("sysctl {k:?}")));
        }
        sysctls.push((k.clone(), v.clone()));
    }
    let masked = l
        .masked_paths
        .iter()
        .map(|m| box_path("a masked path", m))
        .collect::<Result<_, _>>()?;
    let readonly = l
        .readonly_paths
        .iter()
        .map(|m| box_path("a read-only path", m))
        .collect::<Result<_, _>>()?;
    let cgroups_path = match l.cgroups_path.as_deref() {
        Some(p) if !p.is_empty() => {
            if p.contains(':') {
                return Err(Error::Unsupported(format!(
                    "the systemd cgroupsPath {p:?} (use the cgroupfs driver)"
                )));
            }
            p.to_string()
        }
        _ => format!("/{DEFAULT_CGROUP_PARENT}/{}", cx.id),
    };
    Ok(Bundle {
        root: root_path,
        root_readonly: root.readonly,
        no_pivot: cx.no_pivot,
        process: process(p)?,
        hostname: spec.hostname.clone(),
        mounts: mounts(&spec.mounts)?,
        namespaces: namespaces(&l.namespaces)?,
        masked_paths: masked,
        readonly_paths: readonly,
        sysctls,
        seccomp: seccomp(spec)?,
        cgroups_path,
        resources: resources(&l.resources)?,
        console_socket: cx.console_socket,
        exec_fifo: cx.exec_fifo,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config.json as Docker 20.10 wrote it on this host (trimmed:
    /// three of its 350 allowed calls).
    const DOCKER: &str = r#"{
      "ociVersion": "1.0.2-dev",
      "process": {"user": {"uid": 0, "gid": 0, "additionalGids": [0, 10]},
        "args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "HOSTNAME=abc"], "cwd": "/",
        "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NOT_A_CAP"],
          "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN", "CAP_KILL"]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
        "oomScoreAdj": 0},
      "root": {"path": "ROOT"},
      "hostname": "abc",
      "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "rprivate"]}
      ],
      "hooks": {"prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey", "x"]}]},
      "linux": {
        "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"},
        "resources": {"devices": [{"allow": false, "access": "rwm"}, {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}],
          "memory": {"disableOOMKiller": false}, "cpu": {"shares": 0}, "blockIO": {"weight": 0}},
        "cgroupsPath": "/docker/abc",
        "namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "uts"}, {"type": "pid"}, {"type": "ipc"}],
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
          "syscalls": [
            {"names": ["read", "write", "chown32"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]},
        "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"]
      }
    }"#;

    fn parse(text: &str) -> Result<Bundle, Error> {
        let d = tempfile::tempdir().map_err(|e| Error::Read("tmp".into(), e))?;
        let text = text.replace("ROOT", &d.path().to_string_lossy());
        let spec: Spec = serde_json::from_str(&text).map_err(|e| Error::Parse("x".into(), e))?;
        bundle(
            &spec,
            Context {
                bundle: Path::new("/bundle"),
                id: "abc",
                console_socket: None,
                no_pivot: false,
                exec_fifo: "/run/x/exec.fifo".into(),
            },
        )
    }

    #[test]
    fn translates_what_docker_writes() -> Result<(), Error> {
        let b = parse(DOCKER)?;
        assert_eq!(b.process.args, ["sh", "-c", "echo hi"]);
        assert_eq!(b.process.additional_gids, [0, 10]);
        assert_eq!(
            b.process.caps.bounding,
            1 | (1 << 5),
            "unknown names are left out"
        );
        assert_eq!(b.process.caps.effective, 1);
        assert_eq!(b.process.rlimits, [(libc::RLIMIT_NOFILE, 512, 1024)]);
        assert_eq!(b.hostname.as_deref(), Some("abc"));
        assert_eq!(b.cgroups_path, "/docker/abc");
        assert_eq!(b.resources.devices.len(), 2 + 11, "runc's defaults follow");
        assert_eq!(b.resources.devices[0].line(), "a *:* rwm");
        assert!(b
            .namespaces
            .new
            .contains(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWPID));
        assert!(!b.namespaces.new.contains(CloneFlags::CLONE_NEWCGROUP));
        assert_eq!(b.mounts[1].data, "mode=755,size=65536k");
        assert!(b.mounts[1]
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME));
        assert_eq!(b.mounts[2].kind, MountKind::Cgroup);
        assert!(b.mounts[2].flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(b.mounts[3].kind, MountKind::Bind { recursive: true });
        assert_eq!(
            b.mounts[3].propagation,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC
        );
        assert_eq!(b.sysctls[0].0, "net.ipv4.ip_unprivileged_port_start");
        // Arch and x32 checks (6), read and write (2 each), clone (1 +
        // 6 compare + 1 ret + 1 default), clone3 (2), the default.
        assert_eq!(b.seccomp.as_ref().map(Vec::len), Some(6 + 4 + 9 + 2 + 1));
        Ok(())
    }

    #[test]
    fn joins_a_network_namespace_by_path() -> Result<(), Error> {
        let text = DOCKER.replace(
            r#"{"type": "network"}"#,
            r#"{"type": "network", "path": "/var/run/netns/x"}"#,
        );
        let b = parse(&text)?;
        assert!(!b.namespaces.new.contains(CloneFlags::CLONE_NEWNET));
        assert_eq!(
            b.namespaces.join,
            [(CloneFlags::CLONE_NEWNET, PathBuf::from("/var/run/netns/x"))]
        );
        Ok(())
    }

    #[test]
    fn refuses_what_it_cannot_do_and_names_it() {
        let cases = [
            (
                r#"{"type": "pid"}"#,
                r#"{"type": "pid", "path": "/proc/1/ns/pid"}"#,
                "joining a pid",
            ),
            (
                r#"{"type": "ipc"}"#,
                r#"{"type": "ipc"}, {"type": "user"}"#,
                "user namespace",
            ),
            (r#"{"type": "mount"}, "#, "", "mount namespace"),
            (
                r#""oomScoreAdj": 0"#,
                r#""oomScoreAdj": 5000"#,
                "oomScoreAdj",
            ),
            (
                r#""oomScoreAdj": 0"#,
                r#""oomScoreAdj": 0, "apparmorProfile": "docker-default""#,
                "AppArmor",
            ),
            (
                r#""SCMP_ACT_ERRNO", "errnoRet""#,
                r#""SCMP_ACT_NOTIFY", "errnoRet""#,
                "SCMP_ACT_NOTIFY",
            ),
            (
                r#""SCMP_CMP_MASKED_EQ""#,
                r#""SCMP_CMP_BITS""#,
                "SCMP_CMP_BITS",
            ),
            (
                r#""cgroupsPath": "/docker/abc""#,
                r#""cgroupsPath": "system.slice:docker:abc""#,
                "systemd",
            ),
            (
                r#""/etc/hosts", "options""#,
                r#""relative", "options""#,
                "not absolute",
            ),
            (
                r#""destination": "/dev""#,
                r#""destination": "/a/../dev""#,
                "'..'",
            ),
            (r#""args": ["sh""#, r#""args": ["s\u0000h""#, "NUL"),
            (r#""RLIMIT_NOFILE""#, r#""RLIMIT_BOGUS""#, "RLIMIT_BOGUS"),
            (
                r#""maskedPaths""#,
                r#""devices": [{"path": "/dev/sda"}], "maskedPaths""#,
                "--device",
            ),
            (
                r#""hooks": {"#,
                r#""hooks": {"startContainer": [{"path": "/x"}], "#,
                "startContainer",
            ),
        ];
        for (from, to, want) in cases {
            let text = DOCKER.replace(from, to);
            assert_ne!(text, DOCKER, "{from} is in the sample");
            let e = parse(&text).map(|_| ()).expect_err(want).to_string();
            assert!(e.contains(want), "{e:?} should name {want:?}");
        }
        assert!(serde_json::from_str::<Spec>(r#"{"process": {"args": 5}}"#).is_err());
    }
}
