//! The `octopus` command against the real example server started with `--control`.
//!
//! These tests live in the `octopus-cli` package so that cargo builds the `octopus` binary before
//! they run (`CARGO_BIN_EXE_octopus`); the example server comes from the root package, which
//! `cargo test` at the workspace root builds too (both are default members).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::*;

fn octopus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_octopus"))
}

/// Runs `octopus ARGS --control PATH`, bounded: the command's own limits are longer than a test's.
fn run(args: &[&str], control: &Path) -> Output {
    let mut command = octopus();
    command.args(args).arg("--control").arg(control);
    output_within(command)
}

fn output_within(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiter = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while std::time::Instant::now() < deadline {
            if !Path::new(&format!("/proc/{pid}")).exists() || state(pid) == Some('Z') {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        kill(pid, rustix::process::Signal::KILL);
    });
    let output = child.wait_with_output().unwrap();
    waiter.join().unwrap();
    output
}

fn code(output: &Output) -> i32 {
    output
        .status
        .code()
        .expect("octopus exits, it is not killed")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?} {}", stderr(output)))
}

fn status(control: &Path) -> Value {
    let output = run(&["status", "--json"], control);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    json(&output)
}

/// A server with a control socket in a directory of its own.
struct Served {
    server: Hello,
    control: PathBuf,
    _dir: tempfile::TempDir,
}

fn start_program(program: &Path, extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--control",
        control.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let server = Hello::start_program(program, &args);
    server.wait_for(&["server started"]);
    Served {
        server,
        control,
        _dir: dir,
    }
}

fn start(extra: &[&str]) -> Served {
    start_program(&hello_binary(), extra)
}

#[test]
fn upgrade_exits_0_once_the_new_process_serves_and_the_old_one_drains() {
    let mut served = start(&[]);
    let port = served.server.port();
    let old = served.server.first_pid();
    let output = run(&["upgrade"], &served.control);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let new: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new, old);
    let text = stderr(&output);
    for step in [
        format!("spawned pid {new}"),
        "ready after".into(),
        format!("old pid {old} draining"),
    ] {
        assert!(text.contains(&step), "{step:?} in {text}");
    }
    assert_eq!(pid_answering(port), new);
    assert!(served.server.wait_first_exit().success());
    let status = status(&served.control);
    assert_eq!(status["pid"], new);
    assert_eq!(status["generation"], 2);
    assert_eq!(status["last_upgrade"]["ok"], true);
    assert_eq!(status["last_upgrade"]["pid"], new);
}

#[test]
fn a_broken_binary_is_rolled_back_with_exit_1_and_the_reason() {
    let bin = tempfile::tempdir().unwrap();
    let program = copy_of_hello(bin.path());
    let served = start_program(&program, &[]);
    let port = served.server.port();
    let old = served.server.first_pid();
    replace_with_script(&program, "#!/bin/sh\nexit 3\n");
    let output = run(&["upgrade", "--json"], &served.control);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let answer = json(&output);
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["reason"], "exited");
    assert_eq!(answer["exit_code"], 3);
    let text = stderr(&output);
    assert!(
        text.contains("rolled back") && text.contains("exited before it was ready"),
        "{text}"
    );
    assert_eq!(pid_answering(port), old);
    let status = status(&served.control);
    assert_eq!(status["pid"], old);
    assert_eq!(status["state"], "serving");
    assert_eq!(status["last_upgrade"]["ok"], false);
    assert_eq!(status["last_upgrade"]["reason"], "exited");
}

#[test]
fn an_upgrade_during_an_upgrade_is_refused_with_exit_1() {
    let bin = tempfile::tempdir().unwrap();
    let program = copy_of_hello(bin.path());
    let served = start_program(&program, &[]);
    let port = served.server.port();
    // The next version blocks on a FIFO until the test lets it go.
    let fifo = bin.path().join("go");
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, rustix::fs::Mode::from(0o600)).unwrap();
    let real = bin.path().join("hello-real");
    std::fs::copy(hello_binary(), &real).unwrap();
    replace_with_script(
        &program,
        format!(
            "#!/bin/sh\nread go < {}\nexec {} \"$@\"\n",
            fifo.display(),
            real.display()
        ),
    );
    let mut first = octopus();
    first
        .args(["upgrade", "--control"])
        .arg(&served.control)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let first = std::thread::spawn(move || output_within(first));
    served.server.wait_for(&["new process spawned"]);
    assert_eq!(status(&served.control)["state"], "upgrading");

    let second = run(&["upgrade"], &served.control);
    assert_eq!(code(&second), 1, "{}", stderr(&second));
    assert!(
        stderr(&second).contains("refused") && stderr(&second).contains("already in progress"),
        "{}",
        stderr(&second)
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let first = first.join().unwrap();
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let new: u32 = String::from_utf8_lossy(&first.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid_answering(port), new);
}

