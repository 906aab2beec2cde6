//! The readiness handshake: a pipe from the new process back to the old one.
//!
//! The old process creates the pipe and passes the write end to the new process. The new process
//! writes one byte once its listeners are adopted and it is accepting, then closes the pipe. The old
//! process acts only on that byte; end-of-file without it means the new process failed.

use std::io;
use std::os::fd::OwnedFd;

use rustix::pipe::PipeFlags;
use tokio::io::AsyncReadExt;

const READY: u8 = b'R';

/// Creates the pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?)
}

/// Waits on the read end: `Ok(true)` once the new process reported ready, `Ok(false)` if it closed
/// the pipe (or exited) without doing so.
pub(crate) async fn wait_ready(read: OwnedFd) -> io::Result<bool> {
    let mut receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
    let mut byte = [0u8; 1];
    loop {
        match receiver.read(&mut byte).await {
            Ok(0) => return Ok(false),
            Ok(_) if byte[0] == READY => return Ok(true),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reports ready on the write end, then closes it.
pub(crate) fn notify_ready(write: OwnedFd) -> io::Result<()> {
    let written = rustix::io::retry_on_intr(|| rustix::io::write(&write, &[READY]))?;
    if written == 1 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "readiness pipe accepted no byte",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_byte_is_seen() {
        let (read, write) = pipe().unwrap();
        notify_ready(write).unwrap();
        assert!(wait_ready(read).await.unwrap());
    }

    #[tokio::test]
    async fn closing_without_ready_is_seen() {
        let (read, write) = pipe().unwrap();
        drop(write);
        assert!(!wait_ready(read).await.unwrap());
    }
}
