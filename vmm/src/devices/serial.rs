//! The 8250 UART on COM1 (vm-superio's emulation), its interrupt (an
//! eventfd registered with KVM as IRQ 4) and the console it writes to.
//!
//! The console forwards guest output to the caller's writer and keeps the
//! last few KiB, so that a VM that dies can be reported with its last words.
//! A guest can write without end: forwarding stops after a byte limit (the
//! tail is still kept), so a flood cannot fill the host's disk or memory.

use std::collections::VecDeque;
use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// The serial port's interrupt line.
pub struct IrqLine(EventFd);

impl IrqLine {
    /// The line that signals `irq`.
    pub fn new(irq: EventFd) -> Self {
        Self(irq)
    }
}

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// The UART as used here.
pub type Serial = vm_superio::Serial<IrqLine, NoEvents, Console>;

/// Makes the UART.
pub fn new(irq: EventFd, console: Console) -> Serial {
    vm_superio::Serial::new(IrqLine(irq), console)
}

const TAIL: usize = 4096;

/// Where guest console output goes.
pub struct Console {
    out: Box<dyn Write + Send>,
    limit: u64,
    written: u64,
    tail: VecDeque<u8>,
}

impl Console {
    /// Forwards at most `limit` bytes to `out`.
    pub fn new(out: Box<dyn Write + Send>, limit: u64) -> Self {
        Self {
            out,
            limit,
            written: 0,
            tail: VecDeque::with_capacity(TAIL),
        }
    }

    /// The last bytes written, as text.
    pub fn tail(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if self.tail.len() == TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(b);
        }
        let room = self.limit.saturating_sub(self.written) as usize;
        let n = buf.len().min(room);
        if n > 0 {
            // A closed or failing output must not stop the guest.
            let _ = self.out.write_all(&buf[..n]);
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.out.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn floods_are_cut_and_the_tail_is_kept() -> io::Result<()> {
        let out = Shared::default();
        let mut c = Console::new(Box::new(out.clone()), 10);
        c.write_all(b"0123456789abcdef")?;
        c.write_all(&vec![b'x'; 10_000])?;
        c.write_all(b"last words")?;
        assert_eq!(
            out.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .as_slice(),
            b"0123456789"
        );
        assert_eq!(c.tail().len(), TAIL);
        assert!(c.tail().ends_with("last words"));
        Ok(())
    }
}
