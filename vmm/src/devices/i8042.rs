//! The i8042 keyboard controller, only as far as a guest needs it to end
//! the VM: `reboot=k` makes Linux write 0xFE (pulse the reset line) to the
//! command port 0x64, and that is reported as a reset.

use std::sync::mpsc::Sender;

use vm_superio::Trigger;

use crate::event::Event;

/// Sends a reset request to the VMM.
pub struct ResetLine(Sender<Event>);

impl Trigger for ResetLine {
    type E = std::sync::mpsc::SendError<Event>;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.send(Event::Reset)
    }
}

/// The controller.
pub type I8042 = vm_superio::I8042Device<ResetLine>;

/// Makes the controller.
pub fn new(stop: Sender<Event>) -> I8042 {
    vm_superio::I8042Device::new(ResetLine(stop))
}
