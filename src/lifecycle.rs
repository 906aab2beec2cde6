//! The life of one generation of a server: inherit or bind its listeners, report ready, serve
//! until asked to stop (by a signal or a [`Handle`]), and hand over to a successor.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::activation::{self, Activated};
use crate::config::OctopusBuilder;
use crate::control::{self, Facts, Gate, ListenerStats};
use crate::drain::{DEFAULT_DRAIN_TIMEOUT, DrainReport};
use crate::env::{Handover, LISTENERS_VAR, READY_FD_VAR, RELAY_FD_VAR};
use crate::error::{Error, UpgradeError, WithCauses};
use crate::fds;
use crate::key::ListenerKey;
use crate::listeners::Registry;
use crate::notify;
use crate::pidfile;
use crate::process::{ChildProcess, OsChild, OsSpawner, StartInfo};
use crate::readiness;
use crate::relay;
use crate::signals::{self, Action};
pub use crate::upgrade::AfterUpgrade;
use crate::upgrade::Upgrader;

/// Why a generation stops accepting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stop {
    /// A graceful shutdown (SIGINT, SIGTERM or [`Handle::shutdown`]): close the listeners, drain,
    /// exit.
    Shutdown,
    /// A successor is ready and serves on the same sockets: stop accepting, drain, exit.
    Upgraded {
        /// The successor's process id.
        pid: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Starting,
    Serving,
    /// A shutdown was asked for with a pre-drain delay: still accepting, but reporting draining.
    PreDraining,
    Stopping(Stop),
}

impl State {
    /// The name `status` reports on the control socket.
    pub(crate) fn name(self, upgrading: bool) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Serving if upgrading => "upgrading",
            State::Serving => "serving",
            State::PreDraining => "pre-draining",
            State::Stopping(_) => "draining",
        }
    }
}

/// What [`Octopus::report_ready`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reported {
    /// Ready was reported: this generation serves, and may accept.
    Serving,
    /// A shutdown began first, so nothing was reported. If `parent_serves`, the previous process
    /// rolls back and keeps serving the shared sockets: this one must not accept from them.
    Declined { parent_serves: bool },
}

/// What an upgrade does once its new process reported ready; decided under the state lock, so a
/// shutdown either came first (and the new process is stopped) or comes after (and only this
/// process stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    HandOver,
    KeepBeside,
    ShutdownFirst,
}

struct Parent {
    pid: u32,
    ready_pipe: OwnedFd,
    /// Where the parent's idle connections come from, if it made a relay channel.
    inbox: Option<relay::Inbox>,
}

/// Whether an [`Octopus`] made by [`Octopus::new`] is alive in this process.
static INSTANCE: AtomicBool = AtomicBool::new(false);

pub(crate) struct Inner {
    registry: Registry,
    facts: Facts,
    /// When the upgrade that started this process began, according to the parent.
    upgrade_started: Mutex<Option<std::time::SystemTime>>,
    pid_file: Option<std::path::PathBuf>,
    upgrader: Upgrader<OsSpawner>,
    parent: Mutex<Option<Parent>>,
    state: watch::Sender<State>,
    cancel_upgrade: CancellationToken,
    /// The channel to the successor this process handed over to, if it takes connections.
    relay: Mutex<Option<Arc<relay::Relay>>>,
    pre_drain: std::time::Duration,
    /// Holds the process's one instance slot, freed when this is dropped.
    owns_instance: bool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.owns_instance {
            INSTANCE.store(false, Ordering::Release);
        }
    }
}

/// One generation of a gracefully upgradable server: its listeners, upgrades, signals and
/// shutdown, for any protocol. Options that govern upgrades and signals are set on
/// [`Octopus::builder`]; how connections drain is set where they are served.
///
/// Serve HTTP through it with [`Octopus::server`], any other protocol with
/// [`Octopus::connections`]:
///
/// ```no_run
/// use std::time::Duration;
/// use octopus::Octopus;
///
/// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
/// // Installs the signal handlers and adopts the listeners of the previous process, if any.
/// let octopus = Octopus::builder().pid_file("/run/app/app.pid").build()?;
/// let handle = octopus.handle(); // for a readiness route: handle.is_draining()
/// # let app = axum::Router::new();
/// octopus
///     .server()
///     .bind("127.0.0.1:8080")
///     .drain_timeout(Duration::from_secs(10))
///     .serve(app)
///     .await?;
/// # Ok(()) }
/// ```
///
/// The steps those take ([`Octopus::ready`], [`Octopus::stopped`], [`Octopus::resumed`],
/// [`Octopus::close_listeners`], [`Octopus::settle`]) are public too, for a server that does not
/// accept connections (a datagram socket, say).
#[derive(Clone)]
pub struct Octopus {
    inner: Arc<Inner>,
}

/// Drives upgrades and shutdowns from code, as the signals do.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

/// A [`Handle`] that does not keep its generation alive, for the signal task that outlives it.
pub(crate) struct WeakHandle(Weak<Inner>);

impl WeakHandle {
    pub fn upgrade(&self) -> Option<Handle> {
        self.0.upgrade().map(|inner| Handle { inner })
    }
}

