//! The listening sockets and the control socket, bound once or adopted (from systemd socket
//! activation, or from the previous image of this supervisor) through the octopus library.
//!
//! This is the only module of `octopus run` that uses the library.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use super::args::{Address, Listen};

/// One socket PROGRAM gets, in `--listen` order.
pub struct Socket {
    /// Its name in `LISTEN_FDNAMES`.
    pub name: String,
    /// The actual address: `HOST:PORT` or a path.
    pub actual: String,
    /// The actual TCP address, for the `http` and `tcp` readiness checks.
    pub tcp: Option<SocketAddr>,
    pub fd: OwnedFd,
}

pub struct Sockets {
    /// Keeps the library's registry (its own copies of the sockets) alive.
    octopus: octopus::Octopus,
    pub listeners: Vec<Socket>,
    pub control: Option<UnixListener>,
}

impl Sockets {
    /// Binds or adopts every `--listen` socket and the control socket. Must run in a Tokio
    /// runtime; consumes `LISTEN_FDS` and friends from the environment.
    pub fn open(listen: &[Listen], control: Option<&PathBuf>) -> Result<Sockets, octopus::Error> {
        let octopus = octopus::Octopus::builder().handle_signals(false).build()?;
        let mut listeners = Vec::new();
        for entry in listen {
            let (fd, actual, tcp): (OwnedFd, String, Option<SocketAddr>) = match &entry.address {
                Address::Tcp(address) => {
                    let listener = octopus.listen_tcp(address)?;
                    let local = listener.local_addr().ok();
                    let shown = local.map_or_else(|| address.clone(), |a| a.to_string());
                    (listener.into(), shown, local)
                }
                Address::Unix(path) => {
                    let listener = octopus.listen_unix(path, None)?;
                    (listener.into(), path.display().to_string(), None)
                }
            };
            listeners.push(Socket {
                name: entry.name.clone(),
                actual,
                tcp,
                fd,
            });
        }
        let control = match control {
            Some(path) => Some(octopus.listen_unix(path, Some(0o600))?),
            None => None,
        };
        Ok(Sockets {
            octopus,
            listeners,
            control,
        })
    }

    /// The control socket's fd, to carry across the supervisor's own re-exec.
    pub fn control_fd(&self) -> Option<BorrowedFd<'_>> {
        self.control.as_ref().map(|c| c.as_fd())
    }

    /// Closes every copy this process holds, so that new connections are refused.
    pub fn close(self) {
        self.octopus.close_listeners();
    }
}
