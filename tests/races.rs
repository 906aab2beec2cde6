//! Races between a shutdown, a ready report and a hand-over, against the real example server:
//! whichever comes first, the service is never lost, no request fails, and no successor is left
//! serving unannounced. Each window is held open deterministically (a stopped process, a FIFO, a
//! slow start) rather than hit by luck.

mod support;

use std::path::Path;

use rustix::process::Signal;
use support::*;

/// Makes the next generation a script that waits `secs` before it becomes the example.
fn next_starts_slowly(bin: &Path, program: &Path, secs: f64) {
    let real = bin.join("hello-real");
    std::fs::copy(hello_binary(), &real).unwrap();
    slow_start(program, &real, secs);
}

/// Whether some thread of `pid` waits in the kernel function `wchan`.
fn waits_in(pid: u32, wchan: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("wchan")).is_ok_and(|w| w.trim() == wchan)
            })
        })
        .unwrap_or(false)
}

#[test]
fn a_shutdown_racing_the_ready_report_never_leaves_a_successor_serving_unannounced() {
    let (mut server, bin, program) = start_copy(&[]);
    let port = server.port();
    let old = server.first_pid();
    next_starts_slowly(bin.path(), &program, 0.3);
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process spawned"]), "pid");
    // The old process is held while the new one reports ready and the shutdown arrives: both are
    // pending when it resumes, and it must settle them one way or the other.
    kill(old, Signal::STOP);
    server.wait_for(&["reported ready to the old process"]);
    kill(old, Signal::TERM);
    kill(old, Signal::CONT);
    let status = server.wait_first_exit();
    assert!(status.success(), "{status}: {}", server.log_text());
    let log = server.log_text();
    if log.contains(&format!("old process draining; new process {new} serves")) {
        // The hand-over came first: the new process serves; the shutdown, if the old process
        // acted on it before it exited, is logged as too late rather than started.
        assert_eq!(
            server.count(&["graceful shutdown started", &format!("pid={old}")]),
            0,
            "{log}"
        );
        if log.contains("signal received: SIGTERM") {
            assert!(
                log.contains(&format!(
                    "shutdown asked after the hand-over to process {new}"
                )),
                "{log}"
            );
        }
        assert_eq!(pid_answering(port), new);
    } else {
        // The shutdown came first: the new process was stopped and reaped, so nothing serves.
        let line = server.wait_for(&["upgrade cancelled by shutdown"]);
        assert!(
            line.contains(&format!("new process {new} was stopped and reaped")),
            "{log}"
        );
        assert!(is_gone(new), "reaped, not left running or a zombie");
        assert!(
            get(port, "/ping").is_err(),
            "nobody serves after a shutdown"
        );
    }
}

#[test]
fn a_successor_told_to_stop_while_it_writes_its_pid_file_does_not_report_ready() {
    let run = tempfile::tempdir().unwrap();
    let pid_file = run.path().join("app.pid");
    let (server, bin, program) = start_copy(&["--pid-file", pid_file.to_str().unwrap()]);
    let port = server.port();
    let old = server.first_pid();
    next_starts_slowly(bin.path(), &program, 1.0);
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process spawned"]), "pid");
    // The pid file is staged beside its path; a FIFO there holds the new process in its write.
    let staged = run.path().join(format!(".app.pid.{new}.tmp"));
    rustix::fs::mkfifoat(rustix::fs::CWD, &staged, rustix::fs::Mode::from(0o600)).unwrap();
    eventually("the new process waits in its pid file write", || {
        waits_in(new, "wait_for_partner")
    });
    signal(new, Signal::TERM);
    server.wait_for(&["graceful shutdown started", &format!("pid={new}")]);
    let mut fifo = std::fs::File::open(&staged).unwrap();
    std::io::Read::read_to_end(&mut fifo, &mut Vec::new()).unwrap();

    server.wait_for(&["upgrade failed", "the old process keeps serving"]);
    eventually("the new process exits and is reaped", || is_gone(new));
    assert_eq!(pid_answering(port), old, "the old process still serves");
    assert_eq!(
        pid_in(&pid_file),
        Some(old),
        "the pid file names the old process again"
    );
    assert_eq!(server.count(&["reported ready to the old process"]), 0);
}

#[test]
fn upgrade_signals_reaching_a_starting_successor_do_not_kill_it() {
    let (server, bin, program) = start_copy(&[]);
    let port = server.port();
    let old = server.first_pid();
    next_starts_slowly(bin.path(), &program, 1.0);
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process spawned"]), "pid");
    // Still the shell of the slow start: no handler of its own yet.
    for sig in [Signal::HUP, Signal::USR1, Signal::USR2] {
        signal(new, sig);
    }
    let ready = server.wait_for(&["new process ready"]);
    assert_eq!(field(&ready, "pid"), new, "{}", server.log_text());
    eventually("the new process serves", || pid_answering(port) == new);
    assert_eq!(
        server.count(&["upgrade failed"]),
        0,
        "{}",
        server.log_text()
    );
}

#[test]
fn a_successor_failing_at_ready_never_takes_a_connection() {
    let run = tempfile::tempdir().unwrap();
    let pid_dir = run.path().join("run");
    std::fs::create_dir(&pid_dir).unwrap();
    let pid_file = pid_dir.join("app.pid");
    let (server, _bin, _program) = start_copy(&["--pid-file", pid_file.to_str().unwrap()]);
    let port = server.port();
    let old = server.first_pid();
    // Each successor now fails to write its pid file, after it adopted the listeners.
    std::fs::remove_dir_all(&pid_dir).unwrap();

    let load = Load::start(port);
    const UPGRADES: usize = 20;
    for n in 0..UPGRADES {
        signal(old, Signal::HUP);
        let line = server.wait_for_nth(&["upgrade failed"], n);
        assert!(line.contains("exit status: 1"), "{line}");
    }
    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "{ok} requests answered");
    assert!(ok > 0);
    assert!(
        server.count(&["cannot write the pid file"]) >= UPGRADES,
        "each successor says why: {}",
        server.log_text()
    );
    assert_eq!(pid_answering(port), old);
}
