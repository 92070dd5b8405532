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
}

impl Ports {
    /// Ports that report to `stop`, timing from `start`.
    pub fn new(stop: Sender<Event>, start: Instant) -> Self {
        Self {
            stop,
            start,
            marks: Mutex::new(Vec::new()),
        }
    }

    /// A guest write.
    pub fn write(&self, port: u16, data: &[u8]) {
        match port {
            EXIT_PORT => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                let _ = self.stop.send(Event::Exited(i32::from_le_bytes(b)));
            }
            BOOT_TIMER_PORT => {
                if let (Some(&id), Ok(mut m)) = (data.first(), self.marks.lock()) {
                    if m.len() < MAX_MARKS {
                        m.push(Mark {
                            id,
                            at: self.start.elapsed(),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    /// The marks so far.
    pub fn marks(&self) -> Vec<Mark> {
        self.marks.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
