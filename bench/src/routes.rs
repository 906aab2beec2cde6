//! The command line of the example server `hello` and its routes (the very file `hello`
//! compiles), shared by the servers the benchmark compares so that all answer the same bytes.

use clap::Parser;

/// `-h HOST -p PORT`, as `hello`.
#[derive(Debug, Parser)]
#[command(disable_help_flag = true)]
pub struct Args {
    /// Host to listen on
    #[arg(short = 'h', long = "host", default_value = "127.0.0.1")]
    pub host: String,

    /// Port to listen on (0: any free port)
    #[arg(short = 'p', long = "port", default_value_t = 8080)]
    pub port: u16,

    /// Seconds in-flight requests get to finish on shutdown or upgrade (ecdysis peer)
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub drain_timeout: f64,

    /// Give hyper a timer (as octopus does), so that its header-read timeout applies
    /// (baseline; for experiments, off by default)
    #[arg(long)]
    pub hyper_timer: bool,

    /// Print help
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

impl Args {
    /// `HOST:PORT`, bracketing an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Writes `line` and a newline to stderr in one `write`, so that the lines of several
/// generations sharing one pipe never interleave; a broken stderr is ignored (never a panic).
pub fn log(line: &str) {
    use std::io::Write;
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// `log!("...", args)`: [`log`] with `format!` arguments.
macro_rules! log {
    ($($arg:tt)*) => {
        routes::log(&format!($($arg)*))
    };
}

#[path = "../../examples/routes/mod.rs"]
mod hello_routes;

pub use hello_routes::route;

/// For the servers that are not graceful (baseline, http1-only): binds `args`' address, logs it
/// as `hello` does, and makes SIGTERM and SIGINT exit at once. `None` once the error is logged.
// `router` and the ecdysis peer bind and stop in their own ways.
#[allow(dead_code)]
pub async fn listen_until_killed(args: &Args) -> Option<tokio::net::TcpListener> {
    use tokio::signal::unix::{SignalKind, signal};
    let listener = match tokio::net::TcpListener::bind(args.address()).await {
        Ok(l) => l,
        Err(e) => {
            log(&format!("ERROR cannot listen on {}: {e}", args.address()));
            return None;
        }
    };
    match listener.local_addr() {
        Ok(local) => log(&format!("listening on {local}")),
        Err(e) => log(&format!("ERROR local address: {e}")),
    }
    log(&format!("server started pid={}", std::process::id()));
    for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
        let Ok(mut s) = signal(kind) else { continue };
        tokio::spawn(async move {
            s.recv().await;
            std::process::exit(0);
        });
    }
    Some(listener)
}

/// `route`'s `draining` for servers without a drain signal: `/ready` always answers `ready`.
// `router` has a drain signal of its own.
#[allow(dead_code)]
pub fn never_draining() -> bool {
    false
}
