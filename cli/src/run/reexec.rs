//! The supervisor's own upgrade: an in-place re-exec.
//!
//! The instance must stay the supervisor's child, and a process cannot adopt another's child
//! (the subreaper flag only collects orphans, and the old supervisor's exit would make the
//! instance one for a moment, reaped by whoever is the subreaper). So the supervisor replaces
//! its own image with `execve`, keeping its pid: the instance's parent never changes. Before
//! that, the new binary must answer `--version`, so a missing or broken file is refused while
//! the old image still runs. The sockets cross exec at fds 3.. by the socket-activation
//! convention (`LISTEN_PID` is the same pid), so the new image adopts them through the library
//! as at a first start; the rest of the state (the instances, counters, files to remove) goes
//! in `OCTOPUS_RUN_STATE`. Upgrade signals are blocked across exec and unblocked once the new
//! image handles them, so none is lost or kills it meanwhile.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::instance::{Exit, Instance};
use super::log::log;
use super::readiness::{Check, NotifySocket};
use super::supervisor::{Supervisor, millis};

const STATE_VAR: &str = "OCTOPUS_RUN_STATE";
const PREFLIGHT_LIMIT: Duration = Duration::from_secs(10);
const HELD_SIGNALS: [i32; 4] = [libc::SIGHUP, libc::SIGUSR2, libc::SIGTERM, libc::SIGINT];

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Notes the path this image was started from: the file at that path is what a supervisor
/// upgrade runs (so a binary replaced on disk is picked up).
pub fn remember_binary() {
    if let Ok(path) = std::env::current_exe() {
        let _ = BINARY.set(path);
    }
}

/// Whether a variable is the supervisor's own, never passed to instances.
pub fn is_own(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"OCTOPUS_RUN_")
}

/// Runs `BINARY --version`: `Ok(version)` if it answers like an octopus binary.
pub async fn preflight() -> Result<String, String> {
    let binary = BINARY
        .get()
        .ok_or("the supervisor's own binary path is unknown")?;
    let run = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PREFLIGHT_LIMIT, run)
        .await
        .map_err(|_| {
            format!(
                "{} --version did not answer within {PREFLIGHT_LIMIT:?}",
                binary.display()
            )
        })?
        .map_err(|e| format!("cannot run {} --version: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() && text.starts_with("octopus") {
        Ok(text)
    } else {
        Err(format!(
            "{} --version failed ({}, printed {text:?}); not an octopus binary that runs here",
            binary.display(),
            output.status
        ))
    }
}

/// Replaces this image with the supervisor's binary, keeping the pid, the sockets and the
/// instances. Returns only on failure, with nothing changed.
pub fn exec(supervisor: &Supervisor) -> String {
    let Some(binary) = BINARY.get() else {
        return "the supervisor's own binary path is unknown".into();
    };
    let mut fds: Vec<RawFd> = supervisor
        .sockets
        .listeners
        .iter()
        .map(|s| s.fd.as_raw_fd())
        .collect();
    fds.extend(supervisor.sockets.control_fd().map(|fd| fd.as_raw_fd()));
    let listen_count = fds.len();
    let notify = supervisor.serving.as_ref().and_then(|s| s.notify_fd);
    fds.extend(notify);
    let state = state(supervisor, notify.map(|_| 3 + listen_count as RawFd));
    let names: Vec<String> = (0..listen_count)
        .map(|i| format!("octopus-run-{i}"))
        .collect();
    let mut env: Vec<Vec<u8>> = std::env::vars_os()
        .filter(|(name, _)| !is_own(name) && !name.as_bytes().starts_with(b"LISTEN_"))
        .map(|(name, value)| [name.as_bytes(), b"=", value.as_bytes()].concat())
        .collect();
    env.push(format!("LISTEN_FDS={listen_count}").into_bytes());
    env.push(format!("LISTEN_PID={}", std::process::id()).into_bytes());
    env.push(format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes());
    env.push(format!("{STATE_VAR}={state}").into_bytes());
    let strings = |items: Vec<Vec<u8>>| -> Option<Vec<CString>> {
        items.into_iter().map(|i| CString::new(i).ok()).collect()
    };
    let (Some(env), Some(argv), Ok(program)) = (
        strings(env),
        strings(std::env::args_os().map(|a| a.as_bytes().to_vec()).collect()),
        CString::new(binary.as_os_str().as_bytes()),
    ) else {
        return "a NUL byte in an argument or variable".into();
    };
    let pointers = |items: &[CString]| -> Vec<*const libc::c_char> {
        items
            .iter()
            .map(|s| s.as_ptr())
            .chain([std::ptr::null()])
            .collect()
    };
    let (envp, argvp) = (pointers(&env), pointers(&argv));
    super::log::flush();
    let held = hold_signals();
    let error = place_and_exec(&fds, &program, &argvp, &envp);
    restore_signals(held);
    format!("cannot execute {}: {error}", binary.display())
}

