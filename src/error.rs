//! Typed errors. Each message says what failed and what the user can do about it. A cause
//! (the operating system's error) is never in the message: it is the error's `source()`, so
//! printing the message and then its causes prints each once.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Errors from setting up or running a graceful server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hand-over state inherited from the previous process is malformed.
    #[error(transparent)]
    Inherit(#[from] InheritError),

    /// A listening socket could not be created.
    #[error("cannot listen on {address}{}", in_use_hint(source))]
    Bind {
        /// The address as it was asked for.
        address: String,
        /// What the operating system said.
        source: io::Error,
    },

    /// The address could not be parsed or resolved.
    #[error(
        "cannot resolve listen address {address:?}: {reason}; use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    )]
    Address {
        /// The address as it was asked for.
        address: String,
        /// Why it could not be used.
        reason: String,
    },

    /// The same listener was asked for twice in one process.
    #[error(
        "listener {key} was already asked for in this process; ask for each listener once and share it"
    )]
    DuplicateListener {
        /// The key asked for twice.
        key: String,
    },

    /// [`Octopus::new`](crate::Octopus::new) was called while another `Octopus` is alive in this
    /// process.
    #[error(
        "an Octopus already runs in this process; there is one per process, since it owns the signals and the hand-over of every listener: serve all listeners through it (clone it, or serve through Octopus::server) rather than calling Octopus::new or octopus::serve twice"
    )]
    SecondInstance,

    /// A TLS certificate or key could not be used.
    #[error(
        "cannot use TLS file {path}: {reason}; give a PEM certificate chain and its PEM private key"
    )]
    Tls {
        /// The file that was read.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Octopus needs a Tokio runtime with I/O and time drivers enabled.
    #[error(
        "octopus must be started inside a Tokio runtime with I/O and time enabled (e.g. #[tokio::main])"
    )]
    NoRuntime,

    /// The process cannot describe how it was started, so it could not be upgraded.
    #[error("cannot determine how this process was started ({what})")]
    StartInfo {
        /// Which part of the start information was missing.
        what: &'static str,
        /// What the operating system said.
        source: io::Error,
    },

    /// Telling the previous process that this one is ready failed.
    #[error(
        "cannot report readiness to the previous process, which will roll back and keep serving"
    )]
    Ready(#[source] io::Error),

    /// The pid file could not be written.
    #[error("cannot write the pid file {path} (check that its directory exists and is writable)")]
    PidFile {
        /// The pid file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// Installing the signal handlers failed.
    #[error("cannot install a handler for {signal}")]
    Signal {
        /// The signal's name.
        signal: &'static str,
        /// What the operating system said.
        source: io::Error,
    },

    /// Another I/O error while serving.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// What the operating system said.
        source: io::Error,
    },
}

/// The hint for an address in use; another error binding says enough through its cause.
fn in_use_hint(source: &io::Error) -> &'static str {
    if source.kind() == io::ErrorKind::AddrInUse {
        ": the address is in use; stop the process using it or pick another address"
    } else {
        ""
    }
}

/// An error and its causes on one line, joined with ": ", for logs and answers that must say
/// everything in one sentence.
pub(crate) struct WithCauses<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for WithCauses<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

/// Why inherited listeners or the readiness fd could not be adopted.
///
/// These mean the environment variables of the hand-over protocol (see the crate docs) do not
/// describe what this process really received: usually variables left over in a shell from an
/// earlier run. Unset them (`unset OCTOPUS_LISTENERS OCTOPUS_READY_FD OCTOPUS_PARENT_PID`) and start
/// again.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InheritError {
    /// A variable of the protocol is set while another one it needs is missing.
    #[error(
        "{present} is set but {missing} is not; the hand-over variables come together: unset {present} if it is left over from an earlier run"
    )]
    Missing {
        /// The variable that is set.
        present: &'static str,
        /// The variable that is missing.
        missing: &'static str,
    },

    /// A variable is not valid UTF-8 or is malformed.
    #[error("{var}={value:?} is malformed: {reason}")]
    Malformed {
        /// The variable's name.
        var: &'static str,
        /// Its value (lossy if not UTF-8).
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The fd described by a variable cannot be used.
    #[error("{var} names fd {fd}, which {problem}")]
    BadFd {
        /// The variable's name.
        var: &'static str,
        /// The fd number.
        fd: i32,
        /// What is wrong with it, phrased to follow "which".
        problem: String,
    },
}

