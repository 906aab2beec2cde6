//! The life of one generation's connections, written once: accept until this generation stops,
//! then drain; after a hand-over, serve again if the successor dies; add up every drain; settle.
//! [`Server`](crate::Server) serves HTTP with it, and [`Connections`] offers it for any protocol.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept::{Accept, accept_loop, accept_queued};
use crate::drain::{DEFAULT_DRAIN_TIMEOUT, Drain, DrainReport, Draining, Hold};
use crate::error::Error;
use crate::lifecycle::{Octopus, Reported, Stop};

/// A listening socket of this generation and what serves each of its connections, given the
/// drain of the connections accepted in the current round.
pub(crate) struct Served<L, F> {
    pub listener: L,
    pub connection: F,
}

/// Serves `listeners` through `octopus` until this generation is over, and returns what its
/// drains did.
///
/// Reports ready before the first accept: whatever can fail fails before this process holds a
/// connection, and the previous process serves the shared sockets until then.
pub(crate) async fn run<L, F>(
    octopus: &Octopus,
    mut listeners: Vec<Served<L, F>>,
    drain_timeout: Duration,
) -> Result<DrainReport, Error>
where
    L: Accept,
    F: FnMut(L::Stream, L::Peer, &Drain) + Send + 'static,
{
    // A successor that must be stopped gets as long as this process would take to drain.
    octopus.set_drain_timeout(drain_timeout);
    if octopus.report_ready()?
        == (Reported::Declined {
            parent_serves: true,
        })
    {
        octopus.settle().await;
        tracing::info!(
            pid = std::process::id(),
            "server shut down before it was ready; the old process keeps serving"
        );
        return Ok(DrainReport::default());
    }
    let mut drain = Drain::new();
    // Drains of connections from before a resume go on beside the next round's connections.
    let mut earlier_drains: Vec<JoinHandle<DrainReport>> = Vec::new();
    let mut report = loop {
        let stop_accepting = CancellationToken::new();
        let accepting: Vec<_> = listeners
            .drain(..)
            .map(
                |Served {
                     listener,
                     mut connection,
                 }| {
                    let (stop, drain) = (stop_accepting.clone(), drain.clone());
                    tokio::spawn(async move {
                        let listener = accept_loop(listener, stop, |stream, peer| {
                            connection(stream, peer, &drain)
                        })
                        .await;
                        Served {
                            listener,
                            connection,
                        }
                    })
                },
            )
            .collect();
        let stop = octopus.stopped().await;
        stop_accepting.cancel();
        // The successor that takes this drain's idle connections, after a hand-over.
        let relay = match stop {
            Stop::Upgraded { .. } => octopus.relay(),
            Stop::Shutdown => None,
        };
        if let Stop::Upgraded { .. } = stop {
            // The connections learn of the drain now, not once the accept loops have wound down:
            // on a busy server each await below is a turn of the run queue behind thousands of
            // connection tasks (1.3 s with 10,000 busy keep-alive connections on 2 cores).
            if let Some(relay) = &relay {
                drain.relay_to(relay.clone());
            }
            drain.start();
        }
        for accepting in accepting {
            if let Ok(served) = accepting.await {
                listeners.push(served);
            }
        }
        octopus.note_drain(Some(SystemTime::now() + drain_timeout));
        if stop == Stop::Shutdown {
            // Refuse new connections, after taking those the kernel already queued: their
            // clients were promised an answer.
            octopus.close_listeners();
            for served in &mut listeners {
                accept_queued(&served.listener, |stream, peer| {
                    (served.connection)(stream, peer, &drain)
                });
                served.listener.stop_listening();
            }
            // Connections the previous process still relays (it is draining after handing over
            // to this one) are served by this drain, and closed like the others.
            listeners.retain(|served| served.listener.relays());
            let predecessor = (!listeners.is_empty()).then(|| drain.hold());
            let draining = drain.run(drain_timeout);
            let relayed = serve_relayed(&mut listeners, &drain, predecessor);
            break tokio::join!(draining, relayed).0;
        }
        // Handed over: the successor accepts on the same sockets. Keep them: if it dies while
        // this process drains, `resumed` fires and this process serves them again.
        // Connections the previous process still relays are this drain's too: it lasts until
        // that process is done relaying, or until its deadline.
        let predecessor = listeners
            .iter()
            .any(|served| served.listener.relays())
            .then(|| drain.hold());
        let mut draining = tokio::spawn({
            let drain = drain.clone();
            async move {
                let report = drain.run(drain_timeout).await;
                if let Some(relay) = relay {
                    tracing::info!(
                        connections = relay.sent(),
                        "relayed idle connections to the new process"
                    );
                }
                report
            }
        });
        let resumed = {
            let relayed = serve_relayed(&mut listeners, &drain, predecessor);
            tokio::pin!(relayed);
            let mut relayed_done = false;
            loop {
                tokio::select! {
                    report = &mut draining => break Err(report.unwrap_or_default()),
                    () = octopus.resumed() => break Ok(()),
                    () = &mut relayed, if !relayed_done => relayed_done = true,
                }
            }
        };
        match resumed {
            Err(report) => {
                octopus.forget_relay();
                break report;
            }
            Ok(()) => {
                octopus.note_drain(None);
                earlier_drains.push(draining);
                drain = Drain::new();
            }
        }
    };
    for earlier in earlier_drains {
        report = report.merge(earlier.await.unwrap_or_default());
    }
    octopus.publish_drain(report);
    // An upgrade cancelled by the shutdown may still be stopping its new process: wait for it.
    octopus.settle().await;
    tracing::info!(
        pid = std::process::id(),
        cut = report.cut,
        "server shut down"
    );
    Ok(report)
}

