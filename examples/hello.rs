//! The example server: a port of Octopus's `simpleHTTPServer.go`.
//!
//! ```text
//! cargo run --release --example hello -- -h 127.0.0.1 -p 8080
//! curl http://127.0.0.1:8080/ping          # pong
//! kill -HUP <pid>                          # upgrade to the binary now at the same path
//! # or, with --control /tmp/hello.sock, an upgrade that says how it went:
//! octopus upgrade --control /tmp/hello.sock
//! ```
//!
//! Routes: `GET /ping` answers `pong`, `GET /pid` the answering process id, `GET /sleep?ms=N`
//! waits N milliseconds and answers `slept N`, `GET /ready` answers `200 ready` while serving and
//! `503 draining` once a shutdown or hand-over began (for load-balancer readiness checks),
//! `GET /peer` the client as [`octopus::Peer`] tells it: `ADDRESS` (TCP), `unix PATH` or
//! `unix unnamed` (Unix socket), followed over TLS by `tls alpn=PROTOCOL sni=NAME` (`-` if none).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Parser;
use octopus::{Handle, Octopus};

mod logging;
mod routes;

/// A graceful HTTP server: SIGHUP upgrades, SIGUSR1/SIGUSR2 upgrade and keep the old process,
/// SIGINT/SIGTERM shut down gracefully.
#[derive(Debug, Parser)]
#[command(name = "hello", disable_help_flag = true)]
struct Args {
    /// Host to listen on
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,

    /// Port to listen on (0: any free port, kept across upgrades)
    #[arg(short = 'p', long = "port", default_value_t = 8080)]
    port: u16,

    /// Make SIGUSR1/SIGUSR2 also stop the old process once the new one is ready
    #[arg(long)]
    kill_master: bool,

    /// Seconds in-flight requests get to finish on shutdown or upgrade
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = seconds)]
    drain_timeout: f64,

    /// Seconds a keep-alive connection that sends nothing once the drain began is kept open
    #[arg(long, value_name = "SECS", default_value_t = 1.0, value_parser = seconds)]
    idle_grace: f64,

    /// Seconds a new process gets to become ready before the upgrade is rolled back
    #[arg(long, value_name = "SECS", default_value_t = 30.0, value_parser = seconds)]
    upgrade_timeout: f64,

    /// Seconds a shutdown keeps accepting while /ready answers 503, before draining
    #[arg(long, value_name = "SECS", default_value_t = 0.0, value_parser = seconds)]
    pre_drain: f64,

    /// Also listen on this Unix domain socket
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,

    /// PEM certificate chain for an extra TLS listener (read again by every new process)
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for the TLS listener
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Port of the TLS listener (0: any free port, kept across upgrades)
    #[arg(long, value_name = "PORT", default_value_t = 8443)]
    tls_port: u16,

    /// Write the pid of the serving process to this file
    #[arg(long, value_name = "FILE")]
    pid_file: Option<PathBuf>,

    /// Answer `octopus status|upgrade|stop` on this Unix socket (mode 0600, handed over on upgrade)
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,

    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => Ok(secs),
        _ => Err(format!("{text:?} is not a number of seconds")),
    }
}

/// The handle of this generation, for `/ready`. Set once at start: the service itself stays
/// zero-sized, so the per-request clone tower makes costs nothing.
static HANDLE: OnceLock<Handle> = OnceLock::new();

/// Whether this generation began a shutdown or hand-over, for `/ready`.
fn draining() -> bool {
    HANDLE.get().is_some_and(Handle::is_draining)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Flushed only once `serve_until_exit` has stopped its runtime, which lets every task finish
    // the step it is in: the last lines of every task are written.
    let _logging = logging::init();
    serve_until_exit(args)
}

#[tokio::main]
async fn serve_until_exit(args: Args) -> ExitCode {
    let address = |port: u16| {
        if args.host.contains(':') {
            format!("[{}]:{port}", args.host)
        } else {
            format!("{}:{port}", args.host)
        }
    };
    let mut octopus = Octopus::builder()
        .kill_master(args.kill_master)
        .upgrade_timeout(Duration::from_secs_f64(args.upgrade_timeout))
        .pre_drain(Duration::from_secs_f64(args.pre_drain));
    if let Some(path) = &args.pid_file {
        octopus = octopus.pid_file(path);
    }
    if let Some(path) = &args.control {
        octopus = octopus.control_socket(path);
    }
    let served = async {
        let octopus = octopus.build()?;
        let _ = HANDLE.set(octopus.handle());
        let service = tower::service_fn(|request| routes::route(request, draining));
        let mut server = octopus
            .server()
            .drain_timeout(Duration::from_secs_f64(args.drain_timeout))
            .idle_grace(Duration::from_secs_f64(args.idle_grace))
            .bind(address(args.port));
        if let Some(path) = &args.unix {
            server = server.bind_unix(path);
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            let tls = octopus::tls_config_from_files(cert, key)?;
            server = server.bind_tls(address(args.tls_port), tls);
        }
        server.serve(service).await
    };
    match served.await {
        Ok(report) => {
            tracing::info!(
                cut = report.cut,
                "exiting with status 0 (pid {})",
                std::process::id()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{}", logging::error_line(&e));
            ExitCode::FAILURE
        }
    }
}
