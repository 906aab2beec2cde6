//! Serve network servers gracefully on Unix: upgrade the binary with no refused connection and
//! no failed request, and shut down without cutting what is in flight.
//!
//! A Rust re-implementation of [NBCFB/Octopus](https://github.com/NBCFB/Octopus), with its signal
//! contract, its bugs fixed (the new process gets the old one's arguments and sockets, and the old
//! one waits until the new one is ready) and a drain that retires keep-alive connections without
//! racing the client: after an upgrade, idle HTTP/1 connections are not closed at all but handed,
//! socket and all, to the new process, which answers their next request.
//!
//! # Serving HTTP in one call
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
//! let app = axum::Router::new().route("/ping", axum::routing::get(|| async { "pong\n" }));
//! octopus::serve("127.0.0.1:8080", app).await?;
//! # Ok(()) }
//! ```
//!
//! # With options
//!
//! Each option is set on the part it governs. Signals, upgrades, the pre-drain, the pid file and
//! the control socket belong to the [`Octopus`] (one per process: it owns the signals and the
//! hand-over), set with [`Octopus::builder`]; how connections drain belongs to the
//! [`Server`] that serves them. A server made by [`Octopus::server`] serves through that one,
//! and its [`Handle`] drives it from code (a readiness route, a test):
//!
//! ```no_run
//! use std::time::Duration;
//! use octopus::Octopus;
//!
//! # #[tokio::main] async fn main() -> Result<(), octopus::Error> {
//! let octopus = Octopus::builder()
//!     .kill_master(true)                        // SIGUSR1/2 also retire the old process
//!     .pre_drain(Duration::from_secs(5))        // keep accepting while /ready fails
//!     .pid_file("/run/app/app.pid")
//!     .build()?;                                // adopts handed-over or systemd sockets
//! let handle = octopus.handle();                // handle.is_draining() for a /ready route
//! # let app = axum::Router::new();
//! let report = octopus
//!     .server()
//!     .bind("127.0.0.1:8080")
//!     .bind_unix("/run/app/app.sock")
//!     .drain_timeout(Duration::from_secs(10))
//!     .serve(app)
//!     .await?;
//! if report.cut > 0 {
//!     eprintln!("{} connections cut at the drain deadline", report.cut);
//! }
//! # Ok(()) }
//! ```
//!
//! Any other protocol over TCP or Unix sockets is served the same way by
//! [`Octopus::connections`], with a closure per connection ([`Connections`]); [`Drain`] tracks
//! connection tasks with a deadline for whatever else.
//!
//! # Without a subscriber, silence
//!
//! Octopus logs through `tracing` ([Log events](#log-events) lists them): a program that installs
//! no subscriber sees nothing during an upgrade or a drain. What it needs to act on is returned
//! instead: [`Handle::upgrade`] gives the new pid, or an [`UpgradeError`] whose
//! [`reason`](UpgradeError::reason) is a stable code (the old process keeps serving either way);
//! [`Server::serve`] and [`Connections::serve`] give a [`DrainReport`]: connections finished,
//! cut, and how long the drain took.
//!
#![doc = include_str!("../docs/signals.md")]
//!
//! # The lifecycle of an upgrade
//!
//! ```text
//!  old process (pid 100)                          new process (pid 200)
//!  ─────────────────────                          ─────────────────────
//!  serving on fd 3 (tcp:127.0.0.1:8080)
//!  SIGHUP ──► pipe(), socketpair();               same argv, cwd and env, plus
//!             spawn argv[0] ─────────────────────► OCTOPUS_LISTENERS=3=tcp:127.0.0.1:8080
//!             fds 3, 5 and 6 cross exec            OCTOPUS_READY_FD=5  OCTOPUS_RELAY_FD=6
//!             (everything else is close-on-exec)   OCTOPUS_PARENT_PID=100
//!  still accepting on fd 3   ◄──── one kernel socket, one accept queue ────► adopts fd 3, checks it,
//!                                                  writes the pid file (nothing accepted yet)
//!  reads the offer and "ready" ◄──────────────────  offers on fd 6 to take HTTP connections,
//!                                                  writes "ready" to fd 5 (Octopus::ready)
//!  stops accepting; drains: in-flight requests     starts accepting: connections queued
//!  finish, idle keep-alive connections are         meanwhile wait in the kernel, none refused;
//!  relayed on fd 6 (never closed), HTTP/2 gets ──► serves the relayed connections too
//!  GOAWAY; exits 0                                 serving alone
//!
//!  If the new process exits, crashes, closes the pipe or is not ready within
//!  `upgrade_timeout`: it is stopped if needed (SIGTERM, then SIGKILL after the drain
//!  timeout) and reaped, the reason is logged, and the old process keeps serving as if
//!  nothing happened. It had accepted nothing, since it accepts only after its report.
//! ```
//!
//! A shutdown and a ready report can cross; each process settles them under one lock, so there
//! are only two outcomes. If the old process's shutdown came first, the new process is stopped
//! (SIGTERM: it drains whatever it accepted) and reaped, and the upgrade returns
//! [`UpgradeError::Cancelled`]. If the hand-over came first, the shutdown only ends the old
//! process's drain early, and is logged as coming after the hand-over. Likewise a new process
//! that is told to stop before its report never reports ready, so the old one rolls back. A
//! successor starts with SIGHUP, SIGUSR1 and SIGUSR2 ignored until its handlers are installed,
//! so an upgrade signal cannot kill it while it starts. One [`Octopus`] per process: it owns the
//! signals and every listener's hand-over ([`Error::SecondInstance`] otherwise). On Linux the
//! successor is started the way `posix_spawn` starts a process (`clone` with `CLONE_VM` and
//! `CLONE_VFORK`), not with `fork`: nothing of the old process's memory is copied, so a process
//! holding 10,000 connections hands over about as fast as an idle one.
//!
#![doc = include_str!("../docs/handover.md")]
#![doc = ""]
#![doc = include_str!("../docs/control.md")]
#![doc = ""]
#![doc = include_str!("../docs/logs.md")]
#![cfg(unix)]
#![warn(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod accept;
mod activation;
mod config;
mod connection;
mod control;
mod drain;
mod env;
mod error;
mod fds;
mod generation;
mod key;
mod lifecycle;
mod listeners;
mod notify;
mod peer;
mod pidfile;
mod process;
mod protocol;
mod readiness;
mod relay;
mod serve;
mod signals;
mod stream;
#[cfg(feature = "tls")]
mod tls;
mod trigger;
mod upgrade;

pub use config::OctopusBuilder;
pub use connection::HttpService;
pub use drain::{Drain, DrainReport, Draining, Hold};
pub use error::{Error, InheritError, UpgradeError};
pub use generation::{Connections, Listener};
pub use lifecycle::{AfterUpgrade, Handle, Octopus, Stop};
pub use peer::Peer;
pub use serve::{OwnOctopus, Serve, Server, serve};
#[cfg(feature = "tls")]
pub use tls::tls_config_from_files;
/// The rustls version octopus is built with. [`Server::bind_tls`] takes its `ServerConfig`: build
/// one with [`tls_config_from_files`], or by hand through this path (client certificates, a
/// certificate resolver) so that its version is always the one `bind_tls` expects.
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
