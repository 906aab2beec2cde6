//! When an instance that exited on its own is started again: the `--restart` policy and an
//! exponential backoff that a crash loop climbs and a stable run resets.

use std::time::Duration;

use super::args::Restart;

pub const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const MAX_DELAY: Duration = Duration::from_secs(30);
/// An instance ready for this long counts as stable: the next crash starts the backoff afresh.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Consecutive failed runs, and what they imply.
#[derive(Debug, Default, Clone, Copy)]
pub struct Backoff {
    /// Runs in a row that ended before staying ready for [`STABLE_AFTER`].
    pub in_a_row: u32,
}

impl Backoff {
    /// Counts a run that ended after being ready for `ready_for` (`None`: never ready), and
    /// returns the delay before the next start.
    pub fn after_exit(&mut self, ready_for: Option<Duration>) -> Duration {
        if ready_for.is_some_and(|d| d >= STABLE_AFTER) {
            self.in_a_row = 0;
        }
        self.in_a_row = self.in_a_row.saturating_add(1);
        let doublings = self.in_a_row.saturating_sub(1).min(16);
        (FIRST_DELAY * 2u32.pow(doublings)).min(MAX_DELAY)
    }
}

/// Whether an instance that exited with `success` (exit code 0) is started again.
pub fn restarts(policy: Restart, success: bool) -> bool {
    match policy {
        Restart::Always => true,
        Restart::OnFailure => !success,
        Restart::Never => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_to_its_cap_and_a_stable_run_resets_it() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..12).map(|_| backoff.after_exit(None)).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[4], Duration::from_millis(1600));
        assert_eq!(delays[11], MAX_DELAY);
        assert_eq!(backoff.after_exit(Some(Duration::from_secs(1))), MAX_DELAY);
        assert_eq!(backoff.after_exit(Some(STABLE_AFTER)), FIRST_DELAY);
        assert_eq!(backoff.in_a_row, 1);
    }

    #[test]
    fn policies() {
        assert!(restarts(Restart::OnFailure, false));
        assert!(!restarts(Restart::OnFailure, true));
        assert!(restarts(Restart::Always, true));
        assert!(!restarts(Restart::Never, false));
    }
}
