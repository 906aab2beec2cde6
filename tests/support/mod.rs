//! Starts the real example server and watches it the way a user would: through its log, its
//! port, its pid and `/proc`. Every wait is bounded and ends on an event.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The example binary `cargo test` built next to this test.
pub fn hello_binary() -> PathBuf {
    example_binary("hello")
}

/// An example binary (`examples/NAME.rs`) that `cargo test` built next to this test.
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let binary = profile_dir.join("examples").join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo test`, which builds examples",
        binary.display()
    );
    binary
}

/// Makes this test process adopt orphans, so a generation whose parent exited is reaped here and
/// its exit status can be checked, and nothing it started outlives it re-parented to init.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
    });
}

/// A process this test started as the leader of a new process group, and everything forked from
/// it (every generation of a server, a script put in its place, what that script runs).
/// Dropping it kills the whole group and reaps whatever became this test process's child, pass
/// or fail, so no test leaves a server behind.
pub struct Group {
    pub leader: Child,
}

impl Group {
    pub fn spawn(command: &mut Command) -> Group {
        become_subreaper();
        command.process_group(0);
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match command.spawn() {
                Ok(leader) => return Group { leader },
                // A copy of the example this test just wrote is still open for writing in a
                // child another test thread forked meanwhile, until that child's exec.
                Err(e)
                    if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("cannot start {:?}: {e}", command.get_program()),
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.leader.id()
    }

    /// The processes of the group that exist (zombies included), with their state letters.
    pub fn members(&self) -> Vec<(u32, char)> {
        group_members(self.id())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = pid_of(self.id()).unwrap();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            // Every round, as a process forking while the signal is sent may miss it: the group
            // is empty only once every member is dead and reaped, by this process (the subreaper
            // every orphan of the group comes to) or by a parent in the group before it died.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            while let Ok(Some(_)) =
                rustix::process::waitpgid(pgid, rustix::process::WaitOptions::NOHANG)
            {}
            let left = self.members();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                // A second panic while unwinding would abort the whole test binary.
                if !std::thread::panicking() {
                    panic!("processes of group {pgid:?} left after SIGKILL: {left:?}");
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The processes whose process group is `pgid`, with their state letters, from /proc.
pub fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // After the command name: state, ppid, pgrp.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?.chars().next()?;
            let pgrp: u32 = fields.nth(1)?.parse().ok()?;
            (pgrp == pgid).then_some((pid, state))
        })
        .collect()
}

/// What a test adds to the environment a server starts in.
#[derive(Default, Clone)]
pub struct Setup {
    pub env: Vec<(String, String)>,
    /// fds of this test process that the server inherits, at the same numbers.
    pub inherit: Vec<std::os::fd::RawFd>,
    /// An fd of this test process that the server gets as fd 3, where socket activation puts
    /// its first socket.
    pub as_fd3: Option<std::os::fd::RawFd>,
    /// RLIMIT_NOFILE of the server.
    pub nofile: Option<u64>,
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A running example server: all its generations share its stderr and its process group, which
/// is killed when this is dropped.
pub struct Hello {
    group: Group,
    log: Arc<Log>,
    pub dir: tempfile::TempDir,
}

impl Hello {
    /// Starts `program` (a copy of the example, or a path to it) in a fresh working directory.
    pub fn start_program(program: &Path, args: &[&str]) -> Hello {
        Self::start_with(program, args, &Setup::default())
    }

    /// Starts `program` with extra environment, inherited fds or a file-descriptor limit.
    pub fn start_with(program: &Path, args: &[&str], setup: &Setup) -> Hello {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let inherit = setup.inherit.clone();
        let as_fd3 = setup.as_fd3;
        let nofile = setup.nofile;
        // SAFETY: runs between fork and exec and only makes raw system calls (fcntl, dup2,
        // setrlimit), which are async-signal-safe, on fds this test keeps open until `spawn`
        // returns.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                for fd in &inherit {
                    rustix::io::fcntl_setfd(
                        std::os::fd::BorrowedFd::borrow_raw(*fd),
                        rustix::io::FdFlags::empty(),
                    )?;
                }
                if let Some(fd) = as_fd3 {
                    // dup2 leaves the copy without close-on-exec; the same fd is kept as is.
                    if fd == 3 {
                        rustix::io::fcntl_setfd(
                            std::os::fd::BorrowedFd::borrow_raw(3),
                            rustix::io::FdFlags::empty(),
                        )?;
                    } else {
                        // Not an OwnedFd of ours to close on drop: fd 3 must outlive this.
                        let mut fd3 = std::mem::ManuallyDrop::new(
                            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(3),
                        );
                        rustix::io::dup2(std::os::fd::BorrowedFd::borrow_raw(fd), &mut fd3)?;
                    }
                }
                if let Some(limit) = nofile {
                    let limit = rustix::process::Rlimit {
                        current: Some(limit),
                        maximum: Some(limit),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)?;
                }
                Ok(())
            });
        }
        let mut group = Group::spawn(&mut command);
        let log = Arc::new(Log::default());
        let stderr = group.leader.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("OCTOPUS_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                sink.lines.lock().unwrap().push(line);
                sink.changed.notify_all();
            }
        });
        Hello { group, log, dir }
    }

    /// Starts the example from its build location.
    pub fn start(args: &[&str]) -> Hello {
        Self::start_program(&hello_binary(), args)
    }

    /// Starts another example (`examples/NAME.rs`) from its build location.
    pub fn start_example(name: &str, args: &[&str]) -> Hello {
        Self::start_program(&example_binary(name), args)
    }

    pub fn first_pid(&self) -> u32 {
        self.group.id()
    }

    /// The processes of the server's group that exist (zombies included), with their states.
    pub fn members(&self) -> Vec<(u32, char)> {
        self.group.members()
    }

    /// Waits for the `nth` (0-based) log line containing every one of `needles`.
    pub fn wait_for_nth(&self, needles: &[&str], nth: usize) -> String {
        self.wait_for_line(&format!("{needles:?}"), nth, |line| {
            needles.iter().all(|n| line.contains(n))
        })
    }

    /// Waits for the log line with `needle` written by process `pid` (its field `pid=N`).
    pub fn wait_for_pid(&self, needle: &str, pid: u32) -> String {
        self.wait_for_line(&format!("{needle:?} from pid {pid}"), 0, |line| {
            line.contains(needle) && line.contains(" pid=") && field(line, "pid") == pid
        })
    }

    /// Waits for the `nth` (0-based) log line that `matches`, described as `what`.
    pub fn wait_for_line(&self, what: &str, nth: usize, matches: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().filter(|line| matches(line)).nth(nth) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no log line with {what} within {TIMEOUT:?}; log:\n{}",
                lines.join("\n")
            );
            lines = self.log.changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn wait_for(&self, needles: &[&str]) -> String {
        self.wait_for_nth(needles, 0)
    }

    pub fn count(&self, needles: &[&str]) -> usize {
        let lines = self.log.lines.lock().unwrap();
        lines
            .iter()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    pub fn count_where(&self, matches: impl Fn(&str) -> bool) -> usize {
        let lines = self.log.lines.lock().unwrap();
        lines.iter().filter(|line| matches(line)).count()
    }

    pub fn log_text(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// The port the first generation logged, once it serves.
    pub fn port(&self) -> u16 {
        self.port_of("listening on ")
    }

    /// The port of the listener whose `listening on` line also contains `needle`, once the
    /// server serves.
    pub fn port_of(&self, needle: &str) -> u16 {
        self.wait_for(&["server started"]);
        let line = self.wait_for(&["listening on ", needle]);
        let address = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        address.parse::<SocketAddr>().unwrap().port()
    }

    /// Waits until the first generation exits and returns its status.
    pub fn wait_first_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.group.leader.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {TIMEOUT:?}; log:\n{}",
                self.first_pid(),
                self.log_text()
            );
            self.wait_log_change(Duration::from_millis(20));
        }
    }

    /// Sleeps until the log changes or `at_most` passes: a bounded wait that ends early on news.
    fn wait_log_change(&self, at_most: Duration) {
        let lines = self.log.lines.lock().unwrap();
        let seen = lines.len();
        let _ = self
            .log
            .changed
            .wait_timeout_while(lines, at_most, |l| l.len() == seen);
    }
}

fn pid_of(pid: u32) -> Option<rustix::process::Pid> {
    rustix::process::Pid::from_raw(pid as i32)
}

pub fn kill(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = pid_of(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

pub fn signal(pid: u32, signal: rustix::process::Signal) {
    rustix::process::kill_process(pid_of(pid).unwrap(), signal).unwrap();
}

/// The pid in a log line's `pid=N` (or another `field=N`).
pub fn field(line: &str, name: &str) -> u32 {
    let needle = format!(" {name}=");
    let at = line
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        + needle.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Whether `pid` is gone: exited and reaped (not a zombie).
pub fn is_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// State letter of `pid` from /proc (R, S, Z...), if it exists.
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim().chars().next()
}

/// Waits until `pid` (adopted by this subreaper test process) exits; reaps it and returns how.
pub fn wait_adopted_exit(pid: u32) -> rustix::process::WaitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match rustix::process::waitpid(pid_of(pid), rustix::process::WaitOptions::NOHANG) {
            Ok(Some((_, status))) => return status,
            Ok(None) => {}
            Err(e) => panic!("cannot wait for {pid}: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not exit within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps `pid` if it became this test process's zombie (an orphan adopted by the subreaper).
pub fn reap_if_adopted(pid: u32) {
    let _ = rustix::process::waitpid(pid_of(pid), rustix::process::WaitOptions::NOHANG);
}

/// Polls `condition` every few milliseconds until it holds, for at most `TIMEOUT`.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "{what}: not true within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A response, or how the exchange failed.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: String,
}

/// `GET path` on a new connection to 127.0.0.1:`port`.
pub fn get(port: u16, path: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    get_on(&mut stream, path)
}

/// `GET path` on a fresh connection of any kind (TCP, IPv6, Unix), which the server then closes.
pub fn get_on(stream: &mut (impl Read + Write), path: &str) -> std::io::Result<Reply> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw)
}

/// The pid that answers `/pid` on a fresh connection of any kind.
pub fn pid_answering_on(stream: &mut (impl Read + Write)) -> u32 {
    let reply = get_on(stream, "/pid").expect("the server must answer /pid");
    assert_eq!(reply.status, 200);
    reply.body.trim().parse().unwrap()
}

pub fn parse(raw: &[u8]) -> std::io::Result<Reply> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("incomplete response {text:?}"),
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok(Reply {
        status,
        body: body.to_string(),
        headers: head.to_string(),
    })
}

/// The pid that answers `/pid`.
pub fn pid_answering(port: u16) -> u32 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the server must accept");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    pid_answering_on(&mut stream)
}

/// The inode of the socket listening on 127.0.0.1:`port`, from /proc/net/tcp.
pub fn listening_inode(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields[1] == local && fields[3] == "0A").then(|| fields[9].parse().unwrap())
        })
        .collect()
}

/// Whether process `pid` holds an fd on socket `inode`.
pub fn holds_socket(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries.flatten().any(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.to_string_lossy() == wanted)
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// The kinds of the fds `pid` holds (`socket`, `pipe`, `anon_inode:[eventpoll]`, a path...),
/// sorted, so two generations can be compared.
pub fn fd_kinds(pid: u32) -> Vec<String> {
    kinds_of_fds(pid, |_| true)
}

/// The kinds of the fds `pid` opened or was handed itself: stdio and its close-on-exec fds.
/// Leaves out what its starter left inheritable (cargo's jobserver pipes, a shell's fds), which
/// a first generation holds and a successor is not given.
pub fn own_fd_kinds(pid: u32) -> Vec<String> {
    kinds_of_fds(pid, |fd| {
        fd <= 2
            || std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).is_ok_and(|info| {
                info.lines()
                    .find_map(|line| line.strip_prefix("flags:"))
                    .and_then(|flags| u32::from_str_radix(flags.trim(), 8).ok())
                    .is_some_and(|flags| flags & libc::O_CLOEXEC as u32 != 0)
            })
    })
}

fn kinds_of_fds(pid: u32, keep: impl Fn(u32) -> bool) -> Vec<String> {
    let mut kinds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|fd| fd.parse().ok())
                .is_some_and(&keep)
        })
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| {
            let target = target.to_string_lossy().to_string();
            match target.split_once(":[") {
                Some((kind, _)) if kind == "socket" || kind == "pipe" => kind.to_string(),
                _ => target,
            }
        })
        .collect();
    kinds.sort();
    kinds
}

/// A slow-starting new version: a script at `program` that sleeps `secs`, then runs `real`.
pub fn slow_start(program: &Path, real: &Path, secs: f64) {
    replace_with_script(
        program,
        format!("#!/bin/sh\nsleep {secs}\nexec {} \"$@\"\n", real.display()),
    );
}

/// Copies the example into `dir` so a test may replace the file at its start path.
pub fn copy_of_hello(dir: &Path) -> PathBuf {
    let copy = dir.join("hello");
    std::fs::copy(hello_binary(), &copy).unwrap();
    copy
}

/// Replaces the file at `path` the way a deploy does: write beside it, then rename over it.
pub fn replace_with_script(path: &Path, script: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    let staged = path.with_extension("staged");
    std::fs::write(&staged, script).unwrap();
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&staged, path).unwrap();
}

/// Loopback and a free port: how most tests start the example.
pub const LOCAL: &[&str] = &["-h", "127.0.0.1", "-p", "0"];

/// Starts a copy of the example with [`LOCAL`] and `extra`, so a test may replace the file at
/// its start path; returns the server, the copy's directory and the copy's path.
pub fn start_copy(extra: &[&str]) -> (Hello, tempfile::TempDir, PathBuf) {
    let bin = tempfile::tempdir().unwrap();
    let program = copy_of_hello(bin.path());
    let args: Vec<&str> = LOCAL.iter().chain(extra).copied().collect();
    let server = Hello::start_program(&program, &args);
    (server, bin, program)
}

/// The pid a pid file names, if it names one.
pub fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `GET /ping` on a new connection each time, from a thread, until stopped or for at most
/// `TIMEOUT`: connection-per-request load that counts answered and failed requests.
pub struct Load {
    done: Arc<std::sync::atomic::AtomicBool>,
    counts: Arc<[std::sync::atomic::AtomicUsize; 2]>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16) -> Load {
        use std::sync::atomic::Ordering::Relaxed;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts: Arc<[std::sync::atomic::AtomicUsize; 2]> = Arc::default();
        let thread = {
            let (done, counts) = (done.clone(), counts.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + TIMEOUT;
                while !done.load(Relaxed) && Instant::now() < deadline {
                    let answered = matches!(get(port, "/ping"), Ok(reply) if reply.status == 200);
                    counts[usize::from(!answered)].fetch_add(1, Relaxed);
                }
            })
        };
        Load {
            done,
            counts,
            thread: Some(thread),
        }
    }

    /// Stops the load and returns how many requests were answered and how many failed.
    pub fn stop(mut self) -> (usize, usize) {
        self.finish();
        let [ok, failed] = &*self.counts;
        (
            ok.load(std::sync::atomic::Ordering::Relaxed),
            failed.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn finish(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.finish();
    }
}
