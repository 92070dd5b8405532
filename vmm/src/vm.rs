//! A VM from a [`VmConfig`]: build it, run it until it stops, say why, and
//! leave nothing behind.
//!
//! [`run`] starts the VMM thread, which builds the VM (KVM VM, memory,
//! in-kernel irqchip and optionally the PIT, kernel, boot structures,
//! devices, vCPUs), starts one thread per vCPU, then waits for the first stop event
//! or the timeout, under its seccomp filter. It then raises the stop flag and kicks every vCPU thread
//! with a signal until all have returned, and drops the vCPUs, the VM and the
//! guest memory, in that order, before it returns.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, kvm_irq_routing_msi, kvm_pit_config, KvmIrqRouting,
    KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::{boot_params, cpuid, layout, mptable, pmu, regs};
use crate::config::{self, Irqchip, Snapshot, VmConfig};
use crate::devices::ports::{AtReady, Mark};
use crate::devices::{ioapic, serial::Console, virtiofs, vsock, Devices};
use crate::event::Event;
use crate::profile::{Profile, Sampler, StatsPoint};
use crate::snapshot::machine::{IoapicState, MachineState};
use crate::snapshot::vcpu::VcpuState;
use crate::stats::StatsFd;
use crate::virtio::mmio::{MmioTransport, TransportState, REG_QUEUE_NOTIFY};
use crate::virtio::slot;
use crate::{hypervisor, loader, mailbox, memory, snapshot, vcpu};

