//! The raw-TCP example (`examples/echo.rs`): the low-level layer upgrades and drains a protocol
//! that is not HTTP, driven by real signals over real connections.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use rustix::process::Signal;
use support::*;

/// A client connection of the line protocol.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, text: &str) {
        self.reader.get_mut().write_all(text.as_bytes()).unwrap();
    }

    /// The next line from the server; empty at end of stream.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    fn ask_pid(&mut self) -> u32 {
        self.send("pid\n");
        self.line().trim().parse().unwrap()
    }

    /// Waits until the server has read everything this client sent: the kernel's receive queue of
    /// the server's end of the connection (in /proc/net/tcp) is empty.
    fn wait_consumed(&self, port: u16) {
        let client_port = self.reader.get_ref().local_addr().unwrap().port();
        let server_end = (
            format!("0100007F:{port:04X}"),
            format!("0100007F:{client_port:04X}"),
        );
        eventually("the server reads what was sent", || {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
            table.lines().skip(1).any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields[1], fields[2]) == (server_end.0.as_str(), server_end.1.as_str())
                    && fields[4].ends_with(":00000000")
            })
        });
    }
}

fn start(extra: &[&str]) -> Hello {
    let mut args = vec!["-h", "127.0.0.1", "-p", "0"];
    args.extend_from_slice(extra);
    Hello::start_example("echo", &args)
}

#[test]
fn echoes_lines_and_answers_pid() {
    let server = start(&[]);
    let mut client = Client::connect(server.port());
    client.send("hello\n");
    assert_eq!(client.line(), "hello\n");
    client.send("two\nlines\n");
    assert_eq!(
        (client.line(), client.line()),
        ("two\n".into(), "lines\n".into())
    );
    assert_eq!(client.ask_pid(), server.first_pid());
}

#[test]
fn hup_hands_over_and_an_old_connection_finishes_its_line_then_gets_bye() {
    let mut server = start(&["--drain-timeout", "10"]);
    let port = server.port();
    let old = server.first_pid();
    let mut client = Client::connect(port);
    assert_eq!(client.ask_pid(), old);
    // Half a line, read by the old process before the hand-over: the line in progress.
    client.send("hel");
    client.wait_consumed(port);

    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    server.wait_for(&["old process draining"]);
    server.wait_for(&["draining connections"]);
    client.send("lo\n");
    assert_eq!(client.line(), "hello\n", "the line in progress is answered");
    assert_eq!(client.line(), "bye\n");
    assert_eq!(client.line(), "", "then the connection is closed");

    assert!(
        server.wait_first_exit().success(),
        "the old process exits 0"
    );
    server.wait_for(&["drain complete"]);
    server.wait_for(&["server shut down", &format!("pid={old}")]);
    assert_eq!(
        Client::connect(port).ask_pid(),
        new,
        "the new process serves the same port"
    );
}

#[test]
fn the_old_process_serves_again_if_the_new_one_dies_while_it_drains() {
    let mut server = start(&["--drain-timeout", "10"]);
    let port = server.port();
    let old = server.first_pid();
    // A line in progress keeps the old process draining after the hand-over.
    let mut draining = Client::connect(port);
    assert_eq!(draining.ask_pid(), old);
    draining.send("hel");
    draining.wait_consumed(port);

    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    // Only once the old process's loop drains (killed before it saw the hand-over, the new process
    // leaves the old one serving with nothing drained, and no `bye` to wait for).
    server.wait_for(&["draining connections"]);
    signal(new, Signal::KILL);
    server.wait_for(&["resuming accepting"]);
    let mut fresh = Client::connect(port);
    assert_eq!(fresh.ask_pid(), old, "the old process accepts again");
    eventually("the dead process is reaped", || is_gone(new));

    // The earlier drain goes on beside the resumed generation.
    draining.send("lo\n");
    assert_eq!(draining.line(), "hello\n");
    assert_eq!(draining.line(), "bye\n");
    fresh.send("still here\n");
    assert_eq!(fresh.line(), "still here\n");

    signal(old, Signal::TERM);
    assert_eq!(fresh.line(), "bye\n");
    assert!(server.wait_first_exit().success());
}

#[test]
fn term_says_bye_to_an_open_connection_and_exits_0() {
    let mut server = start(&[]);
    let port = server.port();
    let mut client = Client::connect(port);
    assert_eq!(client.ask_pid(), server.first_pid());

    signal(server.first_pid(), Signal::TERM);
    assert_eq!(client.line(), "bye\n");
    assert_eq!(client.line(), "");
    assert!(server.wait_first_exit().success());
    server.wait_for(&["drain complete"]);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the listener is closed"
    );
}

#[test]
fn a_line_never_finished_is_cut_at_the_drain_deadline() {
    let mut server = start(&["--drain-timeout", "1"]);
    let port = server.port();
    let mut client = Client::connect(port);
    assert_eq!(client.ask_pid(), server.first_pid());
    client.send("never finished");
    client.wait_consumed(port);

    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["drain deadline reached; cut 1 connection"]);
    assert_eq!(client.line(), "", "cut without an answer");
    assert!(server.wait_first_exit().success());
}
