//! Octopus's signal contract, as `docs/signals.md` (part of the crate docs) describes it.

//!
//! This module turns a signal into an [`Action`]; the lifecycle acts on it.

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::error::Error;
use crate::process::UPGRADE_SIGNALS;
use crate::upgrade::AfterUpgrade;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Upgrade { after: AfterUpgrade },
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
        "SIGHUP" => Some(Action::Upgrade {
            after: AfterUpgrade::Exit,
        }),
        "SIGUSR1" | "SIGUSR2" => Some(Action::Upgrade {
            after: after_user_signal,
        }),
        "SIGINT" | "SIGTERM" => Some(Action::Shutdown),
        _ => None,
    }
}

/// The handled signals, caught from the moment this exists: a signal that arrives during
/// start-up waits here instead of killing the process.
pub(crate) struct Handlers {
    streams: Vec<(&'static str, Action, Signal)>,
}

impl Handlers {
    /// Installs the handlers; `kill_master` makes SIGUSR1 and SIGUSR2 retire this process too.
    pub fn install(kill_master: bool) -> Result<Self, Error> {
        let mut streams = Vec::with_capacity(HANDLED.len());
        for (name, kind) in HANDLED {
            let stream = signal(kind).map_err(|source| Error::Signal {
                signal: name,
                source,
            })?;
            let Some(action) = action_for(name, kill_master) else {
                continue;
            };
            streams.push((name, action, stream));
        }
        Ok(Handlers { streams })
    }

    /// The next signal received, by name, and what it asks for.
    pub async fn next(&mut self) -> (&'static str, Action) {
        std::future::poll_fn(|cx| {
            for (name, action, stream) in self.streams.iter_mut() {
                if let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {
                    return std::task::Poll::Ready((*name, *action));
                }
            }
            std::task::Poll::Pending
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_octopus_table() {
        for kill_master in [false, true] {
            assert_eq!(
                action_for("SIGHUP", kill_master),
                Some(Action::Upgrade {
                    after: AfterUpgrade::Exit
                })
            );
            assert_eq!(action_for("SIGINT", kill_master), Some(Action::Shutdown));
            assert_eq!(action_for("SIGTERM", kill_master), Some(Action::Shutdown));
        }
        for usr in ["SIGUSR1", "SIGUSR2"] {
            assert_eq!(
                action_for(usr, false),
                Some(Action::Upgrade {
                    after: AfterUpgrade::KeepServing
                })
            );
            assert_eq!(
                action_for(usr, true),
                Some(Action::Upgrade {
                    after: AfterUpgrade::Exit
                })
            );
        }
        assert!(
            HANDLED
                .iter()
                .all(|(name, _)| action_for(name, false).is_some())
        );
    }
}
