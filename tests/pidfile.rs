//! The pid file follows whoever serves, as nginx's does: `FILE` names the newest generation,
//! `FILE.oldbin` an older one kept serving beside it, and `FILE` goes back to the older one if
//! the newer one stops first.

mod support;

use std::path::PathBuf;

use rustix::process::Signal;
use support::*;

/// The example with a pid file in a fresh directory: the server, the file and `FILE.oldbin`.
fn start_with_pid_file() -> (Hello, tempfile::TempDir, PathBuf, PathBuf) {
    let run = tempfile::tempdir().unwrap();
    let pid_file = run.path().join("app.pid");
    let oldbin = run.path().join("app.pid.oldbin");
    let args: Vec<&str> = LOCAL
        .iter()
        .copied()
        .chain(["--pid-file", pid_file.to_str().unwrap()])
        .collect();
    let server = Hello::start(&args);
    (server, run, pid_file, oldbin)
}

#[test]
fn the_pid_file_names_whoever_serves_last_across_generations_kept_alive() {
    let (mut server, _run, pid_file, oldbin) = start_with_pid_file();
    let port = server.port();
    let old = server.first_pid();
    assert_eq!(pid_in(&pid_file), Some(old));

    // SIGUSR1 keeps the old generation serving beside the new one.
    signal(old, Signal::USR1);
    let new = field(
        &server.wait_for(&["old process kept alive beside new process"]),
        "new_pid",
    );
    assert_eq!(pid_in(&pid_file), Some(new));
    assert_eq!(pid_in(&oldbin), Some(old));

    // The newer one stops first: the file names the older one, which still serves.
    signal(new, Signal::TERM);
    server.wait_for(&[&format!("process {new} exited")]);
    assert_eq!(pid_in(&pid_file), Some(old));
    assert!(!oldbin.exists());
    assert_eq!(pid_answering(port), old);

    // The last one stops: no file names a process that is gone.
    signal(old, Signal::TERM);
    assert!(server.wait_first_exit().success());
    assert!(!pid_file.exists() && !oldbin.exists());
}

#[test]
fn the_older_generation_stopping_first_leaves_the_newer_one_in_the_file() {
    let (mut server, _run, pid_file, oldbin) = start_with_pid_file();
    let port = server.port();
    let old = server.first_pid();
    signal(old, Signal::USR2);
    let new = field(
        &server.wait_for(&["old process kept alive beside new process"]),
        "new_pid",
    );
    signal(old, Signal::TERM);
    assert!(server.wait_first_exit().success());
    assert_eq!(pid_in(&pid_file), Some(new));
    assert!(!oldbin.exists());
    assert_eq!(pid_answering(port), new);
}

#[test]
fn a_failed_upgrade_of_the_older_generation_leaves_the_newer_one_in_the_file() {
    let run = tempfile::tempdir().unwrap();
    let pid_file = run.path().join("app.pid");
    let (server, _bin, program) = start_copy(&["--pid-file", pid_file.to_str().unwrap()]);
    server.port();
    let old = server.first_pid();
    signal(old, Signal::USR1);
    let new = field(
        &server.wait_for(&["old process kept alive beside new process"]),
        "new_pid",
    );
    assert_eq!(pid_in(&pid_file), Some(new));
    // The next build is broken; the older generation is asked to upgrade again, and fails.
    replace_with_script(&program, "#!/bin/sh\nexit 1\n");
    signal(old, Signal::USR1);
    server.wait_for(&["upgrade failed", "exit status: 1"]);
    assert_eq!(
        pid_in(&pid_file),
        Some(new),
        "the newer generation still serves last"
    );
}
