//! systemd integration with real tools: socket activation through `systemd-socket-activate`, the
//! notify protocol on a real Unix datagram socket, and the pid file.

mod support;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Instant;

use rustix::process::Signal;
use support::*;

/// A free port below Linux's ephemeral range (32768 and up), so that servers other tests start
/// on port 0 cannot take it between this check and systemd-socket-activate's bind.
fn free_port() -> u16 {
    let seed = u64::from(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    (0..200)
        .map(|i| 20_000 + ((seed.wrapping_mul(7919) + nanos + i * 37) % 12_000) as u16)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port between 20000 and 32000")
}

/// `systemd-socket-activate` when it is installed (CI installs it and sets
/// `OCTOPUS_REQUIRE_SYSTEMD_TOOLS` so that it is required); otherwise the server is started the way
/// the tool starts it: the socket as fd 3, `LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` set to
/// the server's own pid by a shell that then execs it.
#[test]
fn socket_activated_listener_is_adopted_then_handed_over_on_upgrade() {
    let activate = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists());
    let hello = hello_binary();
    let (server, port, _socket) = match activate {
        Some(activate) => {
            let port = free_port();
            let address = format!("127.0.0.1:{port}");
            let server = Hello::start_program(
                activate,
                &[
                    "-l",
                    &address,
                    "--fdname=web",
                    hello.to_str().unwrap(),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ],
            );
            (server, port, None)
        }
        None => {
            assert!(
                std::env::var_os("OCTOPUS_REQUIRE_SYSTEMD_TOOLS").is_none(),
                "systemd-socket-activate is missing: apt-get install systemd (.ci/run does)"
            );
            eprintln!(
                "systemd-socket-activate is not installed: starting hello with the socket as fd 3 \
                 and LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES set as the tool sets them"
            );
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = socket.local_addr().unwrap().port();
            let setup = Setup {
                env: vec![
                    ("LISTEN_FDS".into(), "1".into()),
                    ("LISTEN_FDNAMES".into(), "web".into()),
                ],
                as_fd3: Some(socket.as_raw_fd()),
                ..Setup::default()
            };
            let server = Hello::start_with(
                Path::new("/bin/sh"),
                &[
                    "-c",
                    "LISTEN_PID=$$ exec \"$0\" \"$@\"",
                    hello.to_str().unwrap(),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ],
                &setup,
            );
            (server, port, Some(socket))
        }
    };
    // systemd-socket-activate starts the server on the first connection, which it then serves.
    let inode = eventually_listening(port);
    let first = pid_answering(port);
    server.wait_for(&["server started"]);
    let adopted = server.wait_for(&["listener adopted from systemd"]);
    assert!(adopted.contains("name=web"), "{adopted}");
    assert!(
        !server.log_text().contains("listener created"),
        "nothing is bound fresh"
    );

    signal(first, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    eventually("the socket-activated generation exits", || {
        is_gone(first) || state(first) == Some('Z')
    });
    assert_eq!(pid_answering(port), new);
    assert_eq!(
        listening_inode(port),
        vec![inode],
        "the systemd socket is handed over"
    );
    assert!(holds_socket(new, inode));
}

fn eventually_listening(port: u16) -> u64 {
    let mut inode = None;
    eventually("the activation socket listens", || {
        inode = listening_inode(port).first().copied();
        inode.is_some()
    });
    inode.unwrap()
}

/// Reads datagrams until one contains every needle, for at most `TIMEOUT`.
fn expect_notification(socket: &UnixDatagram, needles: &[&str], seen: &mut Vec<String>) -> String {
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(found) = seen.iter().find(|m| needles.iter().all(|n| m.contains(n))) {
            return found.clone();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no notification with {needles:?}; got {seen:?}"
        );
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn notify_protocol_follows_upgrades_rollbacks_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let bin = tempfile::tempdir().unwrap();
    let program = copy_of_hello(bin.path());
    let setup = Setup {
        env: vec![("NOTIFY_SOCKET".into(), socket_path.display().to_string())],
        ..Setup::default()
    };
    let server = Hello::start_with(&program, &["-h", "127.0.0.1", "-p", "0"], &setup);
    let port = server.port();
    let first = server.first_pid();
    let mut seen = Vec::new();
    expect_notification(
        &socket,
        &["READY=1", &format!("MAINPID={first}")],
        &mut seen,
    );

    // A failed upgrade: RELOADING=1, then READY=1 again with the reason, same main pid.
    std::fs::rename(&program, bin.path().join("hello-real")).unwrap();
    replace_with_script(&program, "#!/bin/sh\nexit 3\n");
    signal(first, Signal::HUP);
    let reloading = expect_notification(&socket, &["RELOADING=1"], &mut seen);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let rolled_back = expect_notification(&socket, &["READY=1", "upgrade failed"], &mut seen);
    assert!(!rolled_back.contains("MAINPID"), "{rolled_back}");

    // A good upgrade: MAINPID of the new process and READY=1.
    std::fs::rename(bin.path().join("hello-real"), &program).unwrap();
    seen.clear();
    signal(first, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    expect_notification(&socket, &["RELOADING=1"], &mut seen);
    expect_notification(&socket, &[&format!("MAINPID={new}"), "READY=1"], &mut seen);
    eventually("the old process exits", || {
        is_gone(first) || state(first) == Some('Z')
    });
    assert_eq!(pid_answering(port), new);

    signal(new, Signal::TERM);
    expect_notification(&socket, &["STOPPING=1"], &mut seen);
}

#[test]
fn pid_file_names_the_serving_process_across_upgrades_and_is_removed_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("hello.pid");
    let path = pid_file.to_str().unwrap();
    let server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--pid-file", path]);
    server.port();
    let first = server.first_pid();
    let read = || std::fs::read_to_string(&pid_file).unwrap_or_default();
    assert_eq!(read(), format!("{first}\n"));

    signal(first, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    assert_eq!(
        read(),
        format!("{new}\n"),
        "written before the old process hands over"
    );
    eventually("the old process exits", || {
        is_gone(first) || state(first) == Some('Z')
    });
    assert_eq!(
        read(),
        format!("{new}\n"),
        "the old process leaves its successor's pid file"
    );

    signal(new, Signal::TERM);
    eventually("the pid file is removed at shutdown", || !pid_file.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "no staging file is left: {leftovers:?}"
    );
}