/// Why an upgrade did not happen. In every case the old process keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Another upgrade is in flight; only one runs at a time.
    #[error(
        "an upgrade is already in progress; this request is refused (send it again once the current one ends)"
    )]
    InProgress,

    /// The process is shutting down or handing over, so it will not start a successor.
    #[error("the process is shutting down; upgrade refused")]
    Stopping,

    /// The process has not reported ready itself yet.
    #[error("the process is not serving yet; upgrade refused (upgrade once it has called ready)")]
    NotReady,

    /// The new process could not be started at all.
    #[error(
        "cannot start the new process {program} (check that the file exists and is executable)"
    )]
    Spawn {
        /// The program that was started.
        program: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// The working directory the new process would start in is gone.
    #[error(
        "cannot start the new process in {dir}, the directory this server was started from (it was removed or replaced: re-create it, or start the server from a directory that stays)"
    )]
    WorkingDirectory {
        /// The working directory of the old process when it started.
        dir: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },

    /// The new process exited before it reported ready.
    #[error("new process {pid} exited before it was ready ({status})")]
    Exited {
        /// Its process id.
        pid: u32,
        /// How it exited.
        status: ExitStatus,
    },

    /// The new process was not ready in time and was killed.
    #[error("new process {pid} was not ready within {timeout:?}; it was killed")]
    Timeout {
        /// Its process id.
        pid: u32,
        /// The upgrade timeout in force.
        timeout: Duration,
    },

    /// The new process closed its readiness pipe without reporting ready, and was killed.
    #[error("new process {pid} closed its readiness pipe without reporting ready; it was killed")]
    ClosedWithoutReady {
        /// Its process id.
        pid: u32,
    },

    /// A shutdown began before the new process's readiness report was acted on; the new
    /// process was stopped (SIGTERM, so that it drains whatever it accepted; SIGKILL if it did
    /// not exit in time) and reaped.
    #[error("upgrade cancelled by shutdown; new process {pid} was stopped and reaped")]
    Cancelled {
        /// Its process id.
        pid: u32,
    },

    /// Waiting for the new process failed.
    #[error("cannot watch new process {pid}")]
    Watch {
        /// Its process id.
        pid: u32,
        /// What the operating system said.
        source: io::Error,
    },
}

