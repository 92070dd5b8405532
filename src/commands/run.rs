//! `twinbox run`: resolve and validate the workload, then hand it to its
//! backend.

use anyhow::Result;
use twinbox_images::Store;

use crate::backends::container::ContainerBackend;
use crate::backends::vm::VmBackend;
use crate::backends::Backend;
use crate::cli::{Isolation, RunArgs};
use crate::workload;

/// Runs `twinbox run`; returns the workload's exit code.
pub fn run(store: &Store, args: &RunArgs) -> Result<u8> {
    // A box that lives: detached, named, or with a terminal; a VM with
    // stdin, which only its guest agent can pass, or with volumes, whose
    // file servers its supervisor runs; a box with published ports, which
    // its supervisor serves.
    let vm = args.isolation == Isolation::Vm;
    let vm_stdin = args.interactive && vm;
    let vm_volumes = vm && !args.volume.is_empty();
    if args.detach
        || args.name.is_some()
        || args.tty
        || vm_stdin
        || vm_volumes
        || !args.publish.is_empty()
    {
        return crate::commands::boxes::run(store, args);
    }
    let w = workload::resolve(store, args)?;
    let volumes = crate::volumes::parse_all(&args.volume)?;
    crate::volumes::check_host(&volumes)?;
    if args.profile.is_some() && w.isolation != Isolation::Vm {
        anyhow::bail!("--profile profiles a guest: it needs --isolation vm");
    }
    if args.dry_run {
        println!("{}", serde_json::to_string_pretty(&w)?);
        return Ok(0);
    }
    match w.isolation {
        Isolation::Vm => {
            let code = VmBackend {
                debug: args.debug,
                cold: args.cold,
                profile: args.profile.clone(),
                console: None,
                vsock: None,
                hold: false,
                volumes: Vec::new(),
                fs_dir: None,
            }
            .run(&w)?;
            Ok(code as u8)
        }
        Isolation::Container => {
            let b = ContainerBackend {
                scratch: store.home().join("run"),
                user_namespace: args.userns,
                binds: crate::volumes::binds(store.home(), &volumes)?,
            };
            Ok((b.run(&w)? & 0xff) as u8)
        }
    }
}
