//! A low fd number kept for an fd every upgrade makes and hands over (Linux): the readiness
//! pipe's write end, the relay channel's end.
//!
//! The successor's child starts on the parent's own fd table and leaves it by keeping only the
//! entries below the highest fd it is handed ([`super::vfork`]): the cost of its `execve` then
//! does not grow with the connections the old process holds. Listeners are opened before any
//! connection, so their numbers are low; the pipe and the channel are made when an upgrade
//! starts, when the lowest free numbers lie above every open connection. A slot, taken when the
//! [`Octopus`](crate::Octopus) is built, holds a placeholder between upgrades and the fd during
//! one.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rustix::event::{EventfdFlags, eventfd};
use rustix::io::{DupFlags, dup3};

#[derive(Debug)]
pub(crate) struct LowSlot {
    slot: Mutex<OwnedFd>,
    /// What the slot holds between upgrades: putting it back takes no new fd, so it cannot fail
    /// for want of one and leave the pipe's write end open in this process.
    placeholder: Arc<OwnedFd>,
}

impl LowSlot {
    /// `N` slots, sharing one placeholder.
    pub(crate) fn reserve<const N: usize>() -> io::Result<[LowSlot; N]> {
        let placeholder = Arc::new(eventfd(0, EventfdFlags::CLOEXEC)?);
        let mut slots = Vec::with_capacity(N);
        for _ in 0..N {
            slots.push(LowSlot {
                slot: Mutex::new(rustix::io::fcntl_dupfd_cloexec(&*placeholder, 0)?),
                placeholder: placeholder.clone(),
            });
        }
        Ok(slots.try_into().expect("N slots"))
    }

    /// Puts `fd` (close-on-exec) at the slot's number until the returned guard is dropped.
    pub(crate) fn hold(&self, fd: BorrowedFd<'_>) -> io::Result<Held<'_>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        dup3(fd, &mut slot, DupFlags::CLOEXEC)?;
        Ok(Held {
            slot,
            placeholder: self.placeholder.as_fd(),
        })
    }
}

/// The slot while it holds an upgrade's fd.
pub(crate) struct Held<'a> {
    slot: MutexGuard<'a, OwnedFd>,
    placeholder: BorrowedFd<'a>,
}

impl Held<'_> {
    pub(crate) fn as_fd(&self) -> BorrowedFd<'_> {
        self.slot.as_fd()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        // Closes this process's copy of the fd, so that the wait for "ready" sees the end of the
        // pipe once the successor exits (and the relay's end of the channel, once it is gone).
        // dup3 onto an open number fails only if interrupted.
        let _ =
            rustix::io::retry_on_intr(|| dup3(self.placeholder, &mut self.slot, DupFlags::CLOEXEC));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn the_slot_keeps_its_number_and_lets_the_pipe_end_go() {
        let [slot] = LowSlot::reserve().unwrap();
        let number = slot.slot.lock().unwrap().as_raw_fd();
        let (read, write) = crate::readiness::pipe().unwrap();
        let held = slot.hold(write.as_fd()).unwrap();
        assert_eq!(held.as_fd().as_raw_fd(), number);
        drop(held);
        drop(write);
        // Every write end is closed: the read end sees the end of the pipe.
        let mut byte = [0u8; 1];
        assert_eq!(rustix::io::read(&read, &mut byte).unwrap(), 0);
        assert_eq!(slot.slot.lock().unwrap().as_raw_fd(), number);
    }
}
