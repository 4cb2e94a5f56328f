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
use crate::node::unix_ms;
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

/// The log writer: takes whatever the journal holds, writes it in one
/// write (and fsyncs it in `sync` mode), then releases what waited for it.
pub(super) async fn run_writer(sh: Rc<Shard>, log: Rc<Log>) {
    let sync = sh.node.cfg.storage.durability == Durability::Sync;
    loop {
        std::future::poll_fn(|cx| {
            if sh.owner.borrow_mut().journal().is_some_and(|j| j.has_pending()) {
                Poll::Ready(())
            } else {
                sh.hold.wait(cx.waker());
                Poll::Pending
            }
        })
        .await;
        let batch = sh.owner.borrow_mut().journal().expect("journal").take();
        let (bytes, records, end) = (batch.buf.len() as u64, batch.marks.len() as u64, batch.end);
        let mut result = log.append(batch.buf).await;
        if let (Ok((_, base)), true) = (&result, sync) {
            let base = *base;
            if let Err(e) = timed_sync(&sh, &log).await {
                // Not on disk for sure: refused, and taken back out of
                // the file so that no start finds it as history.
                if let Err(undo) = log.undo(base).await {
                    error!(shard = sh.id, error = %undo, "cannot take a refused batch back out of the log");
                }
                result = Err(e);
            }
        }
        let refused = match result {
            Ok((seg, base)) => {
                sh.stats().log_appends.fetch_add(records, Relaxed);
                sh.stats().log_bytes.fetch_add(bytes, Relaxed);
                sh.stats().log_full.store(0, Relaxed);
                sh.owner.borrow_mut().on_written(&batch.marks, log.dir(), seg, base);
                log.note_written(&batch.marks, base, bytes);
                Vec::new()
            }
            Err(e) => {
                // Not stored: every message of the batch is refused (its
                // sender told, nothing delivered, out of memory history);
                // its seqs stay used, so none is given to another
                // message. New messages are refused for a second, then
                // the log tries again (space may have come back).
                sh.stats().log_errors.fetch_add(1, Relaxed);
                sh.stats().log_refused.fetch_add(records, Relaxed);
                use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
                let full = matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge);
                sh.stats().log_full.store(i64::from(full), Relaxed);
                if let Some(held) = LOG_ERROR_LOG.due() {
                    error!(shard = sh.id, error = %e, refused = records, held_back = held,
                        "cannot write the message log: its messages are refused, and new ones for a second");
                }
                let refused = refused_runs(&batch.marks);
                let mut owner = sh.owner.borrow_mut();
                owner.on_log_refused(&refused);
                owner.store_down(unix_ms(), Refusal::LogWrite);
                refused
            }
        };
        sh.hold.release(&sh, end, &refused);
        match log.roll_if_full().await {
            Ok(None) => {}
            Ok(Some(upto)) => sh.owner.borrow_mut().on_segments_deleted(log.dir(), upto),
            Err(e) => error!(shard = sh.id, error = %e, "cannot start a new log segment"),
        }
        sh.stats().log_size.store(log.size() as i64, Relaxed);
        glommio::yield_if_needed().await;
    }
}

/// In `written` mode: an fdatasync at most every `--fsync-interval-ms`
/// when something was written, one at a time.
pub(super) async fn run_syncer(sh: Rc<Shard>, log: Rc<Log>) {
    loop {
        Timer::new(sh.node.cfg.storage.fsync_interval).await;
        if log.unsynced()
            && let Err(e) = timed_sync(&sh, &log).await
        {
            sh.stats().log_errors.fetch_add(1, Relaxed);
            error!(shard = sh.id, error = %e, "fdatasync of the message log failed");
        }
    }
}

async fn timed_sync(sh: &Shard, log: &Log) -> std::io::Result<()> {
    let t0 = Instant::now();
    let r = log.sync().await;
    sh.stats().log_fsyncs.fetch_add(1, Relaxed);
    sh.stats().log_fsync_us.fetch_add(t0.elapsed().as_micros() as u64, Relaxed);
    r
}

/// At shutdown: waits until the journal is written, then fsyncs.
pub(super) async fn flush(sh: &Shard, log: &Log) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let pending = sh.owner.borrow_mut().journal().is_some_and(|j| j.has_pending() || j.end() > sh.hold.written());
        if !pending {
            break;
        }
        Timer::new(Duration::from_millis(5)).await;
    }
    if let Err(e) = log.sync().await {
        error!(shard = sh.id, error = %e, "final fdatasync of the message log failed");
    }
}
