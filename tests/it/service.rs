//! Running as a service: what the daemon tells systemd and the journal. Its log lines
//! carry their priority for the journal, its exit status says whether a restart can
//! help, and a configured directory it cannot write stops it with the fix named.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use gosyncd::group::{GroupSpec, LocalGroup};

/// A group of two nodes whose daemons are not started.
async fn built() -> LocalGroup {
    LocalGroup::build(&spec(2)).await.unwrap()
}

/// Runs the binary with `args` and `env`, its stderr into `log`; its exit code and log.
fn run_logged(args: &[&std::ffi::OsStr], env: &[(&str, String)], log: &Path) -> (i32, String) {
    let file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_gosyncd"));
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("JOURNAL_STREAM")
        .env_remove("INVOCATION_ID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    for (key, value) in env {
        command.env(key, value);
    }
    let status = command.status().unwrap();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(log).unwrap(),
    )
}

/// `JOURNAL_STREAM` as systemd sets it for a stream that is the file at `path`.
fn journal_stream(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Whether a line holds a time stamp such as `2026-12-02T06:40:53.123Z`.
fn has_time_stamp(line: &str) -> bool {
    line.as_bytes().windows(11).any(|w| {
        w[..4].iter().all(u8::is_ascii_digit) && w[4] == b'-' && w[7] == b'-' && w[10] == b'T'
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_their_priority_for_the_journal_and_no_time_stamp() {
    let mut group = built().await;
    // Node 1 is down (nothing listens): the sync fails, which is a warning.
    group.release(1);
    let config = group.nodes[0].config_path.clone();
    let args = config_args(&config, &["sync"]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let log = group.path().join("journal.log");
    std::fs::write(&log, "").unwrap();
    let stream = journal_stream(&log);
    let (code, journal) = run_logged(&args, &[("JOURNAL_STREAM", stream)], &log);
    assert_eq!(code, 2, "{journal}");
    let lines: Vec<&str> = journal.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(p, _)| p);
        assert!(
            priority.is_some_and(|p| p.len() == 1 && p.as_bytes()[0].is_ascii_digit()),
            "no priority prefix: {line}"
        );
        assert!(!has_time_stamp(line), "a time stamp of our own: {line}");
        assert!(
            !line.contains(" WARN ") && !line.contains(" INFO "),
            "the level twice: {line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("sync finished with failures")),
        "{journal}"
    );

    // The same run with stderr elsewhere (a command that inherited the variable, or no
    // journal at all): the usual lines, with their time and level.
    let other = group.path().join("other.log");
    for env in [
        vec![],
        vec![("JOURNAL_STREAM", journal_stream(&log))], // another file's stream
    ] {
        let (code, text) = run_logged(&args, &env, &other);
        assert_eq!(code, 2, "{text}");
        let warning = text
            .lines()
            .find(|l| l.contains("sync finished with failures"))
            .unwrap_or_else(|| panic!("{text}"));
        assert!(
            warning.contains("WARN") && has_time_stamp(warning) && !warning.starts_with('<'),
            "{warning}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_configuration_exits_2_and_a_daemon_that_cannot_listen_exits_1() {
    // The group holds node 0's address: the real daemon cannot listen there.
    let group = built().await;
    let config = group.nodes[0].config_path.clone();
    let args = config_args(&config, &[]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let log = group.path().join("daemon.log");
    let (code, text) = run_logged(&args, &[], &log);
    assert_eq!(code, 1, "a restart may help: {text}");
    assert!(text.contains("cannot listen"), "{text}");

    let broken = group.path().join("broken.hcl");
    std::fs::write(&broken, "bind_address = \n").unwrap();
    let args = config_args(&broken, &[]);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (code, text) = run_logged(&args, &[], &log);
    assert_eq!(code, 2, "a restart cannot help: {text}");
    assert!(text.contains(&broken.display().to_string()), "{text}");
}

/// Whether this process may make mount namespaces (root, `unshare`): says the test is
/// skipped if not.
fn can_unshare_mounts() -> bool {
    let ok = rustix::process::geteuid().is_root()
        && Command::new("unshare")
            .args(["--mount", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: needs root and unshare --mount");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_directory_kept_read_only_stops_the_daemon_with_the_line_to_add() {
    if !can_unshare_mounts() {
        return;
    }
    let mut group = built().await;
    group.release(0);
    let n0 = &group.nodes[0];
    let app = n0.path("/etc/app");
    std::fs::create_dir_all(&app).unwrap();
    let log = group.path().join("read-only.log");
    let file = std::fs::File::create(&log).unwrap();
    // As systemd's ReadOnlyPaths= or ProtectSystem=strict do: a read-only bind mount in
    // the daemon's own mount namespace.
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" -config "$3""#)
        .arg("sh")
        .arg(&app)
        .arg(env!("CARGO_BIN_EXE_gosyncd"))
        .arg(&n0.config_path)
        .env("INVOCATION_ID", "0123456789abcdef")
        .env("NO_COLOR", "1")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    for wanted in [
        "configured directory /etc/app".to_string(),
        "Read-only file system".to_string(),
        "systemctl edit gosyncd".to_string(),
        format!("ReadWritePaths={}", app.display()),
    ] {
        assert!(text.contains(&wanted), "{wanted:?} not in:\n{text}");
    }
    // Outside that namespace the directory is writable, and nothing was written in it.
    assert_eq!(std::fs::read_dir(&app).unwrap().count(), 0);

    // A configured directory that does not exist (its parent read-only, as /etc is under
    // the unit's sandbox) does not stop the daemon: it is watched once it appears.
    std::fs::remove_dir(&app).unwrap();
    let parent = app.parent().unwrap();
    let log = group.path().join("missing.log");
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec timeout 3 "$2" -config "$3""#)
        .arg("sh")
        .arg(parent)
        .arg(env!("CARGO_BIN_EXE_gosyncd"))
        .arg(&n0.config_path)
        .env("INVOCATION_ID", "0123456789abcdef")
        .env("NO_COLOR", "1")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(124), "it ran until stopped:\n{text}");
    assert!(text.contains("configured directory is missing"), "{text}");
}

/// Node 0's config with `bind_address` and `remotes` replaced.
fn placed(group: &LocalGroup, name: &str, bind: &str, remotes: &[String]) -> std::path::PathBuf {
    config_variant(group, 0, name, |text| {
        let text = with_remotes(&text, remotes);
        let start = text.find("bind_address = ").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        format!(
            "{}bind_address = \"{bind}\"{}",
            &text[..start],
            &text[end..]
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_with_no_peer_left_is_an_error_and_shared_machines_do_not_fool_self_detection() {
    let group = built().await;
    // A port nothing listens on, on two addresses of this machine.
    let ips = addresses(2);
    let port = std::net::TcpListener::bind((ips[0], 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (a, b) = (format!("{}:{port}", ips[0]), format!("{}:{port}", ips[1]));

    // Listening on every address (the README's `:8080`), with two nodes of this machine
    // in remotes: at most one of them is this node, so neither is taken for it by its
    // address alone. Both are tried (nothing listens: unreachable).
    let shared = placed(
        &group,
        "shared.hcl",
        &format!(":{port}"),
        &[a.clone(), b.clone()],
    );
    let run = gosyncd(config_args(&shared, &["sync", "-dry"])).await;
    assert_eq!(run.code, Some(2), "{run:#?}");
    for remote in [&a, &b] {
        assert!(
            run.stderr.contains(&format!(
                "unreachable: Connection refused (os error 111) peer={remote}"
            )),
            "{remote} not tried: {run:#?}"
        );
    }

    // Only this node in remotes: no peer left, which sync and status say, exiting 2.
    let alone = placed(&group, "alone.hcl", &a, std::slice::from_ref(&a));
    for command in [&["sync", "-dry"][..], &["status"][..]] {
        let run = gosyncd(config_args(&alone, command)).await;
        assert_eq!(run.code, Some(2), "{command:?}: {run:#?}");
        assert!(
            run.stderr.contains("no peer to sync with")
                && run.stderr.contains(&alone.display().to_string())
                && run.stderr.contains("bind_address"),
            "{command:?}: {run:#?}"
        );
    }
}

/// Whether this test can run gosyncd as nobody (root, and setpriv to drop to it); says
/// the test is skipped if not.
fn can_run_as_nobody(what: &str) -> bool {
    let can = rustix::process::geteuid().is_root()
        && Command::new("setpriv").arg("--version").output().is_ok();
    if !can {
        eprintln!("skipped: needs root and setpriv to run a {what} as another user");
    }
    can
}

/// Makes everything below `top` readable by nobody (directories 0755, files 0644) and,
/// with `own`, nobody's.
fn open_to_nobody(top: &Path, own: bool) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(top) {
        let entry = entry.unwrap();
        let mode = if entry.file_type().is_dir() {
            0o755
        } else {
            0o644
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        if own {
            std::os::unix::fs::chown(entry.path(), Some(65534), Some(65534)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_not_running_as_root_imposes_no_owner() {
    if !can_run_as_nobody("sender") {
        return;
    }
    let mut group = LocalGroup::start(&spec(2)).await.unwrap();
    group.stop(0).await;
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    write(n0, "/etc/app/a.cfg", "from node 0\n");
    write(n0, "/etc/app/new.cfg", "new\n");
    write(n1, "/etc/app/a.cfg", "old\n");
    for path in ["/etc/app", "/etc/app/a.cfg"] {
        std::os::unix::fs::chown(n1.path(path), Some(4321), Some(4321)).unwrap();
    }
    // The sender runs as nobody: it can read its config, keys and tree, no more.
    open_to_nobody(group.path(), false);
    let log = group.path().join("nobody.log");
    let status = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_gosyncd"))
        .args(config_args(&n0.config_path, &["sync"]))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    let printed = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(0), "{printed}");
    assert_eq!(read(n1, "/etc/app/a.cfg"), b"from node 0\n");
    let owner = |path: &str| {
        let meta = std::fs::metadata(n1.path(path)).unwrap();
        (meta.uid(), meta.gid())
    };
    // Replaced, the file keeps its owner; so does the configured directory; a new file
    // is the receiver's own, not the sender's user's.
    assert_eq!(owner("/etc/app/a.cfg"), (4321, 4321), "{printed}");
    assert_eq!(owner("/etc/app"), (4321, 4321), "{printed}");
    assert_eq!(owner("/etc/app/new.cfg"), (0, 0), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_not_running_as_root_watches_around_a_directory_it_cannot_read() {
    if !can_run_as_nobody("daemon") {
        return;
    }
    let mut group = LocalGroup::start(&GroupSpec {
        watch: true,
        ..spec(2)
    })
    .await
    .unwrap();
    group.stop(0).await;
    group.release(0);
    let n0 = &group.nodes[0];
    write(n0, "/etc/app/open/a.cfg", "readable\n");
    write(&group.nodes[1], "/etc/app/open/a.cfg", "readable\n");
    // Everything belongs to nobody, who runs node 0's daemon...
    open_to_nobody(group.path(), true);
    // ...but one directory, root's alone.
    let secret = n0.path("/etc/app/secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "root only\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();

    let mut daemon = DaemonProcess::spawn_with(
        "setpriv",
        &["--reuid=65534", "--regid=65534", "--clear-groups"],
        &n0.config_path,
        group.path().join("nobody-daemon.log"),
    );
    let probe = peer_as(&group.nodes[1], n0.addr);
    daemon.wait_ready(&probe).await;
    let log = daemon.log();
    assert!(
        log.contains("/etc/app/secret") && log.contains("Permission denied"),
        "the unreadable directory is named:\n{log}"
    );
    // The rest is watched: an edit beside it and one below another directory reach node 1.
    let n1 = &group.nodes[1];
    write(&group.nodes[0], "/etc/app/top.cfg", "saved\n");
    write(&group.nodes[0], "/etc/app/open/a.cfg", "saved too\n");
    eventually_showing(
        "both edits pushed",
        std::time::Duration::from_secs(10),
        || {
            holds(n1, "/etc/app/top.cfg", "saved\n")
                && holds(n1, "/etc/app/open/a.cfg", "saved too\n")
        },
        || daemon.log(),
    )
    .await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "{}",
        daemon.log()
    );
    assert!(!n1.path("/etc/app/secret/key").exists());
}
