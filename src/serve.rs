//! The one-call HTTP entry: serve a tower service (an axum `Router` as is) gracefully, on TCP,
//! Unix domain sockets and TLS.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::accept::Accept;
use crate::connection::{Drained, HttpService, RelayTicket, serve_connection};
use crate::control::ListenerStats;
use crate::drain::{DEFAULT_DRAIN_TIMEOUT, Drain, DrainReport};
use crate::error::Error;
use crate::generation::{self, Served};
use crate::key::ListenerKey;
use crate::lifecycle::{Octopus, WeakHandle};
use crate::peer::{Peer, PeerAddr};
use crate::protocol::Builders;
use crate::relay::Relayed;
use crate::stream::{AnyListener, AnyStream, InputProbe};
#[cfg(feature = "tls")]
use crate::tls::Handshake;

/// No TLS in a build without the `tls` feature.
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum Handshake {}

/// How long an idle keep-alive connection is kept once a drain began, unless told otherwise.
const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);

/// Serves a tower service over HTTP/1 and HTTP/2 on one or more addresses, gracefully.
///
/// Made by [`Server::new`], it starts its own [`Octopus`] (with the default options) when it
/// serves:
///
/// ```no_run
/// use octopus::Server;
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
/// let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
/// Server::new()
///     .bind("127.0.0.1:8080")
///     .bind("[::1]:8080")
///     .drain_timeout(Duration::from_secs(10))
///     .serve(app)
///     .await?;
/// # Ok(()) }
/// ```
///
/// Made by [`Octopus::server`], it serves through that one: its options (signals, upgrades,
/// pid file, control socket) apply, its [`Handle`](crate::Handle) drives this server, and
/// listeners asked of it can be served ([`Server::listener`]). A listener cannot be given to a
/// server that would not hand it over:
///
/// ```compile_fail,E0599
/// # async fn f(app: axum::Router) {
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// octopus::Server::new().listener(listener).serve(app).await;
/// # }
/// ```
#[must_use = "a Server does nothing until `serve` is awaited"]
pub struct Server<O = OwnOctopus> {
    /// `None` until [`Server::serve`] starts one, for a [`Server<OwnOctopus>`].
    octopus: Option<Octopus>,
    endpoints: Vec<Endpoint>,
    unix_mode: Option<u32>,
    header_read_timeout: Option<Duration>,
    drain_timeout: Duration,
    idle_grace: Duration,
    tcp_nodelay: bool,
    shutdown_signal: Option<ShutdownSignal>,
    through: PhantomData<O>,
}

/// A future that starts the graceful shutdown when it completes.
type ShutdownSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Marks a [`Server`] that starts its own [`Octopus`], with the default options, when it serves
/// ([`Server::new`]). A `Server<Octopus>` serves through one made beforehand ([`Octopus::server`]).
#[derive(Debug)]
pub struct OwnOctopus(());

/// Where to listen, as asked for.
enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
    Listener(std::net::TcpListener),
    #[cfg(feature = "tls")]
    Tls(String, Arc<tokio_rustls::rustls::ServerConfig>),
}

/// Serves `service` on `address` until a graceful shutdown, with the defaults of [`Server`] and
/// [`Octopus`]: the counterpart of Octopus's `GracefulServe(server, killMaster)`. Await it; before
/// that, [`Serve::with_graceful_shutdown`] adds a future that shuts the server down, as in axum.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
/// let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
/// octopus::serve("127.0.0.1:8080", app).await?;
/// # Ok(()) }
/// ```
pub fn serve<S: HttpService>(address: &str, service: S) -> Serve<S> {
    Serve {
        server: Server::new().bind(address),
        service,
    }
}

/// What [`serve`] returns: await it to serve.
#[must_use = "a server serves only once awaited"]
pub struct Serve<S> {
    server: Server,
    service: S,
}

impl<S> Serve<S> {
    /// Starts the graceful shutdown when `signal` completes, exactly as SIGTERM does; the signals
    /// keep working beside it. See [`Server::with_graceful_shutdown`].
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
    /// let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # drop(stop);
    /// octopus::serve("127.0.0.1:8080", app)
    ///     .with_graceful_shutdown(async { stopped.await.ok(); })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.server = self.server.with_graceful_shutdown(signal);
        self
    }
}

impl<S: HttpService> IntoFuture for Serve<S> {
    type Output = Result<DrainReport, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.server.serve(self.service))
    }
}

