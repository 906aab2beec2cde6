//! Which HTTP a connection speaks, decided once when it opens, and hyper's own connection for
//! it. hyper-util's auto builder decides by reading the first bytes, so it must replay them
//! through a wrapper that every read of the connection's life goes through; here a plain socket
//! is peeked instead (the bytes stay in the kernel for hyper to read) and TLS goes by ALPN.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustix::net::RecvFlags;
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::time::Sleep;

use crate::connection::BoxError;
use crate::stream::AnyStream;

/// What an HTTP/2 client sends first (RFC 9113, 3.4); no HTTP/1 request starts with it.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// A stream that tells which HTTP its client speaks without consuming any of its bytes.
pub(crate) trait Detect: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn poll_detect(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>>;
}

/// A stream served over HTTP/1 through a wrapper (an upgrade hands it to the application), and
/// over HTTP/2, which cannot be upgraded, as the bare stream.
pub(crate) trait Wrapped: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Inner: Detect;
    fn inner_mut(&mut self) -> &mut Self::Inner;
    fn into_inner(self) -> Self::Inner;
}

impl Detect for AnyStream {
    fn poll_detect(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
        match self {
            AnyStream::Tcp(stream) => poll_peek_preface(stream, cx),
            AnyStream::Unix(stream) => poll_peek_preface(stream, cx),
        }
    }
}

#[cfg(feature = "tls")]
impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Detect
    for tokio_rustls::server::TlsStream<IO>
{
    /// HTTP/2 over TLS is negotiated by ALPN (RFC 9113, 3.2); without it, HTTP/1.
    fn poll_detect(&mut self, _: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
        Poll::Ready(Ok(match self.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        }))
    }
}

/// A socket registered with the runtime, that can wait to be readable and peek.
trait Peek: std::os::fd::AsFd {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_read_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! peek {
    ($stream:ty) => {
        impl Peek for $stream {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$stream>::poll_read_ready(self, cx)
            }
            fn try_read_io<R>(&self, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
                self.try_io(Interest::READABLE, f)
            }
        }
    };
}
peek!(tokio::net::TcpStream);
peek!(tokio::net::UnixStream);

