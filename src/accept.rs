//! Accept loops that never die of an error: per-connection errors are skipped, resource errors
//! (out of file descriptors, out of memory) pause the loop and are retried.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::listeners::local_address;

/// What [`Accept::poll_relayed`] gives.
pub type NextRelayed<L> =
    std::task::Poll<Option<io::Result<(<L as Accept>::Stream, <L as Accept>::Peer)>>>;

/// A listening socket registered with the runtime, as the generation loop drives it.
pub trait Accept: Send + Sync + 'static {
    /// An accepted connection.
    type Stream: Send + 'static;
    /// The address of a connection's peer.
    type Peer: Send + 'static;

    /// The next connection.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Stream, Self::Peer)>> + Send;

    /// A connection the kernel already queued, without waiting.
    fn accept_now(&self) -> io::Result<(Self::Stream, Self::Peer)>;

    /// The address it listens on, for logs and `status`.
    fn describe(&self) -> String;

    /// Closes the listening socket, refusing new connections, on a shutdown; those relayed by
    /// the process this one replaced may still come ([`Accept::relays`]).
    fn stop_listening(&mut self) {}

    /// Whether connections relayed by the process this one replaced may still come: they are
    /// served until then, after this generation stops accepting too.
    fn relays(&self) -> bool {
        false
    }

    /// The next relayed connection; `None` once none can come.
    fn poll_relayed(&self, _cx: &mut std::task::Context<'_>) -> NextRelayed<Self> {
        std::task::Poll::Ready(None)
    }
}

impl Accept for TcpListener {
    type Stream = TcpStream;
    type Peer = std::net::SocketAddr;

    async fn accept(&self) -> io::Result<(TcpStream, std::net::SocketAddr)> {
        TcpListener::accept(self).await
    }

    fn accept_now(&self) -> io::Result<(TcpStream, std::net::SocketAddr)> {
        let (socket, peer) = socket2::SockRef::from(self).accept()?;
        socket.set_nonblocking(true)?;
        let peer = peer.as_socket().ok_or(io::ErrorKind::ConnectionAborted)?;
        Ok((TcpStream::from_std(socket.into())?, peer))
    }

    fn describe(&self) -> String {
        local_address(self)
    }
}

impl Accept for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;

    async fn accept(&self) -> io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
        UnixListener::accept(self).await
    }

    fn accept_now(&self) -> io::Result<(UnixStream, tokio::net::unix::SocketAddr)> {
        let stream = accept_unix_now(self)?;
        // A peer without an address to report is skipped like any aborted connection.
        let peer = stream
            .peer_addr()
            .map_err(|_| io::Error::from(io::ErrorKind::ConnectionAborted))?;
        Ok((stream, peer))
    }

    fn describe(&self) -> String {
        local_address(self)
    }
}

/// A connection the kernel already queued on `listener`, without waiting, nor asking its peer's
/// address.
pub(crate) fn accept_unix_now(listener: &UnixListener) -> io::Result<UnixStream> {
    let (socket, _) = socket2::SockRef::from(listener).accept()?;
    socket.set_nonblocking(true)?;
    UnixStream::from_std(socket.into())
}

/// Longest pause of an accept loop after a resource error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// Accepts and hands each connection to `serve` until `stop`, then gives the listener back.
pub(crate) async fn accept_loop<L: Accept>(
    listener: L,
    stop: CancellationToken,
    mut serve: impl FnMut(L::Stream, L::Peer),
) -> L {
    let mut backoff = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return listener,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if !backoff.is_zero() {
                    tracing::info!("accepting again");
                    backoff = Duration::ZERO;
                }
                serve(stream, peer);
            }
            Err(e) if is_per_connection(&e) => {}
            Err(e) => {
                backoff = (backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
                tracing::warn!(?backoff, "accept failed: {e}; pausing before retrying");
                tokio::select! {
                    () = stop.cancelled() => return listener,
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// Accepts the connections the kernel already queued, without waiting for more, so a shutdown
/// answers every client whose connection was established before the listener closed.
pub(crate) fn accept_queued<L: Accept>(listener: &L, mut serve: impl FnMut(L::Stream, L::Peer)) {
    loop {
        match listener.accept_now() {
            Ok((stream, peer)) => serve(stream, peer),
            Err(e) if is_per_connection(&e) && e.kind() != io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}

pub(crate) fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