/// Errors of building or running a VM. A guest that misbehaves is not an
/// error: that is a [`StopReason`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error("invalid VM configuration")]
    Config(#[from] config::Error),
    /// A KVM call failed.
    #[error("{0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The pmem image cannot be used.
    #[error("pmem")]
    Pmem(#[from] crate::pmem::Error),
    /// Guest memory could not be set up.
    #[error("guest memory")]
    Memory(#[from] memory::Error),
    /// The kernel or initrd could not be loaded.
    #[error("loading the guest")]
    Load(#[from] loader::Error),
    /// The boot structures could not be written.
    #[error("writing boot structures: {0}")]
    Boot(String),
    /// A vCPU could not be set up.
    #[error("setting up vCPUs")]
    Vcpu(#[from] vcpu::Error),
    /// The snapshot cannot be taken or used (the caller boots instead).
    #[error(transparent)]
    Snapshot(#[from] snapshot::Error),
    /// The mailbox could not be filled.
    #[error("mailbox")]
    Mailbox(#[from] mailbox::Error),
    /// A thread could not be started.
    #[error("starting a VMM thread")]
    Thread(#[source] std::io::Error),
    /// The VMM thread could not be filtered.
    #[error("seccomp")]
    Seccomp(#[from] crate::seccomp::Error),
    /// The VMM thread panicked (a bug in the VMM, not the guest).
    #[error("the VMM thread panicked")]
    Panicked,
    /// The vsock device could not be set up.
    #[error("vsock")]
    Vsock(#[from] vsock::Error),
    /// A virtio transport could not be made.
    #[error("virtio")]
    Virtio(#[from] crate::virtio::mmio::Error),
    /// A virtio-fs device could not be set up (its file server).
    #[error("virtio-fs")]
    Virtiofs(#[from] virtiofs::Error),
    /// A snapshot was asked of a VM with shared directories: its RAM is a
    /// memfd the file servers map, and a restored VM's RAM would be a
    /// private mapping of the snapshot's memory file, which no file server
    /// could see. Boot it instead ([`Snapshot::None`]).
    #[error(
        "a VM with shared directories cannot be snapshotted or restored: the file \
         servers map its RAM (a shared memfd), and a snapshot's RAM is a private \
         mapping of the snapshot file that they could not see; boot it instead"
    )]
    SnapshotWithShares,
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote this exit status to the exit port.
    Exited(i32),
    /// The guest reset the machine (i8042 or a KVM reset event).
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// A vCPU triple-faulted.
    TripleFault {
        /// Which vCPU.
        vcpu: u32,
    },
    /// The guest reported a crash (KVM system event).
    Crashed,
    /// A vCPU halted for good (no in-kernel LAPIC to wake it).
    Halted,
    /// The timeout passed; the VMM stopped the VM.
    TimedOut(Duration),
    /// KVM failed while the guest ran (or a device thread of the VMM did:
    /// the message says which).
    KvmError(String),
    /// The guest's init marked ready and the VM stopped there for a
    /// snapshot ([`crate::config::Snapshot::Take`]).
    Ready,
}

/// Where the time went.
#[derive(Debug, Clone, Default)]
pub struct Timings {
    /// KVM VM created.
    pub vm_created: Duration,
    /// Guest memory mapped and registered, irqchip (and PIT) created.
    pub memory_ready: Duration,
    /// Kernel, initrd, command line and boot structures written.
    pub guest_loaded: Duration,
    /// vCPUs created and their threads started.
    pub vcpus_started: Duration,
    /// The stop event arrived (or the timeout passed).
    pub stopped: Duration,
    /// Everything torn down.
    pub torn_down: Duration,
}

/// A VM stopped at its guest's ready mark: its state and its memory, to
/// be saved ([`snapshot::dir::save`]).
pub struct Captured {
    /// Everything but the RAM.
    pub state: MachineState,
    /// The guest's memory (RAM, root disk and mailbox regions).
    pub memory: GuestMemoryMmap,
}

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captured")
            .field("vcpus", &self.state.vcpus.len())
            .field("memory", &self.state.memory)
            .finish_non_exhaustive()
    }
}

/// What a VM run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Why it stopped.
    pub reason: StopReason,
    /// The last few KiB of console output.
    pub console_tail: String,
    /// Boot timer marks.
    pub marks: Vec<Mark>,
    /// Timings, from the start of [`run`].
    pub timings: Timings,
    /// What the profiler recorded, when [`VmConfig::profile`] asked for it.
    pub profile: Option<Profile>,
    /// The machine, when it stopped for a snapshot.
    pub captured: Option<Captured>,
}

/// Most console bytes forwarded to the caller's writer (the rest is dropped;
/// the tail is kept).
pub const CONSOLE_LIMIT: u64 = 64 << 20;

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Without a handler the signal would kill the process; with an empty
        // one it only makes KVM_RUN return EINTR in the vCPU thread.
        let _ = register_signal_handler(kick_signal(), kick_handler);
    });
}

fn host_memory() -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (pages > 0 && page > 0).then(|| pages as u64 * page as u64)
}

/// Builds the VM of `config`, runs it until it stops, tears it down.
/// Console output goes to `console`. The work happens in a thread of its
/// own (the VMM thread), so its seccomp filter never applies to the caller.
/// With [`Snapshot::Take`], the VM stops at the guest's ready mark and
/// comes back in [`Outcome::captured`], its state read here, in the
/// caller's (unfiltered) thread.
///
/// With [`VmConfig::vsock`], the VM's Unix socket is bound here (in the
/// caller's thread) before the VM is built and removed when `run`
/// returns, whatever the outcome.
///
/// With [`VmConfig::shares`], the file servers must listen on their
/// sockets already; a snapshot (taken or restored) is refused with
/// [`Error::SnapshotWithShares`] before anything is made.
pub fn run(config: &VmConfig, console: Box<dyn Write + Send>) -> Result<Outcome, Error> {
    let config = config.clone();
    config.validate_shares()?;
    if !config.shares.is_empty() && config.snapshot != Snapshot::None {
        return Err(Error::SnapshotWithShares);
    }
    let (listener, bound) = match &config.vsock {
        Some(v) => {
            v.validate()?;
            let (l, b) = vsock::uds::bind(&v.uds_path)?;
            (Some(l), Some(b))
        }
        None => (None, None),
    };
    let ran = std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || run_here(&config, console, listener));
    let (mut outcome, paused) = ran
        .map_err(Error::Thread)?
        .join()
        .map_err(|_| Error::Panicked)??;
    drop(bound);
    if let Some(p) = paused {
        outcome.captured = Some(capture(p)?);
    }
    Ok(outcome)
}

/// A VM stopped at the ready mark, not yet read.
struct Paused {
    vm: Arc<VmFd>,
    vcpus: Vec<VcpuFd>,
    mem: GuestMemoryMmap,
    memory: u64,
    pmem: Option<(u64, u64)>,
    mailbox: Option<u64>,
    cpuid: Vec<kvm_cpuid_entry2>,
    serial: vm_superio::serial::SerialState,
    ioapic: (u32, u32, [u64; ioapic::PINS]),
    vsock: Option<TransportState>,
}

/// Reads the whole state of a paused VM, then lets go of it but its memory.
fn capture(mut p: Paused) -> Result<Captured, Error> {
    let snap = |e: snapshot::Error| Error::Snapshot(e);
    let kvm = Kvm::new().map_err(|e| Error::Kvm("opening /dev/kvm", e))?;
    let indices = kvm
        .get_msr_index_list()
        .map_err(|e| Error::Kvm("KVM_GET_MSR_INDEX_LIST", e))?;
    let mut vcpus = Vec::new();
    for v in p.vcpus.iter_mut() {
        snapshot::vcpu::settle(v).map_err(snap)?;
        vcpus.push(VcpuState::capture(v, indices.as_slice()).map_err(snap)?);
    }
    let clock =
        p.vm.get_clock()
            .map_err(|e| snap(snapshot::Error::Kvm("KVM_GET_CLOCK", e)))?;
    drop(p.vcpus);
    drop(p.vm);
    let mut offset = 0;
    let regions = layout::ram_regions(p.memory)
        .into_iter()
        .map(|(start, len)| {
            offset += len;
            (start, len, offset - len)
        })
        .collect();
    let (id, select, entries) = p.ioapic;
    Ok(Captured {
        state: MachineState {
            memory: p.memory,
            pmem: p.pmem,
            mailbox: p.mailbox,
            layout: snapshot::memory::Layout { regions },
            cpuid: p.cpuid,
            clock,
            ioapic: IoapicState {
                id,
                select,
                entries,
            },
            serial: p.serial,
            vcpus,
            vsock: p.vsock,
        },
        memory: p.mem,
    })
}

fn run_here(
    config: &VmConfig,
    console: Box<dyn Write + Send>,
    listener: Option<UnixListener>,
) -> Result<(Outcome, Option<Paused>), Error> {
    let t0 = Instant::now();
    let mut timings = Timings::default();
    let kvm = Kvm::new().map_err(|e| Error::Kvm("opening /dev/kvm", e))?;
    config.validate(host_memory(), kvm.get_max_vcpus() as u32)?;
    install_kick_handler();

    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
    timings.vm_created = t0.elapsed();
    // Memory before the irqchip: registering a memslot once the irqchip
    // exists waits for an SRCU grace period (7 ms on PVM); before, 0.2 ms.
    let size = config.memory_pages_bytes();
    let pmem = match &config.pmem {
        Some(path) => Some(crate::pmem::open(path, size)?),
        None => None,
    };
    let pmem_range = pmem.as_ref().map(|p| (p.base, p.size));
    let mailbox_base = match (&config.mailbox, pmem_range) {
        (Some(_), Some((base, len))) => Some(mailbox::base(base, len)),
        _ => None,
    };
    let restore = match &config.snapshot {
        Snapshot::Restore { dir, key } => {
            let s = snapshot::dir::load(dir, key)?;
            s.check(size, config.vcpus, pmem_range, mailbox_base)?;
            if s.state.vsock.is_some() != config.vsock.is_some() {
                return Err(Error::Snapshot(snapshot::Error::Snapshot(
                    "made with another vsock device (or none)".into(),
                )));
            }
            Some(s)
        }
        _ => None,
    };
    let mem = match &restore {
        Some(r) => {
            let ram = snapshot::memory::regions(&r.memory, &r.state.layout)?;
            memory::assemble(&vm, ram, pmem.as_ref(), mailbox_base)?
        }
        None if !config.shares.is_empty() => {
            memory::create_shared(&vm, size, pmem.as_ref(), mailbox_base)?
        }
        None => memory::create(&vm, size, pmem.as_ref(), mailbox_base)?,
    };
    vm.set_tss_address(layout::KVM_TSS as usize)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
    let split =
        config.irqchip == Irqchip::Split && !config.pit && kvm.check_extension(Cap::SplitIrqchip);
    if !split && (restore.is_some() || config.snapshot == Snapshot::Take) {
        return Err(Error::Snapshot(snapshot::Error::Snapshot(
            "snapshots need the split irqchip (no PIT): this host or config has none".into(),
        )));
    }
    if split {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_SPLIT_IRQCHIP,
            ..Default::default()
        };
        cap.args[0] = ioapic::PINS as u64;
        vm.enable_cap(&cap)
            .map_err(|e| Error::Kvm("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)", e))?;
    } else {
        vm.create_irq_chip()
            .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
    }
    let vm = Arc::new(vm);
    if config.pit {
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit)
            .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))?;
    }
    timings.memory_ready = t0.elapsed();

    let kind = hypervisor::detect_kind();
    pmu::filter_absent_pmu(&kvm, &vm, kind == hypervisor::Kind::Amd)
        .map_err(|e| Error::Kvm("KVM_X86_SET_MSR_FILTER", e))?;
    let entry = match &restore {
        Some(_) => 0,
        None => load_guest(config, &mem, kind, pmem_range, mailbox_base)?,
    };
    timings.guest_loaded = t0.elapsed();

    let (tx, rx) = mpsc::channel::<Event>();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Kvm("eventfd", e.into()))?;
    vm.register_irqfd(&serial_irq, 4)
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    let console = Console::new(console, CONSOLE_LIMIT);
    let mut devices = match &restore {
        Some(r) => Devices::restored(serial_irq, console, &r.state.serial, tx.clone(), t0)
            .map_err(|e| Error::Snapshot(snapshot::Error::Snapshot(e)))?,
        None => Devices::new(serial_irq, console, tx.clone(), t0),
    };
    if split {
        let io = match &restore {
            Some(r) => {
                let s = &r.state.ioapic;
                let io = ioapic::Ioapic::from_state(s.id, s.select, s.entries);
                install_routes(&vm, &io.routes()).map_err(|e| {
                    Error::Snapshot(snapshot::Error::Snapshot(format!(
                        "the I/O APIC's routes: {e}"
                    )))
                })?;
                io
            }
            None => ioapic::Ioapic::new(mptable::ioapic_id(config.vcpus)),
        };
        let routes_vm = vm.clone();
        devices = devices.with_ioapic(
            io,
            Box::new(move |routes| install_routes(&routes_vm, routes)),
        );
    }
    let mut vsock_parts = None;
    if let (Some(v), Some(listener)) = (&config.vsock, listener) {
        let (device, epoll, notify) = make_vsock(
            &vm,
            &mem,
            v,
            listener,
            restore.as_ref().and_then(|r| r.state.vsock.as_ref()),
        )?;
        devices = devices.with_vsock(device.clone(), slot::base(0));
        vsock_parts = Some((device, epoll, notify));
    }
    let mut shares = Vec::new();
    for (i, share) in config.shares.iter().enumerate() {
        let device = make_share(&vm, &mem, share, share_slot(i))?;
        devices = devices.with_share(device.clone(), slot::base(share_slot(i)));
        shares.push(device);
    }
    devices = match (&config.snapshot, mailbox_base, &config.mailbox) {
        (Snapshot::Take, _, _) => devices.with_ready(AtReady::Pause),
        (Snapshot::None, Some(base), Some(payload)) => {
            let (mem, payload) = (mem.clone(), payload.clone());
            let entropy = mailbox::fresh_entropy()?;
            devices.with_ready(AtReady::Deliver(Box::new(move || {
                mailbox::deliver(&mem, base, &payload, &entropy).map_err(|e| e.to_string())
            })))
        }
        _ => devices,
    };
    let devices = Arc::new(devices);
    let mut supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    if let hypervisor::Kind::Pvm { .. } = kind {
        cpuid::hide_for_pvm(&mut supported);
    }
    let vcpus = match &restore {
        Some(r) => {
            if let Some(why) = cpuid_differs(&r.state.cpuid, vcpu0_cpuid(&supported).as_slice()) {
                return Err(Error::Snapshot(snapshot::Error::Snapshot(format!(
                    "made on a host whose CPUID differs from this one's ({why})"
                ))));
            }
            let vcpus = r
                .state
                .vcpus
                .iter()
                .enumerate()
                .map(|(i, s)| vcpu::create_restored(&vm, &supported, i as u32, config.vcpus, s))
                .collect::<Result<Vec<_>, _>>()?;
            let mut clock = r.state.clock;
            // The saved value, as it was: no jump for the time the
            // snapshot lay on disk (init sets the wall clock itself).
            clock.flags = 0;
            clock.realtime = 0;
            clock.host_tsc = 0;
            vm.set_clock(&clock)
                .map_err(|e| Error::Snapshot(snapshot::Error::Kvm("KVM_SET_CLOCK", e)))?;
            if let (Some(base), Some(payload)) = (mailbox_base, &config.mailbox) {
                mailbox::deliver(&mem, base, payload, &mailbox::fresh_entropy()?)?;
            }
            vcpus
        }
        None => (0..config.vcpus)
            .map(|i| vcpu::create(&vm, &supported, i, config.vcpus, entry))
            .collect::<Result<Vec<_>, _>>()?,
    };
    drop(restore);
    // The device thread starts once the vCPUs exist (restored ones with
    // their LAPICs back): an interrupt it raises from now on reaches them.
    let mut vsock_worker = match vsock_parts {
        Some((device, epoll, notify)) => {
            let events = tx.clone();
            Some(vsock::spawn(
                device,
                epoll,
                notify,
                config.seccomp,
                Box::new(move |e| {
                    let _ = events.send(Event::DeviceFailed(e));
                }),
            )?)
        }
        None => None,
    };
    let share_workers = shares
        .into_iter()
        .enumerate()
        .map(|(i, d)| virtiofs::spawn(d, i, config.seccomp))
        .collect::<Result<Vec<_>, _>>()?;

    let sampler = config
        .profile
        .map(|_| Arc::new(Sampler::new(t0, config.vcpus)));
    // Opened before the filters; a host without binary stats profiles RIPs only.
    let stats: Vec<StatsFd> = match config.profile {
        Some(_) => vcpus.iter().filter_map(|v| StatsFd::open(v).ok()).collect(),
        None => Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<JoinHandle<VcpuFd>> = Vec::new();
    let mut spawn_error = None;
    for (i, v) in vcpus.into_iter().enumerate() {
        let (devices, stop, tx) = (devices.clone(), stop.clone(), tx.clone());
        let seccomp = match (config.seccomp, config.shares.is_empty()) {
            (false, _) => None,
            (true, true) => Some(crate::seccomp::Thread::Vcpu),
            (true, false) => Some(crate::seccomp::Thread::VcpuShares),
        };
        let sampler = sampler.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vcpu{i}"))
            .spawn(move || vcpu::run(v, i as u32, devices, stop, tx, seccomp, sampler));
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                spawn_error = Some(e);
                break;
            }
        }
    }
    drop(tx);
    timings.vcpus_started = t0.elapsed();

    let filtered = match (&spawn_error, config.seccomp) {
        (None, true) => crate::seccomp::install(crate::seccomp::Thread::Vmm).map_err(Some),
        _ => Ok(()),
    };
    let mut points = Vec::new();
    let reason = match (&spawn_error, &filtered) {
        (None, Ok(())) => {
            let mut tick = || {
                if let Some(s) = &sampler {
                    s.request();
                    for t in threads.iter().filter(|t| !t.is_finished()) {
                        let _ = t.kill(kick_signal());
                    }
                }
                for (i, fd) in stats.iter().enumerate() {
                    if let Ok(values) = fd.read() {
                        points.push(StatsPoint {
                            at: t0.elapsed(),
                            vcpu: i as u32,
                            values,
                        });
                    }
                }
            };
            Some(wait(&rx, config.timeout, config.profile, &mut tick, t0))
        }
        _ => None,
    };
    timings.stopped = t0.elapsed();

    stop.store(true, Ordering::Release);
    let count = threads.len();
    let vcpus = stop_threads(threads);
    // Stopped after the vCPUs: no register access is in flight when its
    // state is read.
    if let Some(w) = vsock_worker.take() {
        let _ = w.stop();
    }
    for w in share_workers {
        let _ = w.stop();
    }
    let vsock_state = devices.vsock_state();
    let console_tail = devices.console_tail();
    let marks = devices.marks();
    let (serial, io) = devices.state();
    drop(devices);
    let profile = match (config.profile, &sampler) {
        (Some(interval), Some(s)) => {
            let (samples, dropped) = s.take();
            Some(Profile {
                interval,
                samples,
                dropped,
                stat_names: stats.first().map(StatsFd::names).unwrap_or_default(),
                stats: points,
            })
        }
        _ => None,
    };
    drop(stats);
    let paused = match (&reason, io) {
        (Some(StopReason::Ready), Some(ioapic)) if vcpus.len() == count => Some(Paused {
            vm,
            vcpus,
            mem,
            memory: size,
            pmem: pmem_range,
            mailbox: mailbox_base,
            cpuid: vcpu0_cpuid(&supported).as_slice().to_vec(),
            serial,
            ioapic,
            vsock: vsock_state,
        }),
        _ => {
            drop(vcpus);
            drop(vm);
            drop(mem);
            None
        }
    };
    timings.torn_down = t0.elapsed();
    match (reason, spawn_error, filtered) {
        (Some(StopReason::Ready), _, _) if paused.is_none() => Err(Error::Snapshot(
            snapshot::Error::Snapshot("a vCPU thread was lost before the snapshot".into()),
        )),
        (Some(reason), _, _) => Ok((
            Outcome {
                reason,
                console_tail,
                marks,
                timings,
                profile,
                captured: None,
            },
            paused,
        )),
        (None, Some(e), _) => Err(Error::Thread(e)),
        (None, None, Err(Some(e))) => Err(e.into()),
        (None, None, _) => Err(Error::Boot("no vCPU started".into())),
    }
}

