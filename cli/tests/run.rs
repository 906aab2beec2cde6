//! `octopus run` supervising a real Python server (tests/servers/server.py, standard library
//! only): it takes fd 3 by socket activation and reports READY=1 on NOTIFY_SOCKET.

#[path = "../../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::process::Signal;
use serde_json::Value;
use support::*;

fn server_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/server.py")
}

fn octopus_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_octopus"))
}

/// Writes the program the supervisor runs: a script, replaced on disk the way a deploy does,
/// that runs the Python server in `mode`.
fn write_app(dir: &Path, mode: &str) -> PathBuf {
    let app = dir.join("app");
    replace_with_script(
        &app,
        format!(
            "#!/bin/sh\nexec python3 {} --mode {mode} --hold {} \"$@\"\n",
            server_py().display(),
            dir.join("hold").display()
        ),
    );
    app
}

/// A supervisor and its instances; dropping it kills them all, pass or fail.
struct Run {
    supervisor: Hello,
    dir: tempfile::TempDir,
    control: PathBuf,
    port: u16,
}

impl Run {
    fn start(extra: &[&str]) -> Run {
        Self::start_from(&octopus_binary(), extra)
    }

    fn start_from(binary: &Path, extra: &[&str]) -> Run {
        Self::start_program(binary, extra, None)
    }

    /// Runs `program`, or the Python server through a script a test may replace.
    fn start_program(binary: &Path, extra: &[&str], program: Option<&Path>) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let app = match program {
            Some(program) => program.to_path_buf(),
            None => write_app(dir.path(), "ok"),
        };
        let control = dir.path().join("control.sock");
        let mut args = vec![
            "run",
            "--listen",
            "127.0.0.1:0",
            "--control",
            control.to_str().unwrap(),
        ];
        args.extend(extra);
        args.extend(["--", app.to_str().unwrap()]);
        let supervisor = Hello::start_program(binary, &args);
        let line = supervisor.wait_for(&["listening on "]);
        let address = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let port = address.parse::<std::net::SocketAddr>().unwrap().port();
        let run = Run {
            supervisor,
            dir,
            control,
            port,
        };
        run.supervisor.wait_for(&["ready after"]);
        run
    }

    fn pid(&self) -> u32 {
        self.supervisor.first_pid()
    }

    fn octopus(&self, args: &[&str]) -> Output {
        let mut command = Command::new(octopus_binary());
        command.args(args).arg("--control").arg(&self.control);
        output_within(command)
    }

    fn status(&self) -> Value {
        let output = self.octopus(&["status", "--json"]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        json(&output)
    }

    /// The instance that serves, once it is ready.
    fn serving(&self) -> u32 {
        let mut pid = 0;
        eventually("a ready instance serves", || {
            let status = self.status();
            let serving = &status["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["role"] == "serving")
                .cloned();
            match serving {
                Some(i) if i["ready"] == true && status["state"] == "serving" => {
                    pid = i["pid"].as_u64().unwrap() as u32;
                    true
                }
                _ => false,
            }
        });
        pid
    }

    fn app(&self, mode: &str) {
        write_app(self.dir.path(), mode);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Instances lead process groups of their own, outside the supervisor's.
        for pid in children(self.pid()) {
            if let Some(pgid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
            }
        }
    }
}

/// The children of `parent`, from /proc.
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json(output: &Output) -> Value {
    let out = text(&output.stdout);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{e}: {out:?} {}", text(&output.stderr)))
}

/// Runs a command to its end, killed if it outlives the test's bound.
fn output_within(mut command: Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if is_gone(pid) || state(pid) == Some('Z') {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        kill(pid, Signal::KILL);
    });
    let output = child.wait_with_output().unwrap();
    watchdog.join().unwrap();
    output
}

