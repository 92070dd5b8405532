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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_msi, kvm_pit_config, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::{boot_params, cpuid, layout, mptable, pmu, regs};
use crate::config::{self, Irqchip, VmConfig};
use crate::devices::ports::Mark;
use crate::devices::{ioapic, serial::Console, Devices};
use crate::event::Event;
use crate::profile::{Profile, Sampler, StatsPoint};
use crate::stats::StatsFd;
use crate::{hypervisor, loader, memory, vcpu};

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
    /// A thread could not be started.
    #[error("starting a VMM thread")]
    Thread(#[source] std::io::Error),
    /// The VMM thread could not be filtered.
    #[error("seccomp")]
    Seccomp(#[from] crate::seccomp::Error),
    /// The VMM thread panicked (a bug in the VMM, not the guest).
    #[error("the VMM thread panicked")]
    Panicked,
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
    /// KVM failed while the guest ran.
    KvmError(String),
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

/// What a VM run produced.
#[derive(Debug, Clone)]
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
pub fn run(config: &VmConfig, console: Box<dyn Write + Send>) -> Result<Outcome, Error> {
    let config = config.clone();
    std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || run_here(&config, console))
        .map_err(Error::Thread)?
        .join()
        .map_err(|_| Error::Panicked)?
}

fn run_here(config: &VmConfig, console: Box<dyn Write + Send>) -> Result<Outcome, Error> {
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
    let mem = memory::create(&vm, size, pmem.as_ref())?;
    vm.set_tss_address(layout::KVM_TSS as usize)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
    let split =
        config.irqchip == Irqchip::Split && !config.pit && kvm.check_extension(Cap::SplitIrqchip);
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

    let regions = layout::ram_regions(size);
    let low_end = regions.first().map(|r| r.0 + r.1).unwrap_or(0);
    let loaded = loader::kernel(&mem, &config.kernel)?;
    let initrd = match config.initrd.is_empty() {
        true => None,
        false => Some(loader::initrd(&mem, &config.initrd, low_end, loaded.end)?),
    };
    let kind = hypervisor::detect_kind();
    pmu::filter_absent_pmu(&kvm, &vm, kind == hypervisor::Kind::Amd)
        .map_err(|e| Error::Kvm("KVM_X86_SET_MSR_FILTER", e))?;
    let cmdline = match (config.cmdline.is_empty(), kind.guest_cmdline()) {
        (_, "") => config.cmdline.clone(),
        (true, extra) => extra.to_string(),
        (false, extra) => format!("{} {extra}", config.cmdline),
    };
    let cmdline_len = loader::cmdline(&mem, &cmdline)?;
    let seed = boot_params::rng_seed().map_err(|e| Error::Boot(e.to_string()))?;
    let pmem_range = pmem.as_ref().map(|p| (p.base, p.size));
    boot_params::write(
        &mem,
        loaded.header,
        cmdline_len,
        initrd,
        &regions,
        pmem_range,
        &seed,
    )
    .map_err(|e| Error::Boot(e.to_string()))?;
    mptable::write(&mem, config.vcpus).map_err(|e| Error::Boot(e.to_string()))?;
    regs::write_tables(&mem).map_err(|e| Error::Boot(e.to_string()))?;
    timings.guest_loaded = t0.elapsed();

    let (tx, rx) = mpsc::channel::<Event>();
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(|e| Error::Kvm("eventfd", e.into()))?;
    vm.register_irqfd(&serial_irq, 4)
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    let mut devices = Devices::new(
        serial_irq,
        Console::new(console, CONSOLE_LIMIT),
        tx.clone(),
        t0,
    );
    if split {
        let routes_vm = vm.clone();
        devices = devices.with_ioapic(
            ioapic::Ioapic::new(mptable::ioapic_id(config.vcpus)),
            Box::new(move |routes| install_routes(&routes_vm, routes)),
        );
    }
    let devices = Arc::new(devices);
    let mut supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    if let hypervisor::Kind::Pvm { .. } = kind {
        cpuid::hide_for_pvm(&mut supported);
    }
    let vcpus = (0..config.vcpus)
        .map(|i| vcpu::create(&vm, &supported, i, config.vcpus, loaded.entry))
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
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut spawn_error = None;
    for (i, v) in vcpus.into_iter().enumerate() {
        let (devices, stop, tx) = (devices.clone(), stop.clone(), tx.clone());
        let seccomp = config.seccomp;
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
    stop_threads(threads);
    let console_tail = devices.console_tail();
    let marks = devices.marks();
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
    drop(vm);
    drop(mem);
    timings.torn_down = t0.elapsed();
    match (reason, spawn_error, filtered) {
        (Some(reason), _, _) => Ok(Outcome {
            reason,
            console_tail,
            marks,
            timings,
            profile,
        }),
        (None, Some(e), _) => Err(Error::Thread(e)),
        (None, None, Err(Some(e))) => Err(e.into()),
        (None, None, _) => Err(Error::Boot("no vCPU started".into())),
    }
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
fn stop_threads(threads: Vec<JoinHandle<()>>) {
    loop {
        let running: Vec<&JoinHandle<()>> = threads.iter().filter(|t| !t.is_finished()).collect();
        if running.is_empty() {
            break;
        }
        for t in running {
            let _ = t.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for t in threads {
        let _ = t.join();
    }
}
