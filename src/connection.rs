//! One HTTP connection, served until it ends or the drain retires it.
//!
//! After a hand-over to a successor that takes them, plain HTTP/1 keep-alive connections are not
//! closed at all: once no request is in progress on one (a request that is finishes first, with a
//! keep-alive response), it is relayed to the successor ([`crate::relay`]).
//!
//! Otherwise (a shutdown, TLS), HTTP/1 keep-alive connections are retired without racing the
//! client: once the drain starts the
//! connection keeps being read, its next response carries `Connection: close` (so the client opens
//! a new connection, to the new process), and only a connection that stays idle for the idle grace
//! is closed by the server: one with part of a request received at the grace is left to finish it
//! and be answered, or to be cut at the drain deadline, and so is one whose client has not sent its
//! first request yet (it connected to send one). HTTP/2 connections get GOAWAY at once and their
//! open streams finish.
//! A connection taken over by an HTTP upgrade (WebSocket) keeps the drain open until the
//! application drops it, and fails its reads and writes at the drain deadline.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::control::ConnectionSlot;
use crate::drain::{Draining, Hold};
use crate::peer::Peer;
use crate::protocol::{Builders, Detect, HttpConnection, Wrapped};
use crate::relay::{Relay, Sending};
use crate::stream::InputProbe;
use crate::trigger::Fired;

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A tower service octopus can serve over HTTP: any `Service<Request<Incoming>>` whose response
/// body and errors hyper can use, such as an axum `Router`. Implemented for every such service.
pub trait HttpService:
    tower_service::Service<
        Request<Incoming>,
        Response = Response<Self::ResponseBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The body of the responses.
    type ResponseBody: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: tower_service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
}

/// One connection's state, shared by its request handling and its byte stream. Requests touch
/// only this (one per connection), never state shared by all connections.
struct Shared {
    draining: Draining,
    /// Keeps the drain open while the connection, or the stream an upgrade handed to the
    /// application, lives: the one drain token of the connection.
    hold: Hold,
    http2: AtomicBool,
    /// Set by the first HTTP/1 request. Before it, hyper's graceful shutdown already keeps a
    /// connection whose first head is partly read, and bytes read may be an HTTP/2 preface.
    http1: AtomicBool,
    /// Whether bytes were read that no dispatched request accounts for: the start of a request
    /// head. Hyper's graceful shutdown closes a connection between two requests even with part of
    /// the next head buffered, so the idle grace must not call it then. Set on every read that
    /// returns bytes, cleared when a request is dispatched and when the response to a request
    /// with a body is produced (its body bytes are not a next request). A body the application
    /// left unread is drained by hyper after the response, which sets this again: such a
    /// connection is then left to the client or the drain deadline rather than closed at the grace.
    unclaimed_bytes: AtomicBool,
    /// Set once a response hands the connection to the application (101 or CONNECT): from then
    /// on its stream fails at the drain deadline.
    upgraded: AtomicBool,
    /// Requests of this connection in flight, for the control socket's `status`.
    in_flight: Arc<AtomicU32>,
    /// What it takes to relay this connection to a successor; `None` for one that cannot be
    /// (TLS, or a listener not handed over).
    relay: Option<RelayTicket>,
    /// Set when the drain shuts the connection down between requests to relay it. A close hyper
    /// decides for its own reasons (the client asked for it, an error) is a close.
    retiring: AtomicBool,
    /// Set by a request taken during the drain whose client ends the connection after it
    /// (`Connection: close`, HTTP/1.0): its client waits for the close, so it is never relayed.
    client_closes: AtomicBool,
}

impl Shared {
    /// The successor to relay this connection to rather than close it, once a drain after a
    /// hand-over to one that takes this connection's listener began.
    fn relay(&self) -> Option<(&Arc<Relay>, &RelayTicket)> {
        let ticket = self.relay.as_ref()?;
        let relay = self.draining.relay()?;
        relay.accepts(&ticket.key).then_some((relay, ticket))
    }
}

