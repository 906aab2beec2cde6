//! Sockets that survive upgrades: listening stream sockets, and bound UDP sockets (called
//! listeners here too).
//!
//! Each listener is identified by a [`ListenerKey`]. A new process that asks for the same key
//! receives the same kernel socket, with the same accept or receive queue; on a first start the
//! socket is bound fresh.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use socket2::{Domain, Protocol, Socket, Type};

use crate::activation::Activated;
use crate::error::Error;
use crate::key::{ListenerKey, Network};

/// How many connections the kernel queues before the application accepts them.
const BACKLOG: i32 = 1024;

/// The listeners of this process: inherited ones not yet asked for, and the ones in use.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    inherited: Mutex<Vec<(ListenerKey, OwnedFd)>>,
    activated: Mutex<Vec<Activated>>,
    active: Mutex<Vec<(ListenerKey, OwnedFd)>>,
}

impl Registry {
    pub fn new(inherited: Vec<(ListenerKey, OwnedFd)>, activated: Vec<Activated>) -> Self {
        Registry {
            inherited: Mutex::new(inherited),
            activated: Mutex::new(activated),
            active: Mutex::default(),
        }
    }

    /// The TCP listener for `key`: inherited if the previous process had it, else bound to `bind`.
    pub fn tcp(&self, key: ListenerKey, bind: &str) -> Result<TcpListener, Error> {
        let fd = self.obtain(key, || bind_inet(bind, Type::STREAM), |adopted| adopted)?;
        Ok(TcpListener::from(fd))
    }

    /// The UDP socket for `key`: inherited if the previous process had it, else bound to `bind`.
    pub fn udp(&self, key: ListenerKey, bind: &str) -> Result<UdpSocket, Error> {
        let fd = self.obtain(key, || bind_inet(bind, Type::DGRAM), |adopted| adopted)?;
        Ok(UdpSocket::from(fd))
    }

    /// The Unix listener at `path`: inherited if the previous process had it, else bound fresh
    /// (replacing a stale socket file) with permission bits `mode`.
    ///
    /// An inherited socket that its path no longer leads to (the path was removed while serving)
    /// is replaced, when the path is free, by a fresh socket bound there, which is returned first
    /// and handed over from now on. The inherited one comes second: nobody can connect to it any
    /// more, but what was queued on it before the path went is still there to accept.
    pub fn unix(
        &self,
        path: &Path,
        mode: Option<u32>,
    ) -> Result<(UnixListener, Option<UnixListener>), Error> {
        let key = ListenerKey::unix(path.to_string_lossy());
        let mut unreachable = None;
        let fd = self.obtain(
            key,
            || bind_unix(path, mode),
            |adopted| match rebind_if_unreachable(path, mode, &adopted) {
                Some(fresh) => {
                    unreachable = Some(UnixListener::from(adopted));
                    fresh
                }
                None => adopted,
            },
        )?;
        Ok((UnixListener::from(fd), unreachable))
    }

    /// The socket for `key`, from the previous process or from systemd (passed through `adopt`,
    /// which may put another in its place), or from `bind`; this registry keeps a copy to hand
    /// over, the caller gets another.
    fn obtain(
        &self,
        key: ListenerKey,
        bind: impl FnOnce() -> Result<OwnedFd, Error>,
        adopt: impl FnOnce(OwnedFd) -> OwnedFd,
    ) -> Result<OwnedFd, Error> {
        let mut active = lock(&self.active);
        if active.iter().any(|(k, _)| *k == key) {
            return Err(Error::DuplicateListener {
                key: key.to_string(),
            });
        }
        let fd = if let Some(fd) = self.take_inherited(&key) {
            tracing::info!(%key, address = %local_address(&fd), "listener adopted");
            adopt(fd)
        } else if let Some(activated) = self.take_activated(&key) {
            tracing::info!(%key, name = %activated.name, address = %local_address(&activated.fd), "listener adopted from systemd");
            adopt(activated.fd)
        } else {
            let fd = bind()?;
            tracing::info!(%key, address = %local_address(&fd), "listener created");
            fd
        };
        let copy = duplicate(&fd)?;
        active.push((key, fd));
        Ok(copy)
    }

    fn take_activated(&self, key: &ListenerKey) -> Option<Activated> {
        let mut activated = lock(&self.activated);
        let at = activated.iter().position(|a| serves(key, a))?;
        Some(activated.swap_remove(at))
    }

