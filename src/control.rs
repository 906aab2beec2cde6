//! The control socket: a Unix stream socket on which the generation that serves answers
//! `status`, `upgrade` and `stop` (the protocol is in [`protocol`] and the crate docs).
//!
//! The socket is a listener of the registry, so it is handed over on upgrade like the others and
//! its path always leads to the newest generation. A generation accepts on it only while it
//! serves new connections alone; a client it accepted before handing over is still answered.
//! Nothing here runs on the request path: a flood of control clients is refused past
//! [`MAX_CLIENTS`], and every read waits a bounded time.

mod protocol;
mod stats;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::task::TaskTracker;

use crate::drain::DrainReport;
use crate::error::{Error, UpgradeError};
use crate::key::ListenerKey;
use crate::lifecycle::{AfterUpgrade, Handle, State, WeakHandle};
use crate::trigger::Trigger;

pub(crate) use stats::{ConnectionSlot, ListenerStats};

/// Control clients served at once; more are answered with an error and closed at once.
const MAX_CLIENTS: usize = 64;
/// How long a client may take to send a command line.
const IDLE_LIMIT: Duration = Duration::from_secs(10);
/// How long an answer may take to be written before the client is dropped.
const WRITE_LIMIT: Duration = Duration::from_secs(5);
/// How long an exiting process waits for its control clients to receive their answers.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);
/// The pause of the accept loop after an error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long an `upgrade` answer waits for the old generation's accept loops to end after the
/// hand-over; they end within one scheduling round, so this only bounds a stalled process.
const ACCEPT_STOP_LIMIT: Duration = Duration::from_secs(2);

/// What `status` reports that the lifecycle records, and the control clients of this process.
pub(crate) struct Facts {
    pub generation: u64,
    started: Instant,
    parent_pid: Option<u32>,
    control_key: Option<ListenerKey>,
    last_upgrade: Mutex<Option<UpgradeRecord>>,
    /// Set once a server's accept loops have stopped and its drain began; `None` while serving.
    drain_deadline: watch::Sender<Option<SystemTime>>,
    listeners: Mutex<Vec<Arc<ListenerStats>>>,
    drained: watch::Sender<Option<DrainReport>>,
    beside: watch::Sender<Option<u32>>,
    clients: TaskTracker,
    closing: Trigger,
}

struct UpgradeRecord {
    finished: SystemTime,
    duration: Duration,
    outcome: Result<u32, Value>,
}

/// Marks a successor kept serving beside this process while it lives.
pub(crate) struct Beside(watch::Sender<Option<u32>>);

impl Drop for Beside {
    fn drop(&mut self) {
        self.0.send_replace(None);
    }
}

impl Facts {
    pub fn new(generation: u64, parent_pid: Option<u32>, control_key: Option<ListenerKey>) -> Self {
        Facts {
            generation,
            started: Instant::now(),
            parent_pid,
            control_key,
            last_upgrade: Mutex::default(),
            drain_deadline: watch::Sender::new(None),
            listeners: Mutex::default(),
            drained: watch::Sender::new(None),
            beside: watch::Sender::new(None),
            clients: TaskTracker::new(),
            closing: Trigger::default(),
        }
    }

    /// Records the upgrade that started this process, now that it is ready: so `status`, which
    /// this process answers from now on, reports it whether a signal or a command started it.
    pub fn record_started_by_upgrade(&self, began: Option<SystemTime>) {
        let duration = began
            .and_then(|began| SystemTime::now().duration_since(began).ok())
            .unwrap_or_else(|| self.started.elapsed());
        self.record_upgrade(&Ok(std::process::id()), duration);
    }

    /// Records how an upgrade that was started ended; refusals (one in flight, stopping, not
    /// ready) started nothing and leave the last one in place.
    pub fn record_upgrade(&self, result: &Result<u32, UpgradeError>, duration: Duration) {
        let outcome = match result {
            Ok(pid) => Ok(*pid),
            Err(UpgradeError::InProgress | UpgradeError::Stopping | UpgradeError::NotReady) => {
                return;
            }
            Err(e) => Err(protocol::upgrade_error(e)),
        };
        *lock(&self.last_upgrade) = Some(UpgradeRecord {
            finished: SystemTime::now(),
            duration,
            outcome,
        });
    }

    pub fn track_listener(&self, address: String) -> Arc<ListenerStats> {
        let stats = ListenerStats::new(address);
        lock(&self.listeners).push(stats.clone());
        stats
    }

    pub fn note_drain(&self, deadline: Option<SystemTime>) {
        self.drain_deadline.send_replace(deadline);
    }

