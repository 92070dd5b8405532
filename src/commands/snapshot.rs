//! `twinbox snapshot`: make, list and remove warm-start snapshots (the
//! cache of booted guests that `twinbox run --isolation vm` restores
//! instead of booting; see `snapshots.rs` and twinbox-vmm's `snapshot`).

use anyhow::{bail, Context, Result};
use twinbox_images::Store;

use crate::backends::vm::{make_snapshot, Made, VmBackend};
use crate::cli::{Isolation, RunArgs, SnapshotCommand};
use crate::{size, snapshots, workload};

/// Runs `twinbox snapshot ...`.
pub fn run(
    open_store: &dyn Fn() -> twinbox_images::store::Result<Store>,
    cmd: SnapshotCommand,
) -> Result<()> {
    match cmd {
        SnapshotCommand::Make {
            memory,
            cpus,
            image,
        } => make(&open_store()?, memory, cpus, image),
        SnapshotCommand::Ls { json } => {
            ls(json);
            Ok(())
        }
        SnapshotCommand::Rm { ids } => rm(&ids),
        SnapshotCommand::Prune => {
            let all = snapshots::list();
            let total: u64 = all.iter().map(|l| l.disk_bytes).sum();
            // The whole directory: entries and leftovers of killed makers.
            snapshots::remove(&snapshots::root())?;
            println!(
                "removed {} snapshot{} ({})",
                all.len(),
                if all.len() == 1 { "" } else { "s" },
                size::human(total)
            );
            Ok(())
        }
    }
}

fn make(store: &Store, memory: Option<String>, cpus: Option<String>, image: String) -> Result<()> {
    let args = RunArgs {
        isolation: Isolation::Vm,
        memory,
        cpus,
        workdir: None,
        user: None,
        pids_limit: None,
        userns: false,
        env: Vec::new(),
        timeout: None,
        dry_run: false,
        debug: false,
        cold: false,
        profile: None,
        detach: false,
        name: None,
        rm: false,
        interactive: false,
        tty: false,
        log_opt: Vec::new(),
        publish: Vec::new(),
        volume: Vec::new(),
        image,
        command: vec!["true".into()],
    };
    let w = workload::resolve(store, &args)?;
    let backend = VmBackend {
        debug: false,
        cold: false,
        profile: None,
        console: None,
        vsock: None,
        hold: false,
        volumes: Vec::new(),
        fs_dir: None,
    };
    let p = backend.prepare(&w)?;
    let Some(key) = p.key.clone() else {
        bail!("this VM cannot start warm (see the notice above)");
    };
    let dir = snapshots::entry(&key);
    if dir.is_dir() {
        println!("{} (already made)", key.hash());
        return Ok(());
    }
    let pb = super::spinner("snapshot");
    pb.set_message(format!("booting {} to its ready point", w.image));
    let made = make_snapshot(&p, &key, &w);
    pb.finish_and_clear();
    let (dir, boot_ms, save_ms) = match made? {
        Made::Saved(dir, boot_ms, save_ms) => (dir, boot_ms, save_ms),
        Made::Stopped(o) => bail!(
            "the guest stopped before it was ready for a snapshot: {:?}; last console output:\n{}",
            o.reason,
            o.console_tail
        ),
    };
    let listed = snapshots::list();
    let bytes = listed
        .iter()
        .find(|l| dir.ends_with(&l.id))
        .map_or(0, |l| l.disk_bytes);
    println!(
        "{}: booted in {:.1} s, saved in {:.0} ms, {} on disk",
        key.hash(),
        boot_ms / 1e3,
        save_ms,
        size::human(bytes)
    );
    Ok(())
}

fn ls(json: bool) {
    let all = snapshots::list();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into())
        );
        return;
    }
    println!(
        "{:<18} {:<24} {:>8} {:>5} {:>10} {:>9}  CREATED",
        "ID", "IMAGE", "MEMORY", "CPUS", "DISK", "SAVE"
    );
    for l in all {
        match &l.meta {
            Some(m) => println!(
                "{:<18} {:<24} {:>8} {:>5} {:>10} {:>7.0}ms  {}",
                l.id,
                m.image,
                size::human(m.memory),
                m.vcpus,
                size::human(l.disk_bytes),
                m.save_ms,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.created)
                )
            ),
            None => println!(
                "{:<18} {:<24} {:>8} {:>5} {:>10} {:>9}  ?",
                l.id,
                "?",
                "?",
                "?",
                size::human(l.disk_bytes),
                "?"
            ),
        }
    }
}

fn rm(ids: &[String]) -> Result<()> {
    let all = snapshots::list();
    for id in ids {
        let found: Vec<_> = all
            .iter()
            .filter(|l| l.id.starts_with(id.as_str()))
            .collect();
        match found.as_slice() {
            [one] => {
                snapshots::remove(&snapshots::root().join(&one.id))
                    .with_context(|| format!("removing snapshot {}", one.id))?;
                println!("{}", one.id);
            }
            [] => bail!("no snapshot {id:?} (see `twinbox snapshot ls`)"),
            _ => bail!(
                "{id:?} names {} snapshots: give more of the id",
                found.len()
            ),
        }
    }
    Ok(())
}
