//! The shard's history reader: answers the history requests the owner
//! could not answer from memory ([`DiskRead`]) by reading the records from
//! the log through glommio's buffered files (io_uring), so the executor
//! never waits on the disk. Records of one request that lie near each other
//! in a segment are read in one read, and the reads of a request run at once.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};

use bytes::Bytes;
use glommio::io::{BufferedFile, OpenOptions};
use tracing::warn;

use super::Shard;
use crate::msg::Delivery;
use crate::node::unix_ms;
use crate::owner::{Dest, DiskRead, Out, ReadReply, Resume};
use crate::protocol::{self, ERR_INVALID, ProtoError};
use crate::store::Loc;
use crate::store::log::record::{self, Decoded, FRAME_LEN};
use crate::store::log::recovery::{segment_name, shard_dir};

/// History answers allowed to wait for the disk per shard; past it a
/// request is refused (try again) rather than queued without bound.
const MAX_QUEUED: usize = 1024;
/// Records closer than this in a segment are read in one read.
const SPAN: u64 = 64 << 10;
/// Bytes read past a record's start when its length is not known yet.
const GUESS: u64 = 4096;

/// Rooms whose message ids are read back at once: a restart opens many
/// rooms together, and each one's messages wait for its read-back (up to
/// 1,024, then they are refused), so these do not queue behind each other.
/// Other reads go one at a time, in order.
const MIDS_AT_ONCE: usize = 4;

/// History requests waiting for the disk, and the reader task's waker.
#[derive(Debug, Default)]
pub(super) struct Reader {
    queue: RefCell<VecDeque<DiskRead>>,
    waker: RefCell<Option<Waker>>,
    /// Read-backs of message ids under way (at most [`MIDS_AT_ONCE`]).
    mids: Cell<usize>,
}

