//! Octopus's signal contract, as `docs/signals.md` (part of the crate docs) describes it.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::error::Error;
use crate::lifecycle::{AfterUpgrade, WeakHandle};
use crate::process::UPGRADE_SIGNALS;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Upgrade(AfterUpgrade),
    Shutdown,
}

/// The signals octopus handles, by name.
pub(crate) const HANDLED: [(&str, SignalKind); 5] = [
    ("SIGHUP", SignalKind::hangup()),
    ("SIGUSR1", SignalKind::user_defined1()),
    ("SIGUSR2", SignalKind::user_defined2()),
    ("SIGINT", SignalKind::interrupt()),
    ("SIGTERM", SignalKind::terminate()),
];

pub(crate) fn action_for(name: &str, kill_master: bool) -> Option<Action> {
    let after_user_signal = if kill_master {
        AfterUpgrade::Exit
    } else {
        AfterUpgrade::KeepServing
    };
    match name {
        "SIGHUP" => Some(Action::Upgrade(AfterUpgrade::Exit)),
        "SIGUSR1" | "SIGUSR2" => Some(Action::Upgrade(after_user_signal)),
        "SIGINT" | "SIGTERM" => Some(Action::Shutdown),
        _ => None,
    }
}

/// The handled signals, caught from the moment this exists: a signal that arrives during
/// start-up waits here instead of killing the process.
pub(crate) struct Handlers(Vec<(&'static str, Signal)>);

impl Handlers {
    pub fn install() -> Result<Self, Error> {
        let mut streams = Vec::with_capacity(HANDLED.len());
        for (name, kind) in HANDLED {
            let stream = signal(kind).map_err(|source| Error::Signal {
                signal: name,
                source,
            })?;
            streams.push((name, stream));
        }
        Ok(Handlers(streams))
    }

    /// Acts on the signals, from a task, as long as the generation behind `handle` lives.
    pub fn serve(self, handle: WeakHandle, kill_master: bool) {
        serve(self.0, handle, kill_master);
    }
}

/// A successor starts with the upgrade signals ignored (see [`UPGRADE_SIGNALS`]). One that does
/// not handle signals gives them back their default action, so that it, and the processes it
/// starts, behave as if started normally.
pub(crate) fn restore_default_upgrade_signals() {
    for signal in UPGRADE_SIGNALS {
        // SAFETY: sigaction with a null new action only reads the current one into `current`,
        // a zeroed, valid `struct sigaction`.
        let ignored = unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
        };
        if ignored {
            // SAFETY: installs the default disposition, which involves no handler code.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

fn serve(mut streams: Vec<(&'static str, Signal)>, weak: WeakHandle, kill_master: bool) {
    tokio::spawn(async move {
        loop {
            let received = std::future::poll_fn(|cx| {
                for (name, stream) in streams.iter_mut() {
                    if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                        return std::task::Poll::Ready(*name);
                    }
                }
                std::task::Poll::Pending
            })
            .await;
            // The generation is gone (its server returned): nothing left to act on.
            let Some(handle) = weak.upgrade() else {
                break;
            };
            // Each signal is acted on in a task of its own: if the application's logging panics
            // (a subscriber writing to a closed stderr), that task dies, not the signal handling.
            tokio::spawn(async move {
                tracing::info!(pid = std::process::id(), "signal received: {received}");
                match action_for(received, kill_master) {
                    Some(Action::Upgrade(after)) => {
                        let _ = handle.upgrade(after).await;
                    }
                    Some(Action::Shutdown) => handle.shutdown(),
                    None => {}
                }
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_octopus_table() {
        for kill_master in [false, true] {
            assert_eq!(
                action_for("SIGHUP", kill_master),
                Some(Action::Upgrade(AfterUpgrade::Exit))
            );
            assert_eq!(action_for("SIGINT", kill_master), Some(Action::Shutdown));
            assert_eq!(action_for("SIGTERM", kill_master), Some(Action::Shutdown));
        }
        for usr in ["SIGUSR1", "SIGUSR2"] {
            assert_eq!(
                action_for(usr, false),
                Some(Action::Upgrade(AfterUpgrade::KeepServing))
            );
            assert_eq!(
                action_for(usr, true),
                Some(Action::Upgrade(AfterUpgrade::Exit))
            );
        }
        assert!(HANDLED
            .iter()
            .all(|(name, _)| action_for(name, false).is_some()));
    }
}
