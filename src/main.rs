//! The `twinbox` command: parses the command line, opens the image store and
//! hands each command to its module. Exit codes follow Docker: 0 ok, 125 for
//! twinbox's own errors (including a bad command line), otherwise the
//! workload's own code.

mod backends;
mod boxes;
mod boxfs;
mod cli;
mod commands;
mod host;
mod nested;
mod runtime;
mod size;
mod snapshots;
mod subjects;
mod supervisor;
mod terminal;
mod volumes;
mod workload;

use std::process::ExitCode;

use clap::Parser;
use twinbox_images::Store;

use cli::{Cli, Command};

/// twinbox's own failures.
const EXIT_TWINBOX: u8 = 125;

fn main() -> ExitCode {
    // Engines exec their OCI runtime by path: a link named
    // `twinbox-runtime` to this binary is that runtime.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0)
        .file_name()
        .is_some_and(|n| n == runtime::NAME)
    {
        return runtime::main();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_TWINBOX } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("twinbox: {e:#}");
            ExitCode::from(EXIT_TWINBOX)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let open_store = || Store::open(&Store::default_home());
    match cli.command {
        Command::Image(cmd) => commands::image::run(&open_store()?, cmd).map(|()| 0),
        Command::Run(args) => commands::run::run(&open_store()?, &args),
        Command::Doctor => Ok(if commands::doctor::run(&open_store()?) {
            0
        } else {
            1
        }),
        Command::Kernel(cmd) => commands::kernel::run(cmd).map(|()| 0),
        Command::Vmm(cmd) => commands::vmm::run(cmd),
        Command::Bench(args) => commands::bench::run(args).map(|()| 0),
        Command::Nested(cmd) => commands::nested::run(cmd),
        Command::Snapshot(cmd) => commands::snapshot::run(&open_store, cmd).map(|()| 0),
        Command::Create(args) => commands::boxes::create_cmd(&open_store()?, &args),
        Command::Start { boxes } => commands::boxes::start(&open_store()?, &boxes),
        Command::Ps(args) => commands::boxes::ps(&open_store()?, &args),
        Command::Logs(args) => commands::boxes::logs(&open_store()?, &args),
        Command::Exec(args) => commands::boxes::exec(&open_store()?, &args),
        Command::Stop { time, boxes } => commands::boxes::stop(&open_store()?, time, &boxes),
        Command::Kill { signal, boxes } => commands::boxes::kill(&open_store()?, &signal, &boxes),
        Command::Rm { force, boxes, .. } => commands::boxes::rm(&open_store()?, force, &boxes),
        Command::Wait { boxes } => commands::boxes::wait(&open_store()?, &boxes),
        Command::Inspect { boxes } => commands::boxes::inspect(&open_store()?, &boxes),
        Command::Port { name, port } => {
            commands::boxes::port(&open_store()?, &name, port.as_deref())
        }
        Command::Volume(cmd) => commands::volume::run(&open_store()?, cmd),
        Command::Cp { src, dst } => commands::cp::run(&open_store()?, &src, &dst),
        Command::Supervise { id, ready_fd } => {
            supervisor::run(&Store::default_home(), &id, ready_fd)
        }
    }
}