impl OctopusBuilder {
    /// Starts the generation: see [`Octopus::new`], which is `Octopus::builder().build()`.
    pub fn build(self) -> Result<Octopus, Error> {
        Octopus::start(self)
    }
}

impl Octopus {
    /// Starts a generation: adopts the listeners handed over by the previous process (if this one
    /// was started by an upgrade) and, unless switched off, installs the signal handlers.
    ///
    /// Must run inside a Tokio runtime. Fails, before anything is served, if the hand-over
    /// environment is malformed or names fds that are not what it says; the previous process then
    /// sees this one exit and keeps serving.
    ///
    /// One `Octopus` per process: it owns the signals and the hand-over, so a second one while the
    /// first is alive fails with [`Error::SecondInstance`]. Serve every listener through the same
    /// one (clone it, or serve through [`Octopus::server`]).
    ///
    /// The defaults: signals handled, SIGUSR1/SIGUSR2 keep the old process, 30 s for a new
    /// process to be ready, no pre-drain, no pid file, no control socket. [`Octopus::builder`]
    /// sets them.
    pub fn new() -> Result<Self, Error> {
        Self::start(OctopusBuilder::default())
    }

    /// Options for a generation, then [`OctopusBuilder::build`].
    pub fn builder() -> OctopusBuilder {
        OctopusBuilder::default()
    }

