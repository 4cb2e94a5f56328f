//! The write path. All of a socket's queued frames go out in one write
//! ([`Flusher::write_queue`], the one loop both writers use): the flusher
//! writes every dirty socket once per pass with non-blocking sends, and a
//! socket that is full is handed to its connection's task, which writes
//! the rest through glommio as the socket drains.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Shard;
use crate::metrics::ShardStats;
use crate::session::outbound::{Outbound, WRITE_CHUNK};

/// Writes a flush pass makes before it lets the shard's other runnable tasks
/// go (64 writes take a few hundred microseconds).
const FLUSH_YIELD_EVERY: usize = 64;

/// The flusher's state: which connections have frames to write, and how
/// busy writing keeps the shard.
pub(crate) struct Flusher {
    /// `--coalesce-ms` and the load above which it applies.
    coalesce: Duration,
    coalesce_above: f64,
    dirty: RefCell<Vec<u32>>,
    waker: RefCell<Option<Waker>>,
    write_buf: RefCell<Vec<u8>>,
    /// Gathers a TLS connection's sealed records for one send.
    tls_scratch: RefCell<Vec<u8>>,
    /// Time spent in flush passes since the last tick, and the share of the
    /// last tick it took (the flusher's load).
    busy_ns: Cell<u64>,
    util: Cell<f64>,
    last_pass: Cell<Duration>,
}

impl Flusher {
    pub(super) fn new(tuning: &crate::config::Tuning) -> Self {
        Flusher {
            coalesce: tuning.coalesce,
            coalesce_above: tuning.coalesce_above,
            dirty: RefCell::new(Vec::new()),
            waker: RefCell::new(None),
            write_buf: RefCell::new(Vec::with_capacity(WRITE_CHUNK)),
            tls_scratch: RefCell::new(Vec::new()),
            busy_ns: Cell::new(0),
            util: Cell::new(0.0),
            last_pass: Cell::new(Duration::ZERO),
        }
    }

    /// Lists a connection for the next pass.
    pub(super) fn mark(&self, key: u32) {
        self.dirty.borrow_mut().push(key);
    }

    /// Starts a pass if connections are listed.
    pub(super) fn wake(&self) {
        if !self.dirty.borrow().is_empty()
            && let Some(w) = self.waker.borrow_mut().take()
        {
            w.wake();
        }
    }

    /// Called once per sweeper tick of `tick` length: the share of it spent writing.
    pub(super) fn tick(&self, tick: Duration) {
        self.util.set(self.busy_ns.replace(0) as f64 / tick.as_nanos() as f64);
    }

    /// The flusher task: whenever connections are dirty, writes each once.
    /// It runs after the tasks that queued frames yield, so a burst of
    /// deliveries becomes one `send` per socket.
    pub(super) async fn run(sh: Rc<Shard>) {
        let f = &sh.flush;
        let mut batch: Vec<u32> = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                if f.dirty.borrow().is_empty() {
                    *f.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let delay = f.coalesce_delay();
            if !delay.is_zero() {
                glommio::timer::Timer::new(delay).await;
            }
            let mut t0 = Instant::now();
            let mut pass = Duration::ZERO;
            std::mem::swap(&mut batch, &mut *f.dirty.borrow_mut());
            for (i, &key) in batch.iter().enumerate() {
                f.flush_now(&sh, key);
                if (i + 1) % FLUSH_YIELD_EVERY == 0 && i + 1 < batch.len() {
                    // Let the tasks that are already runnable go first
                    // (connections woken by the same I/O poll, cross-shard
                    // receive loops): their frames then join sockets not yet
                    // written in this pass instead of waiting for the next.
                    // glommio polls for new I/O only when its queue runs dry
                    // or its preempt timer fires, so sockets that become
                    // readable during the pass still wait for its end.
                    pass += t0.elapsed();
                    glommio::executor().yield_task_queue_now().await;
                    t0 = Instant::now();
                }
            }
            batch.clear();
            pass += t0.elapsed();
            f.last_pass.set(pass);
            f.busy_ns.set(f.busy_ns.get() + pass.as_nanos() as u64);
        }
    }

