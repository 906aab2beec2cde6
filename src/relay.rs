//! Idle HTTP/1 keep-alive connections relayed to the successor, instead of closed.
//!
//! Closing an idle keep-alive connection races its client: a request the client writes while the
//! server's FIN is on its way is lost, and no server-side wait closes that window (RFC 9112
//! §9.3.1 leaves it to client retries). After an upgrade there is a process that can serve the
//! connection instead, so nothing needs to be closed: the old process sends the socket itself
//! (`SCM_RIGHTS`) to its successor, which serves it as if it had just accepted it. The kernel
//! socket, with any bytes of a next request already in it, never closes, so the client sees
//! nothing at all: its next request, sent at any moment, is answered by the new process.
//!
//! The channel is a Unix socket pair made for each upgrade; the successor finds its end in
//! [`RELAY_FD_VAR`](crate::env::RELAY_FD_VAR). Before it reports ready, a successor that serves
//! HTTP says on it which listeners it takes connections for ([`Offer`]); one that says nothing (a
//! program not served by [`Server`](crate::Server), an older octopus) gets nothing, and the old
//! process retires its connections as before. Then each message relays connections: their
//! listeners' keys, with the sockets attached in the same order.
//!
//! Only a connection with nothing half-read is relayed: plain HTTP/1 (TLS state lives in the old
//! process's memory, HTTP/2 has GOAWAY), between requests, with no byte of a next request taken
//! into the old process's buffers.

mod receive;
mod send;

pub(crate) use receive::{Inbox, Relayed, Route};
pub(crate) use send::{Relay, Sending};

use std::io;
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

/// What a successor's offer starts with: names the protocol and its version.
const OFFER_PREFIX: &str = "octopus-relay 1;";

/// The longest message: an offer of many listeners, or the keys of a batch of connections.
const MAX_MESSAGE: usize = 64 * 1024;

/// The most connections one message carries (the kernel's limit is 253 fds).
const MAX_BATCH: usize = 64;

/// The socket type of the channel: message boundaries, and an end of stream when a side is gone.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(crate) const CHANNEL_TYPE: SocketType = SocketType::SEQPACKET;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(crate) const CHANNEL_TYPE: SocketType = SocketType::DGRAM;

/// A new channel: this process's end, and the successor's (both close-on-exec; the spawn clears
/// the flag on the successor's only).
pub(crate) fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let (mine, theirs) = socketpair(
        AddressFamily::UNIX,
        CHANNEL_TYPE,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::io::ioctl_fionbio(&mine, true)?;
    Ok((mine, theirs))
}

/// The listeners a successor takes connections for, by key (as written in `OCTOPUS_LISTENERS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    keys: Vec<String>,
}

impl Offer {
    pub fn new(keys: Vec<String>) -> Offer {
        Offer { keys }
    }

    fn encode(&self) -> Vec<u8> {
        let keys: Vec<String> = self.keys.iter().map(|k| crate::env::escape(k)).collect();
        format!("{OFFER_PREFIX}{}", keys.join(";")).into_bytes()
    }

