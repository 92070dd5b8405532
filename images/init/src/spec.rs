//! What init is told, in two files and one format:
//!
//! - the boot file packed beside init (`/.twinbox/boot.json`, [`Boot`]):
//!   the root disk and the mailbox device, nothing of a run. With it, the
//!   run's [`Spec`] arrives after the ready point, as the payload of the
//!   mailbox (see `mailbox.rs`), so that one snapshot of a guest waiting
//!   there can serve every later run;
//! - without a boot file, the legacy flow: the whole workload spec packed
//!   beside init (`/.twinbox/spec.json`), its `root` naming the root disk.
//!
//! A [`Spec`] says what to run, with which environment, where and as whom.

use serde::{Deserialize, Serialize};

/// What init runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    /// Program and arguments; the program is looked up in `PATH` from `env`
    /// when it has no `/`.
    pub argv: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// `uid[:gid]` or a user name from the image's /etc/passwd; empty is root.
    pub user: String,
    /// The guest's hostname.
    pub hostname: String,
    /// The image's root filesystem as a disk (`/dev/pmem0`, ext4), mounted
    /// read-only under a tmpfs overlay; empty when the image came in the
    /// initramfs itself. Only the legacy flow reads it: with a boot file,
    /// the root disk is the boot file's, and this is ignored.
    #[serde(default)]
    pub root: String,
    /// Serve the guest agent on this vsock port (`twinbox_agent::PORT`)
    /// while the workload runs (exec, signals, the workload's exit; see
    /// `agent.rs`); absent, init runs the workload and waits, as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_port: Option<u32>,
    /// With `agent_port`: the box's first process is a *holder* that only
    /// waits, and the host starts the workload through the agent (a VM box
    /// run with `-i` or `-t`, whose stdio the agent relays); the host ends
    /// the box by signalling the holder (`Signal{0, N}`).
    #[serde(default)]
    pub hold: bool,
    /// Volumes: virtio-fs shares to mount before the workload starts.
    #[serde(default)]
    pub mounts: Vec<Mount>,
}

/// One volume in the guest: the virtio-fs share `tag` on `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The share's tag (the device's name for it).
    pub tag: String,
    /// Where, an absolute path in the guest.
    pub target: String,
    /// Mounted read-only (the host enforces it too: this only makes the
    /// guest's own view honest).
    #[serde(default)]
    pub readonly: bool,
}

/// Most volumes one spec may ask for.
pub const MAX_MOUNTS: usize = 16;

impl Mount {
    /// Checks what the host sent: a short tag, an absolute target without
    /// `..`, no NUL bytes.
    pub fn check(&self) -> Result<(), String> {
        if self.tag.is_empty() || self.tag.len() > 36 || self.tag.contains('\0') {
            return Err(format!("bad volume tag {:?}", self.tag));
        }
        let t = &self.target;
        if !t.starts_with('/') || t.contains('\0') || t.split('/').any(|c| c == "..") || t == "/" {
            return Err(format!("bad volume target {t:?}"));
        }
        Ok(())
    }
}

/// Where the spec is in the guest (the legacy flow).
pub const PATH: &str = "/.twinbox/spec.json";

/// Where the boot file is in the guest; its presence selects the mailbox
/// flow.
pub const BOOT_PATH: &str = "/.twinbox/boot.json";

/// The boot file: what init needs before the ready point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// The root disk's device node (`/dev/pmem0`); empty when the
    /// initramfs is the root.
    pub root: String,
    /// The mailbox's device node (`/dev/pmem1`), read after the ready
    /// mark; empty when there is none (then the spec is the initramfs's
    /// `/.twinbox/spec.json`, read before the root disk is entered, and
    /// the wall clock and the RNG are left as the kernel set them).
    pub mailbox: String,
    /// Files of the root to read once before the ready mark (the image's
    /// own command and what it loads), so that a guest restored from a
    /// snapshot finds them in its page cache instead of reading them from
    /// the disk again, at the hypervisor's speed, in every run.
    #[serde(default)]
    pub preload: Vec<String>,
}

impl Boot {
    /// Parses the boot file.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(text).map_err(|e| format!("bad boot file: {e}"))
    }
}

impl Spec {
    /// Parses the spec.
    pub fn parse(text: &[u8]) -> Result<Self, String> {
        let s: Spec = serde_json::from_slice(text).map_err(|e| format!("bad spec: {e}"))?;
        if s.argv.is_empty() || s.argv[0].is_empty() {
            return Err("bad spec: empty argv".into());
        }
        Ok(s)
    }

