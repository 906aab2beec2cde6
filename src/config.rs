//! Options of the part that upgrades: signals, upgrades, the pre-drain, the pid file and the
//! control socket. How connections drain is set where they are served: on a
//! [`Server`](crate::Server) or on [`Connections`](crate::Connections).

use std::path::PathBuf;
use std::time::Duration;

/// Starts an [`Octopus`](crate::Octopus) with options: [`Octopus::builder`](crate::Octopus::builder).
///
/// ```
/// use std::time::Duration;
/// use octopus::Octopus;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), octopus::Error> {
/// let octopus = Octopus::builder()
///     .kill_master(true)
///     .upgrade_timeout(Duration::from_secs(60))
///     .handle_signals(false)
///     .build()?;
/// # drop(octopus); Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "an OctopusBuilder does nothing until `build` is called"]
pub struct OctopusBuilder {
    pub(crate) kill_master: bool,
    pub(crate) upgrade_timeout: Duration,
    pub(crate) handle_signals: bool,
    pub(crate) pre_drain: Duration,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) control_socket: Option<PathBuf>,
    pub(crate) control_mode: u32,
}

impl Default for OctopusBuilder {
    fn default() -> Self {
        OctopusBuilder {
            kill_master: false,
            upgrade_timeout: Duration::from_secs(30),
            handle_signals: true,
            pre_drain: Duration::ZERO,
            pid_file: None,
            control_socket: None,
            control_mode: 0o600,
        }
    }
}

impl OctopusBuilder {
    /// Whether SIGUSR1 and SIGUSR2 also make the old process drain and exit once the new one is
    /// ready (SIGHUP always does). Octopus's `killMaster`. Default `false`.
    pub fn kill_master(mut self, kill_master: bool) -> Self {
        self.kill_master = kill_master;
        self
    }

    /// How long a new process has to report ready before it is killed and the upgrade rolled back.
    /// Default 30 s.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
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
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// A Unix stream socket on which the serving generation answers commands (`status`,
    /// `upgrade`, `stop`; one JSON object per line, see the crate docs), for the `octopus`
    /// command and deploy scripts. It is handed over on upgrade like a listener: the same socket,
    /// never removed and re-created. A stale socket file is replaced; a live one is an error.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
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
}
