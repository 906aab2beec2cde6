//! The successor's side: offers its HTTP listeners, then takes the connections it is sent and
//! queues each for its listener's accept loop.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;
use std::task::{Context, Poll};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::{MAX_BATCH, MAX_MESSAGE, Offer};
use crate::accept::Accept;
use crate::peer::PeerAddr;
use crate::stream::{AnyListener, AnyStream, Family};

/// This process's end of the relay channel from the process it replaces, until it reports ready.
#[derive(Debug)]
pub(crate) struct Inbox {
    channel: OwnedFd,
    routes: HashMap<String, mpsc::UnboundedSender<OwnedFd>>,
}

/// The connections relayed for one listener, in the order they came.
#[derive(Debug)]
pub(crate) struct Route(Mutex<mpsc::UnboundedReceiver<OwnedFd>>);

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const RECV_FLAGS: RecvFlags = RecvFlags::DONTWAIT.union(RecvFlags::CMSG_CLOEXEC);
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const RECV_FLAGS: RecvFlags = RecvFlags::DONTWAIT;

impl Inbox {
    pub fn new(channel: OwnedFd) -> Inbox {
        Inbox {
            channel,
            routes: HashMap::new(),
        }
    }

    /// Takes the connections relayed for the listener `key`.
    pub fn route(&mut self, key: String) -> Route {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.routes.insert(key, sender);
        Route(Mutex::new(receiver))
    }

    /// Offers the routed listeners to the old process, then takes its connections for as long as
    /// it sends them. Called just before this process reports ready (the old process reads the
    /// offer once it has read "ready"), in the runtime. Without a route, says nothing: the old
    /// process then closes its idle connections as it would without a successor.
    pub fn open(self) {
        if self.routes.is_empty() {
            return;
        }
        let offer = Offer::new(self.routes.keys().cloned().collect()).encode();
        if let Err(e) = rustix::net::send(&self.channel, &offer, rustix::net::SendFlags::empty()) {
            tracing::debug!("cannot offer to take the old process's connections: {e}");
            return;
        }
        // SAFETY: the AsyncFd owns the channel, which stays open, with the same number, until
        // the AsyncFd is dropped.
        match unsafe { AsyncFd::register(self.channel) } {
            Ok(channel) => {
                tokio::spawn(take_relayed(channel, self.routes));
            }
            Err(e) => tracing::debug!("cannot watch the relay channel: {e}"),
        }
    }
}

async fn take_relayed(
    channel: AsyncFd<OwnedFd>,
    routes: HashMap<String, mpsc::UnboundedSender<OwnedFd>>,
) {
    let mut message = vec![0u8; MAX_MESSAGE];
    let mut taken = 0usize;
    loop {
        let Ok(mut ready) = channel.readable().await else {
            break;
        };
        let received = match ready.try_io(|channel| receive(channel.get_ref(), &mut message)) {
            Ok(received) => received,
            Err(_would_block) => continue,
        };
        match received {
            Ok(Some((n, sockets))) => {
                let keys = std::str::from_utf8(&message[..n]).unwrap_or_default();
                let keys = keys.split(';').map(crate::env::unescape);
                for (key, socket) in keys.zip(sockets) {
                    match key.as_deref().and_then(|key| routes.get(key)) {
                        Some(route) => {
                            taken += 1;
                            // A listener no longer accepting drops it: its client sees a close.
                            let _ = route.send(socket);
                        }
                        None => tracing::debug!(?key, "a relayed connection for no listener here"),
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("cannot take connections from the old process: {e}");
                break;
            }
        }
    }
    if taken > 0 {
        tracing::info!(
            connections = taken,
            "took the old process's idle connections"
        );
    } else {
        tracing::debug!("the old process relayed no connection");
    }
}

/// One message: its length in `message` and the sockets it carries, one per key; `None` at the
/// end of the channel. A message whose sockets and keys do not pair up is skipped.
fn receive(channel: &OwnedFd, message: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            channel.as_fd(),
            &mut [IoSliceMut::new(message)],
            &mut control,
            RECV_FLAGS,
        )?;
        let mut sockets: Vec<OwnedFd> = Vec::new();
        for part in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = part {
                sockets.extend(fds);
            }
        }
        if got.bytes == 0 && sockets.is_empty() {
            return Ok(None);
        }
        let truncated = got
            .flags
            .intersects(rustix::net::ReturnFlags::TRUNC | rustix::net::ReturnFlags::CTRUNC);
        let keys = message[..got.bytes.min(message.len())]
            .split(|b| *b == b';')
            .count();
        if !truncated && keys == sockets.len() {
            #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
            for socket in &sockets {
                rustix::io::fcntl_setfd(socket, rustix::io::FdFlags::CLOEXEC)?;
            }
            return Ok(Some((got.bytes, sockets)));
        }
    }
}

/// A listener of this process and the connections relayed to it: the accept loop serves both.
#[derive(Debug)]
pub(crate) struct Relayed {
    /// `None` once a shutdown closed it: relayed connections may still come.
    listener: Option<AnyListener>,
    family: Family,
    route: Option<Route>,
}

impl Relayed {
    pub fn new(listener: AnyListener, route: Option<Route>) -> Relayed {
        Relayed {
            family: listener.family(),
            listener: Some(listener),
            route,
        }
    }
}

impl Route {
    async fn next(&self) -> Option<OwnedFd> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<OwnedFd>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .poll_recv(cx)
    }

    /// Whether a connection is queued or may still come.
    fn is_open(&self) -> bool {
        let queue = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !queue.is_closed() || !queue.is_empty()
    }

    fn try_next(&self) -> Option<OwnedFd> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_recv()
            .ok()
    }
}

impl Accept for Relayed {
    type Stream = AnyStream;
    type Peer = PeerAddr;

    async fn accept(&self) -> io::Result<(AnyStream, PeerAddr)> {
        match (&self.listener, &self.route) {
            (Some(listener), None) => listener.accept().await,
            (Some(listener), Some(route)) => tokio::select! {
                biased;
                Some(socket) = route.next() => self.family.adopt(socket),
                accepted = listener.accept() => accepted,
            },
            (None, Some(route)) => match route.next().await {
                Some(socket) => self.family.adopt(socket),
                None => std::future::pending().await,
            },
            (None, None) => std::future::pending().await,
        }
    }

    fn accept_now(&self) -> io::Result<(AnyStream, PeerAddr)> {
        match (
            self.route.as_ref().and_then(Route::try_next),
            &self.listener,
        ) {
            (Some(socket), _) => self.family.adopt(socket),
            (None, Some(listener)) => listener.accept_now(),
            (None, None) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn describe(&self) -> String {
        match &self.listener {
            Some(listener) => listener.describe(),
            None => "a closed listener".into(),
        }
    }

    fn stop_listening(&mut self) {
        self.listener = None;
    }

    fn relays(&self) -> bool {
        self.route.as_ref().is_some_and(Route::is_open)
    }

    fn poll_relayed(&self, cx: &mut Context<'_>) -> crate::accept::NextRelayed<Self> {
        let Some(route) = &self.route else {
            return Poll::Ready(None);
        };
        route
            .poll_next(cx)
            .map(|socket| socket.map(|socket| self.family.adopt(socket)))
    }
}