impl UpgradeError {
    /// A stable name for why the upgrade did not happen, for scripts and metrics (the control
    /// socket answers it as `reason`): `in_progress`, `stopping` and `not_ready` (refused, nothing
    /// was started: try again later), `spawn` and `working_directory` (the new process could not
    /// start: fix the binary or the directory), `exited`, `timeout` and `closed_without_ready` (the
    /// new version failed to start: see its exit status, or its own logs), `cancelled` (a shutdown
    /// came first) and `watch` (the new process could not be watched). In every case the old
    /// process keeps serving.
    ///
    /// ```
    /// use octopus::UpgradeError;
    ///
    /// assert_eq!(UpgradeError::InProgress.reason(), "in_progress");
    /// assert_eq!(UpgradeError::Cancelled { pid: 42 }.reason(), "cancelled");
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            UpgradeError::InProgress => "in_progress",
            UpgradeError::Stopping => "stopping",
            UpgradeError::NotReady => "not_ready",
            UpgradeError::Spawn { .. } => "spawn",
            UpgradeError::WorkingDirectory { .. } => "working_directory",
            UpgradeError::Exited { .. } => "exited",
            UpgradeError::Timeout { .. } => "timeout",
            UpgradeError::ClosedWithoutReady { .. } => "closed_without_ready",
            UpgradeError::Cancelled { .. } => "cancelled",
            UpgradeError::Watch { .. } => "watch",
        }
    }

    /// The new process's id, if one was started (it has been stopped and reaped since).
    pub fn new_pid(&self) -> Option<u32> {
        match self {
            UpgradeError::Exited { pid, .. }
            | UpgradeError::Timeout { pid, .. }
            | UpgradeError::ClosedWithoutReady { pid }
            | UpgradeError::Cancelled { pid }
            | UpgradeError::Watch { pid, .. } => Some(*pid),
            UpgradeError::InProgress
            | UpgradeError::Stopping
            | UpgradeError::NotReady
            | UpgradeError::Spawn { .. }
            | UpgradeError::WorkingDirectory { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAUSE: &str = "the cause said by the operating system";

    fn cause() -> io::Error {
        io::Error::other(CAUSE)
    }

    /// The message leaves the cause out, `source()` returns it, and one line shows both once.
    fn assert_cause_once(error: &(dyn std::error::Error + 'static), message: &str) {
        let text = error.to_string();
        assert_eq!(text, message);
        assert!(!text.contains(CAUSE), "{text}");
        assert_eq!(error.source().map(ToString::to_string), Some(CAUSE.into()));
        assert_eq!(WithCauses(error).to_string(), format!("{message}: {CAUSE}"));
    }

    #[test]
    fn each_error_with_a_cause_prints_it_once() {
        let cases: Vec<(Box<dyn std::error::Error>, &str)> = vec![
            (
                Box::new(Error::Bind {
                    address: "127.0.0.1:80".into(),
                    source: cause(),
                }),
                "cannot listen on 127.0.0.1:80",
            ),
            (
                Box::new(Error::StartInfo {
                    what: "working directory",
                    source: cause(),
                }),
                "cannot determine how this process was started (working directory)",
            ),
            (
                Box::new(Error::Ready(cause())),
                "cannot report readiness to the previous process, which will roll back and keep serving",
            ),
            (
                Box::new(Error::PidFile {
                    path: "/run/app.pid".into(),
                    source: cause(),
                }),
                "cannot write the pid file /run/app.pid (check that its directory exists and is writable)",
            ),
            (
                Box::new(Error::Signal {
                    signal: "SIGHUP",
                    source: cause(),
                }),
                "cannot install a handler for SIGHUP",
            ),
            (
                Box::new(Error::Io {
                    what: "cannot register a listener with the runtime",
                    source: cause(),
                }),
                "cannot register a listener with the runtime",
            ),
            (
                Box::new(UpgradeError::Spawn {
                    program: "/usr/bin/app".into(),
                    source: cause(),
                }),
                "cannot start the new process /usr/bin/app (check that the file exists and is executable)",
            ),
            (
                Box::new(UpgradeError::WorkingDirectory {
                    dir: "/srv/app".into(),
                    source: cause(),
                }),
                "cannot start the new process in /srv/app, the directory this server was started from (it was removed or replaced: re-create it, or start the server from a directory that stays)",
            ),
            (
                Box::new(UpgradeError::Watch {
                    pid: 42,
                    source: cause(),
                }),
                "cannot watch new process 42",
            ),
        ];
        for (error, message) in &cases {
            assert_cause_once(error.as_ref(), message);
        }
    }

    #[test]
    fn only_an_address_in_use_gets_the_hint_about_another_process() {
        let bind = |kind: io::ErrorKind| Error::Bind {
            address: "127.0.0.1:80".into(),
            source: kind.into(),
        };
        let in_use = bind(io::ErrorKind::AddrInUse).to_string();
        assert_eq!(
            in_use,
            "cannot listen on 127.0.0.1:80: the address is in use; stop the process using it or pick another address"
        );
        let denied = bind(io::ErrorKind::PermissionDenied);
        assert_eq!(denied.to_string(), "cannot listen on 127.0.0.1:80");
        assert_eq!(
            WithCauses(&denied).to_string(),
            "cannot listen on 127.0.0.1:80: permission denied"
        );
    }

    #[test]
    fn a_transparent_inherit_error_is_printed_once() {
        let error = Error::from(InheritError::Missing {
            present: "OCTOPUS_LISTENERS",
            missing: "OCTOPUS_READY_FD",
        });
        assert!(error.to_string().starts_with("OCTOPUS_LISTENERS is set"));
        assert_eq!(WithCauses(&error).to_string(), error.to_string());
    }
}
