//! The UDP example (`examples/udp_echo.rs`): a datagram socket handed over on upgrade, under
//! load, over IPv4 and IPv6, and a graceful shutdown, driven by real signals and datagrams.

mod support;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use support::*;

/// How long one reply may take before its datagram counts as lost.
const REPLY_LIMIT: Duration = Duration::from_secs(2);
/// The most datagrams a load sends, and for how long at most.
const LOAD_LIMIT: (usize, Duration) = (200_000, Duration::from_secs(60));
/// The fewest datagrams a load sends before it stops when asked.
const LOAD_MIN: usize = 2000;

fn start(host: &str, extra: &[&str]) -> (Hello, SocketAddr) {
    let mut args = vec!["-h", host, "-p", "0"];
    args.extend_from_slice(extra);
    let server = Hello::start_example("udp_echo", &args);
    let ip: std::net::IpAddr = host.parse().unwrap();
    let address = SocketAddr::new(ip, server.port());
    (server, address)
}

/// A client socket connected to `server`: it sees the ICMP errors for what it sends there.
fn client(server: SocketAddr) -> UdpSocket {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let socket = UdpSocket::bind(local).unwrap();
    socket.connect(server).unwrap();
    socket.set_read_timeout(Some(REPLY_LIMIT)).unwrap();
    socket
}

fn ask(socket: &UdpSocket, text: &str) -> std::io::Result<String> {
    socket.send(text.as_bytes())?;
    let mut reply = [0u8; 512];
    let len = socket.recv(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..len]).into_owned())
}

/// What a load saw.
#[derive(Debug, Default)]
struct Seen {
    sent: usize,
    /// Replies, by the pid that answered.
    answered: BTreeMap<u32, usize>,
    /// ECONNREFUSED: an ICMP port unreachable, so a datagram reached no socket.
    refused: usize,
    /// No reply within `REPLY_LIMIT`.
    lost: usize,
    other: Vec<String>,
}

/// One client asking `pid`, one datagram at a time, until stopped once it sent `LOAD_MIN` (or
/// at `LOAD_LIMIT`).
struct Load {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Load {
    fn start(server: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = client(server);
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seen = Seen::default();
                let started = Instant::now();
                while !(stop.load(Ordering::Relaxed) && seen.sent >= LOAD_MIN)
                    && seen.sent < LOAD_LIMIT.0
                    && started.elapsed() < LOAD_LIMIT.1
                {
                    seen.sent += 1;
                    match ask(&socket, "pid") {
                        Ok(reply) => match reply.parse() {
                            Ok(pid) => *seen.answered.entry(pid).or_default() += 1,
                            Err(_) => seen.other.push(format!("reply {reply:?}")),
                        },
                        Err(e) if e.kind() == ErrorKind::ConnectionRefused => seen.refused += 1,
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            seen.lost += 1
                        }
                        Err(e) => seen.other.push(e.to_string()),
                    }
                }
                seen
            }
        });
        Load { stop, thread }
    }

    fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The pid answering `pid` on `server`, from a fresh client.
fn pid_answering_udp(server: SocketAddr) -> u32 {
    ask(&client(server), "pid").unwrap().parse().unwrap()
}

/// Sends SIGHUP to `current` and waits until another process answers `pid`; returns its pid.
fn upgrade(address: SocketAddr, current: u32) -> u32 {
    signal(current, Signal::HUP);
    let probe = client(address);
    let mut new = current;
    eventually("the new process answers pid", || {
        new = ask(&probe, "pid")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(current);
        new != current
    });
    new
}

/// Waits until `pid`, a generation this test adopted once its parent exited, is gone.
fn wait_gone(pid: u32) {
    eventually("the old generation exits", || {
        reap_if_adopted(pid);
        is_gone(pid)
    });
}

