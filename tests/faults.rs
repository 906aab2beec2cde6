//! What goes wrong during a deploy, against the real example server: the serving process never
//! dies of it, nothing is lost, and every error is clear.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime};

use rustix::process::Signal;
use support::*;

/// HUPs the server whose program was made unusable and checks the rollback.
fn assert_rollback(server: &Hello, expected: &[&str]) -> String {
    let port = server.port();
    let old = server.first_pid();
    signal(old, Signal::HUP);
    let mut needles = vec!["upgrade failed", "the old process keeps serving"];
    needles.extend_from_slice(expected);
    let line = server.wait_for(&needles);
    assert_eq!(pid_answering(port), old, "the old process keeps serving");
    line
}

#[test]
fn missing_program_fails_at_once_naming_the_path() {
    let (server, _bin, program) = start_copy(&[]);
    server.port();
    std::fs::remove_file(&program).unwrap();
    let line = assert_rollback(
        &server,
        &[&program.display().to_string(), "No such file or directory"],
    );
    assert!(line.contains("cannot start the new process"), "{line}");
}

#[test]
fn a_removed_working_directory_is_named_not_the_program() {
    let (server, _bin, program) = start_copy(&[]);
    server.port();
    let cwd = server.dir.path().to_path_buf();
    std::fs::remove_dir_all(&cwd).unwrap();
    let line = assert_rollback(
        &server,
        &[
            &cwd.display().to_string(),
            "the directory this server was started from",
        ],
    );
    assert!(
        !line.contains(&program.display().to_string()),
        "the program is fine and must not be blamed: {line}"
    );
}

#[test]
fn program_that_is_not_executable_fails_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let (server, _bin, program) = start_copy(&[]);
    server.port();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_rollback(
        &server,
        &[&program.display().to_string(), "Permission denied"],
    );
}

#[test]
fn program_that_is_not_a_valid_executable_fails_at_once() {
    let (server, _bin, program) = start_copy(&[]);
    server.port();
    replace_with_script(&program, "this is not a program");
    assert_rollback(
        &server,
        &[&program.display().to_string(), "Exec format error"],
    );
    // A truncated copy still looks like a program: the kernel refuses it, and the old process
    // keeps serving all the same.
    let truncated = std::fs::read(hello_binary()).unwrap()[..64].to_vec();
    replace_with_script(&program, truncated);
    signal(server.first_pid(), Signal::HUP);
    server.wait_for_nth(&["upgrade failed", "the old process keeps serving"], 1);
    assert_eq!(pid_answering(server.port()), server.first_pid());
}

#[test]
fn new_process_exiting_0_before_ready_is_rolled_back() {
    let (server, _bin, program) = start_copy(&[]);
    server.port();
    replace_with_script(&program, "#!/bin/sh\nexit 0\n");
    assert_rollback(&server, &["exited before it was ready (exit status: 0)"]);
}

#[test]
fn new_process_dying_of_sigsegv_or_sigkill_before_ready_is_rolled_back_and_reaped() {
    let (server, _bin, program) = start_copy(&[]);
    server.port();
    for (nth, name) in ["SEGV", "KILL"].into_iter().enumerate() {
        replace_with_script(&program, format!("#!/bin/sh\nkill -{name} $$\n"));
        signal(server.first_pid(), Signal::HUP);
        let failed = field(&server.wait_for_nth(&["new process spawned"], nth), "pid");
        let line = server.wait_for_nth(&["upgrade failed"], nth);
        assert!(
            line.contains("(signal: ") && line.contains(&format!("SIG{name}")),
            "{line}"
        );
        eventually("the dead process is reaped", || is_gone(failed));
        assert_eq!(pid_answering(server.port()), server.first_pid());
    }
}

