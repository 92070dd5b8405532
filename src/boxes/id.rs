//! Box ids and names, as Docker makes them: an id is 64 hex digits from
//! the kernel's random source (12 shown), a name matches
//! `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, and a box without one is given a random
//! `adjective_noun` name.

/// Digits of an id that `ps` shows.
pub const SHORT: usize = 12;

/// The longest name taken (Docker has no limit; a path component must fit).
pub const NAME_MAX: usize = 128;

/// A fresh id: 32 random bytes in hex.
pub fn fresh() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    getrandom(&mut b)?;
    Ok(hex::encode(b))
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the kernel writes at most `len` bytes into our buffer.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        } else {
            got += n as usize;
        }
    }
    Ok(())
}

/// Whether `s` is a full id (64 lower-case hex digits).
pub fn is_full(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a name against Docker's rule; the error says why.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut b = name.bytes();
    let ok_first = b.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if !ok_first || !ok_rest {
        return Err(format!(
            "invalid box name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-]* are allowed"
        ));
    }
    if name.len() > NAME_MAX {
        return Err(format!("box name longer than {NAME_MAX} characters"));
    }
    Ok(())
}

const ADJECTIVES: [&str; 24] = [
    "brave", "calm", "clever", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid",
    "merry", "nifty", "proud", "quick", "quiet", "sharp", "shy", "silly", "sleepy", "sober",
    "stoic", "sunny", "tender", "witty",
];

const NOUNS: [&str; 24] = [
    "ada", "babbage", "curie", "dijkstra", "euler", "fermat", "gauss", "hopper", "hypatia",
    "kepler", "knuth", "lamport", "liskov", "lovelace", "noether", "pascal", "ritchie", "shannon",
    "thompson", "torvalds", "turing", "wirth", "wozniak", "yonath",
];

/// A random `adjective_noun` name, with a number when `taken` says the
/// plain one is used.
pub fn random_name(taken: impl Fn(&str) -> bool) -> std::io::Result<String> {
    let mut b = [0u8; 4];
    for attempt in 0..64u32 {
        getrandom(&mut b)?;
        let a = ADJECTIVES[b[0] as usize % ADJECTIVES.len()];
        let n = NOUNS[b[1] as usize % NOUNS.len()];
        let name = if attempt < 8 {
            format!("{a}_{n}")
        } else {
            format!("{a}_{n}{}", u16::from_le_bytes([b[2], b[3]]))
        };
        if !taken(&name) {
            return Ok(name);
        }
    }
    Err(std::io::Error::other("no free random name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_and_differ() -> std::io::Result<()> {
        let (a, b) = (fresh()?, fresh()?);
        assert!(is_full(&a) && is_full(&b));
        assert_ne!(a, b);
        assert!(!is_full(&a[..SHORT]));
        Ok(())
    }

    #[test]
    fn names_follow_dockers_rule() {
        for ok in ["web", "a", "web-1", "my_box.2", "A9"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-web", ".x", "_x", "a b", "a/b", "é", "x\0"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(NAME_MAX + 1)).is_err());
    }

    #[test]
    fn random_names_avoid_taken_ones() -> std::io::Result<()> {
        let n = random_name(|_| false)?;
        assert!(check_name(&n).is_ok() && n.contains('_'));
        let n = random_name(|s| !s.chars().any(|c| c.is_ascii_digit()))?;
        assert!(n.chars().any(|c| c.is_ascii_digit()));
        Ok(())
    }
}
