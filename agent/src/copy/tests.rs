use super::*;
use crate::message::MessageDecoder;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

type R = Result<(), Box<dyn std::error::Error>>;

fn at<'a>(fd: &'a OwnedFd, name: &'a OsStr) -> At<'a> {
    At {
        dir: fd.as_fd(),
        name,
    }
}

fn dir_fd(p: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        p,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

const KEEP: Policy = Policy {
    owner: None,
    mode_mask: 0o7777,
};
const HOST: Policy = Policy {
    owner: None,
    mode_mask: 0o1777,
};

/// A source tree: a/b/f (set-uid, an old mtime), a read-only a/ro/x, a
/// symlink out, a FIFO.
fn source(d: &Path) -> R {
    let src = d.join("src");
    std::fs::create_dir_all(src.join("a/b"))?;
    std::fs::create_dir_all(src.join("a/ro"))?;
    std::fs::write(src.join("a/b/f"), b"hello")?;
    std::fs::write(src.join("a/ro/x"), vec![9u8; 200_000])?;
    std::fs::set_permissions(src.join("a/ro"), std::fs::Permissions::from_mode(0o555))?;
    std::fs::set_permissions(src.join("a/b/f"), std::fs::Permissions::from_mode(0o4751))?;
    std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o710))?;
    std::os::unix::fs::symlink("/etc/passwd", src.join("link"))?;
    nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o644))?;
    let old = TimeSpec::new(1_000_000_000, 123);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &src.join("a/b/f"),
        &old,
        &old,
        UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

fn check_copy(dst: &Path, mask: u32) -> R {
    assert_eq!(std::fs::read(dst.join("a/b/f"))?, b"hello");
    let m = std::fs::metadata(dst.join("a/b/f"))?;
    assert_eq!(m.mode() & 0o7777, 0o4751 & mask);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_000_000_000, 123));
    assert_eq!(std::fs::metadata(dst.join("a"))?.mode() & 0o7777, 0o710);
    assert_eq!(std::fs::metadata(dst.join("a/ro"))?.mode() & 0o7777, 0o555);
    assert_eq!(std::fs::read(dst.join("a/ro/x"))?, vec![9u8; 200_000]);
    assert_eq!(
        std::fs::read_link(dst.join("link"))?,
        Path::new("/etc/passwd")
    );
    assert!(std::fs::symlink_metadata(dst.join("fifo")).is_err());
    Ok(())
}

/// The messages a walk of `src` sends (top entry named `top`).
fn stream_of(
    src: &At<'_>,
    top: Option<&OsStr>,
) -> Result<Vec<Message>, Box<dyn std::error::Error>> {
    let mut sink = StreamSink::new(Vec::new(), top, false);
    walk(src, Path::new("src"), &mut sink)?;
    let bytes = sink.finish()?;
    let mut d = MessageDecoder::new();
    let (mut rest, mut out) = (&bytes[..], Vec::new());
    while !rest.is_empty() {
        let took = d.feed(rest);
        rest = &rest[took..];
        while let Some(m) = d.next_message()? {
            out.push(m);
        }
    }
    assert_eq!(d.pending(), 0);
    Ok(out)
}

/// Receives `msgs` into `sink`.
fn apply(msgs: Vec<Message>, limits: Limits, sink: &mut dyn Sink) -> Result<(), Error> {
    let mut it = msgs.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| Error::Receive(std::io::ErrorKind::UnexpectedEof.into()))
    };
    receive(&mut next, limits, sink, Path::new("box:/src"))
}

#[test]
fn a_tree_is_copied_with_modes_times_and_symlinks() -> R {
    let d = tempfile::tempdir()?;
    source(d.path())?;
    let top = dir_fd(d.path())?;
    walk(
        &at(&top, OsStr::new("src")),
        &d.path().join("src"),
        &mut FsSink::new(&at(&top, OsStr::new("dst")), &d.path().join("dst"), HOST),
    )?;
    check_copy(&d.path().join("dst"), 0o1777)?;
    // Again, onto what is there: files replaced, directories merged.
    std::fs::write(d.path().join("src/a/b/f"), b"again")?;
    std::fs::write(d.path().join("dst/a/b/extra"), b"kept")?;
    walk(
        &at(&top, OsStr::new("src")),
        &d.path().join("src"),
        &mut FsSink::new(&at(&top, OsStr::new("dst")), &d.path().join("dst"), KEEP),
    )?;
    assert_eq!(std::fs::read(d.path().join("dst/a/b/f"))?, b"again");
    assert_eq!(std::fs::read(d.path().join("dst/a/b/extra"))?, b"kept");
    Ok(())
}

