//! `twinbox nested`: twinbox on hardware KVM (AMD SVM) nested under QEMU's
//! software CPU. `build` prepares the outer machine; `run` boots it, runs
//! the steps and prints what each did; `agent` is the outer machine's init.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::{NestedCommand, NestedRunArgs};
use crate::nested::{self, agent, machine, outer, Plan, Put, Step};

/// Runs a `twinbox nested` command; returns the exit code.
pub fn run(cmd: NestedCommand) -> Result<u8> {
    match cmd {
        NestedCommand::Build => {
            let pb = super::spinner("nested build");
            pb.set_message("the outer machine (Debian's cloud kernel, KVM modules, busybox)");
            let m = machine::ensure();
            pb.finish_and_clear();
            let m = m?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "dir": m.dir,
                    "machine": m.info,
                }))?
            );
            Ok(0)
        }
        NestedCommand::Agent => agent::run().map(|()| 0),
        NestedCommand::Run(args) => run_plan(&args),
    }
}

fn parse_put(s: &str) -> Put {
    match s.split_once(':') {
        Some((h, g)) => Put {
            host: PathBuf::from(h),
            guest: Some(g.to_string()),
        },
        None => Put {
            host: PathBuf::from(s),
            guest: None,
        },
    }
}

fn parse_env(s: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.into(), v.into())),
        _ => bail!("-e {s}: want KEY=VALUE"),
    }
}

fn run_plan(args: &NestedRunArgs) -> Result<u8> {
    let mut plan = match &args.plan {
        Some(p) => serde_json::from_slice::<Plan>(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing the plan {}", p.display()))?,
        None => Plan::default(),
    };
    plan.put.extend(args.put.iter().map(|p| parse_put(p)));
    for e in &args.env {
        plan.env.push(parse_env(e)?);
    }
    if !args.command.is_empty() {
        plan.steps.push(Step::new(args.command.iter().cloned()));
    }
    if plan.steps.is_empty() {
        bail!("nothing to run: give a command or a --plan with steps");
    }
    let memory = crate::size::parse(&args.memory)?;
    let opts = outer::Options {
        smp: args.smp,
        memory_mib: memory >> 20,
        timeout: humantime::parse_duration(&args.timeout)
            .with_context(|| format!("--timeout {}", args.timeout))?,
    };
    let pb = super::count_bar("nested");
    pb.set_length(plan.steps.len() as u64);
    pb.set_message("booting the outer machine (QEMU TCG, AMD SVM)");
    let report = outer::run(&plan, &opts, &|n| {
        pb.set_position(n as u64);
        pb.set_message(format!("{n} of {} steps done", plan.steps.len()));
    });
    pb.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(exit_code(&report))
}

/// One step: its own code, as `docker run` gives (128+N for signal N, 125
/// when it could not run or was killed at its timeout). Several: 0 when
/// every one exited 0, else 1.
fn exit_code(r: &nested::Report) -> u8 {
    match r.steps.as_slice() {
        [s] => match (s.code, s.signal, s.timed_out || s.error.is_some()) {
            (_, _, true) => 125,
            (Some(c), _, _) => u8::try_from(c).unwrap_or(125),
            (None, Some(sig), _) => u8::try_from(128 + sig).unwrap_or(125),
            _ => 125,
        },
        _ => u8::from(r.first_failure().is_some()),
    }
}

fn print_report(r: &nested::Report) {
    for s in &r.steps {
        print!("{}", s.stdout);
        eprint!("{}", s.stderr);
    }
    eprintln!(
        "\nouter machine: {} ({}); kernel up at {:.1} s, KVM modules loaded in {:.1} s; /dev/kvm: {}; QEMU ran {:.1} s",
        r.machine.as_ref().map_or("?", |m| m.kernel.as_str()),
        r.machine.as_ref().map_or("?", |m| m.key.as_str()),
        r.kernel_boot_s,
        r.modules_s,
        r.hypervisor,
        r.wall_s,
    );
    for why in &r.restarts {
        eprintln!("  warning: {why}; a new outer machine ran the steps not yet reported");
    }
    for s in &r.steps {
        let how = match (s.code, s.signal, s.timed_out, &s.error) {
            (_, _, _, Some(e)) => e.clone(),
            (_, _, true, _) => "killed at its timeout".into(),
            (Some(c), _, _, _) => format!("exit {c}"),
            (_, Some(sig), _, _) => format!("signal {sig}"),
            _ => "?".into(),
        };
        eprintln!("  {:>8.2} s  {how:<12} {}", s.seconds, s.argv.join(" "));
    }
}
