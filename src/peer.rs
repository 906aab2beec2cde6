//! The client at the other end of a connection, carried by every request served.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;

/// The client of a connection: its address and, over TLS, what the handshake settled.
///
/// Every request that [`Server`](crate::Server) and [`serve`](crate::serve) hand to the service
/// carries it in its extensions, so any tower or hyper service reads it. It is made once per
/// connection; each request gets a clone of one `Arc`.
///
/// ```
/// use http::Request;
///
/// fn client(request: &Request<hyper::body::Incoming>) -> String {
///     match request.extensions().get::<octopus::Peer>() {
///         Some(peer) => match (peer.addr(), peer.server_name()) {
///             (Some(addr), Some(name)) => format!("{addr} asked for {name} over TLS"),
///             (Some(addr), None) => addr.to_string(),
///             (None, _) => "a local client on a Unix socket".into(),
///         },
///         None => "not served by octopus".into(),
///     }
/// }
/// ```
///
/// With the `axum` feature, each request from a TCP or TLS listener also carries axum's
/// `ConnectInfo<SocketAddr>`, so the `ConnectInfo` extractor works on a plain `Router`, and
/// `axum::Extension<octopus::Peer>` extracts this type on every listener.
///
/// `Router::into_make_service_with_connect_info::<SocketAddr>()` is not needed, and not
/// accepted: axum's own `serve` knows its listener's type when it compiles, but one octopus
/// server mixes TCP, TLS and Unix listeners chosen at run time, and a make-service asked for a
/// Unix connection's `SocketAddr` could only fail or invent one.
#[derive(Clone)]
pub struct Peer(Arc<Connection>);

struct Connection {
    address: PeerAddr,
    tls: Option<Tls>,
}

/// What a TLS handshake settled.
struct Tls {
    alpn: Option<Vec<u8>>,
    server_name: Option<String>,
}

/// The address of a connection's client, as the listener's accept returned it.
#[derive(Clone, Debug)]
pub(crate) enum PeerAddr {
    Tcp(SocketAddr),
    Unix(tokio::net::unix::SocketAddr),
}

impl Peer {
    pub(crate) fn new(address: PeerAddr) -> Self {
        Peer(Arc::new(Connection { address, tls: None }))
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls(address: PeerAddr, session: &tokio_rustls::rustls::ServerConnection) -> Self {
        let tls = Tls {
            alpn: session.alpn_protocol().map(<[u8]>::to_vec),
            server_name: session.server_name().map(str::to_owned),
        };
        Peer(Arc::new(Connection {
            address,
            tls: Some(tls),
        }))
    }

    /// The client's IP address and port, on TCP and TLS listeners; `None` on a Unix socket.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self.0.address {
            PeerAddr::Tcp(addr) => Some(addr),
            PeerAddr::Unix(_) => None,
        }
    }

    /// The client's address on a Unix socket listener (usually unnamed: clients seldom bind
    /// their end); `None` on TCP and TLS.
    pub fn unix_addr(&self) -> Option<&tokio::net::unix::SocketAddr> {
        match &self.0.address {
            PeerAddr::Unix(addr) => Some(addr),
            PeerAddr::Tcp(_) => None,
        }
    }

    /// Whether the connection came through a TLS listener.
    pub fn is_tls(&self) -> bool {
        self.0.tls.is_some()
    }

    /// The protocol the TLS handshake agreed on by ALPN (`b"h2"`, `b"http/1.1"`), if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.0.tls.as_ref()?.alpn.as_deref()
    }

    /// The host name the TLS client asked for (SNI), if it sent one.
    pub fn server_name(&self) -> Option<&str> {
        self.0.tls.as_ref()?.server_name.as_deref()
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("Peer");
        match &self.0.address {
            PeerAddr::Tcp(addr) => debug.field("addr", addr),
            PeerAddr::Unix(addr) => debug.field("unix_addr", addr),
        };
        if let Some(tls) = &self.0.tls {
            let alpn = tls.alpn.as_deref().map(String::from_utf8_lossy);
            debug
                .field("alpn", &alpn)
                .field("server_name", &tls.server_name);
        }
        debug.finish()
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(addr) => addr.fmt(f),
            PeerAddr::Unix(addr) => match addr.as_pathname() {
                Some(path) => path.display().fmt(f),
                None => f.write_str("an unnamed Unix socket"),
            },
        }
    }
}

impl Peer {
    /// Gives `request` this peer (and, with the `axum` feature, its `ConnectInfo<SocketAddr>`).
    pub(crate) fn attach<B>(&self, request: &mut Request<B>) {
        let extensions = request.extensions_mut();
        #[cfg(feature = "axum")]
        if let Some(addr) = self.addr() {
            extensions.insert(axum::extract::ConnectInfo(addr));
        }
        extensions.insert(self.clone());
    }

    /// The client's address, for logs.
    pub(crate) fn address(&self) -> &PeerAddr {
        &self.0.address
    }
}
