//! Boxes that live: a box's record and state on disk ([`store`],
//! [`record`]), its id and name ([`id`]), its capped log ([`log`]) and
//! the control socket its supervisor answers on ([`control`]), its
//! published ports ([`ports`]). The
//! supervisor itself is [`crate::supervisor`]; the verbs are
//! [`crate::commands::boxes`].

pub mod control;
pub mod id;
pub mod log;
pub mod ports;
pub mod record;
pub mod store;
