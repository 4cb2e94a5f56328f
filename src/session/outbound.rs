//! A connection's outbound queue: the frames waiting for its socket, capped
//! in bytes, and where the queue stands with the writer. No I/O.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::Bytes;

use crate::ws;

/// A frame in the per-connection queues. Every local recipient of a
/// broadcast holds the same one: one allocation per broadcast and shard, and
/// a plain (non-atomic) count per recipient instead of the `Bytes` atomic
/// one, which also lets the same bytes go to other shards.
pub(crate) type SharedFrame = Rc<Bytes>;

/// Largest gather buffer for one socket write.
pub(crate) const WRITE_CHUNK: usize = 256 * 1024;

/// Queue slots a connection keeps between sweeps whatever happens; past it, a
/// queue found empty by the sweep gives its memory back (idle connections
/// stay small).
const QUEUE_KEEP: usize = 16;

/// Where a queue stands with the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutState {
    /// Nothing waits (or the flusher has not been asked to write yet).
    Idle,
    /// Frames wait; the connection is on the flusher's list.
    Dirty,
    /// The socket was full: the connection's task writes once it drains.
    Blocked,
    /// A close frame with this code waits behind what was half-written; the
    /// connection's task flushes it and hangs up. Nothing more is queued.
    Closing(u16),
}

/// What [`Outbound::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; `newly_dirty` when the connection must go on the flusher's list.
    Queued {
        /// The queue was idle: the caller lists the connection for a flush.
        newly_dirty: bool,
    },
    /// The connection is closing: nothing is queued any more.
    Refused,
    /// The frame would pass the byte cap: the caller closes the connection
    /// as a slow consumer.
    Overflow,
}

/// The frames waiting for one socket.
#[derive(Debug)]
pub(crate) struct Outbound {
    queue: VecDeque<SharedFrame>,
    queued: usize,
    /// Bytes of the front frame already written.
    front_off: usize,
    state: OutState,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound { queue: VecDeque::new(), queued: 0, front_off: 0, state: OutState::Idle }
    }
}

impl Outbound {
    /// Where the queue stands.
    pub(crate) fn state(&self) -> OutState {
        self.state
    }

    /// The close code, while closing.
    pub(crate) fn closing(&self) -> Option<u16> {
        match self.state {
            OutState::Closing(code) => Some(code),
            _ => None,
        }
    }

    /// Bytes waiting.
    pub(crate) fn queued(&self) -> usize {
        self.queued
    }

    /// Nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues a frame unless the connection is closing or the cap would be passed.
    pub(crate) fn push(&mut self, frame: &SharedFrame, cap: usize) -> Pushed {
        if self.closing().is_some() {
            return Pushed::Refused;
        }
        if self.queued + frame.len() > cap {
            return Pushed::Overflow;
        }
        self.queue.push_back(Rc::clone(frame));
        self.queued += frame.len();
        Pushed::Queued { newly_dirty: self.mark_dirty() }
    }

    /// Asks for a write (of queued frames, or of TLS records of the
    /// handshake or an alert with nothing queued); true when the connection
    /// must go on the flusher's list.
    pub(crate) fn mark_dirty(&mut self) -> bool {
        let newly = self.state == OutState::Idle;
        if newly {
            self.state = OutState::Dirty;
        }
        newly
    }

    /// The flusher took the connection off its list: it writes now.
    pub(crate) fn take_dirty(&mut self) -> bool {
        if self.state == OutState::Dirty {
            self.state = OutState::Idle;
            true
        } else {
            false
        }
    }

    /// The socket is full: the connection's task takes over the writing.
    pub(crate) fn block(&mut self) {
        if self.closing().is_none() {
            self.state = OutState::Blocked;
        }
    }

    /// The connection's task wrote everything: back to the flusher's care.
    pub(crate) fn drained(&mut self) {
        if self.state == OutState::Blocked {
            self.state = OutState::Idle;
        }
    }

    /// Replaces what is queued by a close frame. Frames not yet begun are
    /// dropped; a half-written one is kept, or the stream would be corrupt.
    pub(crate) fn start_close(&mut self, code: u16, reason: &str) {
        self.state = OutState::Closing(code);
        self.queue.truncate(if self.front_off > 0 { 1 } else { 0 });
        self.queue.push_back(Rc::new(ws::close_frame(code, reason)));
        self.queued = self.queue.iter().map(|f| f.len()).sum::<usize>() - self.front_off;
    }

