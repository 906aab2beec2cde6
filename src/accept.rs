//! Accept loops that never die of an error: per-connection errors are skipped, resource errors
//! (out of file descriptors, out of memory) pause the loop and are retried.

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::peer::PeerAddr;
use crate::stream::{AnyListener, AnyStream};

/// Longest pause of an accept loop after a resource error.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// Accepts and hands each connection to `serve` until `stop`, then gives the listener back.
pub(crate) async fn accept_loop(
    listener: AnyListener,
    stop: CancellationToken,
    mut serve: impl FnMut(AnyStream, PeerAddr),
) -> AnyListener {
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
pub(crate) fn accept_queued(listener: &AnyListener, mut serve: impl FnMut(AnyStream, PeerAddr)) {
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
