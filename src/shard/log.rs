//! Durability on the owner's path: what the owner sends waits, in order,
//! until the log writer has written (or, in `sync` mode, fsynced) the room
//! messages journalled before it; one write takes every record journalled
//! meanwhile (group commit).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::timer::Timer;
use tracing::error;

use super::Shard;
use crate::msg::Delivery;
use crate::node::unix_ms;
use crate::owner::{Dest, Out};
use crate::protocol::{ERR_INVALID, ProtoError};
use crate::store::Durability;
use crate::store::log::writer::Log;
use crate::store::redis::{Refusal, Refused};

static LOG_ERROR_LOG: crate::throttle::Throttle = crate::throttle::Throttle::new();

/// A failed batch's messages as runs of consecutive seqs per room (marks of
/// one room are in seq order).
fn refused_runs(marks: &[crate::store::Mark]) -> Vec<Refused> {
    let mut runs: Vec<Refused> = Vec::new();
    let mut last_of: std::collections::HashMap<&crate::ids::Id, usize> = std::collections::HashMap::new();
    for m in marks {
        if let Some(&i) = last_of.get(&m.rid)
            && runs[i].last + 1 == m.seq
            && runs[i].token == m.token
        {
            runs[i].last = m.seq;
            continue;
        }
        last_of.insert(&m.rid, runs.len());
        runs.push(Refused {
            rid: m.rid.clone(),
            token: m.token,
            first: m.seq,
            last: m.seq,
            why: Refusal::LogWrite,
            store_top: None,
        });
    }
    runs
}

impl Shard {
    /// Routes what the owner sent for one request, or holds it behind the
    /// journal's unwritten records: nothing the owner sends may overtake a
    /// room message that is not yet on disk (one sender's order holds).
    pub(super) fn send_or_hold(&self, out: &mut Vec<Out>) {
        self.queue_reads();
        let (end, tag) = {
            let mut owner = self.owner.borrow_mut();
            (owner.journal().map(|j| j.end()), owner.take_record_tag())
        };
        match end {
            Some(end) if end > self.log_written.get() || !self.held.borrow().is_empty() => {
                // A shared store may refuse a message: its deliveries carry
                // its tag, so that they can be dropped then.
                self.held.borrow_mut().extend(out.drain(..).map(|o| (end, tag.clone(), o)));
                if let Some(w) = self.log_waker.borrow_mut().take() {
                    w.wake();
                }
            }
            _ => {
                for o in out.drain(..) {
                    self.send_out(o);
                }
            }
        }
    }

    /// Sends what was held behind records now written up to `written`,
    /// except the deliveries of messages a shared store `refused`: those
    /// are dropped, and each one's sender is told.
    pub(super) fn release_held(&self, written: u64, refused: &[Refused]) {
        self.log_written.set(written);
        // A message's deliveries are next to each other in `held`: the
        // sender is told once, when its first one is dropped.
        let mut told: Option<(u64, u64)> = None;
        let by_room: std::collections::HashMap<(crate::ids::Id, u64), Vec<&Refused>> =
            refused.iter().fold(std::collections::HashMap::new(), |mut m, r| {
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
                self.send_out(o);
                continue;
            };
            if told != Some((tag.token, tag.seq)) {
                told = Some((tag.token, tag.seq));
                let why = r.why.text();
                let frame = ProtoError::new(ERR_INVALID, why).encode();
                self.send_out(Out { dest: Dest::of(tag.from), msg: Delivery::Direct { conn: tag.from, frame } });
            }
        }
        self.flush.wake();
    }

