//! The kinds of socket a server accepts on: TCP and Unix domain stream sockets.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use rustix::net::{RecvFlags, recv};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::accept::Accept;
use crate::peer::PeerAddr;

/// A listening socket of either kind.
#[derive(Debug)]
pub(crate) enum AnyListener {
    /// `nodelay`: whether each accepted connection gets `TCP_NODELAY` (see
    /// [`Server::tcp_nodelay`](crate::Server::tcp_nodelay)).
    Tcp {
        listener: TcpListener,
        nodelay: bool,
    },
    Unix(UnixListener),
}

/// An accepted connection of either kind.
#[derive(Debug)]
pub(crate) enum AnyStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Accept for AnyListener {
    type Stream = AnyStream;
    type Peer = PeerAddr;

    async fn accept(&self) -> io::Result<(AnyStream, PeerAddr)> {
        match self {
            AnyListener::Tcp { listener, nodelay } => {
                let (stream, peer) = listener.accept().await?;
                set_nodelay(&stream, *nodelay);
                Ok((AnyStream::Tcp(stream), PeerAddr::Tcp(peer)))
            }
            AnyListener::Unix(listener) => {
                let (stream, peer) = listener.accept().await?;
                Ok((AnyStream::Unix(stream), PeerAddr::Unix(peer)))
            }
        }
    }

    fn accept_now(&self) -> io::Result<(AnyStream, PeerAddr)> {
        match self {
            AnyListener::Tcp { listener, nodelay } => {
                let (stream, peer) = listener.accept_now()?;
                set_nodelay(&stream, *nodelay);
                Ok((AnyStream::Tcp(stream), PeerAddr::Tcp(peer)))
            }
            AnyListener::Unix(listener) => {
                let (stream, peer) = listener.accept_now()?;
                Ok((AnyStream::Unix(stream), PeerAddr::Unix(peer)))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            AnyListener::Tcp { listener, .. } => listener.describe(),
            AnyListener::Unix(listener) => listener.describe(),
        }
    }
}

/// The kind of socket a listener accepts, which a relayed connection of it is too.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Family {
    /// With `TCP_NODELAY` or not, as the listener's accepted connections.
    Tcp {
        nodelay: bool,
    },
    Unix,
}

impl AnyListener {
    pub(crate) fn family(&self) -> Family {
        match self {
            AnyListener::Tcp { nodelay, .. } => Family::Tcp { nodelay: *nodelay },
            AnyListener::Unix(_) => Family::Unix,
        }
    }
}

impl Family {
    /// A connection accepted by the process this one replaced and relayed to this one, served
    /// like one this process accepted. Any error is the connection's own (it is skipped).
    pub(crate) fn adopt(self, socket: OwnedFd) -> io::Result<(AnyStream, PeerAddr)> {
        let aborted = |_| io::Error::from(io::ErrorKind::ConnectionAborted);
        match self {
            Family::Tcp { nodelay } => {
                let stream = std::net::TcpStream::from(socket);
                stream.set_nonblocking(true).map_err(aborted)?;
                let peer = stream.peer_addr().map_err(aborted)?;
                let stream = TcpStream::from_std(stream)?;
                set_nodelay(&stream, nodelay);
                Ok((AnyStream::Tcp(stream), PeerAddr::Tcp(peer)))
            }
            Family::Unix => {
                let stream = std::os::unix::net::UnixStream::from(socket);
                stream.set_nonblocking(true).map_err(aborted)?;
                let stream = UnixStream::from_std(stream)?;
                let peer = stream.peer_addr().map_err(aborted)?;
                Ok((AnyStream::Unix(stream), PeerAddr::Unix(peer)))
            }
        }
    }
}

/// Small responses go out at once instead of waiting for Nagle's algorithm, if asked; otherwise
/// the socket is left as accepted, without a system call.
fn set_nodelay(stream: &TcpStream, nodelay: bool) {
    if nodelay {
        // A socket that refuses it still serves, only with Nagle's algorithm.
        let _ = stream.set_nodelay(true);
    }
}

macro_rules! delegate {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            AnyStream::Tcp($stream) => $call,
            AnyStream::Unix($stream) => $call,
        }
    };
}

