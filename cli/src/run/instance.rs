//! One running instance of PROGRAM: its pid, when it started and became ready, and the signals
//! it was sent. Only the supervisor's event loop reaps it, so a pid it signals is never reused.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};
use tokio::task::AbortHandle;

pub struct Instance {
    /// Numbers the instances of this supervisor (and its notify socket).
    pub id: u64,
    pub pid: u32,
    pub started: Instant,
    pub ready_at: Option<Instant>,
    /// The readiness check, which also logs what the instance sends on its notify socket.
    pub check: Option<AbortHandle>,
    /// The instance's notify socket, owned by `check`; carried across a supervisor re-exec.
    pub notify_fd: Option<std::os::fd::RawFd>,
    /// Set once the stop signal was sent: SIGKILL at this time.
    pub kill_at: Option<Instant>,
    pub killed: bool,
}

impl Instance {
    pub fn new(id: u64, pid: u32) -> Instance {
        Instance {
            id,
            pid,
            started: Instant::now(),
            ready_at: None,
            check: None,
            notify_fd: None,
            kill_at: None,
            killed: false,
        }
    }

    /// Sends `signal` to the instance's main process (the program handles its own children).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory effects; the pid is this process's unreaped child.
        unsafe { libc::kill(self.pid as libc::pid_t, signal) };
    }

    /// Asks the instance to stop and gives it until `deadline`.
    pub fn stop(&mut self, signal: i32, deadline: Instant) {
        if self.kill_at.is_none() {
            self.signal(signal);
            self.kill_at = Some(deadline);
        }
    }

    /// SIGKILL to the instance's whole process group: nothing it started outlives it.
    pub fn kill(&mut self) {
        self.killed = true;
        kill_group(self.pid);
    }

    /// The exit, if the instance has exited; reaps it.
    pub fn try_reap(&self) -> Option<Exit> {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`; the pid is this process's child.
        let reaped = unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, libc::WNOHANG) };
        (reaped == self.pid as libc::pid_t).then(|| Exit {
            pid: self.pid,
            status: ExitStatus::from_raw(status),
            at: SystemTime::now(),
        })
    }

    /// Ends the readiness check and kills what is left of the process group.
    pub fn cleanup(&mut self) {
        if let Some(check) = self.check.take() {
            check.abort();
        }
        kill_group(self.pid);
    }
}

/// SIGKILL to the process group `pid` leads (each instance is a group leader).
fn kill_group(pid: u32) {
    // SAFETY: killpg has no memory effects; an empty group is ESRCH, ignored.
    unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
}

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub pid: u32,
    pub status: ExitStatus,
    pub at: SystemTime,
}

impl Exit {
    /// The supervisor's own exit status for this exit: the instance's code, 0 for death by the
    /// stop signal it was sent, 128 + N for death by another signal N.
    pub fn code(&self, stop_signal: Option<i32>) -> u8 {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) if Some(signal) == stop_signal => 0,
            (None, Some(signal)) => 128u8.saturating_add(signal as u8),
            (None, None) => 1,
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "pid": self.pid,
            "exit_code": self.status.code(),
            "signal": self.status.signal(),
            "at": rfc3339(self.at),
        })
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.status.code(), self.status.signal()) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "killed by signal {signal}"),
            (None, None) => write!(f, "{}", self.status),
        }
    }
}

pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let exit = |raw| Exit {
            pid: 1,
            status: ExitStatus::from_raw(raw),
            at: SystemTime::UNIX_EPOCH,
        };
        assert_eq!(exit(3 << 8).code(None), 3);
        assert_eq!(exit(libc::SIGTERM).code(Some(libc::SIGTERM)), 0);
        assert_eq!(exit(libc::SIGKILL).code(Some(libc::SIGTERM)), 137);
    }
}
