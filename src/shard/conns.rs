//! The shard's connection table: a slab of entries, each with a generation
//! so that a stale [`ConnRef`] (its slot reused since) is recognised.

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::task::Waker;

use slab::Slab;

use super::dormant::Rest;
use super::flush::Flusher;
use crate::msg::ConnRef;
use crate::session::Session;
use crate::session::outbound::Outbound;

/// A connection as the shard sees it.
#[derive(Debug)]
pub(crate) struct ConnEntry {
    /// Counts registrations on this shard: tells slot reuses apart, and
    /// orders connections by age.
    pub(crate) generation: u32,
    /// The socket (owned by the connection's task).
    pub(crate) fd: RawFd,
    /// Identity, rooms and rate limits.
    pub(crate) session: Session,
    /// Frames waiting for the socket.
    pub(crate) out: Outbound,
    /// Wakes the connection's task (to write a full socket, or to close).
    waker: Option<Waker>,
    /// The task stopped reading because the shard's outboxes were backed
    /// up, and is on the shard's list of readers to wake when they drain.
    pub(crate) parked: bool,
    /// Sweeper tick of registration (the login deadline runs from it).
    pub(crate) born: u32,
    /// Sweeper tick of the last frame received.
    pub(crate) last_rx: u32,
    /// A ping was sent since then.
    pub(crate) pinged: bool,
    /// The client negotiated permessage-deflate: its messages may come
    /// compressed, and frames of at least `--compression-min-bytes` go to it
    /// compressed (the shard's one compressed copy of each).
    pub(crate) deflate: bool,
    /// The connection's TLS state, on a TLS port: frames are sealed into
    /// records when written, and input decrypted when read.
    pub(crate) tls: Option<Box<rustls::ServerConnection>>,
    /// Whether a task serves the connection or it is dormant (see
    /// [`super::dormant`]).
    pub(crate) rest: Rest,
    /// The peer's address while the connection holds one of its places
    /// (`--max-connections-per-ip`), given back when the entry goes.
    pub(crate) ip: Option<IpAddr>,
}

impl ConnEntry {
    /// Keeps the task's waker (cloned only when it changed).
    pub(crate) fn set_waker(&mut self, w: &Waker) {
        match &self.waker {
            Some(old) if old.will_wake(w) => {}
            _ => self.waker = Some(w.clone()),
        }
    }

    /// Forgets the waker (the task it wakes is gone).
    pub(crate) fn take_waker(&mut self) {
        self.waker = None;
    }

    /// Wakes the connection's task, if it waits.
    pub(crate) fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Starts closing with a close frame and wakes the task to flush it and
    /// hang up (see [`Outbound::start_close`]). A second call changes nothing.
    pub(crate) fn start_close(&mut self, code: u16, reason: &str) {
        if self.out.closing().is_none() {
            self.out.start_close(code, reason);
            self.wake();
        }
    }
}

/// The connections of one shard.
#[derive(Debug)]
pub(crate) struct Conns {
    slab: Slab<ConnEntry>,
    next_gen: u32,
}

impl Conns {
    pub(crate) fn new() -> Self {
        Conns { slab: Slab::new(), next_gen: 1 }
    }

    /// Registers a connection; returns its slot and generation.
    pub(crate) fn insert(
        &mut self,
        fd: RawFd,
        session: Session,
        tick: u32,
        deflate: bool,
        ip: Option<IpAddr>,
    ) -> (u32, u32) {
        let generation = self.next_gen;
        self.next_gen = generation.wrapping_add(1);
        let key = self.slab.insert(ConnEntry {
            generation,
            fd,
            session,
            out: Outbound::default(),
            waker: None,
            parked: false,
            born: tick,
            last_rx: tick,
            pinged: false,
            deflate,
            tls: None,
            rest: Rest::Awake,
            ip,
        });
        (key as u32, generation)
    }

    /// Removes a connection.
    pub(crate) fn remove(&mut self, key: u32) -> ConnEntry {
        self.slab.remove(key as usize)
    }

    /// The connection in slot `key`.
    pub(crate) fn get(&self, key: u32) -> Option<&ConnEntry> {
        self.slab.get(key as usize)
    }

    /// The connection in slot `key`, to change.
    pub(crate) fn get_mut(&mut self, key: u32) -> Option<&mut ConnEntry> {
        self.slab.get_mut(key as usize)
    }

    /// The connection `c` names, if its slot still holds it.
    pub(crate) fn by_ref(&mut self, c: ConnRef) -> Option<&mut ConnEntry> {
        self.slab.get_mut(c.key as usize).filter(|e| e.generation == c.generation)
    }

    /// Every connection with its slot.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &ConnEntry)> {
        self.slab.iter().map(|(k, e)| (k as u32, e))
    }

    /// Every connection with its slot, to change.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (u32, &mut ConnEntry)> {
        self.slab.iter_mut().map(|(k, e)| (k as u32, e))
    }

    /// Open connections.
    pub(crate) fn len(&self) -> usize {
        self.slab.len()
    }
}

/// The address of a connection's peer, asked of the kernel (kept nowhere:
/// it is needed only for the rare login that costs a signature check).
pub(crate) fn peer_ip(fd: RawFd) -> Option<std::net::IpAddr> {
    // SAFETY: the fd belongs to a registered connection, open for as long
    // as its entry is in the table, and it is only borrowed for this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).peer_addr().ok()?.as_socket().map(|a| a.ip())
}

impl Conns {
    /// Hands a registered connection its TLS state (see [`crate::tls`]).
    pub(crate) fn set_tls(&mut self, key: u32, tls: Box<rustls::ServerConnection>) {
        if let Some(e) = self.get_mut(key) {
            e.tls = Some(tls);
        }
    }

    /// On a TLS connection: decrypts `ciphertext` into `plain`, and has
    /// `flush` send any record it produced (handshake, alert). None on a
    /// plain connection; Some(Ok(false)) once the peer closed its TLS side.
    pub(crate) fn tls_decrypt(
        &mut self,
        key: u32,
        ciphertext: &[u8],
        plain: &mut Vec<u8>,
        flush: &Flusher,
    ) -> Option<std::io::Result<bool>> {
        let e = self.get_mut(key)?;
        let tls = e.tls.as_deref_mut()?;
        let r = crate::tls::decrypt(tls, ciphertext, plain);
        if tls.wants_write() && e.out.mark_dirty() {
            flush.mark(key);
            flush.wake();
        }
        Some(r)
    }

    /// On a TLS connection: queues close_notify (after the close frame)
    /// and says so; false on a plain connection.
    pub(crate) fn tls_close_notify(&mut self, key: u32) -> bool {
        let Some(tls) = self.get_mut(key).and_then(|e| e.tls.as_deref_mut()) else { return false };
        tls.send_close_notify();
        true
    }
}
