//! The shape of a tree in a copy's stream, checked message by message
//! ([`Tree::check`]) before the receiver acts on one, with its limits.
//!
//! A tree is one top entry: a file (its `Data`), a symlink, or a directory
//! whose entries follow up to its `Up`, each of them a tree again; then
//! `CopyEnd`. `Skipped` entries stand for what the sender did not copy
//! (never the top). A file entry announces its size, so a size over what
//! is left of [`Limits::bytes`] is refused before a byte of it arrives;
//! its `Data` must add up to that size exactly, with nothing else between.
//! Directories nest at most [`MAX_DEPTH`] deep, and a copy has at most
//! [`Limits::entries`] entries: a stream that does not end runs into one
//! of the limits (the receiver bounds the time between messages itself).
//!
//! The checker holds a few counters, never a name or a byte of data, so
//! what a hostile sender can make it hold is bounded by nothing it sends.

use crate::frame::Kind;
use crate::message::{EntryKind, Message};

/// Deepest nesting of directories in a copy (the top directory counts).
pub const MAX_DEPTH: usize = 256;

/// What one copy may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes of file data, all files together.
    pub bytes: u64,
    /// Most entries (skipped ones included).
    pub entries: u64,
}

impl Default for Limits {
    /// 64 GiB (as an image import) and 4 Mi entries.
    fn default() -> Self {
        Limits {
            bytes: 64 << 30,
            entries: 4 << 20,
        }
    }
}

/// A message the tree does not allow where it came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A message that is not part of a tree, or not at this point.
    #[error("{0:?} where the copy's tree does not allow it")]
    Unexpected(Kind),
    /// A skipped entry as the whole copy.
    #[error("the copy's top entry is one that was skipped")]
    SkippedTop,
    /// More `Data` than the file announced.
    #[error("{extra} bytes more than the file's announced size")]
    Overrun {
        /// How many bytes too many.
        extra: u64,
    },
    /// The file's data ended early.
    #[error("a file's data cut short, {left} bytes missing")]
    CutShort {
        /// How many bytes were still due.
        left: u64,
    },
    /// Directories nested deeper than [`MAX_DEPTH`].
    #[error("directories nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// More entries than [`Limits::entries`].
    #[error("more than {max} entries, the limit of a copy")]
    TooManyEntries {
        /// The limit.
        max: u64,
    },
    /// More bytes than [`Limits::bytes`].
    #[error("a file of {size} bytes would take the copy past its limit of {limit} bytes")]
    TooLarge {
        /// The file's announced size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// `CopyEnd` before the tree was complete.
    #[error("the copy ended with its tree incomplete")]
    Incomplete,
    /// Anything after `CopyEnd`.
    #[error("{0:?} after the copy's end")]
    AfterEnd(Kind),
}

/// The checker of one copy's stream.
#[derive(Debug, Clone)]
pub struct Tree {
    limits: Limits,
    /// Directories entered and not yet left.
    depth: usize,
    /// Bytes still due for the current file.
    left: u64,
    entries: u64,
    bytes: u64,
    /// The top entry has come.
    started: bool,
    /// The top entry is complete: only `CopyEnd` may follow.
    complete: bool,
    ended: bool,
}

impl Tree {
    /// A checker for a copy with these limits.
    pub fn new(limits: Limits) -> Self {
        Tree {
            limits,
            depth: 0,
            left: 0,
            entries: 0,
            bytes: 0,
            started: false,
            complete: false,
            ended: false,
        }
    }

    /// Whether the top entry has come.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Directories entered and not yet left.
    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Bytes still due for the current file.
    pub fn file_left(&self) -> u64 {
        self.left
    }

    /// Bytes of file data announced so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `CopyEnd` has come.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Checks the next message of the stream; an error leaves the checker
    /// failed for good (the receiver stops there).
    pub fn check(&mut self, m: &Message) -> Result<(), Error> {
        let r = self.step(m);
        if r.is_err() {
            // Nothing more is taken once the stream broke its shape.
            self.ended = true;
        }
        r
    }

    fn step(&mut self, m: &Message) -> Result<(), Error> {
        if self.ended {
            return Err(Error::AfterEnd(m.kind()));
        }
        if self.left > 0 {
            let Message::Data { data } = m else {
                return Err(Error::CutShort { left: self.left });
            };
            let n = data.len() as u64;
            if n > self.left {
                return Err(Error::Overrun {
                    extra: n - self.left,
                });
            }
            self.left -= n;
            self.settle();
            return Ok(());
        }
        match m {
            Message::Entry(e) => {
                if self.complete {
                    return Err(Error::Unexpected(m.kind()));
                }
                if self.entries >= self.limits.entries {
                    return Err(Error::TooManyEntries {
                        max: self.limits.entries,
                    });
                }
                let top = !self.started;
                match e.kind {
                    EntryKind::Skipped if top => return Err(Error::SkippedTop),
                    EntryKind::Dir if self.depth >= MAX_DEPTH => return Err(Error::TooDeep),
                    EntryKind::Dir => self.depth += 1,
                    EntryKind::File => {
                        if e.size > self.limits.bytes - self.bytes {
                            return Err(Error::TooLarge {
                                size: e.size,
                                limit: self.limits.bytes,
                            });
                        }
                        self.bytes += e.size;
                        self.left = e.size;
                    }
                    EntryKind::Symlink | EntryKind::Skipped => {}
                }
                self.entries += 1;
                self.started = true;
                self.settle();
                Ok(())
            }
            Message::Up if self.depth > 0 => {
                self.depth -= 1;
                self.settle();
                Ok(())
            }
            Message::CopyEnd if self.complete => {
                self.ended = true;
                Ok(())
            }
            Message::CopyEnd => Err(Error::Incomplete),
            _ => Err(Error::Unexpected(m.kind())),
        }
    }

