//! Upgrades relay idle keep-alive connections to the new process instead of closing them: no
//! close, so no request crossing a close, and a client never has to reconnect.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::*;

/// One keep-alive exchange on `stream`: the reply, with its head lower-cased.
fn exchange(stream: &mut (impl Read + Write), path: &str) -> Reply {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    reply(stream)
}

/// The reply to the request last written on `stream`, read to its length; the connection stays
/// open.
fn reply(stream: &mut impl Read) -> Reply {
    let mut raw = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).expect("a reply, not an error");
        assert!(n > 0, "the connection closed instead of answering");
        raw.extend_from_slice(&chunk[..n]);
        if let Ok(reply) = parse(&raw) {
            if reply.body.len() >= content_length(&reply.headers) {
                return reply;
            }
        }
    }
}

fn content_length(headers: &str) -> usize {
    headers
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// The pid answering `/pid` on the open connection `stream`, which stays open: the reply does
/// not ask the client to close.
fn pid_keeping_alive(stream: &mut (impl Read + Write)) -> u32 {
    let reply = exchange(stream, "/pid");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        !reply.headers.contains("connection: close"),
        "a keep-alive reply: {reply:?}"
    );
    reply.body.trim().parse().unwrap()
}

/// Whether the server closed `stream` (an end of stream waits to be read).
fn closed_by_server(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let closed = match stream.peek(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => panic!("bytes nobody asked for"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn an_idle_connection_outlives_the_old_process_and_a_request_sent_in_transit_is_answered() {
    let mut server = Hello::start(LOCAL);
    let port = server.port();
    let old = server.first_pid();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(pid_keeping_alive(&mut stream), old);

    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    // Frozen, the new process takes nothing off the channel: the connection is in transit, held
    // by no process's accept loop, when the old process exits and the request is sent.
    kill(new, Signal::STOP);
    assert!(server.wait_first_exit().success());
    assert!(is_gone(old) || state(old) == Some('Z'));
    assert!(
        !closed_by_server(&stream),
        "the old process exited without closing the connection"
    );
    write!(stream, "GET /pid HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    kill(new, Signal::CONT);
    let answer = reply(&mut stream);
    assert_eq!(answer.body.trim(), new.to_string(), "{answer:?}");
    // And the connection goes on as any other of the new process.
    assert_eq!(pid_keeping_alive(&mut stream), new);
    assert_eq!(pid_keeping_alive(&mut stream), new);
}

/// How long the slow request of the tests below takes: long enough for an upgrade and a signal
/// to the new process to happen while it is in flight, even on a loaded machine.
const SLOW_MS: u64 = 5000;

/// Asserts that the slow request written at `written` cannot have been answered yet: the server
/// read it after it was written, so its sleep ends after `written + SLOW_MS`.
fn still_in_flight(written: Instant) {
    assert!(
        written.elapsed() < Duration::from_millis(SLOW_MS),
        "premise failed: the machine took longer than the slow request to upgrade and signal"
    );
}

/// A drain long enough for the slow request.
const SLOW_DRAIN: &[&str] = &["-h", "127.0.0.1", "-p", "0", "--drain-timeout", "10"];

/// A server upgraded while a keep-alive connection's slow request is in flight in the old process.
struct Upgrading {
    port: u16,
    old: u32,
    new: u32,
    stream: TcpStream,
    /// When the slow request was written.
    written: Instant,
}

/// Opens a keep-alive connection to `server`, writes a slow request on it, sends SIGHUP and
/// waits until the new process is ready.
fn upgrade_during_a_slow_request(server: &Hello) -> Upgrading {
    let port = server.port();
    let old = server.first_pid();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(pid_keeping_alive(&mut stream), old);
    write!(
        stream,
        "GET /sleep?ms={SLOW_MS} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let written = Instant::now();
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    Upgrading {
        port,
        old,
        new,
        stream,
        written,
    }
}

/// `status` from the control socket at `path`: one JSON line.
fn status(path: &Path) -> String {
    let mut stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(b"{\"v\":1,\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

#[test]
fn a_request_in_flight_during_the_upgrade_gets_a_keep_alive_reply_and_its_connection_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let mut server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--control",
        control.to_str().unwrap(),
    ]);
    let port = server.port();
    let old = server.first_pid();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(pid_keeping_alive(&mut stream), old);
    write!(
        stream,
        "GET /sleep?ms=1500 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    eventually("the slow request is in flight in the old process", || {
        status(&control).contains("\"in_flight\":1")
    });

    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    let slow = reply(&mut stream);
    assert_eq!(slow.body, "slept 1500\n");
    assert!(
        !slow.headers.contains("connection: close"),
        "the client is not sent away: {slow:?}"
    );
    assert!(server.wait_first_exit().success());
    assert_eq!(pid_keeping_alive(&mut stream), new);
}

#[test]
fn a_unix_socket_connection_is_relayed_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hello.sock");
    let mut server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--unix",
        path.to_str().unwrap(),
    ]);
    let old = server.first_pid();
    // Every listener is bound before the process reports ready.
    server.wait_for(&["server started"]);
    let mut stream = UnixStream::connect(&path).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(pid_keeping_alive(&mut stream), old);
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    assert!(server.wait_first_exit().success());
    assert_eq!(pid_keeping_alive(&mut stream), new);
}

