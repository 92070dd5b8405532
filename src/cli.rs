//! The command line, Docker-like where Docker has a convention.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Run one workload in a microVM or a container, and measure the difference.
#[derive(Debug, Parser)]
#[command(name = "twinbox", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 ok; 125 twinbox's own error; otherwise the workload's exit code."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// twinbox's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Run a command in a new box.
    Run(RunArgs),
    /// Check what this host offers and what is missing, with the fix.
    Doctor,
    /// Build or fetch the guest kernel.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Drive the VMM directly: boot a kernel, or make the null guest.
    #[command(subcommand)]
    Vmm(VmmCommand),
    /// Measure VM and container side by side: startup, memory, isolation
    /// and workload speed, with the anchors found on this machine; writes
    /// results.json, report.md and report.html.
    Bench(BenchArgs),
    /// Run twinbox on hardware KVM nested under QEMU's software CPU: an
    /// outer machine with AMD SVM whose `kvm_amd` is the hardware path.
    #[command(subcommand)]
    Nested(NestedCommand),
    /// Warm-start snapshots of booted VMs: make, list, remove.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Create a box without starting it (`start` starts it).
    Create(RunArgs),
    /// Start created or exited boxes, detached.
    Start {
        /// Boxes (id, id prefix or name).
        #[arg(required = true)]
        boxes: Vec<String>,
    },
    /// List boxes.
    #[command(visible_alias = "list")]
    Ps(PsArgs),
    /// Print a box's output (kept after it exits).
    Logs(LogsArgs),
    /// Run a command in a running box.
    Exec(ExecArgs),
    /// Stop running boxes: SIGTERM, then SIGKILL after the grace period.
    Stop {
        /// Seconds to wait before SIGKILL.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
        /// Boxes.
        #[arg(required = true)]
        boxes: Vec<String>,
    },
    /// Send a signal to running boxes' first processes.
    Kill {
        /// The signal (name or number).
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// Boxes.
        #[arg(required = true)]
        boxes: Vec<String>,
    },
    /// Remove boxes.
    Rm {
        /// Stop (kill) running ones first.
        #[arg(short, long)]
        force: bool,
        /// Also remove the box's anonymous volumes. twinbox has none (a
        /// `-v BOX_PATH` alone is refused), and named volumes are kept,
        /// as Docker keeps them: accepted, nothing more is removed.
        #[arg(short = 'v', long)]
        volumes: bool,
        /// Boxes.
        #[arg(required = true)]
        boxes: Vec<String>,
    },
    /// Wait for boxes to end and print their exit codes.
    Wait {
        /// Boxes.
        #[arg(required = true)]
        boxes: Vec<String>,
    },
    /// Print boxes' records as JSON.
    Inspect {
        /// Boxes.
        #[arg(required = true)]
        boxes: Vec<String>,
    },
    /// List a box's published ports, or the host address of one of them.
    Port {
        /// The box.
        #[arg(value_name = "BOX")]
        name: String,
        /// One box port: BOX_PORT[/tcp].
        #[arg(value_name = "PRIVATE_PORT[/PROTO]")]
        port: Option<String>,
    },
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Copy files between a running box (container or VM) and the host:
    /// `cp BOX:PATH HOST_PATH` or `cp HOST_PATH BOX:PATH` (files and
    /// directories, `SRC/.` for a directory's contents, modes and times
    /// kept; box paths resolved inside the box).
    Cp {
        /// The source: BOX:PATH or a host path.
        src: String,
        /// The destination: BOX:PATH or a host path.
        dst: String,
    },
    /// A box's supervisor (started by run -d and start).
    #[command(hide = true)]
    Supervise {
        /// The box's id.
        id: String,
        /// Where to say that the box started.
        #[arg(long)]
        ready_fd: Option<i32>,
    },
}

