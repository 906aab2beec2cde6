//! The one-call HTTP entry: serve a tower service (an axum `Router` as is) gracefully, on TCP,
//! Unix domain sockets and TLS.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept::{accept_loop, accept_queued};
use crate::config::Config;
use crate::connection::{serve_connection, HttpService};
use crate::control::ListenerStats;
use crate::drain::{Drain, DrainReport};
use crate::error::Error;
use crate::lifecycle::{Octopus, Reported, Stop};
use crate::stream::{AnyListener, AnyStream};
#[cfg(feature = "tls")]
use crate::tls::Handshake;

/// No TLS in a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum Handshake {}

/// Serves a tower service over HTTP/1 and HTTP/2 on one or more addresses, gracefully.
///
/// ```no_run
/// use octopus::{Config, Server};
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
/// let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
/// Server::new(Config::new().kill_master(true).drain_timeout(Duration::from_secs(10)))
///     .bind("127.0.0.1:8080")
///     .bind("[::1]:8080")
///     .serve(app)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct Server {
    config: Config,
    endpoints: Vec<Endpoint>,
    unix_mode: Option<u32>,
    header_read_timeout: Option<Duration>,
    octopus: Option<Octopus>,
}

/// Where to listen, as asked for.
enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
    Listener(std::net::TcpListener),
    #[cfg(feature = "tls")]
    Tls(String, Arc<tokio_rustls::rustls::ServerConfig>),
}

/// Serves `service` on `address` with the default [`Config`] until a graceful shutdown: the
/// counterpart of Octopus's `GracefulServe(server, killMaster)`.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
/// let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
/// octopus::serve("127.0.0.1:8080", app).await?;
/// # Ok(()) }
/// ```
pub async fn serve<S: HttpService>(address: &str, service: S) -> Result<DrainReport, Error> {
    Server::new(Config::new())
        .bind(address)
        .serve(service)
        .await
}

impl Server {
    /// A server with `config` and no address yet.
    pub fn new(config: Config) -> Self {
        Server {
            config,
            ..Server::default()
        }
    }

    /// Serves through an [`Octopus`] made beforehand, for example to keep its [`Handle`](crate::Handle)
    /// or to ask it for listeners given to [`Server::listener`]. Its own [`Config`] governs signals
    /// and upgrades; this server's governs the drain.
    pub fn octopus(mut self, octopus: Octopus) -> Self {
        self.octopus = Some(octopus);
        self
    }

