//! The readiness handshake: a pipe from the new process back to the old one.
//!
//! The old process creates the pipe and passes the write end to the new process. The new process
//! writes one byte once its listeners are adopted and it is accepting, then closes the pipe. The old
//! process acts only on that byte; end-of-file without it means the new process failed.

use std::io;
use std::os::fd::OwnedFd;

use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
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

/// How long the report may wait for room in the pipe. It is a fresh pipe holding nothing, so
/// only a stray writer sharing it could fill it; a report must not hang the process on it.
const WRITE_LIMIT: Duration = Duration::from_secs(1);

/// Waits, at most [`WRITE_LIMIT`], until the write end can take the report without blocking.
pub(crate) fn wait_writable(write: &OwnedFd) -> io::Result<()> {
    let deadline = std::time::Instant::now() + WRITE_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout = Timespec::try_from(left).map_err(io::Error::other)?;
        let mut fds = [PollFd::new(write, PollFlags::OUT)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the readiness pipe stayed full for {WRITE_LIMIT:?}"),
                ));
            }
            Ok(_) if fds[0].revents().contains(PollFlags::OUT) => return Ok(()),
            // POLLERR: the read end is closed; the write says so precisely.
            Ok(_) => return Ok(()),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reports ready on the write end without blocking: a full pipe is an error, not a hang.
pub(crate) fn notify_ready(write: &OwnedFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(write)?;
    rustix::fs::fcntl_setfl(write, flags | rustix::fs::OFlags::NONBLOCK)?;
    let written = rustix::io::retry_on_intr(|| rustix::io::write(write, &[READY]))?;
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
        wait_writable(&write).unwrap();
        notify_ready(&write).unwrap();
        drop(write);
        assert!(wait_ready(read).await.unwrap());
    }

    #[test]
    fn a_full_pipe_is_an_error_within_the_limit_not_a_hang() {
        let (_read, write) = pipe().unwrap();
        let fill = [0u8; 4096];
        let flags = rustix::fs::fcntl_getfl(&write).unwrap();
        rustix::fs::fcntl_setfl(&write, flags | rustix::fs::OFlags::NONBLOCK).unwrap();
        while rustix::io::write(&write, &fill).is_ok() {}
        let started = std::time::Instant::now();
        let err = wait_writable(&write).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(
            started.elapsed() < WRITE_LIMIT * 3,
            "{:?}",
            started.elapsed()
        );
        let err = notify_ready(&write).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
    }

    #[tokio::test]
    async fn closing_without_ready_is_seen() {
        let (read, write) = pipe().unwrap();
        drop(write);
        assert!(!wait_ready(read).await.unwrap());
    }
}
