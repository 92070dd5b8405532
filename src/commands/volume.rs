//! `twinbox volume create|ls|inspect|rm|prune`, Docker's names and
//! meanings, over the volume store ([`crate::volumes::store`]). A volume
//! a box uses (running or not) is never removed; the boxes are named.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Result};
use twinbox_images::Store;

use crate::boxes::store::Boxes;
use crate::cli::VolumeCommand;
use crate::volumes::store::{self, Volumes};
use crate::volumes::users;

/// Runs a `volume` subcommand; returns the exit code.
pub fn run(store: &Store, cmd: VolumeCommand) -> Result<u8> {
    let v = Volumes::open(store.home())?;
    match cmd {
        VolumeCommand::Create { name } => {
            let name = match name {
                Some(n) => n,
                None => crate::boxes::id::fresh()?,
            };
            let _l = v.lock()?;
            v.ensure(&name)?;
            println!("{name}");
            Ok(0)
        }
        VolumeCommand::Ls { quiet } => {
            let all = v.list()?;
            let mut out = std::io::stdout().lock();
            if !quiet {
                writeln!(out, "DRIVER    VOLUME NAME")?;
            }
            for m in all {
                if quiet {
                    writeln!(out, "{}", m.name)?;
                } else {
                    writeln!(out, "local     {}", m.name)?;
                }
            }
            Ok(0)
        }
        VolumeCommand::Inspect { names } => {
            let mut list = Vec::new();
            let mut code = 0;
            for n in &names {
                match v.get(n) {
                    Ok(m) => list.push(serde_json::json!({
                        "CreatedAt": m.created_at, "Driver": "local", "Labels": {},
                        "Mountpoint": v.data(&m.name), "Name": m.name,
                        "Options": {}, "Scope": "local",
                    })),
                    Err(e) => {
                        eprintln!("twinbox: {e}");
                        code = 1;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(code)
        }
        VolumeCommand::Rm { force, names } => {
            let boxes = Boxes::open(store.home())?;
            let _l = v.lock()?;
            let all = boxes.list()?;
            let mut code = 0;
            for n in &names {
                let r = (|| -> Result<()> {
                    let using = users(&all, n);
                    if !using.is_empty() {
                        let list: Vec<String> = using
                            .iter()
                            .map(|r| format!("{} ({})", r.name, r.short_id()))
                            .collect();
                        bail!(
                            "remove {n}: volume is in use by box(es) {}; remove them first",
                            list.join(", ")
                        );
                    }
                    match v.remove(n) {
                        Err(store::Error::NotFound(_)) if force => Ok(()),
                        r => r.map(|_| ()).map_err(Into::into),
                    }
                })();
                match r {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("twinbox: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        VolumeCommand::Prune { force } => {
            if !force && !confirm()? {
                return Ok(0);
            }
            let boxes = Boxes::open(store.home())?;
            let _l = v.lock()?;
            let all = boxes.list()?;
            let mut total = 0u64;
            let mut removed = Vec::new();
            for m in v.list()? {
                if users(&all, &m.name).is_empty() {
                    total += v.remove(&m.name)?;
                    removed.push(m.name);
                }
            }
            let mut out = std::io::stdout().lock();
            if !removed.is_empty() {
                writeln!(out, "Deleted Volumes:")?;
                for n in &removed {
                    writeln!(out, "{n}")?;
                }
                writeln!(out)?;
            }
            writeln!(out, "Total reclaimed space: {}", crate::size::human(total))?;
            Ok(0)
        }
    }
}

/// Docker's prompt; without a terminal on stdin the answer is no.
fn confirm() -> Result<bool> {
    eprint!(
        "WARNING! This will remove all volumes not used by at least one box.\nAre you sure you want to continue? [y/N] "
    );
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        eprintln!("\nnot a terminal: use -f");
        return Ok(false);
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}
