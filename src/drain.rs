//! Draining: let open connections finish, up to a deadline, then cut what is left.
//!
//! Protocol-agnostic: each connection runs as a task spawned through [`Drain::spawn`], which hands
//! it a [`Draining`] signal to watch. When the drain starts, tasks learn it and wind down in
//! whatever way their protocol allows; at the deadline the tasks still running are aborted, which
//! closes their sockets.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::relay::Relay;
use crate::trigger::{Fired, Trigger};

/// How long a drain waits for open connections before it cuts them, unless told otherwise.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long cut connections get to notice and close before the drain stops waiting for them.
const AFTER_CUT: Duration = Duration::from_millis(500);

/// Tracks connection tasks so that a shutdown can wait for them.
///
/// ```
/// use std::time::Duration;
/// use octopus::Drain;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let drain = Drain::new();
/// drain.spawn(|draining| async move {
///     // A connection: serve until the drain starts, then finish the current exchange.
///     draining.wait().await;
/// });
/// let report = drain.run(Duration::from_secs(5)).await;
/// assert_eq!(report.cut, 0);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Drain {
    tracker: TaskTracker,
    draining: Trigger,
    cut_now: Trigger,
    relay: RelaySlot,
}

/// The successor a drain after a hand-over relays idle connections to; set before the drain
/// starts, so a connection that sees the drain sees it too.
type RelaySlot = Arc<OnceLock<Arc<Relay>>>;

/// Tells a connection task that the drain has started.
///
/// Checking it reads one atomic flag, and a waiting task re-polled for every request takes no
/// lock, so busy connections do not contend with each other.
#[derive(Debug, Clone)]
pub struct Draining {
    trigger: Trigger,
    relay: RelaySlot,
}

impl Draining {
    /// Resolves once the drain has started.
    pub async fn wait(&self) {
        self.trigger.wait().await
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.trigger.is_fired()
    }

    /// [`Draining::wait`] as a nameable future, for a hand-written connection future to hold.
    pub(crate) fn signal(&self) -> Fired {
        self.trigger.wait()
    }

    /// The successor that takes idle connections, once the drain has started after a hand-over
    /// to one.
    pub(crate) fn relay(&self) -> Option<&Arc<Relay>> {
        self.relay.get()
    }
}

/// Keeps a drain open while it lives, for work that outlives its task, such as a connection
/// taken over by an HTTP upgrade (WebSocket). At the deadline it is told to stop: [`Hold::cut`].
#[derive(Debug)]
pub struct Hold {
    _token: TaskTrackerToken,
    cut: Trigger,
}

impl Hold {
    /// Resolves at the drain deadline, when the held work must stop.
    pub fn cut(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        self.cut.wait()
    }

    /// Whether the drain deadline has passed.
    pub fn is_cut(&self) -> bool {
        self.cut.is_fired()
    }

    pub(crate) fn cut_signal(&self) -> Fired {
        self.cut.wait()
    }
}

/// What a drain did: enough to act on (alert, exit status) without reading the logs.
///
/// `open_at_start == finished + cut`. A generation that stopped before it was ready (a shutdown
/// during start-up, while its predecessor kept serving) reports all zeros: it served nothing.
///
/// ```
/// # async fn run(server: octopus::Server) -> Result<(), octopus::Error> {
/// # let app = axum::Router::new();
/// let report = server.serve(app).await?;
/// if report.cut > 0 {
///     eprintln!(
///         "{} of {} connections were cut after {:?}",
///         report.cut, report.open_at_start, report.elapsed
///     );
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections still open when the drain started (with those the kernel had queued at a
    /// shutdown, which are accepted and answered).
    pub open_at_start: usize,
    /// Connections that ended by themselves before the deadline.
    pub finished: usize,
    /// Connections cut at the deadline: their exchange in progress was lost.
    pub cut: usize,
    /// How long the drain took: up to the drain timeout (a little more when connections were
    /// cut), less as soon as the last connection is done.
    pub elapsed: Duration,
}

impl DrainReport {
    /// Adds up two drains of the same process (after a resume, a drain that began earlier ran
    /// beside the last one): counts add up, `elapsed` is the longer one.
    pub fn merge(self, other: DrainReport) -> DrainReport {
        DrainReport {
            open_at_start: self.open_at_start + other.open_at_start,
            finished: self.finished + other.finished,
            cut: self.cut + other.cut,
            elapsed: self.elapsed.max(other.elapsed),
        }
    }
}

