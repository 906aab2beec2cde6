//! The old process's side: reads the successor's offer, then sends it connections.

use std::collections::HashSet;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use rustix::net::{RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, recv, sendmsg};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::{MAX_BATCH, MAX_MESSAGE, Offer};

/// The channel to a successor that offered to take connections.
pub(crate) struct Relay {
    channel: Arc<AsyncFd<OwnedFd>>,
    keys: HashSet<String>,
    /// Connections that found the channel full, for the task that waits until it is not.
    queue: mpsc::UnboundedSender<Queued>,
    sent: Arc<AtomicUsize>,
    /// Set once the successor is gone or refuses: later connections are closed at once.
    broken: AtomicBool,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("keys", &self.keys).finish()
    }
}

struct Queued {
    /// A copy of the connection's socket: the connection waits for `sent`, but a drain deadline
    /// can drop it meanwhile, and the number of a closed fd may already name another file.
    socket: OwnedFd,
    key: Arc<str>,
    sent: oneshot::Sender<bool>,
}

/// What became of a connection given to [`Relay::send`].
pub(crate) enum Sending {
    /// The successor has it.
    Sent,
    /// The channel was full: resolves once it is sent (`true`) or cannot be (`false`).
    Queued(oneshot::Receiver<bool>),
    /// Not relayed: close it as usual.
    Failed,
}

/// `sendmsg` flags: never block, and no SIGPIPE if the successor is gone.
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const SEND_FLAGS: SendFlags = SendFlags::DONTWAIT.union(SendFlags::NOSIGNAL);
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const SEND_FLAGS: SendFlags = SendFlags::DONTWAIT;

/// How long the queue waits when the kernel refuses more fds in flight (`ETOOMANYREFS`): the
/// successor receiving them is what lowers the count.
const IN_FLIGHT_PAUSE: Duration = Duration::from_millis(5);

impl Relay {
    /// The relay over `channel` (this process's end), if the successor, now ready, made an offer
    /// on it before reporting ready. Called in the runtime.
    pub fn from_offer(channel: OwnedFd) -> Option<Arc<Relay>> {
        let mut message = vec![0u8; MAX_MESSAGE];
        let offer = match recv(&channel, &mut message[..], RecvFlags::DONTWAIT) {
            Ok((n, _)) => Offer::decode(&message[..n]),
            Err(e) => {
                tracing::debug!("the new process made no relay offer: {e}");
                None
            }
        }?;
        if offer.keys.is_empty() {
            return None;
        }
        // SAFETY: the AsyncFd owns the channel, which stays open, with the same number, until
        // the AsyncFd is dropped.
        let channel = Arc::new(unsafe { AsyncFd::register(channel) }.ok()?);
        let (queue, queued) = mpsc::unbounded_channel();
        let sent = Arc::new(AtomicUsize::new(0));
        tokio::spawn(send_queued(channel.clone(), queued, sent.clone()));
        Some(Arc::new(Relay {
            channel,
            keys: offer.keys.into_iter().collect(),
            queue,
            sent,
            broken: AtomicBool::new(false),
        }))
    }

    /// Whether the successor takes connections of the listener `key`.
    pub fn accepts(&self, key: &str) -> bool {
        self.keys.contains(key) && !self.broken.load(Ordering::Relaxed)
    }

    /// How many connections the successor was given.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Gives `socket`, a connection of listener `key` with nothing half-read, to the successor.
    pub fn send(&self, socket: BorrowedFd<'_>, key: &Arc<str>) -> Sending {
        match send_now(
            self.channel.get_ref().as_fd(),
            &[socket],
            [&**key].into_iter(),
        ) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
                return Sending::Sent;
            }
            Err(e) if is_full(&e) => {}
            Err(e) => {
                self.fail(&e);
                return Sending::Failed;
            }
        }
        let Ok(copy) = socket.try_clone_to_owned() else {
            return Sending::Failed;
        };
        let (sent, outcome) = oneshot::channel();
        let queued = Queued {
            socket: copy,
            key: key.clone(),
            sent,
        };
        match self.queue.send(queued) {
            Ok(()) => Sending::Queued(outcome),
            Err(_) => Sending::Failed,
        }
    }

    /// The successor is gone: connections not sent yet are retired as without a successor.
    pub fn close(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    fn fail(&self, e: &io::Error) {
        if !self.broken.swap(true, Ordering::Relaxed) {
            tracing::warn!("cannot relay connections to the new process ({e}); closing them");
        }
    }
}

fn is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ETOOMANYREFS)
}

/// One message: the listeners' keys (escaped, separated by `;`), with the sockets attached in
/// the same order.
fn send_now<'a>(
    channel: BorrowedFd<'_>,
    sockets: &[BorrowedFd<'a>],
    keys: impl Iterator<Item = &'a str>,
) -> io::Result<()> {
    let keys: Vec<String> = keys.map(crate::env::escape).collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_BATCH))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(sockets));
    sendmsg(
        channel,
        &[IoSlice::new(keys.join(";").as_bytes())],
        &mut control,
        SEND_FLAGS,
    )?;
    Ok(())
}

/// Sends the connections that found the channel full, as it drains, many to a message: a
/// successor's receive queue holds only a few messages (`net.unix.max_dgram_qlen`, 10 by
/// default), so thousands of connections retired at once mostly come through here. Ends with
/// the relay.
async fn send_queued(
    channel: Arc<AsyncFd<OwnedFd>>,
    mut queue: mpsc::UnboundedReceiver<Queued>,
    sent: Arc<AtomicUsize>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        let outcome = loop {
            // Bounded by the connections: cut at the drain deadline, they stop waiting.
            batch.retain(|queued| !queued.sent.is_closed());
            if batch.is_empty() {
                break false;
            }
            let sockets: Vec<BorrowedFd<'_>> = batch.iter().map(|q| q.socket.as_fd()).collect();
            let keys = batch.iter().map(|q| &*q.key);
            match send_now(channel.get_ref().as_fd(), &sockets, keys) {
                Ok(()) => {
                    sent.fetch_add(batch.len(), Ordering::Relaxed);
                    break true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match channel.writable().await {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => break false,
                },
                Err(e) if is_full(&e) => tokio::time::sleep(IN_FLIGHT_PAUSE).await,
                Err(e) => {
                    tracing::debug!("cannot relay connections to the new process: {e}");
                    break false;
                }
            }
        };
        for queued in batch.drain(..) {
            let _ = queued.sent.send(outcome);
        }
    }
}