impl Server {
    /// A server with no address yet, that starts its own [`Octopus`] when it serves.
    pub fn new() -> Self {
        Server::with(None)
    }
}

impl Default for Server {
    fn default() -> Self {
        Server::new()
    }
}

impl Octopus {
    /// An HTTP server that serves through this generation, so it may be given listeners asked of
    /// it ([`Server::listener`]).
    pub fn server(&self) -> Server<Octopus> {
        Server::through(self.clone())
    }
}

impl Server<Octopus> {
    /// A server that serves through `octopus`: [`Octopus::server`].
    pub(crate) fn through(octopus: Octopus) -> Self {
        Server::with(Some(octopus))
    }

    /// Adds a listener asked of the [`Octopus`] this server serves through (with
    /// [`Octopus::listen_tcp`] or [`Octopus::listen_tcp_named`]), for example to learn the port
    /// picked for `127.0.0.1:0` before serving.
    ///
    /// ```no_run
    /// use octopus::Octopus;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
    /// let octopus = Octopus::builder().handle_signals(false).build()?;
    /// let listener = octopus.listen_tcp("127.0.0.1:0")?;
    /// println!("serving on {:?}", listener.local_addr());
    /// let handle = octopus.handle();
    /// # let app = axum::Router::new();
    /// let server = tokio::spawn(octopus.server().listener(listener).serve(app));
    /// handle.shutdown();
    /// server.await.unwrap()?;
    /// # Ok(()) }
    /// ```
    pub fn listener(mut self, listener: std::net::TcpListener) -> Self {
        self.endpoints.push(Endpoint::Listener(listener));
        self
    }
}

impl<O> Server<O> {
    fn with(octopus: Option<Octopus>) -> Self {
        Server {
            octopus,
            endpoints: Vec::new(),
            unix_mode: None,
            header_read_timeout: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            idle_grace: DEFAULT_IDLE_GRACE,
            tcp_nodelay: true,
            shutdown_signal: None,
            through: PhantomData,
        }
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

    /// Adds a TLS listener on `HOST:PORT`, with a configuration such as
    /// [`tls_config_from_files`](crate::tls_config_from_files) makes (ALPN `h2` and `http/1.1`),
    /// or one built by hand with [`octopus::rustls`](crate::rustls). Each request's
    /// [`Peer`](crate::Peer) tells the protocol ALPN settled and the server name the client asked
    /// for.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use octopus::rustls;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let (chain, key) = (vec![], rustls::pki_types::PrivateKeyDer::Pkcs8(vec![].into()));
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let mut tls = rustls::ServerConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()?
    ///     .with_no_client_auth()
    ///     .with_single_cert(chain, key)?;
    /// tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    /// let server = octopus::Server::new().bind_tls("0.0.0.0:8443", Arc::new(tls));
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn bind_tls(
        mut self,
        address: impl Into<String>,
        config: Arc<crate::rustls::ServerConfig>,
    ) -> Self {
        self.endpoints.push(Endpoint::Tls(address.into(), config));
        self
    }

    /// Starts the graceful shutdown when `signal` completes, exactly as SIGTERM or
    /// [`Handle::shutdown`](crate::Handle::shutdown) does (a pre-drain delay included). Signals
    /// keep working beside it unless [`OctopusBuilder::handle_signals`](crate::OctopusBuilder::handle_signals) switches them off; a future that
    /// never completes changes nothing, and it is dropped when the server returns.
    ///
    /// ```no_run
    /// use octopus::Server;
    ///
    /// # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
    /// # let app = axum::Router::new();
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// # drop(stop);
    /// Server::new()
    ///     .bind("127.0.0.1:8080")
    ///     .with_graceful_shutdown(async { stopped.await.ok(); })
    ///     .serve(app)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shutdown_signal = Some(Box::pin(signal));
        self
    }