/// Puts `fds` at 3.. and executes `program`; on failure puts back what was at 3.. and returns
/// the error.
fn place_and_exec(
    fds: &[RawFd],
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> std::io::Error {
    // SAFETY: only fcntl, dup2, dup3, close and execve on fds this process owns, with `argv`
    // and `envp` NULL-terminated arrays of C strings that outlive the call. The fds at 3.. are
    // saved first and put back if execve fails, so the runtime's own fds survive it; the
    // runtime runs on this one thread, which does nothing else meanwhile.
    unsafe {
        let top = 3 + fds.len() as RawFd;
        let above = top.max(64);
        let moved: Vec<RawFd> = fds
            .iter()
            .map(|fd| libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above))
            .collect();
        let saved: Vec<RawFd> = (3..top)
            .map(|fd| match libc::fcntl(fd, libc::F_GETFD) {
                -1 => -1,
                _ => libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, above),
            })
            .collect();
        let mut error = if moved.contains(&-1)
            || saved
                .iter()
                .zip(3..)
                .any(|(s, fd)| *s == -1 && libc::fcntl(fd, libc::F_GETFD) != -1)
        {
            Some(std::io::Error::last_os_error())
        } else {
            None
        };
        if error.is_none() {
            for (i, fd) in moved.iter().enumerate() {
                libc::dup2(*fd, 3 + i as RawFd);
            }
            libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            error = Some(std::io::Error::last_os_error());
            for (i, fd) in saved.iter().enumerate() {
                match *fd {
                    -1 => libc::close(3 + i as RawFd),
                    fd => libc::dup3(fd, 3 + i as RawFd, libc::O_CLOEXEC),
                };
            }
        }
        for fd in moved.iter().chain(saved.iter()).filter(|fd| **fd >= 0) {
            libc::close(*fd);
        }
        error.unwrap_or_else(|| std::io::ErrorKind::Other.into())
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset and sigaddset initialise and fill the set they are given.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in HELD_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

fn hold_signals() -> libc::sigset_t {
    let set = signal_set();
    // SAFETY: pthread_sigmask reads `set` and writes the previous mask into `old`.
    unsafe {
        let mut old = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        old
    }
}

fn restore_signals(old: libc::sigset_t) {
    // SAFETY: as above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
}

/// Unblocks the signals a previous image held across exec, once this one handles them.
pub fn unblock_signals() {
    let set = signal_set();
    // SAFETY: as above.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

fn state(supervisor: &Supervisor, notify_fd: Option<RawFd>) -> Value {
    let now = Instant::now();
    let instance = |i: &Instance| {
        json!({
            "id": i.id,
            "pid": i.pid,
            "uptime_ms": millis(i.started.elapsed()),
            "ready_ms": i.ready_at.map(|at| millis(at.elapsed())),
            "kill_in_ms": i.kill_at.map(|at| millis(at.saturating_duration_since(now))),
            "killed": i.killed,
        })
    };
    json!({
        "generation": supervisor.generation + 1,
        "uptime_ms": millis(supervisor.started.elapsed()),
        "serving": supervisor.serving.as_ref().map(instance),
        "retiring": supervisor.retiring_instances().map(instance).collect::<Vec<_>>(),
        "notify_fd": notify_fd,
        "next_id": supervisor.next_id,
        "restarts": supervisor.restarts,
        "in_a_row": supervisor.backoff.in_a_row,
        "last_exit": supervisor.last_exit.map(|e| json!({
            "pid": e.pid,
            "raw": e.status.into_raw(),
            "at_ms": e.at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, millis),
        })),
        "last_upgrade": supervisor.last_upgrade,
        "created": supervisor.created.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>(),
        "announced": supervisor.announced,
    })
}

/// The state a previous image left, if this image was started by a supervisor upgrade.
pub fn take_state() -> Option<Value> {
    let text = std::env::var(STATE_VAR).ok()?;
    match serde_json::from_str(&text) {
        Ok(state) => Some(state),
        Err(e) => {
            log!("{STATE_VAR} is not understood ({e}); starting afresh");
            None
        }
    }
}

/// Takes over the previous image's state: its instances stay this process's children.
pub fn resume(supervisor: &mut Supervisor, state: Value) {
    let now = Instant::now();
    let ago = |ms: &Value| {
        ms.as_u64()
            .map(|ms| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now))
    };
    let number = |name: &str| state[name].as_u64().unwrap_or(0);
    let adopt = |fields: &Value| -> Option<Instance> {
        let mut instance = Instance::new(
            fields["id"].as_u64()?,
            u32::try_from(fields["pid"].as_u64()?).ok()?,
        );
        instance.started = ago(&fields["uptime_ms"]).unwrap_or(now);
        instance.ready_at = ago(&fields["ready_ms"]);
        instance.kill_at = fields["kill_in_ms"]
            .as_u64()
            .map(|ms| now + Duration::from_millis(ms));
        instance.killed = fields["killed"].as_bool().unwrap_or(false);
        Some(instance)
    };
    supervisor.generation = number("generation").max(2);
    supervisor.started = ago(&state["uptime_ms"]).unwrap_or(now);
    supervisor.next_id = number("next_id").max(1);
    supervisor.restarts = number("restarts");
    supervisor.backoff.in_a_row = u32::try_from(number("in_a_row")).unwrap_or(0);
    supervisor.last_upgrade = Some(state["last_upgrade"].clone()).filter(|v| !v.is_null());
    supervisor.announced = state["announced"].as_bool().unwrap_or(false);
    supervisor.created = state["created"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(PathBuf::from))
        .collect();
    supervisor.last_exit = state["last_exit"].as_object().and_then(|e| {
        Some(Exit {
            pid: u32::try_from(e.get("pid")?.as_u64()?).ok()?,
            status: ExitStatus::from_raw(i32::try_from(e.get("raw")?.as_i64()?).ok()?),
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(e.get("at_ms")?.as_u64()?),
        })
    });
    for old in state["retiring"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(adopt)
    {
        log!(
            "old instance {} adopted from the previous supervisor image",
            old.pid
        );
        supervisor.adopt_retiring(old);
    }
    if let Some(mut serving) = adopt(&state["serving"]) {
        let notify = state["notify_fd"]
            .as_i64()
            .and_then(|fd| adopt_notify(fd as RawFd, supervisor, serving.id));
        serving.notify_fd = notify.as_ref().map(NotifySocket::raw_fd);
        let check = match notify {
            Some(socket) => Some(Check::Notify(socket)),
            None if serving.ready_at.is_none() => Some(supervisor.check_for(serving.pid, None)),
            None => None,
        };
        if let Some(check) = check {
            serving.check = Some(supervisor.watch(check, serving.id, serving.pid));
        }
        log!(
            "instance {} adopted from the previous supervisor image (supervisor generation {})",
            serving.pid,
            supervisor.generation
        );
        supervisor.serving = Some(serving);
    }
}

fn adopt_notify(fd: RawFd, supervisor: &Supervisor, id: u64) -> Option<NotifySocket> {
    // SAFETY: the previous image passed this fd for exactly this, and nothing else owns it;
    // fstat checks it is a socket before it is used as one.
    let socket = unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut stat) != 0 || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            log!(
                "the notify socket fd {fd} passed by the previous image is not a socket; ignoring it"
            );
            return None;
        }
        std::os::unix::net::UnixDatagram::from_raw_fd(fd)
    };
    let path = supervisor.dir.join(format!("notify-{id}.sock"));
    NotifySocket::adopt(socket, path).ok()
}