#[test]
fn a_walk_through_the_stream_writes_what_a_direct_copy_writes() -> R {
    let d = tempfile::tempdir()?;
    source(d.path())?;
    let top = dir_fd(d.path())?;
    let msgs = stream_of(&at(&top, OsStr::new("src")), Some(OsStr::new("renamed")))?;
    // The FIFO is named, not copied.
    assert!(msgs.iter().any(|m| matches!(m,
        Message::Entry(e) if e.kind == EntryKind::Skipped && e.mode == libc::S_IFIFO)));
    assert!(matches!(&msgs[0], Message::Entry(e) if e.name == b"renamed"));
    std::fs::create_dir(d.path().join("out"))?;
    let out = dir_fd(&d.path().join("out"))?;
    // Into a directory, under the name the top entry comes with.
    apply(
        msgs.clone(),
        Limits::default(),
        &mut FsSink::into_dir(out.as_fd(), &d.path().join("out"), HOST),
    )?;
    check_copy(&d.path().join("out/renamed"), 0o1777)?;
    // Or at a name the receiver chose.
    apply(
        msgs,
        Limits::default(),
        &mut FsSink::new(&at(&out, OsStr::new("mine")), Path::new("mine"), KEEP),
    )?;
    check_copy(&d.path().join("out/mine"), 0o7777)?;
    // A directory's contents (`SRC/.`): its top is the directory itself.
    let inner = dir_fd(&d.path().join("src/a"))?;
    let msgs = stream_of(&at(&inner, OsStr::new(".")), Some(OsStr::new("a")))?;
    let merged = d.path().join("merged");
    std::fs::create_dir(&merged)?;
    let m = dir_fd(&merged)?;
    apply(
        msgs,
        Limits::default(),
        &mut FsSink::new(&at(&m, OsStr::new(".")), &merged, KEEP),
    )?;
    assert_eq!(std::fs::read(merged.join("b/f"))?, b"hello");
    assert_eq!(std::fs::metadata(&merged)?.mode() & 0o7777, 0o710);
    Ok(())
}

#[test]
fn specials_are_refused_on_top_and_skipped_inside() -> R {
    let d = tempfile::tempdir()?;
    nix::unistd::mkfifo(&d.path().join("fifo"), Mode::from_bits_truncate(0o644))?;
    std::fs::create_dir(d.path().join("dir"))?;
    std::fs::write(d.path().join("file"), b"x")?;
    let top = dir_fd(d.path())?;
    let mut sink = FsSink::new(&at(&top, OsStr::new("out")), Path::new("out"), KEEP);
    let e = walk(&at(&top, OsStr::new("fifo")), Path::new("fifo"), &mut sink).expect_err("a fifo");
    assert!(e.to_string().contains("FIFO"), "{e}");
    assert!(!d.path().join("out").exists());
    let e = walk(
        &at(&top, OsStr::new("gone")),
        Path::new("box:/gone"),
        &mut sink,
    )
    .expect_err("missing");
    assert_eq!(e.to_string(), "box:/gone: no such file or directory");
    let mut sink = FsSink::new(&at(&top, OsStr::new("file")), Path::new("file"), KEEP);
    let e =
        walk(&at(&top, OsStr::new("dir")), Path::new("dir"), &mut sink).expect_err("dir onto file");
    assert!(matches!(e, Error::Mismatch(..)), "{e}");
    let mut sink = FsSink::new(&at(&top, OsStr::new("dir")), Path::new("dir"), KEEP);
    let e = walk(&at(&top, OsStr::new("file")), Path::new("file"), &mut sink)
        .expect_err("file onto dir");
    assert!(matches!(e, Error::Mismatch(..)), "{e}");
    Ok(())
}

fn meta() -> Meta {
    Meta {
        mode: 0o644,
        atime: Time::default(),
        mtime: Time {
            secs: 1_500_000_000,
            nanos: 0,
        },
    }
}

