//! The queues between shards: sending with back-pressure (an ordered outbox
//! per destination and a pump that feeds it into the bounded queue), the
//! receive loops, the local queue that stands in for "send to myself", and
//! the readers parked while the outboxes are backed up.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::Senders;
use glommio::channels::shared_channel::ConnectedReceiver;
use glommio::{GlommioError, ResourceType};

use super::Shard;
use crate::msg::ShardMsg;

/// How long a receive loop handles items before the flusher gets a turn.
const DISPATCH_BUDGET: Duration = Duration::from_millis(1);

/// A shard's end of the queues to the other shards.
pub(crate) struct Mesh {
    /// A queue's capacity (`--shard-queue`): readers park past it.
    shard_queue: usize,
    senders: Option<Senders<ShardMsg>>,
    /// Per destination shard: messages waiting because its queue was full.
    outbox: RefCell<Vec<VecDeque<ShardMsg>>>,
    /// Messages in all outboxes together.
    outbox_len: Cell<usize>,
    pump_busy: Vec<Cell<bool>>,
    pump_wakers: RefCell<Vec<Option<Waker>>>,
    /// Connections whose tasks stopped reading while the outboxes held more
    /// than one queue's capacity (`--shard-queue`); every one is woken once
    /// they drain to a quarter of it (a gap, so that readers do not stop and
    /// start around one level), or when their destination is gone. A reader
    /// that parks is always on this list, so pressure that ends always wakes it.
    parked: RefCell<Vec<(u32, u32)>>,
    /// Messages for this shard itself, handled in order by the outermost
    /// [`Mesh::accept`] (so that handling never re-enters itself).
    local: RefCell<VecDeque<ShardMsg>>,
    draining: Cell<bool>,
}

impl Mesh {
    pub(super) fn new(nshards: usize, shard_queue: usize, senders: Option<Senders<ShardMsg>>) -> Self {
        Mesh {
            shard_queue,
            senders,
            outbox: RefCell::new((0..nshards).map(|_| VecDeque::new()).collect()),
            outbox_len: Cell::new(0),
            pump_busy: (0..nshards).map(|_| Cell::new(false)).collect(),
            pump_wakers: RefCell::new(vec![None; nshards]),
            parked: RefCell::new(Vec::new()),
            local: RefCell::new(VecDeque::new()),
            draining: Cell::new(false),
        }
    }

    /// Sends a message to a shard. A full queue is back-pressure: the message
    /// waits in an ordered outbox that a pump feeds into the queue; nothing
    /// is dropped. To this shard itself it goes through [`Mesh::accept`].
    pub(super) fn route(&self, sh: &Shard, dst: usize, msg: ShardMsg) {
        if dst == sh.id {
            return self.accept(sh, msg);
        }
        let mesh = self;
        let Some(senders) = &mesh.senders else { return };
        let sent = &sh.stats().sent_to[dst];
        let mut outbox = mesh.outbox.borrow_mut();
        if outbox[dst].is_empty() && !mesh.pump_busy[dst].get() {
            match senders.try_send_to(dst, msg) {
                Ok(()) => {
                    sent.fetch_add(1, Relaxed);
                    return;
                }
                Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => outbox[dst].push_back(msg),
                // The destination shard is gone (shutdown): nothing to deliver to.
                Err(_) => return,
            }
        } else {
            outbox[dst].push_back(msg);
        }
        mesh.outbox_len.set(mesh.outbox_len.get() + 1);
        // Counted while in the outbox too: the gauge shows back-pressure.
        sent.fetch_add(1, Relaxed);
        if let Some(w) = mesh.pump_wakers.borrow_mut()[dst].take() {
            w.wake();
        }
    }