impl Reader {
    /// Hands the owner's history requests that need the disk to the reader.
    pub(super) fn queue(&self, sh: &Shard) {
        let mut owner = sh.owner.borrow_mut();
        let mut reads = self.queue.borrow_mut();
        let mut refused = Vec::new();
        for r in owner.take_reads() {
            if reads.len() < MAX_QUEUED {
                reads.push_back(r);
            } else {
                refused.push(r.reply);
            }
        }
        drop((owner, reads));
        for reply in refused {
            refuse(sh, reply, "history is busy, try again shortly");
        }
        if !self.queue.borrow().is_empty() {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The reader task: one request at a time, its reads at once; a room's
    /// read-back of its message ids in a task of its own, up to
    /// [`MIDS_AT_ONCE`] together (the next request waits while that many run).
    pub(super) async fn run(sh: Rc<Shard>) {
        let me = &sh.reader;
        loop {
            let req = std::future::poll_fn(|cx| {
                let mut queue = me.queue.borrow_mut();
                let ready = queue
                    .front()
                    .is_some_and(|r| !matches!(r.reply, ReadReply::Mids(_)) || me.mids.get() < MIDS_AT_ONCE);
                if ready {
                    return Poll::Ready(queue.pop_front().expect("a front"));
                }
                *me.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            if matches!(req.reply, ReadReply::Mids(_)) {
                me.mids.set(me.mids.get() + 1);
                let sh = sh.clone();
                glommio::spawn_local(async move {
                    serve(&sh, req).await;
                    sh.reader.mids.set(sh.reader.mids.get() - 1);
                    sh.reader.wake();
                })
                .detach();
            } else {
                serve(&sh, req).await;
            }
        }
    }
}

/// Reads one request's records from the log and answers it.
async fn serve(sh: &Shard, req: DiskRead) {
    let DiskRead { rid, epoch, locs, tail, reply, forward, budget } = req;
    let (mut msgs, missing) = read_records(&sh.node.cfg.storage.data_dir, &rid, &locs).await;
    sh.stats().history_disk_reads.fetch_add(1, Relaxed);
    sh.stats().history_disk_records.fetch_add(msgs.len() as u64, Relaxed);
    if missing > 0 {
        sh.stats().history_disk_errors.fetch_add(1, Relaxed);
        warn!(shard = sh.id, %rid, missing, "history: messages missing from the log (retention or damage)");
    }
    msgs.extend(tail);
    answer(sh, &rid, epoch, msgs, forward, budget, reply);
}

/// Sends a history answer read from a store (the log or a shared one),
/// trimmed to `budget` bytes (see [`crate::owner::fit`]).
pub(super) fn answer(
    sh: &Shard,
    rid: &str,
    epoch: u64,
    mut msgs: Vec<Bytes>,
    forward: bool,
    budget: usize,
    reply: ReadReply,
) {
    if !matches!(reply, ReadReply::Resume(_) | ReadReply::Mids(_)) {
        // A page shows messages as they are now (a resume replays events).
        let rid = crate::ids::Id::parse_str(rid).expect("a room id");
        sh.owner.borrow().fold_history(&rid, &mut msgs, crate::node::unix_ms());
    }
    crate::owner::fit(&mut msgs, forward, budget);
    match reply {
        ReadReply::Conn(conn) => {
            let frame = protocol::encode_history(rid, epoch, msgs.iter().map(|b| &b[..]));
            // Behind any room message not yet stored, like every reply.
            sh.hold.send_or_hold(sh, &mut vec![Out { dest: Dest::of(conn), msg: Delivery::Direct { conn, frame } }]);
        }
        ReadReply::Api(tx) => drop(tx.send(Some((epoch, msgs)))),
        ReadReply::Resume(r) => resumed(sh, *r, epoch, Some(msgs)),
        ReadReply::Mids(rid) => mids_loaded(sh, &rid, Some(msgs)),
    }
}

/// Refuses a history request (busy, or its store unavailable), counted.
pub(super) fn refuse(sh: &Shard, reply: ReadReply, why: &'static str) {
    sh.stats().history_disk_errors.fetch_add(1, Relaxed);
    match reply {
        ReadReply::Conn(conn) => {
            let frame = ProtoError::new(ERR_INVALID, why).encode();
            sh.send_out(Out { dest: Dest::of(conn), msg: Delivery::Direct { conn, frame } });
        }
        ReadReply::Api(tx) => drop(tx.send(None)),
        ReadReply::Resume(r) => resumed(sh, *r, 0, None),
        ReadReply::Mids(rid) => {
            warn!(shard = sh.id, %rid, why, "cannot read a room's message ids back: repeats of its older messages will be posted again");
            mids_loaded(sh, &rid, None)
        }
    }
}

/// Reads the messages at `locs` (epoch, seq, place; oldest first) of room
/// `rid`. Returns those found, in order, and how many were not (a deleted
/// segment, damage: a record that is not the one expected is not returned).
async fn read_records(data: &std::path::Path, rid: &str, locs: &[(u64, u64, Loc)]) -> (Vec<Bytes>, usize) {
    // Runs of places in one segment, each within SPAN: one read each.
    let mut runs: Vec<&[(u64, u64, Loc)]> = Vec::new();
    let mut start = 0;
    for i in 1..=locs.len() {
        let split = i == locs.len() || {
            let (a, b) = (locs[start].2, locs[i].2);
            a.dir() != b.dir() || a.seg() != b.seg() || b.off() < locs[i - 1].2.off() || b.off() - a.off() > SPAN
        };
        if split {
            runs.push(&locs[start..i]);
            start = i;
        }
    }
    let mut files: HashMap<(usize, u64), Option<Rc<BufferedFile>>> = HashMap::new();
    let mut tasks = Vec::with_capacity(runs.len());
    for run in &runs {
        let l = run[0].2;
        let file = match files.get(&(l.dir(), l.seg())) {
            Some(f) => f.clone(),
            None => {
                let path = shard_dir(data, l.dir()).join(segment_name(l.seg()));
                let f = OpenOptions::new().read(true).buffered_open(&path).await.ok().map(Rc::new);
                files.insert((l.dir(), l.seg()), f.clone());
                f
            }
        };
        let want: Vec<(u64, u64, u64)> = run.iter().map(|(epoch, seq, l)| (*epoch, *seq, l.off())).collect();
        let rid = rid.to_owned();
        tasks.push(glommio::spawn_local(async move {
            match file {
                Some(f) => read_run(&f, &rid, &want).await,
                None => Vec::new(),
            }
        }));
    }
    let mut out = Vec::with_capacity(locs.len());
    for t in tasks {
        out.extend(t.await);
    }
    for f in files.into_values().flatten() {
        if let Ok(f) = Rc::try_unwrap(f) {
            let _ = f.close().await;
        }
    }
    let missing = locs.len() - out.len();
    (out, missing)
}

/// Reads one run of records of a segment (`(epoch, seq, offset)`, ascending)
/// with one read, and any record longer than the read with one more each.
async fn read_run(f: &BufferedFile, rid: &str, want: &[(u64, u64, u64)]) -> Vec<Bytes> {
    let base = want[0].2;
    let len = want[want.len() - 1].2 - base + GUESS;
    let Ok(buf) = f.read_at(base, len as usize).await else { return Vec::new() };
    let mut out = Vec::with_capacity(want.len());
    for &(epoch, seq, off) in want {
        let at = (off - base) as usize;
        let found = match buf.get(at..).map(record::decode) {
            Some(Decoded::Record(r, _)) => Some(r),
            Some(Decoded::Incomplete) if buf.len() >= at + 4 => {
                // Longer than what was read: read exactly this record.
                let body = u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
                match f.read_at(off, FRAME_LEN + body.min(record::MAX_BODY)).await {
                    Ok(one) => match record::decode(&one) {
                        Decoded::Record(r, _) => Some(r),
                        _ => None,
                    },
                    Err(_) => None,
                }
            }
            _ => None,
        };
        if let Some(r) = found.filter(|r| r.epoch == epoch && r.seq == seq && &*r.rid == rid) {
            out.push(r.msg);
        }
    }
    out
}

/// A resuming login's read answered (None: it failed): the owner acks it,
/// with the messages when they are all there, and makes it a member;
/// then what it sent to the room meanwhile.
fn resumed(sh: &Shard, r: Resume, epoch: u64, msgs: Option<Vec<Bytes>>) {
    let mut out = std::mem::take(&mut *sh.owner_out.borrow_mut());
    let waiting = sh.owner.borrow_mut().resumed(r, epoch, msgs, unix_ms(), &mut out);
    sh.hold.send_or_hold(sh, &mut out);
    *sh.owner_out.borrow_mut() = out;
    for req in waiting {
        sh.on_request(req);
    }
}

/// A room's message ids are back: the messages that waited for them are
/// handled, in order.
fn mids_loaded(sh: &Shard, rid: &crate::ids::Id, msgs: Option<Vec<Bytes>>) {
    let waiting = sh.owner.borrow_mut().mids_loaded(rid, msgs, unix_ms());
    for req in waiting {
        sh.on_request(req);
    }
}