/// How the drain treats one connection.
pub(crate) struct Drained {
    /// The connection's drain token.
    pub hold: Hold,
    pub draining: Draining,
    pub idle_grace: Duration,
    pub relay: Option<RelayTicket>,
}

/// A plain connection's socket and listener, which a successor can serve.
pub(crate) struct RelayTicket {
    pub key: Arc<str>,
    /// The connection's socket, owned by its stream: used only while the connection runs.
    pub socket: RawFd,
}

type Hyper<IO, S> = HttpConnection<UpgradableIo<IO>, CloseWhenDraining<S>>;

/// Serves one connection with `service` until it ends, the drain retires it (relays it to a
/// successor, or closes it), or the drain cuts it at its deadline.
pub(crate) fn serve_connection<S, IO>(
    builders: &Arc<Builders>,
    stream: IO,
    service: S,
    drained: Drained,
    slot: ConnectionSlot,
    peer: Peer,
    input: InputProbe,
) -> ServeConnection<IO, S>
where
    S: HttpService,
    IO: Detect,
{
    let Drained {
        hold,
        draining,
        idle_grace,
        relay,
    } = drained;
    let shared = Arc::new(Shared {
        draining,
        hold,
        http2: AtomicBool::new(false),
        http1: AtomicBool::new(false),
        unclaimed_bytes: AtomicBool::new(false),
        upgraded: AtomicBool::new(false),
        in_flight: slot.in_flight(),
        relay,
        retiring: AtomicBool::new(false),
        client_closes: AtomicBool::new(false),
    });
    let service = CloseWhenDraining {
        inner: service,
        peer: peer.clone(),
        shared: shared.clone(),
    };
    let io = UpgradableIo {
        inner: stream,
        shared: shared.clone(),
        cut: None,
        relaying: Relaying::NotTried,
    };
    ServeConnection {
        draining: shared.draining.signal(),
        connection: HttpConnection::new(io, service, builders),
        phase: Phase::Serving,
        timers: None,
        shared,
        idle_grace,
        peer,
        input,
        _slot: slot,
    }
}

/// Where a connection is in its life; the drain moves it forward, never back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the drain: only the connection and the drain signal are polled.
    Serving,
    /// The drain started on a connection not known to be HTTP/2: waiting out the idle grace.
    Grace,
    /// The grace ended before the client's first request was dispatched: its client connected to
    /// send one (perhaps slowed down, or still building it), and a first request that fails is
    /// one no client retries. An HTTP/1 request is answered with `Connection: close`; HTTP/2
    /// gets GOAWAY once it shows; the deadline cuts a client that never sends.
    FirstRequest,
    /// The drain after a hand-over to a successor that takes this connection: waiting until no
    /// request is in progress, to relay it then.
    Relaying,
    /// Told to shut down gracefully, or left to finish the request arriving on it.
    Finishing,
}

pin_project_lite::pin_project! {
    /// One connection as one future: the work of two `select!`s and of the drain's task wrapper,
    /// with a timer and the deadline signal made only once the drain starts.
    pub(crate) struct ServeConnection<IO, S>
    where
        S: HttpService,
        IO: Detect,
    {
        #[pin]
        connection: Hyper<IO, S>,
        #[pin]
        draining: Fired,
        phase: Phase,
        // Made once the drain starts, which few connections see: an idle one stays small.
        timers: Option<Pin<Box<DrainTimers>>>,
        shared: Arc<Shared>,
        idle_grace: Duration,
        peer: Peer,
        // Asked when the grace ends, for a next request Tokio has not seen arrive yet.
        input: InputProbe,
        _slot: ConnectionSlot,
    }
}

pin_project_lite::pin_project! {
    struct DrainTimers {
        #[pin]
        grace: Sleep,
        // The drain deadline: the connection is dropped, closing its socket.
        #[pin]
        cut: Fired,
    }
}

