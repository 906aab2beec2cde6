//! Checks on inherited file descriptors before this process takes ownership of them.
//!
//! An inherited fd is only trusted once it is open, of the expected kind and (for listeners)
//! listening on the address its key asks for. Only then is it made close-on-exec and
//! non-blocking and wrapped in an [`OwnedFd`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use rustix::fs::FileType;
use rustix::io::FdFlags;
use socket2::{SockRef, Type};

use crate::error::InheritError;
use crate::key::{ListenerKey, Network};

/// Validates `fd` as the socket for `key` (a listening stream socket, or for a `udp:` key a
/// datagram socket, bound to the key's address) and takes ownership of it.
///
/// # Safety
///
/// `fd` must be an fd this process was given (by a parent, across `exec`) that nothing in the
/// process owns: the returned [`OwnedFd`] closes it when dropped, so any other owner would
/// close or use a number that may by then name another file.
pub(crate) unsafe fn adopt_listener(
    var: &'static str,
    fd: RawFd,
    key: &ListenerKey,
) -> Result<OwnedFd, InheritError> {
    let bad = |problem: String| InheritError::BadFd { var, fd, problem };
    let borrowed = borrow_open(fd).map_err(bad)?;
    check_socket(borrowed, key).map_err(bad)?;
    make_private(borrowed).map_err(bad)?;
    // SAFETY: the fd is open (checked above) and the caller guarantees nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Validates `fd` as a socket passed by systemd socket activation (a listening stream socket or
/// a bound datagram socket) and takes ownership of it; `true` for a datagram socket.
///
/// # Safety
///
/// As [`adopt_listener`].
pub(crate) unsafe fn adopt_activated(
    var: &'static str,
    fd: RawFd,
) -> Result<(OwnedFd, bool), InheritError> {
    let bad = |problem: String| InheritError::BadFd { var, fd, problem };
    let borrowed = borrow_open(fd).map_err(bad)?;
    expect_type(borrowed, FileType::Socket).map_err(bad)?;
    let datagram = socket_type(borrowed).map_err(bad)? == Type::DGRAM;
    if !datagram {
        expect_listening(borrowed).map_err(bad)?;
    }
    make_private(borrowed).map_err(bad)?;
    // SAFETY: the fd is open (checked above) and the caller guarantees nothing else owns it.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, datagram))
}

/// Whether `fd` is the kind of socket `key` asks for, bound to its address.
fn check_socket(fd: BorrowedFd<'_>, key: &ListenerKey) -> Result<(), String> {
    expect_type(fd, FileType::Socket)?;
    let kind = socket_type(fd)?;
    if key.network() == Network::Udp {
        if kind != Type::DGRAM {
            return Err(format!(
                "is not a datagram socket (a TCP or stream socket?), but {key} asks for one"
            ));
        }
    } else {
        if kind != Type::STREAM {
            return Err("is not a stream socket (a UDP or datagram socket?)".into());
        }
        expect_listening(fd)?;
    }
    let local = SockRef::from(&fd)
        .local_addr()
        .map_err(|e| format!("has no local address ({e})"))?;
    match key.network() {
        Network::Tcp | Network::Udp => {
            let actual = local
                .as_socket()
                .ok_or_else(|| format!("is not an IP socket, but {key} asks for one"))?;
            inet_matches(key.address(), actual)
        }
        Network::Unix => {
            let actual = local.as_pathname().ok_or_else(|| {
                format!("is not a Unix socket with a path, but {key} asks for one")
            })?;
            if actual == Path::new(key.address()) {
                Ok(())
            } else {
                Err(format!("listens on {}, not on {key}", actual.display()))
            }
        }
        Network::Named => Ok(()),
    }
}

fn socket_type(fd: BorrowedFd<'_>) -> Result<Type, String> {
    SockRef::from(&fd)
        .r#type()
        .map_err(|e| format!("cannot be queried ({e})"))
}

fn expect_listening(fd: BorrowedFd<'_>) -> Result<(), String> {
    match is_listening(&SockRef::from(&fd)) {
        Ok(true) => Ok(()),
        Ok(false) => Err("is a stream socket that is not listening (connected or unbound)".into()),
        Err(e) => Err(format!("cannot be queried ({e})")),
    }
}

/// Validates `fd` as the write end of the readiness pipe and takes ownership of it.
///
/// # Safety
///
/// As [`adopt_listener`].
pub(crate) unsafe fn adopt_ready_pipe(
    var: &'static str,
    fd: RawFd,
) -> Result<OwnedFd, InheritError> {
    let bad = |problem: String| InheritError::BadFd { var, fd, problem };
    let borrowed = borrow_open(fd).map_err(bad)?;
    expect_type(borrowed, FileType::Fifo).map_err(bad)?;
    let mode =
        rustix::fs::fcntl_getfl(borrowed).map_err(|e| bad(format!("cannot be queried ({e})")))?;
    if !mode.contains(rustix::fs::OFlags::WRONLY) && !mode.contains(rustix::fs::OFlags::RDWR) {
        return Err(bad("is a pipe not open for writing".into()));
    }
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)
        .map_err(|e| bad(format!("cannot be made close-on-exec ({e})")))?;
    // SAFETY: the fd is open (checked above) and the caller guarantees nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Validates `fd` as this process's end of the relay channel (a Unix socket of the relay's
/// type) and takes ownership of it, non-blocking.
///
/// # Safety
///
/// As [`adopt_listener`].
pub(crate) unsafe fn adopt_relay_channel(
    var: &'static str,
    fd: RawFd,
) -> Result<OwnedFd, InheritError> {
    let bad = |problem: String| InheritError::BadFd { var, fd, problem };
    let borrowed = borrow_open(fd).map_err(bad)?;
    expect_type(borrowed, FileType::Socket).map_err(bad)?;
    let socket = SockRef::from(&borrowed);
    let unix = socket
        .domain()
        .map_err(|e| bad(format!("cannot be queried ({e})")))?
        == socket2::Domain::UNIX;
    let expected = Type::from(crate::relay::CHANNEL_TYPE.as_raw() as i32);
    if !unix || socket_type(borrowed).map_err(bad)? != expected {
        return Err(bad("is not the Unix socket pair of a relay channel".into()));
    }
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)
        .map_err(|e| bad(format!("cannot be made close-on-exec ({e})")))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| bad(format!("cannot be made non-blocking ({e})")))?;
    // SAFETY: the fd is open (checked above) and the caller guarantees nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn borrow_open(fd: RawFd) -> Result<BorrowedFd<'static>, String> {
    // SAFETY: F_GETFD is defined for any integer (it fails with EBADF on a closed fd), and the
    // borrow is only used for queries until the caller takes ownership of the fd.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match rustix::io::fcntl_getfd(borrowed) {
        Ok(_) => Ok(borrowed),
        Err(rustix::io::Errno::BADF) => Err("is not open".into()),
        Err(e) => Err(format!("cannot be queried ({e})")),
    }
}