    fn start(config: OctopusBuilder) -> Result<Self, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        if INSTANCE
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::SecondInstance);
        }
        // From here on the slot is freed by `Inner`'s drop, or by this guard on an early error.
        let slot = InstanceSlot;
        let handlers = if config.handle_signals {
            Some(signals::Handlers::install(config.kill_master)?)
        } else {
            None
        };
        let handover = Handover::inherited()?;
        let (inherited, parent, activated) = match handover {
            None => (Vec::new(), None, activation::take()?),
            Some(handover) => {
                if handlers.is_none() {
                    signals::restore_default_upgrade_signals();
                }
                let inherited = adopt(handover)?;
                (inherited.listeners, Some(inherited.parent), Vec::new())
            }
        };
        // Sets this process's generation, which `assemble` gives to the control socket's facts.
        crate::env::inherit_generation(parent.is_some());
        let upgrade_started = crate::env::inherited_upgrade_started(parent.is_some());
        let start = StartInfo::capture()?;
        let octopus = Self::assemble(&config, inherited, activated, parent, start, true);
        std::mem::forget(slot);
        *lock(&octopus.inner.upgrade_started) = upgrade_started;
        if let Some(path) = &config.control_socket {
            let (listener, _unreachable) = octopus
                .inner
                .registry
                .unix(path, Some(config.control_mode))?;
            control::serve(listener, &octopus.handle())?;
        }
        if let Some(handlers) = handlers {
            serve_signals(handlers, octopus.handle().downgrade());
        }
        Ok(octopus)
    }

    fn assemble(
        config: &OctopusBuilder,
        inherited: Vec<(ListenerKey, OwnedFd)>,
        activated: Vec<Activated>,
        parent: Option<Parent>,
        start: StartInfo,
        owns_instance: bool,
    ) -> Self {
        let upgrader = Upgrader::new(
            OsSpawner::reserving(),
            start,
            config.upgrade_timeout,
            DEFAULT_DRAIN_TIMEOUT,
        );
        let parent_pid = parent.as_ref().map(|p| p.pid);
        let control_key = config
            .control_socket
            .as_ref()
            .map(|path| ListenerKey::unix(path.to_string_lossy()));
        let inner = Arc::new(Inner {
            registry: Registry::new(inherited, activated),
            facts: Facts::new(crate::env::generation(), parent_pid, control_key),
            upgrade_started: Mutex::new(None),
            pid_file: config.pid_file.clone(),
            upgrader,
            parent: Mutex::new(parent),
            state: watch::Sender::new(State::Starting),
            cancel_upgrade: CancellationToken::new(),
            relay: Mutex::new(None),
            pre_drain: config.pre_drain,
            owns_instance,
        });
        Octopus { inner }
    }

    /// The TCP listener on `address` (`HOST:PORT`; port 0 picks a free port once and keeps it
    /// across upgrades): the one the previous process had, or a new one. Non-blocking and
    /// close-on-exec; turn it into a Tokio listener with `tokio::net::TcpListener::from_std`.
    pub fn listen_tcp(&self, address: &str) -> Result<TcpListener, Error> {
        self.inner.registry.tcp(ListenerKey::tcp(address), address)
    }

    /// The Unix domain stream socket at `path`: the one the previous process had, or a new one
    /// with permission bits `mode` (a stale socket file from a crashed run is replaced). The path
    /// is never removed by octopus, so a process that hands it over leaves it in place.
    ///
    /// If the path was removed while the previous process served, the inherited socket is
    /// unreachable: a warning names the path, and a new socket is bound there and returned (and
    /// handed over from then on). The inherited one is closed; [`Server`](crate::Server) instead
    /// keeps accepting on it too, so connections queued on it before the path went are served.
    pub fn listen_unix(&self, path: &Path, mode: Option<u32>) -> Result<UnixListener, Error> {
        Ok(self.listen_unix_keeping_unreachable(path, mode)?.0)
    }

    /// Like [`Octopus::listen_unix`], and also the inherited socket that was replaced because its
    /// path was gone, if any: not handed over, only worth accepting what was queued on it.
    pub(crate) fn listen_unix_keeping_unreachable(
        &self,
        path: &Path,
        mode: Option<u32>,
    ) -> Result<(UnixListener, Option<UnixListener>), Error> {
        self.inner.registry.unix(path, mode)
    }

    /// The UDP socket bound to `address` (`HOST:PORT`, IPv4 or IPv6; port 0 picks a free port
    /// once and keeps it across upgrades): the one the previous process had, or a new one.
    /// Non-blocking and close-on-exec; turn it into a Tokio socket with
    /// `tokio::net::UdpSocket::from_std`. A socket systemd passed (`ListenDatagram=`) is taken
    /// when its name or its address is the one asked for.
    ///
    /// The old and the new process share the socket and its receive queue, so no datagram is
    /// refused during an upgrade. Once [`Octopus::stopped`] says [`Stop::Upgraded`], stop
    /// receiving (the new process receives from then on) and finish the replies in flight; after
    /// [`Stop::Shutdown`], [`Octopus::close_listeners`] and drop the socket.
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let octopus = octopus::Octopus::builder().handle_signals(false).build()?;
    /// let socket = tokio::net::UdpSocket::from_std(octopus.listen_udp("127.0.0.1:0")?)?;
    /// octopus.ready()?;
    /// let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    /// client.send_to(b"ping", socket.local_addr()?).await?;
    /// let mut datagram = [0; 512];
    /// let (len, from) = socket.recv_from(&mut datagram).await?;
    /// socket.send_to(&datagram[..len], from).await?;
    /// assert_eq!(client.recv(&mut datagram).await?, 4);
    /// # Ok(()) }
    /// ```
    pub fn listen_udp(&self, address: &str) -> Result<UdpSocket, Error> {
        self.inner.registry.udp(ListenerKey::udp(address), address)
    }

    /// Like [`Octopus::listen_tcp`], but identified by `name` only, so a new version of the
    /// program may move the listener to another address and still receive the old socket.
    pub fn listen_tcp_named(&self, name: &str, address: &str) -> Result<TcpListener, Error> {
        self.inner.registry.tcp(ListenerKey::named(name), address)
    }

    /// Reports that this generation is ready to serve on all its listeners. Call it once they
    /// are all asked for and before the first `accept`: a process started by an upgrade shares the
    /// sockets with the previous one, which keeps serving until this report, so nothing waits
    /// meanwhile, and whatever can fail here fails before this process has taken a connection.
    ///
    /// Inherited listeners the program did not ask for are closed. The pid file, if any, is
    /// written. If this process was started by an upgrade, the previous process learns it is
    /// ready and (depending on the signal) drains. If a shutdown was asked for during start-up,
    /// nothing is reported, so the previous process rolls back and keeps serving: then do not
    /// accept ([`Handle::is_stopping`] is `true`).
    pub fn ready(&self) -> Result<(), Error> {
        self.report_ready().map(|_| ())
    }

    pub(crate) fn report_ready(&self) -> Result<Reported, Error> {
        let inner = &self.inner;
        inner.registry.close_unused_inherited();
        let mut parent = lock(&inner.parent).take();
        let declined = Reported::Declined {
            parent_serves: parent.is_some(),
        };
        if *inner.state.borrow() != State::Starting {
            return Ok(declined);
        }
        let me = std::process::id();
        if let Some(path) = &inner.pid_file {
            pidfile::write(path, me).map_err(|source| Error::PidFile {
                path: path.clone(),
                source,
            })?;
        }
        let forget_pid_file = || {
            if let Some(path) = &inner.pid_file {
                pidfile::remove_if_names(path, me);
            }
        };
        if let Some(parent) = &mut parent {
            // Before "ready", which is when the parent reads it.
            if let Some(inbox) = parent.inbox.take() {
                inbox.open();
            }
            if let Err(e) = readiness::wait_writable(&parent.ready_pipe) {
                forget_pid_file();
                return Err(Error::Ready(e));
            }
        }
        // The report and the state change happen under the state lock, so a shutdown either
        // comes first (nothing is reported: the previous process rolls back) or after (this
        // process serves, then stops like any serving process).
        let mut report = Ok(());
        let reported = inner.state.send_if_modified(|state| {
            if *state != State::Starting {
                return false;
            }
            if let Some(parent) = &parent {
                report = readiness::notify_ready(&parent.ready_pipe);
                if matches!(&report, Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe) {
                    return false;
                }
            }
            *state = State::Serving;
            true
        });
        if !reported {
            forget_pid_file();
            return match report {
                Err(e) => Err(Error::Ready(e)),
                Ok(()) => {
                    tracing::info!(
                        pid = me,
                        "a shutdown began before this process was ready; not reporting ready"
                    );
                    Ok(declined)
                }
            };
        }
        match (&parent, report) {
            (None, _) => notify::serving(),
            (Some(parent), Ok(())) => {
                inner
                    .facts
                    .record_started_by_upgrade(*lock(&inner.upgrade_started));
                tracing::info!(parent = parent.pid, "reported ready to the old process")
            }
            (Some(parent), Err(_)) => {
                tracing::warn!(
                    parent = parent.pid,
                    "the old process is gone; serving alone"
                );
                notify::serving();
            }
        }
        tracing::info!(pid = me, "server started");
        Ok(Reported::Serving)
    }

    /// Resolves when this generation should stop accepting, and says why.
    pub async fn stopped(&self) -> Stop {
        let mut state = self.inner.state.subscribe();
        let stopping = state
            .wait_for(|s| matches!(s, State::Stopping(_)))
            .await
            .map(|s| *s);
        match stopping {
            Ok(State::Stopping(stop)) => stop,
            // The sender lives in `self.inner`, so the channel cannot close while we wait.
            _ => Stop::Shutdown,
        }
    }

    /// After [`Stop::Upgraded`], resolves if the new process dies (exits non-zero or of a signal)
    /// while this one is still alive:
    /// this process then serves again, on the listeners it kept, and may be stopped again.
    pub async fn resumed(&self) {
        let mut state = self.inner.state.subscribe();
        let _ = state.wait_for(|s| *s == State::Serving).await;
    }

    /// Waits until no upgrade is in flight. After a shutdown cancelled one, this returns once its
    /// new process has been stopped and reaped; call it before exiting.
    pub async fn settle(&self) {
        self.inner.upgrader.settled().await;
        self.inner.facts.settle_clients().await;
        if let Some(path) = &self.inner.pid_file {
            pidfile::release(path, std::process::id());
        }
    }

    /// Closes this process's copies of its listeners. Call it on [`Stop::Shutdown`] once the
    /// accept loops have stopped, so new connections are refused rather than queued. After an
    /// upgrade, leave them open: the successor serves them.
    pub fn close_listeners(&self) {
        self.inner.registry.close_all();
    }

    /// How long a successor this process stops gets before it is killed: the drain timeout of
    /// the server that serves through this generation.
    pub(crate) fn set_drain_timeout(&self, timeout: std::time::Duration) {
        self.inner.upgrader.set_drain_timeout(timeout);
    }

    /// Counts the connections of the listener at `address` for the control socket's `status`.
    /// The connections the process this one replaces will relay for the listener `key`, if it
    /// made a relay channel; asked for before [`Octopus::report_ready`], which offers them.
    pub(crate) fn relayed(&self, key: &ListenerKey) -> Option<relay::Route> {
        let mut parent = lock(&self.inner.parent);
        let inbox = parent.as_mut()?.inbox.as_mut()?;
        Some(inbox.route(key.to_string()))
    }

    /// The successor this process handed over to, if it takes connections.
    pub(crate) fn relay(&self) -> Option<Arc<relay::Relay>> {
        lock(&self.inner.relay).clone()
    }

    /// Lets go of the relay once the drain is over, so that the successor learns that no more
    /// connections come even if this process lives on.
    pub(crate) fn forget_relay(&self) {
        lock(&self.inner.relay).take();
    }

    pub(crate) fn track_listener(&self, address: String) -> Arc<ListenerStats> {
        self.inner.facts.track_listener(address)
    }

    /// A drain began, to end at `deadline`, or (`None`) the process serves again.
    pub(crate) fn note_drain(&self, deadline: Option<std::time::SystemTime>) {
        self.inner.facts.note_drain(deadline);
    }

    /// The drain is over: `stop` commands waiting for it are answered.
    pub(crate) fn publish_drain(&self, report: DrainReport) {
        self.inner.facts.publish_drain(report);
    }

    /// A handle to drive upgrades and shutdowns from code.
    pub fn handle(&self) -> Handle {
        Handle {
            inner: self.inner.clone(),
        }
    }
}

