//! Where what an owner sends waits for its store: nothing the owner sends
//! may overtake a room message that is not yet stored (written, or fsynced
//! in `sync` mode, by the log writer in `log`; acknowledged by Redis in
//! `redis`). Each part is queued with the journal position it was sent at
//! and released, in order, once the store has everything up to it; the
//! deliveries of messages the store refused are dropped there, and their
//! senders told.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::task::Waker;

use super::Shard;
use crate::ids::Id;
use crate::msg::Delivery;
use crate::owner::{Dest, Out, RecordTag};
use crate::protocol::{ERR_INVALID, ProtoError};
use crate::store::redis::Refused;

/// What waits for the store, and the store task that it waits for.
#[derive(Debug, Default)]
pub(super) struct Hold {
    /// Each part with the journal position it was sent at and, for a room
    /// message's deliveries, its tag (so they can be dropped if refused).
    held: RefCell<VecDeque<(u64, Option<RecordTag>, Out)>>,
    /// Journal position the store has taken up to.
    written: Cell<u64>,
    /// The store's task (log writer or Redis link), waiting for records.
    waker: RefCell<Option<Waker>>,
}

impl Hold {
    /// Journal position the store has taken up to.
    pub(super) fn written(&self) -> u64 {
        self.written.get()
    }

    /// The store's task waits for the journal to have records.
    pub(super) fn wait(&self, w: &Waker) {
        *self.waker.borrow_mut() = Some(w.clone());
    }

    /// Routes what the owner sent for one request, or holds it behind the
    /// journal's unwritten records: nothing the owner sends may overtake a
    /// room message that is not yet on disk (one sender's order holds).
    pub(super) fn send_or_hold(&self, sh: &Shard, out: &mut Vec<Out>) {
        sh.queue_store_work();
        let (end, tag) = {
            let mut owner = sh.owner.borrow_mut();
            (owner.journal().map(|j| j.end()), owner.take_record_tag())
        };
        match end {
            Some(end) if end > self.written.get() || !self.held.borrow().is_empty() => {
                // A shared store may refuse a message: its deliveries carry
                // its tag, so that they can be dropped then.
                self.held.borrow_mut().extend(out.drain(..).map(|o| (end, tag.clone(), o)));
                if let Some(w) = self.waker.borrow_mut().take() {
                    w.wake();
                }
            }
            _ => {
                for o in out.drain(..) {
                    sh.send_out(o);
                }
            }
        }
    }

    /// Sends what was held behind records now written up to `written`,
    /// except the deliveries of messages a shared store `refused`: those
    /// are dropped, and each one's sender is told.
    pub(super) fn release(&self, sh: &Shard, written: u64, refused: &[Refused]) {
        self.written.set(written);
        // A message's deliveries are next to each other in `held`: the
        // sender is told once, when its first one is dropped.
        let mut told: Option<(u64, u64)> = None;
        let by_room: HashMap<(Id, u64), Vec<&Refused>> = refused.iter().fold(HashMap::new(), |mut m, r| {
            m.entry((r.rid.clone(), r.token)).or_insert_with(Vec::new).push(r);
            m
        });
        loop {
            let next = {
                let mut held = self.held.borrow_mut();
                match held.front() {
                    Some((end, _, _)) if *end <= written => held.pop_front().map(|(_, t, o)| (t, o)),
                    _ => None,
                }
            };
            let Some((tag, o)) = next else { break };
            let hit = tag.filter(|_| !refused.is_empty()).and_then(|t| {
                let r = *by_room.get(&(t.rid.clone(), t.token))?.iter().find(|r| t.refused_in(r))?;
                Some((t, r))
            });
            let Some((tag, r)) = hit else {
                sh.send_out(o);
                continue;
            };
            if told != Some((tag.token, tag.seq)) {
                told = Some((tag.token, tag.seq));
                let why = r.why.text();
                let frame = ProtoError::new(ERR_INVALID, why).encode();
                sh.send_out(Out { dest: Dest::of(tag.from), msg: Delivery::Direct { conn: tag.from, frame } });
            }
        }
        sh.flush.wake();
    }
}