    fn take_inherited(&self, key: &ListenerKey) -> Option<OwnedFd> {
        let mut inherited = lock(&self.inherited);
        let at = inherited.iter().position(|(k, _)| k == key)?;
        Some(inherited.swap_remove(at).1)
    }

    /// Runs `f` with the fds to hand to a new process; they stay open while `f` runs.
    pub fn with_handover<R>(&self, f: impl FnOnce(&[(ListenerKey, BorrowedFd<'_>)]) -> R) -> R {
        let active = lock(&self.active);
        let fds: Vec<_> = active
            .iter()
            .map(|(k, fd)| (k.clone(), fd.as_fd()))
            .collect();
        f(&fds)
    }

    /// The listeners in use: each key, and the actual address (see [`local_address`]).
    pub fn describe_active(&self) -> Vec<(ListenerKey, String)> {
        lock(&self.active)
            .iter()
            .map(|(key, fd)| (key.clone(), local_address(fd)))
            .collect()
    }

    /// Closes inherited listeners that this version of the program did not ask for.
    pub fn close_unused_inherited(&self) {
        for (key, _) in lock(&self.inherited).drain(..) {
            tracing::warn!(%key, "inherited listener not asked for by this process; closing it");
        }
        for activated in lock(&self.activated).drain(..) {
            tracing::warn!(name = %activated.name, "socket passed by systemd matches no listener asked for; closing it");
        }
    }

    /// Closes this process's copies of every listener.
    pub fn close_all(&self) {
        lock(&self.inherited).clear();
        lock(&self.activated).clear();
        lock(&self.active).clear();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded lists stay consistent even if a holder panicked: every change is one push or remove.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether a socket systemd passed is the one `key` asks for: of the right kind (datagram for
/// UDP only), by name or by address.
fn serves(key: &ListenerKey, activated: &Activated) -> bool {
    if activated.datagram != (key.network() == Network::Udp) {
        return false;
    }
    if activated.name == key.address() {
        return true;
    }
    let Ok(local) = socket2::SockRef::from(&activated.fd).local_addr() else {
        return false;
    };
    match key.network() {
        Network::Tcp | Network::Udp => local
            .as_socket()
            .is_some_and(|actual| crate::fds::inet_matches(key.address(), actual).is_ok()),
        Network::Unix => local
            .as_pathname()
            .is_some_and(|path| path == Path::new(key.address())),
        Network::Named => false,
    }
}

/// A socket's address for logs: `HOST:PORT`, or a Unix socket's path.
pub(crate) fn local_address(fd: &impl AsFd) -> String {
    match socket2::SockRef::from(fd).local_addr() {
        Ok(address) => match (address.as_socket(), address.as_pathname()) {
            (Some(inet), _) => inet.to_string(),
            (None, Some(path)) => path.display().to_string(),
            (None, None) => "an unnamed socket".into(),
        },
        Err(e) => format!("an unknown address ({e})"),
    }
}

/// Another fd on the same socket (the registry keeps one copy, the caller gets another).
fn duplicate(fd: &OwnedFd) -> Result<OwnedFd, Error> {
    fd.try_clone().map_err(|source| Error::Io {
        what: "cannot duplicate a listening socket",
        source,
    })
}

/// Resolves `address` and binds the first of its addresses that accepts a socket of `kind`:
/// a TCP listener for `STREAM`, a UDP socket for `DGRAM`.
fn bind_inet(address: &str, kind: Type) -> Result<OwnedFd, Error> {
    let mut candidates: Vec<SocketAddr> = address
        .to_socket_addrs()
        .map_err(|e| Error::Address {
            address: address.into(),
            reason: e.to_string(),
        })?
        .collect();
    // A name such as `localhost` may resolve to both families: bind IPv4 first, as Go's
    // net.Listen (and so Octopus) does, so `-h localhost` answers on 127.0.0.1.
    candidates.sort_by_key(|candidate| !candidate.is_ipv4());
    let mut last_error = None;
    for candidate in &candidates {
        match bind_inet_addr(*candidate, kind) {
            Ok(fd) => return Ok(fd),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(source) => Error::Bind {
            address: address.into(),
            source,
        },
        None => Error::Address {
            address: address.into(),
            reason: "it resolves to no address".into(),
        },
    })
}

fn bind_inet_addr(address: SocketAddr, kind: Type) -> std::io::Result<OwnedFd> {
    let stream = kind == Type::STREAM;
    let protocol = if stream { Protocol::TCP } else { Protocol::UDP };
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    if address.ip().is_unspecified() && address.is_ipv6() {
        // `[::]` takes IPv4 too, as Go's net.Listen does, whatever the host's
        // net.ipv6.bindv6only default: one socket for a dual-stack server.
        socket.set_only_v6(false)?;
    }
    if stream {
        // Lets a fresh start bind while connections of a previous run linger in TIME_WAIT. Not
        // for UDP, where it would let two servers bind one port and split its datagrams.
        socket.set_reuse_address(true)?;
    }
    socket.bind(&address.into())?;
    if stream {
        socket.listen(BACKLOG)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// A fresh socket at `path` when the inherited listener `adopted` can no longer be reached there
/// and the path is free; `None` to keep serving `adopted` alone. Every outcome but the usual one
/// (the path leads to `adopted`) is logged as a warning naming the path.
fn rebind_if_unreachable(path: &Path, mode: Option<u32>, adopted: &OwnedFd) -> Option<OwnedFd> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(file) if file.file_type().is_socket() => {
            match crate::fds::is_bound_to(adopted.as_fd(), &file) {
                // Where the kernel cannot say which file a socket is bound to, a socket file at the
                // path is taken for this one: another socket can only be bound there once this
                // one's file was removed, which is the rare case this check is for.
                Some(true) | None => return None,
                Some(false) => tracing::warn!(
                    path = %shown,
                    "the Unix socket path was removed while serving and another socket file is there now; \
                     the inherited socket is unreachable by path"
                ),
            }
        }
        Ok(_) => {
            tracing::warn!(
                path = %shown,
                "the Unix socket path is not a socket any more; it is left alone, and the inherited \
                 socket, unreachable by path, keeps being served: remove the file and upgrade again"
            );
            return None;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::warn!(
            path = %shown,
            "the Unix socket path was removed while serving, so nobody could connect; re-creating it"
        ),
        Err(e) => {
            tracing::warn!(
                path = %shown,
                "cannot check the Unix socket path ({e}); keeping the inherited socket as it is"
            );
            return None;
        }
    }
    // bind_unix connect-probes a socket file there, so a live server's socket is never taken over.
    match bind_unix(path, mode) {
        Ok(fresh) => {
            tracing::info!(
                path = %shown,
                "listening on a new socket at the path; it is the one handed over from now on"
            );
            Some(fresh)
        }
        Err(e) => {
            tracing::warn!(
                path = %shown,
                "cannot re-create the Unix socket path ({e}); the inherited socket, unreachable by \
                 path, keeps being served"
            );
            None
        }
    }
}

/// Binds a Unix stream socket at `path`. A socket file nobody answers on is left over from a
/// crashed run and is replaced; anything else at the path is never removed.
fn bind_unix(path: &Path, mode: Option<u32>) -> Result<OwnedFd, Error> {
    let address = path.display().to_string();
    let bind_error = |source| Error::Bind {
        address: address.clone(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(bind_error(std::io::ErrorKind::AddrInUse.into()));
            }
            Err(_) => {
                tracing::info!(path = %address, "replacing a stale socket file");
                std::fs::remove_file(path).map_err(bind_error)?;
            }
        },
        Ok(_) => {
            return Err(Error::Address {
                address,
                reason: "the path exists and is not a socket; remove it or pick another".into(),
            });
        }
        Err(_) => {}
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(bind_error)?;
    let address_of = socket2::SockAddr::unix(path).map_err(bind_error)?;
    socket.bind(&address_of).map_err(bind_error)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(bind_error)?;
    }
    socket.listen(BACKLOG).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn inherited_listener_is_the_same_socket() {
        let original = bind_inet("127.0.0.1:0", Type::STREAM).unwrap();
        let address = TcpListener::from(original.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let registry = Registry::new(vec![(ListenerKey::tcp("127.0.0.1:0"), original)], vec![]);
        let listener = registry
            .tcp(ListenerKey::tcp("127.0.0.1:0"), "127.0.0.1:0")
            .unwrap();
        assert_eq!(listener.local_addr().unwrap(), address);
    }

    #[test]
    fn the_ipv6_wildcard_takes_ipv4_too_whatever_the_host_default() {
        let Ok(fd) = bind_inet("[::]:0", Type::STREAM) else {
            eprintln!("no IPv6 on this host: nothing to check");
            return;
        };
        let socket = socket2::Socket::from(fd);
        assert!(!socket.only_v6().unwrap());
        let port = socket.local_addr().unwrap().as_socket().unwrap().port();
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    }

    #[test]
    fn an_inherited_udp_socket_is_the_same_socket_and_port_zero_keeps_its_port() {
        let original = bind_inet("127.0.0.1:0", Type::DGRAM).unwrap();
        let id = socket_id(&original);
        let address = UdpSocket::from(original.try_clone().unwrap())
            .local_addr()
            .unwrap();
        let key = ListenerKey::udp("127.0.0.1:0");
        let registry = Registry::new(vec![(key.clone(), original)], vec![]);
        let socket = registry.udp(key.clone(), "127.0.0.1:0").unwrap();
        assert_eq!(socket_id(&socket), id);
        assert_eq!(socket.local_addr().unwrap(), address);
        let err = registry.udp(key, "127.0.0.1:0").unwrap_err();
        assert!(matches!(err, Error::DuplicateListener { .. }), "{err}");
        registry.with_handover(|fds| {
            assert_eq!(fds[0].0, ListenerKey::udp("127.0.0.1:0"));
            assert_eq!(socket_id(&fds[0].1), id);
        });
    }

    #[test]
    fn a_udp_key_takes_a_systemd_datagram_socket_and_a_tcp_key_does_not() {
        let udp = bind_inet("127.0.0.1:0", Type::DGRAM).unwrap();
        let id = socket_id(&udp);
        let port = UdpSocket::from(udp.try_clone().unwrap())
            .local_addr()
            .unwrap()
            .port();
        let activated = |fd| Activated {
            name: "dns".into(),
            fd,
            datagram: true,
        };
        let registry = Registry::new(vec![], vec![activated(udp)]);
        let tcp = registry
            .tcp(ListenerKey::named("dns"), "127.0.0.1:0")
            .unwrap();
        assert_ne!(socket_id(&tcp), id, "a datagram socket is no TCP listener");
        let socket = registry
            .udp(ListenerKey::udp(format!("127.0.0.1:{port}")), "127.0.0.1:0")
            .unwrap();
        assert_eq!(socket_id(&socket), id, "matched by address");
    }

    #[test]
    fn a_udp_port_in_use_names_the_address() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let err = Registry::default()
            .udp(ListenerKey::udp(&address), &address)
            .unwrap_err();
        assert!(err.to_string().contains(&address), "{err}");
    }

    #[test]
    fn asking_twice_is_an_error() {
        let registry = Registry::default();
        registry
            .tcp(ListenerKey::tcp("127.0.0.1:0"), "127.0.0.1:0")
            .unwrap();
        let err = registry
            .tcp(ListenerKey::tcp("127.0.0.1:0"), "127.0.0.1:0")
            .unwrap_err();
        assert!(matches!(err, Error::DuplicateListener { .. }), "{err}");
    }

    #[test]
    fn port_in_use_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let err = bind_inet(&address, Type::STREAM).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&address) && text.contains("in use"), "{text}");
    }

    #[test]
    fn unix_socket_replaces_a_stale_file_but_not_a_live_one_or_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a crashed run leaves its socket file");
        let registry = Registry::default();
        let (listener, _) = registry.unix(&path, Some(0o600)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = Registry::default().unix(&path, None).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
        drop(listener);
        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        let err = Registry::default().unix(&file, None).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }

    /// Runs `f` and returns what it logged, as the fmt subscriber writes it.
    fn logged<R>(f: impl FnOnce() -> R) -> (R, String) {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                lock(&self.0).extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl tracing_subscriber::fmt::MakeWriter<'_> for Sink {
            type Writer = Sink;
            fn make_writer(&self) -> Sink {
                self.clone()
            }
        }
        let sink = Sink::default();
        let subscriber = tracing_subscriber::fmt().with_writer(sink.clone()).finish();
        let result = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(lock(&sink.0).clone()).unwrap();
        (result, text)
    }

    /// The kernel socket behind an fd (two fds on one socket share it).
    fn socket_id(fd: &impl AsFd) -> u64 {
        rustix::fs::fstat(fd).unwrap().st_ino
    }

    /// A listening socket at `path`, handed to a registry as the previous process would.
    fn inherited_at(path: &Path) -> (Registry, u64) {
        let fd = bind_unix(path, None).unwrap();
        let id = socket_id(&fd);
        let key = ListenerKey::unix(path.to_string_lossy());
        (Registry::new(vec![(key, fd)], vec![]), id)
    }

    #[test]
    fn an_inherited_unix_socket_whose_path_was_removed_is_replaced_at_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let (registry, old) = inherited_at(&path);
        let queued = UnixStream::connect(&path).unwrap();
        std::fs::remove_file(&path).unwrap();

        let ((listener, unreachable), log) = logged(|| registry.unix(&path, Some(0o640)).unwrap());
        assert!(
            log.contains("WARN")
                && log.contains("was removed")
                && log.contains(&*path.to_string_lossy()),
            "{log}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o640,
            "the path is re-created with the bits asked for"
        );
        assert_ne!(socket_id(&listener), old);
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"x").unwrap();
        let (mut accepted, _) = listener
            .accept()
            .expect("a client of the path is accepted here");
        let mut byte = [0];
        accepted.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x", "the accepted connection is that client's");
        let unreachable = unreachable.expect("the inherited socket is returned beside");
        assert_eq!(socket_id(&unreachable), old);
        unreachable
            .accept()
            .expect("what was queued before the path went is still there to accept");
        drop(queued);
        registry.with_handover(|fds| {
            assert_eq!(fds.len(), 1);
            assert_eq!(
                socket_id(&fds[0].1),
                socket_id(&listener),
                "the new socket is handed over"
            );
        });
    }

