//! The peer: the routes of `hello` served the way a competent user would on `ecdysis`
//! (Cloudflare's Rust port of tableflip) with hyper-util's `GracefulShutdown`.
//!
//! SIGHUP upgrades (ecdysis forks and execs the same binary with the same arguments and hands
//! over the listener; once the child reported ready, the parent stops accepting, drains and
//! exits); SIGTERM/SIGINT stop accepting, drain and exit. The drain lets in-flight requests
//! finish for at most `--drain-timeout` seconds (default 5), then cuts what is left.
//!
//! ```text
//! ecdysis_peer -h 127.0.0.1 -p 8080     # a fixed port: ecdysis finds the inherited listener
//!                                       # by its bound address, so port 0 cannot be kept
//! ```

#[macro_use]
#[path = "../routes.rs"]
mod routes;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clap::Parser;
use ecdysis::tokio_ecdysis::{ExitMode, SignalKind, StopOnShutdown, TokioEcdysisBuilder};
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

#[tokio::main]
async fn main() -> ExitCode {
    let args = routes::Args::parse();
    match serve(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log!("ERROR {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &routes::Args) -> Result<(), String> {
    let addr: SocketAddr = args
        .address()
        .parse()
        .map_err(|e| format!("{}: {e}", args.address()))?;
    let drain = Duration::from_secs_f64(args.drain_timeout);
    let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup()).map_err(|e| e.to_string())?;
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        builder.stop_on_signal(kind).map_err(|e| e.to_string())?;
    }
    let mut bound = None;
    let incoming = builder
        .build_listen_tcp(StopOnShutdown::Yes, addr, |socket, addr| {
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            bound = socket.local_addr()?.as_socket();
            Ok(socket.into())
        })
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // An inherited listener is the one bound to `addr` (ecdysis looks it up by that address).
    log!("listening on {}", bound.unwrap_or(addr));
    let server = tokio::spawn(accept_and_drain(incoming, drain));
    let (_ecdysis, upgraded_or_stopped) = builder.ready().map_err(|e| e.to_string())?;
    log!("server started pid={}", std::process::id());
    let pid = std::process::id();
    match upgraded_or_stopped.await {
        Ok((ExitMode::Upgrade, _)) => {
            log!("old process draining; new process serves pid={pid}")
        }
        Ok((mode, reason)) => log!("graceful shutdown started ({mode:?}, {reason:?})"),
        Err(e) => log!("ERROR ecdysis: {e}"),
    }
    server.await.map_err(|e| e.to_string())?;
    log!("server shut down pid={pid}");
    Ok(())
}

/// Serves every connection of `incoming` until ecdysis ends the stream (upgrade done or stop),
/// then drains: HTTP/1 connections finish their request and close, HTTP/2 get GOAWAY; what is
/// left after `drain` is cut.
async fn accept_and_drain<S>(mut incoming: S, drain: Duration)
where
    S: futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> + Unpin,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let live = Arc::new(AtomicUsize::new(0));
    while let Some(accepted) = incoming.next().await {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                log!("WARN accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service =
            hyper::service::service_fn(|request| routes::route(request, routes::never_draining));
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let live = live.clone();
        live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = conn.await;
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => log!("drain complete; every connection finished"),
        Err(_) => log!(
            "WARN drain deadline reached; cut {} connections",
            live.load(Ordering::Relaxed)
        ),
    }
}