    /// After a hand-over, waits (at most `limit`) until this process's server has stopped
    /// accepting, so that once an `upgrade` is answered every new connection reaches the new
    /// process. Without a [`Server`](crate::Server) there are no accept loops to wait for.
    async fn stopped_accepting(&self, limit: Duration) {
        if lock(&self.listeners).is_empty() {
            return;
        }
        let mut drain = self.drain_deadline.subscribe();
        let _ = tokio::time::timeout(limit, drain.wait_for(Option::is_some)).await;
    }

    pub fn publish_drain(&self, report: DrainReport) {
        self.drained.send_replace(Some(report));
    }

    pub fn beside(&self, pid: u32) -> Beside {
        self.beside.send_replace(Some(pid));
        Beside(self.beside.clone())
    }

    pub fn beside_watch(&self) -> watch::Receiver<Option<u32>> {
        self.beside.subscribe()
    }

    /// Lets the control clients of an exiting process receive their answers (bounded): those
    /// still waiting for a command are told to connect again.
    pub async fn settle_clients(&self) {
        self.closing.fire();
        self.clients.close();
        if tokio::time::timeout(SETTLE_LIMIT, self.clients.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.clients.len(),
                "control clients still unanswered after {SETTLE_LIMIT:?}; exiting without them"
            );
        }
    }
}

/// Whether this generation accepts control clients: while it serves, with no successor beside it.
pub(crate) struct Gate {
    state: watch::Receiver<State>,
    beside: watch::Receiver<Option<u32>>,
}

impl Gate {
    pub fn new(state: watch::Receiver<State>, beside: watch::Receiver<Option<u32>>) -> Self {
        Gate { state, beside }
    }

    fn is_open(&self) -> bool {
        *self.state.borrow() == State::Serving && self.beside.borrow().is_none()
    }

    /// Waits until the gate is `open` (or closed); `false` once the generation is gone.
    async fn until(&mut self, open: bool) -> bool {
        loop {
            if self.is_open() == open {
                return true;
            }
            let changed = tokio::select! {
                changed = self.state.changed() => changed,
                changed = self.beside.changed() => changed,
            };
            if changed.is_err() {
                return false;
            }
        }
    }
}

/// Serves the control socket `listener` for the generation behind `handle`, from a task.
pub(crate) fn serve(
    listener: std::os::unix::net::UnixListener,
    handle: &Handle,
) -> Result<(), Error> {
    let listener = tokio::net::UnixListener::from_std(listener).map_err(|source| Error::Io {
        what: "cannot register the control socket with the runtime",
        source,
    })?;
    tokio::spawn(accept_loop(
        listener,
        handle.downgrade(),
        handle.control_gate(),
    ));
    Ok(())
}

async fn accept_loop(listener: tokio::net::UnixListener, weak: WeakHandle, mut gate: Gate) {
    let limit = Arc::new(Semaphore::new(MAX_CLIENTS));
    let me = rustix::process::geteuid().as_raw();
    loop {
        if !gate.until(true).await {
            return;
        }
        let accepted = tokio::select! {
            biased;
            open = gate.until(false) => if open { continue } else { return },
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                if !crate::accept::is_per_connection(&e) {
                    tracing::warn!("control socket: accept failed: {e}; pausing before retrying");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                continue;
            }
        };
        let Some(handle) = weak.upgrade() else {
            return;
        };
        match stream.peer_cred() {
            Ok(peer) if peer.uid() == me || peer.uid() == 0 => {}
            Ok(peer) => {
                tracing::warn!(
                    uid = peer.uid(),
                    peer_pid = ?peer.pid(),
                    "control connection refused: user {} is neither this server's user ({me}) nor root",
                    peer.uid()
                );
                refuse(
                    &stream,
                    &format!(
                        "permission denied: user {} may not control this server; run as user {me} or root",
                        peer.uid()
                    ),
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("control connection refused: cannot read its credentials: {e}");
                refuse(&stream, "permission denied: cannot check who you are");
                continue;
            }
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            refuse(
                &stream,
                &format!("busy: {MAX_CLIENTS} control clients are connected; try again shortly"),
            );
            continue;
        };
        let clients = handle.facts().clients.clone();
        clients.spawn(serve_client(stream, handle, permit));
    }
}

/// Tells a client why it is refused, without waiting: a fresh socket's buffer takes the line.
fn refuse(stream: &UnixStream, message: &str) {
    let _ = stream.try_write(&protocol::error(message));
}

async fn serve_client(stream: UnixStream, handle: Handle, _permit: OwnedSemaphorePermit) {
    let closing = handle.facts().closing.clone();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limited = (&mut reader).take(protocol::MAX_LINE as u64 + 1);
        let read = tokio::select! {
            biased;
            () = closing.wait() => {
                let message = "this process is exiting; connect again to reach the one that serves";
                send(&mut write, &protocol::error(message)).await;
                return;
            }
            read = tokio::time::timeout(IDLE_LIMIT, read_line(limited, &mut line)) => read,
        };
        match read {
            Err(_) => {
                let message = format!("no command within {IDLE_LIMIT:?}; closing");
                send(&mut write, &protocol::error(&message)).await;
                return;
            }
            Ok(Err(_) | Ok(0)) => return,
            Ok(Ok(_)) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > protocol::MAX_LINE {
            let message = format!(
                "command line longer than {} KiB; closing",
                protocol::MAX_LINE / 1024
            );
            send(&mut write, &protocol::error(&message)).await;
            return;
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let answer = match protocol::parse(&line) {
            Ok(command) => run(command, &handle).await,
            Err(message) => protocol::error(&message),
        };
        if !send(&mut write, &answer).await {
            return;
        }
    }
}

async fn read_line(
    mut reader: impl tokio::io::AsyncBufRead + Unpin,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    reader.read_until(b'\n', line).await
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, line: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_LIMIT, write.write_all(line)).await,
        Ok(Ok(()))
    )
}

