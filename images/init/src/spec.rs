//! The workload spec the host packs beside init (`/.twinbox/spec.json`):
//! what to run, with which environment, where and as whom.

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
    /// initramfs itself.
    #[serde(default)]
    pub root: String,
}

/// Where the spec is in the guest.
pub const PATH: &str = "/.twinbox/spec.json";

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
    fn spec_round_trips_and_refuses_empty_argv() {
        let s = Spec {
            argv: vec!["echo".into(), "hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            user: String::new(),
            hostname: "box".into(),
            root: "/dev/pmem0".into(),
        };
        let text = serde_json::to_vec(&s).unwrap_or_default();
        assert_eq!(Spec::parse(&text), Ok(s.clone()));
        assert_eq!(s.path_var(), "/bin");
        assert!(Spec::parse(br#"{"argv":[],"env":[],"cwd":"/","user":"","hostname":""}"#).is_err());
        assert!(Spec::parse(b"garbage").is_err());
        // A spec from before the root disk still parses: no root disk.
        let old = Spec::parse(br#"{"argv":["true"],"env":[],"cwd":"/","user":"","hostname":""}"#);
        assert_eq!(old.map(|s| s.root), Ok(String::new()));
    }
}
