//! Dormant connections: a connection quiet for `--dormant-after` gives up
//! its task and its socket's pending read, and one epoll per shard watches
//! all such sockets instead.
//!
//! Why: glommio keeps, for every socket waiting to be read, a task (its
//! future and header, ~520 B) and a pending poll (a `Source`, ~480 B),
//! and most of a chat server's connections wait most of the time: the two
//! were over half of an idle connection's memory. A dormant connection is
//! its table entry and its socket, nothing more.
//!
//! How: the sweeper asks a quiet connection's task to sleep; the task
//! agrees only when nothing is half read (no partial frame, no fragmented
//! message) and it is neither closing nor blocked on a full socket. Then
//! the socket is duplicated (glommio's stream cannot give its descriptor
//! up), the copy registered with the shard's epoll (level-triggered and
//! one-shot, so bytes that arrived meanwhile report at once), and the task
//! ends, dropping its stream. A thread per shard waits on the epoll and
//! passes each report, the connection's slot and generation, over a Unix
//! socket pair that the shard reads like any socket. A report, or anything
//! else that would wake the task (a full socket to write, a close, the
//! shard stopping), starts a new task on the same socket: the entry's
//! waker is [`waker`]'s, which has the shard's task spawn it. The new
//! task reads at once, before glommio's first poll of the socket comes
//! back: waiting for it put a dormant sender's message one reactor round
//! behind (load B's p99 rose 1.3–1.5×; reading at once: no change,
//! bench/results/2026-12-07-dormant-load-b). Output never needs the task:
//! the flusher writes to the socket directly.
//!
//! A report whose input is only pongs (the answer to the sweeper's ping)
//! is read in place and the connection stays dormant.
//!
//! The sweeper asks at most [`ASKS_PER_TICK`] tasks a tick, and once a
//! second, after many went dormant, the allocator is asked to give back
//! the pages their tasks freed ([`Dormancy::collect`]).

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Poll, RawWaker, RawWakerVTable, Waker};

use futures_lite::AsyncReadExt;
use tracing::warn;

use super::Shard;
use super::conn::recv_now;

/// What the sweeper and the connection's task agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rest {
    /// A task serves the connection.
    Awake,
    /// The sweeper asked the task to go dormant; it has not answered yet.
    Asked,
    /// The task could not (a frame half read): not asked again until input comes.
    Declined,
    /// No task: the shard's epoll watches the socket.
    Dormant,
}

/// A shard's watch over its dormant sockets.
pub(crate) struct Dormancy {
    /// The epoll that holds every dormant socket (shared with the watcher thread).
    epoll: Arc<OwnedFd>,
    /// The shard's end of the pair the watcher reports on, until the
    /// shard's reading task takes it.
    reports: Cell<Option<StdUnixStream>>,
    /// Tells the watcher thread to end.
    stop: Arc<AtomicBool>,
    /// Connections gone dormant since the allocator was last asked to
    /// give freed memory back.
    rested: Cell<u32>,
}

impl std::fmt::Debug for Dormancy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dormancy").field("epoll", &self.epoll.as_raw_fd()).finish()
    }
}

/// Reports per read of the epoll (and per message on the pair).
const BATCH: usize = 256;

/// Tasks asked to go dormant per sweeper tick, at most: connections that
/// came together fall quiet together, and 10,000 going dormant in one tick
/// would hold the shard for tens of milliseconds at once; 256 a tick puts
/// 10,000 to rest in 4 s, a small share of each tick.
pub(crate) const ASKS_PER_TICK: u32 = 256;

/// Connections gone dormant in a second worth giving memory back for.
const COLLECT_AFTER: u32 = 64;