#[test]
fn keep_old_leaves_both_serving_and_the_control_socket_to_the_new_one() {
    let served = start(&[]);
    let port = served.server.port();
    let old = served.server.first_pid();
    let output = run(&["upgrade", "--keep-old"], &served.control);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stderr(&output).contains(&format!("old pid {old} keeps serving")));
    let new: u32 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        seen.insert(pid_answering(port));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, [old, new].into(), "both generations answer");
    let status = status(&served.control);
    assert_eq!(status["pid"], new, "the newest generation answers commands");
    assert_eq!(status["parent_pid"], old, "its parent is alive beside it");
}

#[test]
fn stop_wait_returns_once_the_process_exited_and_the_slow_request_finished() {
    let mut served = start(&["--drain-timeout", "10"]);
    let port = served.server.port();
    let pid = served.server.first_pid();
    let slow = std::thread::spawn(move || get(port, "/sleep?ms=1500"));
    eventually("the slow request is in flight", || {
        status(&served.control)["listeners"][0]["in_flight"] == 1
    });
    let output = run(&["stop", "--wait", "--json"], &served.control);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let answer = json(&output);
    assert_eq!(
        (answer["finished"].clone(), answer["cut"].clone()),
        (1.into(), 0.into())
    );
    assert!(
        stderr(&output).contains(&format!(
            "process {pid} exited; 1 connections finished, 0 cut"
        )),
        "{}",
        stderr(&output)
    );
    assert!(matches!(state(pid), None | Some('Z')), "exited by now");
    let reply = slow.join().unwrap().expect("the slow request is answered");
    assert_eq!((reply.status, reply.body.as_str()), (200, "slept 1500\n"));
    assert!(served.server.wait_first_exit().success());
}

#[test]
fn the_socket_survives_10_upgrades_at_the_same_path_with_the_same_inode() {
    let served = start(&[]);
    let port = served.server.port();
    let inode = std::fs::metadata(&served.control).unwrap().ino();
    let mut pids = vec![served.server.first_pid()];
    for round in 0..10 {
        let output = run(&["upgrade"], &served.control);
        assert_eq!(code(&output), 0, "round {round}: {}", stderr(&output));
        let new: u32 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        assert!(!pids.contains(&new));
        pids.push(new);
        assert_eq!(pid_answering(port), new);
        assert_eq!(std::fs::metadata(&served.control).unwrap().ino(), inode);
    }
    let status = status(&served.control);
    assert_eq!(status["pid"], *pids.last().unwrap());
    assert_eq!(status["generation"], 11);
    assert_eq!(
        std::fs::metadata(&served.control).unwrap().mode() & 0o777,
        0o600
    );
}

