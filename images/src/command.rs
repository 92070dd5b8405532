//! Running the host tools the recipes need (tar, make, dpkg-deb, apt-get,
//! mkfs.ext4), with errors that say which command failed and what it printed.

use std::process::{Command, Output};

/// Errors of running a host command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program could not be started (usually: not installed).
    #[error("cannot run {program} (is it installed?)")]
    Spawn {
        /// The program.
        program: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("{command} failed ({status}):\n{tail}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines it printed.
        tail: String,
    },
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, capturing its output; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output, Error> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        program: cmd.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    if !out.status.success() {
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        return Err(Error::Failed {
            command: describe(cmd),
            status: out.status,
            tail: tail(&text, 30),
        });
    }
    Ok(out)
}

/// Runs `cmd` and returns its standard output as text, trimmed.
pub fn stdout(cmd: &mut Command) -> Result<String, Error> {
    Ok(String::from_utf8_lossy(&run(cmd)?.stdout)
        .trim()
        .to_string())
}

/// The error for a command that streamed its output and failed.
pub fn failed(cmd: &Command, status: std::process::ExitStatus, log: &str) -> Error {
    Error::Failed {
        command: describe(cmd),
        status,
        tail: tail(log, 40),
    }
}
