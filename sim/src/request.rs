//! A comm's request pool: TCPX's fixed ring of `MAX_REQUESTS` = 16 requests, strictly FIFO.
//!
//! Requests get sequence numbers `k = 0, 1, 2, …` in posting order; request `k` lives in slot
//! `k % 16`, which for a receive is also its unpack slot. Three cursors split the live range:
//!
//! ```text
//!   head ≤ done ≤ tail
//!   [head, done)  done, waiting for irecvConsumed (recv comms only; sends free at done)
//!   [done, tail)  outstanding: posted, in transfer
//! ```
//!
//! Rules enforced here, each with TCPX's code (`ncclInternalError`):
//! * at most 16 live requests — a recv stays live until `irecvConsumed` ("unable to allocate
//!   requests");
//! * `test` only on request `done` (the oldest not yet done) — "test called with invalid request";
//! * `irecvConsumed` only on request `head`, and only once it is done.
//!
//! ```
//! use tcpx_sim::request::RequestRing;
//! let mut r: RequestRing<u32> = RequestRing::new();
//! let (k, slot) = r.push(7).unwrap();
//! assert_eq!((k, slot), (0, 0));
//! assert_eq!(r.test_target(0), Ok(0));
//! assert!(r.test_target(1).is_err());
//! r.mark_done();
//! assert_eq!(r.consume(0), Ok(7));
//! ```
#![forbid(unsafe_code)]

use tcpx::net::abi::MAX_REQUESTS;

use crate::error::SimError;

/// The 16-slot FIFO request pool of one comm.
#[derive(Debug)]
pub struct RequestRing<T> {
    slots: Vec<Option<T>>,
    head: u64,
    done: u64,
    tail: u64,
}

impl<T> Default for RequestRing<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The slot of request `k`.
pub fn slot_of(k: u64) -> usize {
    (k % MAX_REQUESTS as u64) as usize
}

impl<T> RequestRing<T> {
    /// An empty pool (allocates its 16 slots once).
    pub fn new() -> Self {
        RequestRing {
            slots: (0..MAX_REQUESTS).map(|_| None).collect(),
            head: 0,
            done: 0,
            tail: 0,
        }
    }

    /// Posts a request; returns its sequence number and slot.
    pub fn push(&mut self, req: T) -> Result<(u64, usize), SimError> {
        if self.live() == MAX_REQUESTS {
            return Err(SimError::TooManyRequests);
        }
        let k = self.tail;
        let slot = slot_of(k);
        self.slots[slot] = Some(req);
        self.tail += 1;
        Ok((k, slot))
    }

    /// Live requests (posted and not freed).
    pub fn live(&self) -> usize {
        (self.tail - self.head) as usize
    }

    /// Requests posted but not yet done.
    pub fn outstanding(&self) -> usize {
        (self.tail - self.done) as usize
    }

    /// Sequence number of the oldest live request.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Sequence number of the oldest request not yet done.
    pub fn done_cursor(&self) -> u64 {
        self.done
    }

    /// Sequence number the next request will get.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Request `k`, if live.
    pub fn get(&self, k: u64) -> Option<&T> {
        if k < self.head || k >= self.tail {
            return None;
        }
        self.slots[slot_of(k)].as_ref()
    }

    /// Request `k`, if live.
    pub fn get_mut(&mut self, k: u64) -> Option<&mut T> {
        if k < self.head || k >= self.tail {
            return None;
        }
        self.slots[slot_of(k)].as_mut()
    }

