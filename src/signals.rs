//! Octopus's signal contract.
//!
//! | signal | action |
//! |---|---|
//! | SIGHUP | upgrade; once the new process is ready, this one drains and exits |
//! | SIGUSR1, SIGUSR2 | upgrade; this one keeps serving beside the new one, unless `kill_master` is set |
//! | SIGINT, SIGTERM | graceful shutdown |

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::error::Error;
use crate::lifecycle::{AfterUpgrade, Handle};

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

    /// Acts on the signals, from a task, for the rest of the process's life.
    pub fn serve(self, handle: Handle, kill_master: bool) {
        serve(self.0, handle, kill_master);
    }
}

fn serve(mut streams: Vec<(&'static str, Signal)>, handle: Handle, kill_master: bool) {
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
            // Each signal is acted on in a task of its own: if the application's logging panics
            // (a subscriber writing to a closed stderr), that task dies, not the signal handling.
            let handle = handle.clone();
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