    /// The value of `PATH` in the spec's environment (a default if unset).
    pub fn path_var(&self) -> &str {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    }
}

/// Resolves `user` against the lines of /etc/passwd: `(uid, gid)`.
pub fn resolve_user(user: &str, passwd: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, default_gid) = match name.parse::<u32>() {
        Ok(uid) => {
            let gid = passwd
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid))
                        .then(|| f[3].parse::<u32>().ok())
                })
                .flatten()
                .next()
                .unwrap_or(uid);
            (uid, gid)
        }
        Err(_) => passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[0] == name)
                    .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
            })
            .flatten()
            .ok_or_else(|| format!("unknown user {name:?}"))?,
    };
    let gid = match group {
        Some(g) => g
            .parse::<u32>()
            .map_err(|_| format!("group {g:?} must be numeric"))?,
        None => default_gid,
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\napp:x:1000:1001::/home/app:/bin/sh\n";

    #[test]
    fn users_resolve() {
        assert_eq!(resolve_user("", PASSWD), Ok((0, 0)));
        assert_eq!(resolve_user("app", PASSWD), Ok((1000, 1001)));
        assert_eq!(resolve_user("1000", PASSWD), Ok((1000, 1001)));
        assert_eq!(resolve_user("1234", PASSWD), Ok((1234, 1234)));
        assert_eq!(resolve_user("nobody:5", PASSWD), Ok((65534, 5)));
        assert!(resolve_user("ghost", PASSWD).is_err());
        assert!(resolve_user("app:staff", PASSWD).is_err());
    }

    #[test]
    fn boot_file_parses() {
        let b = Boot::parse(br#"{"root":"/dev/pmem0","mailbox":"/dev/pmem1"}"#);
        assert_eq!(
            b,
            Ok(Boot {
                root: "/dev/pmem0".into(),
                mailbox: "/dev/pmem1".into(),
                preload: Vec::new(),
            })
        );
        let pre = Boot::parse(br#"{"root":"","mailbox":"","preload":["/bin/busybox"]}"#);
        assert_eq!(pre.map(|b| b.preload), Ok(vec!["/bin/busybox".to_string()]));
        let empty = Boot::parse(br#"{"root":"","mailbox":""}"#);
        assert_eq!(
            empty.map(|b| b.root.is_empty() && b.mailbox.is_empty()),
            Ok(true)
        );
        assert!(Boot::parse(br#"{"root":"/dev/pmem0"}"#).is_err());
        assert!(Boot::parse(br#"{"root":1,"mailbox":""}"#).is_err());
        assert!(Boot::parse(b"").is_err());
    }

    #[test]
    fn volume_mounts_are_checked() {
        let m = |tag: &str, target: &str| Mount {
            tag: tag.into(),
            target: target.into(),
            readonly: false,
        };
        assert_eq!(m("v0", "/data").check(), Ok(()));
        assert_eq!(m("v1", "/a/b c/d").check(), Ok(()));
        for (tag, target) in [
            ("", "/data"),
            (&"x".repeat(37) as &str, "/data"),
            ("v\0", "/data"),
            ("v0", "data"),
            ("v0", "/"),
            ("v0", "/a/../etc"),
            ("v0", "/a\0b"),
        ] {
            assert!(m(tag, target).check().is_err(), "{tag:?} {target:?}");
        }
    }

    #[test]
    fn spec_round_trips_and_refuses_empty_argv() {
        let s = Spec {
            argv: vec!["echo".into(), "hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            hostname: "box".into(),
            root: "/dev/pmem0".into(),
            agent_port: None,
            hold: false,
            mounts: vec![Mount {
                tag: "v0".into(),
                target: "/data".into(),
                readonly: true,
            }],
        };
        let text = serde_json::to_vec(&s).unwrap_or_default();
        assert_eq!(Spec::parse(&text), Ok(s.clone()));
        assert_eq!(s.path_var(), "/bin");
        assert!(Spec::parse(br#"{"argv":[],"env":[],"cwd":"/","user":"","hostname":""}"#).is_err());
        assert!(Spec::parse(b"garbage").is_err());
        // A spec from before the root disk still parses: no root disk.
        let old = Spec::parse(br#"{"argv":["true"],"env":[],"cwd":"/","user":"","hostname":""}"#);
        assert_eq!(
            old.map(|s| (s.root, s.agent_port)),
            Ok((String::new(), None))
        );
        let agent = Spec::parse(
            br#"{"argv":["true"],"env":[],"cwd":"/","user":"","hostname":"","agent_port":1024}"#,
        );
        assert_eq!(agent.map(|s| s.agent_port), Ok(Some(1024)));
    }
}
