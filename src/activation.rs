//! systemd socket activation: listening sockets passed at first start (`LISTEN_FDS`,
//! `LISTEN_PID`, `LISTEN_FDNAMES`), read with the `sd-notify` crate and checked like any
//! inherited fd. Each is matched to a listener the program asks for, by name or by address, and is
//! then handed over on upgrades like any other.

use std::os::fd::OwnedFd;

use crate::error::InheritError;
use crate::fds;
use crate::listeners::ListenerKey;

const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// A socket systemd passed, with the name it gave it (`FileDescriptorName=`, or `unknown`).
#[derive(Debug)]
pub(crate) struct Activated {
    pub name: String,
    pub fd: OwnedFd,
}

/// Takes the sockets systemd passed to this process, if any, and removes the variables so that
/// processes the application spawns do not see them.
pub(crate) fn take() -> Result<Vec<Activated>, InheritError> {
    let passed = sd_notify::listen_fds_with_names().map_err(|e| InheritError::Malformed {
        var: "LISTEN_FDS",
        value: std::env::var("LISTEN_FDS").unwrap_or_default(),
        reason: format!("{e} (LISTEN_FDNAMES must name each fd)"),
    });
    for var in VARS {
        std::env::remove_var(var);
    }
    let mut activated = Vec::new();
    for (fd, name) in passed? {
        let fd = fds::adopt_listener("LISTEN_FDS", fd, &ListenerKey::named(name.clone()))?;
        tracing::info!(%name, "socket passed by systemd");
        activated.push(Activated { name, fd });
    }
    Ok(activated)
}