    /// Handles a message on this shard. Every message is handled here, one
    /// after another: one that arrives while another is being handled (the
    /// owner sending to itself) waits in the local queue until that one is
    /// done, so no handler ever runs inside another.
    pub(super) fn accept(&self, sh: &Shard, msg: ShardMsg) {
        let mesh = self;
        mesh.local.borrow_mut().push_back(msg);
        if mesh.draining.replace(true) {
            return;
        }
        loop {
            let next = mesh.local.borrow_mut().pop_front();
            let Some(msg) = next else { break };
            sh.handle(msg);
        }
        mesh.draining.set(false);
    }

    /// Feeds the outbox of one destination into its queue, waiting when full.
    pub(super) async fn run_pump(sh: Rc<Shard>, dst: usize) {
        let mesh = &sh.mesh;
        let Some(senders) = &mesh.senders else { return };
        loop {
            let msg = std::future::poll_fn(|cx| match mesh.outbox.borrow_mut()[dst].pop_front() {
                Some(m) => Poll::Ready(m),
                None => {
                    mesh.pump_wakers.borrow_mut()[dst] = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            mesh.pump_busy[dst].set(true);
            let r = senders.send_to(dst, msg).await;
            mesh.outbox_len.set(mesh.outbox_len.get() - 1);
            mesh.pump_busy[dst].set(!mesh.outbox.borrow()[dst].is_empty());
            if r.is_err() {
                // The peer shard is gone (shutdown): nothing left to deliver
                // to, and nothing of it waits any more.
                let lost = mesh.outbox.borrow_mut()[dst].drain(..).count();
                mesh.outbox_len.set(mesh.outbox_len.get() - lost);
                sh.stats().sent_to[dst].fetch_sub(lost as u64 + 1, Relaxed);
                // Later sends try the queue again, see the shard gone and
                // drop the message, instead of filling an outbox no one drains.
                mesh.pump_busy[dst].set(false);
                mesh.resume_parked(&sh);
                return;
            }
            if mesh.outbox_len.get() <= mesh.shard_queue / 4 {
                mesh.resume_parked(&sh);
            }
        }
    }

    /// Takes another shard's messages off its queue to this one. Items are
    /// handled as long as they keep coming, up to a time budget; then the
    /// flusher writes what they queued. Under load, more frames per socket
    /// collect in one batch and go out in one write: the batch follows the load.
    pub(super) async fn run_receiver(sh: Rc<Shard>, rx: ConnectedReceiver<ShardMsg>) {
        let mut n = 0u32;
        let mut batch_start = Instant::now();
        while let Some(msg) = rx.recv().await {
            sh.stats().received.fetch_add(1, Relaxed);
            sh.mesh.accept(&sh, msg);
            n = n.wrapping_add(1);
            if n.is_multiple_of(16) && batch_start.elapsed() >= DISPATCH_BUDGET {
                futures_lite::future::yield_now().await;
                batch_start = Instant::now();
            }
        }
    }

    /// Back-pressure for readers: while this shard's outboxes hold more than
    /// one queue's capacity, a connection task stops reading new commands.
    /// Returns true when it must wait; it is then parked, and
    /// [`Mesh::resume_parked`] wakes it once the outboxes have drained.
    pub(crate) fn park_if_backed_up(&self, sh: &Shard, key: u32, waker: &Waker) -> bool {
        if self.outbox_len.get() <= self.shard_queue {
            return false;
        }
        let mut conns = sh.conns.borrow_mut();
        let Some(e) = conns.get_mut(key) else { return false };
        e.set_waker(waker);
        if !e.parked {
            e.parked = true;
            self.parked.borrow_mut().push((key, e.generation));
        }
        true
    }

    /// Wakes every parked reader (the outboxes have drained).
    fn resume_parked(&self, sh: &Shard) {
        let parked = std::mem::take(&mut *self.parked.borrow_mut());
        if parked.is_empty() {
            return;
        }
        let mut conns = sh.conns.borrow_mut();
        for (key, generation) in parked {
            let Some(e) = conns.get_mut(key).filter(|e| e.generation == generation) else { continue };
            e.parked = false;
            e.wake();
        }
    }
}