/// Upgrades twice with SIGHUP under load; every datagram is answered, none refused, and both
/// generations answered.
fn upgrades_under_load(host: &str) {
    let (mut server, address) = start(host, &[]);
    let first = server.first_pid();
    assert_eq!(pid_answering_udp(address), first);
    let load = Load::start(address);
    let mut current = first;
    for _ in 0..2 {
        let new = upgrade(address, current);
        if current == first {
            assert!(
                server.wait_first_exit().success(),
                "the old process exits 0"
            );
        } else {
            wait_gone(current);
        }
        current = new;
    }
    let seen = load.stop();
    eprintln!(
        "{host}: {} datagrams, answered by pid: {:?}",
        seen.sent, seen.answered
    );
    assert_eq!(
        (seen.refused, seen.lost, &seen.other),
        (0, 0, &vec![]),
        "every datagram answered, none refused: {seen:?}"
    );
    assert!(
        seen.answered.contains_key(&first) && seen.answered.contains_key(&current),
        "replies came from the first and the last generation: {seen:?}"
    );
    assert_eq!(seen.answered.values().sum::<usize>(), seen.sent);
    signal(current, Signal::TERM);
    wait_gone(current);
}

#[test]
fn ipv4_upgrades_under_load_refuse_and_lose_no_datagram() {
    upgrades_under_load("127.0.0.1");
}

#[test]
fn ipv6_upgrades_under_load_refuse_and_lose_no_datagram() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: ::1 is not available on this machine");
        return;
    }
    upgrades_under_load("::1");
}

/// Whether the IPv4 UDP socket bound to `port` has nothing left in its receive queue.
fn received_everything(port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/udp").unwrap();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields[1] == local && fields[4].ends_with(":00000000")
    })
}

#[test]
fn shutdown_answers_the_reply_in_flight_then_exits_0_and_refuses() {
    let (mut server, address) = start("127.0.0.1", &["--drain-timeout", "5"]);
    let waiting = client(address);
    waiting.send(b"wait 300").unwrap();
    eventually("the server received the datagram", || {
        received_everything(address.port())
    });
    let asked = Instant::now();
    signal(server.first_pid(), Signal::TERM);
    let mut reply = [0u8; 64];
    let len = waiting.recv(&mut reply).unwrap();
    assert_eq!(&reply[..len], b"waited 300", "the reply in flight is sent");
    assert!(server.wait_first_exit().success(), "exits 0");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "within the drain timeout: {:?}",
        asked.elapsed()
    );
    let late = client(address);
    let err = ask(&late, "pid").unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "the socket is closed once the process is gone: {err}"
    );
}

#[test]
fn a_datagram_socket_from_systemd_is_adopted_then_handed_over() {
    let Some(activate) = [
        "/usr/bin/systemd-socket-activate",
        "/bin/systemd-socket-activate",
    ]
    .into_iter()
    .map(std::path::Path::new)
    .find(|p| p.exists()) else {
        eprintln!("skipped: systemd-socket-activate is not installed (apt-get install systemd)");
        return;
    };
    let port = (0..200)
        .map(|i| 20_000 + ((std::process::id() as u64 * 7919 + i * 37) % 12_000) as u16)
        .find(|port| UdpSocket::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free UDP port between 20000 and 32000");
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let program = example_binary("udp_echo");
    let server = Hello::start_program(
        activate,
        &[
            "--datagram",
            "-l",
            &address.to_string(),
            "--fdname=dns",
            program.to_str().unwrap(),
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ],
    );
    // systemd-socket-activate binds first and starts the server on the first datagram.
    let probe = client(address);
    let mut first = 0;
    eventually("the activated server answers", || {
        match ask(&probe, "pid") {
            Ok(reply) => first = reply.parse().unwrap(),
            // Sent before the tool bound the port.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("{e}"),
        }
        first != 0
    });
    let adopted = server.wait_for(&["listener adopted from systemd"]);
    assert!(adopted.contains("name=dns"), "{adopted}");
    let new = upgrade(address, first);
    // The log is read by a thread of the test: the new process's line may not be in yet.
    let adopted_again = server.wait_for_nth(&["listener adopted"], 1);
    assert!(
        adopted_again.contains(&format!("address={address}")),
        "the new process adopted the socket handed over: {adopted_again}"
    );
    signal(new, Signal::TERM);
    wait_gone(new);
}