/// `twinbox volume ...`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Make a named volume (a random 64-hex name if none); prints its name.
    Create {
        /// Its name ([a-zA-Z0-9][a-zA-Z0-9_.-]+).
        name: Option<String>,
    },
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Print volumes' details as a JSON array.
    Inspect {
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes; one that a box uses (running or not) is refused.
    #[command(visible_alias = "remove")]
    Rm {
        /// A missing volume is not an error.
        #[arg(short, long)]
        force: bool,
        /// Volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove every volume that no box uses (all of them, named ones
    /// included, as Docker did before 23.0), and print the space reclaimed.
    Prune {
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

/// `twinbox ps`
#[derive(Debug, Args)]
pub struct PsArgs {
    /// All boxes (default: running ones).
    #[arg(short, long)]
    pub all: bool,
    /// Only ids.
    #[arg(short, long)]
    pub quiet: bool,
    /// `json`: one JSON object per line.
    #[arg(long, value_name = "FORMAT")]
    pub format: Option<String>,
}

/// `twinbox logs`
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing until the box stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(short = 'n', long, value_name = "N")]
    pub tail: Option<usize>,
    /// Prefix each line with its time.
    #[arg(short, long)]
    pub timestamps: bool,
    /// The box.
    pub name: String,
}

/// `twinbox exec`
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Pass stdin.
    #[arg(short, long)]
    pub interactive: bool,
    /// A terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Start it and return.
    #[arg(short, long)]
    pub detach: bool,
    /// Environment.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User.
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// The box.
    pub name: String,
    /// The command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// `twinbox snapshot ...`
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Boot IMAGE's VM to the point where it is ready for a workload and
    /// save it, so that `twinbox run --isolation vm IMAGE ...` with the same
    /// memory and CPUs starts warm.
    Make {
        /// Guest memory (e.g. 256m, 1g), as `run -m` takes it.
        #[arg(short, long, value_name = "SIZE")]
        memory: Option<String>,
        /// vCPUs, as `run --cpus` takes them.
        #[arg(long, value_name = "N")]
        cpus: Option<String>,
        /// The image.
        image: String,
    },
    /// List snapshots: size on disk and what each was made from.
    #[command(visible_alias = "list")]
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots by id (or a unique prefix of one).
    #[command(visible_alias = "remove")]
    Rm {
        /// Snapshot ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove every snapshot (and what killed makers left).
    Prune,
}

/// `twinbox nested ...`
#[derive(Debug, Subcommand)]
pub enum NestedCommand {
    /// Build (or find in the cache) the outer machine and print its record.
    Build,
    /// Boot the outer machine, run commands in it one after another, and
    /// print what each did (exit code, output, seconds). Exits with the
    /// command's code when there is one step; with several, 0 when every
    /// step exited 0, else 1.
    Run(NestedRunArgs),
    /// The outer machine's init (PID 1 only; it powers off at the end).
    #[command(hide = true)]
    Agent,
}

/// `twinbox nested run`
#[derive(Debug, Args)]
pub struct NestedRunArgs {
    /// A plan (JSON: put, env, steps, fetch; see docs/ARCHITECTURE.md);
    /// the trailing command, if any, runs after its steps.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Carry a host file or directory in, at its own path or at GUEST.
    #[arg(long, value_name = "HOST[:GUEST]")]
    pub put: Vec<String>,
    /// Environment for every step.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The outer machine's vCPUs.
    #[arg(long, default_value_t = 2)]
    pub smp: u32,
    /// The outer machine's memory.
    #[arg(short, long, default_value = "6g", value_name = "SIZE")]
    pub memory: String,
    /// Kill the outer machine after this long.
    #[arg(long, default_value = "20m", value_name = "DURATION")]
    pub timeout: String,
    /// Print the whole report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// A command to run (after the plan's steps).
    #[arg(trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The scenarios of `twinbox bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Start to exit of /bin/true, and the monitors' floor.
    Startup,
    /// Host memory per idle box, and density.
    Memory,
    /// What each box sees and may do; containment; attack surface.
    Isolation,
    /// Micro-workloads relative to native.
    Speed,
}

/// `twinbox bench [OPTIONS] [floor|container]`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// A focused benchmark instead of the full run.
    #[command(subcommand)]
    pub cmd: Option<BenchCommand>,
    /// Fewer runs: under a minute on a 2-core machine.
    #[arg(long)]
    pub quick: bool,
    /// Only these scenarios (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub scenarios: Vec<Scenario>,
    /// Measured startup runs per subject (default 60; --quick 5).
    #[arg(long)]
    pub runs: Option<usize>,
    /// Where results go (default: results/<date>-<host>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A firecracker binary to include in the monitor floor.
    #[arg(long, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
}

