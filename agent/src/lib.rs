//! twinbox-agent: the one definition of the protocol between the host and
//! a box's guest agent (init, PID 1 of a VM guest), used by both sides, so
//! that neither can drift from the other.
//!
//! The host reaches the agent over a byte stream: in a VM, the guest's
//! vsock port [`PORT`] (the host connects to the VM's Unix socket and
//! writes `CONNECT 1024\n`, see [`client::connect_vm`]). On it both sides
//! exchange frames.
//!
//! # Frames ([`frame`])
//!
//! Every frame is a 12-byte header and a payload, integers little-endian:
//!
//! ```text
//! offset  size  field
//!  0       2    magic b"TB"
//!  2       1    version, u8 = VERSION (1)
//!  3       1    type (the message, below)
//!  4       4    id, u32: the process the message is about; 0 is the box's
//!               main workload (and the connection itself for Hello/Failed)
//!  8       4    payload length, u32, <= MAX_PAYLOAD (64 KiB)
//! 12       n    payload
//! ```
//!
//! A reader checks magic, version, type and length from the header alone,
//! before it waits for the payload: a length over [`MAX_PAYLOAD`] is an
//! error, never an allocation. [`frame::Decoder`] holds at most one
//! largest frame.
//!
//! # Messages ([`message`])
//!
//! Inside payloads, a *string* is a u32 length and that many bytes of
//! UTF-8; a *list* is a u16 count and that many strings.
//!
//! | type | message | way | payload |
//! |---|---|---|---|
//! | 1 | `Hello` | both | version u32 |
//! | 2 | `Exec` | host to guest | flags u8 (1 tty, 2 stdin, 4 detach), rows u16, cols u16, cwd string, user string, argv list (1 to [`message::MAX_ARGV`]), env list (up to [`message::MAX_ENV`]) |
//! | 3 | `Started` | guest to host | pid u32 |
//! | 4 | `Stdin` | host to guest | bytes |
//! | 5 | `StdinEof` | host to guest | empty |
//! | 6 | `Stdout` | guest to host | bytes |
//! | 7 | `Stderr` | guest to host | bytes |
//! | 8 | `Signal` | host to guest | signal number u32, 1 to 64 |
//! | 9 | `Resize` | host to guest | rows u16, cols u16 |
//! | 10 | `Exited` | guest to host | code i32: the exit status, 128 + N for death by signal N, 127 not found, 126 not executable, 125 not set up (directory, identity) |
//! | 11 | `Failed` | guest to host | UTF-8 message: the request for this id was refused (no process runs), or, with id 0 after a protocol error, the connection is about to close |
//! | 12 | `Forward` | host to guest | port u16, 1 to 65535 |
//! | 13 | `Forwarding` | guest to host | empty |
//! | 14 | `CopyOut` | host to guest | flags u8 (1 contents: the path ended in `/.`), path string (1 to 4096 bytes) |
//! | 15 | `CopyIn` | host to guest | as `CopyOut` |
//! | 16 | `CopyReady` | guest to host | empty |
//! | 17 | `Entry` | both | kind u8 (1 dir, 2 file, 3 symlink, 4 skipped), mode u32 (bits of `0o7777`; for skipped, the `S_IFMT` type), atime i64 s + u32 ns, mtime i64 s + u32 ns, size u64 (files only), name (u16 length, 1 to 255 bytes: one file name, no `/`, NUL, `.` or `..`), target (u16 length: a symlink's, 1 to 4095 bytes without NUL; empty for the others) |
//! | 18 | `Data` | both | bytes of the file entry before it |
//! | 19 | `Up` | both | empty: the directory entered last ends |
//! | 20 | `CopyEnd` | both | empty: the tree is complete (from the guest after `CopyIn`: written) |
//! | 21 | `ForwardUdp` | host to guest | port u16, 1 to 65535 |
//!
//! A connection opens with `Hello` from each side, each carrying
//! [`VERSION`]; a peer with another version is refused with an error
//! naming both. After it the host sends `Exec` with an id of its choosing
//! (not 0, not one of its running processes) and gets `Started` (then the
//! process's output and, once its output is drained, `Exited`) or `Failed`.
//! Id 0 is the main workload: after `Hello` the agent sends `Started{0,
//! pid}`, it takes `Signal{0, N}` (how `twinbox stop` sends SIGTERM), and
//! every connection gets `Exited{0, code}` when it ends, just before the
//! guest powers off.
//!
//! A published port (`-p`) takes one connection per host connection: after
//! `Hello` the host sends `Forward{port}` and nothing more until the agent
//! answers. The agent connects to `127.0.0.1:port` in the guest and says
//! `Forwarding`, after which the connection is that TCP stream, unframed,
//! both ways, half-closes included ([`relay`]); or it says `Failed` (nobody
//! listens there) and closes. [`client::forward`] is the host's side.
//!
//! `twinbox cp` takes a connection per copy too: after `Hello` the host
//! sends `CopyOut{path}` and reads a *tree* back, or `CopyIn{path}`, waits
//! for `CopyReady`, sends a tree and reads `CopyEnd`; either side may end
//! it with `Failed{0, why}` instead. A tree ([`tree`]) is one top entry:
//! a file followed by `Data` frames of exactly its announced size, a
//! symlink, or a directory whose entries (each a tree) are followed by
//! `Up`; then `CopyEnd`. Entry names are single file names, so a receiver
//! only ever creates a name inside a directory it opened itself; the top
//! entry's name is the receiver's to choose (as `docker cp` places it).
//! Sizes are announced, so a receiver refuses one over its limit before a
//! byte of it arrives. [`copy`] walks, writes, sends and receives trees
//! for both sides, and for the container box's copies too.
//!
//! A published UDP port takes one connection per flow (a host client
//! address): after `Hello` the host sends `ForwardUdp{port}`; the agent
//! makes a UDP socket connected to `127.0.0.1:port` in the guest and says
//! `Forwarding`, after which the connection carries that socket's
//! datagrams both ways, each a u16 length and its bytes, at most
//! [`datagram::MAX_DATAGRAM`] ([`datagram`]). Closing the connection ends
//! the flow. [`client::forward_udp`] is the host's side.

pub mod client;
pub mod copy;
pub mod datagram;
pub mod frame;
pub mod message;
pub mod pool;
pub mod relay;
pub mod tree;

pub use frame::{Decoder, Frame, Kind, HEADER_LEN, MAGIC, MAX_PAYLOAD, VERSION};
pub use message::{Exec, Message};

/// The guest's vsock port the agent listens on.
pub const PORT: u32 = 1024;

/// The id of the box's main workload (the process init starts itself).
pub const MAIN_ID: u32 = 0;
