//! `octopus run`: a supervisor that gives zero-downtime upgrades and crash restarts to a server
//! written in any language that takes its sockets by the systemd socket-activation convention.
//!
//! The supervisor binds the `--listen` sockets once (or adopts them) and keeps them open for its
//! whole life, so the kernel queues connections whenever no instance accepts: between a crash
//! and the restart, and while an upgrade hands over. docs/supervisor.md describes it all.

mod args;
mod control;
mod instance;
mod log;
mod notify;
mod readiness;
mod reexec;
mod restart;
mod sockets;
mod spawn;
mod status;
mod supervisor;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;

pub use args::RunArgs;

use log::log;
use supervisor::Supervisor;

/// Runs the supervisor to its end; its exit status is the instance's (see docs/supervisor.md).
pub fn main(args: RunArgs) -> ExitCode {
    log::start();
    reexec::remember_binary();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            log!("cannot start the runtime: {e}");
            log::flush();
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(run(args));
    log::flush();
    ExitCode::from(code)
}

async fn run(args: RunArgs) -> u8 {
    let resumed = reexec::take_state();
    let activated = resumed.is_none() && std::env::var_os("LISTEN_FDS").is_some();
    let sockets = match sockets::Sockets::open(&args.listen, args.control.as_ref()) {
        Ok(sockets) => sockets,
        Err(e) => {
            log!("cannot open the sockets: {e}");
            return 2;
        }
    };
    for socket in &sockets.listeners {
        log!(
            "listening on {} (LISTEN_FDNAMES {})",
            socket.actual,
            socket.name
        );
    }
    let dir = runtime_dir();
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
    {
        log!("cannot create {}: {e}", dir.display());
        sockets.close();
        return 2;
    }
    let (events, receiver) = tokio::sync::mpsc::unbounded_channel();
    if let Some(listener) = sockets.control.as_ref().and_then(|c| c.try_clone().ok()) {
        if let Err(e) = control::serve(listener, events.clone()) {
            log!("cannot serve the control socket: {e}");
        }
    }
    let mut supervisor = Supervisor::new(args, sockets, dir, events);
    match resumed {
        Some(state) => reexec::resume(&mut supervisor, state),
        None => first_start(&mut supervisor, activated),
    }
    let code = supervisor.run(receiver).await;
    log!("exiting with status {code}");
    supervisor.finish();
    code
}

/// Notes what this supervisor creates, to remove it at exit: a socket systemd passed is
/// systemd's to remove, one bound here is this supervisor's.
fn first_start(supervisor: &mut Supervisor, activated: bool) {
    if !activated {
        for entry in &supervisor.args.listen {
            if let args::Address::Unix(path) = &entry.address {
                supervisor.created.push(path.clone());
            }
        }
        supervisor.created.extend(supervisor.args.control.clone());
    }
    if let Some(path) = supervisor.args.pid_file.clone() {
        match std::fs::write(&path, format!("{}\n", std::process::id())) {
            Ok(()) => supervisor.created.push(path),
            Err(e) => log!("cannot write the pid file {}: {e}", path.display()),
        }
    }
}

/// A directory of this supervisor's own for its instances' notify sockets.
fn runtime_dir() -> PathBuf {
    let base = std::env::var_os("RUNTIME_DIRECTORY")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("octopus-run-{}", std::process::id()))
}