    /// How long a drain waits for in-flight requests before it cuts their connections. Default
    /// 5 s; zero cuts them at once. A new process this one has to stop (a failed or cancelled
    /// upgrade) is given as long, plus a second, to drain what it accepted before it is killed.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long an HTTP/1 keep-alive connection that sends nothing after a drain begins is kept
    /// open before it is closed. A request that arrives meanwhile is answered with
    /// `Connection: close`, so a client is never cut while its next request is on the wire; so is
    /// one whose first bytes arrived before the grace ended (or it is cut at the drain deadline).
    /// A connection that has not sent its first request yet is not idle but about to: it is kept
    /// until that request, answered with `Connection: close`, or cut at the drain deadline.
    /// Default 1 s (always bounded by the drain timeout).
    ///
    /// After an upgrade, a plain HTTP/1 connection (TCP or Unix socket) needs no grace: it is
    /// relayed to the new process, which answers its next request whenever it comes. The grace
    /// applies on a shutdown, over TLS, and when the new process does not take connections.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.idle_grace = grace;
        self
    }

    /// Closes an HTTP/1 connection whose request head takes longer than `timeout` to arrive
    /// (slow-loris clients). Off by default, as in hyper: it costs a timer per request, and a drain
    /// bounds such connections anyway by its deadline.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = Some(timeout);
        self
    }

    /// Whether each accepted TCP connection (TLS included) gets `TCP_NODELAY`, which turns
    /// Nagle's algorithm off. Default `true`: a response written in several parts (a streamed
    /// body) goes out as it is written, where Nagle would hold its last small segment until the
    /// client acknowledges the previous one, which a delayed ACK can put off by 40 ms.
    ///
    /// `false` leaves each socket as the kernel accepted it, Nagle on, as `axum::serve` does by
    /// default. Worth trying for HTTP/2 with many concurrent streams on few connections, where
    /// Nagle coalesces the small frames into fewer segments: on the bench's pinned HTTP/2 load
    /// (`h2load`, 4 connections of 32 streams, the server on one core) `axum::serve` answered
    /// 65–97k requests/s with Nagle and 46–67k with `TCP_NODELAY` (octopus, with the same
    /// setting, as much as axum: bench/NOTES.md).
    pub fn tcp_nodelay(mut self, nodelay: bool) -> Self {
        self.tcp_nodelay = nodelay;
        self
    }

    /// Permission bits for the Unix sockets this server creates (e.g. `0o660`); by default the
    /// process umask decides.
    pub fn unix_mode(mut self, mode: u32) -> Self {
        self.unix_mode = Some(mode);
        self
    }

    /// Serves until this generation stops (shutdown, or hand-over to a new process), then drains.
    /// Returns once the drain is over, with what it did; the caller then exits with status 0.
    ///
    /// Fails only before the first connection: a listener cannot be made, or the pid file or the
    /// readiness report fails (the previous process, if any, then keeps serving).
    pub async fn serve<S: HttpService>(self, service: S) -> Result<DrainReport, Error> {
        let octopus = match self.octopus {
            Some(octopus) => octopus,
            None => Octopus::new()?,
        };
        let _stop_watching = self
            .shutdown_signal
            .map(|signal| watch_shutdown_signal(signal, octopus.handle().downgrade()));
        let http = Http {
            builder: Arc::new(Builders::new(self.header_read_timeout)),
            service,
            idle_grace: self.idle_grace.min(self.drain_timeout),
        };
        let mut listeners = Vec::with_capacity(self.endpoints.len());
        for endpoint in self.endpoints {
            let opened = open(&octopus, endpoint, self.unix_mode, self.tcp_nodelay)?;
            for Opened { listener, tls, key } in opened {
                let stats = octopus.track_listener(listener.describe());
                // Only plain HTTP is relayed: a TLS session cannot leave this process's memory.
                let key = key.filter(|_| tls.is_none());
                let route = key.as_ref().and_then(|key| octopus.relayed(key));
                let relay_key = key.map(|key| Arc::<str>::from(key.to_string()));
                listeners.push(Served {
                    listener: Relayed::new(listener, route),
                    connection: http.connection(tls, stats, relay_key),
                });
            }
        }
        generation::run(&octopus, listeners, self.drain_timeout).await
    }
}

/// Starts the graceful shutdown once `signal` completes, unless the returned guard is dropped
/// first (the server returned): the future does not outlive the server, and the handle is weak
/// so that it does not keep this generation alive either.
fn watch_shutdown_signal(signal: ShutdownSignal, handle: WeakHandle) -> DropGuard {
    let unwatched = CancellationToken::new();
    let cancelled = unwatched.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = signal => {
                if let Some(handle) = handle.upgrade() {
                    tracing::info!("shutdown future completed");
                    handle.shutdown();
                }
            }
            () = cancelled.cancelled() => {}
        }
    });
    unwatched.drop_guard()
}