/// The CPUID vCPU 0 gets: what a snapshot keeps and compares. (KVM's
/// supported list carries the APIC ID of whichever host CPU answered;
/// the per-vCPU fixes replace it.)
fn vcpu0_cpuid(supported: &kvm_bindings::CpuId) -> kvm_bindings::CpuId {
    let mut c = supported.clone();
    cpuid::fix_for_vcpu(&mut c, 0, 1);
    c
}

/// How the CPUID a snapshot was made with differs from `now`'s, if it does.
fn cpuid_differs(saved: &[kvm_cpuid_entry2], now: &[kvm_cpuid_entry2]) -> Option<String> {
    if saved.len() != now.len() {
        return Some(format!("{} entries, not {}", saved.len(), now.len()));
    }
    saved.iter().zip(now).find_map(|(a, b)| {
        let key = |e: &kvm_cpuid_entry2| (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx);
        (key(a) != key(b)).then(|| {
            format!(
                "leaf {:#x}.{}: {:x?} vs {:x?}",
                a.function,
                a.index,
                key(a),
                key(b)
            )
        })
    })
}

/// Loads a booting guest: kernel, initrd, command line, zero page, MP
/// table, boot page tables; returns the kernel's entry point.
fn load_guest(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    kind: hypervisor::Kind,
    pmem_range: Option<(u64, u64)>,
    mailbox_base: Option<u64>,
) -> Result<u64, Error> {
    let regions = layout::ram_regions(config.memory_pages_bytes());
    let low_end = regions.first().map(|r| r.0 + r.1).unwrap_or(0);
    let loaded = loader::kernel(mem, &config.kernel)?;
    let initrd = match config.initrd.is_empty() {
        true => None,
        false => Some(loader::initrd(mem, &config.initrd, low_end, loaded.end)?),
    };
    let mut cmdline = match (config.cmdline.is_empty(), kind.guest_cmdline()) {
        (_, "") => config.cmdline.clone(),
        (true, extra) => extra.to_string(),
        (false, extra) => format!("{} {extra}", config.cmdline),
    };
    // The guest finds virtio-mmio devices only on its command line, and
    // numbers them in its order (virtio0, virtio1, ...).
    let slots = config
        .vsock
        .iter()
        .map(|_| 0)
        .chain((0..config.shares.len()).map(share_slot));
    for n in slots {
        if !cmdline.is_empty() {
            cmdline.push(' ');
        }
        cmdline.push_str(&slot::cmdline(n));
    }
    let cmdline_len = loader::cmdline(mem, &cmdline)?;
    let seed = boot_params::rng_seed().map_err(|e| Error::Boot(e.to_string()))?;
    let mut pmem: Vec<(u64, u64)> = pmem_range.into_iter().collect();
    if let Some(base) = mailbox_base {
        pmem.push((base, mailbox::SIZE));
    }
    boot_params::write(
        mem,
        loaded.header,
        cmdline_len,
        initrd,
        &regions,
        &pmem,
        &seed,
    )
    .map_err(|e| Error::Boot(e.to_string()))?;
    mptable::write(mem, config.vcpus).map_err(|e| Error::Boot(e.to_string()))?;
    regs::write_tables(mem).map_err(|e| Error::Boot(e.to_string()))?;
    Ok(loaded.entry)
}

