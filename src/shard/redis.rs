//! The shard's link to a shared store (`--store`): the owner's claims and
//! history reads go to the shard's store thread (`store/redis/`), and
//! one task here sends the journal's messages as one batch at a time and
//! handles every answer. What the owner sent is held (as with the embedded
//! log, `log.rs`) until the store has stored the messages journalled before
//! it: a message is broadcast only after the store acknowledged it, so no
//! member ever sees a message that the history, or a new owner, does not
//! have. The price is one round trip to the store per batch (measured in
//! `bench/results/`); the batch is everything sequenced meanwhile.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedReceiver;
use futures_lite::StreamExt;
use glommio::timer::Timer;
use tracing::warn;

use super::Shard;
use crate::node::unix_ms;
use crate::owner::RemoteRead;
use crate::store::redis::{Event, Job, RedisStore, Refusal};

/// History answers allowed to wait for the store per shard; past it a
/// request is refused (try again) rather than queued without bound.
const MAX_READS: usize = 1024;

/// A shard's end of its store thread.
#[derive(Debug)]
pub(crate) struct StoreLink {
    store: RedisStore,
    /// History answers waiting for the store, by ticket.
    reads: HashMap<u64, RemoteRead>,
    next_ticket: u64,
    /// A batch of appends is with the store (one at a time).
    in_flight: bool,
}

enum Step {
    Answer(Event),
    Send,
    Closed,
}

impl Shard {
    /// History and room sequence live in `store` from now on.
    pub(crate) fn enable_remote(&self, store: RedisStore) {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        self.owner.borrow_mut().enable_remote(u64::from_le_bytes(seed));
        *self.remote.borrow_mut() = Some(StoreLink { store, reads: HashMap::new(), next_ticket: 0, in_flight: false });
    }

    /// Hands the owner's claims and history reads to the store thread.
    pub(super) fn queue_store_jobs(&self) {
        let Some((claims, reads)) = self.owner.borrow_mut().take_store_jobs() else { return };
        let mut guard = self.remote.borrow_mut();
        let Some(link) = guard.as_mut() else { return };
        for c in claims {
            link.store.send(Job::Claim { rid: c.rid, token: c.token, epoch: c.epoch, fresh: c.fresh });
        }
        let mut busy = Vec::new();
        for r in reads {
            if link.reads.len() >= MAX_READS {
                busy.push(r.reply);
                continue;
            }
            link.next_ticket += 1;
            let ticket = link.next_ticket;
            let (rid, since, before, limit) = (r.rid.clone(), r.since, r.before, r.limit);
            link.reads.insert(ticket, r);
            link.store.send(Job::Read { ticket, rid, since, before, limit });
        }
        drop(guard);
        for reply in busy {
            self.refuse_read(reply, "history is busy, try again shortly");
        }
    }

    /// The store task: sends the journal's messages (one batch in flight)
    /// and handles the store's answers.
    pub(crate) async fn run_store(self: Rc<Self>, mut events: UnboundedReceiver<Event>) {
        loop {
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(e) = events.poll_next(cx) {
                    return Poll::Ready(e.map_or(Step::Closed, Step::Answer));
                }
                let idle = self.remote.borrow().as_ref().is_some_and(|l| !l.in_flight);
                if idle && self.owner.borrow_mut().journal().is_some_and(|j| j.has_pending()) {
                    return Poll::Ready(Step::Send);
                }
                *self.log_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            match step {
                Step::Closed => return,
                Step::Send => {
                    let batch = self.owner.borrow_mut().journal().expect("journal").take();
                    let mut link = self.remote.borrow_mut();
                    let link = link.as_mut().expect("remote");
                    link.in_flight = true;
                    link.store.send(Job::Append { records: batch.marks, end: batch.end });
                }
                Step::Answer(ev) => self.on_store_event(ev),
            }
            glommio::yield_if_needed().await;
        }
    }

    fn on_store_event(&self, ev: Event) {
        match ev {
            Event::Appended { end, stored, mut refused } => {
                if let Some(l) = self.remote.borrow_mut().as_mut() {
                    l.in_flight = false;
                }
                let now = unix_ms();
                {
                    let mut owner = self.owner.borrow_mut();
                    // Stored runs first: their messages go out (acknowledged)
                    // even when a later run of the room was refused.
                    for (rid, token, seq) in &stored {
                        owner.on_stored(rid, *token, *seq);
                    }
                    for r in &mut refused {
                        owner.on_refused(r, now);
                    }
                }
                if !refused.is_empty() {
                    let n: u64 = refused.iter().map(|r| r.last - r.first + 1).sum();
                    self.stats().log_errors.fetch_add(1, Relaxed);
                    warn!(shard = self.id, messages = n, why = ?refused[0].why, "the message store refused messages");
                }
                self.release_held(end, &refused);
            }
            Event::Claimed { rid, token, state } => {
                let mut out = std::mem::take(&mut *self.owner_out.borrow_mut());
                let waiting = self.owner.borrow_mut().on_claimed(&rid, token, state, unix_ms(), &mut out);
                self.send_or_hold(&mut out);
                *self.owner_out.borrow_mut() = out;
                for req in waiting {
                    self.on_request(req);
                }
            }
            Event::Read { ticket, answer } => {
                let read = self.remote.borrow_mut().as_mut().and_then(|l| l.reads.remove(&ticket));
                let Some(RemoteRead { rid, since, reply, budget, .. }) = read else { return };
                let Some((epoch, msgs)) = answer else {
                    return self.refuse_read(reply, Refusal::Unavailable.text());
                };
                self.stats().history_disk_reads.fetch_add(1, Relaxed);
                self.stats().history_disk_records.fetch_add(msgs.len() as u64, Relaxed);
                // A room the store does not have reports what a never-used room does.
                let epoch = if epoch == 0 { self.node.epoch } else { epoch };
                // Paging forward (`since`) keeps the oldest messages that fit.
                self.answer_history(&rid, epoch, msgs, since.is_some(), budget, reply);
            }
        }
    }

    /// At shutdown: waits (up to 5 s) until the store has every message
    /// sequenced, so that what was acknowledged to members is stored.
    pub(crate) async fn flush_store(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let pending = self.owner.borrow_mut().journal().is_some_and(|j| j.has_pending())
                || self.remote.borrow().as_ref().is_some_and(|l| l.in_flight);
            if !pending {
                break;
            }
            Timer::new(Duration::from_millis(5)).await;
        }
    }
}
