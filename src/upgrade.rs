//! One upgrade: start the successor, wait for its readiness report, roll back on any failure.
//!
//! Rollback means the old process does nothing but stop (if still running) and reap the new
//! process: it never stopped accepting, so its service was not interrupted. A successor starts
//! accepting only once it has reported ready, so one stopped before that has taken nothing from
//! the shared sockets; it is still stopped with SIGTERM first (SIGKILL only if it does not exit in
//! time), because its report may cross the decision to give up on it, and a successor that accepted
//! connections must drain them rather than drop them.

use std::io;
use std::os::fd::OwnedFd;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::UpgradeError;
use crate::listeners::Registry;
use crate::process::{ChildProcess, Spawned, Spawner, StartInfo};

/// What the old process does once its successor is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUpgrade {
    /// Drain and exit (SIGHUP; SIGUSR1/SIGUSR2 with `kill_master`).
    Exit,
    /// Keep serving beside the successor (SIGUSR1/SIGUSR2 without `kill_master`).
    KeepServing,
}

/// How long a successor that closed its readiness pipe gets to exit before it is stopped.
const EXIT_AFTER_CLOSE: Duration = Duration::from_secs(2);
/// How long reaping a killed successor may take before giving up on it.
const REAP_LIMIT: Duration = Duration::from_secs(5);
/// Added to the drain timeout for a successor told to stop gracefully: the time to notice the
/// signal, close its listeners and exit.
const STOP_MARGIN: Duration = Duration::from_secs(1);

/// Starts successors, one at a time.
pub(crate) struct Upgrader<S: Spawner> {
    spawner: S,
    start: StartInfo,
    timeout: Duration,
    stop_grace: std::sync::Mutex<Duration>,
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

/// A successor this process answers for. Dropped without [`Successor::hand_over`], it is killed
/// and reaped with a log line: a successor can never be left running unannounced.
pub(crate) struct Successor<C: ChildProcess> {
    child: Option<C>,
    stop_grace: Duration,
    relay: Option<OwnedFd>,
}

impl<C: ChildProcess> Successor<C> {
    fn new(child: C, stop_grace: Duration, relay: Option<OwnedFd>) -> Self {
        Successor {
            child: Some(child),
            stop_grace,
            relay,
        }
    }

    /// This process's end of the relay channel to the successor, if one was made.
    pub fn take_relay(&mut self) -> Option<OwnedFd> {
        self.relay.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, ChildProcess::pid)
    }

    fn child(&mut self) -> &mut C {
        self.child
            .as_mut()
            .expect("a successor is stopped or handed over only once")
    }

    /// The successor serves from now on: this process no longer stops it when dropped (for
    /// example when this process exits after its drain). The caller still reaps it.
    pub fn hand_over(mut self) -> C {
        self.child.take().expect("a successor is handed over once")
    }

    /// Waits for the successor to exit by itself, and reaps it.
    async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child().wait().await;
        if status.is_ok() {
            self.child = None;
        }
        status
    }

    /// Asks the successor to shut down gracefully (SIGTERM), so that whatever it accepted is
    /// drained, not dropped; kills it if it has not exited within the grace; reaps it.
    pub async fn stop(mut self) {
        let pid = self.pid();
        let grace = self.stop_grace;
        let child = self.child();
        if let Err(e) = child.terminate() {
            tracing::warn!(pid, error = %e, "cannot send SIGTERM to new process {pid}");
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => {
                tracing::info!(pid, %status, "new process {pid} stopped and reaped ({status})");
                self.child = None;
                return;
            }
            Ok(Err(e)) => tracing::warn!(pid, error = %e, "cannot wait for new process {pid}"),
            Err(_) => tracing::warn!(
                pid,
                "new process {pid} did not exit within {grace:?} of SIGTERM; killing it"
            ),
        }
        kill_and_reap(child).await;
        self.child = None;
    }
}