fn expect_type(fd: BorrowedFd<'_>, expected: FileType) -> Result<(), String> {
    let stat = rustix::fs::fstat(fd).map_err(|e| format!("cannot be queried ({e})"))?;
    let actual = FileType::from_raw_mode(stat.st_mode);
    if actual == expected {
        return Ok(());
    }
    let describe = |t: FileType| match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a pipe",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown kind",
    };
    Err(format!(
        "is {}, not {}",
        describe(actual),
        describe(expected)
    ))
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn is_listening(socket: &SockRef<'_>) -> std::io::Result<bool> {
    socket.is_listener()
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn is_listening(socket: &SockRef<'_>) -> std::io::Result<bool> {
    // Without SO_ACCEPTCONN a listener is recognised by having no peer.
    Ok(socket.peer_addr().is_err())
}

fn make_private(fd: BorrowedFd<'_>) -> Result<(), String> {
    rustix::io::fcntl_setfd(fd, FdFlags::CLOEXEC)
        .map_err(|e| format!("cannot be made close-on-exec ({e})"))?;
    rustix::io::ioctl_fionbio(fd, true).map_err(|e| format!("cannot be made non-blocking ({e})"))
}

/// Whether the listening Unix socket `fd` is bound to the socket file `file`, or `None` when this
/// system cannot tell.
///
/// A socket file's inode is not the socket's (fstat on the fd names a sockfs inode), and
/// `getsockname` or `/proc/net/unix` give the path the socket was bound to, not whether that path
/// still leads to it. Linux's sock_diag does: it reports the device and inode of the file the socket
/// was bound to, which either are the file now at the path or are not.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn is_bound_to(fd: BorrowedFd<'_>, file: &std::fs::Metadata) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let (dev, ino) = bound_file(fd)?;
    // The kernel reports its own device encoding (20 minor bits) and a 32-bit inode number.
    let same_dev = dev >> 20 == rustix::fs::major(file.dev())
        && dev & 0xf_ffff == rustix::fs::minor(file.dev());
    Some(same_dev && u64::from(ino) == file.ino() & u64::from(u32::MAX))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn is_bound_to(_fd: BorrowedFd<'_>, _file: &std::fs::Metadata) -> Option<bool> {
    None
}

/// The device (kernel encoding) and inode of the file a Unix socket was bound to, asked of the
/// kernel with one sock_diag request (`SOCK_DIAG_BY_FAMILY`, `UDIAG_SHOW_VFS`); `None` if the
/// kernel does not answer it (no `unix_diag` support, or a socket with no file).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn bound_file(fd: BorrowedFd<'_>) -> Option<(u32, u32)> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink};
    // From linux/sock_diag.h, linux/netlink.h and linux/unix_diag.h.
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_HEADER: usize = 16;
    const UNIX_DIAG_MSG: usize = 16;
    const UDIAG_SHOW_VFS: u32 = 2;
    const UNIX_DIAG_VFS: u16 = 1;
    const AF_UNIX: u8 = 1;
    let ino = u32::try_from(rustix::fs::fstat(fd).ok()?.st_ino).ok()?;
    let diag = rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        Some(netlink::SOCK_DIAG),
    )
    .ok()?;
    let mut request = Vec::with_capacity(40);
    request.extend_from_slice(&40u32.to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns it
    request.extend_from_slice(&[AF_UNIX, 0, 0, 0]); // family, protocol, padding
    request.extend_from_slice(&0u32.to_ne_bytes()); // states: ignored for one socket
    request.extend_from_slice(&ino.to_ne_bytes());
    request.extend_from_slice(&UDIAG_SHOW_VFS.to_ne_bytes());
    request.extend_from_slice(&[0xff; 8]); // no cookie: look the socket up by inode
    rustix::net::send(&diag, &request, SendFlags::empty()).ok()?;
    // The kernel answers a single-socket request while handling the send, so the reply is
    // already queued: never wait for it.
    let mut reply = [0u8; 256];
    let (len, _) = rustix::net::recv(&diag, &mut reply, RecvFlags::DONTWAIT).ok()?;
    let reply = reply.get(..len)?;
    let u16_at = |at: usize| Some(u16::from_ne_bytes(reply.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_ne_bytes(reply.get(at..at + 4)?.try_into().ok()?));
    if u16_at(4)? != SOCK_DIAG_BY_FAMILY || u32_at(NLMSG_HEADER + 4)? != ino {
        return None;
    }
    let end = usize::try_from(u32_at(0)?).ok()?.min(reply.len());
    let mut at = NLMSG_HEADER + UNIX_DIAG_MSG;
    while at + 4 <= end {
        let attr_len = usize::from(u16_at(at)?);
        if u16_at(at + 2)? == UNIX_DIAG_VFS && attr_len >= 12 {
            return Some((u32_at(at + 8)?, u32_at(at + 4)?));
        }
        if attr_len < 4 {
            return None;
        }
        at += (attr_len + 3) & !3;
    }
    None
}

/// Whether an IP socket bound to `actual` satisfies the requested `HOST:PORT`.
pub(crate) fn inet_matches(requested: &str, actual: SocketAddr) -> Result<(), String> {
    let wanted: Vec<SocketAddr> = requested
        .to_socket_addrs()
        .map_err(|e| format!("cannot be checked: {requested} does not resolve ({e})"))?
        .collect();
    let fits = wanted.iter().any(|want| {
        let port_fits = want.port() == 0 || want.port() == actual.port();
        let ip_fits = want.ip() == actual.ip()
            || (want.ip().is_unspecified() && want.is_ipv4() == actual.is_ipv4());
        port_fits && ip_fits
    });
    if fits {
        Ok(())
    } else {
        Err(format!(
            "listens on {actual}, not on the asked-for {requested}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    const VAR: &str = "OCTOPUS_LISTENERS";

    /// Adopts an fd the test still owns; the caller leaks or forgets its own owner if it passes.
    fn adopt(fd: RawFd, key: &ListenerKey) -> Result<OwnedFd, InheritError> {
        // SAFETY: every test either expects a refusal (nothing is owned then) or forgets its own
        // owner of `fd` before this adoption succeeds.
        unsafe { adopt_listener(VAR, fd, key) }
    }

    fn problem(result: Result<OwnedFd, InheritError>) -> String {
        match result {
            Err(InheritError::BadFd { var, problem, .. }) => {
                assert_eq!(var, VAR);
                problem
            }
            other => panic!("expected BadFd, got {other:?}"),
        }
    }

    #[test]
    fn port_zero_matches_any_port_on_the_same_ip() {
        assert!(inet_matches("127.0.0.1:0", "127.0.0.1:41234".parse().unwrap()).is_ok());
        assert!(inet_matches("127.0.0.1:80", "127.0.0.1:80".parse().unwrap()).is_ok());
        assert!(inet_matches("0.0.0.0:80", "0.0.0.0:80".parse().unwrap()).is_ok());
        assert!(inet_matches("localhost:80", "127.0.0.1:80".parse().unwrap()).is_ok());
        assert!(inet_matches("127.0.0.1:80", "127.0.0.1:81".parse().unwrap()).is_err());
        assert!(inet_matches("127.0.0.2:80", "127.0.0.1:80".parse().unwrap()).is_err());
        assert!(inet_matches("[::1]:80", "127.0.0.1:80".parse().unwrap()).is_err());
    }

    #[test]
    fn adopts_a_listening_tcp_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd: OwnedFd = listener.into();
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        let owned = adopt(raw, &ListenerKey::tcp("127.0.0.1:0")).unwrap();
        let flags = rustix::io::fcntl_getfd(&owned).unwrap();
        assert!(flags.contains(FdFlags::CLOEXEC));
    }

    #[test]
    fn rejects_a_closed_fd() {
        // Closed at a number far above the lowest free ones, which other tests running at the
        // same time are given: none of them reopens it before the check.
        let file = tempfile::tempfile().unwrap();
        let high = rustix::io::fcntl_dupfd_cloexec(&file, 512).unwrap();
        let raw = high.as_raw_fd();
        drop(high);
        assert_eq!(
            problem(adopt(raw, &ListenerKey::tcp("127.0.0.1:0"))),
            "is not open"
        );
    }

    #[test]
    fn rejects_a_regular_file_and_a_pipe() {
        let file = tempfile::tempfile().unwrap();
        let p = problem(adopt(file.as_raw_fd(), &ListenerKey::tcp("127.0.0.1:0")));
        assert_eq!(p, "is a regular file, not a socket");
        let (read, _write) = rustix::pipe::pipe().unwrap();
        let p = problem(adopt(read.as_raw_fd(), &ListenerKey::tcp("127.0.0.1:0")));
        assert_eq!(p, "is a pipe, not a socket");
    }

    #[test]
    fn rejects_udp_and_connected_sockets() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = problem(adopt(udp.as_raw_fd(), &ListenerKey::tcp("127.0.0.1:0")));
        assert!(p.contains("not a stream socket"), "{p}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let p = problem(adopt(client.as_raw_fd(), &ListenerKey::tcp("127.0.0.1:0")));
        assert!(p.contains("not listening"), "{p}");
    }

    #[test]
    fn adopts_a_udp_socket_for_a_udp_key_only() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let p = problem(adopt(udp.as_raw_fd(), &ListenerKey::udp("[::1]:0")));
        assert!(p.contains("listens on 127.0.0.1:"), "{p}");
        let p = problem(adopt(
            udp.as_raw_fd(),
            &ListenerKey::udp(format!("127.0.0.1:{}", port ^ 1)),
        ));
        assert!(p.contains("not on the asked-for"), "{p}");
        let fd: OwnedFd = udp.into();
        let raw = fd.as_raw_fd();
        std::mem::forget(fd);
        let owned = adopt(raw, &ListenerKey::udp(format!("127.0.0.1:{port}"))).unwrap();
        assert!(
            rustix::io::fcntl_getfd(&owned)
                .unwrap()
                .contains(FdFlags::CLOEXEC)
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = problem(adopt(
            listener.as_raw_fd(),
            &ListenerKey::udp("127.0.0.1:0"),
        ));
        assert!(p.contains("is not a datagram socket"), "{p}");
    }

    #[test]
    fn systemd_may_pass_listening_and_datagram_sockets_only() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        // SAFETY: refused, so nothing takes ownership of the client's fd.
        let refused = unsafe { adopt_activated(VAR, client.as_raw_fd()) };
        assert!(
            matches!(&refused, Err(InheritError::BadFd { problem, .. }) if problem.contains("not listening")),
            "{refused:?}"
        );
        for (fd, datagram) in [(OwnedFd::from(listener), false), (udp.into(), true)] {
            let raw = fd.as_raw_fd();
            std::mem::forget(fd);
            // SAFETY: the test's owner of `raw` was forgotten just above.
            let (_owned, is_datagram) = unsafe { adopt_activated(VAR, raw) }.unwrap();
            assert_eq!(is_datagram, datagram);
        }
    }

    #[test]
    fn rejects_a_listener_on_another_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let other = if port == 65535 { port - 1 } else { port + 1 };
        let key = ListenerKey::tcp(format!("127.0.0.1:{other}"));
        let p = problem(adopt(listener.as_raw_fd(), &key));
        assert!(p.contains(&format!("listens on 127.0.0.1:{port}")), "{p}");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn tells_a_unix_sockets_own_file_from_another_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let ours = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let file = std::fs::metadata(&path).unwrap();
        assert_eq!(is_bound_to(ours.as_fd(), &file), Some(true));
        std::fs::remove_file(&path).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let file = std::fs::metadata(&path).unwrap();
        assert_eq!(is_bound_to(ours.as_fd(), &file), Some(false));
    }

    #[test]
    fn ready_pipe_must_be_a_writable_pipe() {
        let (read, write) = rustix::pipe::pipe().unwrap();
        // SAFETY: refused, so nothing takes ownership of `read`.
        let p = match unsafe { adopt_ready_pipe("OCTOPUS_READY_FD", read.as_raw_fd()) } {
            Err(InheritError::BadFd { problem, .. }) => problem,
            other => panic!("{other:?}"),
        };
        assert_eq!(p, "is a pipe not open for writing");
        let raw = write.as_raw_fd();
        std::mem::forget(write);
        // SAFETY: the test's owner of `raw` was forgotten just above.
        unsafe { adopt_ready_pipe("OCTOPUS_READY_FD", raw) }.unwrap();
    }
}