fn ent(kind: EntryKind, name: &[u8], size: u64, target: &[u8]) -> Message {
    Message::Entry(Entry {
        kind,
        mode: match kind {
            EntryKind::Skipped => libc::S_IFCHR,
            EntryKind::Dir => 0o755,
            _ => 0o4755,
        },
        atime: Time::default(),
        mtime: meta().mtime,
        size,
        name: name.to_vec(),
        target: target.to_vec(),
    })
}

fn data(b: &[u8]) -> Message {
    Message::Data { data: b.to_vec() }
}

/// A destination directory `dst` beside an `outside` one with a victim.
struct Hostile {
    _d: tempfile::TempDir,
    dst: PathBuf,
    outside: PathBuf,
}

impl Hostile {
    fn new() -> Result<Hostile, Box<dyn std::error::Error>> {
        let d = tempfile::tempdir()?;
        let dst = d.path().join("dst");
        let outside = d.path().join("outside");
        std::fs::create_dir(&dst)?;
        std::fs::create_dir(&outside)?;
        std::fs::write(outside.join("victim"), b"safe")?;
        Ok(Hostile {
            dst,
            outside,
            _d: d,
        })
    }

    fn apply(&self, msgs: Vec<Message>, limits: Limits) -> Result<(), Error> {
        let fd = dir_fd(&self.dst).map_err(sys("open", &self.dst))?;
        apply(
            msgs,
            limits,
            &mut FsSink::into_dir(fd.as_fd(), &self.dst, HOST),
        )
    }

    fn outside_untouched(&self) -> R {
        let names: Vec<_> = std::fs::read_dir(&self.outside)?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("victim")]);
        assert_eq!(std::fs::read(self.outside.join("victim"))?, b"safe");
        Ok(())
    }
}

#[test]
fn hostile_streams_stay_in_the_destination() -> R {
    use EntryKind::*;
    let h = Hostile::new()?;
    let out = h.outside.to_string_lossy().into_owned();
    let victim = h.outside.join("victim").to_string_lossy().into_owned();
    // A symlink out, then a directory and a file of the same name: the
    // directory is refused (a symlink is not entered), the file replaces
    // the symlink, never its target.
    let r = h.apply(
        vec![
            ent(Dir, b"top", 0, b""),
            ent(Symlink, b"esc", 0, out.as_bytes()),
            ent(Dir, b"esc", 0, b""),
            ent(File, b"victim", 4, b""),
            data(b"pwnd"),
            Message::Up,
            Message::Up,
            Message::CopyEnd,
        ],
        Limits::default(),
    );
    assert!(matches!(r, Err(Error::Mismatch(..))), "{r:?}");
    h.outside_untouched()?;
    h.apply(
        vec![
            ent(Dir, b"top", 0, b""),
            ent(Symlink, b"v", 0, victim.as_bytes()),
            ent(File, b"v", 4, b""),
            data(b"pwnd"),
            Message::Up,
            Message::CopyEnd,
        ],
        Limits::default(),
    )?;
    h.outside_untouched()?;
    assert_eq!(std::fs::read(h.dst.join("top/v"))?, b"pwnd");
    // Set-id bits do not survive onto the host; a device is only named.
    let m = std::fs::metadata(h.dst.join("top/v"))?;
    assert_eq!(m.mode() & 0o7777, 0o755);
    h.apply(
        vec![
            ent(Dir, b"devs", 0, b""),
            ent(Skipped, b"sda", 0, b""),
            Message::Up,
            Message::CopyEnd,
        ],
        Limits::default(),
    )?;
    assert_eq!(std::fs::read_dir(h.dst.join("devs"))?.count(), 0);
    // A symlink the destination already had: a file replaces it, a
    // directory is refused.
    std::os::unix::fs::symlink(&h.outside, h.dst.join("planted"))?;
    let r = h.apply(
        vec![ent(Dir, b"planted", 0, b""), Message::Up, Message::CopyEnd],
        Limits::default(),
    );
    assert!(matches!(r, Err(Error::Mismatch(..))), "{r:?}");
    h.outside_untouched()?;
    // Names with a slash, `..`, or absolute ones never decode (the
    // message decoder refuses them), so they never reach a sink.
    for name in [&b"../x"[..], b"/etc/passwd", b"..", b"a/b"] {
        let mut bytes = Message::Entry(Entry {
            name: b"placeholder".to_vec(),
            ..match ent(File, b"x", 0, b"") {
                Message::Entry(e) => e,
                _ => unreachable!(),
            }
        })
        .encode()?;
        // Rewrite the name in place (its u16 length, then the bytes).
        let at = bytes.len() - 2 - 11;
        bytes.truncate(at - 2);
        bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&0u16.to_le_bytes());
        let len = (bytes.len() - frame::HEADER_LEN) as u32;
        bytes[8..12].copy_from_slice(&len.to_le_bytes());
        let mut d = MessageDecoder::new();
        d.feed(&bytes);
        assert!(
            matches!(d.next_message(), Err(message::Error::Name(_))),
            "{name:?}"
        );
    }
    Ok(())
}