impl AsRawFd for AnyStream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            AnyStream::Tcp(s) => s.as_raw_fd(),
            AnyStream::Unix(s) => s.as_raw_fd(),
        }
    }
}

impl AsyncRead for AnyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for AnyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            AnyStream::Tcp(s) => s.is_write_vectored(),
            AnyStream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// Tells whether the client has sent bytes that the connection has not read yet, by asking the
/// kernel rather than Tokio.
///
/// Tokio learns that a socket became readable only when a worker next turns its reactor. On a
/// busy server (10,000 connections whose idle graces all end at once, each woken in turn) a
/// connection can be polled for the end of its grace while its next request already sits in the
/// socket, unread and not yet seen as readable: closing it then would fail a request that came
/// in time. One `recv(MSG_PEEK)` per connection, when its grace ends.
#[derive(Clone)]
pub(crate) enum InputProbe {
    /// The connection's socket, owned by the connection the probe is asked about.
    Socket(RawFd),
    /// What a test says is waiting.
    #[cfg(test)]
    Scripted(std::sync::Arc<dyn Fn() -> bool + Send + Sync>),
}

impl InputProbe {
    /// The probe of `stream`'s socket. Valid as long as `stream` is: asked only while the
    /// connection that owns `stream` runs.
    pub(crate) fn of(stream: &AnyStream) -> InputProbe {
        InputProbe::Socket(stream.as_raw_fd())
    }

    /// Whether bytes, or the end of the stream, are waiting to be read.
    ///
    /// # Safety
    /// For [`InputProbe::Socket`], the stream it was made of must still be open.
    pub(crate) unsafe fn has_input(&self) -> bool {
        match self {
            InputProbe::Socket(fd) => {
                // SAFETY: the caller keeps the stream, and so this fd, open for the call.
                let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
                let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
                // A close by the client (0 bytes) or an error is left to the graceful shutdown.
                matches!(recv(fd, &mut [0u8; 1], flags), Ok((n, _)) if n > 0)
            }
            #[cfg(test)]
            InputProbe::Scripted(waiting) => waiting(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_probe_sees_bytes_in_the_socket_that_nothing_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let server = AnyStream::Tcp(server);
        let probe = InputProbe::of(&server);
        // SAFETY: `server` is open for every call.
        assert!(!unsafe { probe.has_input() }, "nothing sent yet");
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // SAFETY: as above.
        while !unsafe { probe.has_input() } {
            assert!(
                std::time::Instant::now() < deadline,
                "the bytes never showed"
            );
            tokio::task::yield_now().await;
        }
        // Peeked, not taken: still there for the connection to read.
        // SAFETY: as above.
        assert!(unsafe { probe.has_input() });
    }

    /// Whether the connection `listener` accepts, by `accept` then by `accept_now`, has
    /// `TCP_NODELAY`, as the kernel reports it on the accepted socket.
    async fn nodelay_of_accepted(nodelay: bool) -> [bool; 2] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let listener = AnyListener::Tcp { listener, nodelay };
        let _first = TcpStream::connect(address).await.unwrap();
        let (waited, _) = listener.accept().await.unwrap();
        let _second = TcpStream::connect(address).await.unwrap();
        // The client's last handshake segment may still be on its way to the listener's queue.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let queued = loop {
            match listener.accept_now() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "never queued");
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("accept_now: {e}"),
            }
        };
        [waited, queued].map(|stream| match stream {
            AnyStream::Tcp(s) => s.nodelay().unwrap(),
            AnyStream::Unix(_) => panic!("a TCP listener accepted a Unix stream"),
        })
    }

    #[tokio::test]
    async fn accepted_tcp_connections_get_nodelay_only_when_asked() {
        assert_eq!(nodelay_of_accepted(true).await, [true, true]);
        assert_eq!(nodelay_of_accepted(false).await, [false, false]);
    }

    #[tokio::test]
    async fn a_client_that_closed_is_no_input() {
        let (client, server) = UnixStream::pair().unwrap();
        let server = AnyStream::Unix(server);
        drop(client);
        // SAFETY: `server` is open for the call.
        assert!(!unsafe { InputProbe::of(&server).has_input() });
    }
}