impl Drain {
    /// A drain with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs a connection task. The task is dropped (closing what it owns) if it is still running
    /// at the drain deadline.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(Draining) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let work = task(self.draining());
        let cut_now = self.cut_now.wait();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = work => {}
                () = cut_now => {}
            }
        });
    }

    /// Keeps the drain open until the returned [`Hold`] is dropped.
    pub fn hold(&self) -> Hold {
        Hold {
            _token: self.tracker.token(),
            cut: self.cut_now.clone(),
        }
    }

    /// A signal for one connection task to watch.
    pub fn draining(&self) -> Draining {
        Draining {
            trigger: self.draining.clone(),
            relay: self.relay.clone(),
        }
    }

    /// Lets this drain's connections be relayed to `relay`: called before [`Drain::run`].
    pub(crate) fn relay_to(&self, relay: Arc<Relay>) {
        let _ = self.relay.set(relay);
    }

    /// How many connection tasks and holds are alive.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Tells the connections that the drain has started, ahead of [`Drain::run`], which counts
    /// them and waits.
    pub(crate) fn start(&self) {
        self.draining.fire();
    }

    /// Starts the drain and waits until every connection has finished, or until `timeout` has
    /// passed, when the rest are cut. Ends as soon as the last connection is done.
    pub async fn run(&self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        self.draining.fire();
        self.tracker.close();
        let open_at_start = self.tracker.len();
        let deadline = humantime::format_rfc3339_millis(SystemTime::now() + timeout);
        tracing::info!(
            connections = open_at_start,
            "draining connections; deadline {deadline}"
        );
        let mut cut = 0;
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            cut = self.tracker.len();
            self.cut_now.fire();
            if tokio::time::timeout(AFTER_CUT, self.tracker.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = self.tracker.len(),
                    "connections held past the deadline did not close when cut; not waiting for them"
                );
            }
        }
        let report = DrainReport {
            open_at_start,
            finished: open_at_start.saturating_sub(cut),
            cut,
            elapsed: started.elapsed(),
        };
        if report.cut > 0 {
            let plural = if report.cut == 1 { "" } else { "s" };
            tracing::warn!(
                elapsed = ?report.elapsed,
                "drain deadline reached; cut {} connection{plural}",
                report.cut
            );
        } else {
            tracing::info!(elapsed = ?report.elapsed, "drain complete; every connection finished");
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ends_as_soon_as_the_last_connection_is_done() {
        let drain = Drain::new();
        for ms in [10, 50] {
            drain.spawn(move |draining| async move {
                draining.wait().await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            });
        }
        let report = drain.run(Duration::from_secs(10)).await;
        assert_eq!(
            (report.open_at_start, report.finished, report.cut),
            (2, 2, 0)
        );
        assert!(report.elapsed < Duration::from_secs(2), "{report:?}");
    }

    #[tokio::test]
    async fn cuts_what_is_left_at_the_deadline() {
        let drain = Drain::new();
        drain.spawn(|_| std::future::pending());
        drain.spawn(|_| async {});
        let report = drain.run(Duration::from_millis(100)).await;
        assert_eq!((report.finished, report.cut), (1, 1));
        assert!(report.elapsed >= Duration::from_millis(100));
        assert!(report.elapsed < Duration::from_millis(1000), "{report:?}");
        assert_eq!(drain.active(), 0);
    }

    #[tokio::test]
    async fn a_hold_keeps_the_drain_open_until_dropped_or_cut() {
        let drain = Drain::new();
        let hold = drain.hold();
        let released = drain.hold();
        assert_eq!(drain.active(), 2);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(released);
        });
        tokio::spawn(async move {
            hold.cut().await;
            assert!(hold.is_cut());
        });
        let report = drain.run(Duration::from_millis(200)).await;
        assert_eq!((report.open_at_start, report.cut), (2, 1));
        assert!(report.elapsed < Duration::from_millis(600), "{report:?}");
    }

    #[tokio::test]
    async fn zero_timeout_cuts_at_once() {
        let drain = Drain::new();
        drain.spawn(|_| std::future::pending());
        let report = drain.run(Duration::ZERO).await;
        assert_eq!(report.cut, 1);
    }
}
