//! Two ports of our own, for the guest to talk to the VMM without a device
//! driver (a single `out` instruction):
//!
//! - **0x501, exit status.** A write of 1, 2 or 4 bytes (little-endian) ends
//!   the VM with that value as the workload's exit code (twinbox's guest init
//!   writes `128 + N` for a workload killed by signal N). The same port as
//!   QEMU's `isa-debug-exit` default, so guests can share the habit.
//! - **0x502, boot timer.** A one-byte write records `(mark, time since the
//!   VMM started the VM)`. Guest init writes mark 1 when the workload is about
//!   to start; the null guest writes mark 1 as its first act. (Port 0x80,
//!   which cloud-hypervisor uses, is also Linux's I/O delay port, so it is
//!   not reused here.)

use std::sync::mpsc::Sender;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::event::Event;

/// The exit-status port.
pub const EXIT_PORT: u16 = 0x501;
/// The boot-timer port.
pub const BOOT_TIMER_PORT: u16 = 0x502;

/// The mark guest init writes when it is ready for a workload: nothing of
/// the run is in the guest yet, so the VMM may snapshot it here, and the
/// run's data (the mailbox) is delivered now.
pub const MARK_READY: u8 = 3;

/// What the VMM does at the ready mark.
pub enum AtReady {
    /// Nothing (no mailbox).
    Nothing,
    /// Fill the mailbox (once); the error says what failed.
    Deliver(Box<dyn Fn() -> Result<(), String> + Send + Sync>),
    /// Stop the vCPU that wrote the mark and ask for a snapshot (once).
    Pause,
}

/// A boot timer mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The value the guest wrote.
    pub id: u8,
    /// When, since the VM was started.
    pub at: Duration,
}

/// Most marks kept (a guest cannot grow the list without end).
const MAX_MARKS: usize = 64;

/// The two ports.
pub struct Ports {
    stop: Sender<Event>,
    start: Instant,
    marks: Mutex<Vec<Mark>>,
    at_ready: AtReady,
    ready: std::sync::atomic::AtomicBool,
}

impl Ports {
    /// Ports that report to `stop`, timing from `start`.
    pub fn new(stop: Sender<Event>, start: Instant) -> Self {
        Self {
            stop,
            start,
            marks: Mutex::new(Vec::new()),
            at_ready: AtReady::Nothing,
            ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Does `at_ready` at the guest's (first) ready mark.
    pub fn with_ready(mut self, at_ready: AtReady) -> Self {
        self.at_ready = at_ready;
        self
    }

    /// A guest write; true if the vCPU that made it must stop here (for a
    /// snapshot).
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match port {
            EXIT_PORT => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                let _ = self.stop.send(Event::Exited(i32::from_le_bytes(b)));
            }
            BOOT_TIMER_PORT => {
                let Some(&id) = data.first() else {
                    return false;
                };
                if let Ok(mut m) = self.marks.lock() {
                    if m.len() < MAX_MARKS {
                        m.push(Mark {
                            id,
                            at: self.start.elapsed(),
                        });
                    }
                }
                if id == MARK_READY && !self.ready.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    return self.ready();
                }
            }
            _ => {}
        }
        false
    }

    fn ready(&self) -> bool {
        match &self.at_ready {
            AtReady::Nothing => false,
            AtReady::Deliver(fill) => {
                if let Err(e) = fill() {
                    let _ = self
                        .stop
                        .send(Event::Failed(0, format!("the mailbox: {e}")));
                }
                false
            }
            AtReady::Pause => {
                let _ = self.stop.send(Event::Ready);
                true
            }
        }
    }

    /// The marks so far.
    pub fn marks(&self) -> Vec<Mark> {
        self.marks.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
