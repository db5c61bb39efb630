//! SIGHUP: the real daemon reads its configuration and certificates again without
//! dropping its watcher or refusing requests; a broken configuration is refused and the
//! running one stays.

use std::time::Duration;

use crate::common::*;
use gosyncd::group::LocalGroup;

const WAIT: Duration = Duration::from_secs(10);

async fn arrives(group: &LocalGroup, logical: &str, bytes: &[u8]) {
    eventually(&format!("{logical} on node 1"), WAIT, || {
        holds(&group.nodes[1], logical, bytes)
    })
    .await;
}

fn hangup(daemon: &DaemonProcess) {
    let pid = rustix::process::Pid::from_raw(daemon.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

/// Waits until `text` has been logged `count` times.
async fn logged(daemon: &DaemonProcess, text: &str, count: usize) {
    eventually(&format!("{text:?} logged {count} times"), WAIT, || {
        let log = daemon.log();
        (log.matches(text).count() >= count)
            .then_some(())
            .ok_or(log)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_good_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let mut group = built_watching(2).await;
    group.restart(1).await.unwrap();
    group.release(0);
    let config_path = group.nodes[0].config_path.clone();
    let original = std::fs::read_to_string(&config_path).unwrap();
    // systemd's notify socket, as `Type=notify` gives it.
    let socket_path = group.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let mut daemon = DaemonProcess::spawn_with(
        "env",
        &[format!("NOTIFY_SOCKET={}", socket_path.display())],
        &config_path,
        group.path().join("node1.log"),
    );
    let probe = peer_as(&group.nodes[1], group.nodes[0].addr);
    daemon.wait_ready(&probe).await;
    let said = |notify: &std::os::unix::net::UnixDatagram| {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(
        said(&notify).contains("READY=1"),
        "ready once serving and watching"
    );
    write(&group.nodes[0], "/etc/app/before.cfg", "before\n");
    arrives(&group, "/etc/app/before.cfg", b"before\n").await;

    // A broken file: refused, named, and the daemon serves and watches as before.
    std::fs::write(
        &config_path,
        original.replace("remotes = [", "remotes = [ oops"),
    )
    .unwrap();
    hangup(&daemon);
    logged(
        &daemon,
        "reload refused, the running configuration stays",
        1,
    )
    .await;
    assert!(
        daemon.log().contains(&config_path.display().to_string()),
        "{}",
        daemon.log()
    );
    probe.identity().await.expect("still serving");
    write(
        &group.nodes[0],
        "/etc/app/after-refusal.cfg",
        "still watched\n",
    );
    arrives(&group, "/etc/app/after-refusal.cfg", b"still watched\n").await;

    // A good one with a new setting: taken, and the watcher still pushes.
    let metrics = std::net::SocketAddr::new(address(), 19106);
    std::fs::write(
        &config_path,
        format!("metrics_address = \"{metrics}\"\n{original}"),
    )
    .unwrap();
    hangup(&daemon);
    logged(&daemon, "configuration and certificates reloaded", 1).await;
    // Each SIGHUP: RELOADING, then READY again (refused or not).
    let notes: Vec<String> = (0..4).map(|_| said(&notify)).collect();
    let expected = ["RELOADING=1", "READY=1", "RELOADING=1", "READY=1"];
    for (note, wanted) in notes.iter().zip(expected) {
        assert!(note.contains(wanted), "{notes:?}");
    }
    // The unit's status line says what became of each reload.
    assert!(
        notes[1].contains("STATUS=reload refused, the running configuration stays")
            && notes[1].contains(&config_path.display().to_string()),
        "{notes:?}"
    );
    assert!(notes[3].contains("STATUS=reloaded at"), "{notes:?}");
    assert!(scrape(metrics)
        .await
        .contains("gosyncd_apply_requests_total"));

    // Reloaded again with the same metrics_address: the endpoint is handed over, not
    // bound a second time (which failed with "Address already in use").
    hangup(&daemon);
    logged(&daemon, "configuration and certificates reloaded", 2).await;
    assert!(said(&notify).contains("RELOADING=1"));
    assert!(said(&notify).contains("STATUS=reloaded at"));
    assert!(scrape(metrics)
        .await
        .contains("gosyncd_apply_requests_total"));
    // And with another one: served there, no longer at the old one.
    let moved = std::net::SocketAddr::new(metrics.ip(), 19107);
    std::fs::write(
        &config_path,
        format!("metrics_address = \"{moved}\"\n{original}"),
    )
    .unwrap();
    hangup(&daemon);
    logged(&daemon, "configuration and certificates reloaded", 3).await;
    assert!(said(&notify).contains("RELOADING=1"));
    assert!(said(&notify).contains("STATUS=reloaded at"));
    assert!(scrape(moved).await.contains("gosyncd_apply_requests_total"));
    assert!(tokio::net::TcpStream::connect(metrics).await.is_err());
    assert_eq!(
        daemon.log().matches("reload refused").count(),
        1,
        "only the broken file was refused:\n{}",
        daemon.log()
    );
    probe.identity().await.expect("serving after the reload");
    write(
        &group.nodes[0],
        "/etc/app/after-reload.cfg",
        "watched by the new one\n",
    );
    arrives(
        &group,
        "/etc/app/after-reload.cfg",
        b"watched by the new one\n",
    )
    .await;
    assert!(
        !daemon.log().contains("stopping anyway"),
        "{}",
        daemon.log()
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_waiting_for_a_stopped_peer_survive_a_reload() {
    let (mut group, _, daemon) = watching_pair_with_node_1_as_a_binary().await;

    // Node 1 is down: the save waits in node 0's memory.
    write(
        &group.nodes[0],
        "/etc/app/waiting.cfg",
        "saved while node 1 was down\n",
    );
    logged(&daemon, "peer unreachable, changes kept in the spool", 1).await;

    hangup(&daemon);
    logged(&daemon, "configuration and certificates reloaded", 1).await;
    group.restart(1).await.unwrap();
    // The new daemon got the waiting change and retries it: node 1 catches up.
    eventually_showing(
        "the waiting change on node 1 after the reload",
        Duration::from_secs(20),
        || {
            holds(
                &group.nodes[1],
                "/etc/app/waiting.cfg",
                "saved while node 1 was down\n",
            )
        },
        || daemon.log(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_makes_a_node_receive_only_pushes_none_of_the_changes_that_waited() {
    let (mut group, config_path, daemon) = watching_pair_with_node_1_as_a_binary().await;
    let file = "/etc/app/waiting.cfg";
    write(&group.nodes[0], file, "saved while node 1 was down\n");
    logged(&daemon, "peer unreachable, changes kept in the spool", 1).await;

    // The node is made receive-only while the change waits for node 1.
    let text = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, format!("role = \"receive-only\"\n{text}")).unwrap();
    hangup(&daemon);
    logged(&daemon, "configuration and certificates reloaded", 1).await;
    logged(
        &daemon,
        "this node is receive-only now: the changes waiting for this peer are not pushed",
        1,
    )
    .await;
    let spool = group.nodes[0].config.state_directory.join("outbox.json");
    assert!(!spool.exists(), "the spool still holds the waiting change");

    group.restart(1).await.unwrap();
    let (n0, n1) = (&group.nodes[0], &group.nodes[1]);
    let probe = peer_as(n1, n0.addr);
    eventually_async(
        "the waiting change reported as a local edit not pushed, and as drift",
        WAIT,
        || async {
            let status = probe.status().await.map_err(|e| e.to_string())?;
            let reported = status.role == gosyncd::protocol::Role::ReceiveOnly
                && status.local_edits == [file]
                && status
                    .peers
                    .iter()
                    .all(|p| p.drift == [file] && p.pending == 0);
            match reported {
                true => Ok(()),
                false => Err(format!("{status:#?}\n{}", daemon.log())),
            }
        },
    )
    .await;
    holds_for_quiet_period(&group, "the waiting change is not pushed", || {
        !exists(n1, file) && counters(n1).apply_requests == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_daemon_applies_batches_one_at_a_time_with_the_one_it_replaces() {
    // While a reload runs both daemons, a batch received by one and a batch received by
    // the other (or the new watcher's scan) are never written at the same time.
    let mut group = LocalGroup::build(&spec(1)).await.unwrap();
    group.release(0);
    let config = group.nodes[0].config.clone();
    let ip = group.nodes[0].addr.ip();
    let listener = || async { tokio::net::TcpListener::bind((ip, 0)).await.unwrap() };
    let previous = gosyncd::daemon::Daemon::start(config.clone(), listener().await, false)
        .await
        .unwrap();
    let next = gosyncd::daemon::Daemon::start_with(
        config.clone(),
        listener().await,
        false,
        Some(&previous),
    )
    .await
    .unwrap();
    let unrelated = gosyncd::daemon::Daemon::start(config, listener().await, false)
        .await
        .unwrap();

    let applying = previous.node.hold_applies().await;
    // Another daemon of the same config is not held back: the hold itself is no proof.
    tokio::time::timeout(WAIT, unrelated.node.hold_applies())
        .await
        .expect("an unrelated daemon waits for another's applies");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), next.node.hold_applies())
            .await
            .is_err(),
        "the reloaded daemon wrote while the previous one applied a batch"
    );
    drop(applying);
    tokio::time::timeout(WAIT, next.node.hold_applies())
        .await
        .expect("the reloaded daemon applies once the previous one is done");
    for daemon in [previous, next, unrelated] {
        daemon.stop().await;
    }
}

/// Two watching nodes, the first run as the real binary (so that it can be sent
/// SIGHUP), listening and watching: the group, its configuration file and the daemon.
async fn watching_pair_with_node_1_as_a_binary() -> (LocalGroup, std::path::PathBuf, DaemonProcess)
{
    let mut group = built_watching(2).await;
    group.release(0);
    let config_path = group.nodes[0].config_path.clone();
    let daemon = DaemonProcess::spawn(&config_path, group.path().join("node1.log"));
    logged(&daemon, "listening and watching", 1).await;
    (group, config_path, daemon)
}
