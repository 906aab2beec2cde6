//! The one-call HTTP entry: serve a tower service (an axum `Router` as is) gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::accept::{accept_loop, accept_queued};
use crate::config::Config;
use crate::connection::{serve_connection, BoxError};
use crate::drain::{Drain, DrainReport};
use crate::error::Error;
use crate::lifecycle::{Octopus, Stop};

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
        let mut http = Http {
            builder: Arc::new(auto::Builder::new(TokioExecutor::new())),
            service,
            drain: Drain::new(),
            idle_grace: self.config.idle_grace.min(self.config.drain_timeout),
        };
        let drain_timeout = self.config.drain_timeout;
        let mut earlier_drains: Vec<JoinHandle<DrainReport>> = Vec::new();
        let mut first = true;
        let report = loop {
            let stop_accepting = CancellationToken::new();
            let accept_loops: Vec<_> = listeners
                .drain(..)
                .map(|listener| {
                    let http = http.clone();
                    tokio::spawn(accept_loop(
                        listener,
                        stop_accepting.clone(),
                        move |stream, peer| http.spawn_connection(stream, peer),
                    ))
                })
                .collect();
            if std::mem::take(&mut first) {
                octopus.ready()?;
            }
            let stop = octopus.stopped().await;
            stop_accepting.cancel();
            for accept_loop in accept_loops {
                if let Ok(listener) = accept_loop.await {
                    listeners.push(listener);
                }
            }
            if stop == Stop::Shutdown {
                octopus.close_listeners();
                for listener in listeners.drain(..) {
                    accept_queued(listener, |stream, peer| http.spawn_connection(stream, peer));
                }
                break http.drain.run(drain_timeout).await;
            }
            let drain = http.drain.clone();
            let mut draining = tokio::spawn(async move { drain.run(drain_timeout).await });
            tokio::select! {
                report = &mut draining => break report.unwrap_or_default(),
                () = octopus.resumed() => {
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

impl<S, B> Http<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr) {
        // Small responses go out at once instead of waiting for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        let builder = self.builder.clone();
        let service = self.service.clone();
        let drain = self.drain.clone();
        let idle_grace = self.idle_grace;
        self.drain.spawn(move |draining| async move {
            if let Err(e) =
                serve_connection(&builder, stream, service, drain, draining, idle_grace).await
            {
                tracing::debug!(%peer, "connection ended with an error: {e}");
            }
        });
    }
}
