//! The routes of `hello` as one axum `Router`, served either by
//! `axum::serve(..).with_graceful_shutdown(..)` (what most users would pick instead of octopus)
//! or by octopus, so that the two compare on the same router. Served by octopus, it also takes
//! extra listeners (`--extra-port`), for the hand-over curve over the number of listeners.
//!
//! ```text
//! router -h 127.0.0.1 -p 0 --with axum      # SIGTERM: stop accepting, drain, exit
//! router -h 127.0.0.1 -p 0 --with octopus --extra-port 4001,4002   # SIGHUP upgrades
//! router -h 127.0.0.1 -p 0 --with axum --nodelay true      # both with TCP_NODELAY
//! ```
//!
//! Each server keeps its own default for `TCP_NODELAY` unless `--nodelay` says otherwise:
//! `axum::serve` leaves Nagle's algorithm on, octopus turns it off.

#[macro_use]
#[path = "../routes.rs"]
mod routes;

#[path = "../../../examples/logging/mod.rs"]
mod logging;

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::serve::ListenerExt;
use clap::{Parser, ValueEnum};
use octopus::{Handle, Octopus};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum With {
    Axum,
    Octopus,
}

#[derive(Debug, Parser)]
#[command(disable_help_flag = true)]
struct Cli {
    #[command(flatten)]
    args: routes::Args,
    /// What serves the router.
    #[arg(long, value_enum, default_value = "axum")]
    with: With,
    /// More ports to listen on, on the same host (octopus only; fixed ports, so that each
    /// listener is found again by its address after an upgrade).
    #[arg(long, value_delimiter = ',')]
    extra_port: Vec<u16>,
    /// `true`: `TCP_NODELAY` on each accepted connection; `false`: Nagle's algorithm left on
    /// (default: the server's own, `false` for axum, `true` for octopus).
    #[arg(long)]
    nodelay: Option<bool>,
}

/// Octopus's handle, for `/ready` (unset under axum: `/ready` then always answers `ready`).
static HANDLE: OnceLock<Handle> = OnceLock::new();

fn draining() -> bool {
    HANDLE.get().is_some_and(Handle::is_draining)
}

fn app() -> Router {
    // The fallback takes every path, so routing is the shared function's, byte for byte
    // `hello`'s; the router itself (its service, its body type) is axum's.
    Router::new().fallback(|request: Request| routes::route(request, draining))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.with {
        With::Axum => serve_axum(&cli.args, cli.nodelay.unwrap_or(false)),
        With::Octopus => {
            let _logging = logging::init();
            serve_octopus(&cli)
        }
    }
}

#[tokio::main]
async fn serve_axum(args: &routes::Args, nodelay: bool) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(args.address()).await {
        Ok(l) => l,
        Err(e) => {
            log!("ERROR cannot listen on {}: {e}", args.address());
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(local) => log!("listening on {local}"),
        Err(e) => log!("ERROR local address: {e}"),
    }
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log!("ERROR cannot install the signal handlers");
        return ExitCode::FAILURE;
    };
    log!("server started pid={}", std::process::id());
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        log!("old process draining pid={}", std::process::id());
    };
    // axum 0.8's way to set socket options on accepted connections (`Serve::tcp_nodelay` is
    // gone); the listener's type changes, hence two calls.
    let served = if nodelay {
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app())
            .with_graceful_shutdown(stop)
            .await
    } else {
        axum::serve(listener, app())
            .with_graceful_shutdown(stop)
            .await
    };
    match served {
        Ok(()) => {
            log!("server shut down pid={}", std::process::id());
            ExitCode::SUCCESS
        }
        Err(e) => {
            log!("ERROR {e}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn serve_octopus(cli: &Cli) -> ExitCode {
    let host = |port: u16| {
        if cli.args.host.contains(':') {
            format!("[{}]:{port}", cli.args.host)
        } else {
            format!("{}:{port}", cli.args.host)
        }
    };
    let served = async {
        let octopus = Octopus::new()?;
        let _ = HANDLE.set(octopus.handle());
        let mut server = octopus.server();
        if let Some(nodelay) = cli.nodelay {
            server = server.tcp_nodelay(nodelay);
        }
        let mut server = server
            .drain_timeout(Duration::from_secs_f64(cli.args.drain_timeout))
            .bind(host(cli.args.port));
        for port in &cli.extra_port {
            server = server.bind(host(*port));
        }
        server.serve(app()).await
    };
    match served.await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", logging::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