async fn run(command: protocol::Command, handle: &Handle) -> Vec<u8> {
    let me = std::process::id();
    match command {
        protocol::Command::Status => protocol::ok(status(handle)),
        protocol::Command::Upgrade { keep_old, timeout } => {
            let after = if keep_old {
                AfterUpgrade::KeepServing
            } else {
                AfterUpgrade::Exit
            };
            tracing::info!(pid = me, keep_old, "upgrade asked on the control socket");
            let started = Instant::now();
            match handle.upgrade_with(after, timeout).await {
                Ok(pid) => {
                    if !keep_old {
                        handle.facts().stopped_accepting(ACCEPT_STOP_LIMIT).await;
                    }
                    protocol::ok(json!({
                    "pid": pid,
                    "old_pid": me,
                    "duration_ms": millis(started.elapsed()),
                    "old": if keep_old { "serving" } else { "draining" },
                    }))
                }
                Err(e) => protocol::failed(protocol::upgrade_error(&e)),
            }
        }
        protocol::Command::Stop { wait } => {
            tracing::info!(pid = me, wait, "stop asked on the control socket");
            handle.shutdown();
            if !wait {
                return protocol::ok(json!({ "pid": me, "state": handle.state_name() }));
            }
            let facts = handle.facts();
            let mut drained = facts.drained.subscribe();
            tokio::select! {
                biased;
                report = drained.wait_for(Option::is_some) => {
                    let report = report.ok().and_then(|r| *r).unwrap_or_default();
                    protocol::ok(json!({
                        "pid": me,
                        "finished": report.finished,
                        "cut": report.cut,
                        "drain_ms": millis(report.elapsed),
                    }))
                }
                // A low-level server that does not publish its drain: exiting is all there is.
                () = facts.closing.wait() => protocol::ok(json!({ "pid": me })),
            }
        }
    }
}

/// The fields of a `status` answer.
fn status(handle: &Handle) -> Value {
    let facts = handle.facts();
    let stats = lock(&facts.listeners).clone();
    let listeners: Vec<Value> = handle
        .listeners()
        .into_iter()
        .filter(|(key, _)| Some(key) != facts.control_key.as_ref())
        .map(|(key, address)| {
            let mut counted = stats.iter().filter(|s| s.address() == address).peekable();
            let counts = counted.peek().is_some().then(|| {
                counted.fold((0, 0), |(open, in_flight), s| {
                    let (o, i) = s.counts();
                    (open + o, in_flight + i)
                })
            });
            json!({
                "key": key.to_string(),
                "address": address,
                "connections": counts.map(|c| c.0),
                "in_flight": counts.map(|c| c.1),
            })
        })
        .collect();
    let last_upgrade = lock(&facts.last_upgrade).as_ref().map(|record| {
        let mut fields = match &record.outcome {
            Ok(pid) => json!({ "ok": true, "pid": pid }),
            Err(error) => {
                let mut fields = error.clone();
                fields["ok"] = false.into();
                fields
            }
        };
        fields["duration_ms"] = millis(record.duration).into();
        fields["at"] = humantime::format_rfc3339_millis(record.finished)
            .to_string()
            .into();
        fields
    });
    let drain_deadline = facts
        .drain_deadline
        .borrow()
        .map(|deadline| humantime::format_rfc3339_millis(deadline).to_string());
    json!({
        "pid": std::process::id(),
        "parent_pid": facts.parent_pid.filter(|pid| is_alive(*pid)),
        "state": handle.state_name(),
        "uptime_ms": millis(facts.started.elapsed()),
        "generation": facts.generation,
        "listeners": listeners,
        "beside_pid": *facts.beside.borrow(),
        "last_upgrade": last_upgrade,
        "drain_deadline": drain_deadline,
    })
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `pid` runs (a zombie has exited).
fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => rustix::process::Pid::from_raw(pid as i32)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
