//! A graceful UDP echo server on the protocol-agnostic layer ([`Octopus`] and [`Drain`]).
//!
//! ```text
//! cargo run --example udp_echo -- -h 127.0.0.1 -p 7001
//! exec 4<>/dev/udp/127.0.0.1/7001   # bash alone: a UDP socket on fd 4
//! echo hello >&4; timeout 1 cat <&4          # hello
//! echo pid >&4; timeout 1 cat <&4            # the pid of the process that received the datagram
//! echo wait 500 >&4; timeout 1 cat <&4       # "waited 500", half a second later
//! kill -HUP <pid>                   # upgrade: the new process receives from now on
//! ```
//!
//! Each datagram is echoed back to its sender, except `pid`, answered with the serving process
//! id (so a client can tell generations apart), and `wait MS`, answered after MS milliseconds
//! (at most 10 s; a reply in flight). Old and new process share one socket and its receive
//! queue, so no datagram is refused during an upgrade: once the new process is ready, the old one
//! stops receiving, sends the replies it owes, and exits. On shutdown the socket is closed,
//! the datagrams already queued are answered, and so are the replies in flight, until the drain
//! timeout.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use octopus::{Drain, DrainReport, Octopus, Stop};
use tokio::net::UdpSocket;

mod logging;

/// A graceful UDP echo server: SIGHUP upgrades, SIGINT/SIGTERM shut down gracefully.
#[derive(Debug, Parser)]
#[command(name = "udp_echo", disable_help_flag = true)]
struct Args {
    /// Host to listen on
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    host: String,

    /// Port to listen on (0: any free port, kept across upgrades)
    #[arg(short = 'p', long = "port", default_value_t = 7001)]
    port: u16,

    /// Seconds the replies in flight get on shutdown or upgrade
    #[arg(long, value_name = "SECS", default_value_t = 5.0, value_parser = seconds)]
    drain_timeout: f64,

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The largest datagram answered whole (the largest a UDP datagram over IPv4 can carry).
const MAX_DATAGRAM: usize = 65_507;
/// The longest `wait MS` honoured.
const MAX_WAIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args = Args::parse();
    // Flushed only once `serve_until_exit` has stopped its runtime: every task's last lines are
    // written.
    let _logging = logging::init();
    serve_until_exit(args)
}

#[tokio::main]
async fn serve_until_exit(args: Args) -> ExitCode {
    let address = if args.host.contains(':') {
        format!("[{}]:{}", args.host, args.port)
    } else {
        format!("{}:{}", args.host, args.port)
    };
    match run(&address, Duration::from_secs_f64(args.drain_timeout)).await {
        Ok(report) => {
            tracing::info!(
                pid = std::process::id(),
                cut = report.cut,
                "server shut down"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{}", logging::error_line(&*e));
            ExitCode::FAILURE
        }
    }
}

/// One generation, from adopting (or creating) the socket to the end of its drain.
async fn run(address: &str, drain_timeout: Duration) -> Result<DrainReport, BoxError> {
    let octopus = Octopus::new()?;
    let socket = Arc::new(UdpSocket::from_std(octopus.listen_udp(address)?)?);
    tracing::info!("listening on {}", socket.local_addr()?);

    // Each datagram's reply is a task of `replies`; a drain waits for those in flight.
    let mut replies = Drain::new();
    let mut earlier_drains = Vec::new();
    // Before the first receive: the socket is bound, so datagrams sent meanwhile wait in its
    // queue, and the previous process stops receiving once it reads this report.
    octopus.ready()?;
    let report = loop {
        let stop = receive_until_stopped(&socket, &octopus, &replies).await;
        if stop == Stop::Shutdown {
            octopus.close_listeners();
            answer_queued(&socket, &replies);
            // The reply tasks hold the socket until they are done: it closes with the last one.
            drop(socket);
            break replies.run(drain_timeout).await;
        }
        // Upgraded: the successor receives on the same socket. Keep it (no close_listeners): if
        // the successor dies while this process drains, `resumed` fires and this one serves again.
        let mut draining = tokio::spawn({
            let replies = replies.clone();
            async move { replies.run(drain_timeout).await }
        });
        tokio::select! {
            report = &mut draining => break report.unwrap_or_default(),
            () = octopus.resumed() => {
                earlier_drains.push(draining);
                replies = Drain::new();
            }
        }
    };
    let mut report = report;
    for earlier in earlier_drains {
        report = report.merge(earlier.await.unwrap_or_default());
    }
    // An upgrade cancelled by a shutdown may still be stopping its new process: wait for it.
    octopus.settle().await;
    Ok(report)
}

/// Receives datagrams, each answered by a task of `replies`, until this generation is told to
/// stop. Stopping first: once the successor is ready, this process takes no more datagrams.
async fn receive_until_stopped(
    socket: &Arc<UdpSocket>,
    octopus: &Octopus,
    replies: &Drain,
) -> Stop {
    let stopped = octopus.stopped();
    tokio::pin!(stopped);
    let mut datagram = vec![0; MAX_DATAGRAM];
    loop {
        tokio::select! {
            biased;
            stop = &mut stopped => return stop,
            received = socket.recv_from(&mut datagram) => match received {
                Ok((len, from)) => reply(socket, &datagram[..len], from, replies),
                // An ICMP error for an earlier reply (the peer left), or out of memory: go on.
                Err(e) => tracing::debug!("receive failed: {e}"),
            },
        }
    }
}

/// Answers the datagrams already queued on the socket, without waiting for more: their senders
/// sent them while this process served.
fn answer_queued(socket: &Arc<UdpSocket>, replies: &Drain) {
    let mut datagram = vec![0; MAX_DATAGRAM];
    while let Ok((len, from)) = socket.try_recv_from(&mut datagram) {
        reply(socket, &datagram[..len], from, replies);
    }
}

fn reply(socket: &Arc<UdpSocket>, datagram: &[u8], to: std::net::SocketAddr, replies: &Drain) {
    let answer = answer(datagram);
    let socket = socket.clone();
    replies.spawn(move |_draining| async move {
        let (delay, answer) = answer;
        tokio::time::sleep(delay).await;
        if let Err(e) = socket.send_to(&answer, to).await {
            tracing::debug!("cannot answer {to}: {e}");
        }
    });
}

/// The reply to `datagram`, and how long to wait before sending it.
fn answer(datagram: &[u8]) -> (Duration, Vec<u8>) {
    let text = datagram.trim_ascii();
    if text == b"pid" {
        return (Duration::ZERO, std::process::id().to_string().into_bytes());
    }
    let wait = std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.strip_prefix("wait "))
        .and_then(|ms| ms.trim().parse::<u64>().ok());
    match wait {
        Some(ms) => {
            let delay = Duration::from_millis(ms).min(MAX_WAIT);
            (delay, format!("waited {}", delay.as_millis()).into_bytes())
        }
        None => (Duration::ZERO, datagram.to_vec()),
    }
}