/// Makes the vsock device (in slot 0: its MMIO window, its GSI's irqfd,
/// its QueueNotify ioeventfd), restored from `saved` if given; returns it
/// with the epoll set and notify eventfd its thread ([`vsock::spawn`])
/// waits on.
fn make_vsock(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &config::VsockConfig,
    listener: UnixListener,
    saved: Option<&TransportState>,
) -> Result<(vsock::Shared, Arc<vmm_sys_util::epoll::Epoll>, EventFd), Error> {
    let fd = || EventFd::new(EFD_NONBLOCK).map_err(vsock::Error::EventFd);
    let (irq, notify) = (fd()?, fd()?);
    vm.register_irqfd(&irq, slot::gsi(0))
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    // Where KVM takes QueueNotify writes itself the vCPU does not exit
    // for them; where it does not, the MMIO exit path signals `notify`.
    let _ = vm.register_ioevent(
        &notify,
        &IoEventAddress::Mmio(slot::base(0) + REG_QUEUE_NOTIFY),
        NoDatamatch,
    );
    let epoll = Arc::new(vmm_sys_util::epoll::Epoll::new().map_err(vsock::Error::Epoll)?);
    let device = vsock::Vsock::new(config, listener, epoll.clone())?;
    let kick = notify.try_clone().map_err(vsock::Error::EventFd)?;
    let transport = match saved {
        Some(s) => {
            MmioTransport::restored(device.restored(), mem.clone(), irq, kick, s).map_err(|e| {
                Error::Snapshot(snapshot::Error::Snapshot(format!(
                    "the vsock device's state: {e}"
                )))
            })?
        }
        None => MmioTransport::new(device, mem.clone(), irq, kick)?,
    };
    Ok((Arc::new(Mutex::new(transport)), epoll, notify))
}