impl<IO, S> Future for ServeConnection<IO, S>
where
    S: HttpService,
    IO: Detect,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // Each pass moves the phase forward, so this loops at most five times.
        loop {
            // The connection first: a wake-up is nearly always its I/O.
            if let Poll::Ready(served) = this.connection.as_mut().poll(cx) {
                if let Err(e) = served {
                    tracing::debug!(peer = %this.peer.address(), "connection ended with an error: {e}");
                }
                return Poll::Ready(());
            }
            if *this.phase == Phase::Serving {
                ready!(this.draining.as_mut().poll(cx));
                *this.timers = Some(Box::pin(DrainTimers {
                    grace: tokio::time::sleep(*this.idle_grace),
                    cut: this.shared.hold.cut_signal(),
                }));
                if this.shared.http2.load(Ordering::Relaxed) {
                    // GOAWAY at once; open streams finish.
                    *this.phase = Phase::Finishing;
                    this.connection.as_mut().graceful_shutdown();
                    continue;
                }
                *this.phase = if this.shared.relay().is_some() {
                    Phase::Relaying
                } else {
                    Phase::Grace
                };
            }
            let Some(timers) = this.timers.as_mut() else {
                return Poll::Pending;
            };
            let timers = timers.as_mut().project();
            if timers.cut.poll(cx).is_ready() {
                return Poll::Ready(());
            }
            if *this.phase == Phase::Grace && timers.grace.poll(cx).is_ready() {
                let http1 = this.shared.http1.load(Ordering::Relaxed);
                if !http1 && !this.shared.http2.load(Ordering::Relaxed) {
                    *this.phase = Phase::FirstRequest;
                    continue;
                }
                *this.phase = Phase::Finishing;
                // With part of a request received, or one waiting in the socket, it is left to
                // finish: its response carries `Connection: close`, after which hyper closes the
                // connection; a client that never finishes it is cut at the deadline.
                let started = this.shared.unclaimed_bytes.load(Ordering::Relaxed)
                    // SAFETY: the socket belongs to `connection`, which has not ended (polled
                    // above), and HTTP/1 hands its socket away only on an upgrade, which ends it.
                    || unsafe { this.input.has_input() };
                if !(http1 && started) {
                    this.connection.as_mut().graceful_shutdown();
                    continue;
                }
            }
            if *this.phase == Phase::Relaying && this.shared.relay().is_none() {
                // The successor went away: retired as without one.
                *this.phase = Phase::Grace;
                continue;
            }
            if *this.phase == Phase::Relaying {
                // Between requests, with nothing half-read: hyper closes an idle connection at
                // once, and one finishing a response once it is written; the close relays it.
                // Requests in progress end inside `connection`'s poll, so this sees them end.
                let idle = this.shared.in_flight.load(Ordering::Relaxed) == 0
                    && !this.shared.unclaimed_bytes.load(Ordering::Relaxed);
                if idle {
                    *this.phase = Phase::Finishing;
                    this.shared.retiring.store(true, Ordering::Relaxed);
                    this.connection.as_mut().graceful_shutdown();
                    continue;
                }
                return Poll::Pending;
            }
            if *this.phase == Phase::FirstRequest && this.shared.http2.load(Ordering::Relaxed) {
                *this.phase = Phase::Finishing;
                this.connection.as_mut().graceful_shutdown();
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// The tower service as hyper's, in one layer so that a request is moved once: gives each
/// request its connection's [`Peer`], marks HTTP/1 responses `Connection: close` once the drain
/// has started, and notices upgrades. Unlike hyper-util's `TowerToHyperService`, a service that
/// is ready at once (axum's `Router`, `service_fn`) is called in `call`, so the response future
/// is the service's own, with no readiness state machine holding the request around it.
struct CloseWhenDraining<S> {
    inner: S,
    peer: Peer,
    shared: Arc<Shared>,
}

impl<S: HttpService> hyper::service::Service<Request<Incoming>> for CloseWhenDraining<S> {
    type Response = Response<S::ResponseBody>;
    type Error = BoxError;
    type Future = CloseWhenDrainingFuture<Call<S>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let http1 = request.version() < Version::HTTP_2;
        if http1 {
            self.shared.http1.store(true, Ordering::Relaxed);
            self.shared.unclaimed_bytes.store(false, Ordering::Relaxed);
        } else {
            self.shared.http2.store(true, Ordering::Relaxed);
        }
        // Asked only during the drain: a connection the drain retires between requests is
        // relayed unless its client means to end it.
        if http1 && self.shared.draining.is_draining() && client_closes(&request) {
            self.shared.client_closes.store(true, Ordering::Relaxed);
        }
        let connect = request.method() == Method::CONNECT;
        // Without a body, bytes read while the request is served can only be a next request.
        let has_body = !request.body().is_end_stream();
        let watch = http1.then_some(Http1Watch { connect, has_body });
        self.peer.attach(&mut request);
        self.shared.in_flight.fetch_add(1, Ordering::Relaxed);
        CloseWhenDrainingFuture {
            inner: Call::new(self.inner.clone(), request),
            request: Counted {
                shared: self.shared.clone(),
                watch,
            },
        }
    }
}

/// Whether the client ends the connection after this request.
fn client_closes(request: &Request<Incoming>) -> bool {
    request.version() < Version::HTTP_11
        || request.headers().get_all(CONNECTION).iter().any(|value| {
            value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

pin_project_lite::pin_project! {
    /// A request given to a tower service, once it is ready.
    #[project = CallProj]
    enum Call<S>
    where
        S: HttpService,
    {
        Called { #[pin] future: S::Future },
        // Boxed: rare, and the future hyper holds for every request stays the size of the
        // service's own.
        Waiting { waiting: Box<(S, Option<Request<Incoming>>)> },
        Failed { error: Option<BoxError> },
    }
}

impl<S: HttpService> Call<S> {
    fn new(mut service: S, request: Request<Incoming>) -> Self {
        // A service not ready yet is asked again, with the task's waker, by the future.
        match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Call::Called {
                future: service.call(request),
            },
            Poll::Ready(Err(error)) => Call::Failed {
                error: Some(error.into()),
            },
            Poll::Pending => Call::Waiting {
                waiting: Box::new((service, Some(request))),
            },
        }
    }
}

impl<S: HttpService> Future for Call<S> {
    type Output = Result<Response<S::ResponseBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                CallProj::Called { future } => return future.poll(cx).map_err(Into::into),
                CallProj::Waiting { waiting } => {
                    let (service, request) = &mut **waiting;
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let request = request.take().expect("a request is called once");
                    let future = service.call(request);
                    self.set(Call::Called { future });
                }
                CallProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

/// What the response to an HTTP/1 request is checked for.
struct Http1Watch {
    connect: bool,
    has_body: bool,
}

/// A request in flight on its connection, counted until dropped: one reference to the
/// connection's state per request, for the count and the response's checks.
struct Counted {
    shared: Arc<Shared>,
    watch: Option<Http1Watch>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    struct CloseWhenDrainingFuture<F> {
        #[pin]
        inner: F,
        request: Counted,
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
        let shared = &this.request.shared;
        if let Some(watch) = this.request.watch.as_ref() {
            if watch.has_body {
                shared.unclaimed_bytes.store(false, Ordering::Relaxed);
            }
            let status = response.status();
            if status == StatusCode::SWITCHING_PROTOCOLS || (watch.connect && status.is_success()) {
                shared.upgraded.store(true, Ordering::Relaxed);
            } else if shared.draining.is_draining() && shared.relay().is_none() {
                // A connection the drain relays stays open for its client: its next request
                // goes to the successor.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// The connection's byte stream; once upgraded, it fails at the drain deadline. Its shutdown
/// relays it to the successor instead, when the drain allows.
struct UpgradableIo<IO> {
    inner: IO,
    shared: Arc<Shared>,
    cut: Option<Pin<Box<Fired>>>,
    relaying: Relaying,
}

/// Where a connection's relay to the successor is.
enum Relaying {
    NotTried,
    /// The channel was full: waiting for the successor to have it.
    Queued(oneshot::Receiver<bool>),
    /// Sent, or not to be: the stream is shut down as usual.
    Done {
        sent: bool,
    },
}

impl<IO> UpgradableIo<IO> {
    /// Whether the drain cut this upgraded connection; registers for the cut otherwise. Inlined
    /// to one load on every read and write of a connection that is not upgraded.
    #[inline]
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        self.shared.upgraded.load(Ordering::Relaxed) && self.poll_cut(cx)
    }

    /// Hands the socket to the successor if the drain relays this connection and nothing of a
    /// next request was read: `true` once the successor has it, and the stream must then be
    /// dropped without a shutdown (which would end the connection for the successor too).
    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            match &mut self.relaying {
                Relaying::Done { sent } => return Poll::Ready(*sent),
                Relaying::Queued(outcome) => {
                    let sent = ready!(Pin::new(outcome).poll(cx)).unwrap_or(false);
                    self.relaying = Relaying::Done { sent };
                }
                Relaying::NotTried => {
                    let shared = &self.shared;
                    let relay = shared.relay().filter(|_| {
                        shared.retiring.load(Ordering::Relaxed)
                            && !shared.client_closes.load(Ordering::Relaxed)
                            && !shared.unclaimed_bytes.load(Ordering::Relaxed)
                            && !shared.upgraded.load(Ordering::Relaxed)
                    });
                    self.relaying = match relay {
                        None => Relaying::Done { sent: false },
                        Some((relay, ticket)) => {
                            // SAFETY: the socket is owned by `inner`, which lives as long as
                            // `self`; the borrow ends with this call.
                            let socket = unsafe { BorrowedFd::borrow_raw(ticket.socket) };
                            match relay.send(socket, &ticket.key) {
                                Sending::Sent => Relaying::Done { sent: true },
                                Sending::Queued(outcome) => Relaying::Queued(outcome),
                                Sending::Failed => Relaying::Done { sent: false },
                            }
                        }
                    };
                }
            }
        }
    }

    #[cold]
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> bool {
        let hold = &self.shared.hold;
        let cut = self.cut.get_or_insert_with(|| Box::pin(hold.cut_signal()));
        cut.as_mut().poll(cx).is_ready()
    }
}

impl<IO: Detect> Wrapped for UpgradableIo<IO> {
    type Inner = IO;

    fn inner_mut(&mut self) -> &mut IO {
        &mut self.inner
    }

    fn into_inner(self) -> IO {
        self.inner
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "cut at the drain deadline",
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for UpgradableIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.shared.unclaimed_bytes.store(true, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for UpgradableIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_cut(cx) {
            return Poll::Ready(Err(cut_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if ready!(self.poll_relay(cx)) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio::time::{Instant, timeout};

    use crate::control::ListenerStats;
    use crate::drain::{Drain, DrainReport};
    use crate::protocol::Protocol;

    /// The test client speaks HTTP/1.
    impl Detect for DuplexStream {
        fn poll_detect(&mut self, _: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
            Poll::Ready(Ok(Protocol::Http1))
        }
    }

    const GRACE: Duration = Duration::from_millis(50);
    /// The grace of a witness connection: the runtime handles the others' grace before its close.
    const LATER_GRACE: Duration = Duration::from_millis(300);
    /// Bounds every wait for the server.
    const WAIT: Duration = Duration::from_secs(10);
    /// Shorter than `WAIT`, so a connection held to the deadline shows as cut.
    const DEADLINE: Duration = Duration::from_secs(3);

    /// A connection served with `grace` by a service that reads each request body whole, answers
    /// `pong`, and reports each call on `called`.
    fn open(drain: &Drain, grace: Duration, called: mpsc::UnboundedSender<()>) -> DuplexStream {
        let (client, server) = tokio::io::duplex(1024);
        serve(
            drain,
            grace,
            server,
            called,
            InputProbe::Scripted(Arc::new(|| false)),
        );
        client
    }

    /// Serves `server` as `open` does, with `input` as the kernel's view of its socket.
    fn serve(
        drain: &Drain,
        grace: Duration,
        server: impl Detect,
        called: mpsc::UnboundedSender<()>,
        input: InputProbe,
    ) {
        let service = tower::service_fn(move |request: Request<Incoming>| {
            let _ = called.send(());
            async move {
                request.into_body().collect().await?;
                Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"pong\n"))))
            }
        });
        let builders = Arc::new(Builders::new(None));
        let slot = ListenerStats::new("test".into()).open();
        tokio::spawn(serve_connection(
            &builders,
            server,
            service,
            Drained {
                hold: drain.hold(),
                draining: drain.draining(),
                idle_grace: grace,
                relay: None,
            },
            slot,
            Peer::new(crate::peer::PeerAddr::Tcp(([127, 0, 0, 1], 1).into())),
            input,
        ));
    }

    fn calls() -> mpsc::UnboundedSender<()> {
        mpsc::unbounded_channel().0
    }

    /// Reads one `pong` response, lower-cased.
    async fn response(client: &mut DuplexStream) -> String {
        let mut raw = Vec::new();
        let mut chunk = [0u8; 1024];
        while !raw.ends_with(b"\r\n\r\npong\n") {
            let n = timeout(WAIT, client.read(&mut chunk))
                .await
                .expect("no response in time")
                .unwrap();
            assert!(
                n > 0,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(raw).unwrap().to_ascii_lowercase()
    }

    /// One exchange, after which the connection is a reused keep-alive connection.
    async fn exchange(client: &mut DuplexStream) {
        client
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let reply = response(client).await;
        assert!(
            reply.starts_with("http/1.1 200") && !reply.contains("connection: close"),
            "{reply}"
        );
    }

    async fn closed(client: &mut DuplexStream) {
        let mut rest = Vec::new();
        timeout(WAIT, client.read_to_end(&mut rest))
            .await
            .expect("the server did not close the connection in time")
            .unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }

    fn start_drain(drain: &Drain, deadline: Duration) -> JoinHandle<DrainReport> {
        let drain = drain.clone();
        tokio::spawn(async move { drain.run(deadline).await })
    }

    #[tokio::test]
    async fn a_connection_without_a_request_at_the_grace_is_answered_when_one_comes() {
        answered_after_the_grace(false, b"", b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n").await;
    }

    #[tokio::test]
    async fn a_connection_that_never_sends_a_request_is_cut_at_the_deadline() {
        let drain = Drain::new();
        let _fresh = open(&drain, GRACE, calls());
        let started = Instant::now();
        let report = start_drain(&drain, Duration::from_millis(300))
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{report:?}"
        );
        assert_eq!((report.open_at_start, report.cut), (1, 1));
    }

    #[tokio::test]
    async fn a_silent_keep_alive_connection_is_closed_at_the_grace() {
        let drain = Drain::new();
        let mut client = open(&drain, GRACE, calls());
        exchange(&mut client).await;
        let started = Instant::now();
        let run = start_drain(&drain, DEADLINE);
        closed(&mut client).await;
        assert!(started.elapsed() >= GRACE, "closed before the grace");
        let report = run.await.unwrap();
        assert_eq!((report.open_at_start, report.cut), (1, 0));
    }

    /// Starts a drain on a connection that was used once (`used`) or not, with `before` received
    /// at its start; once the grace is over (a witness with a later grace is closed), sends
    /// `after`, and asserts that the request is answered with `Connection: close`, the
    /// connection then closed, and nothing cut.
    async fn answered_after_the_grace(used: bool, before: &[u8], after: &[u8]) {
        let drain = Drain::new();
        let mut late = open(&drain, GRACE, calls());
        let mut witness = open(&drain, LATER_GRACE, calls());
        if used {
            exchange(&mut late).await;
        }
        exchange(&mut witness).await;
        late.write_all(before).await.unwrap();
        let run = start_drain(&drain, DEADLINE);
        closed(&mut witness).await;
        late.write_all(after).await.unwrap();
        let reply = response(&mut late).await;
        assert!(
            reply.starts_with("http/1.1 200") && reply.contains("connection: close"),
            "{reply}"
        );
        closed(&mut late).await;
        let report = run.await.unwrap();
        assert_eq!((report.open_at_start, report.cut), (2, 0));
    }

    /// The server's side of a connection whose next bytes have reached the socket but not
    /// Tokio, as on a server too busy to turn its reactor: reads stay pending while `unseen`,
    /// until the probe, which asks the socket, is consulted.
    struct Unseen {
        inner: DuplexStream,
        unseen: Arc<AtomicBool>,
        reader: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl AsyncRead for Unseen {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.unseen.load(Ordering::SeqCst) {
                *self.reader.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Unseen {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl Detect for Unseen {
        fn poll_detect(&mut self, _: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
            Poll::Ready(Ok(Protocol::Http1))
        }
    }

    #[tokio::test]
    async fn a_request_in_the_socket_but_unseen_at_the_grace_is_answered() {
        let drain = Drain::new();
        let (mut client, server) = tokio::io::duplex(1024);
        let unseen = Arc::new(AtomicBool::new(false));
        let reader = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let probe = {
            let (unseen, reader) = (unseen.clone(), reader.clone());
            // The socket holds the request: say so, and let the reactor catch up.
            move || {
                let waiting = unseen.swap(false, Ordering::SeqCst);
                if let Some(waker) = reader.lock().unwrap().take() {
                    waker.wake();
                }
                waiting
            }
        };
        let server = Unseen {
            inner: server,
            unseen: unseen.clone(),
            reader,
        };
        serve(
            &drain,
            GRACE,
            server,
            calls(),
            InputProbe::Scripted(Arc::new(probe)),
        );
        exchange(&mut client).await;
        unseen.store(true, Ordering::SeqCst);
        client
            .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let run = start_drain(&drain, DEADLINE);
        let reply = response(&mut client).await;
        assert!(
            reply.starts_with("http/1.1 200") && reply.contains("connection: close"),
            "{reply}"
        );
        assert!(!unseen.load(Ordering::SeqCst), "answered without the probe");
        closed(&mut client).await;
        let report = run.await.unwrap();
        assert_eq!((report.open_at_start, report.cut), (1, 0));
    }

    #[tokio::test]
    async fn a_head_half_received_at_the_grace_is_answered_once_complete() {
        answered_after_the_grace(true, b"GET /ping HTTP/1.1\r\nHo", b"st: x\r\n\r\n").await;
    }

    #[tokio::test]
    async fn a_first_head_half_received_at_the_grace_is_answered_once_complete() {
        answered_after_the_grace(false, b"GET /ping HTTP/1.1\r\nHo", b"st: x\r\n\r\n").await;
    }

    #[tokio::test]
    async fn a_head_never_completed_is_cut_at_the_deadline() {
        let drain = Drain::new();
        let mut late = open(&drain, GRACE, calls());
        exchange(&mut late).await;
        late.write_all(b"GET /ping HTTP/1.1\r\nHo").await.unwrap();
        let report = start_drain(&drain, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!((report.open_at_start, report.cut), (1, 1));
        closed(&mut late).await;
    }

    #[tokio::test]
    async fn a_body_read_after_dispatch_does_not_keep_an_idle_connection_open() {
        let drain = Drain::new();
        let (called, mut calls) = mpsc::unbounded_channel();
        let mut client = open(&drain, GRACE, called);
        client
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nfirst")
            .await
            .unwrap();
        timeout(WAIT, calls.recv())
            .await
            .expect("the request is dispatched");
        client.write_all(b"half.").await.unwrap();
        let reply = response(&mut client).await;
        assert!(reply.starts_with("http/1.1 200"), "{reply}");
        let run = start_drain(&drain, DEADLINE);
        closed(&mut client).await;
        let report = run.await.unwrap();
        assert_eq!((report.open_at_start, report.cut), (1, 0));
    }
}