#[test]
fn new_process_dying_after_ready_while_the_old_one_drains_makes_the_old_one_resume() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--drain-timeout", "20"]);
    let port = server.port();
    let old = server.first_pid();
    // A slow request keeps the old process draining after the hand-over.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(slow, "GET /sleep?ms=3000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    eventually("the slow request is in the old process", || {
        get(port, "/ping").is_ok()
    });
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    // The old process's server has stopped accepting and drains (only the old process drains):
    // killed before that, the new process may be gone before the old one's server even saw the
    // hand-over, and the old one then just goes on serving, with nothing drained.
    server.wait_for(&["draining connections", "connections=1"]);
    signal(new, Signal::KILL);
    let line = server.wait_for(&["died after it was ready", "resuming accepting"]);
    assert!(
        line.contains(&format!(
            "new process {new} died after it was ready (signal: 9 (SIGKILL))"
        )),
        "{line}"
    );
    assert_eq!(pid_answering(port), old, "the old process serves again");
    eventually("the dead process is reaped", || is_gone(new));
    let mut reply = Vec::new();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    slow.read_to_end(&mut reply).unwrap();
    assert_eq!(
        parse(&reply).unwrap().status,
        200,
        "the draining request still finishes"
    );
    // Resumed, the old process still upgrades and shuts down normally.
    signal(old, Signal::TERM);
    assert!(server.wait_first_exit().success());
}

#[test]
fn old_process_killed_mid_upgrade_leaves_the_new_one_serving_alone() {
    let (server, bin, program) = start_copy(&[]);
    let port = server.port();
    let real = bin.path().join("hello-real");
    std::fs::copy(hello_binary(), &real).unwrap();
    slow_start(&program, &real, 1.0);
    signal(server.first_pid(), Signal::HUP);
    let new = field(&server.wait_for(&["new process spawned"]), "pid");
    signal(server.first_pid(), Signal::KILL);
    server.wait_for(&["the old process is gone; serving alone"]);
    assert_eq!(pid_answering(port), new);
}

#[test]
fn a_storm_of_100_sighups_keeps_one_upgrade_in_flight_and_no_request_fails() {
    let mut server = Hello::start(LOCAL);
    let port = server.port();
    let first = server.first_pid();
    let fds_first = own_fd_kinds(first);
    let load = Load::start(port);
    // Each signal goes to the newest generation known to serve, so the storm chains upgrades
    // while each process sees signals arrive during its own upgrade.
    let newest = |server: &Hello| {
        let ready = server.count(&["new process ready"]);
        match ready {
            0 => first,
            n => field(&server.wait_for_nth(&["new process ready"], n - 1), "pid"),
        }
    };
    let hups_taken = |server: &Hello, pid: u32| {
        server.count_where(|line| {
            line.contains("signal received: SIGHUP") && field(line, "pid") == pid
        })
    };
    for _ in 0..100 {
        let target = newest(&server);
        let taken = hups_taken(&server, target);
        kill(target, Signal::HUP);
        // Pending signals of one kind merge into one: the next is sent once this one is taken
        // (or its process gone), so that when the loop ends, no SIGHUP is left to act later.
        eventually("the SIGHUP is taken or its process is gone", || {
            hups_taken(&server, target) > taken || state(target).is_none_or(|s| s == 'Z')
        });
        // Paces the storm so that it spans several generations.
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(server.wait_first_exit().success());
    // The storm is over once a single process is left in the server's group and it never took a
    // SIGHUP: any process that took one while serving either upgrades or is still alive to. The
    // "new process ready" lines cannot tell, as each is written before its process stops
    // accepting, and a SIGHUP may be taken after every spawn so far has its outcome.
    let mut last = 0;
    eventually(
        "one generation is left, and no SIGHUP is left to act on",
        || {
            let members = server.members();
            for (pid, state) in &members {
                if *state == 'Z' {
                    reap_if_adopted(*pid);
                }
            }
            match members[..] {
                [(pid, state)] if state != 'Z' => {
                    last = pid;
                    hups_taken(&server, pid) == 0 || server.count(&["upgrade failed"]) > 0
                }
                _ => false,
            }
        },
    );
    assert_eq!(
        server.count(&["upgrade failed"]),
        0,
        "{}",
        server.log_text()
    );
    let generations: Vec<u32> = (0..server.count(&["new process ready"]))
        .map(|n| field(&server.wait_for_nth(&["new process ready"], n), "pid"))
        .collect();
    // Each earlier generation's last line, so the log holds all that each of them wrote.
    for pid in std::iter::once(first).chain(generations.iter().copied()) {
        if pid != last {
            server.wait_for(&["exiting with status 0", &format!("(pid {pid})")]);
        }
    }
    assert_eq!(
        server.wait_for_pid("new process ready", last),
        server.wait_for_nth(&["new process ready"], generations.len() - 1),
        "the one generation left is the last one made ready"
    );
    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "{ok} requests answered");
    assert!(ok > 0);
    assert_eq!(pid_answering(port), last, "exactly one generation serves");
    let inodes = listening_inode(port);
    assert_eq!(inodes.len(), 1, "one listening socket on port {port}");
    assert!(holds_socket(last, inodes[0]));
    eventually("the last generation holds the fds the first held", || {
        own_fd_kinds(last) == fds_first
    });
    // No process ever ran two upgrades at once: each spawn is followed by its outcome before the
    // same process spawns again.
    let mut in_flight = std::collections::HashMap::<u32, bool>::new();
    for line in server.log_text().lines() {
        let spawned = line.contains("new process spawned");
        if spawned || line.contains("new process ready") {
            let upgrading = field(line, "old_pid");
            let was = in_flight.insert(upgrading, spawned).unwrap_or(false);
            assert!(
                !(spawned && was),
                "two upgrades in flight in process {upgrading}"
            );
        }
    }
}