impl<C: ChildProcess> Drop for Successor<C> {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.pid();
        tracing::warn!(
            pid,
            "new process {pid} abandoned before it took over; killing and reaping it"
        );
        if let Err(e) = child.start_kill() {
            tracing::warn!(pid, error = %e, "cannot kill new process {pid}");
        }
        // Killed already; without a runtime (the process is exiting) the kernel reaps it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(REAP_LIMIT, child.wait()).await;
            });
        }
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
    /// `drain_timeout` bounds how long a successor told to stop gracefully may take.
    pub fn new(spawner: S, start: StartInfo, timeout: Duration, drain_timeout: Duration) -> Self {
        Upgrader {
            spawner,
            start,
            timeout,
            stop_grace: std::sync::Mutex::new(drain_timeout + STOP_MARGIN),
            in_flight: watch::Sender::new(false),
        }
    }

    /// The drain timeout of the server this process runs, which a successor told to stop
    /// gracefully is given too (the same program, with the same arguments).
    pub fn set_drain_timeout(&self, drain_timeout: Duration) {
        *self.stop_grace.lock().unwrap_or_else(|p| p.into_inner()) = drain_timeout + STOP_MARGIN;
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

    /// Whether an upgrade holds the slot.
    pub fn in_flight(&self) -> bool {
        *self.in_flight.borrow()
    }

    /// Waits until no upgrade is in flight: a cancelled one has stopped and reaped its process.
    pub async fn settled(&self) {
        let _ = self
            .in_flight
            .subscribe()
            .wait_for(|in_flight| !*in_flight)
            .await;
    }

    /// Starts a successor with the listeners of `registry` and waits until it is ready, for
    /// `timeout` or else the configured upgrade timeout.
    ///
    /// On any failure the successor is stopped if needed and reaped before this returns.
    pub async fn run(
        &self,
        _permit: &Permit,
        registry: &Registry,
        cancel: &CancellationToken,
        timeout: Option<Duration>,
    ) -> Result<Successor<S::Child>, UpgradeError> {
        let timeout = timeout.unwrap_or(self.timeout);
        let spawned = registry.with_handover(|fds| self.spawner.spawn(&self.start, fds));
        let Spawned {
            child,
            ready,
            relay,
        } = spawned.map_err(|source| self.spawn_error(source))?;
        let stop_grace = *self.stop_grace.lock().unwrap_or_else(|p| p.into_inner());
        let mut successor = Successor::new(child, stop_grace, relay);
        let pid = successor.pid();
        tracing::info!(
            pid,
            old_pid = std::process::id(),
            program = %self.start.program.display(),
            "new process spawned"
        );
        let deadline = Instant::now() + timeout;
        let outcome = tokio::select! {
            biased;
            report = ready => match report {
                Ok(true) => Outcome::Ready,
                Ok(false) => Outcome::Closed,
                Err(e) => Outcome::WatchFailed(e),
            },
            status = successor.wait() => match status {
                Ok(status) => Outcome::Exited(status),
                Err(e) => Outcome::WatchFailed(e),
            },
            _ = tokio::time::sleep_until(deadline) => Outcome::TimedOut,
            _ = cancel.cancelled() => Outcome::Cancelled,
        };
        let outcome = match outcome {
            Outcome::Closed => {
                match tokio::time::timeout(EXIT_AFTER_CLOSE, successor.wait()).await {
                    Ok(Ok(status)) => Outcome::Exited(status),
                    Ok(Err(e)) => Outcome::WatchFailed(e),
                    Err(_) => Outcome::Closed,
                }
            }
            other => other,
        };
        let error = match outcome {
            Outcome::Ready => {
                tracing::info!(pid, old_pid = std::process::id(), "new process ready");
                return Ok(successor);
            }
            Outcome::Exited(status) => return Err(UpgradeError::Exited { pid, status }),
            Outcome::Closed => UpgradeError::ClosedWithoutReady { pid },
            Outcome::TimedOut => UpgradeError::Timeout { pid, timeout },
            Outcome::Cancelled => UpgradeError::Cancelled { pid },
            Outcome::WatchFailed(source) => UpgradeError::Watch { pid, source },
        };
        successor.stop().await;
        Err(error)
    }

    /// A removed working directory makes `exec` fail with "No such file or directory" too: name
    /// the directory rather than let the program be blamed.
    fn spawn_error(&self, source: io::Error) -> UpgradeError {
        match std::fs::metadata(&self.start.cwd) {
            Ok(meta) if meta.is_dir() => UpgradeError::Spawn {
                program: self.start.program.clone(),
                source,
            },
            Ok(_) => UpgradeError::WorkingDirectory {
                dir: self.start.cwd.clone(),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            },
            Err(e) => UpgradeError::WorkingDirectory {
                dir: self.start.cwd.clone(),
                source: e,
            },
        }
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

    use crate::key::ListenerKey;

    #[derive(Clone, Copy)]
    enum Script {
        ReadyAfter(Duration),
        ExitAfter(Duration, i32),
        CloseAndLinger,
        Hang,
        /// Never ready, and ignores SIGTERM: only SIGKILL ends it.
        HangIgnoringTerm,
        CannotStart,
    }

    #[derive(Default)]
    struct Record {
        spawned: usize,
        terminated: usize,
        killed: usize,
        reaped: usize,
    }

    struct FakeSpawner {
        script: Script,
        record: Arc<Mutex<Record>>,
    }

    /// A fake process: exits by itself as scripted, on SIGKILL, and on SIGTERM unless scripted
    /// to ignore it.
    struct FakeChild {
        exit: Option<(Duration, i32)>,
        obeys_term: bool,
        signal: watch::Sender<i32>,
        record: Arc<Mutex<Record>>,
    }

    impl ChildProcess for FakeChild {
        fn pid(&self) -> u32 {
            4242
        }

        fn wait(&mut self) -> impl std::future::Future<Output = io::Result<ExitStatus>> + Send {
            let mut signal = self.signal.subscribe();
            let exit = self.exit;
            let obeys_term = self.obeys_term;
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
                let signalled = signal.wait_for(|s| *s == 9 || (*s == 15 && obeys_term));
                let status = tokio::select! {
                    status = natural => status,
                    s = signalled => ExitStatus::from_raw(*s.unwrap()),
                };
                record.lock().unwrap().reaped += 1;
                Ok(status)
            }
        }

        fn start_kill(&mut self) -> io::Result<()> {
            self.record.lock().unwrap().killed += 1;
            self.signal.send_replace(9);
            Ok(())
        }

        fn terminate(&mut self) -> io::Result<()> {
            self.record.lock().unwrap().terminated += 1;
            self.signal.send_if_modified(|s| {
                let first = *s == 0;
                if first {
                    *s = 15;
                }
                first
            });
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
                Script::Hang | Script::HangIgnoringTerm | Script::CannotStart => {
                    Box::pin(std::future::pending())
                }
            };
            Ok(Spawned {
                child: FakeChild {
                    exit,
                    obeys_term: !matches!(self.script, Script::HangIgnoringTerm),
                    signal: watch::channel(0).0,
                    record: self.record.clone(),
                },
                ready,
                relay: None,
            })
        }
    }

    const DRAIN: Duration = Duration::from_secs(5);

    fn upgrader_in(script: Script, cwd: &str) -> (Upgrader<FakeSpawner>, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        let start = StartInfo {
            program: "/srv/app/server".into(),
            argv0: "server".into(),
            args: vec![],
            cwd: cwd.into(),
        };
        let spawner = FakeSpawner {
            script,
            record: record.clone(),
        };
        (
            Upgrader::new(spawner, start, Duration::from_millis(200), DRAIN),
            record,
        )
    }

    fn upgrader(script: Script) -> (Upgrader<FakeSpawner>, Arc<Mutex<Record>>) {
        upgrader_in(script, "/")
    }

    async fn run(upgrader: &Upgrader<FakeSpawner>) -> Result<Successor<FakeChild>, UpgradeError> {
        let permit = upgrader.begin().unwrap();
        upgrader
            .run(
                &permit,
                &Registry::default(),
                &CancellationToken::new(),
                None,
            )
            .await
    }

    fn counts(record: &Mutex<Record>) -> (usize, usize, usize) {
        let record = record.lock().unwrap();
        (record.terminated, record.killed, record.reaped)
    }

    /// Lets tasks spawned by a drop run (the fake clock advances only when all are idle).
    async fn settle_tasks() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn ready_child_is_returned_alive() {
        let (upgrader, record) = upgrader(Script::ReadyAfter(Duration::from_millis(10)));
        let successor = run(&upgrader).await.unwrap();
        assert_eq!(record.lock().unwrap().spawned, 1);
        assert_eq!(counts(&record), (0, 0, 0));
        drop(successor.hand_over());
        settle_tasks().await;
        assert_eq!(
            counts(&record),
            (0, 0, 0),
            "a handed-over process is never killed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_successor_dropped_without_hand_over_is_killed_and_reaped() {
        let (upgrader, record) = upgrader(Script::ReadyAfter(Duration::from_millis(10)));
        let successor = run(&upgrader).await.unwrap();
        drop(successor);
        settle_tasks().await;
        assert_eq!(counts(&record), (0, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_a_ready_successor_asks_it_to_drain_first() {
        let (upgrader, record) = upgrader(Script::ReadyAfter(Duration::from_millis(10)));
        run(&upgrader).await.unwrap().stop().await;
        assert_eq!(counts(&record), (1, 0, 1), "SIGTERM was enough: no SIGKILL");
    }

    #[tokio::test(start_paused = true)]
    async fn a_successor_ignoring_sigterm_is_killed_after_the_drain_timeout_of_the_server() {
        let (upgrader, record) = upgrader(Script::HangIgnoringTerm);
        // The server that serves through this process sets its own drain timeout.
        let drain_timeout = DRAIN / 2;
        upgrader.set_drain_timeout(drain_timeout);
        let started = Instant::now();
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, UpgradeError::Timeout { .. }), "{err}");
        assert_eq!(counts(&record), (1, 1, 1));
        let took = started.elapsed();
        let grace = drain_timeout + STOP_MARGIN;
        assert!(
            took >= Duration::from_millis(200) + grace && took < Duration::from_millis(300) + grace,
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn child_exiting_before_ready_is_reaped_and_reported() {
        let (upgrader, record) = upgrader(Script::ExitAfter(Duration::from_millis(10), 1));
        match run(&upgrader).await {
            Err(UpgradeError::Exited { pid: 4242, status }) => assert_eq!(status.code(), Some(1)),
            other => panic!("{:?}", other.map(|_| ())),
        }
        settle_tasks().await;
        assert_eq!(counts(&record), (0, 0, 1), "reaped once, never signalled");
    }

    #[tokio::test(start_paused = true)]
    async fn child_never_ready_is_stopped_at_the_timeout() {
        let (upgrader, record) = upgrader(Script::Hang);
        let started = Instant::now();
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(matches!(err, UpgradeError::Timeout { .. }), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(counts(&record), (1, 0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn child_closing_the_pipe_but_staying_alive_is_stopped() {
        let (upgrader, record) = upgrader(Script::CloseAndLinger);
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(
            matches!(err, UpgradeError::ClosedWithoutReady { .. }),
            "{err}"
        );
        assert_eq!(counts(&record), (1, 0, 1));
    }

    #[tokio::test]
    async fn missing_program_is_named_in_the_error() {
        let (upgrader, _) = upgrader(Script::CannotStart);
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("/srv/app/server"), "{err}");
    }

    #[tokio::test]
    async fn a_removed_working_directory_is_named_rather_than_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().join("release-41");
        let (upgrader, _) = upgrader_in(Script::CannotStart, cwd.to_str().unwrap());
        let err = run(&upgrader).await.map(|_| ()).unwrap_err();
        assert!(
            matches!(&err, UpgradeError::WorkingDirectory { dir, .. } if *dir == cwd),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("release-41") && !text.contains("/srv/app/server"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_stops_and_reaps() {
        let (upgrader, record) = upgrader(Script::Hang);
        let cancel = CancellationToken::new();
        cancel.cancel();
        let permit = upgrader.begin().unwrap();
        let err = upgrader
            .run(&permit, &Registry::default(), &cancel, None)
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, UpgradeError::Cancelled { .. }), "{err}");
        assert_eq!(counts(&record), (1, 0, 1));
    }

    /// What an in-process successor found: for each listener it asked for, its key, the kernel
    /// socket behind it and its local address.
    type Found = Vec<(ListenerKey, u64, String)>;

    /// How a [`ThreadSpawner`]'s successor ends its start.
    #[derive(Clone, Copy)]
    enum Ending {
        Ready,
        CloseWithoutReady,
    }

    /// Starts the successor as a thread of this test instead of a process, on the real
    /// hand-over: the fds it is handed (duplicated, as `fork` would), described in the
    /// environment a successor gets, read back, adopted and checked; then it reports ready, or
    /// closes the pipe and exits 1.
    struct ThreadSpawner {
        script: Ending,
        found: std::sync::mpsc::Sender<Found>,
    }

    /// The thread standing for the successor process; it "exits" when the thread ends, which a
    /// ready one does once asked to ([`ChildProcess::terminate`]).
    struct ThreadChild {
        exit: watch::Receiver<Option<i32>>,
        terminate: std::sync::mpsc::Sender<()>,
    }

    const THREAD_PID: u32 = 999_999_999;

    impl ChildProcess for ThreadChild {
        fn pid(&self) -> u32 {
            THREAD_PID
        }

        fn wait(&mut self) -> impl std::future::Future<Output = io::Result<ExitStatus>> + Send {
            let mut exit = self.exit.clone();
            async move {
                let code = match exit.wait_for(Option::is_some).await {
                    Ok(code) => code.unwrap_or(101),
                    Err(_) => 101,
                };
                Ok(ExitStatus::from_raw(code << 8))
            }
        }

        fn start_kill(&mut self) -> io::Result<()> {
            Ok(())
        }

        fn terminate(&mut self) -> io::Result<()> {
            let _ = self.terminate.send(());
            Ok(())
        }
    }

    impl Spawner for ThreadSpawner {
        type Child = ThreadChild;

        fn spawn(
            &self,
            _start: &StartInfo,
            listeners: &[(ListenerKey, BorrowedFd<'_>)],
        ) -> io::Result<Spawned<ThreadChild>> {
            use std::os::fd::{AsFd, OwnedFd};
            let (ready_read, ready_write) = crate::readiness::pipe()?;
            let copies: Vec<OwnedFd> = listeners
                .iter()
                .map(|(_, fd)| fd.try_clone_to_owned())
                .collect::<io::Result<_>>()?;
            let handed: Vec<_> = listeners
                .iter()
                .zip(&copies)
                .map(|((key, _), fd)| (key.clone(), fd.as_fd()))
                .collect();
            let handover =
                crate::env::Handover::from_this_process(&handed, ready_write.as_fd(), None);
            let mut env = crate::process::successor_environment(std::iter::empty(), &handover);
            env.push((crate::env::PID_VAR.into(), THREAD_PID.to_string().into()));
            // From here on the successor owns the copies and the write end, by number.
            copies.into_iter().for_each(std::mem::forget);
            std::mem::forget(ready_write);
            let (exit_tx, exit_rx) = watch::channel(None);
            let (terminate_tx, terminate_rx) = std::sync::mpsc::channel();
            let (script, found) = (self.script, self.found.clone());
            std::thread::spawn(move || {
                let me = crate::env::Identity {
                    pid: THREAD_PID,
                    parent: Some(std::process::id()),
                };
                let lookup = |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
                let handover = crate::env::Handover::from_env(lookup, me)
                    .unwrap()
                    .expect("the hand-over is for this successor");
                let mut inherited = Vec::new();
                for (fd, key) in &handover.listeners {
                    // SAFETY: the spawner forgot its owner of each copy: this is the only one.
                    let fd = unsafe { crate::fds::adopt_listener("OCTOPUS_LISTENERS", *fd, key) };
                    inherited.push((key.clone(), fd.unwrap()));
                }
                // SAFETY: as above, for the pipe's write end.
                let ready =
                    unsafe { crate::fds::adopt_ready_pipe("OCTOPUS_READY_FD", handover.ready_fd) }
                        .unwrap();
                let keys: Vec<ListenerKey> = inherited.iter().map(|(k, _)| k.clone()).collect();
                let registry = Registry::new(inherited, vec![]);
                let mut sockets: Found = Vec::new();
                for key in keys {
                    let fd: OwnedFd = match key.network() {
                        crate::key::Network::Tcp => {
                            registry.tcp(key.clone(), key.address()).unwrap().into()
                        }
                        crate::key::Network::Udp => {
                            registry.udp(key.clone(), key.address()).unwrap().into()
                        }
                        _ => unreachable!("the test hands over TCP and UDP sockets"),
                    };
                    let address = crate::listeners::local_address(&fd);
                    sockets.push((key, rustix::fs::fstat(&fd).unwrap().st_ino, address));
                }
                found.send(sockets).unwrap();
                let code = match script {
                    Ending::Ready => {
                        crate::readiness::wait_writable(&ready).unwrap();
                        crate::readiness::notify_ready(&ready).unwrap();
                        // Serves until told to stop, as a process would.
                        let _ = terminate_rx.recv_timeout(Duration::from_secs(30));
                        0
                    }
                    Ending::CloseWithoutReady => 1,
                };
                drop(ready);
                exit_tx.send_replace(Some(code));
            });
            Ok(Spawned {
                child: ThreadChild {
                    exit: exit_rx,
                    terminate: terminate_tx,
                },
                ready: Box::pin(crate::readiness::wait_ready(ready_read)),
                relay: None,
            })
        }
    }

    /// A registry serving a TCP listener and a UDP socket, as the old process's, and what the
    /// successor must find: each key, socket and address.
    fn old_process() -> (Registry, Found) {
        let registry = Registry::default();
        let tcp = registry
            .tcp(ListenerKey::tcp("127.0.0.1:0"), "127.0.0.1:0")
            .unwrap();
        let udp = registry
            .udp(ListenerKey::udp("127.0.0.1:0"), "127.0.0.1:0")
            .unwrap();
        let id = |fd: &dyn std::os::fd::AsFd| rustix::fs::fstat(fd.as_fd()).unwrap().st_ino;
        let expected = vec![
            (
                ListenerKey::tcp("127.0.0.1:0"),
                id(&tcp),
                tcp.local_addr().unwrap().to_string(),
            ),
            (
                ListenerKey::udp("127.0.0.1:0"),
                id(&udp),
                udp.local_addr().unwrap().to_string(),
            ),
        ];
        (registry, expected)
    }

    async fn hand_over_in_process(
        script: Ending,
    ) -> (Result<Successor<ThreadChild>, UpgradeError>, Found, Found) {
        let (registry, expected) = old_process();
        let (found_tx, found_rx) = std::sync::mpsc::channel();
        let spawner = ThreadSpawner {
            script,
            found: found_tx,
        };
        let start = StartInfo {
            program: "/srv/app/server".into(),
            argv0: "server".into(),
            args: vec![],
            cwd: "/".into(),
        };
        let upgrader = Upgrader::new(spawner, start, Duration::from_secs(10), DRAIN);
        let permit = upgrader.begin().unwrap();
        let result = upgrader
            .run(&permit, &registry, &CancellationToken::new(), None)
            .await;
        let found = found_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the successor adopted its sockets");
        (result, expected, found)
    }

    #[tokio::test]
    async fn in_process_the_successor_adopts_the_same_sockets_and_the_old_side_hands_over() {
        let (result, expected, found) = hand_over_in_process(Ending::Ready).await;
        assert_eq!(
            found, expected,
            "the same kernel sockets, on the same addresses"
        );
        let successor = result.expect("the old side saw ready");
        assert_eq!(successor.pid(), THREAD_PID);
        let mut child = successor.hand_over();
        child.terminate().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{status}");
    }

    #[tokio::test]
    async fn in_process_a_successor_that_closes_the_pipe_without_ready_is_rolled_back() {
        let (result, expected, found) = hand_over_in_process(Ending::CloseWithoutReady).await;
        assert_eq!(found, expected);
        match result.map(|_| ()) {
            Err(UpgradeError::Exited { pid, status }) => {
                assert_eq!((pid, status.code()), (THREAD_PID, Some(1)))
            }
            other => panic!("rolled back, since it never reported ready: {other:?}"),
        }
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