    /// Drops everything (the peer is gone).
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
        self.queued = 0;
        self.front_off = 0;
    }

    /// The bytes for the next write: the unsent part of the only frame as
    /// it is, or several frames copied into `wb` (up to [`WRITE_CHUNK`]
    /// bytes) so that one write takes them all.
    pub(crate) fn next_chunk<'a>(&'a self, wb: &'a mut Vec<u8>) -> &'a [u8] {
        if self.queue.len() == 1 {
            return &self.queue[0][self.front_off..];
        }
        wb.clear();
        let mut off = self.front_off;
        for f in &self.queue {
            let room = WRITE_CHUNK - wb.len();
            if room == 0 {
                break;
            }
            let part = &f[off..];
            wb.extend_from_slice(&part[..part.len().min(room)]);
            off = 0;
        }
        wb
    }

    /// Drops `n` written bytes from the front.
    pub(crate) fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let front_left = self.queue[0].len() - self.front_off;
            if n >= front_left {
                n -= front_left;
                self.queue.pop_front();
                self.front_off = 0;
            } else {
                self.front_off += n;
                n = 0;
            }
        }
        // A drained queue keeps its capacity until the next sweep
        // (`release_idle`): under steady load every flush pass drains it,
        // and freeing it each time made the next pass regrow it step by step.
    }

    /// Gives back the memory a burst grew the queue to: all of it once the
    /// queue is drained, and down to twice what it holds while it stays
    /// mostly empty, so that peak capacity is not kept for good.
    pub(crate) fn release_idle(&mut self) {
        let (len, cap) = (self.queue.len(), self.queue.capacity());
        if cap <= QUEUE_KEEP {
            return;
        }
        if len == 0 {
            self.queue = VecDeque::new();
        } else if len * 4 < cap {
            self.queue.shrink_to((len * 2).max(QUEUE_KEEP));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(b: &[u8]) -> SharedFrame {
        Rc::new(Bytes::copy_from_slice(b))
    }

    #[test]
    fn states_follow_the_writer() {
        let mut o = Outbound::default();
        assert_eq!(o.push(&frame(b"abc"), 100), Pushed::Queued { newly_dirty: true });
        assert_eq!(o.push(&frame(b"de"), 100), Pushed::Queued { newly_dirty: false });
        assert_eq!(o.state(), OutState::Dirty);
        assert!(o.take_dirty());
        assert!(!o.take_dirty());
        o.block();
        assert_eq!(o.push(&frame(b"f"), 100), Pushed::Queued { newly_dirty: false }, "the task writes it");
        let mut wb = Vec::new();
        assert_eq!(o.next_chunk(&mut wb), b"abcdef");
        o.consume(6);
        o.drained();
        assert_eq!((o.state(), o.queued(), o.is_empty()), (OutState::Idle, 0, true));
    }

    #[test]
    fn the_cap_and_closing_refuse_frames() {
        let mut o = Outbound::default();
        assert_eq!(o.push(&frame(&[0; 60]), 100), Pushed::Queued { newly_dirty: true });
        assert_eq!(o.push(&frame(&[0; 41]), 100), Pushed::Overflow);
        o.start_close(1008, "full");
        assert_eq!(o.closing(), Some(1008));
        assert_eq!(o.push(&frame(b"x"), 100), Pushed::Refused);
        o.block();
        assert_eq!(o.closing(), Some(1008), "closing outlasts a full socket");
    }

    #[test]
    fn a_close_keeps_the_half_written_frame() {
        let mut o = Outbound::default();
        o.push(&frame(b"hello"), 100);
        o.push(&frame(b"world"), 100);
        o.consume(2);
        o.start_close(1001, "");
        let close = ws::close_frame(1001, "");
        let mut wb = Vec::new();
        let mut want = b"llo".to_vec();
        want.extend_from_slice(&close);
        assert_eq!(o.next_chunk(&mut wb), &want[..]);
        assert_eq!(o.queued(), want.len());
    }

    proptest! {
        /// Whatever the frames and however the writes split them, the bytes
        /// written are the frames in order, and the count of queued bytes holds.
        #[test]
        fn writes_in_any_pieces_give_the_frames_in_order(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..20),
            cuts in proptest::collection::vec(1usize..500, 1..50),
        ) {
            let mut o = Outbound::default();
            let mut want = Vec::new();
            for f in &frames {
                let pushed = matches!(o.push(&frame(f), usize::MAX), Pushed::Queued { .. });
                prop_assert!(pushed);
                want.extend_from_slice(f);
            }
            let mut got = Vec::new();
            let mut wb = Vec::new();
            let mut cuts = cuts.into_iter().cycle();
            while !o.is_empty() {
                let chunk = o.next_chunk(&mut wb);
                let n = chunk.len().min(cuts.next().unwrap());
                got.extend_from_slice(&chunk[..n]);
                o.consume(n);
                prop_assert_eq!(o.queued(), want.len() - got.len());
            }
            prop_assert_eq!(got, want);
        }
    }
}
