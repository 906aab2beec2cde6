//! Options of a graceful server.

use std::time::Duration;

/// How a graceful server upgrades and shuts down.
///
/// ```
/// use std::time::Duration;
/// use octopus::Config;
///
/// let config = Config::new()
///     .kill_master(true)
///     .drain_timeout(Duration::from_secs(10))
///     .upgrade_timeout(Duration::from_secs(60));
/// assert_eq!(config.get_drain_timeout(), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) kill_master: bool,
    pub(crate) drain_timeout: Duration,
    pub(crate) upgrade_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) handle_signals: bool,
    pub(crate) pre_drain: Duration,
    pub(crate) pid_file: Option<std::path::PathBuf>,
    pub(crate) control_socket: Option<std::path::PathBuf>,
    pub(crate) control_mode: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kill_master: false,
            drain_timeout: Duration::from_secs(5),
            upgrade_timeout: Duration::from_secs(30),
            idle_grace: Duration::from_secs(1),
            handle_signals: true,
            pre_drain: Duration::ZERO,
            pid_file: None,
            control_socket: None,
            control_mode: 0o600,
        }
    }
}

impl Config {
    /// The defaults: keep the old process on SIGUSR1/SIGUSR2, drain for 5 s, wait 30 s for a new
    /// process, give idle keep-alive connections 1 s, handle signals.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether SIGUSR1 and SIGUSR2 also make the old process drain and exit once the new one is
    /// ready (SIGHUP always does). Octopus's `killMaster`. Default `false`.
    pub fn kill_master(mut self, kill_master: bool) -> Self {
        self.kill_master = kill_master;
        self
    }

    /// How long a drain waits for open connections before it cuts them. Default 5 s; zero closes
    /// them at once.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long a new process has to report ready before it is killed and the upgrade rolled back.
    /// Default 30 s.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// How long an HTTP/1 keep-alive connection that sends nothing after a drain begins is kept
    /// open before it is closed. A request that arrives meanwhile is answered with
    /// `Connection: close`, so a client is never cut while its next request is on the wire; so is
    /// one whose first bytes arrived before the grace ended (or it is cut at the drain deadline).
    /// Default 1 s (always bounded by the drain timeout).
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// Whether octopus installs its handlers for SIGHUP, SIGUSR1, SIGUSR2, SIGINT and SIGTERM.
    /// Switch off to drive upgrades and shutdowns from code through a [`Handle`](crate::Handle).
    /// Default `true`.
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// How long a graceful shutdown keeps accepting before it drains, while
    /// [`Handle::is_draining`](crate::Handle::is_draining) reports `true` so a readiness check
    /// fails and a load balancer (Kubernetes' endpoints controller) stops sending traffic first.
    /// Default zero: stop accepting at once. Upgrades do not wait for it.
    pub fn pre_drain(mut self, delay: Duration) -> Self {
        self.pre_drain = delay;
        self
    }

    /// A file naming the process that is ready and serving (for systemd's `PIDFile=` and
    /// scripts): written atomically by each generation once it serves, before the previous one
    /// hands over; removed at a shutdown by the process it names.
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// A Unix stream socket on which the serving generation answers commands (`status`,
    /// `upgrade`, `stop`; one JSON object per line, see the crate docs), for the `octopus`
    /// command and deploy scripts. It is handed over on upgrade like a listener: the same socket,
    /// never removed and re-created. A stale socket file is replaced; a live one is an error.
    pub fn control_socket(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.control_socket = Some(path.into());
        self
    }

    /// Permission bits of the control socket file when this process creates it. Default `0o600`:
    /// only the owner may connect (every connection is also checked to come from the server's own
    /// user or root).
    pub fn control_mode(mut self, mode: u32) -> Self {
        self.control_mode = mode;
        self
    }

    /// See [`Config::kill_master`].
    pub fn get_kill_master(&self) -> bool {
        self.kill_master
    }

    /// See [`Config::drain_timeout`].
    pub fn get_drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// See [`Config::upgrade_timeout`].
    pub fn get_upgrade_timeout(&self) -> Duration {
        self.upgrade_timeout
    }
}
