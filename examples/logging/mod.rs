//! Logging for the examples, set up so that a log write never blocks serving or signal handling.
//!
//! Events go to stderr through a non-blocking writer: one thread of its own writes them, and the
//! threads that log only queue lines. If nobody reads stderr (a pipe whose reader stopped, a
//! stuck log collector), that thread blocks, the queue fills, and further lines are dropped and
//! counted instead of stalling the server; the count is logged at exit.

use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// How long exit waits for the queued lines to reach stderr. A stderr that nobody reads never
/// takes them, and exit must not hang on it.
const FLUSH_LIMIT: Duration = Duration::from_millis(1500);

/// Keep it for the life of `main`: dropping it writes out the queued lines (for at most
/// `FLUSH_LIMIT`), after a line saying how many were dropped, if any.
pub struct Logging {
    guard: Option<WorkerGuard>,
    dropped: ErrorCounter,
}

/// An error and its causes on one line, joined with ": ": what an example logs when it exits
/// on an error.
pub fn error_line(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        line.push_str(": ");
        line.push_str(&error.to_string());
        cause = error.source();
    }
    line
}

/// Installs the global subscriber: plain text on stderr, through the non-blocking writer.
pub fn init() -> Logging {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let dropped = writer.error_counter();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(writer)
        // A closed stderr must not panic the task that logs (the signal handler, say).
        .log_internal_errors(false)
        .init();
    Logging {
        guard: Some(guard),
        dropped,
    }
}

impl Drop for Logging {
    fn drop(&mut self) {
        let dropped = self.dropped.dropped_lines();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "{dropped} log lines were dropped because stderr was not being read"
            );
        }
        let Some(guard) = self.guard.take() else {
            return;
        };
        // The guard's drop waits up to 1.1 s for the writer thread, which a full pipe holds in
        // `write` for ever, and may then print to stdout, which can be that same full pipe: it
        // gets a thread of its own, abandoned at exit if it is still stuck.
        let (flushed, done) = std::sync::mpsc::channel();
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || {
                drop(guard);
                let _ = flushed.send(());
            });
        let _ = done.recv_timeout(FLUSH_LIMIT);
    }
}