#[test]
fn a_shutdown_still_closes_idle_connections_once_their_grace_is_over() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--idle-grace", "0.2"]);
    let port = server.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    pid_keeping_alive(&mut stream);
    signal(server.first_pid(), Signal::TERM);
    assert!(server.wait_first_exit().success());
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("closed, with no successor to take it");
    assert!(rest.is_empty());
}

#[test]
fn a_connection_relayed_to_a_process_already_shutting_down_is_served_by_its_drain() {
    let mut server = Hello::start(SLOW_DRAIN);
    let Upgrading {
        new,
        mut stream,
        written,
        ..
    } = upgrade_during_a_slow_request(&server);
    // The new process shuts down while the old one still has the slow request to finish, and
    // its connection to relay then.
    signal(new, Signal::TERM);
    server.wait_for_pid("graceful shutdown started", new);
    still_in_flight(written);
    let slow = reply(&mut stream);
    assert_eq!(slow.body, format!("slept {SLOW_MS}\n"));
    let next = exchange(&mut stream, "/pid");
    assert_eq!(next.body.trim(), new.to_string(), "{next:?}");
    assert!(
        next.headers.contains("connection: close"),
        "the draining process sends the client away: {next:?}"
    );
    assert!(server.wait_first_exit().success());
    assert_eq!(
        wait_adopted_exit(new).exit_status(),
        Some(0),
        "the new process drained and exited 0"
    );
}

#[test]
fn a_connection_whose_new_process_died_before_taking_it_is_told_to_close() {
    let server = Hello::start(SLOW_DRAIN);
    let Upgrading {
        port,
        old,
        new,
        mut stream,
        written,
    } = upgrade_during_a_slow_request(&server);
    kill(new, Signal::KILL);
    server.wait_for(&["died after it was ready"]);
    still_in_flight(written);
    let slow = reply(&mut stream);
    assert_eq!(slow.body, format!("slept {SLOW_MS}\n"));
    assert!(
        slow.headers.contains("connection: close"),
        "no successor to relay to: the client is told to reconnect, {slow:?}"
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "then closed");
    assert_eq!(pid_answering(port), old, "the old process serves again");
    reap_if_adopted(new);
}

#[test]
fn a_connection_relayed_to_a_process_already_upgraded_again_is_relayed_on() {
    let mut server = Hello::start(SLOW_DRAIN);
    let Upgrading {
        new: second,
        mut stream,
        written,
        ..
    } = upgrade_during_a_slow_request(&server);
    // The second generation hands over in turn while the first still has the slow request to
    // finish, and its connection to relay then: to the second, which is draining.
    signal(second, Signal::HUP);
    let third = field(&server.wait_for_nth(&["new process ready"], 1), "pid");
    assert_ne!(third, second);
    still_in_flight(written);
    let slow = reply(&mut stream);
    assert_eq!(slow.body, format!("slept {SLOW_MS}\n"));
    assert!(
        !slow.headers.contains("connection: close"),
        "a keep-alive reply: {slow:?}"
    );
    // The second generation answers a request already waiting when its connection comes (it
    // reads before it relays), then relays it on.
    let next = pid_keeping_alive(&mut stream);
    assert!(next == second || next == third, "{next}");
    assert_eq!(
        pid_keeping_alive(&mut stream),
        third,
        "the connection went on through the second generation to the third"
    );
    assert!(server.wait_first_exit().success());
    assert_eq!(
        wait_adopted_exit(second).exit_status(),
        Some(0),
        "the second generation drained and exited 0"
    );
}
