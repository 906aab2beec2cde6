//! Graceful shutdown of the real example server.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::*;

/// Sends `GET path` and returns the connection once the server has accepted and read it... or at
/// least once the request is on the wire: either way a graceful server must answer it.
fn send(port: u16, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    stream
}

fn read_reply(mut stream: TcpStream) -> std::io::Result<Reply> {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

#[test]
fn term_lets_an_in_flight_request_finish_then_exits_0() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0"]);
    let port = server.port();
    let stream = send(port, "/sleep?ms=1000");
    let started = Instant::now();
    signal(server.first_pid(), Signal::TERM);
    let reply = read_reply(stream).expect("the in-flight request must be answered");
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 1000\n"));
    assert!(
        reply
            .headers
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        reply.headers
    );
    assert!(
        server.wait_first_exit().success(),
        "exit status 0 after a clean drain"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the drain ends with the last request"
    );
    server.wait_for(&["drain complete"]);
    server.wait_for(&["exiting with status 0"]);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
}

#[test]
fn term_cuts_a_request_longer_than_the_drain_timeout_at_the_deadline() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--drain-timeout", "1"]);
    let port = server.port();
    let stream = send(port, "/sleep?ms=15000");
    // The request must be in the server before the signal for the cut to be measured.
    server.wait_for(&["listening on"]);
    let check = get(port, "/ping").unwrap();
    assert_eq!(check.status, 200);
    let started = Instant::now();
    signal(server.first_pid(), Signal::TERM);
    let result = read_reply(stream);
    let elapsed = started.elapsed();
    assert!(
        result.is_err(),
        "the long request must be cut, got {result:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "cut after {elapsed:?}"
    );
    let line = server.wait_for(&["drain deadline reached"]);
    assert!(line.contains("cut 1 connection "), "{line}");
    assert!(server.wait_first_exit().success());
}

#[test]
fn keep_alive_connection_is_told_to_close_not_cut() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0"]);
    let port = server.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let exchange = |stream: &mut TcpStream| {
        write!(stream, "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let first = exchange(&mut stream);
    assert!(
        first.starts_with("HTTP/1.1 200")
            && !first.to_ascii_lowercase().contains("connection: close")
    );
    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["draining connections"]);
    // The client did not see the drain coming: its next request on the idle connection is answered.
    let second = exchange(&mut stream);
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(
        second.to_ascii_lowercase().contains("connection: close"),
        "{second}"
    );
    assert!(server.wait_first_exit().success());
}

/// A reused keep-alive connection: one exchange done, no `Connection: close` in its answer.
fn keep_alive(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(stream, "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(
        reply.starts_with("http/1.1 200") && !reply.contains("connection: close"),
        "{reply}"
    );
    stream
}

#[test]
fn a_request_head_half_received_at_the_idle_grace_is_answered() {
    let mut server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--drain-timeout",
        "10",
        "--idle-grace",
        "2",
    ]);
    let port = server.port();
    let mut idle = keep_alive(port);
    let mut late = keep_alive(port);
    let mut witness = keep_alive(port);
    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["draining connections"]);
    late.write_all(b"GET /ping HTTP/1.1\r\nHo").unwrap();
    // Its sleep starts after the drain did and ends 0.7 s after the grace: once it is answered,
    // the server has handled the half-received head's grace too.
    write!(
        witness,
        "GET /sleep?ms=2700 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    // The graces of all connections began together: the idle one still open means the half head
    // reached the server before the grace ended.
    idle.set_nonblocking(true).unwrap();
    match idle.peek(&mut [0u8; 1]) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "premise failed: the idle connection was already closed ({other:?}) when the half \
             head was sent, so the idle grace ended first"
        ),
    }
    idle.set_nonblocking(false).unwrap();
    let mut after = Vec::new();
    idle.read_to_end(&mut after)
        .expect("the idle connection is closed at the idle grace");
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));
    let slept = read_reply(witness).expect("the request in flight is answered");
    assert_eq!((slept.status, slept.body.as_str()), (200, "slept 2700\n"));
    late.write_all(b"st: 127.0.0.1\r\n\r\n").unwrap();
    let reply = read_reply(late)
        .expect("a connection with part of a request received must get its response");
    assert_eq!((reply.status, reply.body.as_str()), (200, "pong\n"));
    assert!(
        reply
            .headers
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        reply.headers
    );
    assert!(server.wait_first_exit().success());
    let line = server.wait_for(&["exiting with status 0"]);
    assert!(line.contains("cut=0"), "{line}");
}

