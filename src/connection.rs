//! One HTTP connection, served until it ends or the drain retires it.
//!
//! HTTP/1 keep-alive connections are retired without racing the client: once the drain starts the
//! connection keeps being read, its next response carries `Connection: close` (so the client opens
//! a new connection, to the new process), and only a connection that stays idle for the idle grace
//! is closed by the server. HTTP/2 connections get GOAWAY at once and their open streams finish.
//! A connection taken over by an HTTP upgrade (WebSocket) keeps the drain open until the
//! application drops it, and fails its reads and writes at the drain deadline.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::drain::{Drain, Draining, Hold};
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
    drain: Drain,
    http2: AtomicBool,
    /// Set once a response hands the connection to the application (101 or CONNECT).
    upgraded: OnceLock<Hold>,
}

/// Serves one connection with `service` until it ends, the drain retires it, or the drain cuts it.
pub(crate) async fn serve_connection<S, IO>(
    builder: &auto::Builder<TokioExecutor>,
    stream: IO,
    service: S,
    drain: Drain,
    draining: Draining,
    idle_grace: Duration,
) -> Result<(), BoxError>
where
    S: HttpService,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared {
        draining: draining.clone(),
        drain,
        http2: AtomicBool::new(false),
        upgraded: OnceLock::new(),
    });
    let service = CloseWhenDraining {
        inner: TowerToHyperService::new(service),
        shared: shared.clone(),
    };
    let io = UpgradableIo {
        inner: stream,
        shared: shared.clone(),
        cut: None,
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    // `biased`: poll in order, without the random start a fair select draws on every wake-up.
    tokio::select! {
        biased;
        result = connection.as_mut() => return result,
        () = draining.wait() => {}
    }
    if !shared.http2.load(Ordering::Relaxed) {
        tokio::select! {
            biased;
            result = connection.as_mut() => return result,
            () = tokio::time::sleep(idle_grace) => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    connection.await
}

/// Marks HTTP/1 responses `Connection: close` once the drain has started, and notices upgrades.
struct CloseWhenDraining<S> {
    inner: S,
    shared: Arc<Shared>,
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
            self.shared.http2.store(true, Ordering::Relaxed);
        }
        let connect = request.method() == Method::CONNECT;
        CloseWhenDrainingFuture {
            inner: self.inner.call(request),
            watch: http1.then(|| Http1Watch {
                shared: self.shared.clone(),
                connect,
            }),
        }
    }
}

struct Http1Watch {
    shared: Arc<Shared>,
    connect: bool,
}

pin_project_lite::pin_project! {
    struct CloseWhenDrainingFuture<F> {
        #[pin]
        inner: F,
        watch: Option<Http1Watch>,
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
        if let Some(watch) = this.watch.as_ref() {
            let status = response.status();
            if status == StatusCode::SWITCHING_PROTOCOLS || (watch.connect && status.is_success()) {
                let _ = watch.shared.upgraded.set(watch.shared.drain.hold());
            } else if watch.shared.draining.is_draining() {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// The connection's byte stream; once upgraded, it fails at the drain deadline.
struct UpgradableIo<IO> {
    inner: IO,
    shared: Arc<Shared>,
    cut: Option<Pin<Box<Fired>>>,
}

impl<IO> UpgradableIo<IO> {
    /// Whether the drain cut this upgraded connection; registers for the cut otherwise.
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(hold) = self.shared.upgraded.get() else {
            return false;
        };
        let cut = self.cut.get_or_insert_with(|| Box::pin(hold.cut_signal()));
        cut.as_mut().poll(cx).is_ready()
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