    /// The log writer: takes whatever the journal holds, writes it in one
    /// write (and fsyncs it in `sync` mode), then releases what waited for it.
    pub(crate) async fn run_log_writer(self: Rc<Self>, log: Rc<Log>) {
        let sync = self.node.cfg.storage.durability == Durability::Sync;
        loop {
            std::future::poll_fn(|cx| {
                if self.owner.borrow_mut().journal().is_some_and(|j| j.has_pending()) {
                    Poll::Ready(())
                } else {
                    *self.log_waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let batch = self.owner.borrow_mut().journal().expect("journal").take();
            let (bytes, records, end) = (batch.buf.len() as u64, batch.marks.len() as u64, batch.end);
            let mut result = log.append(batch.buf).await;
            if let (Ok((_, base)), true) = (&result, sync) {
                let base = *base;
                if let Err(e) = self.timed_sync(&log).await {
                    // Not on disk for sure: refused, and taken back out of
                    // the file so that no start finds it as history.
                    if let Err(undo) = log.undo(base).await {
                        error!(shard = self.id, error = %undo, "cannot take a refused batch back out of the log");
                    }
                    result = Err(e);
                }
            }
            let refused = match result {
                Ok((seg, base)) => {
                    self.stats().log_appends.fetch_add(records, Relaxed);
                    self.stats().log_bytes.fetch_add(bytes, Relaxed);
                    self.stats().log_full.store(0, Relaxed);
                    self.owner.borrow_mut().on_written(&batch.marks, log.dir(), seg, base);
                    log.note_written(&batch.marks, base, bytes);
                    Vec::new()
                }
                Err(e) => {
                    // Not stored: every message of the batch is refused (its
                    // sender told, nothing delivered, out of memory history);
                    // its seqs stay used, so none is given to another
                    // message. New messages are refused for a second, then
                    // the log tries again (space may have come back).
                    self.stats().log_errors.fetch_add(1, Relaxed);
                    self.stats().log_refused.fetch_add(records, Relaxed);
                    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
                    let full = matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge);
                    self.stats().log_full.store(i64::from(full), Relaxed);
                    if let Some(held) = LOG_ERROR_LOG.due() {
                        error!(shard = self.id, error = %e, refused = records, held_back = held,
                            "cannot write the message log: its messages are refused, and new ones for a second");
                    }
                    let refused = refused_runs(&batch.marks);
                    let mut owner = self.owner.borrow_mut();
                    owner.on_log_refused(&refused);
                    owner.store_down(unix_ms(), Refusal::LogWrite);
                    refused
                }
            };
            self.release_held(end, &refused);
            match log.roll_if_full().await {
                Ok(None) => {}
                Ok(Some(upto)) => self.owner.borrow_mut().on_segments_deleted(log.dir(), upto),
                Err(e) => error!(shard = self.id, error = %e, "cannot start a new log segment"),
            }
            self.stats().log_size.store(log.size() as i64, Relaxed);
            glommio::yield_if_needed().await;
        }
    }

    /// In `written` mode: an fdatasync at most every `--fsync-interval-ms`
    /// when something was written, one at a time.
    pub(crate) async fn run_log_syncer(self: Rc<Self>, log: Rc<Log>) {
        loop {
            Timer::new(self.node.cfg.storage.fsync_interval).await;
            if log.unsynced()
                && let Err(e) = self.timed_sync(&log).await
            {
                self.stats().log_errors.fetch_add(1, Relaxed);
                error!(shard = self.id, error = %e, "fdatasync of the message log failed");
            }
        }
    }

    async fn timed_sync(&self, log: &Log) -> std::io::Result<()> {
        let t0 = Instant::now();
        let r = log.sync().await;
        self.stats().log_fsyncs.fetch_add(1, Relaxed);
        self.stats().log_fsync_us.fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
        r
    }

    /// At shutdown: waits until the journal is written, then fsyncs.
    pub(crate) async fn flush_log(&self, log: &Log) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let pending =
                self.owner.borrow_mut().journal().is_some_and(|j| j.has_pending() || j.end() > self.log_written.get());
            if !pending {
                break;
            }
            Timer::new(Duration::from_millis(5)).await;
        }
        if let Err(e) = log.sync().await {
            error!(shard = self.id, error = %e, "final fdatasync of the message log failed");
        }
    }
}