/// HTTP/2 once the first bytes are the whole preface, HTTP/1 as soon as they differ from it (or
/// the client closed: hyper's HTTP/1 ends such a connection quietly). A preface that has only
/// partly arrived waits for more: `WouldBlock` clears the socket's readiness, so the next wait
/// ends only when more bytes come.
fn poll_peek_preface<S: Peek>(stream: &S, cx: &mut Context<'_>) -> Poll<io::Result<Protocol>> {
    // Bounds the loop: each pass either decides or waits for the next readiness.
    for _ in 0..64 {
        ready!(stream.poll_read_ready(cx))?;
        let peeked = stream.try_read_io(|| {
            let mut first = [0u8; PREFACE.len()];
            let (n, _) = rustix::net::recv(stream, &mut first[..], RecvFlags::PEEK)?;
            if n == 0 || first[..n] != PREFACE[..n] {
                Ok(Protocol::Http1)
            } else if n == PREFACE.len() {
                Ok(Protocol::Http2)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match peeked {
            Ok(protocol) => return Poll::Ready(Ok(protocol)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    // Woken that often without a decision: yield to the runtime, and go on next time.
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// hyper's builders for both protocols, shared by the connections of a server.
pub(crate) struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// Also bounds the wait for the first bytes, which tell the protocol.
    header_read_timeout: Option<Duration>,
}

impl Builders {
    /// HTTP/1 and HTTP/2 as hyper configures them by default; with a header-read timeout, hyper
    /// gets a timer to enforce it.
    pub fn new(header_read_timeout: Option<Duration>) -> Self {
        let mut http1 = http1::Builder::new();
        if let Some(timeout) = header_read_timeout {
            http1.timer(TokioTimer::new()).header_read_timeout(timeout);
        }
        Builders {
            http1,
            http2: http2::Builder::new(TokioExecutor::new()),
            header_read_timeout,
        }
    }
}

type Http2<IO, S> = http2::Connection<TokioIo<<IO as Wrapped>::Inner>, S, TokioExecutor>;

pin_project_lite::pin_project! {
    /// One connection: its protocol being told, then hyper's connection for it.
    #[project = HttpProj]
    pub(crate) enum HttpConnection<IO, S>
    where
        IO: Wrapped,
        S: HttpService<Incoming>,
    {
        Detecting {
            // Taken when the protocol is known.
            parts: Option<(IO, S, Arc<Builders>)>,
            timeout: Option<Pin<Box<Sleep>>>,
        },
        Http1 { #[pin] connection: http1::UpgradeableConnection<TokioIo<IO>, S> },
        Http2 { #[pin] connection: Http2<IO, S> },
        /// Told to shut down before its protocol was known: its stream is shut down (or relayed,
        /// see `UpgradableIo`), then dropped.
        Closing { stream: Option<IO> },
    }
}

impl<IO, S, B> HttpConnection<IO, S>
where
    IO: Wrapped,
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    pub fn new(stream: IO, service: S, builders: &Arc<Builders>) -> Self {
        HttpConnection::Detecting {
            timeout: builders
                .header_read_timeout
                .map(|timeout| Box::pin(tokio::time::sleep(timeout))),
            parts: Some((stream, service, builders.clone())),
        }
    }

    /// Stops taking requests: HTTP/1 closes once the response in progress is written, HTTP/2
    /// sends GOAWAY; a connection whose protocol is not known yet has its stream shut down.
    pub fn graceful_shutdown(mut self: Pin<&mut Self>) {
        match self.as_mut().project() {
            HttpProj::Detecting { parts, .. } => {
                let stream = parts.take().map(|(stream, ..)| stream);
                self.set(HttpConnection::Closing { stream });
            }
            HttpProj::Http1 { connection } => connection.graceful_shutdown(),
            HttpProj::Http2 { connection } => connection.graceful_shutdown(),
            HttpProj::Closing { .. } => {}
        }
    }
}

impl<IO, S, B> Future for HttpConnection<IO, S>
where
    IO: Wrapped,
    S: HttpService<Incoming, ResBody = B> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (stream, service, builders, protocol) = match self.as_mut().project() {
            HttpProj::Http1 { connection } => return connection.poll(cx).map_err(Into::into),
            HttpProj::Http2 { connection } => return connection.poll(cx).map_err(Into::into),
            HttpProj::Closing { stream } => {
                if let Some(open) = stream {
                    // Its end is the connection's end, whatever the shutdown says.
                    let _ = ready!(Pin::new(open).poll_shutdown(cx));
                    *stream = None;
                }
                return Poll::Ready(Ok(()));
            }
            HttpProj::Detecting { parts, timeout } => {
                let Some((stream, ..)) = parts.as_mut() else {
                    return Poll::Ready(Ok(()));
                };
                let protocol = match stream.inner_mut().poll_detect(cx) {
                    Poll::Ready(protocol) => protocol?,
                    Poll::Pending => {
                        if let Some(timeout) = timeout {
                            ready!(timeout.as_mut().poll(cx));
                            return Poll::Ready(Err(NoRequestInTime.into()));
                        }
                        return Poll::Pending;
                    }
                };
                let (stream, service, builders) = parts.take().expect("checked above");
                (stream, service, builders, protocol)
            }
        };
        match protocol {
            Protocol::Http1 => {
                let connection = builders
                    .http1
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                self.set(HttpConnection::Http1 { connection });
            }
            Protocol::Http2 => {
                let connection = builders
                    .http2
                    .serve_connection(TokioIo::new(stream.into_inner()), service);
                self.set(HttpConnection::Http2 { connection });
            }
        }
        self.poll(cx)
    }
}

/// The client sent nothing within the header-read timeout.
#[derive(Debug, thiserror::Error)]
#[error("no request within the header-read timeout")]
struct NoRequestInTime;

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(10);

    /// A client and the server's end of its connection.
    async fn pair() -> (TcpStream, AnyStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, AnyStream::Tcp(server))
    }

    /// What the server tells once the client sent `parts` one after another; every part but the
    /// last must leave it undecided.
    async fn detect(parts: &[&[u8]]) -> Protocol {
        let (mut client, mut server) = pair().await;
        let (last, first) = parts.split_last().unwrap();
        for part in first {
            client.write_all(part).await.unwrap();
            // The bytes are in once the server could peek them; it must still wait.
            let waited = timeout(
                Duration::from_millis(100),
                poll_fn(|cx| server.poll_detect(cx)),
            )
            .await;
            assert!(waited.is_err(), "decided after {part:?}: {waited:?}");
        }
        client.write_all(last).await.unwrap();
        let protocol = timeout(WAIT, poll_fn(|cx| server.poll_detect(cx)))
            .await
            .expect("no decision in time")
            .unwrap();
        let mut peeked = [0u8; 64];
        let n = server_peek(&server, &mut peeked);
        assert_eq!(&peeked[..n], parts.concat().as_slice(), "bytes consumed");
        protocol
    }

    fn server_peek(server: &AnyStream, buf: &mut [u8]) -> usize {
        let AnyStream::Tcp(stream) = server else {
            unreachable!()
        };
        rustix::net::recv(stream, buf, RecvFlags::PEEK).unwrap().0
    }

    #[tokio::test]
    async fn an_http1_request_is_http1_from_its_first_byte() {
        assert_eq!(detect(&[b"GET /ping HTTP/1.1\r\n"]).await, Protocol::Http1);
    }

    #[tokio::test]
    async fn the_whole_preface_is_http2() {
        assert_eq!(detect(&[PREFACE]).await, Protocol::Http2);
    }

    #[tokio::test]
    async fn a_preface_in_two_parts_waits_for_the_second() {
        assert_eq!(
            detect(&[b"PRI * HTTP/2", b".0\r\n\r\nSM\r\n\r\n"]).await,
            Protocol::Http2
        );
    }

    #[tokio::test]
    async fn a_method_that_starts_like_the_preface_is_http1_once_it_diverges() {
        assert_eq!(
            detect(&[b"PR", b"OPFIND / HTTP/1.1\r\n"]).await,
            Protocol::Http1
        );
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_left_to_http1() {
        let (client, mut server) = pair().await;
        drop(client);
        let protocol = timeout(WAIT, poll_fn(|cx| server.poll_detect(cx)))
            .await
            .expect("no decision in time")
            .unwrap();
        assert_eq!(protocol, Protocol::Http1);
    }
}