#[test]
fn hostile_streams_meet_clear_limits() -> R {
    use EntryKind::*;
    let h = Hostile::new()?;
    let small = Limits {
        bytes: 1000,
        entries: 10,
    };
    // A huge size is refused at its entry, before anything is written.
    let e = h
        .apply(vec![ent(File, b"big", u64::MAX, b"")], small)
        .expect_err("too large");
    assert!(
        matches!(
            &e,
            Error::Stream {
                source: tree::Error::TooLarge { limit: 1000, .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!h.dst.join("big").exists());
    let chain = format!("{}: {}", e, std::error::Error::source(&e).ok_or("source")?);
    assert!(chain.contains("past its limit of 1000 bytes"), "{chain}");
    // More data than announced, and data cut short.
    let e = h
        .apply(vec![ent(File, b"f", 2, b""), data(b"abc")], small)
        .expect_err("overrun");
    assert!(
        matches!(
            e,
            Error::Stream {
                source: tree::Error::Overrun { extra: 1 },
                ..
            }
        ),
        "{e:?}"
    );
    let e = h
        .apply(
            vec![ent(File, b"f", 5, b""), data(b"ab"), Message::CopyEnd],
            small,
        )
        .expect_err("cut");
    assert!(
        matches!(
            e,
            Error::Stream {
                source: tree::Error::CutShort { left: 3 },
                ..
            }
        ),
        "{e:?}"
    );
    // An endless stream of directories meets the entry count.
    let mut endless = vec![ent(Dir, b"d", 0, b"")];
    for i in 0..100 {
        endless.push(ent(Dir, format!("e{i}").as_bytes(), 0, b""));
        endless.push(Message::Up);
    }
    let e = h.apply(endless, small).expect_err("endless");
    assert!(
        matches!(
            e,
            Error::Stream {
                source: tree::Error::TooManyEntries { max: 10 },
                ..
            }
        ),
        "{e:?}"
    );
    // A stream that just stops, or whose peer fails mid-file.
    let e = h
        .apply(vec![ent(File, b"f", 5, b""), data(b"ab")], small)
        .expect_err("eof");
    assert!(matches!(e, Error::Receive(_)), "{e:?}");
    let e = h
        .apply(
            vec![
                ent(File, b"f", 5, b""),
                Message::Failed {
                    id: 0,
                    message: "x".into(),
                },
            ],
            small,
        )
        .expect_err("failed");
    assert!(matches!(e, Error::Stream { .. }), "{e:?}");
    h.outside_untouched()?;
    Ok(())
}

#[test]
fn a_file_that_changes_size_sends_exactly_what_it_announced() -> R {
    let mut sink = StreamSink::new(Vec::new(), None, false);
    let mut grew: &[u8] = b"0123456789";
    sink.file(OsStr::new("f"), &meta(), 4, &mut grew, Path::new("f"))?;
    let mut shrank: &[u8] = b"ab";
    sink.file(OsStr::new("g"), &meta(), 5, &mut shrank, Path::new("g"))?;
    let bytes = sink.finish()?;
    let mut d = MessageDecoder::new();
    d.feed(&bytes);
    let mut datas = Vec::new();
    while let Some(m) = d.next_message()? {
        if let Message::Data { data } = m {
            datas.push(data);
        }
    }
    assert_eq!(datas, vec![b"0123".to_vec(), b"ab\0\0\0".to_vec()]);
    Ok(())
}

#[test]
fn names_in_messages_escape_control_characters() {
    let e = Error::NotFound(PathBuf::from("box:/a\x1b[2Jb"));
    assert_eq!(
        e.to_string(),
        "box:/a\\u{1b}[2Jb: no such file or directory"
    );
    assert_eq!(Error::Peer("x\ny".into()).to_string(), "x\\ny");
}