struct Http<S> {
    builder: Arc<Builders>,
    service: S,
    idle_grace: Duration,
}

impl<S: HttpService> Http<S> {
    /// What serves each connection of one listener: a task of the current drain.
    fn connection(
        &self,
        tls: Option<Handshake>,
        stats: Arc<ListenerStats>,
        relay_key: Option<Arc<str>>,
    ) -> impl FnMut(AnyStream, PeerAddr, &Drain) + Send + 'static + use<S> {
        let builder = self.builder.clone();
        let service = self.service.clone();
        let idle_grace = self.idle_grace;
        move |stream, peer, drain| {
            let slot = stats.open();
            // The connection's own future, spawned as is: it does the drain's tracking and cut
            // itself, so the task holds one state machine rather than three nested ones.
            let hold = drain.hold();
            let draining = drain.draining();
            match tls.clone() {
                None => {
                    let input = InputProbe::of(&stream);
                    let relay = relay_key.clone().map(|key| RelayTicket {
                        key,
                        socket: stream.as_raw_fd(),
                    });
                    tokio::spawn(serve_connection(
                        &builder,
                        stream,
                        service.clone(),
                        Drained {
                            hold,
                            draining,
                            idle_grace,
                            relay,
                        },
                        slot,
                        Peer::new(peer),
                        input,
                    ));
                }
                #[cfg(feature = "tls")]
                Some(tls) => {
                    // A task of its own type: a plain connection's task is not sized for TLS.
                    let (builder, service) = (builder.clone(), service.clone());
                    let cut = hold.cut_signal();
                    tokio::spawn(async move {
                        let handshake = tokio::select! {
                            biased;
                            handshake = tls.accept(stream) => handshake,
                            () = cut => return,
                        };
                        match handshake {
                            Ok(stream) => {
                                let peer = Peer::tls(peer, stream.get_ref().1);
                                let input = InputProbe::of(stream.get_ref().0);
                                let drained = Drained {
                                    hold,
                                    draining,
                                    idle_grace,
                                    relay: None,
                                };
                                serve_connection(
                                    &builder, stream, service, drained, slot, peer, input,
                                )
                                .await
                            }
                            Err(e) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        }
                    });
                }
                #[cfg(not(feature = "tls"))]
                Some(never) => match never {},
            }
        }
    }
}

/// A listener [`open`] made.
struct Opened {
    listener: AnyListener,
    tls: Option<Handshake>,
    /// What the listener is handed over as; `None` for one this process alone serves.
    key: Option<ListenerKey>,
}

/// Opens what an endpoint asks for, through `octopus` so it is handed over on upgrades: the
/// listener and its TLS handshake if any, and for a Unix socket whose path was removed, also the
/// inherited socket that lost it.
fn open(
    octopus: &Octopus,
    endpoint: Endpoint,
    unix_mode: Option<u32>,
    nodelay: bool,
) -> Result<Vec<Opened>, Error> {
    let register = |source| Error::Io {
        what: "cannot register a listener with the runtime",
        source,
    };
    let tcp = |listener: std::net::TcpListener| {
        tokio::net::TcpListener::from_std(listener)
            .map(|listener| AnyListener::Tcp { listener, nodelay })
            .map_err(register)
    };
    let mut opened = Vec::with_capacity(1);
    let (listener, tls, key) = match endpoint {
        Endpoint::Tcp(address) => (
            tcp(octopus.listen_tcp(&address)?)?,
            None,
            Some(ListenerKey::tcp(address)),
        ),
        Endpoint::Listener(listener) => (tcp(listener)?, None, None),
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
                opened.push(Opened {
                    listener: unix(unreachable)?,
                    tls: None,
                    key: None,
                });
            }
            let key = ListenerKey::unix(path.to_string_lossy());
            (unix(listener)?, None, Some(key))
        }
        #[cfg(feature = "tls")]
        // Named apart from a plain listener on the same address, so that `-p 0` and a TLS port 0
        // are two listeners.
        Endpoint::Tls(address, config) => (
            tcp(octopus.listen_tcp_named(&format!("tls {address}"), &address)?)?,
            Some(Handshake::new(config)),
            None,
        ),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(scheme, "listening on {}", listener.describe());
    opened.push(Opened { listener, tls, key });
    Ok(opened)
}
