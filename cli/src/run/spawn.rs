//! Starting an instance of PROGRAM on the sockets, by the systemd socket-activation convention.
//!
//! `LISTEN_PID` must be the instance's own pid, known only after fork: everything `execve` needs
//! is built before forking, with room for the pid's digits, and the child writes them and calls
//! `execve` itself, using only async-signal-safe system calls and no allocation.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// Variables of this supervisor that an instance must not see, or gets its own value of.
const REPLACED: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];
/// `close_range` marks the fds close-on-exec instead of closing them (Linux 5.11).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// Room for the decimal digits of a pid.
const PID_DIGITS: usize = 20;

/// What an instance is started with.
pub struct Launch<'a> {
    pub command: &'a [OsString],
    pub sockets: Vec<BorrowedFd<'a>>,
    pub names: Vec<&'a str>,
    pub notify: Option<&'a Path>,
    /// Sent to the instance if the supervisor dies without stopping it (Linux), so that no
    /// instance outlives it unsupervised, holding the sockets.
    pub orphan_signal: i32,
}

/// Finds PROGRAM now (a file replaced on disk since the last start is what runs) and starts it
/// in its own process group; returns its pid.
pub fn spawn(launch: &Launch<'_>) -> io::Result<u32> {
    let program = find(&launch.command[0])?;
    let mut exec = Exec::new(&program, launch)?;
    let fds: Vec<RawFd> = launch.sockets.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut moved = vec![-1; fds.len()];
    let orphan_signal = launch.orphan_signal;
    // SAFETY: getpid has no preconditions.
    let supervisor = unsafe { libc::getpid() };
    let mut command = std::process::Command::new(&program);
    command.process_group(0);
    // SAFETY: the closure runs in the forked child before exec. It makes only prctl, getppid,
    // fcntl, dup2, close_range, getrlimit, getpid and execve calls (async-signal-safe), writes into buffers allocated before the
    // fork (`moved`, the pid slot of `exec`), and the fds it reads stay open in the parent
    // until `spawn` returns.
    unsafe {
        command.pre_exec(move || {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, orphan_signal as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The supervisor died before the line above: nothing would ever signal us.
                if libc::getppid() != supervisor {
                    return Err(io::Error::other("the supervisor exited"));
                }
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let _ = (orphan_signal, supervisor);
            let first = 3 + fds.len() as RawFd;
            // Through fds above the target range first, so that a socket already sitting at
            // 3.. is not overwritten before it is moved.
            for (i, fd) in fds.iter().enumerate() {
                moved[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, first);
                if moved[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, fd) in moved.iter().enumerate() {
                // dup2 clears close-on-exec on the new fd.
                if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Whatever else this process inherited without close-on-exec (from whoever
            // started the supervisor) stays out of the instance.
            let after = first as libc::c_uint;
            if libc::syscall(
                libc::SYS_close_range,
                after,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                let mut limit: libc::rlimit = std::mem::zeroed();
                let top = match libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) {
                    0 => limit.rlim_cur.min(1 << 16) as RawFd,
                    _ => 1 << 16,
                };
                for fd in first..top {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            exec.write_pid(libc::getpid());
            libc::execve(
                exec.program.as_ptr(),
                exec.argv.as_ptr(),
                exec.envp.as_ptr(),
            );
            Err(io::Error::last_os_error())
        });
    }
    let child = command.spawn()?;
    // Reaped by the supervisor's own waitpid on this pid, never through `child`.
    Ok(child.id())
}

/// PROGRAM as given if it has a slash, else the first executable file of that name on PATH.
fn find(program: &OsStr) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is not an executable file on PATH",
                    program.to_string_lossy()
                ),
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

struct Exec {
    program: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// The `LISTEN_PID=` entry, with NULs where the digits go.
    pid_slot: Vec<u8>,
    /// Owns what `argv` and the rest of `envp` point to.
    _strings: Vec<CString>,
}

// SAFETY: the pointers point into heap buffers `Exec` owns and never reallocates.
unsafe impl Send for Exec {}
// SAFETY: as above; the only write happens in the forked child, on its own copy.
unsafe impl Sync for Exec {}

impl Exec {
    fn new(program: &Path, launch: &Launch<'_>) -> io::Result<Exec> {
        let c_string = |bytes: Vec<u8>| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a NUL byte in an argument or variable",
                )
            })
        };
        let mut strings = Vec::new();
        let mut argv = Vec::new();
        for arg in launch.command {
            let arg = c_string(arg.clone().into_vec())?;
            argv.push(arg.as_ptr());
            strings.push(arg);
        }
        argv.push(std::ptr::null());
        let mut env: Vec<Vec<u8>> = std::env::vars_os()
            .filter(|(name, _)| !REPLACED.iter().any(|r| name == r) && !super::reexec::is_own(name))
            .map(|(name, value)| [name.as_bytes(), b"=", value.as_bytes()].concat())
            .collect();
        env.push(format!("LISTEN_FDS={}", launch.sockets.len()).into_bytes());
        let names = launch.names.join(":");
        env.push(format!("LISTEN_FDNAMES={names}").into_bytes());
        if let Some(path) = launch.notify {
            env.push([b"NOTIFY_SOCKET=", path.as_os_str().as_bytes()].concat());
        }
        let mut envp = Vec::new();
        for entry in env {
            let entry = c_string(entry)?;
            envp.push(entry.as_ptr());
            strings.push(entry);
        }
        let mut pid_slot = b"LISTEN_PID=".to_vec();
        pid_slot.resize(pid_slot.len() + PID_DIGITS + 1, 0);
        envp.push(pid_slot.as_ptr().cast());
        envp.push(std::ptr::null());
        Ok(Exec {
            program: c_string(program.as_os_str().as_bytes().to_vec())?,
            argv,
            envp,
            pid_slot,
            _strings: strings,
        })
    }

    /// Writes `pid` into the `LISTEN_PID=` entry; no allocation.
    fn write_pid(&mut self, pid: libc::pid_t) {
        let mut digits = [0u8; PID_DIGITS];
        let mut n = pid.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            n /= 10;
            len += 1;
            if n == 0 || len == PID_DIGITS {
                break;
            }
        }
        let start = "LISTEN_PID=".len();
        for i in 0..len {
            self.pid_slot[start + i] = digits[len - 1 - i];
        }
        self.pid_slot[start + len] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_is_written_in_place() {
        let command = [OsString::from("true")];
        let launch = Launch {
            command: &command,
            sockets: Vec::new(),
            names: Vec::new(),
            notify: None,
            orphan_signal: libc::SIGTERM,
        };
        let mut exec = Exec::new(Path::new("/bin/true"), &launch).unwrap();
        let before = exec.pid_slot.as_ptr();
        exec.write_pid(4_194_304);
        assert_eq!(exec.pid_slot.as_ptr(), before);
        let text = std::ffi::CStr::from_bytes_until_nul(&exec.pid_slot).unwrap();
        assert_eq!(text.to_str().unwrap(), "LISTEN_PID=4194304");
    }
}
