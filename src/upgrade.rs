//! One upgrade: start the successor, wait for its readiness report, roll back on any failure.
//!
//! Rollback means the old process does nothing but kill (if still running) and reap the new
//! process: it never stopped accepting, so its service was not interrupted.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::UpgradeError;
use crate::listeners::Registry;
use crate::process::{ChildProcess, Spawned, Spawner, StartInfo};

/// How long a successor that closed its readiness pipe gets to exit before it is killed.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(2);
/// How long reaping a killed successor may take before giving up on it.
const REAP_LIMIT: Duration = Duration::from_secs(5);

/// Starts successors, one at a time.
pub(crate) struct Upgrader<S: Spawner> {
    spawner: S,
    start: StartInfo,
    timeout: Duration,
    in_flight: watch::Sender<bool>,
}

/// Proof that this caller holds the only upgrade slot; the slot is freed on drop.
#[derive(Debug)]
pub(crate) struct Permit {
    in_flight: watch::Sender<bool>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.send_replace(false);
    }
}

enum Outcome {
    Ready,
    Exited(ExitStatus),
    Closed,
    TimedOut,
    Cancelled,
    WatchFailed(io::Error),
}

impl<S: Spawner> Upgrader<S> {
    pub fn new(spawner: S, start: StartInfo, timeout: Duration) -> Self {
        Upgrader {
            spawner,
            start,
            timeout,
            in_flight: watch::Sender::new(false),
        }
    }

    /// Takes the upgrade slot, or refuses if another upgrade holds it.
    pub fn begin(&self) -> Result<Permit, UpgradeError> {
        let taken = self.in_flight.send_if_modified(|in_flight| {
            let free = !*in_flight;
            *in_flight = true;
            free
        });
        if !taken {
            return Err(UpgradeError::InProgress);
        }
        Ok(Permit {
            in_flight: self.in_flight.clone(),
        })
    }

    /// Waits until no upgrade is in flight: a cancelled one has killed and reaped its process.
    pub async fn settled(&self) {
        let _ = self
            .in_flight
            .subscribe()
            .wait_for(|in_flight| !*in_flight)
            .await;
    }

    /// Starts a successor with the listeners of `registry` and waits until it is ready.
    ///
    /// On any failure the successor is killed if needed and reaped before this returns.
    pub async fn run(
        &self,
        _permit: &Permit,
        registry: &Registry,
        cancel: &CancellationToken,
    ) -> Result<S::Child, UpgradeError> {
        let Spawned { mut child, ready } = registry
            .with_handover(|fds| self.spawner.spawn(&self.start, fds))
            .map_err(|source| UpgradeError::Spawn {
                program: self.start.program.clone(),
                source,
            })?;
        let pid = child.pid();
        tracing::info!(
            pid,
            old_pid = std::process::id(),
            program = %self.start.program.display(),
            "new process spawned"
        );
        let deadline = Instant::now() + self.timeout;
        let outcome = tokio::select! {
            biased;
            report = ready => match report {
                Ok(true) => Outcome::Ready,
                Ok(false) => Outcome::Closed,
                Err(e) => Outcome::WatchFailed(e),
            },
            status = child.wait() => match status {
                Ok(status) => Outcome::Exited(status),
                Err(e) => Outcome::WatchFailed(e),
            },
            _ = tokio::time::sleep_until(deadline) => Outcome::TimedOut,
            _ = cancel.cancelled() => Outcome::Cancelled,
        };
        let outcome = match outcome {
            Outcome::Closed => match tokio::time::timeout(EXIT_AFTER_CLOSE, child.wait()).await {
                Ok(Ok(status)) => Outcome::Exited(status),
                Ok(Err(e)) => Outcome::WatchFailed(e),
                Err(_) => Outcome::Closed,
            },
            other => other,
        };
        let error = match outcome {
            Outcome::Ready => {
                tracing::info!(pid, old_pid = std::process::id(), "new process ready");
                return Ok(child);
            }
            Outcome::Exited(status) => return Err(UpgradeError::Exited { pid, status }),
            Outcome::Closed => UpgradeError::ClosedWithoutReady { pid },
            Outcome::TimedOut => UpgradeError::Timeout {
                pid,
                timeout: self.timeout,
            },
            Outcome::Cancelled => UpgradeError::Cancelled { pid },
            Outcome::WatchFailed(source) => UpgradeError::Watch { pid, source },
        };
        kill_and_reap(&mut child).await;
        Err(error)
    }
}