/// `twinbox bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The monitors' floor: the null guest in twinbox's VMM, QEMU microvm and
    /// Firecracker, interleaved; time to marker, time to exit.
    Floor {
        /// Measured runs per subject.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Warm-up runs per subject, discarded.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Traced runs per subject after the timed ones, for peak RSS
        /// (the subject's own high-water mark, read at its exit stop).
        #[arg(long, default_value_t = 5)]
        rss_runs: usize,
        /// A firecracker binary to include.
        #[arg(long, value_name = "PATH")]
        firecracker: Option<PathBuf>,
        /// Also write every sample as JSON here.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The container launchers: busybox /bin/true in twinbox's launcher
    /// (all namespaces, cgroup limits, seccomp, caps), unshare (the
    /// namespace floor), crun and runc, interleaved; plus host memory per
    /// idle box and where twinbox's start time goes.
    Container(ContainerBenchArgs),
    /// A Linux guest's boot: `twinbox run --isolation vm IMAGE /bin/true`
    /// a few times, with where the time goes (VMM setup, kernel, init,
    /// workload) from init's boot-timer marks; a pmem root and an
    /// initramfs root alternate when the kernel can take both.
    Boot(BootBenchArgs),
    /// Boxes that live: exec latency into a running box (container, VM,
    /// crun exec, docker exec) and host memory per idle detached box, 10
    /// at once, beside crun and Docker.
    Lifecycle(LifecycleBenchArgs),
    /// A web server behind a published port: busybox httpd natively, in
    /// twinbox's container and VM behind -p, and in Docker behind -p,
    /// driven by wrk from the host; requests/s, p50 and p99.
    Web(WebBenchArgs),
}