impl Dormancy {
    /// The shard's epoll and, when connections may go dormant
    /// (`--dormant-after` not 0), the thread that waits on it.
    pub(crate) fn new(shard: usize, enabled: bool) -> std::io::Result<Self> {
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let epoll = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let stop = Arc::new(AtomicBool::new(false));
        let reports = if enabled {
            let (ours, theirs) = StdUnixStream::pair()?;
            let (ep, st) = (epoll.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("cchat-dormant-{shard}"))
                .spawn(move || watch(&ep, theirs, &st))?;
            Some(ours)
        } else {
            None
        };
        Ok(Dormancy { epoll, reports: Cell::new(reports), stop, rested: Cell::new(0) })
    }

    /// Puts a connection to rest: duplicates its socket `fd` (the caller
    /// then drops its stream, which closes `fd`), hands the copy to the
    /// epoll and marks the entry dormant. False (and nothing changed)
    /// when the kernel refuses: the task goes on.
    pub(crate) fn enter(&self, sh: &Shard, key: u32, fd: RawFd) -> bool {
        let mut conns = sh.conns.borrow_mut();
        let Some(e) = conns.get_mut(key) else { return false };
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return false;
        }
        if !self.arm(libc::EPOLL_CTL_ADD, copy, report(key, e.generation)) {
            unsafe { libc::close(copy) };
            return false;
        }
        e.fd = copy;
        e.rest = Rest::Dormant;
        e.set_waker(&waker(key, e.generation));
        sh.stats().dormant.fetch_add(1, Relaxed);
        self.rested.set(self.rested.get().saturating_add(1));
        true
    }

    /// Wakes connection `key` of `generation` if it is dormant: the
    /// socket leaves the epoll and is returned (with whether the
    /// connection negotiated permessage-deflate) for a new task to serve.
    /// None when the slot holds another connection or it is awake.
    pub(crate) fn leave(&self, sh: &Shard, key: u32, generation: u32) -> Option<(RawFd, bool)> {
        let mut conns = sh.conns.borrow_mut();
        let e = conns.get_mut(key).filter(|e| e.generation == generation && e.rest == Rest::Dormant)?;
        e.rest = Rest::Awake;
        e.take_waker();
        // Out of the epoll before the descriptor goes back to a stream, so
        // that registrations never pile up on one socket.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, e.fd, std::ptr::null_mut()) };
        sh.stats().dormant.fetch_sub(1, Relaxed);
        sh.stats().dormant_wakes.fetch_add(1, Relaxed);
        Some((e.fd, e.deflate))
    }

    /// Once a second (the sweeper): when many connections went dormant
    /// since the last time, asks the allocator to return the pages their
    /// tasks freed. mimalloc keeps freed pages for reuse until it is asked
    /// (or this thread allocates again): without it, 10,000 connections
    /// gone dormant kept ~1,070 B each resident, with it ~730 B
    /// (bench/results/2026-12-07-idle-memory-dormant). A busy shard whose
    /// connections all talk rarely has any go dormant, and never pays.
    pub(crate) fn collect(&self) {
        if self.rested.replace(0) >= COLLECT_AFTER {
            // SAFETY: mimalloc's own call, on this thread's heap only.
            unsafe { libmimalloc_sys::mi_collect(false) };
        }
    }

    /// The sweeper asked this connection's task to go dormant (the task
    /// asks when it is neither closing nor blocked on a full socket).
    pub(crate) fn asked(&self, sh: &Shard, key: u32) -> bool {
        sh.conns.borrow().get(key).is_some_and(|e| e.rest == Rest::Asked)
    }

    /// The task cannot go dormant now (a frame half read): it is not asked
    /// again before its next input.
    pub(crate) fn decline(&self, sh: &Shard, key: u32) {
        if let Some(e) = sh.conns.borrow_mut().get_mut(key) {
            e.rest = Rest::Declined;
        }
    }

    /// The shard's task: wakes the connections that the watcher reports
    /// and those whose [`waker`] was woken.
    pub(crate) async fn run(sh: Rc<Shard>) {
        futures_lite::future::zip(Self::read_reports(&sh), Self::take_woken(&sh)).await;
    }

    /// Reads the watcher's reports.
    async fn read_reports(sh: &Rc<Shard>) {
        let Some(ours) = sh.dormancy.reports.take() else { return };
        if let Err(e) = ours.set_nonblocking(true) {
            warn!(shard = sh.id, error = %e, "dormant connections' reports cannot be read");
            return;
        }
        // SAFETY: the descriptor is ours alone; the stream owns it from now on.
        let mut reports = unsafe { glommio::net::UnixStream::from_raw_fd(ours.into_raw_fd()) };
        let mut buf = vec![0u8; BATCH * 8];
        let mut have = 0;
        loop {
            match reports.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            let whole = have - have % 8;
            for r in buf[..whole].chunks_exact(8) {
                let r = u64::from_le_bytes(r.try_into().expect("8 bytes"));
                if !sh.dormancy.take_pongs(sh, r) {
                    wake(sh, r);
                }
            }
            // A report split across two reads: keep its start.
            buf.copy_within(whole..have, 0);
            have -= whole;
        }
    }

    /// Takes a dormant connection's input in place when it is nothing but
    /// pongs (its answer to the sweeper's ping) and keeps it dormant: an
    /// idle connection is pinged every `--ping-interval`, and a task for
    /// each pong would make 100,000 idle connections 5,000 wakes a second.
    /// Anything else — another frame, part of one, TLS records, the end
    /// of the stream — is left unread for a task (false).
    fn take_pongs(&self, sh: &Shard, report: u64) -> bool {
        let (key, generation) = unreport(report);
        let fd = {
            let conns = sh.conns.borrow();
            match conns.get(key) {
                Some(e) if e.generation == generation && e.rest == Rest::Dormant && e.tls.is_none() => e.fd,
                _ => return false,
            }
        };
        let mut buf = [0u8; 512];
        let peeked = recv_now(fd, &mut buf, true).unwrap_or(0);
        let n = whole_pongs(&buf[..peeked]);
        // These bytes were just peeked, so they are there to take.
        if n == 0 || recv_now(fd, &mut buf[..n], false) != Some(n) {
            return false; // a task reads what is there
        }
        sh.touch(key);
        // Watched again (one-shot: the report disarmed it); on failure a task takes over.
        self.arm(libc::EPOLL_CTL_MOD, fd, report)
    }

    /// Adds `fd` to the epoll (`op` ADD) or re-arms it (MOD): one report
    /// for its next input or hang-up, then nothing until armed again.
    fn arm(&self, op: libc::c_int, fd: RawFd, report: u64) -> bool {
        let mut ev =
            libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32, u64: report };
        // SAFETY: `ev` is a valid event for the call's duration.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) == 0 }
    }

    /// Takes what [`waker`]s were woken with. They only note it: glommio
    /// runs a task it spawns at once, and a waker is often woken with the
    /// connection table borrowed.
    async fn take_woken(sh: &Rc<Shard>) {
        loop {
            let batch = poll_fn(|cx| {
                WOKEN.with(|w| {
                    let mut w = w.borrow_mut();
                    if w.reports.is_empty() {
                        w.task = Some(cx.waker().clone());
                        Poll::Pending
                    } else {
                        Poll::Ready(std::mem::take(&mut w.reports))
                    }
                })
            })
            .await;
            for r in batch {
                wake(sh, r);
            }
        }
    }
}

