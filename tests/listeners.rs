//! Several listeners at once (TCP on IPv4 and IPv6, a Unix domain socket), each handed over on
//! upgrade.

mod support;

use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::process::Signal;
use support::*;

fn pid_over_unix(path: &Path) -> u32 {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    pid_answering_on(&mut stream)
}

fn pid_over_v6(port: u16) -> u32 {
    let mut stream = std::net::TcpStream::connect(("::1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    pid_answering_on(&mut stream)
}

#[test]
fn tcp_and_unix_listeners_are_all_handed_over_and_the_socket_path_stays() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hello.sock");
    // A stale socket file, as a crashed run leaves it, is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--unix",
        socket.to_str().unwrap(),
    ]);
    let port = server.port();
    server.wait_for(&["replacing a stale socket file"]);
    let first = server.first_pid();
    assert_eq!(pid_over_unix(&socket), first);
    assert_eq!(pid_answering(port), first);

    signal(first, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    // Each process writes its log from a thread of its own, so the lines of two processes may
    // come in any order; those of one come in order, and "server started" is after the rest.
    server.wait_for_pid("server started", new);
    assert_eq!(
        server.count(&["listener adopted"]),
        2,
        "both listeners were handed over"
    );
    eventually("the old process exits", || {
        is_gone(first) || state(first) == Some('Z')
    });
    assert!(
        socket.exists(),
        "the old process must not unlink a path it handed over"
    );
    assert_eq!(pid_over_unix(&socket), new);
    assert_eq!(pid_answering(port), new);
}

#[test]
fn a_unix_path_removed_while_serving_is_recreated_by_the_next_generation() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("removed.sock");
    let server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--unix",
        socket.to_str().unwrap(),
    ]);
    let port = server.port();
    let first = server.first_pid();
    assert_eq!(pid_over_unix(&socket), first);
    std::fs::remove_file(&socket).unwrap();
    assert!(
        UnixStream::connect(&socket).is_err(),
        "nobody can connect once the path is gone"
    );

    signal(first, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    eventually("the new generation answers over TCP", || {
        pid_answering(port) == new
    });
    assert_eq!(
        pid_over_unix(&socket),
        new,
        "a fresh connection to the path reaches the new generation"
    );
    // Only a generation that adopts the socket can notice: the first one bound it.
    server.wait_for(&["WARN", "was removed", socket.to_str().unwrap()]);
}

#[test]
fn a_unix_path_in_use_by_a_live_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("busy.sock");
    let _live = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let mut server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--unix",
        socket.to_str().unwrap(),
    ]);
    assert!(!server.wait_first_exit().success());
    server.wait_for(&["cannot listen on", "busy.sock", "in use"]);
}

#[test]
fn ipv6_listener_is_handed_over() {
    let server = Hello::start(&["-h", "::1", "-p", "0"]);
    let port = server.port_of("[::1]:");
    let first = server.first_pid();
    assert_eq!(pid_over_v6(port), first);
    signal(first, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    eventually("the old process exits", || {
        is_gone(first) || state(first) == Some('Z')
    });
    assert_eq!(pid_over_v6(port), new);
}