/// A client that connected but had not sent its first request when the drain began (a starved
/// client, a request still being built) is not an idle keep-alive connection: closing it at the
/// idle grace would fail that first request, which no client retries. It is answered, with
/// `Connection: close`, or cut at the drain deadline.
#[test]
fn a_connection_that_sent_nothing_by_the_idle_grace_still_gets_its_first_request_answered() {
    let mut server = Hello::start(&[
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--drain-timeout",
        "10",
        "--idle-grace",
        "0.3",
    ]);
    let port = server.port();
    let idle = keep_alive(port);
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
    fresh.set_read_timeout(Some(TIMEOUT)).unwrap();
    // Answered only once this connection was accepted: the fresh one, made before it, was too.
    let mut witness = keep_alive(port);
    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["draining connections"]);
    // Its sleep starts after the drain did and ends 0.7 s after every connection's grace: once
    // it is answered, the server has handled the fresh connection's grace too.
    write!(
        witness,
        "GET /sleep?ms=1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .unwrap();
    let slept = read_reply(witness).expect("the request in flight is answered");
    assert_eq!((slept.status, slept.body.as_str()), (200, "slept 1000\n"));
    let mut idle = idle;
    let mut after = Vec::new();
    idle.read_to_end(&mut after)
        .expect("the used, idle connection is closed at the idle grace");
    assert!(after.is_empty(), "{}", String::from_utf8_lossy(&after));

    write!(fresh, "GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let reply = read_reply(fresh).expect("the first request of a fresh connection is answered");
    assert_eq!((reply.status, reply.body.as_str()), (200, "pong\n"));
    assert!(
        reply
            .headers
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        reply.headers
    );
    assert!(server.wait_first_exit().success());
    let line = server.wait_for(&["exiting with status 0"]);
    assert!(line.contains("cut=0"), "{line}");
}

#[test]
fn port_in_use_is_a_clear_error_and_a_non_zero_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", &port]);
    let status = server.wait_first_exit();
    assert!(!status.success());
    let line = server.wait_for(&["cannot listen on"]);
    assert!(
        line.contains(&format!("127.0.0.1:{port}")) && line.contains("in use"),
        "{line}"
    );
}

#[test]
fn pre_drain_keeps_accepting_while_ready_reports_draining_then_drains() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--pre-drain", "1.5"]);
    let port = server.port();
    assert_eq!(get(port, "/ready").unwrap().status, 200);
    let started = Instant::now();
    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["graceful shutdown started", "pre-drain"]);
    let ready = get(port, "/ready").expect("still accepting during the pre-drain");
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    assert_eq!(get(port, "/ping").unwrap().status, 200, "still serving");
    assert!(started.elapsed() < Duration::from_millis(1500));
    server.wait_for(&["pre-drain over"]);
    assert!(server.wait_first_exit().success());
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn signals_still_work_after_stderr_is_closed() {
    use std::io::{BufRead, BufReader};
    let mut server = Group::spawn(
        std::process::Command::new(hello_binary())
            .args(["-h", "127.0.0.1", "-p", "0"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped()),
    );
    let child = &mut server.leader;
    let mut port = None;
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(address) = line.split("listening on ").nth(1) {
            let address = address.split_whitespace().next().unwrap();
            port = Some(address.parse::<std::net::SocketAddr>().unwrap().port());
        }
        if line.contains("server started") {
            break;
        }
    }
    let port = port.expect("the server logs its address");
    // The reader of the log goes away, as when a terminal or a log collector is closed.
    drop(lines);
    assert_eq!(get(port, "/ping").unwrap().status, 200);
    signal(child.id(), Signal::TERM);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM was ignored once stderr was closed"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}