impl Drop for Dormancy {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Bytes of the whole client pong frames that make up all of `data` (0
/// when anything else is in it): final, no reserved bits, masked, a
/// payload of at most 125 bytes, as RFC 6455 has a client send a pong.
fn whole_pongs(data: &[u8]) -> usize {
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        if rest.len() < 2 || rest[0] != 0x8a || rest[1] & 0x80 == 0 || rest[1] & 0x7f > 125 {
            return 0;
        }
        let len = 2 + 4 + usize::from(rest[1] & 0x7f);
        if rest.len() < len {
            return 0;
        }
        off += len;
    }
    off
}

/// A report's 8 bytes: the slot, and the generation above it.
fn report(key: u32, generation: u32) -> u64 {
    u64::from(key) | u64::from(generation) << 32
}

/// The slot and generation a report names.
fn unreport(report: u64) -> (u32, u32) {
    (report as u32, (report >> 32) as u32)
}

/// The watcher thread: waits on the epoll, passes what it reports on.
/// It checks `stop` twice a second, and ends when the shard's end of the
/// pair is gone.
fn watch(epoll: &OwnedFd, mut out: StdUnixStream, stop: &AtomicBool) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
    let mut bytes = Vec::with_capacity(BATCH * 8);
    while !stop.load(Relaxed) {
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 500) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        bytes.clear();
        for ev in &events[..n as usize] {
            let data = ev.u64;
            bytes.extend_from_slice(&data.to_le_bytes());
        }
        if !bytes.is_empty() && out.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// What a shard thread's [`waker`]s were woken with, and the task that
/// takes it (one shard per thread).
struct Woken {
    reports: Vec<u64>,
    task: Option<Waker>,
}

thread_local! {
    static WOKEN: RefCell<Woken> = const { RefCell::new(Woken { reports: Vec::new(), task: None }) };
}

/// Starts a task for the connection a report names if it is still dormant
/// (a report and a wake can both come for one rest: the second finds it
/// awake).
fn wake(sh: &Rc<Shard>, report: u64) {
    let (key, generation) = unreport(report);
    glommio::spawn_local(super::conn::resume(sh.clone(), key, generation)).detach();
}

/// The waker a dormant connection's entry holds in place of its task's:
/// waking it starts a new task on the connection's socket. Its data is
/// the report itself (no allocation); it must be woken on the shard's
/// thread, as every connection waker is.
pub(crate) fn waker(key: u32, generation: u32) -> Waker {
    const _: () = assert!(std::mem::size_of::<usize>() >= 8, "a report must fit in a pointer");
    let data = report(key, generation) as usize as *const ();
    unsafe { Waker::from_raw(RawWaker::new(data, &VTABLE)) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

fn clone_raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake_raw(data: *const ()) {
    let task = WOKEN.with(|w| {
        let mut w = w.borrow_mut();
        w.reports.push(data as usize as u64);
        w.task.take()
    });
    if let Some(t) = task {
        t.wake();
    }
}

fn drop_raw(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_masked_pongs_are_taken_in_place() {
        let pong = |payload: &[u8]| {
            let mut f = vec![0x8a, 0x80 | payload.len() as u8, 1, 2, 3, 4];
            f.extend_from_slice(payload);
            f
        };
        let two = [pong(b"abc"), pong(b"")].concat();
        assert_eq!(whole_pongs(&two), two.len());
        assert_eq!(whole_pongs(&two[..two.len() - 1]), 0, "a pong cut short");
        assert_eq!(whole_pongs(&[pong(b"x"), vec![0x81, 0x80, 0, 0, 0, 0]].concat()), 0, "a text frame after it");
        assert_eq!(whole_pongs(&[0x8a, 0x03, b'a', b'b', b'c']), 0, "unmasked");
        assert_eq!(whole_pongs(&[0x0a, 0x80, 0, 0, 0, 0]), 0, "not final");
        assert_eq!(whole_pongs(&[0xca, 0x80, 0, 0, 0, 0]), 0, "RSV1");
        assert_eq!(whole_pongs(&[0x8a, 0xfe, 0, 0]), 0, "an extended length");
        assert_eq!(whole_pongs(&[]), 0);
    }

    proptest::proptest! {
        #[test]
        fn whatever_bytes_come_the_count_is_all_or_nothing(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let n = whole_pongs(&data);
            proptest::prop_assert!(n == 0 || n == data.len());
        }
    }

    #[test]
    fn a_report_carries_the_slot_and_the_generation() {
        assert_eq!(unreport(report(7, u32::MAX)), (7, u32::MAX));
        let w = waker(7, 3);
        let w2 = w.clone();
        assert!(w.will_wake(&w2));
        assert!(!w.will_wake(&waker(7, 4)));
    }
}
