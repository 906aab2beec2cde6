//! One connection to a control socket: one command line out, one answer line back.

use std::fmt;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why the server could not be asked, or its answer not understood (exit status 2).
#[derive(Debug)]
pub enum Failure {
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    Exchange {
        path: PathBuf,
        error: std::io::Error,
    },
    Answer {
        path: PathBuf,
        reason: String,
    },
    StillRunning {
        pid: u32,
        waited: Duration,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect { path, error } => {
                let shown = path.display();
                let hint = match error.kind() {
                    ErrorKind::NotFound => format!(
                        "no control socket at {shown}; is the server running with this control path (OctopusBuilder::control_socket, --control)?"
                    ),
                    ErrorKind::ConnectionRefused => format!(
                        "nothing answers on {shown} (a socket file left by a server that is gone); start the server"
                    ),
                    ErrorKind::PermissionDenied => {
                        format!("permission denied on {shown}; run as the server's user or root")
                    }
                    _ => format!("cannot connect to {shown} ({error}); check the path"),
                };
                f.write_str(&hint)
            }
            Failure::Exchange { path, error }
                if error.kind() == ErrorKind::WouldBlock || error.kind() == ErrorKind::TimedOut =>
            {
                write!(
                    f,
                    "no answer on {} in time; the server may be stuck: check its log",
                    path.display()
                )
            }
            Failure::Exchange { path, error } => write!(
                f,
                "the exchange on {} failed ({error}); the server may have exited: check its log",
                path.display()
            ),
            Failure::Answer { path, reason } => write!(
                f,
                "the answer on {} is not understood ({reason}); is it an octopus control socket of a compatible version?",
                path.display()
            ),
            Failure::StillRunning { pid, waited } => write!(
                f,
                "process {pid} answered but had not exited {waited:?} later; check its log"
            ),
        }
    }
}

pub struct Session {
    path: PathBuf,
    stream: UnixStream,
}

impl Session {
    /// Connects; every read and write then waits at most `limit`.
    pub fn open(path: &Path, limit: Duration) -> Result<Session, Failure> {
        let stream = UnixStream::connect(path).map_err(|error| Failure::Connect {
            path: path.into(),
            error,
        })?;
        let exchange = |error| Failure::Exchange {
            path: path.into(),
            error,
        };
        stream.set_read_timeout(Some(limit)).map_err(exchange)?;
        stream.set_write_timeout(Some(limit)).map_err(exchange)?;
        Ok(Session {
            path: path.into(),
            stream,
        })
    }

    /// Sends `request` as one line and reads one answer line: a JSON object with a boolean `ok`.
    pub fn ask(&mut self, request: &Value) -> Result<Value, Failure> {
        let exchange = |error| Failure::Exchange {
            path: self.path.clone(),
            error,
        };
        let mut line = request.to_string();
        line.push('\n');
        // A server that refuses a client says why before it closes: read that even if the command
        // could not be sent.
        let sent = self.stream.write_all(line.as_bytes());
        let mut answer = String::new();
        let read = BufReader::new(&self.stream).read_line(&mut answer);
        match (sent, read) {
            (_, Ok(n)) if n > 0 => {}
            (Err(e), _) => return Err(exchange(e)),
            (Ok(()), Err(e)) => return Err(exchange(e)),
            (Ok(()), Ok(_)) => {}
        }
        let not_understood = |reason: String| Failure::Answer {
            path: self.path.clone(),
            reason,
        };
        if answer.is_empty() {
            return Err(Failure::Exchange {
                path: self.path.clone(),
                error: std::io::Error::new(ErrorKind::UnexpectedEof, "closed without an answer"),
            });
        }
        let value: Value = serde_json::from_str(answer.trim_end())
            .map_err(|e| not_understood(format!("not JSON: {e}")))?;
        if value.get("ok").and_then(Value::as_bool).is_none() {
            return Err(not_understood("no boolean \"ok\" field".into()));
        }
        Ok(value)
    }
}

pub fn is_ok(answer: &Value) -> bool {
    answer.get("ok").and_then(Value::as_bool) == Some(true)
}

pub fn error(answer: &Value) -> String {
    answer
        .get("error")
        .and_then(Value::as_str)
        .unwrap_or("no reason given")
        .to_string()
}

/// A number field of a successful answer; its absence means the answer is not understood.
pub fn number(answer: &Value, field: &str) -> Result<u64, Failure> {
    answer
        .get(field)
        .and_then(Value::as_u64)
        .ok_or_else(|| Failure::Answer {
            path: PathBuf::new(),
            reason: format!("no number {field:?} in {answer}"),
        })
}

/// Waits until `pid` has exited (gone, or a zombie its parent has not reaped yet).
pub fn wait_exit(pid: u32, limit: Duration) -> Result<(), Failure> {
    let started = Instant::now();
    loop {
        let running = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X'),
            // Without /proc: whether a signal could be sent (true for a zombie too).
            Err(_) if !std::path::Path::new("/proc/self").exists() => {
                rustix::process::Pid::from_raw(pid as i32)
                    .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
            }
            Err(_) => false,
        };
        if !running {
            return Ok(());
        }
        if started.elapsed() > limit {
            return Err(Failure::StillRunning { pid, waited: limit });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Asks `status` until `done` holds for the answer (at most `limit`): for a process that
/// answers again only once it has replaced itself.
pub fn wait_status(
    path: &Path,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Failure> {
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        let asked = Session::open(path, left.max(Duration::from_millis(100)))
            .and_then(|mut session| session.ask(&serde_json::json!({"v": 1, "cmd": "status"})));
        match asked {
            Ok(status) if done(&status) => return Ok(status),
            Err(failure) if started.elapsed() > limit => return Err(failure),
            _ if started.elapsed() > limit => {
                return Err(Failure::Answer {
                    path: path.into(),
                    reason: format!("the status did not change within {limit:?}"),
                });
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
