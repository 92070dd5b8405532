//! twinbox's side of the benchmark: the subjects bench drives. Each knows
//! how to start one box of its kind; bench knows only commands and markers.

pub mod container;
pub mod floor;
pub mod lab;
pub mod vm;

/// The argv that runs the isolation probe (at /probe in the benchmark's
/// image) with `args`.
pub fn probe_argv<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec!["/probe"];
    argv.extend_from_slice(args);
    argv
}

/// The first line a command prints (a `--version`, for the report).
pub fn first_line(cmd: &mut std::process::Command) -> Option<String> {
    let out = cmd.output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_string)
}
