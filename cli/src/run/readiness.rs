//! Whether a new instance is ready to serve, by the `--ready` mode.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixDatagram};

use super::args::Ready;
use super::log::log;

/// How often the `http` and `tcp` modes look again.
const POLL: Duration = Duration::from_millis(50);
/// How long one `http` probe may take.
const PROBE_LIMIT: Duration = Duration::from_secs(2);

/// An instance's own `NOTIFY_SOCKET`: a datagram socket of the supervisor's, removed on drop.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds at `path`, replacing a file left there (by a previous image of this supervisor).
    pub fn bind(path: PathBuf) -> io::Result<NotifySocket> {
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        Ok(NotifySocket { socket, path })
    }

    /// Takes over a socket a previous image of the supervisor bound at `path`.
    pub fn adopt(
        socket: std::os::unix::net::UnixDatagram,
        path: PathBuf,
    ) -> io::Result<NotifySocket> {
        socket.set_nonblocking(true)?;
        rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::CLOEXEC)?;
        Ok(NotifySocket {
            socket: UnixDatagram::from_std(socket)?,
            path,
        })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What is checked for one instance.
pub enum Check {
    Notify(NotifySocket),
    Http {
        address: SocketAddr,
        path: String,
    },
    /// The instance `pid` and the inodes of the listening sockets.
    Tcp {
        pid: u32,
        sockets: Vec<u64>,
    },
    Delay(Duration),
}

impl Check {
    pub fn new(
        mode: &Ready,
        pid: u32,
        notify: Option<NotifySocket>,
        first_tcp: Option<SocketAddr>,
        sockets: Vec<u64>,
    ) -> Check {
        match (mode, notify) {
            (Ready::Notify, Some(socket)) => Check::Notify(socket),
            (Ready::Http(path), _) => Check::Http {
                address: reachable(first_tcp.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))),
                path: path.clone(),
            },
            (Ready::Tcp, _) => Check::Tcp { pid, sockets },
            (Ready::Delay(delay), _) => Check::Delay(*delay),
            (Ready::Notify, None) => Check::Delay(Duration::ZERO),
        }
    }

    /// Resolves once the instance `pid` is ready. With `notify`, goes on logging what the
    /// instance sends afterwards, so run it in a task of its own.
    pub async fn run(self, pid: u32, ready: impl FnOnce()) {
        match self {
            Check::Notify(socket) => {
                let mut ready = Some(ready);
                let mut buffer = vec![0u8; 4096];
                loop {
                    let Ok(n) = socket.socket.recv(&mut buffer).await else {
                        return;
                    };
                    let text = String::from_utf8_lossy(&buffer[..n]);
                    for line in text.lines().filter(|l| !l.is_empty()) {
                        if line == "READY=1" {
                            if let Some(ready) = ready.take() {
                                ready();
                            }
                        } else {
                            log!("instance {pid} says {line}");
                        }
                    }
                }
            }
            Check::Http { address, path } => {
                while !tokio::time::timeout(PROBE_LIMIT, http_ok(address, &path))
                    .await
                    .is_ok_and(|ok| ok)
                {
                    tokio::time::sleep(POLL).await;
                }
                ready();
            }
            Check::Tcp { pid, sockets } => {
                while !accepting(pid, &sockets) {
                    tokio::time::sleep(POLL).await;
                }
                ready();
            }
            Check::Delay(delay) => {
                tokio::time::sleep(delay).await;
                ready();
            }
        }
    }
}

/// A wildcard address is asked on loopback.
fn reachable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), address.port())
        }
        _ => address,
    }
}

/// Whether GET `path` on a fresh connection is answered with a 2xx.
async fn http_ok(address: SocketAddr, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return false;
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nUser-Agent: octopus-run\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    head.starts_with(b"HTTP/1.") && head[8] == b' ' && head[9] == b'2'
}

/// Whether the instance waits for connections on one of the listening sockets (by inode,
/// whatever fd it moved them to): registered in one of its epoll sets, or a thread blocked in
/// `accept` on it (Linux /proc). Servers that wait in `poll` or `select` are not seen; use
/// `notify` or `http` for them.
fn accepting(pid: u32, sockets: &[u64]) -> bool {
    let in_epoll = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).is_ok_and(|dir| {
        dir.flatten().any(|entry| {
            std::fs::read_to_string(entry.path()).is_ok_and(|info| {
                info.lines()
                    .filter(|line| line.starts_with("tfd:"))
                    .filter_map(|line| line.split_once(" ino:"))
                    .filter_map(|(_, ino)| {
                        u64::from_str_radix(ino.split_whitespace().next()?, 16).ok()
                    })
                    .any(|ino| sockets.contains(&ino))
            })
        })
    });
    let accept_calls = [libc::SYS_accept as u64, libc::SYS_accept4 as u64];
    let is_listener = |fd: u64| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).is_ok_and(|link| {
            let link = link.to_string_lossy();
            link.strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|ino| ino.parse::<u64>().ok())
                .is_some_and(|ino| sockets.contains(&ino))
        })
    };
    in_epoll
        || std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|dir| {
            dir.flatten().any(|task| {
                std::fs::read_to_string(task.path().join("syscall")).is_ok_and(|call| {
                    let mut fields = call.split_whitespace();
                    let number = fields.next().and_then(|n| n.parse::<u64>().ok());
                    let fd = fields
                        .next()
                        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
                    number.is_some_and(|n| accept_calls.contains(&n)) && fd.is_some_and(is_listener)
                })
            })
        })
}
