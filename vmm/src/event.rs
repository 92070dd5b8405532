//! Why a VM's thread asks the VMM to stop it: the one message type from
//! devices and vCPU threads to the VMM thread.

/// A request to stop, with its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The guest wrote its exit status to the exit port.
    Exited(i32),
    /// The guest reset the machine through the i8042.
    Reset,
    /// KVM_EXIT_SHUTDOWN on a vCPU: a triple fault.
    Shutdown(u32),
    /// A KVM system event `(vcpu, type)`: power off, reset or crash.
    SystemEvent(u32, u32),
    /// A vCPU halted with no in-kernel LAPIC to wake it.
    Halted(u32),
    /// KVM failed or reported an exit the VMM does not handle `(vcpu, what)`.
    Failed(u32, String),
    /// A device's thread failed (what, and why).
    DeviceFailed(String),
    /// The guest's init marked *ready* and the VMM is to take a snapshot:
    /// the vCPU that wrote the mark has stopped.
    Ready,
}
