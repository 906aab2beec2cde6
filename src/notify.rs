//! The systemd notify protocol, when `NOTIFY_SOCKET` is set (a no-op otherwise).
//!
//! With `Type=notify`, `NotifyAccess=all` and `ExecReload=kill -HUP $MAINPID`, systemd follows the
//! upgrades: `READY=1` once serving; on an upgrade `RELOADING=1`, then `MAINPID=<new pid>` and
//! `READY=1` once the new process is ready (or `READY=1` alone if the upgrade was rolled back);
//! `STOPPING=1` on shutdown.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

fn status(text: &str) -> NotifyState<'_> {
    NotifyState::Status(text)
}

/// This process serves (first start, or resumed after its successor died).
pub(crate) fn serving() {
    let pid = std::process::id();
    let text = format!("serving (pid {pid})");
    send(&[NotifyState::MainPid(pid), NotifyState::Ready, status(&text)]);
}

/// An upgrade started.
pub(crate) fn reloading() {
    let mut states = vec![NotifyState::Reloading, status("upgrading")];
    // systemd 253 and later require the time of the reload with RELOADING=1.
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The new process `pid` is ready and is now the main process.
pub(crate) fn handed_over(pid: u32) {
    let text = format!("serving (pid {pid})");
    send(&[NotifyState::MainPid(pid), NotifyState::Ready, status(&text)]);
}

/// The upgrade ended without a hand-over; this process still serves.
pub(crate) fn upgrade_ended(outcome: &str) {
    send(&[NotifyState::Ready, status(outcome)]);
}

/// A graceful shutdown started.
pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, status("draining")]);
}