/// Frees the instance slot if [`Octopus::new`] fails after taking it.
struct InstanceSlot;

impl Drop for InstanceSlot {
    fn drop(&mut self) {
        INSTANCE.store(false, Ordering::Release);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handle {
    /// Starts a new process from the path this one was started from, with the same arguments,
    /// working directory and environment, hands it the listeners and waits until it reports ready.
    /// Returns its pid. What this process does then depends on `after`.
    ///
    /// On any failure the new process is stopped if needed and reaped, the reason is logged and
    /// returned, and this process keeps serving as before. If a shutdown of this process began
    /// before the new process's report was acted on, the new process is stopped too (SIGTERM, so
    /// it drains what it accepted) and [`UpgradeError::Cancelled`] is returned: a shutdown never
    /// leaves a successor serving unannounced.
    ///
    /// The result says all a program needs to act on, with or without a log subscriber: the new
    /// pid, or the error's message, its stable [`reason`](UpgradeError::reason) and the pid of
    /// the new process that was stopped, if one was started ([`UpgradeError::new_pid`]).
    ///
    /// ```no_run
    /// use octopus::{AfterUpgrade, Handle};
    ///
    /// # async fn deploy(handle: Handle) {
    /// match handle.upgrade(AfterUpgrade::Exit).await {
    ///     Ok(pid) => println!("process {pid} serves; this one drains"),
    ///     Err(e) => eprintln!("upgrade {} ({e}); still serving", e.reason()),
    /// }
    /// # }
    /// ```
    pub async fn upgrade(&self, after: AfterUpgrade) -> Result<u32, UpgradeError> {
        self.upgrade_with(after, None).await
    }

    /// [`Handle::upgrade`], giving the new process `timeout` (instead of the configured upgrade
    /// timeout) to report ready.
    pub(crate) async fn upgrade_with(
        &self,
        after: AfterUpgrade,
        timeout: Option<std::time::Duration>,
    ) -> Result<u32, UpgradeError> {
        let started = std::time::Instant::now();
        let result = self.try_upgrade(after, timeout).await;
        self.inner.facts.record_upgrade(&result, started.elapsed());
        if let Err(e) = &result {
            match e {
                UpgradeError::InProgress | UpgradeError::Stopping | UpgradeError::NotReady => {
                    tracing::warn!("upgrade refused: {e}")
                }
                UpgradeError::Cancelled { .. } => tracing::warn!("{e}"),
                _ => {
                    let e = WithCauses(e);
                    tracing::error!("upgrade failed; the old process keeps serving: {e}");
                    notify::upgrade_ended(&format!("serving; upgrade failed: {e}"));
                }
            }
        }
        result
    }

    async fn try_upgrade(
        &self,
        after: AfterUpgrade,
        timeout: Option<std::time::Duration>,
    ) -> Result<u32, UpgradeError> {
        let inner = &self.inner;
        match *inner.state.borrow() {
            State::Starting => return Err(UpgradeError::NotReady),
            State::PreDraining | State::Stopping(_) => return Err(UpgradeError::Stopping),
            State::Serving => {}
        }
        let permit = inner.upgrader.begin()?;
        notify::reloading();
        let ran = inner
            .upgrader
            .run(&permit, &inner.registry, &inner.cancel_upgrade, timeout)
            .await;
        let mut successor = match ran {
            Ok(successor) => successor,
            Err(e) => {
                if let Some(pid) = e.new_pid() {
                    self.reclaim_pid_file(pid);
                }
                return Err(e);
            }
        };
        let pid = successor.pid();
        let me = std::process::id();
        // Read before the drain can start, which takes it.
        let relay = match after {
            AfterUpgrade::Exit => successor.take_relay().and_then(relay::Relay::from_offer),
            AfterUpgrade::KeepServing => None,
        };
        let mut decision = Decision::ShutdownFirst;
        inner.state.send_if_modified(|state| {
            if *state != State::Serving {
                return false;
            }
            match after {
                AfterUpgrade::Exit => {
                    decision = Decision::HandOver;
                    *lock(&inner.relay) = relay.clone();
                    *state = State::Stopping(Stop::Upgraded { pid });
                    true
                }
                AfterUpgrade::KeepServing => {
                    decision = Decision::KeepBeside;
                    false
                }
            }
        });
        match decision {
            Decision::HandOver => {
                tracing::info!(
                    pid = me,
                    new_pid = pid,
                    "old process draining; new process {pid} serves"
                );
                notify::handed_over(pid);
                tokio::spawn(watch_successor(inner.clone(), successor.hand_over()));
            }
            Decision::KeepBeside => {
                notify::upgrade_ended(&format!("serving beside new process {pid}"));
                if let Some(path) = &inner.pid_file {
                    if let Err(e) = pidfile::write_old(path, me) {
                        tracing::warn!(path = %path.display(), "cannot write the old generation's pid file: {e}");
                    }
                }
                tracing::info!(
                    pid = me,
                    new_pid = pid,
                    "old process kept alive beside new process {pid}"
                );
                let mut child = successor.hand_over();
                let beside = inner.facts.beside(pid);
                tokio::spawn(async move {
                    let exited = child.wait().await;
                    drop(beside);
                    match exited {
                        Ok(status) => {
                            tracing::info!(pid, %status, "process {pid} exited ({status})")
                        }
                        Err(e) => tracing::warn!(pid, error = %e, "cannot reap process {pid}"),
                    }
                });
            }
            Decision::ShutdownFirst => {
                tracing::warn!(
                    pid = me,
                    new_pid = pid,
                    "new process {pid} reported ready after this process began shutting down; stopping it"
                );
                successor.stop().await;
                self.reclaim_pid_file(pid);
                return Err(UpgradeError::Cancelled { pid });
            }
        }
        drop(permit);
        Ok(pid)
    }

    /// After a failed upgrade the pid file may name the failed process `failed`, or be gone: it
    /// names this one again. A file naming another live generation (one kept serving beside this
    /// one by SIGUSR1) is left to it.
    fn reclaim_pid_file(&self, failed: u32) {
        if let Some(path) = &self.inner.pid_file {
            let me = std::process::id();
            let named = pidfile::read_pid(path);
            if named.is_some_and(|pid| pid != failed && pid != me && pidfile::is_alive(pid)) {
                return;
            }
            if let Err(e) = pidfile::write(path, std::process::id()) {
                tracing::warn!(path = %path.display(), "cannot write the pid file: {e}");
            }
        }
    }

    /// Starts a graceful shutdown: [`Octopus::stopped`] resolves with [`Stop::Shutdown`], and an
    /// upgrade in flight is cancelled (its new process stopped and reaped). With a
    /// [`OctopusBuilder::pre_drain`] delay, the process first keeps accepting for that long while
    /// [`Handle::is_draining`] reports `true`. Asking again while stopping changes nothing: the
    /// drain already under way is not cut short.
    pub fn shutdown(&self) {
        let pre_drain = self.inner.pre_drain;
        let mut before = State::Starting;
        let mut delayed = false;
        let first = self.inner.state.send_if_modified(|state| {
            before = *state;
            match state {
                State::PreDraining | State::Stopping(_) => false,
                State::Serving if !pre_drain.is_zero() => {
                    *state = State::PreDraining;
                    delayed = true;
                    true
                }
                State::Starting | State::Serving => {
                    *state = State::Stopping(Stop::Shutdown);
                    true
                }
            }
        });
        let me = std::process::id();
        match before {
            State::Stopping(Stop::Upgraded { pid }) => tracing::info!(
                pid = me,
                new_pid = pid,
                "shutdown asked after the hand-over to process {pid}, which serves; this process goes on draining"
            ),
            State::PreDraining | State::Stopping(Stop::Shutdown) => {
                tracing::info!("already stopping; the drain under way goes on")
            }
            State::Serving if delayed => tracing::info!(
                pid = me,
                "graceful shutdown started; still accepting for the pre-drain of {pre_drain:?} while reporting draining"
            ),
            State::Starting | State::Serving => {
                tracing::info!(pid = me, "graceful shutdown started")
            }
        }
        if !first {
            return;
        }
        notify::stopping();
        self.inner.cancel_upgrade.cancel();
        if delayed {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(pre_drain).await;
                tracing::info!("pre-drain over; stopping accepting");
                inner.state.send_replace(State::Stopping(Stop::Shutdown));
            });
        }
    }