#[test]
fn status_counts_20_keep_alive_clients_and_the_requests_in_flight() {
    let served = start(&["--unix", "app.sock"]);
    let port = served.server.port();
    let mut clients: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream
                .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut reply = [0u8; 1024];
            let n = stream.read(&mut reply).unwrap();
            assert!(String::from_utf8_lossy(&reply[..n]).ends_with("pong\n"));
            stream
        })
        .collect();
    let status = status(&served.control);
    assert_eq!(status["pid"], served.server.first_pid());
    assert_eq!(status["state"], "serving");
    assert_eq!(status["generation"], 1);
    assert_eq!(status["parent_pid"], Value::Null);
    assert_eq!(status["last_upgrade"], Value::Null);
    assert_eq!(status["drain_deadline"], Value::Null);
    let listeners = status["listeners"].as_array().unwrap();
    assert_eq!(
        listeners.len(),
        2,
        "the control socket is not listed: {listeners:?}"
    );
    let tcp = &listeners[0];
    assert_eq!(tcp["key"], "tcp:127.0.0.1:0");
    assert_eq!(tcp["address"], format!("127.0.0.1:{port}"));
    assert_eq!(
        (tcp["connections"].clone(), tcp["in_flight"].clone()),
        (20.into(), 0.into())
    );
    assert_eq!(listeners[1]["connections"], 0);
    assert!(listeners[1]["key"].as_str().unwrap().starts_with("unix:"));

    clients[0]
        .write_all(b"GET /sleep?ms=60000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    eventually("one request in flight", || {
        let tcp = &status_of(&served.control)["listeners"][0];
        tcp["in_flight"] == 1 && tcp["connections"] == 20
    });
    clients.truncate(10);
    eventually("10 clients closed", || {
        status_of(&served.control)["listeners"][0]["connections"] == 10
    });
    let human = run(&["status"], &served.control);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(!text.contains('\x1b'), "no colours off a terminal: {text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("tcp:127.0.0.1:0") && l.contains("10") && l.ends_with(" 1")),
        "{text}"
    );
}

fn status_of(control: &Path) -> Value {
    status(control)
}

#[test]
fn another_user_is_refused_and_logged() {
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        println!("SKIPPED: setpriv is not installed, so the client cannot run as another user");
        return;
    };
    if !rustix::process::geteuid().is_root() {
        println!("SKIPPED: only root can run the client as nobody");
        return;
    }
    let served = start(&[]);
    let dir = served.control.parent().unwrap();
    // The client binary must be reachable by nobody: a copy beside the socket.
    let client = dir.join("octopus");
    std::fs::copy(env!("CARGO_BIN_EXE_octopus"), &client).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = || {
        let mut command = Command::new(setpriv);
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&client)
            .args(["status", "--control"])
            .arg(&served.control);
        output_within(command)
    };
    // Mode 0600: the kernel refuses the connection.
    let output = as_nobody();
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("permission denied"),
        "{}",
        stderr(&output)
    );
    // Opened to everyone: the server's credential check refuses it.
    std::fs::set_permissions(&served.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let output = as_nobody();
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("user 65534 may not control"),
        "{}",
        stderr(&output)
    );
    served
        .server
        .wait_for(&["control connection refused", "uid=65534"]);
    assert_eq!(status(&served.control)["state"], "serving");
}

/// One raw exchange: the lines the server sends back until it closes.
fn exchange(control: &Path, sent: &[u8]) -> Vec<Value> {
    let mut stream = UnixStream::connect(control).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(sent).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .map(|line| serde_json::from_str(&line).unwrap())
        .collect()
}

#[test]
fn bad_input_gets_an_error_and_serving_goes_on() {
    let served = start(&[]);
    let port = served.server.port();
    let cases: [(&[u8], &str); 4] = [
        (b"hello\n", "not a command"),
        (b"{\"v\":1,\"cmd\":\"reboot\"}\n", "unknown command"),
        (b"{\"v\":9,\"cmd\":\"status\"}\n", "version 9"),
        (
            b"{\"v\":1,\"cmd\":\"stop\",\"keep_old\":true}\n",
            "not valid",
        ),
    ];
    for (sent, expected) in cases {
        let answers = exchange(&served.control, sent);
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0]["ok"], false);
        assert_eq!(answers[0]["v"], 1);
        assert!(
            answers[0]["error"].as_str().unwrap().contains(expected),
            "{answers:?}"
        );
    }
    // A line over 64 KiB: an error, and the connection is closed.
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    let mut stream = UnixStream::connect(&served.control).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let _ = stream.write_all(&long);
    let mut answer = String::new();
    let mut reader = BufReader::new(stream);
    reader.read_line(&mut answer).unwrap();
    assert!(answer.contains("longer than 64 KiB"), "{answer}");
    assert_eq!(reader.read_line(&mut String::new()).unwrap(), 0, "closed");
    // Two commands on one connection are both answered.
    let answers = exchange(
        &served.control,
        b"{\"v\":1,\"cmd\":\"status\"}\n{\"v\":1,\"cmd\":\"status\"}\n",
    );
    assert_eq!(answers.len(), 2);
    assert!(answers.iter().all(|a| a["ok"] == true));
    assert_eq!(pid_answering(port), served.server.first_pid());
}

