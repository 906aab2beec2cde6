//! The kinds of socket a server accepts on: TCP and Unix domain stream sockets.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::accept::Accept;
use crate::peer::PeerAddr;

/// A listening socket of either kind.
#[derive(Debug)]
pub(crate) enum AnyListener {
    Tcp(TcpListener),
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
            AnyListener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                // Small responses go out at once instead of waiting for Nagle's algorithm.
                let _ = stream.set_nodelay(true);
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
            AnyListener::Tcp(listener) => {
                let (stream, peer) = listener.accept_now()?;
                let _ = stream.set_nodelay(true);
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
            AnyListener::Tcp(listener) => listener.describe(),
            AnyListener::Unix(listener) => listener.describe(),
        }
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