    /// How long the flusher lets frames pile up before a pass: nothing while
    /// writing takes little of the shard's time; under load, enough that a
    /// pass starts at most every `--coalesce-ms`, so each write carries more
    /// frames. Passes that already take that long get no delay: frames pile
    /// up during them anyway, and waiting would only idle the core.
    fn coalesce_delay(&self) -> Duration {
        let d = self.coalesce;
        if d.is_zero() || self.util.get() < self.coalesce_above {
            return Duration::ZERO;
        }
        d.saturating_sub(self.last_pass.get())
    }

    /// Writes what a listed connection has queued with non-blocking sends.
    /// If the socket is full, the connection's task takes over.
    fn flush_now(&self, sh: &Shard, key: u32) {
        let mut conns = sh.conns.borrow_mut();
        let Some(e) = conns.get_mut(key) else { return };
        if !e.out.take_dirty() {
            return; // blocked or closing: the connection's task writes
        }
        let fd = e.fd;
        match self.write_queue(sh.stats(), &mut e.out, e.tls.as_deref_mut(), |buf| raw_send(fd, buf)) {
            Poll::Ready(Ok(())) => {}
            Poll::Pending => {
                e.out.block();
                e.wake();
            }
            Poll::Ready(Err(_)) => {
                // Peer reset: drop the output; the task sees the error on read.
                e.out.clear();
                e.wake();
            }
        }
    }

    /// Called by the connection task when its socket was full (or to flush
    /// its close frame): writes through glommio's stream, which registers
    /// for writability when it would block. Ready(Ok) once the queue is empty.
    pub(crate) fn poll_write_queued(
        &self,
        sh: &Shard,
        key: u32,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&mut Context<'_>, &[u8]) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<()>> {
        let mut conns = sh.conns.borrow_mut();
        let Some(e) = conns.get_mut(key) else { return Poll::Ready(Ok(())) };
        let r = self.write_queue(sh.stats(), &mut e.out, e.tls.as_deref_mut(), |buf| write(cx, buf));
        if let Poll::Ready(Ok(())) = r {
            e.out.drained();
        }
        r
    }

    /// The one write loop: writes `out`'s frames, as many per write as fit
    /// [`WRITE_CHUNK`], until the queue is empty or the socket is full. On
    /// TLS the same chunks are sealed into records first, and the records
    /// go out in one send.
    fn write_queue(
        &self,
        stats: &ShardStats,
        out: &mut Outbound,
        tls: Option<&mut rustls::ServerConnection>,
        mut write: impl FnMut(&[u8]) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<()>> {
        let mut wb = self.write_buf.borrow_mut();
        if let Some(tls) = tls {
            let mut scratch = self.tls_scratch.borrow_mut();
            loop {
                while tls.wants_write() {
                    let mut w = crate::tls::PollWriter::new(&mut write, &mut scratch);
                    match tls.write_tls(&mut w) {
                        Ok(n) => {
                            stats.writes.fetch_add(1, Relaxed);
                            stats.bytes_out.fetch_add(n as u64, Relaxed);
                        }
                        Err(_) if w.blocked => return Poll::Pending,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                if out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // Sealed into records now; the loop sends them.
                let n = std::io::Write::write(&mut tls.writer(), out.next_chunk(&mut wb))?;
                out.consume(n);
            }
        }
        while !out.is_empty() {
            match write(out.next_chunk(&mut wb)) {
                Poll::Ready(Ok(n)) => {
                    stats.writes.fetch_add(1, Relaxed);
                    stats.bytes_out.fetch_add(n as u64, Relaxed);
                    out.consume(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A non-blocking `send`; a full socket is `Pending`.
fn raw_send(fd: RawFd, buf: &[u8]) -> Poll<std::io::Result<usize>> {
    // SAFETY: buf is valid for reads of buf.len() bytes; fd is the
    // connection's socket, owned by its task for as long as it is registered.
    let r = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if r >= 0 {
        return Poll::Ready(Ok(r as usize));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock { Poll::Pending } else { Poll::Ready(Err(e)) }
}