/// The virtio-mmio slot of share `i`: after vsock's 0, whether or not
/// the VM has a vsock device, so a share's window and GSI depend only on
/// its place in [`VmConfig::shares`].
pub fn share_slot(i: usize) -> u32 {
    1 + i as u32
}

/// Makes share `config`'s virtio-fs device in slot `n`: connects to its
/// file server, its GSI's irqfd, one KVM ioeventfd per queue on the
/// window's QueueNotify (datamatch: the queue's index), its transport.
fn make_share(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    config: &config::ShareConfig,
    n: u32,
) -> Result<virtiofs::Shared, Error> {
    let device = virtiofs::VirtioFs::connect(&config.tag, &config.socket)?;
    let fd = || EventFd::new(EFD_NONBLOCK).map_err(virtiofs::Error::EventFd);
    let irq = fd()?;
    vm.register_irqfd(&irq, slot::gsi(n))
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    for (q, kick) in device.kicks().iter().enumerate() {
        // Where KVM does not take the write, the MMIO exit path signals
        // the same eventfd (`VirtioFs::queue_notify`).
        let _ = vm.register_ioevent(
            kick,
            &IoEventAddress::Mmio(slot::base(n) + REG_QUEUE_NOTIFY),
            q as u32,
        );
    }
    // Every queue notify goes to a kick eventfd: the transport's own
    // notify eventfd is never signalled but at activation, and unread.
    let transport = MmioTransport::new(device, mem.clone(), irq, fd()?)?;
    Ok(Arc::new(Mutex::new(transport)))
}