/// `twinbox bench web`
#[derive(Debug, Args)]
pub struct WebBenchArgs {
    /// wrk threads.
    #[arg(short = 't', long, default_value_t = 2)]
    pub threads: usize,
    /// wrk connections kept open.
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Each measured wrk run (whole seconds, as wrk takes them).
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Each wrk run against the VM; 0 leaves the VM out.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub vm_duration: std::time::Duration,
    /// wrk connections against the VM (a guest on an emulating hypervisor
    /// serves a few requests a second; more connections only queue there).
    #[arg(long, default_value_t = 2)]
    pub vm_connections: usize,
    /// An unmeasured wrk run before each measured one; 0 for none.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: std::time::Duration,
    /// wrk's request timeout (a request slower than this is an error).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Interleaved rounds of native, the container and Docker.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Leave Docker out even where its daemon answers.
    #[arg(long)]
    pub no_docker: bool,
    /// Also write every figure as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `twinbox bench lifecycle`
#[derive(Debug, Args)]
pub struct LifecycleBenchArgs {
    /// Measured execs into the container and the crun and Docker boxes.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Measured execs into the VM (slow on an emulating hypervisor).
    #[arg(long, default_value_t = 10)]
    pub vm_runs: usize,
    /// Boxes alive at once for the memory figures.
    #[arg(long, default_value_t = 10)]
    pub boxes: usize,
    /// Also write every figure as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// A Linux guest's boot: see `twinbox bench boot`.
#[derive(Debug, Args)]
pub struct BootBenchArgs {
    /// Runs per cold row (a boot each).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Runs of the warm row (each restored from the snapshot made first).
    #[arg(long, default_value_t = 20)]
    pub warm_runs: usize,
    /// Runs of each python row (`python3 -c 'print(1)'` from the
    /// `debian-python` image, cold and warm) when that image is in the
    /// store; 0 leaves them out.
    #[arg(long, default_value_t = 3)]
    pub python_runs: usize,
    /// Leave out the rows beside the VMs (the container, the VMM's floor);
    /// the nested run does (its outer machine has no cgroups).
    #[arg(long)]
    pub no_beside: bool,
    /// Which root: pmem, initramfs or both.
    #[arg(long, default_value = "both")]
    pub root: String,
    /// Guest memory.
    #[arg(short, long, default_value = "256m")]
    pub memory: String,
    /// The image (busybox from `twinbox image build-base`).
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// Also write every run as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Leave out the same guest under QEMU's TCG (a software x86, no KVM),
    /// which runs where qemu-system-x86_64 is installed.
    #[arg(long)]
    pub no_qemu: bool,
    /// Leave out the same runs on hardware KVM nested under QEMU's TCG
    /// (`twinbox nested`: AMD SVM in an outer machine), which run where
    /// qemu-system-x86_64 is installed.
    #[arg(long)]
    pub no_nested: bool,
}

/// The container launchers side by side: see `twinbox bench container`.
#[derive(Debug, Args)]
pub struct ContainerBenchArgs {
    /// Measured runs per subject.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Warm-up runs per subject, discarded.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Idle milliseconds before each run, so the previous box's
    /// asynchronous teardown (network namespace, RCU) does not land on the
    /// next one.
    #[arg(long, default_value_t = 20)]
    pub gap_ms: u64,
    /// The image (busybox from `twinbox image build-base`).
    #[arg(long, default_value = "busybox")]
    pub image: String,
    /// Also write every sample as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `twinbox vmm ...`
#[derive(Debug, Subcommand)]
pub enum VmmCommand {
    /// Boot a kernel (ELF or bzImage) in twinbox's VMM; the console goes to
    /// stdout, a report of the run to stderr; exits with the guest's status.
    Boot {
        /// The kernel; `null` boots the built-in null guest.
        kernel: String,
        /// Initial ramdisk (repeat to concatenate several archives).
        #[arg(long)]
        initrd: Vec<PathBuf>,
        /// A disk image the guest sees as /dev/pmem0 (size a multiple of 2 MiB;
        /// never written).
        #[arg(long, value_name = "FILE")]
        pmem: Option<PathBuf>,
        /// Kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Guest memory.
        #[arg(short, long, default_value = "128m", value_name = "SIZE")]
        memory: String,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Stop the VM after this long.
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        /// Print the report as JSON on stderr.
        #[arg(long)]
        json: bool,
        /// Run without the seccomp filters (to debug the VMM itself).
        #[arg(long)]
        no_seccomp: bool,
        /// Give the guest a legacy i8254 PIT (implies `--irqchip full`).
        #[arg(long)]
        pit: bool,
        /// Interrupt controllers: `split` (LAPICs in KVM, the I/O APIC in
        /// the VMM, no PIC) or `full` (all in KVM, as Firecracker).
        #[arg(long, default_value = "split")]
        irqchip: twinbox_vmm::config::Irqchip,
    },
    /// List the syscalls each VMM thread may make (its seccomp allow-list).
    Seccomp,
    /// Write the null guest (a tiny 64-bit ELF that prints a marker and exits).
    NullGuest {
        /// Where to write it.
        out: PathBuf,
        /// Its exit status.
        #[arg(long, default_value_t = 0)]
        exit: u32,
        /// A guest that spins forever instead.
        #[arg(long, conflicts_with_all = ["exit", "idle"])]
        spin: bool,
        /// A guest that halts forever with interrupts off instead (an idle
        /// VM that costs no CPU, for memory measurements).
        #[arg(long, conflicts_with = "exit")]
        idle: bool,
    },
}

/// `twinbox image ...`
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image from a `docker save` tarball or an OCI image layout
    /// (a tar, optionally gzip/zstd, or a directory); prints its name.
    Import {
        /// The tarball or directory.
        source: PathBuf,
        /// Name to store it under (NAME[:TAG]); also picks one image from an
        /// input that holds several.
        #[arg(long)]
        name: Option<String>,
        /// Refuse images whose unpacked files exceed this size.
        #[arg(long, default_value = "64g", value_name = "SIZE")]
        max_size: String,
    },
    /// List images.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove images.
    #[command(visible_alias = "remove")]
    Rm {
        /// Images to remove.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show an image's record as JSON.
    Inspect {
        /// The image.
        name: String,
    },
    /// Build the `busybox` base image from Debian's busybox-static package.
    BuildBase {
        /// Use this busybox-static .deb instead of `apt-get download`.
        #[arg(long)]
        deb: Option<PathBuf>,
    },
    /// Build the `debian-python` image (python3 from Debian's packages, with busybox).
    BuildPython {
        /// Use the .deb files in this directory instead of `apt-get download`.
        #[arg(long)]
        debs: Option<PathBuf>,
    },
}

/// `twinbox kernel ...`
#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Build the guest kernel from linux-source-6.1 and our config fragment
    /// (cached: a no-op when the inputs did not change).
    Build {
        /// Parallel compile jobs (default: the number of CPUs).
        #[arg(short, long)]
        jobs: Option<usize>,
    },
    /// Fetch Debian's prebuilt kernel as a fallback (extracted, not installed).
    FetchDebian,
    /// Show the kernel a VM would boot, as JSON.
    Show,
}

/// The kinds of box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// A microVM: its own kernel, on KVM (the safe default).
    Vm,
    /// A container: namespaces and cgroups on the host kernel.
    Container,
}

/// `twinbox run ...`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The kind of box.
    #[arg(long, value_enum, default_value = "vm")]
    pub isolation: Isolation,
    /// Memory limit (e.g. 256m, 1g).
    #[arg(short, long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPUs (a whole number for VMs; a fraction is allowed for containers).
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// Working directory inside the box (default: the image's, else /).
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User inside the box: uid[:gid] or name[:group] (default: the image's).
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,
    /// Most processes and threads alive at once in the box (containers).
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<u64>,
    /// Also a user namespace: root in the box is you outside (containers).
    #[arg(long)]
    pub userns: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to pass the host's).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Kill the box after this long (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Print the resolved workload as JSON instead of running it.
    #[arg(long)]
    pub dry_run: bool,
    /// Show the guest kernel's messages (VM mode).
    #[arg(long)]
    pub debug: bool,
    /// Boot the VM instead of restoring it from a snapshot, and take none
    /// (VM mode; warm start is the default).
    #[arg(long)]
    pub cold: bool,
    /// Profile the guest (VM mode): sample where each vCPU is every 10 ms
    /// and KVM's counters, and write a report naming the kernel functions
    /// (from the kernel's System.map) to FILE.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Run in the background: print the box's id once it runs.
    #[arg(short, long)]
    pub detach: bool,
    /// The box's name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Remove the box when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// A terminal in the box.
    #[arg(short, long)]
    pub tty: bool,
    /// Log options: `max-size=SIZE` caps the box's log (default 10m).
    #[arg(long, value_name = "KEY=VALUE")]
    pub log_opt: Vec<String>,
    /// Publish a box port on the host: [IP:][HOST_PORT:]BOX_PORT[/tcp].
    /// The host address is 127.0.0.1 unless given (Docker's is 0.0.0.0:
    /// ask for it with 0.0.0.0:...); no HOST_PORT is any free one.
    #[arg(short, long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// Mount a volume (containers): HOST_PATH:BOX_PATH[:ro|:rw] binds an
    /// existing absolute host path (unlike Docker, a missing one is an
    /// error, not made); NAME:BOX_PATH[:ro|:rw] mounts the named volume,
    /// made on first use. BOX_PATH is absolute, resolved inside the box.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// The image.
    pub image: String,
    /// The command and its arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}