    /// Whether this generation has stopped accepting (shutting down or handed over).
    pub fn is_stopping(&self) -> bool {
        matches!(*self.inner.state.borrow(), State::Stopping(_))
    }

    /// Whether this generation is on its way out: in its pre-drain delay, draining, or handed
    /// over. A readiness check (Kubernetes' `readinessProbe`) should fail while this is `true`.
    pub fn is_draining(&self) -> bool {
        matches!(
            *self.inner.state.borrow(),
            State::PreDraining | State::Stopping(_)
        )
    }

    pub(crate) fn downgrade(&self) -> WeakHandle {
        WeakHandle(Arc::downgrade(&self.inner))
    }

    pub(crate) fn facts(&self) -> &Facts {
        &self.inner.facts
    }

    /// The state's name for `status`.
    pub(crate) fn state_name(&self) -> &'static str {
        self.inner
            .state
            .borrow()
            .name(self.inner.upgrader.in_flight())
    }

    /// The listeners in use, each key with its actual address.
    pub(crate) fn listeners(&self) -> Vec<(ListenerKey, String)> {
        self.inner.registry.describe_active()
    }

    /// Opens while this generation is the one that serves new connections alone (serving, and
    /// no successor kept beside it).
    pub(crate) fn control_gate(&self) -> Gate {
        Gate::new(
            self.inner.state.subscribe(),
            self.inner.facts.beside_watch(),
        )
    }
}

