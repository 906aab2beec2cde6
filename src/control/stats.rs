//! What `status` reports about each listener: open connections and in-flight requests.
//!
//! Nothing here is shared by all requests. A connection takes a slot in its listener's table when
//! it is accepted and frees it when it ends (one uncontended lock each time, per connection); a
//! request only counts itself up and down in its own connection's counter. `status` sums them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The live connections of one listener.
#[derive(Debug)]
pub(crate) struct ListenerStats {
    address: String,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Option<Arc<AtomicU32>>>,
    free: Vec<usize>,
    open: usize,
}

/// One connection's place in its listener's table, freed on drop; its requests count themselves
/// in [`ConnectionSlot::in_flight`].
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    listener: Arc<ListenerStats>,
    index: usize,
    in_flight: Arc<AtomicU32>,
}

impl ListenerStats {
    pub fn new(address: String) -> Arc<Self> {
        Arc::new(ListenerStats {
            address,
            table: Mutex::default(),
        })
    }

    /// The listener's actual address, as `status` shows it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Counts a new connection until the returned slot is dropped.
    pub fn open(self: &Arc<Self>) -> ConnectionSlot {
        let in_flight = Arc::new(AtomicU32::new(0));
        let mut table = lock(&self.table);
        let index = match table.free.pop() {
            Some(index) => {
                table.slots[index] = Some(in_flight.clone());
                index
            }
            None => {
                table.slots.push(Some(in_flight.clone()));
                table.slots.len() - 1
            }
        };
        table.open += 1;
        ConnectionSlot {
            listener: self.clone(),
            index,
            in_flight,
        }
    }

    /// Open connections, and requests in flight on them.
    pub fn counts(&self) -> (usize, u64) {
        let table = lock(&self.table);
        let in_flight = table
            .slots
            .iter()
            .flatten()
            .map(|count| u64::from(count.load(Ordering::Relaxed)))
            .sum();
        (table.open, in_flight)
    }
}

impl ConnectionSlot {
    /// The connection's in-flight request counter.
    pub fn in_flight(&self) -> Arc<AtomicU32> {
        self.in_flight.clone()
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut table = lock(&self.listener.table);
        table.slots[self.index] = None;
        table.free.push(self.index);
        table.open -= 1;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change to the table is a few plain stores: consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_and_their_requests_until_they_end() {
        let stats = ListenerStats::new("127.0.0.1:1".into());
        let first = stats.open();
        let second = stats.open();
        first.in_flight().fetch_add(1, Ordering::Relaxed);
        second.in_flight().fetch_add(1, Ordering::Relaxed);
        assert_eq!(stats.counts(), (2, 2));
        drop(second);
        assert_eq!(stats.counts(), (1, 1));
        let third = stats.open();
        assert_eq!(stats.counts(), (2, 1), "a freed slot is reused");
        first.in_flight().fetch_sub(1, Ordering::Relaxed);
        drop((first, third));
        assert_eq!(stats.counts(), (0, 0));
    }
}