/// Waits for the first stop event or the timeout, calling `tick` every
/// `interval` meanwhile (when there is one).
fn wait(
    rx: &mpsc::Receiver<Event>,
    timeout: Option<Duration>,
    interval: Option<Duration>,
    tick: &mut dyn FnMut(),
    t0: Instant,
) -> StopReason {
    let ended = || StopReason::KvmError("every vCPU thread ended".into());
    let event = loop {
        let left = timeout.map(|limit| limit.saturating_sub(t0.elapsed()));
        let slice = match (left, interval) {
            (Some(l), Some(i)) => Some(l.min(i)),
            (l, i) => l.or(i),
        };
        let got = match slice {
            Some(d) => rx.recv_timeout(d),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match got {
            Ok(e) => break e,
            Err(RecvTimeoutError::Disconnected) => return ended(),
            Err(RecvTimeoutError::Timeout) => match timeout {
                Some(limit) if t0.elapsed() >= limit => return StopReason::TimedOut(limit),
                _ => tick(),
            },
        }
    };
    match event {
        Event::Exited(code) => StopReason::Exited(code),
        Event::Reset => StopReason::Reset,
        Event::Shutdown(vcpu) => StopReason::TripleFault { vcpu },
        Event::SystemEvent(_, kind) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::PowerOff,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => StopReason::Crashed,
            other => StopReason::KvmError(format!("system event {other}")),
        },
        Event::Halted(_) => StopReason::Halted,
        Event::Failed(vcpu, what) => StopReason::KvmError(format!("vCPU {vcpu}: {what}")),
        Event::DeviceFailed(what) => StopReason::KvmError(what),
        Event::Ready => StopReason::Ready,
    }
}

