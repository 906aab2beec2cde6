//! systemd socket activation: sockets passed at first start (`LISTEN_FDS`, `LISTEN_PID`,
//! `LISTEN_FDNAMES`), read with the `sd-notify` crate and checked like any inherited fd. Each is
//! matched to a listener the program asks for, by name or by address, and is then handed over on
//! upgrades like any other.
//!
//! The variables are honoured only when `LISTEN_PID` names this process, so the application's
//! own child processes, which inherit them, ignore them; they are never removed from the
//! environment (see [`crate::env`]), and a successor's environment is built without them.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::InheritError;
use crate::fds;

/// The variables systemd sets.
pub(crate) const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// A socket systemd passed, with the name it gave it (`FileDescriptorName=`, or `unknown`).
#[derive(Debug)]
pub(crate) struct Activated {
    pub name: String,
    pub fd: OwnedFd,
    /// A datagram socket (`ListenDatagram=`) rather than a listening stream socket.
    pub datagram: bool,
}

/// Whether [`take`] ran in this process: the variables stay set, and the fds they name must be
/// taken once, by one owner.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes the sockets systemd passed to this process, if any; the first call only.
pub(crate) fn take() -> Result<Vec<Activated>, InheritError> {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let passed = sd_notify::listen_fds_with_names().map_err(|e| InheritError::Malformed {
        var: "LISTEN_FDS",
        value: std::env::var("LISTEN_FDS").unwrap_or_default(),
        reason: format!("{e} (LISTEN_FDNAMES must name each fd)"),
    })?;
    if passed.len() == 0 {
        if let Some(pid) = std::env::var_os("LISTEN_PID") {
            tracing::debug!(
                "ignoring LISTEN_FDS: LISTEN_PID={} is not this process ({}), so systemd passed \
                 the sockets to an ancestor",
                pid.to_string_lossy(),
                std::process::id()
            );
        }
    }
    let mut activated = Vec::new();
    for (fd, name) in passed {
        // SAFETY: sd-notify checked that LISTEN_PID names this process, so systemd passed it fds
        // 3 to 3 + LISTEN_FDS, which nothing else in the process owns, and TAKEN makes this
        // the only time they are taken.
        let (fd, datagram) = unsafe { fds::adopt_activated("LISTEN_FDS", fd) }?;
        tracing::info!(%name, datagram, "socket passed by systemd");
        activated.push(Activated { name, fd, datagram });
    }
    Ok(activated)
}
