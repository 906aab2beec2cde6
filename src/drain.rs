//! Draining: let open connections finish, up to a deadline, then cut what is left.
//!
//! Protocol-agnostic: each connection runs as a task spawned through [`Drain::spawn`], which hands
//! it a [`Draining`] signal to watch. When the drain starts, tasks learn it and wind down in
//! whatever way their protocol allows; at the deadline the tasks still running are aborted, which
//! closes their sockets.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    draining: CancellationToken,
    cut_now: CancellationToken,
    cut: Arc<AtomicUsize>,
}

/// Tells a connection task that the drain has started.
#[derive(Debug, Clone)]
pub struct Draining(CancellationToken);

impl Draining {
    /// Resolves once the drain has started.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections still open when the drain started.
    pub open_at_start: usize,
    /// Connections cut at the deadline.
    pub cut: usize,
    /// How long the drain took.
    pub elapsed: Duration,
}

impl Drain {
    /// A drain with no connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs a connection task. The task is aborted if it is still running at the drain deadline.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(Draining) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let work = task(self.draining());
        let cut_now = self.cut_now.clone();
        let cut = self.cut.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = work => {}
                () = cut_now.cancelled() => {
                    cut.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// The signal connection tasks watch.
    pub fn draining(&self) -> Draining {
        Draining(self.draining.clone())
    }

    /// How many connection tasks are running.
    pub fn active(&self) -> usize {
        self.tracker.len()
    }

    /// Starts the drain and waits until every connection has finished, or until `timeout` has
    /// passed, when the rest are cut. Ends as soon as the last connection is done.
    pub async fn run(&self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        self.draining.cancel();
        self.tracker.close();
        let open_at_start = self.tracker.len();
        let deadline = humantime::format_rfc3339_seconds(SystemTime::now() + timeout);
        tracing::info!(
            connections = open_at_start,
            "draining connections; deadline {deadline}"
        );
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            self.cut_now.cancel();
            self.tracker.wait().await;
        }
        let report = DrainReport {
            open_at_start,
            cut: self.cut.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        };
        if report.cut > 0 {
            tracing::warn!(elapsed = ?report.elapsed, "drain deadline reached; cut {} connections", report.cut);
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
        assert_eq!((report.open_at_start, report.cut), (2, 0));
        assert!(report.elapsed < Duration::from_secs(2), "{report:?}");
    }

    #[tokio::test]
    async fn cuts_what_is_left_at_the_deadline() {
        let drain = Drain::new();
        drain.spawn(|_| std::future::pending());
        drain.spawn(|_| async {});
        let report = drain.run(Duration::from_millis(100)).await;
        assert_eq!(report.cut, 1);
        assert!(report.elapsed >= Duration::from_millis(100));
        assert!(report.elapsed < Duration::from_millis(1000), "{report:?}");
        assert_eq!(drain.active(), 0);
    }

    #[tokio::test]
    async fn zero_timeout_cuts_at_once() {
        let drain = Drain::new();
        drain.spawn(|_| std::future::pending());
        let report = drain.run(Duration::ZERO).await;
        assert_eq!(report.cut, 1);
    }
}