#[test]
fn sigterm_during_an_upgrade_cancels_it_kills_and_reaps_the_child_and_exits_0() {
    let (mut server, bin, program) = start_copy(&[]);
    server.port();
    let real = bin.path().join("hello-real");
    std::fs::copy(hello_binary(), &real).unwrap();
    slow_start(&program, &real, 2.0);
    signal(server.first_pid(), Signal::HUP);
    let child = field(&server.wait_for(&["new process spawned"]), "pid");
    signal(server.first_pid(), Signal::TERM);
    let line = server.wait_for(&["upgrade cancelled by shutdown"]);
    assert!(
        line.contains(&format!("new process {child} was stopped and reaped")),
        "{line}"
    );
    server.wait_for(&["stopped and reaped", &format!("pid={child}")]);
    assert!(server.wait_first_exit().success());
    assert!(is_gone(child), "the child was reaped by the old process");
}

#[test]
fn a_second_sigterm_does_not_skip_the_drain() {
    let mut server = Hello::start(LOCAL);
    let port = server.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /sleep?ms=1500 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    signal(server.first_pid(), Signal::TERM);
    server.wait_for(&["draining connections"]);
    signal(server.first_pid(), Signal::TERM);
    signal(server.first_pid(), Signal::INT);
    server.wait_for(&["already stopping; the drain under way goes on"]);
    let mut reply = Vec::new();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.read_to_end(&mut reply).unwrap();
    assert_eq!(parse(&reply).unwrap().status, 200);
    assert!(server.wait_first_exit().success());
}

/// The UTC time at the start of a log line.
fn logged_at(line: &str) -> SystemTime {
    humantime::parse_rfc3339(line.split_whitespace().next().unwrap()).unwrap()
}

#[test]
fn a_request_longer_than_the_drain_is_cut_within_100ms_of_the_deadline_and_shorter_ones_answered() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--drain-timeout", "1"]);
    let port = server.port();
    let send = |path: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        stream
    };
    let long = send("/sleep?ms=10000");
    let short = send("/sleep?ms=600");
    eventually("both requests are in the server", || {
        get(port, "/ping").is_ok()
    });
    signal(server.first_pid(), Signal::TERM);
    let read = |mut stream: TcpStream| {
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        parse(&reply).ok().map(|r| r.status)
    };
    assert_eq!(
        read(short),
        Some(200),
        "a request shorter than the deadline is answered"
    );
    assert_eq!(read(long), None, "the long request is cut");
    let started = logged_at(&server.wait_for(&["draining connections"]));
    let cut = logged_at(&server.wait_for(&["drain deadline reached", "cut 1 connection"]));
    let took = cut.duration_since(started).unwrap();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1100),
        "cut after {took:?}"
    );
    assert!(server.wait_first_exit().success());
}

#[test]
fn drain_timeout_zero_closes_at_once() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--drain-timeout", "0"]);
    let port = server.port();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET /sleep?ms=10000 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    eventually("the request is in the server", || {
        get(port, "/ping").is_ok()
    });
    let started = Instant::now();
    signal(server.first_pid(), Signal::TERM);
    assert!(server.wait_first_exit().success());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    server.wait_for(&["cut 1 connection"]);
}

