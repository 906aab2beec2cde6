//! Graceful upgrade of the real example server, driven by real signals.

mod support;

use rustix::process::Signal;
use support::*;

#[test]
fn hup_hands_the_same_socket_to_a_new_process_with_the_same_argv_and_cwd() {
    let args = [
        "-h",
        "127.0.0.1",
        "-p",
        "0",
        "--drain-timeout",
        "3",
        "--upgrade-timeout",
        "20",
    ];
    let mut server = Hello::start(&args);
    let port = server.port();
    let old = server.first_pid();
    assert_eq!(pid_answering(port), old);
    let inodes = listening_inode(port);
    assert_eq!(inodes.len(), 1, "one listening socket on port {port}");

    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    assert!(
        server.wait_first_exit().success(),
        "the old process must exit 0"
    );
    server.wait_for(&["server shut down", &format!("pid={old}")]);

    assert_eq!(pid_answering(port), new);
    assert_eq!(
        listening_inode(port),
        inodes,
        "the kernel socket must be the same, never re-bound"
    );
    assert!(holds_socket(new, inodes[0]));
    let cmdline = |pid: u32| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let mut expected = hello_binary().into_os_string().into_encoded_bytes();
    for arg in args {
        expected.push(0);
        expected.extend_from_slice(arg.as_bytes());
    }
    expected.push(0);
    assert_eq!(cmdline(new), expected, "argv of the new process");
    let cwd = std::fs::read_link(format!("/proc/{new}/cwd")).unwrap();
    assert_eq!(
        cwd,
        server.dir.path().canonicalize().unwrap(),
        "working directory of the new process"
    );

    // The new generation upgrades again, on the same socket.
    signal(new, Signal::HUP);
    let third = field(&server.wait_for_nth(&["new process ready"], 1), "pid");
    assert!(
        wait_adopted_exit(new).exit_status() == Some(0),
        "the second generation must exit 0"
    );
    assert_eq!(pid_answering(port), third);
    assert_eq!(listening_inode(port), inodes);
}

#[test]
fn usr1_keeps_both_generations_serving_and_reaps_the_new_one() {
    let server = Hello::start(&["-h", "127.0.0.1", "-p", "0"]);
    let port = server.port();
    let old = server.first_pid();
    signal(old, Signal::USR1);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    server.wait_for(&["old process kept alive"]);

    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        seen.insert(pid_answering(port));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(
        seen,
        [old, new].into(),
        "both generations must answer on the shared socket"
    );

    // The old process is the new one's parent: once the new one exits, it is reaped.
    signal(new, Signal::TERM);
    server.wait_for(&[&format!("process {new} exited")]);
    eventually("the exited new process is reaped, not a zombie", || {
        is_gone(new)
    });
    assert_eq!(pid_answering(port), old);
}

#[test]
fn usr1_with_kill_master_stops_the_old_process_once_the_new_one_is_ready() {
    let mut server = Hello::start(&["-h", "127.0.0.1", "-p", "0", "--kill-master"]);
    let port = server.port();
    signal(server.first_pid(), Signal::USR2);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    assert!(server.wait_first_exit().success());
    assert_eq!(pid_answering(port), new);
}

#[test]
fn new_process_that_exits_1_is_rolled_back_and_reaped() {
    let bin = tempfile::tempdir().unwrap();
    let program = copy_of_hello(bin.path());
    let server = Hello::start_program(&program, &["-h", "127.0.0.1", "-p", "0"]);
    let port = server.port();
    let old = server.first_pid();
    replace_with_script(&program, "#!/bin/sh\nexit 1\n");

    signal(old, Signal::HUP);
    let failed = field(&server.wait_for(&["new process spawned"]), "pid");
    let line = server.wait_for(&["upgrade failed"]);
    assert!(
        line.contains(&format!(
            "new process {failed} exited before it was ready (exit status: 1)"
        )),
        "{line}"
    );
    assert!(line.contains("the old process keeps serving"), "{line}");
    assert_eq!(pid_answering(port), old, "the old process keeps serving");
    eventually("the failed process is reaped, not a zombie", || {
        is_gone(failed)
    });
}

#[test]
fn new_process_that_never_becomes_ready_is_killed_at_the_timeout() {
    let bin = tempfile::tempdir().unwrap();
    let program = copy_of_hello(bin.path());
    let mut server = Hello::start_program(
        &program,
        &["-h", "127.0.0.1", "-p", "0", "--upgrade-timeout", "1"],
    );
    let port = server.port();
    let old = server.first_pid();
    replace_with_script(&program, "#!/bin/sh\nexec sleep 60\n");

    signal(old, Signal::HUP);
    let stuck = field(&server.wait_for(&["new process spawned"]), "pid");
    let line = server.wait_for(&["upgrade failed"]);
    assert!(
        line.contains(&format!(
            "new process {stuck} was not ready within 1s; it was killed"
        )),
        "{line}"
    );
    assert_eq!(pid_answering(port), old);
    eventually("the killed process is reaped, not a zombie", || {
        is_gone(stuck)
    });

    // The slot is free again: a later upgrade with a good binary succeeds.
    std::fs::copy(hello_binary(), bin.path().join("hello.staged")).unwrap();
    std::fs::rename(bin.path().join("hello.staged"), &program).unwrap();
    signal(old, Signal::HUP);
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    assert!(server.wait_first_exit().success());
    assert_eq!(pid_answering(port), new);
}

#[test]
fn a_second_hup_during_an_upgrade_is_refused() {
    let bin = tempfile::tempdir().unwrap();
    let program = copy_of_hello(bin.path());
    let real = bin.path().join("hello-real");
    std::fs::copy(hello_binary(), &real).unwrap();
    let mut server = Hello::start_program(&program, &["-h", "127.0.0.1", "-p", "0"]);
    let port = server.port();
    let old = server.first_pid();
    // A new version that takes a second to start.
    replace_with_script(
        &program,
        format!("#!/bin/sh\nsleep 1\nexec {} \"$@\"\n", real.display()),
    );

    signal(old, Signal::HUP);
    server.wait_for(&["new process spawned"]);
    signal(old, Signal::HUP);
    let refused = server.wait_for(&["upgrade refused"]);
    assert!(
        refused.contains("an upgrade is already in progress"),
        "{refused}"
    );
    let new = field(&server.wait_for(&["new process ready"]), "pid");
    assert!(server.wait_first_exit().success());
    assert_eq!(pid_answering(port), new);
    // Its last line: past it, the log holds every line the old process wrote.
    server.wait_for(&["exiting with status 0", &format!("(pid {old})")]);
    assert_eq!(
        server.count(&["new process spawned"]),
        1,
        "the refused request must not be queued"
    );
}