    /// Live requests, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        (self.head..self.tail).filter_map(|k| self.slots[slot_of(k)].as_ref())
    }

    /// Checks that `slot` holds the oldest not-yet-done request; returns its sequence number.
    pub fn test_target(&self, slot: usize) -> Result<u64, SimError> {
        if self.done < self.tail && slot_of(self.done) == slot {
            Ok(self.done)
        } else {
            Err(SimError::TestNotHead {
                slot,
                expected: (self.done < self.tail).then(|| slot_of(self.done)),
            })
        }
    }

    /// Marks the oldest not-yet-done request done.
    pub fn mark_done(&mut self) {
        if self.done < self.tail {
            self.done += 1;
        }
    }

    /// Frees the oldest request if it is done (a send at `test` done); returns it.
    pub fn free_head(&mut self) -> Option<T> {
        if self.head == self.done {
            return None;
        }
        let r = self.slots[slot_of(self.head)].take();
        self.head += 1;
        r
    }

    /// `irecvConsumed(slot)`: frees the oldest request if `slot` is it and it is done.
    pub fn consume(&mut self, slot: usize) -> Result<T, SimError> {
        let live = (self.head..self.tail).find(|k| slot_of(*k) == slot);
        match live {
            None => Err(SimError::ConsumedInvalid { slot }),
            Some(k) if k >= self.done => Err(SimError::ConsumedBeforeDone { slot }),
            Some(k) if k != self.head => Err(SimError::ConsumedOutOfOrder {
                slot,
                expected: slot_of(self.head),
            }),
            Some(_) => self.free_head().ok_or(SimError::ConsumedInvalid { slot }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_live_then_unable_to_allocate() {
        let mut r = RequestRing::new();
        for i in 0..16u32 {
            assert_eq!(r.push(i).map(|x| x.1), Ok(i as usize));
        }
        assert_eq!(r.push(16), Err(SimError::TooManyRequests));
        // Done but unconsumed receives still hold their slots.
        r.mark_done();
        assert_eq!(r.push(16), Err(SimError::TooManyRequests));
        assert_eq!(r.consume(0), Ok(0));
        assert_eq!(r.push(16), Ok((16, 0)));
        assert_eq!(r.live(), 16);
    }

    #[test]
    fn test_only_the_oldest_not_done() {
        let mut r = RequestRing::new();
        assert_eq!(
            r.test_target(0),
            Err(SimError::TestNotHead {
                slot: 0,
                expected: None
            })
        );
        r.push('a').ok();
        r.push('b').ok();
        assert_eq!(r.test_target(0), Ok(0));
        assert_eq!(
            r.test_target(1),
            Err(SimError::TestNotHead {
                slot: 1,
                expected: Some(0)
            })
        );
        r.mark_done();
        // A done (unconsumed) receive is no longer testable.
        assert!(r.test_target(0).is_err());
        assert_eq!(r.test_target(1), Ok(1));
    }

    #[test]
    fn consumed_in_fifo_order_after_done() {
        let mut r = RequestRing::new();
        for c in ['a', 'b', 'c'] {
            r.push(c).ok();
        }
        assert_eq!(r.consume(0), Err(SimError::ConsumedBeforeDone { slot: 0 }));
        r.mark_done();
        r.mark_done();
        assert_eq!(
            r.consume(1),
            Err(SimError::ConsumedOutOfOrder {
                slot: 1,
                expected: 0
            })
        );
        assert_eq!(r.consume(2), Err(SimError::ConsumedBeforeDone { slot: 2 }));
        assert_eq!(r.consume(5), Err(SimError::ConsumedInvalid { slot: 5 }));
        assert_eq!(r.consume(0), Ok('a'));
        assert_eq!(r.consume(0), Err(SimError::ConsumedInvalid { slot: 0 }));
        assert_eq!(r.consume(1), Ok('b'));
        assert_eq!((r.head(), r.done_cursor(), r.tail()), (2, 2, 3));
    }

    #[test]
    fn sends_free_at_done_and_wrap() {
        let mut r = RequestRing::new();
        for k in 0..100u64 {
            let (kk, slot) = r.push(k).unwrap();
            assert_eq!((kk, slot), (k, (k % 16) as usize));
            assert_eq!(r.test_target(slot), Ok(k));
            r.mark_done();
            assert_eq!(r.free_head(), Some(k));
        }
        assert_eq!(r.live(), 0);
        assert!(r.get(99).is_none());
    }
}