/// The socket behind fd 3 of `pid`: `socket:[INODE]`.
fn fd3(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The sockets `pid` holds, by fd number.
fn sockets_of(pid: u32) -> Vec<u32> {
    let mut fds: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

/// The kinds of the fds of `pid` once two reads agree: a control client the test just closed
/// is gone.
fn quiet_fds(pid: u32) -> Vec<String> {
    let mut last = fd_kinds(pid);
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let now = fd_kinds(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the fds of {pid} keep changing: {last:?}");
}

/// The fds above stderr of `pid` that are not close-on-exec (fdinfo `flags`, octal).
fn inherited_by_exec(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let fd: u32 = e.file_name().to_str()?.parse().ok()?;
            let info = std::fs::read_to_string(e.path()).ok()?;
            let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?.trim();
            let flags = u32::from_str_radix(flags, 8).ok()?;
            (fd > 2 && flags & 0o2000000 == 0).then_some(fd)
        })
        .collect()
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Lets an instance held on the FIFO `path` go on.
fn release(path: &Path) {
    drop(std::fs::OpenOptions::new().write(true).open(path).unwrap());
}

#[test]
fn upgrades_under_load_fail_no_request_and_refuse_no_connection() {
    let run = Run::start(&[]);
    let first = run.serving();
    assert_eq!(pid_answering(run.port), first);
    let load = Load::start(run.port);
    let supervisor_fds = quiet_fds(run.pid());
    let socket = fd3(first);
    let mut old = first;
    for _ in 0..3 {
        let output = run.octopus(&["upgrade"]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let new: u32 = text(&output.stdout).trim().parse().unwrap();
        assert_ne!(new, old);
        assert!(
            text(&output.stderr).contains(&format!("old pid {old} draining")),
            "{}",
            text(&output.stderr)
        );
        eventually("the old instance exits and is reaped", || is_gone(old));
        assert_eq!(pid_answering(run.port), new);
        assert_eq!(
            fd3(new),
            socket,
            "every instance gets the one listening socket at fd 3"
        );
        old = new;
    }
    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "{ok} answered");
    assert!(ok > 0);
    assert_eq!(
        fd_kinds(run.pid()),
        supervisor_fds,
        "the supervisor leaks no fd across upgrades"
    );
    let status = run.status();
    assert_eq!(status["instances"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["last_upgrade"]["ok"], true, "{status}");
    assert_eq!(status["last_upgrade"]["pid"], old, "{status}");
}

#[test]
fn a_broken_new_version_is_rolled_back_and_the_serving_one_is_untouched() {
    let run = Run::start(&["--upgrade-timeout", "3"]);
    let serving = run.serving();

    run.app("exit1");
    let output = run.octopus(&["upgrade", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let answer = json(&output);
    assert_eq!(answer["reason"], "exited", "{answer}");
    assert_eq!(answer["exit_code"], 1, "{answer}");
    assert!(
        is_gone(answer["pid"].as_u64().unwrap() as u32),
        "the failed instance is reaped"
    );
    assert!(
        text(&output.stderr).contains("rolled back"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(pid_answering(run.port), serving);

    run.app("never");
    let output = run.octopus(&["upgrade", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let answer = json(&output);
    assert_eq!(answer["reason"], "timeout", "{answer}");
    assert!(
        is_gone(answer["pid"].as_u64().unwrap() as u32),
        "the instance never ready is killed and reaped"
    );
    assert_eq!(pid_answering(run.port), serving);
    assert_eq!(
        run.serving(),
        serving,
        "the serving instance was never signalled"
    );

    // Ready, then a crash: the upgrade succeeds, then the crash loop is restarted with backoff
    // (the file on disk still crashes) until a fixed version is deployed.
    run.app("crash-after-ready");
    let output = run.octopus(&["upgrade"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    eventually("the old instance is stopped", || is_gone(serving));
    eventually("the crashing version is restarted twice", || {
        let status = run.status();
        status["restarts"].as_u64() >= Some(2) && status["failures_in_a_row"].as_u64() >= Some(2)
    });
    let status = run.status();
    assert_eq!(status["last_exit"]["exit_code"], 2, "{status}");
    run.app("ok");
    let fixed = run.serving();
    assert_eq!(pid_answering(run.port), fixed);
}

#[test]
fn a_second_upgrade_while_one_waits_for_ready_is_refused() {
    let run = Run::start(&[]);
    let serving = run.serving();
    let hold = run.dir.path().join("hold");
    mkfifo(&hold);
    let first = {
        let mut command = Command::new(octopus_binary());
        command.args(["upgrade", "--control"]).arg(&run.control);
        std::thread::spawn(move || output_within(command))
    };
    eventually("the upgrade waits for the held instance", || {
        run.status()["state"] == "upgrading"
    });
    let second = run.octopus(&["upgrade", "--json"]);
    assert_eq!(second.status.code(), Some(1));
    assert_eq!(json(&second)["reason"], "in_progress");
    assert!(
        text(&second.stderr).contains("refused"),
        "{}",
        text(&second.stderr)
    );
    assert_eq!(
        pid_answering(run.port),
        serving,
        "the old instance serves meanwhile"
    );
    release(&hold);
    std::fs::remove_file(&hold).unwrap();
    let first = first.join().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let new: u32 = text(&first.stdout).trim().parse().unwrap();
    assert_eq!(pid_answering(run.port), new);
}

#[test]
fn a_crashed_instance_restarts_on_the_same_socket_and_no_connection_is_refused() {
    let run = Run::start(&[]);
    let crashed = run.serving();
    let socket = fd3(crashed);
    let hold = run.dir.path().join("hold");
    mkfifo(&hold);
    let down_since = Instant::now();
    signal(crashed, Signal::KILL);
    eventually("the crashed instance is reaped", || is_gone(crashed));
    // The restarted instance waits on the FIFO: no instance accepts, the kernel queues.
    let mut waiting = Vec::new();
    while down_since.elapsed() < Duration::from_secs(1) || waiting.len() < 5 {
        let mut stream = TcpStream::connect(("127.0.0.1", run.port))
            .expect("a connection while no instance runs is queued, not refused");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            stream,
            "GET /pid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        waiting.push(stream);
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = run.status();
    let restarted = status["instances"][0]["pid"].as_u64().unwrap() as u32;
    assert_ne!(restarted, crashed);
    assert_eq!(
        status["instances"][0]["ready"], false,
        "held before ready: {status}"
    );
    assert_eq!(status["restarts"], 1, "{status}");
    assert_eq!(status["last_exit"]["signal"], 9, "{status}");
    assert_eq!(
        fd3(restarted),
        socket,
        "the same socket, kept open by the supervisor"
    );
    release(&hold);
    std::fs::remove_file(&hold).unwrap();
    for mut stream in waiting {
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).unwrap();
        let reply = parse(&raw).unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body.trim().parse::<u32>().unwrap(), restarted);
    }
    assert_eq!(run.serving(), restarted);
}

#[test]
fn sigterm_lets_the_slow_request_finish_then_exits_0_and_removes_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("run.pid");
    let mut run = Run::start(&["--pid-file", pid_file.to_str().unwrap()]);
    let instance = run.serving();
    assert_eq!(pid_in(&pid_file), Some(run.pid()));
    assert_eq!(
        sockets_of(instance).first(),
        Some(&3),
        "the listener is fd 3"
    );
    let mark = dir.path().join("slow-started");
    let port = run.port;
    let path = format!("/slow?ms=1500&mark={}", mark.display());
    let slow = std::thread::spawn(move || get(port, &path));
    eventually("the slow request is in flight", || mark.exists());
    signal(run.pid(), Signal::TERM);
    let reply = slow
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(reply.status, 200);
    assert!(reply.body.starts_with("slow done"), "{reply:?}");
    let status = run.supervisor.wait_first_exit();
    assert_eq!(status.code(), Some(0), "{}", run.supervisor.log_text());
    assert!(is_gone(instance));
    assert!(!pid_file.exists(), "the pid file is removed");
    assert!(!run.control.exists(), "the control socket file is removed");
    let runtime = std::env::temp_dir().join(format!("octopus-run-{}", run.pid()));
    assert!(!runtime.exists(), "{} is removed", runtime.display());
    assert!(
        TcpStream::connect(("127.0.0.1", run.port)).is_err(),
        "the listener is closed"
    );
}

#[test]
fn status_shows_the_supervisor_its_instance_and_listeners_and_stop_waits_for_the_end() {
    let mut run = Run::start(&[]);
    let instance = run.serving();
    let output = run.octopus(&["status"]);
    assert_eq!(output.status.code(), Some(0));
    let shown = text(&output.stdout);
    assert!(
        shown.contains(&format!("supervisor pid  {}", run.pid())),
        "{shown}"
    );
    assert!(shown.contains("state           serving"), "{shown}");
    assert!(
        shown.contains(&format!("{instance:<10} serving  yes")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("127.0.0.1:{}", run.port)),
        "{shown}"
    );
    assert!(shown.contains("restarts        0"), "{shown}");
    let status = run.status();
    assert_eq!(status["listeners"][0]["fd"], 3);
    assert_eq!(status["listeners"][0]["key"], "127.0.0.1:0");
    assert_eq!(
        run.supervisor.count(&["instance", "says STATUS=serving"]),
        1,
        "other notify messages are logged"
    );
    let stop = run.octopus(&["stop", "--wait", "--json"]);
    assert_eq!(stop.status.code(), Some(0), "{}", text(&stop.stderr));
    assert_eq!(json(&stop)["exit_code"], 0);
    assert!(is_gone(instance));
    assert_eq!(run.supervisor.wait_first_exit().code(), Some(0));
}

#[test]
fn the_supervisor_reexecs_in_place_and_its_instance_keeps_serving_under_load() {
    let bin = tempfile::tempdir().unwrap();
    let copy = bin.path().join("octopus");
    std::fs::copy(octopus_binary(), &copy).unwrap();
    let mut run = Run::start_from(&copy, &[]);
    let instance = run.serving();
    let load = Load::start(run.port);

    let output = run.octopus(&["upgrade", "--supervisor"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains(&format!("instance {instance} kept serving")),
        "{}",
        text(&output.stderr)
    );
    let status = run.status();
    assert_eq!(status["pid"], run.pid(), "the same process: {status}");
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(run.serving(), instance, "the instance was not touched");
    let fds = quiet_fds(run.pid());
    let inherited = inherited_by_exec(run.pid());

    signal(run.pid(), Signal::USR2);
    eventually("SIGUSR2 re-executes the supervisor", || {
        run.status()["generation"] == 3
    });
    assert_eq!(run.serving(), instance);
    assert_eq!(quiet_fds(run.pid()), fds, "no fd leaks across a re-exec");
    assert_eq!(
        inherited_by_exec(run.pid()),
        inherited,
        "a re-exec passes on no fd of its own beyond the sockets it adopts"
    );

    // The new image reaps the instance it adopted when an upgrade replaces it.
    let output = run.octopus(&["upgrade"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    eventually("the adopted instance is stopped and reaped", || {
        is_gone(instance)
    });

    // A broken binary is refused while the running image goes on.
    replace_with_script(&copy, "#!/bin/sh\nexit 1\n");
    let output = run.octopus(&["upgrade", "--supervisor", "--json"]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert_eq!(json(&output)["reason"], "preflight");
    assert_eq!(run.status()["generation"], 3);

    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "{ok} answered");
    signal(run.pid(), Signal::TERM);
    assert_eq!(run.supervisor.wait_first_exit().code(), Some(0));
    assert!(
        !run.control.exists(),
        "the re-executed supervisor removes what the first created"
    );
}

#[test]
fn http_readiness_asks_the_path_on_the_listener() {
    let run = Run::start(&["--ready", "http:/ping"]);
    let instance = run.serving();
    let output = run.octopus(&["upgrade"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    eventually("the old instance is reaped", || is_gone(instance));
    assert_eq!(
        run.supervisor.count(&["says STATUS="]),
        0,
        "no NOTIFY_SOCKET in http mode"
    );
}

/// The Go server (tests/servers/go), built once by this test binary; `None` without Go.
fn go_server() -> Option<PathBuf> {
    static BUILT: std::sync::OnceLock<Option<(tempfile::TempDir, PathBuf)>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if Command::new("go").arg("version").output().is_err() {
                eprintln!("SKIPPED: `go` is not on PATH; install golang-go (Debian) to run the Go server tests");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let binary = dir.path().join("goserver");
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/servers/go/main.go");
            let mut command = Command::new("go");
            command.arg("build").arg("-o").arg(&binary).arg(&source).env("CGO_ENABLED", "0");
            let output = command.output().unwrap();
            assert!(output.status.success(), "go build failed: {}", text(&output.stderr));
            Some((dir, binary))
        })
        .as_ref()
        .map(|(_, binary)| binary.clone())
}

#[test]
fn a_go_net_http_server_upgrades_under_load_and_finishes_its_slow_request_on_sigterm() {
    let Some(server) = go_server() else { return };
    let mut run = Run::start_program(&octopus_binary(), &[], Some(&server));
    let first = run.serving();
    let load = Load::start(run.port);
    let mut old = first;
    for _ in 0..3 {
        let output = run.octopus(&["upgrade"]);
        assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
        let new: u32 = text(&output.stdout).trim().parse().unwrap();
        eventually("the old Go instance drains and is reaped", || is_gone(old));
        assert_eq!(pid_answering(run.port), new);
        old = new;
    }
    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "{ok} answered");
    assert!(ok > 0);

    let port = run.port;
    let slow = std::thread::spawn(move || get(port, "/slow?ms=1500"));
    eventually("the slow request is in flight", || {
        // The Go server holds the accepted connection: one more socket than its listener.
        sockets_of(old).len() > 1
    });
    signal(run.pid(), Signal::TERM);
    let reply = slow
        .join()
        .unwrap()
        .expect("the request in flight is answered");
    assert!(reply.body.starts_with("slow done"), "{reply:?}");
    assert_eq!(run.supervisor.wait_first_exit().code(), Some(0));
    assert!(is_gone(old));
}

#[test]
fn tcp_readiness_sees_a_go_server_polling_its_listener() {
    let Some(server) = go_server() else { return };
    let run = Run::start_program(&octopus_binary(), &["--ready", "tcp"], Some(&server));
    let first = run.serving();
    let output = run.octopus(&["upgrade"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    eventually("the old instance is reaped", || is_gone(first));
    assert_ne!(pid_answering(run.port), first);
}

#[test]
fn an_old_instance_deaf_to_the_stop_signal_is_killed_with_its_children_after_the_stop_timeout() {
    let run = Run::start(&["--stop-timeout", "1"]);
    let first = run.serving();
    run.app("stubborn");
    let output = run.octopus(&["upgrade"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    let stubborn = run.serving();
    let mut forked = Vec::new();
    eventually("the stubborn instance forked its child", || {
        forked = children(stubborn);
        !forked.is_empty()
    });
    eventually("the first instance is reaped", || is_gone(first));
    run.app("ok");
    let output = run.octopus(&["upgrade"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    // SIGTERM is ignored; one second later, SIGKILL to the process group.
    run.supervisor
        .wait_for(&[&format!("instance {stubborn} did not exit within 1s")]);
    eventually("the stubborn instance is killed and reaped", || {
        is_gone(stubborn)
    });
    for child in forked {
        eventually("its child is killed too", || {
            reap_if_adopted(child);
            is_gone(child)
        });
    }
}

#[test]
fn an_instance_whose_supervisor_is_killed_is_told_to_stop() {
    let run = Run::start(&[]);
    let instance = run.serving();
    signal(run.pid(), Signal::KILL);
    // The parent-death signal (SIGTERM) stops the instance, which this subreaper test reaps.
    eventually("the orphaned instance stops", || {
        reap_if_adopted(instance);
        is_gone(instance)
    });
}