#[test]
fn idle_and_half_sent_clients_do_not_hold_the_process_past_the_deadline() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--drain-timeout", "1"]);
    let port = server.port();
    let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(half, "GET /ping HTTP/1.1\r\nHos").unwrap();
    eventually("both connections are accepted", || {
        get(port, "/ping").is_ok()
    });
    let started = Instant::now();
    signal(server.first_pid(), Signal::TERM);
    assert!(server.wait_first_exit().success());
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1800),
        "the process lingered {took:?} with a 1 s drain"
    );
}

#[test]
fn running_out_of_fds_pauses_accepting_and_recovers() {
    let setup = Setup {
        nofile: Some(48),
        ..Setup::default()
    };
    let server = Hello::start_with(&hello_binary(), LOCAL, &setup);
    let port = server.port();
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            held.push(stream);
        }
    }
    let line = server.wait_for(&["accept failed", "Too many open files"]);
    assert!(line.contains("pausing before retrying"), "{line}");
    drop(held);
    eventually(
        "the server answers again",
        || matches!(get(port, "/ping"), Ok(r) if r.status == 200),
    );
    server.wait_for(&["accepting again"]);
    assert_eq!(
        pid_answering(port),
        server.first_pid(),
        "the accept loop never exits"
    );
}

#[test]
fn fifty_upgrades_leak_no_fd_and_leave_no_zombie() {
    let server = Hello::start(LOCAL);
    let port = server.port();
    let first = server.first_pid();
    let fds_first = own_fd_kinds(first);
    let mut current = first;
    for nth in 0..50 {
        signal(current, Signal::HUP);
        let next = field(&server.wait_for_nth(&["new process ready"], nth), "pid");
        if current == first {
            eventually("the first generation exits", || {
                state(first).is_none_or(|s| s == 'Z')
            });
        } else {
            assert_eq!(
                wait_adopted_exit(current).exit_status(),
                Some(0),
                "generation {nth} exits 0"
            );
        }
        current = next;
    }
    assert_eq!(pid_answering(port), current);
    eventually("generation 51 holds exactly what generation 1 held", || {
        own_fd_kinds(current) == fds_first
    });
}

/// Starts the example with the given hand-over variables and fds, and checks that it exits
/// non-zero before reporting ready, with an error naming `var` and `fd`, and binds nothing.
fn assert_refused(
    listeners: &str,
    inherit: &[std::os::fd::RawFd],
    var: &str,
    fd: Option<i32>,
    problem: &str,
) {
    let (read, write) = rustix::pipe::pipe().unwrap();
    let mut all = inherit.to_vec();
    all.push(write.as_raw_fd());
    let setup = Setup {
        env: vec![
            ("OCTOPUS_LISTENERS".into(), listeners.into()),
            ("OCTOPUS_READY_FD".into(), write.as_raw_fd().to_string()),
            ("OCTOPUS_PARENT_PID".into(), std::process::id().to_string()),
        ],
        inherit: all,
        ..Setup::default()
    };
    let mut server = Hello::start_with(&hello_binary(), LOCAL, &setup);
    drop(write);
    let status = server.wait_first_exit();
    assert!(!status.success(), "{listeners:?} must be refused");
    let mut line = server.wait_for(&[" ERROR "]);
    line.push(' ');
    let log = server.log_text();
    assert!(line.contains(var), "{line} must name {var}");
    if let Some(fd) = fd {
        assert!(
            line.contains(&format!("fd {fd}")),
            "{line} must name fd {fd}"
        );
    }
    assert!(line.contains(problem), "{line} must say {problem:?}");
    assert!(
        !log.contains("listener created") && !log.contains("server started"),
        "nothing is bound or served:\n{log}"
    );
    let mut byte = [0u8; 1];
    assert_eq!(
        rustix::io::read(&read, &mut byte).unwrap(),
        0,
        "the process never reported ready"
    );
}

