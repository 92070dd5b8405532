//! The records the outer machine's agent writes on its second serial port,
//! one JSON object a line behind a fixed prefix, and the host's parser.
//!
//! The port is a byte stream that QEMU appends to a file; the host reads it
//! after QEMU has exited. It treats it as untrusted: lines without the
//! prefix are ignored (a stray kernel message, line noise), a line longer
//! than [`MAX_LINE`] or a stream longer than [`MAX_STREAM`] is refused, and
//! a record that does not parse is an error naming its line, never a panic.

use serde::{Deserialize, Serialize};

use crate::StepResult;

/// What starts every record line.
pub const PREFIX: &str = "TWINBOX-NESTED ";
/// The most of one stream (stdout or stderr) of a step that comes back.
pub const MAX_OUTPUT: usize = 4 << 20;
/// The longest record line the host accepts.
pub const MAX_LINE: usize = 3 * MAX_OUTPUT;
/// The most the host reads of the whole stream.
pub const MAX_STREAM: u64 = 256 << 20;

/// One record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The agent runs and `/dev/kvm` is up.
    Ready {
        /// Kernel uptime at the agent's start, in seconds.
        uptime_s: f64,
        /// Loading the modules took this long, in seconds.
        modules_s: f64,
        /// The VMM's view of `/dev/kvm`.
        hypervisor: String,
    },
    /// One step ended.
    Step(StepResult),
    /// A fetched file.
    File {
        /// Its path in the outer machine.
        path: String,
        /// Its contents (lossy UTF-8), or why it could not be read.
        data: Result<String, String>,
    },
    /// The outer kernel's log.
    Log {
        /// Its text.
        text: String,
    },
    /// The agent could not go on (it powers off next).
    Fatal {
        /// Why.
        error: String,
    },
    /// The last record.
    Done,
}

/// Errors of reading the stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A record line longer than [`MAX_LINE`].
    #[error("record line {line} is longer than {MAX_LINE} bytes")]
    LineTooLong {
        /// The line number (1-based).
        line: usize,
    },
    /// The stream is longer than [`MAX_STREAM`].
    #[error("the result stream is longer than {MAX_STREAM} bytes")]
    StreamTooLong,
    /// A record line that is not a record.
    #[error("record line {line} is malformed")]
    Malformed {
        /// The line number (1-based).
        line: usize,
        /// The parser's complaint.
        source: serde_json::Error,
    },
}

/// The line the agent writes for `r`.
pub fn encode(r: &Record) -> String {
    // A record of owned strings and numbers always serializes.
    let json = serde_json::to_string(r)
        .unwrap_or_else(|e| format!(r#"{{"kind":"fatal","error":"record not encodable: {e}"}}"#));
    format!("{PREFIX}{json}\n")
}

/// Parses the stream `data` into its records, in order.
pub fn decode(data: &[u8]) -> Result<Vec<Record>, Error> {
    if data.len() as u64 > MAX_STREAM {
        return Err(Error::StreamTooLong);
    }
    let mut out = Vec::new();
    for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Some(pos) = find(raw, PREFIX.as_bytes()) else {
            continue;
        };
        if raw.len() > MAX_LINE {
            return Err(Error::LineTooLong { line: i + 1 });
        }
        let json = &raw[pos + PREFIX.len()..];
        let rec = serde_json::from_slice(json).map_err(|source| Error::Malformed {
            line: i + 1,
            source,
        })?;
        out.push(rec);
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `bytes` as lossy UTF-8, cut to [`MAX_OUTPUT`] bytes; whether it was cut.
pub fn bounded(bytes: &[u8]) -> (String, bool) {
    let cut = bytes.len() > MAX_OUTPUT;
    let b = &bytes[..bytes.len().min(MAX_OUTPUT)];
    (String::from_utf8_lossy(b).into_owned(), cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> StepResult {
        StepResult {
            argv: vec!["echo".into(), "a\nb".into()],
            code: Some(3),
            signal: None,
            timed_out: false,
            error: None,
            stdout: "line one\nline \"two\"\r\n\u{1b}[0m".into(),
            stderr: String::new(),
            truncated: false,
            seconds: 1.5,
        }
    }

    #[test]
    fn records_round_trip_between_other_lines() -> Result<(), Error> {
        let recs = vec![
            Record::Ready {
                uptime_s: 4.2,
                modules_s: 1.0,
                hypervisor: "hardware KVM (AMD-V)".into(),
            },
            Record::Step(step()),
            Record::File {
                path: "/tmp/x".into(),
                data: Err("No such file".into()),
            },
            Record::Done,
        ];
        let mut stream = b"[   1.0] a kernel line\r\n".to_vec();
        for r in &recs {
            stream.extend_from_slice(encode(r).replace('\n', "\r\n").as_bytes());
            stream.extend_from_slice(b"noise without the prefix\n");
        }
        assert_eq!(decode(&stream)?, recs);
        Ok(())
    }

    #[test]
    fn garbage_is_an_error_or_ignored_never_a_panic() {
        assert!(decode(b"\xff\xfe random bytes\n\0\0\0").is_ok_and(|r| r.is_empty()));
        let bad = format!("{PREFIX}{{\"kind\":\"step\"}}\n");
        assert!(matches!(
            decode(bad.as_bytes()),
            Err(Error::Malformed { line: 1, .. })
        ));
        let unknown = format!("junk\n{PREFIX}{{\"kind\":\"reboot-the-host\"}}\n");
        assert!(matches!(
            decode(unknown.as_bytes()),
            Err(Error::Malformed { line: 2, .. })
        ));
        let long = format!("{PREFIX}{}\n", "x".repeat(MAX_LINE + 1));
        assert!(matches!(
            decode(long.as_bytes()),
            Err(Error::LineTooLong { line: 1 })
        ));
        // Every cut of a valid stream parses or fails cleanly.
        let full = encode(&Record::Step(step()));
        for n in 0..full.len() {
            let _ = decode(&full.as_bytes()[..n]);
        }
    }

    #[test]
    fn output_is_bounded() {
        let (s, cut) = bounded(&vec![b'a'; MAX_OUTPUT + 10]);
        assert!(cut);
        assert_eq!(s.len(), MAX_OUTPUT);
        let (s, cut) = bounded(b"ok\xff");
        assert!(!cut);
        assert_eq!(s, "ok\u{fffd}");
    }
}