/// Acts on the signals' actions, from a task, as long as the generation behind `weak` lives.
fn serve_signals(mut handlers: signals::Handlers, weak: WeakHandle) {
    tokio::spawn(async move {
        loop {
            let (name, action) = handlers.next().await;
            // The generation is gone (its server returned): nothing left to act on.
            let Some(handle) = weak.upgrade() else {
                break;
            };
            // Each signal is acted on in a task of its own: if the application's logging panics
            // (a subscriber writing to a closed stderr), that task dies, not the signal handling.
            tokio::spawn(async move {
                tracing::info!(pid = std::process::id(), "signal received: {name}");
                match action {
                    Action::Upgrade { after } => {
                        let _ = handle.upgrade(after).await;
                    }
                    Action::Shutdown => handle.shutdown(),
                }
            });
        }
    });
}

/// Reaps a successor this process handed over to; if it dies (exits non-zero or of a signal) while
/// this process still runs (is draining), this process resumes serving on the listeners it kept.
async fn watch_successor(inner: Arc<Inner>, mut child: OsChild) {
    let pid = child.pid();
    let (failed, status) = match child.wait().await {
        Ok(status) => (!status.success(), status.to_string()),
        Err(e) => (false, format!("cannot be watched: {e}")),
    };
    // Connections not relayed yet are told to close instead: none is sent into a channel
    // nobody reads, or closed after a keep-alive reply.
    if let Some(relay) = lock(&inner.relay).take() {
        relay.close();
    }
    // A successor that exits 0 shut down or handed over in turn on purpose: nothing to take back.
    let resumed = failed
        && inner.state.send_if_modified(|state| {
            let handed_over = *state == State::Stopping(Stop::Upgraded { pid });
            if handed_over {
                *state = State::Serving;
            }
            handed_over
        });
    if resumed {
        tracing::error!(
            pid = std::process::id(),
            new_pid = pid,
            "new process {pid} died after it was ready ({status}); resuming accepting"
        );
        notify::serving();
        if let Some(path) = &inner.pid_file {
            if let Err(e) = pidfile::write(path, std::process::id()) {
                tracing::warn!(path = %path.display(), "cannot write the pid file: {e}");
            }
        }
    } else {
        tracing::info!(pid, "process {pid} exited ({status})");
    }
}