/// Replaces the VM's GSI routes with `routes` (MSI routes from the I/O APIC).
fn install_routes(vm: &VmFd, routes: &[ioapic::Route]) -> Result<(), String> {
    let mut table = KvmIrqRouting::new(routes.len())
        .map_err(|e| format!("a routing table of {} entries: {e:?}", routes.len()))?;
    for (entry, r) in table.as_mut_slice().iter_mut().zip(routes) {
        entry.gsi = r.gsi;
        entry.type_ = KVM_IRQ_ROUTING_MSI;
        entry.u.msi = kvm_irq_routing_msi {
            address_lo: r.address_lo,
            address_hi: 0,
            data: r.data,
            ..Default::default()
        };
    }
    vm.set_gsi_routing(&table)
        .map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))
}

/// Kicks every vCPU thread out of KVM_RUN until all have returned, then
/// joins them. A kick can land just before a thread enters KVM_RUN and be
/// lost, so it is repeated until the thread is gone.
fn stop_threads(threads: Vec<JoinHandle<VcpuFd>>) -> Vec<VcpuFd> {
    loop {
        let running: Vec<&JoinHandle<VcpuFd>> =
            threads.iter().filter(|t| !t.is_finished()).collect();
        if running.is_empty() {
            break;
        }
        for t in running {
            let _ = t.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    threads.into_iter().filter_map(|t| t.join().ok()).collect()
}
