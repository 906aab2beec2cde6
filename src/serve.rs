//! The one-call HTTP entry: serve a tower service (an axum `Router` as is) gracefully.
//!
//! HTTP/1 keep-alive connections are retired without racing the client: once the drain starts,
//! each connection keeps being read, its next response carries `Connection: close` (so the client
//! opens a new connection, to the new process), and only a connection that stays idle for
//! [`Config::idle_grace`] is closed by the server. HTTP/2 connections get GOAWAY at once and their
//! open streams finish.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::drain::{Drain, DrainReport, Draining};
use crate::error::Error;
use crate::lifecycle::{Octopus, Stop};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Longest pause of an accept loop after an error such as running out of file descriptors.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

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
    addresses: Vec<String>,
    listeners: Vec<std::net::TcpListener>,
    octopus: Option<Octopus>,
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
pub async fn serve<S, B>(address: &str, service: S) -> Result<DrainReport, Error>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
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
        self.listeners.push(listener);
        self
    }

    /// Adds a `HOST:PORT` to listen on (port 0: any free port, kept across upgrades).
    pub fn bind(mut self, address: impl Into<String>) -> Self {
        self.addresses.push(address.into());
        self
    }

    /// Serves until this generation stops (shutdown, or hand-over to a new process), then drains.
    /// Returns once the drain is over; the caller then exits with status 0.
    pub async fn serve<S, B>(self, service: S) -> Result<DrainReport, Error>
    where
        S: tower_service::Service<Request<Incoming>, Response = Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let octopus = match self.octopus {
            Some(octopus) => octopus,
            None if self.listeners.is_empty() => Octopus::new(self.config.clone())?,
            None => return Err(Error::ListenerWithoutOctopus),
        };
        let mut std_listeners = self.listeners;
        for address in &self.addresses {
            std_listeners.push(octopus.listen_tcp(address)?);
        }
        let mut listeners = Vec::with_capacity(std_listeners.len());
        for std_listener in std_listeners {
            let listener = TcpListener::from_std(std_listener).map_err(|source| Error::Io {
                what: "cannot register a listener with the runtime",
                source,
            })?;
            if let Ok(local) = listener.local_addr() {
                tracing::info!("listening on {local}");
            }
            listeners.push(listener);
        }
        let http = Http {
            builder: Arc::new(auto::Builder::new(TokioExecutor::new())),
            service,
            drain: Drain::new(),
            idle_grace: self.config.idle_grace.min(self.config.drain_timeout),
        };
        let stop_accepting = CancellationToken::new();
        let accept_loops: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(http.clone().accept_loop(listener, stop_accepting.clone()))
            })
            .collect();
        octopus.ready()?;
        let stop = octopus.stopped().await;
        stop_accepting.cancel();
        let mut listeners = Vec::with_capacity(accept_loops.len());
        for accept_loop in accept_loops {
            if let Ok(listener) = accept_loop.await {
                listeners.push(listener);
            }
        }
        match stop {
            Stop::Shutdown => {
                octopus.close_listeners();
                for listener in listeners {
                    http.accept_queued(listener);
                }
            }
            Stop::Upgraded { .. } => drop(listeners),
        }
        let report = http.drain.run(self.config.drain_timeout).await;
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

impl<S, B> Http<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Accepts until told to stop, then gives the listener back.
    async fn accept_loop(self, listener: TcpListener, stop: CancellationToken) -> TcpListener {
        let mut backoff = Duration::ZERO;
        loop {
            let accepted = tokio::select! {
                biased;
                () = stop.cancelled() => return listener,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::ZERO;
                    self.spawn_connection(stream, peer);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                    tracing::warn!(error = %e, ?backoff, "accept failed; retrying after a pause");
                    tokio::select! {
                        () = stop.cancelled() => return listener,
                        () = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    /// Serves the connections the kernel already queued, so a shutdown answers every client whose
    /// connection was established before the listener closed.
    fn accept_queued(&self, listener: TcpListener) {
        let Ok(listener) = listener.into_std() else {
            return;
        };
        while let Ok((stream, peer)) = listener.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| TcpStream::from_std(stream));
            match stream {
                Ok(stream) => self.spawn_connection(stream, peer),
                Err(e) => tracing::debug!(error = %e, "cannot serve a queued connection"),
            }
        }
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr) {
        // Small responses go out at once instead of waiting for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let builder = self.builder.clone();
        let service = self.service.clone();
        let idle_grace = self.idle_grace;
        self.drain.spawn(move |draining| async move {
            if let Err(e) = serve_connection(&builder, stream, service, draining, idle_grace).await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

async fn serve_connection<S, B>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    service: S,
    draining: Draining,
    idle_grace: Duration,
) -> Result<(), BoxError>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let http2 = Arc::new(AtomicBool::new(false));
    let service = CloseWhenDraining {
        inner: TowerToHyperService::new(service),
        draining: draining.clone(),
        http2: http2.clone(),
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return result,
        () = draining.wait() => {}
    }
    if !http2.load(Ordering::Relaxed) {
        tokio::select! {
            result = connection.as_mut() => return result,
            () = tokio::time::sleep(idle_grace) => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// Marks HTTP/1 responses `Connection: close` once the drain has started.
#[derive(Clone)]
struct CloseWhenDraining<S> {
    inner: S,
    draining: Draining,
    http2: Arc<AtomicBool>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for CloseWhenDraining<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = CloseWhenDrainingFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let http1 = request.version() < Version::HTTP_2;
        if !http1 {
            self.http2.store(true, Ordering::Relaxed);
        }
        CloseWhenDrainingFuture {
            inner: self.inner.call(request),
            draining: http1.then(|| self.draining.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    struct CloseWhenDrainingFuture<F> {
        #[pin]
        inner: F,
        draining: Option<Draining>,
    }
}

impl<F, B, E> Future for CloseWhenDrainingFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if this.draining.as_ref().is_some_and(Draining::is_draining) {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(response))
    }
}
