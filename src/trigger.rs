//! A one-shot broadcast that many tasks wait on, cheap to re-check: after its first poll a waiter
//! reads one atomic flag (unless its task's waker changed), instead of taking a lock.
//!
//! A connection task polls its drain signal every time it wakes, that is for every request;
//! `CancellationToken` takes two mutex locks per such poll, which the benchmark showed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Fires once; every [`Fired`] future then completes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Trigger {
    fired: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Trigger {
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once the trigger has fired (at once if it has).
    pub fn wait(&self) -> Fired {
        Fired {
            fired: self.fired.clone(),
            // Created now: `notify_waiters` wakes a `Notified` from its creation on, polled or not.
            notified: self.notify.clone().notified_owned(),
            registered: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// Completes once its [`Trigger`] has fired.
    pub(crate) struct Fired {
        fired: Arc<AtomicBool>,
        #[pin]
        notified: OwnedNotified,
        registered: Option<Waker>,
    }
}

impl Future for Fired {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.fired.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if this
            .registered
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        match this.notified.poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                *this.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl std::fmt::Debug for Fired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fired").field("fired", &self.fired).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_completes_when_fired_even_if_created_before_its_first_poll() {
        let trigger = Trigger::default();
        let early = trigger.wait();
        let mut polled: Vec<_> = (0..3).map(|_| tokio::spawn(trigger.wait())).collect();
        tokio::task::yield_now().await;
        assert!(!trigger.is_fired());
        trigger.fire();
        polled.push(tokio::spawn(early));
        for waiter in polled {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .unwrap();
        }
        trigger.wait().await;
    }

    #[tokio::test]
    async fn a_waiter_polled_many_times_is_still_woken() {
        let trigger = Trigger::default();
        let waiter = trigger.wait();
        tokio::pin!(waiter);
        for _ in 0..3 {
            assert!(futures_poll_once(waiter.as_mut()).await.is_pending());
        }
        trigger.fire();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken");
    }

    async fn futures_poll_once(future: Pin<&mut Fired>) -> Poll<()> {
        let mut future = Some(future);
        std::future::poll_fn(|cx| Poll::Ready(future.take().unwrap().poll(cx))).await
    }
}
