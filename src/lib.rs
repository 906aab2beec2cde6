//! Serve network servers gracefully on Unix: upgrade the binary with no refused connection and
//! no failed request, and shut down without cutting what is in flight.
//!
//! A Rust re-implementation of [NBCFB/Octopus](https://github.com/NBCFB/Octopus), with its signal
//! contract, its bugs fixed (the new process gets the old one's arguments and sockets, and the old
//! one waits until the new one is ready) and a drain that retires keep-alive connections without
//! racing the client.
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
//! [`Server`] takes several addresses and a [`Config`]; [`Octopus`] and [`Drain`] are the
//! protocol-agnostic layer underneath, for raw TCP or any other protocol.
//!
//! # Signals
//!
//! | signal | behaviour |
//! |---|---|
//! | SIGHUP | upgrade; once the new process is ready, the old one drains and exits |
//! | SIGUSR1, SIGUSR2 | upgrade; the old one keeps serving beside the new one, unless [`Config::kill_master`] is set |
//! | SIGINT, SIGTERM | graceful shutdown; a second one does not cut the drain short |
//!
//! With [`Config::handle_signals`] off, a [`Handle`] drives the same actions from code.
//!
//! # The lifecycle of an upgrade
//!
//! ```text
//!  old process (pid 100)                          new process (pid 200)
//!  ─────────────────────                          ─────────────────────
//!  serving on fd 3 (tcp:127.0.0.1:8080)
//!  SIGHUP ──► pipe(); fork + exec argv[0] ───────► same argv, cwd and env, plus
//!             fds 3 and 5 cross exec               OCTOPUS_LISTENERS=3=tcp:127.0.0.1:8080
//!             (everything else is close-on-exec)   OCTOPUS_READY_FD=5  OCTOPUS_PARENT_PID=100
//!  still accepting on fd 3   ◄──── one kernel socket, one accept queue ────► adopts fd 3, checks it,
//!                                                  writes the pid file (nothing accepted yet)
//!  reads "ready" from the pipe ◄──────────────────  writes "ready" to fd 5 (Octopus::ready)
//!  stops accepting; drains: in-flight requests     starts accepting: connections queued
//!  finish, keep-alive clients get Connection:      meanwhile wait in the kernel, none refused
//!  close, HTTP/2 gets GOAWAY; exits 0             serving alone
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
//! signals and every listener's hand-over ([`Error::SecondInstance`] otherwise).
//!
//! # The hand-over protocol
//!
//! Three environment variables, set together by the old process and removed from the new
//! process's environment as soon as [`Octopus::new`] reads them, so the application's own child
//! processes never see them:
//!
//! | variable | value |
//! |---|---|
//! | `OCTOPUS_LISTENERS` | `FD=KEY` pairs separated by `;`, e.g. `3=tcp:127.0.0.1:8080;4=name:admin` (`%` and `;` in a key are written `%25` and `%3B`) |
//! | `OCTOPUS_READY_FD` | the write end of a pipe; the new process writes one byte once it serves |
//! | `OCTOPUS_PARENT_PID` | the old process's pid |
//!
//! A key is the network and the address *as asked for* ([`ListenerKey`]), so `127.0.0.1:0` gets
//! the same socket (and port) in every generation. Each inherited fd is checked before it is used:
//! it must be open, a listening stream socket on the asked-for address; the readiness fd must be a
//! pipe open for writing. Anything else stops the new process with an [`InheritError`] naming the
//! variable and the fd, before it reports ready, so the old process rolls back.
//!
//! # The control socket
//!
//! With [`Config::control_socket`], the generation that serves answers commands on a Unix stream
//! socket (the `octopus` command of this repository's `cli/` drives it). The socket file is
//! created with mode 0600 ([`Config::control_mode`]); a stale file is replaced, a live one is an
//! error. It is handed over on upgrade like a listener (the same socket, never re-created), so
//! its path always reaches the generation that serves; a client accepted by an older generation
//! is still answered by it. Every client's credentials (`SO_PEERCRED`) are checked: only the
//! server's own user and root are served, others get an error (and a warning is logged).
//!
//! Protocol version 1: one JSON object per line, each way; several commands may follow on one
//! connection. Every answer carries `"v":1` and `"ok"`; a failure has `"error"` (a sentence) and,
//! for an upgrade, `"reason"` (a stable code).
//!
//! | command | answer (besides `"v"` and `"ok"`) |
//! |---|---|
//! | `{"v":1,"cmd":"status"}` | `pid`, `parent_pid` (if alive), `state` (`starting`, `serving`, `upgrading`, `pre-draining`, `draining`), `uptime_ms`, `generation` (1 for a first start), `listeners` (each `key`, `address`, `connections`, `in_flight`), `beside_pid` (a successor kept beside this process), `last_upgrade` (`ok`, `pid`, `duration_ms`, `at`, or `error` and `reason`), `drain_deadline` (RFC 3339, while draining) |
//! | `{"v":1,"cmd":"upgrade","keep_old":false,"timeout":30}` | answered once it is over (the new process is ready, and the old one's [`Server`] has stopped accepting: every connection made after the answer reaches the new process): `pid` (the new process), `old_pid`, `duration_ms`, `old` (`draining`, or `serving` with `keep_old`); or `ok:false` with `reason` `in_progress`, `stopping`, `not_ready`, `spawn`, `working_directory`, `exited` (with `exit_code` or `signal`), `timeout`, `closed_without_ready`, `cancelled` or `watch` |
//! | `{"v":1,"cmd":"stop","wait":true}` | a graceful shutdown; `pid` and `state` at once, or with `wait`, once the drain is over: `finished`, `cut`, `drain_ms` |
//!
//! Bad input is answered with an error (not JSON, an unknown command or option, another version)
//! or closes the connection (a line over 64 KiB; nothing sent for 10 s, after an error line). At
//! most 64 clients are served at once; more are answered `busy` and closed at once. None of it
//! touches the request path: per-listener counts are kept per connection, taken at accept and
//! released at close, and a request only counts itself in its own connection's counter.
//!
//! # Log events
//!
//! Through `tracing`, with stable messages (fields such as `pid=` follow them):
//!
//! | when | message |
//! |---|---|
//! | a listener is bound, inherited, or taken from systemd | `listener created`, `listener adopted`, `listener adopted from systemd` |
//! | [`Server`] serves it | `listening on ADDRESS` |
//! | an inherited Unix socket's path was removed while serving (warning, `path=`) | `the Unix socket path was removed while serving, so nobody could connect; re-creating it`, then `listening on a new socket at the path; …` or `cannot re-create the Unix socket path (ERROR); …` |
//! | an inherited Unix socket's path leads elsewhere (warning, `path=`) | `the Unix socket path is not a socket any more; …`, `the Unix socket path was removed while serving and another socket file is there now; …` |
//! | [`Octopus::ready`] | `server started` (`pid=`), and in a new process `reported ready to the old process` or `the old process is gone; serving alone` |
//! | a shutdown began before [`Octopus::ready`] | `a shutdown began before this process was ready; not reporting ready`, then from [`Server`] `server shut down before it was ready; the old process keeps serving` |
//! | a signal arrives | `signal received: SIGHUP` (or `SIGUSR1`, …) |
//! | an upgrade | `new process spawned`, then `new process ready`, then `old process draining; new process N serves` or `old process kept alive beside new process N` |
//! | an upgrade that fails | `upgrade failed; the old process keeps serving: REASON` (exit status or signal, timeout, OS error, working directory gone) |
//! | a new process stopped by the old one | `new process N stopped and reaped (STATUS)`, or `new process N did not exit within T of SIGTERM; killing it` then `new process reaped` |
//! | a new process ready after the old one began its shutdown (warning) | `new process N reported ready after this process began shutting down; stopping it`, then `upgrade cancelled by shutdown; new process N was stopped and reaped` |
//! | a new process dropped before it took over (warning; a bug if ever seen) | `new process N abandoned before it took over; killing and reaping it` |
//! | an upgrade that is not started | `upgrade refused: REASON` (one in flight, not serving yet, stopping) |
//! | a successor that dies while this process drains | `new process N died after it was ready (STATUS); resuming accepting` |
//! | a shutdown | `graceful shutdown started`, `already stopping; the drain under way goes on` for a repeat, `shutdown asked after the hand-over to process N, which serves; this process goes on draining` after a hand-over |
//! | a drain | `draining connections; deadline TIME` (UTC wall clock), then `drain complete; every connection finished` or `drain deadline reached; cut N connections` |
//! | a control client of another user (warning, `uid=`) | `control connection refused: user N is neither this server's user (M) nor root` |
//! | a command on the control socket | `upgrade asked on the control socket`, `stop asked on the control socket` |
//! | the end | `server shut down` |
#![cfg(unix)]
#![warn(missing_docs)]

mod accept;
mod activation;
mod config;
mod connection;
mod control;
mod drain;
mod env;
mod error;
mod fds;
mod lifecycle;
mod listeners;
mod notify;
mod peer;
mod pidfile;
mod process;
mod readiness;
mod serve;
mod signals;
mod stream;
#[cfg(feature = "tls")]
mod tls;
mod trigger;
mod upgrade;

pub use config::Config;
pub use connection::HttpService;
pub use drain::{Drain, DrainReport, Draining, Hold};
pub use error::{Error, InheritError, UpgradeError};
pub use lifecycle::{AfterUpgrade, Handle, Octopus, Stop};
pub use listeners::{ListenerKey, Network, ParseKeyError};
pub use peer::Peer;
pub use serve::{serve, Serve, Server};
#[cfg(feature = "tls")]
pub use tls::tls_config_from_files;
/// The rustls version octopus is built with. [`Server::bind_tls`] takes its `ServerConfig`: build
/// one with [`tls_config_from_files`], or by hand through this path (client certificates, a
/// certificate resolver) so that its version is always the one `bind_tls` expects.
#[cfg(feature = "tls")]
pub use tokio_rustls::rustls;