    /// The top entry is complete when nothing is open and nothing is due.
    fn settle(&mut self) {
        if self.started && self.depth == 0 && self.left == 0 {
            self.complete = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Entry, Time};

    fn entry(kind: EntryKind, size: u64) -> Message {
        Message::Entry(Entry {
            kind,
            mode: match kind {
                EntryKind::Skipped => libc::S_IFIFO,
                _ => 0o644,
            },
            atime: Time::default(),
            mtime: Time::default(),
            size,
            name: b"n".to_vec(),
            target: if kind == EntryKind::Symlink {
                b"t".to_vec()
            } else {
                Vec::new()
            },
        })
    }

    fn data(n: usize) -> Message {
        Message::Data { data: vec![7; n] }
    }

    fn run(limits: Limits, stream: &[Message]) -> Result<Tree, (usize, Error)> {
        let mut t = Tree::new(limits);
        for (i, m) in stream.iter().enumerate() {
            t.check(m).map_err(|e| (i, e))?;
        }
        Ok(t)
    }

    #[test]
    fn good_trees_are_taken() {
        use EntryKind::*;
        let l = Limits::default();
        let t = run(l, &[entry(File, 0), Message::CopyEnd]);
        assert!(t.is_ok_and(|t| t.ended()));
        let t = run(
            l,
            &[entry(File, 5), data(2), data(0), data(3), Message::CopyEnd],
        );
        assert!(t.is_ok_and(|t| t.bytes() == 5));
        assert!(run(l, &[entry(Symlink, 0), Message::CopyEnd]).is_ok());
        let tree = [
            entry(Dir, 0),
            entry(File, 1),
            data(1),
            entry(Skipped, 0),
            entry(Dir, 0),
            entry(Symlink, 0),
            Message::Up,
            entry(Dir, 0),
            Message::Up,
            Message::Up,
            Message::CopyEnd,
        ];
        assert!(run(l, &tree).is_ok());
    }

    #[test]
    fn broken_shapes_are_refused_where_they_break() {
        use EntryKind::*;
        let l = Limits::default();
        let cases: Vec<(Vec<Message>, usize, Error)> = vec![
            (vec![Message::CopyEnd], 0, Error::Incomplete),
            (vec![data(1)], 0, Error::Unexpected(Kind::Data)),
            (vec![Message::Up], 0, Error::Unexpected(Kind::Up)),
            (vec![entry(Skipped, 0)], 0, Error::SkippedTop),
            (
                vec![entry(File, 2), data(3)],
                1,
                Error::Overrun { extra: 1 },
            ),
            (
                vec![entry(File, 2), data(1), entry(File, 0)],
                2,
                Error::CutShort { left: 1 },
            ),
            (
                vec![entry(File, 2), data(1), Message::CopyEnd],
                2,
                Error::CutShort { left: 1 },
            ),
            (
                vec![entry(File, 0), entry(File, 0)],
                1,
                Error::Unexpected(Kind::Entry),
            ),
            (
                vec![entry(Dir, 0), Message::Up, Message::Up],
                2,
                Error::Unexpected(Kind::Up),
            ),
            (vec![entry(Dir, 0), Message::CopyEnd], 1, Error::Incomplete),
            (
                vec![entry(File, 0), Message::CopyEnd, Message::CopyEnd],
                2,
                Error::AfterEnd(Kind::CopyEnd),
            ),
            (
                vec![entry(Dir, 0), Message::CopyReady],
                1,
                Error::Unexpected(Kind::CopyReady),
            ),
            (
                vec![
                    entry(Dir, 0),
                    Message::Failed {
                        id: 0,
                        message: "x".into(),
                    },
                ],
                1,
                Error::Unexpected(Kind::Failed),
            ),
        ];
        for (stream, at, want) in cases {
            match run(l, &stream) {
                Err((i, e)) => assert_eq!((i, &e), (at, &want), "{stream:?}"),
                Ok(_) => panic!("taken: {stream:?}"),
            }
        }
        // Once failed, nothing more is taken.
        let mut t = Tree::new(l);
        assert!(t.check(&Message::Up).is_err());
        assert!(t.check(&entry(File, 0)).is_err());
    }

    #[test]
    fn limits_stop_big_deep_and_endless_streams() {
        use EntryKind::*;
        let small = Limits {
            bytes: 10,
            entries: 4,
        };
        // A size is refused from its entry, before any data.
        assert_eq!(
            run(
                small,
                &[entry(Dir, 0), entry(File, 6), data(6), entry(File, 5)]
            )
            .err(),
            Some((3, Error::TooLarge { size: 5, limit: 10 }))
        );
        assert!(matches!(
            run(small, &[entry(File, u64::MAX)]),
            Err((0, Error::TooLarge { .. }))
        ));
        // Endless empty directories, or skipped entries, meet the count.
        let mut endless = vec![entry(Dir, 0)];
        for _ in 0..10 {
            endless.push(entry(Dir, 0));
            endless.push(Message::Up);
        }
        assert_eq!(
            run(small, &endless).err(),
            Some((7, Error::TooManyEntries { max: 4 }))
        );
        // Depth: MAX_DEPTH directories nest, one more does not.
        let deep: Vec<Message> = (0..=MAX_DEPTH).map(|_| entry(Dir, 0)).collect();
        assert_eq!(
            run(Limits::default(), &deep).err(),
            Some((MAX_DEPTH, Error::TooDeep))
        );
        let mut ok: Vec<Message> = (0..MAX_DEPTH).map(|_| entry(Dir, 0)).collect();
        ok.extend((0..MAX_DEPTH).map(|_| Message::Up));
        ok.push(Message::CopyEnd);
        assert!(run(Limits::default(), &ok).is_ok());
    }
}