/// Serves the connections relayed to this generation after it stopped accepting, as part of
/// `drain`, until none can come (`predecessor`, the drain's token for them, is then let go) or
/// the drain deadline.
async fn serve_relayed<L, F>(
    listeners: &mut [Served<L, F>],
    drain: &Drain,
    predecessor: Option<Hold>,
) where
    L: Accept,
    F: FnMut(L::Stream, L::Peer, &Drain) + Send + 'static,
{
    let Some(predecessor) = predecessor else {
        return;
    };
    let cut = predecessor.cut();
    tokio::pin!(cut);
    loop {
        // Borrowed mutably, so that the task needs the closures to be `Send` only.
        let polled = &mut *listeners;
        let next = std::future::poll_fn(|cx| {
            let mut open = false;
            for (index, served) in polled.iter_mut().enumerate() {
                match served.listener.poll_relayed(cx) {
                    Poll::Ready(Some(relayed)) => return Poll::Ready(Some((index, relayed))),
                    Poll::Ready(None) => {}
                    Poll::Pending => open = true,
                }
            }
            if open {
                Poll::Pending
            } else {
                Poll::Ready(None)
            }
        });
        let next = tokio::select! {
            biased;
            () = &mut cut => return,
            next = next => next,
        };
        match next {
            Some((index, Ok((stream, peer)))) => (listeners[index].connection)(stream, peer, drain),
            Some((_, Err(_))) => {}
            None => return,
        }
    }
}

/// A listening socket [`Connections`] can serve: those [`Octopus::listen_tcp`],
/// [`Octopus::listen_tcp_named`] and [`Octopus::listen_unix`] return.
pub trait Listener: Send + 'static {
    /// An accepted connection.
    type Stream: Send + 'static;
    /// The address of a connection's peer.
    type Peer: Send + 'static;
    #[doc(hidden)]
    type Registered: Accept<Stream = Self::Stream, Peer = Self::Peer>;
    #[doc(hidden)]
    fn register(self) -> io::Result<Self::Registered>;
}

impl Listener for std::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = std::net::SocketAddr;
    type Registered = tokio::net::TcpListener;

    fn register(self) -> io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::from_std(self)
    }
}

impl Listener for std::os::unix::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = tokio::net::unix::SocketAddr;
    type Registered = tokio::net::UnixListener;

    fn register(self) -> io::Result<tokio::net::UnixListener> {
        tokio::net::UnixListener::from_std(self)
    }
}

/// Serves the connections of any protocol through an [`Octopus`], gracefully: made by
/// [`Octopus::connections`].
///
/// [`Connections::serve`] reports ready, accepts and runs each connection as a task until this
/// generation stops, then drains: on a shutdown it refuses new connections (after taking those
/// already queued); after a hand-over it keeps the sockets and, if the successor dies while this
/// process drains, serves them again. It returns once every drain is over, with what they did.
///
#[doc = include_str!("../docs/any-protocol.md")]
#[must_use = "Connections do nothing until `serve` is awaited"]
pub struct Connections<L> {
    octopus: Octopus,
    listeners: Vec<L>,
    drain_timeout: Duration,
}

impl Octopus {
    /// Serves the connections of any protocol on `listener` (one this generation returned)
    /// through this generation: see [`Connections`].
    pub fn connections<L: Listener>(&self, listener: L) -> Connections<L> {
        Connections::new(self, listener)
    }
}

impl<L: Listener> Connections<L> {
    pub(crate) fn new(octopus: &Octopus, listener: L) -> Self {
        Connections {
            octopus: octopus.clone(),
            listeners: vec![listener],
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }

    /// Also serves `listener` (of the same kind), with the same connection closure.
    pub fn listener(mut self, listener: L) -> Self {
        self.listeners.push(listener);
        self
    }

    /// How long a drain waits for open connections before it cuts them (drops their tasks,
    /// which closes their sockets). Default 5 s; zero cuts them at once. A successor this
    /// process has to stop (SIGTERM) is given as long, plus a second, before it is killed.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Serves until this generation is over (see [`Connections`]); each connection runs as
    /// `connection(stream, peer, draining)` in its own task. Once `draining` fires, the task
    /// should finish the exchange in progress, tell the client if the protocol has a way to, and
    /// end; a task still running at the drain deadline is dropped.
    ///
    /// Returns the drains' [`DrainReport`]; exit with status 0 then. Fails only before the
    /// first connection: a listener cannot be registered with the runtime, or the pid file or
    /// the readiness report fails (see [`Octopus::ready`]).
    pub async fn serve<C, Fut>(self, connection: C) -> Result<DrainReport, Error>
    where
        C: Fn(L::Stream, L::Peer, Draining) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let connection = Arc::new(connection);
        let mut served = Vec::with_capacity(self.listeners.len());
        for listener in self.listeners {
            let listener = listener.register().map_err(|source| Error::Io {
                what: "cannot register a listener with the runtime",
                source,
            })?;
            let address = listener.describe();
            tracing::info!("listening on {address}");
            let stats = self.octopus.track_listener(address);
            let connection = connection.clone();
            served.push(Served {
                listener,
                connection: move |stream, peer, drain: &Drain| {
                    let slot = stats.open();
                    let work = connection(stream, peer, drain.draining());
                    drain.spawn(move |_| async move {
                        work.await;
                        drop(slot);
                    });
                },
            });
        }
        run(&self.octopus, served, self.drain_timeout).await
    }
}