    /// Adds a listener obtained from the [`Octopus`] given to [`Server::octopus`] (only those are
    /// handed over on upgrade).
    ///
    /// ```no_run
    /// use octopus::{Config, Octopus, Server};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
    /// let config = Config::new().handle_signals(false);
    /// let octopus = Octopus::new(config.clone())?;
    /// let listener = octopus.listen_tcp("127.0.0.1:0")?;
    /// println!("serving on {:?}", listener.local_addr());
    /// let handle = octopus.handle();
    /// # let app = axum::Router::new();
    /// let server = tokio::spawn(Server::new(config).octopus(octopus).listener(listener).serve(app));
    /// handle.shutdown();
    /// server.await.unwrap()?;
    /// # Ok(()) }
    /// ```
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.endpoints.push(Endpoint::Listener(listener));
        self
    }

    /// Adds a `HOST:PORT` to listen on (port 0: any free port, kept across upgrades).
    pub fn bind(mut self, address: impl Into<String>) -> Self {
        self.endpoints.push(Endpoint::Tcp(address.into()));
        self
    }

    /// Adds a Unix domain socket to listen on. A stale socket file left by a crashed run is
    /// replaced; a path in use by a live server, or that is not a socket, is an error. The path is
    /// handed over on upgrades and never removed by a process that hands it over. If it was removed
    /// while serving, the next generation warns and binds it again, and still serves what was
    /// queued on the socket that lost its path.
    pub fn bind_unix(mut self, path: impl Into<PathBuf>) -> Self {
        self.endpoints.push(Endpoint::Unix(path.into()));
        self
    }

    /// Closes an HTTP/1 connection whose request head takes longer than `timeout` to arrive
    /// (slow-loris clients). Off by default, as in hyper: it costs a timer per request, and a drain
    /// bounds such connections anyway by its deadline.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = Some(timeout);
        self
    }

    /// Permission bits for the Unix sockets this server creates (e.g. `0o660`); by default the
    /// process umask decides.
    pub fn unix_mode(mut self, mode: u32) -> Self {
        self.unix_mode = Some(mode);
        self
    }

    /// Adds a TLS listener on `HOST:PORT`, with a configuration such as
    /// [`tls_config_from_files`](crate::tls_config_from_files) makes (ALPN `h2` and `http/1.1`).
    #[cfg(feature = "tls")]
    pub fn bind_tls(
        mut self,
        address: impl Into<String>,
        config: Arc<tokio_rustls::rustls::ServerConfig>,
    ) -> Self {
        self.endpoints.push(Endpoint::Tls(address.into(), config));
        self
    }

    /// Serves until this generation stops (shutdown, or hand-over to a new process), then drains.
    /// Returns once the drain is over; the caller then exits with status 0.
    pub async fn serve<S: HttpService>(self, service: S) -> Result<DrainReport, Error> {
        let octopus = match self.octopus {
            Some(octopus) => octopus,
            None if !self
                .endpoints
                .iter()
                .any(|e| matches!(e, Endpoint::Listener(_))) =>
            {
                Octopus::new(self.config.clone())?
            }
            None => return Err(Error::ListenerWithoutOctopus),
        };
        let mut listeners = Vec::with_capacity(self.endpoints.len());
        for endpoint in self.endpoints {
            open(&octopus, endpoint, self.unix_mode, &mut listeners)?;
        }
        let mut http = Http {
            builder: Arc::new(http_builder(self.header_read_timeout)),
            service,
            drain: Drain::new(),
            idle_grace: self.config.idle_grace.min(self.config.drain_timeout),
        };
        let drain_timeout = self.config.drain_timeout;
        let mut earlier_drains: Vec<JoinHandle<DrainReport>> = Vec::new();
        // Ready before the first accept: whatever can fail fails before this process holds a
        // connection, and the previous process serves the shared sockets until then.
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
        let report = loop {
            let stop_accepting = CancellationToken::new();
            let accept_loops: Vec<_> = listeners
                .drain(..)
                .map(|open: Open| {
                    let http = http.clone();
                    let (tls, stats) = (open.tls.clone(), open.stats.clone());
                    let accepting = tokio::spawn(accept_loop(
                        open.listener,
                        stop_accepting.clone(),
                        move |stream, peer| {
                            http.spawn_connection(stream, peer, tls.clone(), &stats)
                        },
                    ));
                    (accepting, open.tls, open.stats)
                })
                .collect();
            let stop = octopus.stopped().await;
            stop_accepting.cancel();
            for (accept_loop, tls, stats) in accept_loops {
                if let Ok(listener) = accept_loop.await {
                    listeners.push(Open {
                        listener,
                        tls,
                        stats,
                    });
                }
            }
            octopus.note_drain(Some(SystemTime::now() + drain_timeout));
            if stop == Stop::Shutdown {
                octopus.close_listeners();
                for open in listeners.drain(..) {
                    accept_queued(&open.listener, |stream, peer| {
                        http.spawn_connection(stream, peer, open.tls.clone(), &open.stats)
                    });
                }
                break http.drain.run(drain_timeout).await;
            }
            let drain = http.drain.clone();
            let mut draining = tokio::spawn(async move { drain.run(drain_timeout).await });
            tokio::select! {
                report = &mut draining => break report.unwrap_or_default(),
                () = octopus.resumed() => {
                    octopus.note_drain(None);
                    earlier_drains.push(draining);
                    http.drain = Drain::new();
                }
            }
        };
        let mut report = report;
        for earlier in earlier_drains {
            if let Ok(earlier) = earlier.await {
                report = report.merge(earlier);
            }
        }
        octopus.publish_drain(report);
        octopus.settle().await;
        tracing::info!(
            pid = std::process::id(),
            cut = report.cut,
            "server shut down"
        );
        Ok(report)
    }
}

struct Http<S> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    drain: Drain,
    idle_grace: Duration,
}

impl<S: Clone> Clone for Http<S> {
    fn clone(&self) -> Self {
        Http {
            builder: self.builder.clone(),
            service: self.service.clone(),
            drain: self.drain.clone(),
            idle_grace: self.idle_grace,
        }
    }
}

