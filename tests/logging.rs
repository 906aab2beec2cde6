//! A log that nobody reads never stops the server.

mod support;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rustix::process::Signal;
use support::*;

/// How long a request to a healthy server may take, even on a loaded machine.
const PROMPT: Duration = Duration::from_secs(3);

/// The pid answering `/pid` on the Unix socket at `path`, or why it did not.
fn pid_over_unix(path: &Path) -> std::io::Result<u32> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(PROMPT))?;
    let reply = get_on(&mut stream, "/pid")?;
    reply
        .body
        .trim()
        .parse()
        .map_err(|_| std::io::Error::other(format!("not a pid: {reply:?}")))
}

#[test]
fn a_full_log_pipe_that_nobody_reads_blocks_neither_upgrades_nor_requests_nor_sigterm() {
    upgrades_serves_and_stops_whatever_the_log(Reader::Stopped);
}

#[test]
fn a_log_pipe_whose_reader_is_gone_stops_neither_upgrades_nor_requests_nor_sigterm() {
    upgrades_serves_and_stops_whatever_the_log(Reader::Gone);
}

/// What became of the process that read the server's stderr.
#[derive(PartialEq)]
enum Reader {
    /// Alive but no longer reading: writes fill the pipe, then would block.
    Stopped,
    /// Gone (a closed terminal, a dead supervisor): every write fails with EPIPE.
    Gone,
}

/// Twenty upgrades, a request and a SIGTERM, each answered in time, with stderr and stdout on
/// a pipe whose reader is `reader`.
fn upgrades_serves_and_stops_whatever_the_log(reader: Reader) {
    let (unread, log) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
    let unread = (reader == Reader::Stopped).then_some(unread);
    // One page: full after three upgrades' worth of log (~1.3 KiB each), not sixteen pages' worth.
    rustix::pipe::fcntl_setpipe_size(&log, 4096).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hello.sock");
    let pid_file = dir.path().join("hello.pid");
    let server = Group::spawn(
        Command::new(hello_binary())
            .args(["-h", "127.0.0.1", "-p", "0", "--unix"])
            .arg(&socket)
            .arg("--pid-file")
            .arg(&pid_file)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    eventually("the first generation serves", || {
        pid_over_unix(&socket).is_ok_and(|pid| pid == server.id())
    });
    let mut serving = server.id();
    for upgrade in 1..=20 {
        eventually("the pid file names the serving process", || {
            pid_in(&pid_file) == Some(serving)
        });
        signal(serving, Signal::HUP);
        let old = serving;
        // The pid file names the new process before it reports ready; both processes accept
        // until the old one reads that report, so an answer from a pid other than the old one's
        // is no proof of a hand-over: wait for the new process the file names to answer itself.
        eventually(&format!("upgrade {upgrade} names a new process"), || {
            pid_in(&pid_file).is_some_and(|pid| pid != old)
        });
        serving = pid_in(&pid_file).unwrap();
        eventually(
            &format!("upgrade {upgrade}: the new process serves"),
            || pid_over_unix(&socket).is_ok_and(|pid| pid == serving),
        );
    }
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    let reply = get_on(&mut stream, "/ping").expect("/ping answers whatever the log pipe");
    assert_eq!((reply.status, reply.body.as_str()), (200, "pong\n"));
    signal(serving, Signal::TERM);
    eventually("the serving process exits on SIGTERM", || {
        reap_if_adopted(serving);
        is_gone(serving)
    });
    // A stopped reader's end is held open to the end, so a write blocks rather than fails.
    drop(unread);
}