/// What a process started by an upgrade received from its parent.
struct Inherited {
    listeners: Vec<(ListenerKey, OwnedFd)>,
    parent: Parent,
}

fn adopt(handover: Handover) -> Result<Inherited, Error> {
    let mut listeners = Vec::with_capacity(handover.listeners.len());
    for (fd, key) in &handover.listeners {
        // SAFETY: the fds were passed by the parent across exec, and `Handover::inherited` hands
        // them out once per process; its parser rejects an fd named twice.
        let fd = unsafe { fds::adopt_listener(LISTENERS_VAR, *fd, key) }?;
        listeners.push((key.clone(), fd));
    }
    // SAFETY: as above; the parser rejects a ready fd that is also a listener's.
    let ready_pipe = unsafe { fds::adopt_ready_pipe(READY_FD_VAR, handover.ready_fd) }?;
    let inbox = match handover.relay_fd {
        // SAFETY: as above; the parser rejects a relay fd that is also another fd it names.
        Some(fd) => Some(unsafe { fds::adopt_relay_channel(RELAY_FD_VAR, fd) }?),
        None => None,
    }
    .map(relay::Inbox::new);
    let actual_parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
    if actual_parent != Some(handover.parent_pid) {
        tracing::warn!(
            expected = handover.parent_pid,
            actual = ?actual_parent,
            "the process that started this upgrade is gone; this one will serve alone"
        );
    }
    tracing::info!(
        parent = handover.parent_pid,
        listeners = listeners.len(),
        "started by an upgrade"
    );
    Ok(Inherited {
        listeners,
        parent: Parent {
            pid: handover.parent_pid,
            ready_pipe,
            inbox,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::path::Path;
    use std::time::{Duration, Instant};

    fn start_info(program: &str, args: &[&str]) -> StartInfo {
        StartInfo {
            program: program.into(),
            argv0: program.into(),
            args: args.iter().map(Into::into).collect(),
            cwd: "/".into(),
        }
    }

    /// A generation as if started by an upgrade, and the read end of its readiness pipe.
    fn started_by_upgrade_with(config: &OctopusBuilder) -> (Octopus, OwnedFd) {
        let (read, write) = readiness::pipe().unwrap();
        let parent = Parent {
            pid: 1,
            ready_pipe: write,
            inbox: None,
        };
        let start = start_info("/bin/false", &[]);
        let octopus = Octopus::assemble(config, Vec::new(), Vec::new(), Some(parent), start, false);
        (octopus, read)
    }

    fn started_by_upgrade() -> (Octopus, OwnedFd) {
        started_by_upgrade_with(&Octopus::builder())
    }

    fn reported_ready(read: &OwnedFd) -> bool {
        let mut byte = [0u8; 1];
        matches!(rustix::io::read(read.as_fd(), &mut byte), Ok(1))
    }

    /// Polls `condition` (bounded) without yielding to the runtime.
    fn block_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "{what}: not true within 10s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `hook` on the event whose message is `message`, in the thread that logs it: a place
    /// in the real code path where a test can act at a precise moment.
    struct OnEvent<F> {
        message: &'static str,
        hook: F,
    }

    impl<S: tracing::Subscriber, F: Fn() + 'static> tracing_subscriber::Layer<S> for OnEvent<F> {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Message(String);
            impl tracing::field::Visit for Message {
                fn record_debug(
                    &mut self,
                    field: &tracing::field::Field,
                    value: &dyn std::fmt::Debug,
                ) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            if message.0 == self.message {
                (self.hook)();
            }
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_shutdown_that_comes_between_ready_and_hand_over_stops_the_successor() {
        use tracing_subscriber::layer::SubscriberExt;
        // The successor reports ready, then would serve for a minute.
        let script = "printf R > /dev/fd/$OCTOPUS_READY_FD && exec sleep 60";
        let start = start_info("/bin/sh", &["-c", script]);
        let octopus = Octopus::assemble(
            &Octopus::builder(),
            Vec::new(),
            Vec::new(),
            None,
            start,
            false,
        );
        octopus.ready().unwrap();
        let handle = octopus.handle();
        // The shutdown arrives exactly after the ready report was read, before it is acted on.
        let hook_handle = handle.clone();
        let subscriber = tracing_subscriber::registry().with(OnEvent {
            message: "new process ready",
            hook: move || hook_handle.shutdown(),
        });
        let _guard = tracing::subscriber::set_default(subscriber);
        let result = handle.upgrade(AfterUpgrade::Exit).await;
        let pid = match result {
            Err(UpgradeError::Cancelled { pid }) => pid,
            other => panic!("the shutdown came first, so no hand-over: {other:?}"),
        };
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the successor was stopped and reaped"
        );
        assert_eq!(octopus.stopped().await, Stop::Shutdown);
        tokio::time::timeout(Duration::from_secs(1), octopus.settle())
            .await
            .expect("no upgrade left in flight");
    }

    #[test]
    fn a_shutdown_during_the_pid_file_write_means_ready_is_never_reported() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        // The pid file is staged beside its path: a FIFO there holds the write until read.
        let staged = dir
            .path()
            .join(format!(".app.pid.{}.tmp", std::process::id()));
        rustix::fs::mkfifoat(rustix::fs::CWD, &staged, rustix::fs::Mode::from(0o600)).unwrap();
        let (octopus, read) = started_by_upgrade_with(&Octopus::builder().pid_file(&pid_file));
        let handle = octopus.handle();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let reporting = std::thread::spawn(move || {
            // `/proc/thread-self` links to `PID/task/TID`.
            tid_tx
                .send(std::fs::read_link("/proc/thread-self").unwrap())
                .unwrap();
            octopus.report_ready().unwrap()
        });
        let tid = tid_rx.recv().unwrap();
        block_until("ready() waits on the pid file", || {
            std::fs::read_to_string(Path::new("/proc").join(&tid).join("wchan"))
                .is_ok_and(|wchan| wchan.contains("wait_for_partner"))
        });
        handle.shutdown();
        let mut staged_write = std::fs::File::open(&staged).unwrap();
        std::io::Read::read_to_end(&mut staged_write, &mut Vec::new()).unwrap();
        assert_eq!(
            reporting.join().unwrap(),
            Reported::Declined {
                parent_serves: true
            }
        );
        assert!(!reported_ready(&read), "the old process must roll back");
        assert_ne!(
            pidfile::read_pid(&pid_file),
            Some(std::process::id()),
            "the pid file names no process that stopped before ready"
        );
    }

    #[tokio::test]
    async fn a_second_octopus_in_one_process_is_refused_until_the_first_is_gone() {
        let config = Octopus::builder().handle_signals(false);
        let first = config.clone().build().unwrap();
        let err = config
            .clone()
            .build()
            .err()
            .expect("a second one is refused");
        assert!(matches!(err, Error::SecondInstance), "{err}");
        assert!(err.to_string().contains("one per process"), "{err}");
        drop(first);
        drop(
            config
                .build()
                .expect("the slot is free once the first is dropped"),
        );
    }

    #[tokio::test]
    async fn an_upgrade_before_ready_is_refused() {
        let (octopus, _read) = started_by_upgrade();
        let err = octopus
            .handle()
            .upgrade(AfterUpgrade::Exit)
            .await
            .unwrap_err();
        assert!(matches!(err, UpgradeError::NotReady), "{err}");
    }

    #[tokio::test]
    async fn a_shutdown_before_ready_is_never_reported_as_ready() {
        let (octopus, read) = started_by_upgrade();
        octopus.handle().shutdown();
        octopus.ready().unwrap();
        assert_eq!(octopus.stopped().await, Stop::Shutdown);
        assert!(
            !reported_ready(&read),
            "the parent must roll back, not hand over"
        );
    }

    #[tokio::test]
    async fn ready_is_reported_once() {
        let (octopus, read) = started_by_upgrade();
        octopus.ready().unwrap();
        octopus.ready().unwrap();
        assert!(reported_ready(&read));
        assert!(!reported_ready(&read), "one byte, then end of file");
    }

    #[tokio::test]
    async fn pre_drain_keeps_accepting_while_reporting_draining() {
        let config = Octopus::builder().pre_drain(std::time::Duration::from_millis(200));
        let (octopus, _read) = started_by_upgrade_with(&config);
        octopus.ready().unwrap();
        let handle = octopus.handle();
        assert!(!handle.is_draining());
        let asked = tokio::time::Instant::now();
        handle.shutdown();
        assert!(handle.is_draining() && !handle.is_stopping());
        assert_eq!(octopus.stopped().await, Stop::Shutdown);
        assert!(asked.elapsed() >= std::time::Duration::from_millis(200));
        assert!(handle.is_stopping());
    }

    #[tokio::test]
    async fn a_second_shutdown_changes_nothing() {
        let (octopus, _read) = started_by_upgrade();
        octopus.ready().unwrap();
        octopus.handle().shutdown();
        octopus.handle().shutdown();
        assert_eq!(octopus.stopped().await, Stop::Shutdown);
        let err = octopus
            .handle()
            .upgrade(AfterUpgrade::KeepServing)
            .await
            .unwrap_err();
        assert!(matches!(err, UpgradeError::Stopping), "{err}");
    }
}