impl<S: HttpService> Http<S> {
    fn spawn_connection(
        &self,
        stream: AnyStream,
        peer: Option<std::net::SocketAddr>,
        tls: Option<Handshake>,
        stats: &Arc<ListenerStats>,
    ) {
        let slot = stats.open();
        // The connection's own future, spawned as is: it does the drain's tracking and cut
        // itself, so the task holds one state machine rather than three nested ones.
        let hold = self.drain.hold();
        let draining = self.drain.draining();
        match tls {
            None => {
                tokio::spawn(serve_connection(
                    &self.builder,
                    stream,
                    self.service.clone(),
                    hold,
                    draining,
                    self.idle_grace,
                    slot,
                    peer,
                ));
            }
            #[cfg(feature = "tls")]
            Some(tls) => {
                // A task of its own type: a plain connection's task is not sized for TLS.
                let (builder, service, idle_grace) =
                    (self.builder.clone(), self.service.clone(), self.idle_grace);
                let cut = hold.cut_signal();
                tokio::spawn(async move {
                    let handshake = tokio::select! {
                        biased;
                        handshake = tls.accept(stream) => handshake,
                        () = cut => return,
                    };
                    match handshake {
                        Ok(stream) => {
                            serve_connection(
                                &builder, stream, service, hold, draining, idle_grace, slot, peer,
                            )
                            .await
                        }
                        Err(e) => tracing::debug!(?peer, "TLS handshake failed: {e}"),
                    }
                });
            }
            #[cfg(not(feature = "tls"))]
            Some(never) => match never {},
        }
    }
}

/// HTTP/1 and HTTP/2; with a header-read timeout, hyper gets a timer to enforce it.
fn http_builder(header_read_timeout: Option<Duration>) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    if let Some(timeout) = header_read_timeout {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout);
    }
    builder
}

/// A listener being served, its TLS handshake if any, and its counts for `status`.
struct Open {
    listener: AnyListener,
    tls: Option<Handshake>,
    stats: Arc<ListenerStats>,
}

impl Open {
    fn new(octopus: &Octopus, listener: AnyListener, tls: Option<Handshake>) -> Self {
        let stats = octopus.track_listener(listener.describe());
        Open {
            listener,
            tls,
            stats,
        }
    }
}

/// Opens what an endpoint asks for, through `octopus` so it is handed over on upgrades, and adds
/// it to `listeners`.
fn open(
    octopus: &Octopus,
    endpoint: Endpoint,
    unix_mode: Option<u32>,
    listeners: &mut Vec<Open>,
) -> Result<(), Error> {
    let register = |source| Error::Io {
        what: "cannot register a listener with the runtime",
        source,
    };
    let tcp = |listener: std::net::TcpListener| {
        tokio::net::TcpListener::from_std(listener)
            .map(AnyListener::Tcp)
            .map_err(register)
    };
    let (listener, tls) = match endpoint {
        Endpoint::Tcp(address) => (tcp(octopus.listen_tcp(&address)?)?, None),
        Endpoint::Listener(listener) => (tcp(listener)?, None),
        Endpoint::Unix(path) => {
            let (listener, unreachable) =
                octopus.listen_unix_keeping_unreachable(&path, unix_mode)?;
            let unix = |listener| {
                tokio::net::UnixListener::from_std(listener)
                    .map(AnyListener::Unix)
                    .map_err(register)
            };
            // Connections queued on a socket whose path was removed are still served, by this
            // generation only: none can join them, so the queue is empty by the next hand-over.
            if let Some(unreachable) = unreachable {
                listeners.push(Open::new(octopus, unix(unreachable)?, None));
            }
            (unix(listener)?, None)
        }
        #[cfg(feature = "tls")]
        // Named apart from a plain listener on the same address, so that `-p 0` and a TLS port 0
        // are two listeners.
        Endpoint::Tls(address, config) => (
            tcp(octopus.listen_tcp_named(&format!("tls {address}"), &address)?)?,
            Some(Handshake::new(config)),
        ),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(scheme, "listening on {}", listener.describe());
    listeners.push(Open::new(octopus, listener, tls));
    Ok(())
}