#[test]
fn a_silent_client_and_a_thousand_at_once_are_bounded_and_never_slow_serving() {
    let served = start(&[]);
    let port = served.server.port();
    let mut silent = UnixStream::connect(&served.control).unwrap();
    silent.set_read_timeout(Some(TIMEOUT)).unwrap();
    let flood: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&served.control).unwrap())
        .collect();
    // Accepted in order: once a later client is refused, every one of the flood was handled.
    let late = exchange(&served.control, b"");
    assert!(
        late[0]["error"].as_str().unwrap().contains("busy"),
        "{late:?}"
    );
    // Serving goes on meanwhile.
    for _ in 0..20 {
        assert_eq!(get(port, "/ping").unwrap().body, "pong\n");
    }
    let (mut busy, mut admitted) = (0, 0);
    for mut stream in &flood {
        stream.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 1024];
        match stream.read(&mut buffer) {
            Ok(n) => {
                let answer: Value = serde_json::from_slice(&buffer[..n]).unwrap();
                assert_eq!(answer["ok"], false);
                assert!(
                    answer["error"].as_str().unwrap().contains("busy"),
                    "{answer}"
                );
                busy += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => admitted += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        (admitted, busy),
        (63, 937),
        "64 at once, the silent client included"
    );
    drop(flood);
    eventually(
        "the admitted clients are gone and status is answered again",
        || {
            let output = run(&["status"], &served.control);
            code(&output) == 0
        },
    );
    assert_eq!(get(port, "/ping").unwrap().body, "pong\n");
    // The silent client is told why and closed after the bounded wait.
    let mut line = String::new();
    BufReader::new(&silent).read_line(&mut line).unwrap();
    assert!(line.contains("no command within"), "{line}");
    let _ = silent.write_all(b"x");
    assert_eq!(status(&served.control)["state"], "serving");
}

#[test]
fn a_stale_socket_file_is_replaced_and_a_live_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&control).unwrap());
    assert!(control.exists(), "a socket file nobody listens on");
    let control_arg = control.to_str().unwrap();
    let first = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--control", control_arg]);
    first.wait_for(&["replacing a stale socket file"]);
    first.wait_for(&["server started"]);
    assert_eq!(status(&control)["pid"], first.first_pid());

    let mut second = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--control", control_arg]);
    assert!(
        !second.wait_first_exit().success(),
        "a live control socket is not taken over"
    );
    second.wait_for(&["cannot listen on", "control.sock"]);
    assert_eq!(status(&control)["pid"], first.first_pid());
}

#[test]
fn a_signal_started_upgrade_shows_in_status() {
    let served = start(&[]);
    let old = served.server.first_pid();
    signal(old, rustix::process::Signal::HUP);
    let new = field(&served.server.wait_for(&["new process ready"]), "pid");
    // The old generation's control loop may take one more client just after the hand-over.
    eventually("the new process answers on the control socket", || {
        status(&served.control)["pid"] == new
    });
    let status = status(&served.control);
    assert_eq!(status["pid"], new);
    assert_eq!(status["last_upgrade"]["ok"], true);
    assert!(status["last_upgrade"]["duration_ms"].as_u64().is_some());
    assert_eq!(status["generation"], 2);
}

#[test]
fn an_unreachable_socket_or_an_answer_not_understood_exits_2_saying_what_to_try() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    for command in [&["status"][..], &["upgrade"], &["stop", "--wait"]] {
        let output = run(command, &missing);
        assert_eq!(code(&output), 2, "{command:?}: {}", stderr(&output));
        let said = stderr(&output);
        assert!(
            said.contains(&missing.display().to_string()) && said.contains("--control"),
            "names the path and the option: {said}"
        );
        assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
    }
    let file = dir.path().join("regular-file");
    std::fs::write(&file, "not a socket").unwrap();
    let output = run(&["status"], &file);
    assert_eq!(code(&output), 2, "{}", stderr(&output));
    // Something that answers, but not the protocol.
    let other = dir.path().join("other.sock");
    let listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\n\r\n").unwrap();
    });
    let output = run(&["status"], &other);
    server.join().unwrap();
    assert_eq!(code(&output), 2, "{}", stderr(&output));
}
