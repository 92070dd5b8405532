//! Memory sizes as people write them: `512m`, `1g`, `1.5GiB`, `268435456`.
//!
//! Docker's units: a number, optionally with a fraction, then `b`, `k`, `m`,
//! `g` or `t` (binary multiples), optionally followed by `b` or `ib`.

/// Errors of size parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Not a number with a known unit.
    #[error(
        "invalid size {0:?}: want a number with an optional unit b, k, m, g or t (e.g. 512m, 1.5g)"
    )]
    Invalid(String),
    /// Too large to represent.
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Parses a size into bytes.
pub fn parse(s: &str) -> Result<u64, Error> {
    let bad = || Error::Invalid(s.chars().take(64).collect());
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(unit);
    let shift = match unit {
        "" | "b" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
    {
        return Err(bad());
    }
    let int: u64 = int.parse().map_err(|_| Error::Overflow(s.into()))?;
    let whole = int
        .checked_shl(shift)
        .filter(|v| v >> shift == int)
        .ok_or_else(|| Error::Overflow(s.into()))?;
    let frac_bytes = if frac.is_empty() {
        0
    } else {
        let f: u128 = frac.parse().map_err(|_| bad())?;
        ((f << shift) / 10u128.pow(frac.len() as u32)) as u64
    };
    whole
        .checked_add(frac_bytes)
        .ok_or_else(|| Error::Overflow(s.into()))
}

/// Formats bytes for people: `512 MiB`, `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_units() {
        assert_eq!(parse("512m"), Ok(512 << 20));
        assert_eq!(parse("1G"), Ok(1 << 30));
        assert_eq!(parse("1.5g"), Ok(3 << 29));
        assert_eq!(parse("64MiB"), Ok(64 << 20));
        assert_eq!(parse("100kb"), Ok(100 << 10));
        assert_eq!(parse("4096"), Ok(4096));
        assert_eq!(parse("10b"), Ok(10));
    }

    #[test]
    fn refuses_junk_and_overflow() {
        for bad in ["", "m", "-1m", "1x", "1.2.3g", "abc", "1 g g", "1e9", ".5g"] {
            assert!(matches!(parse(bad), Err(Error::Invalid(_))), "{bad:?}");
        }
        assert!(matches!(
            parse("99999999999999999999t"),
            Err(Error::Overflow(_))
        ));
        assert!(matches!(parse("20000000t"), Err(Error::Overflow(_))));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512 << 20), "512 MiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }
}
