//! systemd notifications from the supervisor itself (READY, RELOADING, STOPPING, MAINPID), to
//! the `NOTIFY_SOCKET` it was started with; without one they are not sent. Instances get a
//! notify socket of the supervisor's own instead.

use std::os::unix::net::{SocketAddr, UnixDatagram};

pub fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => abstract_address(name),
        None => SocketAddr::from_pathname(&path),
    };
    if let Ok(address) = address {
        // A datagram socket never blocks on a full receiver here: it fails instead, and a lost
        // notification is not worth holding up the supervisor.
        let _ = socket.set_nonblocking(true);
        let _ = socket.send_to_addr(state.as_bytes(), &address);
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_: &[u8]) -> std::io::Result<SocketAddr> {
    Err(std::io::ErrorKind::Unsupported.into())
}
