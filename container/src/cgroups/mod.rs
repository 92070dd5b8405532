//! Control groups: which layout the host has, and (with the launcher) the
//! v1 and v2 drivers side by side.

pub mod layout;