async fn kill_and_reap<C: ChildProcess>(child: &mut C) {
    let pid = child.pid();
    if let Err(e) = child.start_kill() {
        tracing::warn!(pid, error = %e, "cannot kill new process");
    }
    match tokio::time::timeout(REAP_LIMIT, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(pid, %status, "new process reaped"),
        Ok(Err(e)) => tracing::warn!(pid, error = %e, "cannot reap new process"),
        Err(_) => tracing::warn!(
            pid,
            "new process did not exit within {REAP_LIMIT:?} of SIGKILL"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::BorrowedFd;
    use std::os::unix::process::ExitStatusExt;
    use std::sync::{Arc, Mutex};
    use tokio::sync::watch;

    use crate::listeners::ListenerKey;

    #[derive(Clone, Copy)]
    enum Script {
        ReadyAfter(Duration),
        ExitAfter(Duration, i32),
        CloseAndLinger,
        Hang,
        CannotStart,
    }

    #[derive(Default)]
    struct Record {
        spawned: usize,
        killed: usize,
        reaped: usize,
    }

    struct FakeSpawner {
        script: Script,
        record: Arc<Mutex<Record>>,
    }

    struct FakeChild {
        exit: Option<(Duration, i32)>,
        kill: watch::Sender<bool>,
        record: Arc<Mutex<Record>>,
    }

    impl ChildProcess for FakeChild {
        fn pid(&self) -> u32 {
            4242
        }

        fn wait(&mut self) -> impl std::future::Future<Output = io::Result<ExitStatus>> + Send {
            let mut killed = self.kill.subscribe();
            let exit = self.exit;
            let record = self.record.clone();
            async move {
                let natural = async {
                    match exit {
                        Some((after, code)) => {
                            tokio::time::sleep(after).await;
                            ExitStatus::from_raw(code << 8)
                        }
                        None => std::future::pending().await,
                    }
                };
                let status = tokio::select! {
                    status = natural => status,
                    _ = killed.wait_for(|k| *k) => ExitStatus::from_raw(9),
                };
                record.lock().unwrap().reaped += 1;
                Ok(status)
            }
        }

        fn start_kill(&mut self) -> io::Result<()> {
            self.record.lock().unwrap().killed += 1;
            self.kill.send_replace(true);
            Ok(())
        }
    }

    impl Spawner for FakeSpawner {
        type Child = FakeChild;

        fn spawn(
            &self,
            _start: &StartInfo,
            _listeners: &[(ListenerKey, BorrowedFd<'_>)],
        ) -> io::Result<Spawned<FakeChild>> {
            let exit = match self.script {
                Script::CannotStart => return Err(io::ErrorKind::NotFound.into()),
                Script::ExitAfter(after, code) => Some((after, code)),
                _ => None,
            };
            self.record.lock().unwrap().spawned += 1;
            let ready: crate::process::ReadyFuture = match self.script {
                Script::ReadyAfter(after) => Box::pin(async move {
                    tokio::time::sleep(after).await;
                    Ok(true)
                }),
                Script::ExitAfter(after, _) => Box::pin(async move {
                    tokio::time::sleep(after).await;
                    Ok(false)
                }),
                Script::CloseAndLinger => Box::pin(async { Ok(false) }),
                Script::Hang | Script::CannotStart => Box::pin(std::future::pending()),
            };
            Ok(Spawned {
                child: FakeChild {
                    exit,
                    kill: watch::channel(false).0,
                    record: self.record.clone(),
                },
                ready,
            })
        }
    }

    fn upgrader(script: Script) -> (Upgrader<FakeSpawner>, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        let start = StartInfo {
            program: "/srv/app/server".into(),
            argv0: "server".into(),
            args: vec![],
            cwd: "/".into(),
        };
        let spawner = FakeSpawner {
            script,
            record: record.clone(),
        };
        (
            Upgrader::new(spawner, start, Duration::from_millis(200)),
            record,
        )
    }

    async fn run(upgrader: &Upgrader<FakeSpawner>) -> Result<FakeChild, UpgradeError> {
        let permit = upgrader.begin().unwrap();
        upgrader
            .run(&permit, &Registry::default(), &CancellationToken::new())
            .await
    }

    #[tokio::test]
    async fn ready_child_is_returned_alive() {
        let (upgrader, record) = upgrader(Script::ReadyAfter(Duration::from_millis(10)));
        run(&upgrader).await.unwrap();
        let record = record.lock().unwrap();
        assert_eq!((record.spawned, record.killed, record.reaped), (1, 0, 0));
    }

    #[tokio::test]
    async fn child_exiting_before_ready_is_reaped_and_reported() {
        let (upgrader, record) = upgrader(Script::ExitAfter(Duration::from_millis(10), 1));
        match run(&upgrader).await {
            Err(UpgradeError::Exited { pid: 4242, status }) => assert_eq!(status.code(), Some(1)),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let record = record.lock().unwrap();
        assert_eq!((record.killed, record.reaped), (0, 1));
    }

    #[tokio::test]
    async fn child_never_ready_is_killed_at_the_timeout() {
        let (upgrader, record) = upgrader(Script::Hang);
        let started = Instant::now();
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, UpgradeError::Timeout { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        let record = record.lock().unwrap();
        assert_eq!((record.killed, record.reaped), (1, 1));
    }

    #[tokio::test]
    async fn child_closing_the_pipe_but_staying_alive_is_killed() {
        let (upgrader, record) = upgrader(Script::CloseAndLinger);
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(
            matches!(err, UpgradeError::ClosedWithoutReady { .. }),
            "{err}"
        );
        assert_eq!(record.lock().unwrap().reaped, 1);
    }

    #[tokio::test]
    async fn missing_program_is_named_in_the_error() {
        let (upgrader, _) = upgrader(Script::CannotStart);
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("/srv/app/server"), "{err}");
    }

    #[tokio::test]
    async fn cancellation_kills_and_reaps() {
        let (upgrader, record) = upgrader(Script::Hang);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let permit = upgrader.begin().unwrap();
        let err = upgrader
            .run(&permit, &Registry::default(), &cancel)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, UpgradeError::Cancelled { .. }), "{err}");
        assert_eq!(record.lock().unwrap().reaped, 1);
    }

    #[test]
    fn one_upgrade_at_a_time() {
        let (upgrader, _) = upgrader(Script::Hang);
        let permit = upgrader.begin().unwrap();
        assert!(matches!(upgrader.begin(), Err(UpgradeError::InProgress)));
        drop(permit);
        assert!(upgrader.begin().is_ok());
    }
}
