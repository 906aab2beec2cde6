//! The supervisor's log: lines to stderr written by a thread of their own, so that a stalled
//! stderr never holds up signal handling or the instances; lines past a full buffer are counted
//! and the count logged once there is room again.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

const BUFFERED_LINES: usize = 4096;

enum Entry {
    Line(String),
    /// Answered once every line queued before it is written.
    Flush(SyncSender<()>),
}

static SINK: OnceLock<SyncSender<Entry>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Starts the writer thread; lines logged before are written directly.
pub fn start() {
    let (send, receive) = sync_channel::<Entry>(BUFFERED_LINES);
    let spawned = std::thread::Builder::new()
        .name("octopus-run-log".into())
        .spawn(move || {
            let mut stderr = std::io::stderr();
            for entry in receive {
                match entry {
                    Entry::Line(line) => {
                        let _ = stderr.write_all(line.as_bytes());
                    }
                    Entry::Flush(done) => {
                        let _ = done.try_send(());
                    }
                }
            }
        });
    if spawned.is_ok() {
        let _ = SINK.set(send);
    }
}

pub fn line(message: std::fmt::Arguments<'_>) {
    let line = format!("octopus run[{}]: {message}\n", std::process::id());
    let Some(sink) = SINK.get() else {
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    };
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let note = format!("octopus run: {dropped} log lines dropped while stderr was stalled\n");
        if sink.try_send(Entry::Line(note)).is_err() {
            DROPPED.fetch_add(dropped, Ordering::Relaxed);
        }
    }
    if let Err(TrySendError::Full(_)) = sink.try_send(Entry::Line(line)) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits (at most a second) until the lines logged so far are written, before the process
/// exits or re-execs.
pub fn flush() {
    if let Some(sink) = SINK.get() {
        let (done, written) = sync_channel(1);
        if send_patiently(sink, Entry::Flush(done)) {
            let _ = written.recv_timeout(std::time::Duration::from_secs(1));
        }
    }
}

/// `try_send`, retried for a second while the queue is full.
fn send_patiently(sink: &SyncSender<Entry>, mut entry: Entry) -> bool {
    for _ in 0..100 {
        match sink.try_send(entry) {
            Ok(()) => return true,
            Err(TrySendError::Full(back)) => entry = back,
            Err(TrySendError::Disconnected(_)) => return false,
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

macro_rules! log {
    ($($arg:tt)*) => { $crate::run::log::line(format_args!($($arg)*)) };
}
pub(crate) use log;