#[test]
fn malformed_hand_over_variables_are_refused_before_ready() {
    let cases = [
        ("x=tcp:127.0.0.1:0", "not a file descriptor number"),
        ("-3=tcp:127.0.0.1:0", "not a file descriptor number"),
        (
            "99999999999=tcp:127.0.0.1:0",
            "not a file descriptor number",
        ),
        ("2=tcp:127.0.0.1:0", "standard input, output or error"),
        ("3", "is not FD=KEY"),
        ("3=sctp:127.0.0.1:0", "no valid NETWORK:ADDRESS key"),
        ("30=tcp:127.0.0.1:0;30=tcp:[::1]:0", "fd 30 is named twice"),
    ];
    for (listeners, problem) in cases {
        assert_refused(listeners, &[], "OCTOPUS_LISTENERS", None, problem);
    }
}

#[test]
fn missing_or_empty_variables_are_refused() {
    let mut server = Hello::start_with(
        &hello_binary(),
        LOCAL,
        &Setup {
            env: vec![("OCTOPUS_LISTENERS".into(), "3=tcp:127.0.0.1:0".into())],
            ..Setup::default()
        },
    );
    assert!(!server.wait_first_exit().success());
    server.wait_for(&["OCTOPUS_LISTENERS is set but OCTOPUS_READY_FD is not"]);

    let mut server = Hello::start_with(
        &hello_binary(),
        LOCAL,
        &Setup {
            env: vec![
                ("OCTOPUS_LISTENERS".into(), "".into()),
                ("OCTOPUS_READY_FD".into(), "".into()),
                ("OCTOPUS_PARENT_PID".into(), "1".into()),
            ],
            ..Setup::default()
        },
    );
    assert!(!server.wait_first_exit().success());
    server.wait_for(&["OCTOPUS_READY_FD=\"\" is malformed"]);
}

#[test]
fn inherited_fds_that_are_not_the_described_listener_are_refused() {
    let file = tempfile::tempfile().unwrap();
    let (pipe_read, _pipe_write) = rustix::pipe::pipe().unwrap();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let connected = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();
    let asked = "tcp:127.0.0.1:1";
    let closed = 900;
    let cases: Vec<(i32, &str)> = vec![
        (closed, "is not open"),
        (file.as_raw_fd(), "is a regular file, not a socket"),
        (pipe_read.as_raw_fd(), "is a pipe, not a socket"),
        (udp.as_raw_fd(), "is not a stream socket"),
        (
            connected.as_raw_fd(),
            "is a stream socket that is not listening",
        ),
        (elsewhere.as_raw_fd(), "listens on 127.0.0.1:"),
    ];
    for (fd, problem) in cases {
        let inherit: Vec<i32> = if fd == closed { vec![] } else { vec![fd] };
        assert_refused(
            &format!("{fd}={asked}"),
            &inherit,
            "OCTOPUS_LISTENERS",
            Some(fd),
            problem,
        );
    }
    assert!(elsewhere_port > 1);
}

#[test]
fn hand_over_variables_meant_for_another_process_are_ignored() {
    let leftovers = [
        // As if `export`ed from an earlier run: they name another process's parent.
        ("999999", None),
        // As an application's own child inherits them from a generation: the pid they were
        // meant for is another process's.
        ("PARENT", Some("999999")),
    ];
    for (parent, meant_for) in leftovers {
        let parent = parent.replace("PARENT", &std::process::id().to_string());
        let mut env = vec![
            ("OCTOPUS_LISTENERS".into(), "3=tcp:127.0.0.1:8080".into()),
            ("OCTOPUS_READY_FD".into(), "4".into()),
            ("OCTOPUS_PARENT_PID".into(), parent),
        ];
        env.extend(meant_for.map(|pid| ("OCTOPUS_PID".into(), pid.into())));
        let mut server = Hello::start_with(
            &hello_binary(),
            LOCAL,
            &Setup {
                env,
                ..Setup::default()
            },
        );
        // Whatever fds 3 and 4 are in this process, they are not touched: a first start.
        let port = server.port();
        assert_eq!(pid_answering(port), server.first_pid());
        let log = server.log_text();
        assert!(
            log.contains("listener created") && !log.contains("started by an upgrade"),
            "{meant_for:?}: a first start:\n{log}"
        );
        signal(server.first_pid(), Signal::TERM);
        assert!(server.wait_first_exit().success());
    }
}
