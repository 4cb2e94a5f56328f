//! The shard's link to a shared store (`--store`): the owner's claims and
//! history reads go to the shard's store thread (`store/redis/`), and
//! one task here sends the journal's messages as one batch at a time and
//! handles every answer. What the owner sent is held (as with the embedded
//! log, `log.rs`) until the store has stored the messages journalled before
//! it: a message is broadcast only after the store acknowledged it, so no
//! member ever sees a message that the history, or a new owner, does not
//! have. The price is one round trip to the store per batch (measured in
//! `bench/results/`); the batch is everything sequenced meanwhile.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedReceiver;
use futures_lite::StreamExt;
use glommio::timer::Timer;
use tracing::warn;

use super::{Shard, history};
use crate::node::unix_ms;
use crate::owner::{MarkJob, RemoteRead};
use crate::store::redis::{Event, Job, RedisStore, Refusal};

/// History answers allowed to wait for the store per shard; past it a
/// request is refused (try again) rather than queued without bound.
const MAX_READS: usize = 1024;

/// The shard's link to its store thread, once `--store` enabled it.
#[derive(Debug, Default)]
pub(super) struct RedisLink {
    link: RefCell<Option<StoreLink>>,
}

/// A shard's end of its store thread.
#[derive(Debug)]
struct StoreLink {
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

impl RedisLink {
    /// History and room sequence live in `store` from now on.
    pub(super) fn enable(&self, sh: &Shard, store: RedisStore) {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        sh.owner.borrow_mut().enable_remote(u64::from_le_bytes(seed));
        *self.link.borrow_mut() = Some(StoreLink { store, reads: HashMap::new(), next_ticket: 0, in_flight: false });
    }

    /// Hands the owner's claims and history reads to the store thread.
    pub(super) fn queue_jobs(&self, sh: &Shard) {
        let Some((claims, reads, marks)) = sh.owner.borrow_mut().take_store_jobs() else { return };
        let mut guard = self.link.borrow_mut();
        let Some(link) = guard.as_mut() else { return };
        for c in claims {
            link.store.send(Job::Claim { rid: c.rid, token: c.token, epoch: c.epoch, fresh: c.fresh });
        }
        for m in marks {
            link.store.send(match m {
                MarkJob::Load(rid) => Job::LoadReads { rid },
                MarkJob::Set(rid, uid, mark) => Job::SetRead { rid, uid, epoch: mark.epoch, seq: mark.seq },
            });
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
            history::refuse(sh, reply, "history is busy, try again shortly");
        }
    }

    /// The store task: sends the journal's messages (one batch in flight)
    /// and handles the store's answers.
    pub(super) async fn run(sh: Rc<Shard>, mut events: UnboundedReceiver<Event>) {
        let me = &sh.redis;
        loop {
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(e) = events.poll_next(cx) {
                    return Poll::Ready(e.map_or(Step::Closed, Step::Answer));
                }
                let idle = me.link.borrow().as_ref().is_some_and(|l| !l.in_flight);
                if idle && sh.owner.borrow_mut().journal().is_some_and(|j| j.has_pending()) {
                    return Poll::Ready(Step::Send);
                }
                sh.hold.wait(cx.waker());
                Poll::Pending
            })
            .await;
            match step {
                Step::Closed => return,
                Step::Send => {
                    let batch = sh.owner.borrow_mut().journal().expect("journal").take();
                    let mut link = me.link.borrow_mut();
                    let link = link.as_mut().expect("remote");
                    link.in_flight = true;
                    link.store.send(Job::Append { records: batch.marks, end: batch.end });
                }
                Step::Answer(ev) => me.on_event(&sh, ev),
            }
            glommio::yield_if_needed().await;
        }
    }

    fn on_event(&self, sh: &Shard, ev: Event) {
        match ev {
            Event::Appended { end, stored, mut refused } => {
                if let Some(l) = self.link.borrow_mut().as_mut() {
                    l.in_flight = false;
                }
                let now = unix_ms();
                {
                    let mut owner = sh.owner.borrow_mut();
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
                    sh.stats().log_errors.fetch_add(1, Relaxed);
                    warn!(shard = sh.id, messages = n, why = ?refused[0].why, "the message store refused messages");
                }
                sh.hold.release(sh, end, &refused);
            }
            Event::Claimed { rid, token, state } => {
                let mut out = std::mem::take(&mut *sh.owner_out.borrow_mut());
                let waiting = sh.owner.borrow_mut().on_claimed(&rid, token, state, unix_ms(), &mut out);
                sh.hold.send_or_hold(sh, &mut out);
                *sh.owner_out.borrow_mut() = out;
                for req in waiting {
                    sh.on_request(req);
                }
            }
            Event::Reads { rid, marks } => {
                let mut out = std::mem::take(&mut *sh.owner_out.borrow_mut());
                sh.owner.borrow_mut().on_reads(&rid, marks, unix_ms(), &mut out);
                sh.hold.send_or_hold(sh, &mut out);
                *sh.owner_out.borrow_mut() = out;
            }
            Event::Read { ticket, answer } => {
                let read = self.link.borrow_mut().as_mut().and_then(|l| l.reads.remove(&ticket));
                let Some(RemoteRead { rid, since, reply, budget, .. }) = read else { return };
                let Some((epoch, msgs)) = answer else {
                    return history::refuse(sh, reply, Refusal::Unavailable.text());
                };
                sh.stats().history_disk_reads.fetch_add(1, Relaxed);
                sh.stats().history_disk_records.fetch_add(msgs.len() as u64, Relaxed);
                // A room the store does not have reports what a never-used room does.
                let epoch = if epoch == 0 { sh.node.epoch } else { epoch };
                // Paging forward (`since`) keeps the oldest messages that fit.
                history::answer(sh, &rid, epoch, msgs, since.is_some(), budget, reply);
            }
        }
    }

    /// At shutdown: waits (up to 5 s) until the store has every message
    /// sequenced, so that what was acknowledged to members is stored.
    pub(super) async fn flush(&self, sh: &Shard) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let pending = sh.owner.borrow_mut().journal().is_some_and(|j| j.has_pending())
                || self.link.borrow().as_ref().is_some_and(|l| l.in_flight);
            if !pending {
                break;
            }
            Timer::new(Duration::from_millis(5)).await;
        }
    }
}