    /// `None` for anything but an offer of this version.
    fn decode(message: &[u8]) -> Option<Offer> {
        let text = std::str::from_utf8(message).ok()?;
        let keys = text.strip_prefix(OFFER_PREFIX)?;
        let keys = keys
            .split(';')
            .filter(|k| !k.is_empty())
            .map(crate::env::unescape)
            .collect::<Option<Vec<String>>>()?;
        Some(Offer { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::accept::Accept;
    use crate::stream::{AnyListener, AnyStream};

    const WAIT: Duration = Duration::from_secs(10);

    fn borrow(stream: &AnyStream) -> std::os::fd::BorrowedFd<'_> {
        match stream {
            AnyStream::Tcp(s) => s.as_fd(),
            AnyStream::Unix(s) => s.as_fd(),
        }
    }

    /// A successor's inbox taking connections for `keys`, offered, and the old process's relay
    /// that read the offer.
    fn relay_to(keys: &[&str]) -> (Arc<Relay>, Vec<Route>) {
        let (mine, theirs) = channel().unwrap();
        rustix::io::ioctl_fionbio(&theirs, true).unwrap();
        let mut inbox = Inbox::new(theirs);
        let routes = keys.iter().map(|k| inbox.route(k.to_string())).collect();
        inbox.open();
        (Relay::from_offer(mine).expect("an offer"), routes)
    }

    /// A loopback connection: the client's end, and the server's as an accept loop has it.
    async fn connection(listener: &tokio::net::TcpListener) -> (std::net::TcpStream, AnyStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(WAIT)).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, AnyStream::Tcp(server))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_relayed_connection_stays_open_and_its_waiting_bytes_reach_the_successor() {
        let (relay, mut routes) = relay_to(&["tcp:127.0.0.1:0"]);
        assert!(relay.accepts("tcp:127.0.0.1:0"));
        assert!(!relay.accepts("tcp:127.0.0.1:1"), "a listener not offered");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (mut client, old_end) = connection(&listener).await;
        // A request written while the connection changes hands: nothing reads it on the way.
        client.write_all(b"ping").unwrap();
        let key: Arc<str> = "tcp:127.0.0.1:0".into();
        assert!(matches!(relay.send(borrow(&old_end), &key), Sending::Sent));
        drop(old_end);
        assert_eq!(relay.sent(), 1);
        let listener = AnyListener::Tcp {
            listener,
            nodelay: true,
        };
        let successor = Relayed::new(listener, routes.pop());
        let (mut new_end, peer) = tokio::time::timeout(WAIT, successor.accept())
            .await
            .expect("the relayed connection is accepted")
            .unwrap();
        assert_eq!(peer.to_string(), client.local_addr().unwrap().to_string());
        let mut request = [0u8; 4];
        new_end.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"ping");
        new_end.write_all(b"pong").await.unwrap();
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"pong", "the client's connection never closed");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_channel_queues_connections_until_the_successor_reads() {
        let (relay, routes) = relay_to(&["k"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_client, old_end) = connection(&listener).await;
        let key: Arc<str> = "k".into();
        // The successor's task has not run yet (one thread, no await): its queue fills.
        let mut queued = None;
        for _ in 0..10_000 {
            match relay.send(borrow(&old_end), &key) {
                Sending::Sent => {}
                Sending::Queued(outcome) => {
                    queued = Some(outcome);
                    break;
                }
                Sending::Failed => panic!("a full channel is not a failure"),
            }
        }
        let queued = queued.expect("the channel fills");
        let direct = relay.sent();
        let sent = tokio::time::timeout(WAIT, queued)
            .await
            .expect("sent once read");
        assert_eq!(sent, Ok(true));
        assert_eq!(relay.sent(), direct + 1);
        drop(routes);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_successor_that_offers_nothing_gets_no_relay() {
        let (mine, theirs) = channel().unwrap();
        Inbox::new(theirs).open();
        assert!(Relay::from_offer(mine).is_none(), "no route, no offer");
        let (mine, theirs) = channel().unwrap();
        drop(theirs);
        assert!(Relay::from_offer(mine).is_none(), "a channel closed unread");
    }

    #[test]
    fn an_offer_reads_back_with_keys_that_need_escaping() {
        let offer = Offer::new(vec![
            "tcp:127.0.0.1:0".into(),
            "unix:/run/a;b%c.sock".into(),
        ]);
        assert_eq!(Offer::decode(&offer.encode()), Some(offer));
        assert_eq!(
            Offer::decode(&Offer::new(vec![]).encode()),
            Some(Offer::new(vec![]))
        );
    }

    #[test]
    fn anything_but_an_offer_of_this_version_is_none() {
        assert_eq!(Offer::decode(b"ready"), None);
        assert_eq!(Offer::decode(b"octopus-relay 2;tcp:x:1"), None);
        assert_eq!(Offer::decode(b"octopus-relay 1;tcp:x:1%zz"), None);
        assert_eq!(Offer::decode(&[0xff, 0xfe]), None);
    }
}
