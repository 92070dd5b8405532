//! End-to-end tests of volumes and `cp` in the container box (as root):
//! binds read-write (the host sees the box's writes, with the owner a
//! root, `-u 1000` and `--userns` box leave) and read-only (writes and a
//! remount fail), named volumes shared by boxes one after another and
//! kept after `rm`, `volume rm` refusing a volume in use, `volume prune`,
//! an image's (or a volume's) symlinks that try to take a bind onto the
//! host, `cp` both ways with modes and times (and `SRC/.` as contents),
//! `cp` confined to the box,
//! and no mount left on the host.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{code, host_mounts_of, stderr, stdout, Env};
use twinbox_images::testing::{docker_save_edited, tar_of_dir, Tar};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A store with busybox and `evil`: busybox plus `/data -> /etc`,
/// `/up -> ../../..` and `/abs -> ABS` (an absolute host path).
fn env_with(abs: &Path) -> Result<Env, Box<dyn std::error::Error>> {
    let env = Env::new();
    let out = env.run(&["image", "build-base"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let inspect = env.run(&["image", "inspect", "busybox"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    let rootfs = PathBuf::from(v["rootfs"].as_str().ok_or("rootfs")?);
    let base = tar_of_dir(&rootfs)?;
    let top = Tar::new()
        .symlink("data", "/etc")
        .symlink("up", "../../..")
        .symlink("abs", &abs.to_string_lossy())
        .finish();
    let dir = env.path().join("evil-image");
    std::fs::create_dir_all(&dir)?;
    docker_save_edited(&dir, &[base, top], "evil:latest", &|c| {
        c["config"] =
            serde_json::json!({"Cmd": ["sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]});
    })?;
    let tar = env.path().join("evil.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    assert!(st.success());
    let out = env.run(&["image", "import", tar.to_str().ok_or("path")?]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    Ok(env)
}

/// `twinbox ARGS` must succeed; its stdout, trimmed.
fn ok(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert_eq!(code(&out), 0, "twinbox {args:?}: {}", stderr(&out));
    stdout(&out).trim().to_string()
}

/// A foreground container run.
fn box_run(env: &Env, args: &[&str]) -> std::process::Output {
    let mut v = vec!["run", "--isolation", "container"];
    v.extend_from_slice(args);
    env.run(&v)
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Host mounts under `dir` or of the test's store: none may outlive a box.
fn leaked_mounts(env: &Env, dir: &Path) -> Vec<String> {
    let d = s(dir);
    let mut v = host_mounts_of(env);
    v.extend(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&d))
            .map(String::from),
    );
    v
}

/// Mount points in the host's mount table.
fn host_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .collect()
}

#[test]
fn binds_are_writable_or_read_only_and_owned_as_docker_leaves_them() -> TestResult {
    let work = tempfile::tempdir()?;
    let env = env_with(work.path())?;
    let host = work.path().join("host");
    std::fs::create_dir(&host)?;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777))?;
    let bind = format!("{}:/data/in/box", s(&host));

    // Read-write: the box writes, the host sees it, owned by root.
    let out = box_run(
        &env,
        &[
            "-v",
            &bind,
            "busybox",
            "sh",
            "-c",
            "echo hi > /data/in/box/f",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(host.join("f"))?, "hi\n");
    let m = std::fs::metadata(host.join("f"))?;
    assert_eq!((m.uid(), m.gid()), (0, 0));
    // -u 1000 writes as 1000.
    let out = box_run(
        &env,
        &[
            "-u",
            "1000",
            "-v",
            &bind,
            "busybox",
            "sh",
            "-c",
            "echo u > /data/in/box/u",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::metadata(host.join("u"))?.uid(), 1000);
    // --userns: the box's root is the caller outside (root here).
    let out = box_run(
        &env,
        &[
            "--userns",
            "-v",
            &bind,
            "busybox",
            "sh",
            "-c",
            "echo n > /data/in/box/n",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(host.join("n"))?.uid(),
        nix::unistd::getuid().as_raw()
    );

    // Read-only: a write fails, a remount fails, the flags are on.
    for userns in [false, true] {
        let ro = format!("{}:/data/in/box:ro", s(&host));
        let mut args = vec!["-v", ro.as_str()];
        if userns {
            args.push("--userns");
        }
        args.extend_from_slice(&[
            "busybox",
            "sh",
            "-c",
            "grep ' /data/in/box ' /proc/self/mountinfo; \
             if echo x > /data/in/box/w; then echo WROTE; fi; \
             if mount -o remount,rw /data/in/box; then echo REMOUNTED; fi; \
             if echo x > /data/in/box/w2; then echo WROTE2; fi; true",
        ]);
        let out = box_run(&env, &args);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            !text.contains("WROTE") && !text.contains("REMOUNTED"),
            "{text}"
        );
        let opts = text.split(' ').nth(5).unwrap_or("");
        assert!(
            opts.starts_with("ro,") && opts.contains("nosuid") && opts.contains("nodev"),
            "{text}"
        );
        assert!(stderr(&out).contains("Read-only"), "{}", stderr(&out));
        assert!(!host.join("w").exists() && !host.join("w2").exists());
    }

    // A file as the source: the box sees it at a file path made for it.
    let file = work.path().join("conf");
    std::fs::write(&file, "setting=1\n")?;
    let out = box_run(
        &env,
        &[
            "-v",
            &format!("{}:/etc/app/conf:ro", s(&file)),
            "busybox",
            "cat",
            "/etc/app/conf",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "setting=1\n");

    // A missing host path is an error, not a new directory.
    let missing = work.path().join("missing");
    let out = box_run(
        &env,
        &["-v", &format!("{}:/x", s(&missing)), "busybox", "true"],
    );
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(!missing.exists());
    // Bad forms, in either box (a VM box refuses them before it looks
    // for a kernel: this store has none). VM volumes that work are tested
    // in tests/vm_linux.rs.
    for bad in ["./rel:/x", "/tmp:rel", "/tmp:/proc/x", "/tmp:/a/../b", "/x"] {
        let out = box_run(&env, &["-v", bad, "busybox", "true"]);
        assert_eq!(code(&out), 125, "{bad}");
        let out = env.run(&["run", "--isolation", "vm", "-v", bad, "busybox", "true"]);
        assert_eq!(code(&out), 125, "{bad}");
        assert!(!stderr(&out).contains("kernel"), "{bad}: {}", stderr(&out));
    }
    let out = env.run(&[
        "run",
        "--isolation",
        "vm",
        "-v",
        &format!("{}:/x", s(&missing)),
        "busybox",
        "true",
    ]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));

    assert_eq!(leaked_mounts(&env, work.path()), Vec::<String>::new());
    Ok(())
}

#[test]
fn named_volumes_outlive_boxes_and_are_not_removed_while_used() -> TestResult {
    let work = tempfile::tempdir()?;
    let env = env_with(work.path())?;
    // The first box writes; its record keeps the volume in use.
    let out = box_run(
        &env,
        &[
            "--name",
            "one",
            "-v",
            "shared:/v",
            "busybox",
            "sh",
            "-c",
            "echo from-one > /v/x",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(ok(&env, &["volume", "ls", "-q"]), "shared");
    let out = env.run(&["volume", "rm", "shared"]);
    assert_eq!(code(&out), 1);
    assert!(
        stderr(&out).contains("in use") && stderr(&out).contains("one"),
        "{}",
        stderr(&out)
    );
    // inspect shows Docker's Mounts.
    let v: serde_json::Value = serde_json::from_str(&ok(&env, &["inspect", "one"]))?;
    let m = &v[0]["Mounts"][0];
    assert_eq!(m["Type"], "volume");
    assert_eq!(m["Name"], "shared");
    assert_eq!(m["Destination"], "/v");
    assert_eq!(m["RW"], true);
    assert_eq!(
        m["Source"].as_str(),
        Some(s(&env.home().join("volumes/shared/_data")).as_str())
    );
    // rm -v keeps a named volume, as Docker does.
    ok(&env, &["rm", "-v", "one"]);
    // The second box, read-only, sees what the first wrote.
    let out = box_run(
        &env,
        &[
            "--name",
            "two",
            "-v",
            "shared:/v:ro",
            "busybox",
            "sh",
            "-c",
            "cat /v/x; echo y > /v/y",
        ],
    );
    assert_eq!(stdout(&out), "from-one\n", "{}", stderr(&out));
    assert_ne!(code(&out), 0);
    ok(&env, &["rm", "two"]);

    // volume create, inspect, and a random name.
    ok(&env, &["volume", "create", "spare"]);
    let anon = ok(&env, &["volume", "create"]);
    assert!(
        anon.len() == 64 && anon.bytes().all(|b| b.is_ascii_hexdigit()),
        "{anon}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&env, &["volume", "inspect", "shared", "spare"]))?;
    assert_eq!(v[0]["Name"], "shared");
    assert_eq!(v[0]["Driver"], "local");
    assert!(v[1]["CreatedAt"].as_str().is_some_and(|t| t.len() > 10));
    assert_eq!(
        v[0]["Mountpoint"].as_str(),
        Some(s(&env.home().join("volumes/shared/_data")).as_str())
    );
    assert_eq!(code(&env.run(&["volume", "inspect", "nope"])), 1);
    assert_eq!(code(&env.run(&["volume", "create", "bad/name"])), 125);

    // prune: what no box uses goes (with its size), the rest stays.
    ok(
        &env,
        &[
            "create",
            "--name",
            "keeper",
            "--isolation",
            "container",
            "-v",
            "kept:/k",
            "busybox",
            "true",
        ],
    );
    std::fs::write(
        env.home().join("volumes/spare/_data/blob"),
        vec![7u8; 3 << 20],
    )?;
    let out = ok(&env, &["volume", "prune", "-f"]);
    assert!(out.contains("Deleted Volumes:"), "{out}");
    assert!(
        out.contains("shared") && out.contains("spare") && out.contains(&anon),
        "{out}"
    );
    assert!(out.contains("Total reclaimed space: 3"), "{out}");
    assert_eq!(ok(&env, &["volume", "ls", "-q"]), "kept");
    let out = env.run(&["volume", "rm", "kept"]);
    assert!(stderr(&out).contains("keeper"), "{}", stderr(&out));
    ok(&env, &["rm", "keeper"]);
    ok(&env, &["volume", "rm", "kept"]);
    assert_eq!(ok(&env, &["volume", "ls", "-q"]), "");
    assert_eq!(code(&env.run(&["volume", "rm", "kept"])), 1);
    ok(&env, &["volume", "rm", "-f", "kept"]);
    assert_eq!(leaked_mounts(&env, work.path()), Vec::<String>::new());
    Ok(())
}

#[test]
fn symlinks_in_the_image_or_a_volume_never_take_a_bind_onto_the_host() -> TestResult {
    let work = tempfile::tempdir()?;
    let abs = work.path().join("abs-target");
    std::fs::create_dir(&abs)?;
    let env = env_with(&abs)?;
    let host = work.path().join("host");
    std::fs::create_dir(&host)?;
    let marker = format!("twinbox-marker-{}", std::process::id());
    std::fs::write(host.join(&marker), "inside\n")?;
    let before = host_mount_points();

    // /data -> /etc: the box's /etc is covered, never the host's.
    let out = box_run(
        &env,
        &[
            "-v",
            &format!("{}:/data:ro", s(&host)),
            "evil",
            "sh",
            "-c",
            &format!("cat /etc/{marker}; grep -c ' /etc ' /proc/self/mountinfo"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "inside\n1\n");
    assert!(!Path::new("/etc").join(&marker).exists());

    // /up -> ../../..: under it a directory inside the box; itself, the
    // box's root, refused.
    let out = box_run(
        &env,
        &[
            "-v",
            &format!("{}:/up/up/made", s(&host)),
            "evil",
            "cat",
            &format!("/made/{marker}"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // The box's setup fails before it waits for the launcher, which then
    // finds it gone: its reason must still be the one given, every time.
    for _ in 0..20 {
        let out = box_run(&env, &["-v", &format!("{}:/up", s(&host)), "evil", "true"]);
        assert_eq!(code(&out), 125);
        assert!(stderr(&out).contains("box's root"), "{}", stderr(&out));
    }

    // /abs -> a host path: resolved inside the box, where it is missing:
    // refused, and the host directory untouched.
    let out = box_run(
        &env,
        &["-v", &format!("{}:/abs/x", s(&host)), "evil", "true"],
    );
    assert_eq!(code(&out), 125, "{}", stdout(&out));
    assert_eq!(std::fs::read_dir(&abs)?.count(), 0);

    // A first box leaves symlinks in a named volume; a second box's bind
    // through them lands in its own root.
    let out = box_run(
        &env,
        &[
            "-v",
            "trap:/v",
            "busybox",
            "sh",
            "-c",
            "ln -s /etc /v/etc; ln -s ../../../../.. /v/up",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let sub = format!("sub-{marker}");
    let out = box_run(
        &env,
        &[
            "-v",
            "trap:/v",
            "-v",
            &format!("{}:/v/etc/{sub}", s(&host)),
            "-v",
            &format!("{}:/v/up/etc/{sub}2", s(&host)),
            "busybox",
            "sh",
            "-c",
            &format!("cat /etc/{sub}/{marker} /etc/{sub}2/{marker}"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "inside\ninside\n");
    assert!(!Path::new("/etc").join(&sub).exists());
    assert!(!Path::new("/etc").join(format!("{sub}2")).exists());
    // The volume's own data holds only the links.
    let mut names: Vec<String> = std::fs::read_dir(env.home().join("volumes/trap/_data"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["etc", "up"]);

    assert_eq!(
        std::fs::read_dir(&host)?.count(),
        1,
        "the host dir is untouched"
    );
    assert_eq!(host_mount_points(), before);
    assert_eq!(leaked_mounts(&env, work.path()), Vec::<String>::new());
    Ok(())
}

#[test]
fn cp_copies_both_ways_and_stays_inside_the_box() -> TestResult {
    let work = tempfile::tempdir()?;
    let env = env_with(work.path())?;
    ok(
        &env,
        &[
            "run",
            "-d",
            "--name",
            "c",
            "--isolation",
            "container",
            "evil",
            "sh",
            "-c",
            "echo box-only > /etc/box-only; mkfifo /tmp/fifo; mkdir -p /srv/t/d; \
                echo deep > /srv/t/d/f; chmod 0604 /srv/t/d/f; chmod 0711 /srv/t/d; \
                ln -s /etc/passwd /srv/t/l; exec sleep 1000",
        ],
    );
    let wait = std::time::Instant::now();
    while code(&env.run(&["exec", "c", "test", "-L", "/srv/t/l"])) != 0 {
        assert!(wait.elapsed().as_secs() < 10, "the box did not set up");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // Host to box: a file and a tree, modes and mtimes kept, root-owned.
    let src = work.path().join("src");
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::write(src.join("sub/file"), "payload\n")?;
    std::fs::set_permissions(src.join("sub/file"), std::fs::Permissions::from_mode(0o640))?;
    std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o750))?;
    let t = nix::sys::time::TimeSpec::new(1_234_567_890, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &src.join("sub/file"),
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    ok(&env, &["cp", &s(&src), "c:/tmp/"]);
    let got = ok(
        &env,
        &[
            "exec",
            "c",
            "stat",
            "-c",
            "%a %u %g %Y",
            "/tmp/src/sub/file",
            "/tmp/src/sub",
        ],
    );
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines[0], "640 0 0 1234567890", "{got}");
    assert!(lines[1].starts_with("750 0 0"), "{got}");
    assert_eq!(
        ok(&env, &["exec", "c", "cat", "/tmp/src/sub/file"]),
        "payload"
    );
    // To a new name.
    ok(&env, &["cp", &s(&src.join("sub/file")), "c:/tmp/renamed"]);
    assert_eq!(ok(&env, &["exec", "c", "cat", "/tmp/renamed"]), "payload");
    // A directory's contents (SRC/.) into an existing directory.
    ok(&env, &["exec", "c", "mkdir", "/tmp/merged"]);
    ok(&env, &["cp", &format!("{}/.", s(&src)), "c:/tmp/merged"]);
    assert_eq!(
        ok(&env, &["exec", "c", "cat", "/tmp/merged/sub/file"]),
        "payload"
    );

    // Box to host: a tree, modes kept, the symlink a symlink.
    let out_dir = work.path().join("out");
    ok(&env, &["cp", "c:/srv/t", &s(&out_dir)]);
    assert_eq!(std::fs::read_to_string(out_dir.join("d/f"))?, "deep\n");
    assert_eq!(
        std::fs::metadata(out_dir.join("d/f"))?.mode() & 0o7777,
        0o604
    );
    assert_eq!(std::fs::metadata(out_dir.join("d"))?.mode() & 0o7777, 0o711);
    assert_eq!(
        std::fs::read_link(out_dir.join("l"))?,
        Path::new("/etc/passwd")
    );
    // Into an existing directory: under its name; with /. its contents.
    ok(&env, &["cp", "c:/srv/t", &s(&out_dir)]);
    assert_eq!(std::fs::read_to_string(out_dir.join("t/d/f"))?, "deep\n");
    let merged = work.path().join("merged");
    std::fs::create_dir(&merged)?;
    ok(&env, &["cp", "c:/srv/t/.", &s(&merged)]);
    assert_eq!(std::fs::read_to_string(merged.join("d/f"))?, "deep\n");

    // Through /data -> /etc and /up -> ../../..: the box's /etc, not the
    // host's, both ways.
    let got = work.path().join("got");
    ok(&env, &["cp", "c:/data/box-only", &s(&got)]);
    assert_eq!(std::fs::read_to_string(&got)?, "box-only\n");
    std::fs::remove_file(&got)?;
    ok(&env, &["cp", "c:/up/up/etc/box-only", &s(&got)]);
    assert_eq!(std::fs::read_to_string(&got)?, "box-only\n");
    let name = format!("twinbox-cp-{}", std::process::id());
    let probe = work.path().join(&name);
    std::fs::write(&probe, "x\n")?;
    ok(&env, &["cp", &s(&probe), "c:/data/"]);
    ok(&env, &["cp", &s(&probe), "c:/up/etc/"]);
    assert!(!Path::new("/etc").join(&name).exists());
    assert_eq!(
        ok(&env, &["exec", "c", "cat", &format!("/etc/{name}")]),
        "x"
    );
    // /data itself is copied as the symlink it is.
    ok(&env, &["cp", "c:/data", &s(&work.path().join("link"))]);
    assert_eq!(
        std::fs::read_link(work.path().join("link"))?,
        Path::new("/etc")
    );

    // Refused: a FIFO, a device, '..' out, a missing path, two hosts.
    for (src, dst, want) in [
        ("c:/tmp/fifo", s(&work.path().join("f")), "FIFO"),
        ("c:/dev/zero", s(&work.path().join("z")), "device"),
        ("c:/a/../../etc/passwd", s(&work.path().join("p")), ".."),
        ("c:/nothing/here", s(&work.path().join("n")), "such"),
    ] {
        let out = env.run(&["cp", src, &dst]);
        assert_eq!(code(&out), 125, "{src}");
        assert!(stderr(&out).contains(want), "{src}: {}", stderr(&out));
        assert!(!Path::new(&dst).exists(), "{dst}");
    }
    assert_eq!(code(&env.run(&["cp", "/a", "/b"])), 125);

    // A stopped box: a clear error.
    ok(&env, &["stop", "-t", "0", "c"]);
    let out = env.run(&["cp", "c:/etc/hostname", &s(&work.path().join("h"))]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("not running"), "{}", stderr(&out));
    ok(&env, &["rm", "c"]);
    assert_eq!(leaked_mounts(&env, work.path()), Vec::<String>::new());
    Ok(())
}