    #[test]
    fn a_systemd_socket_whose_path_was_removed_is_replaced_at_the_path_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let fd = bind_unix(&path, None).unwrap();
        let old = socket_id(&fd);
        let registry = Registry::new(
            vec![],
            vec![Activated {
                name: "unknown".into(),
                fd,
                datagram: false,
            }],
        );
        std::fs::remove_file(&path).unwrap();

        let ((listener, unreachable), log) = logged(|| registry.unix(&path, None).unwrap());
        assert!(
            log.contains("adopted from systemd") && log.contains("was removed"),
            "{log}"
        );
        assert_eq!(socket_id(&unreachable.unwrap()), old);
        let _client = UnixStream::connect(&path).unwrap();
        listener
            .accept()
            .expect("a client of the path is accepted here");
    }

    #[test]
    fn a_file_put_at_an_inherited_unix_socket_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let (registry, old) = inherited_at(&path);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "keep me").unwrap();

        let ((listener, unreachable), log) = logged(|| registry.unix(&path, None).unwrap());
        assert!(
            log.contains("WARN")
                && log.contains("not a socket")
                && log.contains(&*path.to_string_lossy()),
            "{log}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        assert_eq!(
            socket_id(&listener),
            old,
            "the inherited socket keeps being served"
        );
        assert!(unreachable.is_none());
    }

    #[test]
    fn an_inherited_unix_socket_still_at_its_path_is_adopted_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let (registry, old) = inherited_at(&path);
        let file = std::fs::metadata(&path).unwrap();

        let ((listener, unreachable), log) = logged(|| registry.unix(&path, Some(0o600)).unwrap());
        assert!(!log.contains("WARN"), "{log}");
        assert_eq!(socket_id(&listener), old);
        assert!(unreachable.is_none());
        let now = std::fs::metadata(&path).unwrap();
        assert_eq!(
            (now.ino(), now.mode()),
            (file.ino(), file.mode()),
            "the path is not touched"
        );
        let _client = UnixStream::connect(&path).unwrap();
        listener
            .accept()
            .expect("a client of the path is accepted here");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn another_live_socket_at_an_inherited_unix_socket_path_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let (registry, old) = inherited_at(&path);
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();

        let ((listener, unreachable), log) = logged(|| registry.unix(&path, None).unwrap());
        assert!(
            log.contains("WARN") && log.contains("another socket") && log.contains("in use"),
            "{log}"
        );
        assert_eq!(socket_id(&listener), old);
        assert!(unreachable.is_none());
        let _client = UnixStream::connect(&path).unwrap();
        other
            .accept()
            .expect("the path still leads to the other server");
    }

    #[test]
    fn handover_lists_active_listeners_only() {
        let registry = Registry::new(
            vec![(
                ListenerKey::named("old"),
                bind_inet("127.0.0.1:0", Type::STREAM).unwrap(),
            )],
            vec![],
        );
        let listener = registry
            .tcp(ListenerKey::tcp("127.0.0.1:0"), "127.0.0.1:0")
            .unwrap();
        registry.close_unused_inherited();
        registry.with_handover(|fds| {
            assert_eq!(fds.len(), 1);
            assert_eq!(fds[0].0, ListenerKey::tcp("127.0.0.1:0"));
            assert_ne!(fds[0].1.as_raw_fd(), listener.as_raw_fd());
        });
    }
}
