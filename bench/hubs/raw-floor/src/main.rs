//! raw-floor: the fastest this machine moves broadcast fan-out over loopback
//! TCP, measured the way loadgen measures a chat server, without one.
//!
//! `--clients` socket pairs on 127.0.0.1. Writer threads own the server ends
//! (socket i belongs to writer i % W) and, on loadgen's open-loop schedule
//! (message m is due at t0 + m / rate and goes to room m % rooms), put a
//! fixed-size frame stamped with the due time on every member's socket. A
//! reader thread owns the client ends (one epoll set, edge-triggered, like
//! loadgen) and records each frame's latency from its due time in an
//! HdrHistogram. Two ways to write:
//! - `each`: one `send` per delivery, as soon as it is due;
//! - `batch`: frames queue per socket and one `send` carries all of a
//!   socket's queued frames; a writer writes its dirty sockets in turn,
//!   queueing newly due messages between writes.
//!
//! With `--inject` the messages travel as a chat server's do: the reader
//! thread also keeps the schedule and sends each message over TCP from its
//! room's first member, and the writer that owns the room (rooms belong to
//! writers whole, room r to writer r % W) reads it from an epoll set and fans
//! it out with `batch` writes, looking for new messages every 64 writes.
//! The reader's CPU time then includes the clients' sends, which a load
//! generator pays on the same cores.
//!
//! It prints deliveries/s (over the time they took), writes, frames per
//! write, how late the writers finished, latency percentiles and CPU time per
//! delivery of the writers and of the reader. Writers sleep until the next
//! message is due (timer slack 1 ns), so their CPU time is work, not spinning,
//! except when messages are under 5 us apart, or (`--inject`) while a
//! socket they have frames for is full.
//!
//! A reference point, not a proven lower bound: it is one lean design (a
//! writer per thread, one epoll reader) on the same shared cores.

use std::collections::VecDeque;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Each,
    Batch,
}

#[derive(Parser, Debug)]
#[command(about = "Loopback TCP broadcast fan-out without a chat server: the machine's floor")]
struct Args {
    /// Socket pairs (clients).
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Members per room.
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Messages per second in total (each goes to one room's other members).
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Seconds of measured traffic (after a 1 s warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes per frame (cchat's frame for a 64-byte msg is about 150).
    #[arg(long, default_value_t = 150)]
    frame_bytes: usize,
    /// One send per delivery, or all of a socket's queued frames in one send.
    #[arg(long, value_enum, default_value_t = Mode::Batch)]
    mode: Mode,
    /// Writer threads.
    #[arg(long, default_value_t = 1)]
    writers: usize,
    /// Send each message over TCP from its sender's client socket (the reader
    /// thread keeps the schedule) and fan it out when a writer reads it, as a
    /// chat server must; without it writers make messages up themselves.
    /// Rooms then belong to writers whole (room r to writer r % writers).
    #[arg(long)]
    inject: bool,
    /// Bytes per injected message (cchat's publish frame for a 64-byte msg is
    /// about 120).
    #[arg(long, default_value_t = 120)]
    msg_bytes: usize,
    /// Start the schedule at this wall-clock time (Unix milliseconds), so
    /// that several processes fan the same messages out at the same moments:
    /// one room larger than one process's open-file limit allows.
    #[arg(long)]
    start_at_ms: Option<u64>,
    /// Write each measured message's completion (the latency of its last
    /// delivery in this process, µs) to this file, a `message latency_us`
    /// line each, for combining the processes of one room.
    #[arg(long)]
    completion_out: Option<std::path::PathBuf>,
    /// Run the reader thread under SCHED_BATCH, as `loadgen --sched-batch`
    /// runs its workers: its wake-ups do not preempt the writers.
    #[arg(long)]
    reader_batch: bool,
    /// `batch` writers: submit the sends of up to this many queued sockets
    /// in one io_uring submission instead of a `send` each (0: `send`).
    #[arg(long, default_value_t = 0)]
    uring: usize,
    /// `--inject` writers: hold a socket's first queued frame this long
    /// before writing it, so later frames share its send.
    #[arg(long, default_value_t = 0)]
    hold_us: u64,
}

fn now_ns(origin: Instant) -> u64 {
    origin.elapsed().as_nanos() as u64
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid rlimit; raising the soft limit to the hard one.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

struct Shared {
    origin: Instant,
    t0: u64,
    end: u64,
    measure_from: u64,
    stop: AtomicBool,
    writes: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    /// Deliveries the messages sent so far are owed (`--inject`: kept by the
    /// reader, which sends them).
    expected: AtomicU64,
    /// `--inject`: every message of the schedule has been sent.
    schedule_done: AtomicBool,
    /// When the reader last read a frame.
    last_rx: AtomicU64,
}

/// Per-socket output of one writer: the bytes not yet taken by the kernel.
struct Out {
    fd: RawFd,
    pending: Vec<u8>,
    queued: bool,
    broken: bool,
    /// When its oldest unwritten frame was queued (ns since origin).
    since: u64,
}

/// What a writer did.
struct WriterReport {
    cpu_ns: u64,
    /// When it had written everything of its schedule.
    done_ns: u64,
    send_errors: u64,
}

/// One `send` of everything pending on `o`. Returns whether bytes remain.
/// A full socket keeps its bytes; a broken one drops them (counted), so the
/// reader's framing is never cut.
fn flush(o: &mut Out, writes: &mut u64, errors: &mut u64) -> bool {
    if o.pending.is_empty() || o.broken {
        return false;
    }
    // SAFETY: pending is valid for reads of its length.
    let r = unsafe {
        libc::send(o.fd, o.pending.as_ptr().cast(), o.pending.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    *writes += 1;
    let r = if r >= 0 { Ok(r as usize) } else { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)) };
    settle(o, r, errors);
    !o.pending.is_empty()
}

/// What a send did to `o`: the bytes it took leave the queue; a full
/// socket (EAGAIN) or an interrupted call keeps them; any other error
/// breaks the socket, dropping its bytes (counted).
fn settle(o: &mut Out, sent: Result<usize, i32>, errors: &mut u64) {
    match sent {
        Ok(n) => drop(o.pending.drain(..n)),
        Err(libc::EAGAIN | libc::EINTR) => {}
        Err(_) => {
            *errors += 1;
            o.broken = true;
            o.pending = Vec::new();
        }
    }
}

/// A writer's sockets and their output queues.
struct Outputs {
    out: Vec<Out>,
    /// Sockets with queued bytes, in the order they are written.
    dirty: VecDeque<usize>,
    /// Receiving sockets of each room (indexes into `out`); a room's first
    /// member sends its messages and receives none.
    members: Vec<Vec<usize>>,
    writes: u64,
    sent: u64,
    errors: u64,
    ring: Option<(io_uring::IoUring, usize)>,
    /// The time queued frames are stamped with, and how long they are held.
    now: u64,
    hold: u64,
}

impl Outputs {
    /// For the server ends `fds` (client index, fd) a writer owns.
    fn new(args: &Args, fds: &[(usize, RawFd)]) -> Self {
        let mut members = vec![Vec::new(); args.clients.div_ceil(args.room_size)];
        for (k, &(client, _)) in fds.iter().enumerate() {
            if client % args.room_size != 0 {
                members[client / args.room_size].push(k);
            }
        }
        let out = fds.iter().map(|&(_, fd)| Out { fd, pending: Vec::new(), queued: false, broken: false, since: 0 }).collect();
        let ring = (args.uring > 0).then(|| {
            (io_uring::IoUring::new((args.uring as u32).next_power_of_two()).expect("io_uring"), args.uring)
        });
        Outputs { out, dirty: VecDeque::new(), members, writes: 0, sent: 0, errors: 0, ring, now: 0, hold: args.hold_us * 1000 }
    }

    /// Queues `frame` for every receiver of `room` and marks their sockets
    /// for writing; with `write_now` (`each`) a socket that is not backed up
    /// is written at once instead.
    fn fan_out(&mut self, room: usize, frame: &[u8], write_now: bool) {
        for i in 0..self.members[room].len() {
            let k = self.members[room][i];
            let o = &mut self.out[k];
            if o.broken {
                continue;
            }
            o.pending.extend_from_slice(frame);
            self.sent += 1;
            if o.queued || (write_now && !flush(o, &mut self.writes, &mut self.errors)) {
                continue;
            }
            o.queued = true;
            o.since = self.now;
            self.dirty.push_back(k);
        }
    }

    /// Writes the next marked socket once (with `--uring`, the next few in
    /// one submission); false when none is marked.
    fn write_next(&mut self) -> bool {
        if self.ring.is_some() {
            return self.write_ring();
        }
        if self.hold > 0 && self.dirty.front().is_some_and(|&k| self.out[k].since + self.hold > self.now) {
            return false;
        }
        let Some(k) = self.dirty.pop_front() else { return false };
        let o = &mut self.out[k];
        if flush(o, &mut self.writes, &mut self.errors) {
            self.dirty.push_back(k);
        } else {
            o.queued = false;
        }
        true
    }

    /// Up to `--uring` queued sockets' sends in one io_uring submission,
    /// waiting for all of them.
    fn write_ring(&mut self) -> bool {
        use io_uring::{opcode, types};
        let (ring, most) = self.ring.as_mut().expect("ring");
        let mut n = 0;
        while n < *most {
            let Some(k) = self.dirty.pop_front() else { break };
            let o = &self.out[k];
            let e = opcode::Send::new(types::Fd(o.fd), o.pending.as_ptr(), o.pending.len() as u32)
                .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                .build()
                .user_data(k as u64);
            // SAFETY: pending stays alive and unchanged until the completion is reaped below.
            unsafe { ring.submission().push(&e).expect("room in the ring") };
            n += 1;
        }
        if n == 0 {
            return false;
        }
        ring.submit_and_wait(n).expect("submit");
        for c in ring.completion() {
            let (k, r) = (c.user_data() as usize, c.result());
            self.writes += 1;
            let o = &mut self.out[k];
            settle(o, if r >= 0 { Ok(r as usize) } else { Err(-r) }, &mut self.errors);
            if o.pending.is_empty() {
                o.queued = false;
            } else {
                self.dirty.push_back(k);
            }
        }
        true
    }

    fn report(self, sh: &Shared, cpu0: u64, done_ns: u64) -> WriterReport {
        sh.writes.fetch_add(self.writes, Relaxed);
        sh.sent.fetch_add(self.sent, Relaxed);
        WriterReport { cpu_ns: thread_cpu_ns() - cpu0, done_ns, send_errors: self.errors }
    }
}

/// An edge-triggered epoll set over `fds`, each event carrying its token.
fn epoll_of(fds: impl Iterator<Item = (RawFd, u64)>) -> RawFd {
    // SAFETY: plain epoll calls on fds the calling thread owns for the run.
    let ep = unsafe { libc::epoll_create1(0) };
    for (fd, token) in fds {
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: token };
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    ep
}

/// Reads `fd` until it is drained (a short read), handing `records` every
/// whole run of `rec`-byte records read, with the bytes of a record cut by
/// a read carried in `tail` to the next.
fn read_records(fd: RawFd, tail: &mut Vec<u8>, buf: &mut [u8], rec: usize, mut records: impl FnMut(&[u8])) {
    loop {
        let start = tail.len();
        buf[..start].copy_from_slice(tail);
        // SAFETY: buf[start..] is valid for writes of its length.
        let r = unsafe { libc::recv(fd, buf[start..].as_mut_ptr().cast(), buf.len() - start, libc::MSG_DONTWAIT) };
        if r <= 0 {
            return;
        }
        let filled = start + r as usize;
        let whole = filled - filled % rec;
        records(&buf[..whole]);
        tail.clear();
        tail.extend_from_slice(&buf[whole..filled]);
        if filled < buf.len() {
            return;
        }
    }
}

/// One writer: the open-loop schedule, its own sockets, its own queues.
fn writer(args: &Args, sh: &Shared, fds: Vec<(usize, RawFd)>) -> WriterReport {
    let rooms = args.clients.div_ceil(args.room_size);
    let per_msg = 1e9 / args.rate;
    let mut frame = vec![b'.'; args.frame_bytes];
    let mut outs = Outputs::new(args, &fds);
    let mut m = 0u64;
    let cpu0 = thread_cpu_ns();
    loop {
        let due = sh.t0 + (m as f64 * per_msg) as u64;
        let now = now_ns(sh.origin);
        if due >= sh.end {
            if outs.dirty.is_empty() {
                break;
            }
        } else if due <= now {
            frame[..8].copy_from_slice(&due.to_le_bytes());
            outs.fan_out((m as usize) % rooms, &frame, args.mode == Mode::Each);
            m += 1;
            continue;
        }
        // Nothing due: write one queued socket, or sleep until the next message.
        if !outs.write_next() {
            if due < sh.end && due > now + 5_000 {
                std::thread::sleep(Duration::from_nanos(due - now));
            } else {
                std::hint::spin_loop();
            }
        }
    }
    outs.report(sh, cpu0, now_ns(sh.origin))
}

/// A `--inject` writer: reads the messages that arrive on the sender sockets
/// it owns (one edge-triggered epoll set) and fans each out to its room,
/// all of a socket's queued frames in one send, like `batch`. It looks for
/// new messages after every 64 writes, and runs until told to stop.
fn inject_writer(args: &Args, sh: &Shared, fds: Vec<(usize, RawFd)>) -> WriterReport {
    let rs = args.room_size;
    let mut frame = vec![b'.'; args.frame_bytes];
    let mut outs = Outputs::new(args, &fds);
    let senders = fds.iter().enumerate().filter(|(_, (client, _))| client % rs == 0);
    let ep = epoll_of(senders.map(|(k, &(_, fd))| (fd, k as u64)));
    let mut tails: Vec<Vec<u8>> = vec![Vec::new(); fds.len()];
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut done_ns = 0;
    let cpu0 = thread_cpu_ns();
    while !sh.stop.load(Relaxed) {
        outs.now = now_ns(sh.origin);
        let timeout = if outs.dirty.is_empty() { 20 } else if outs.hold > 0 { 1 } else { 0 };
        // SAFETY: events has room for events.len() entries.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout) };
        for e in events.iter().take(n.max(0) as usize) {
            let k = e.u64 as usize;
            let room = fds[k].0 / rs;
            read_records(fds[k].1, &mut tails[k], &mut buf, args.msg_bytes, |msgs| {
                for msg in msgs.chunks_exact(args.msg_bytes) {
                    frame[..8].copy_from_slice(&msg[..8]);
                    outs.fan_out(room, &frame, false);
                }
            });
        }
        outs.now = now_ns(sh.origin);
        for _ in 0..64 {
            if !outs.write_next() {
                break;
            }
            done_ns = now_ns(sh.origin);
        }
    }
    outs.report(sh, cpu0, done_ns)
}

/// The schedule of `--inject`, kept by the reader thread: each due message
/// goes out from its room's first member. A send the socket takes only in
/// part keeps its rest for the next try, so the writer's framing holds.
struct Injector {
    senders: Vec<RawFd>,
    /// Bytes each sender still has to send.
    unsent: Vec<Vec<u8>>,
    msg: Vec<u8>,
    per_msg: f64,
    m: u64,
    /// Receivers of each room.
    fanout: Vec<u64>,
    send_errors: u64,
}

impl Injector {
    fn new(args: &Args, fds: &[RawFd]) -> Self {
        let rs = args.room_size;
        let rooms = args.clients.div_ceil(rs);
        Injector {
            senders: (0..rooms).map(|r| fds[r * rs]).collect(),
            unsent: vec![Vec::new(); rooms],
            msg: vec![b'.'; args.msg_bytes],
            per_msg: 1e9 / args.rate,
            m: 0,
            fanout: (0..rooms).map(|r| (args.clients.min((r + 1) * rs) - r * rs - 1) as u64).collect(),
            send_errors: 0,
        }
    }

    /// Sends what room `r`'s sender has pending; a broken socket drops it
    /// (counted), its deliveries then show as lost.
    fn push(&mut self, r: usize) {
        let out = &mut self.unsent[r];
        if out.is_empty() {
            return;
        }
        // SAFETY: out is valid for reads of its length.
        let n = unsafe {
            libc::send(self.senders[r], out.as_ptr().cast(), out.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n >= 0 {
            out.drain(..n as usize);
        } else {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::Interrupted {
                self.send_errors += 1;
                out.clear();
            }
        }
    }

    /// Sends every message due by now; returns how long until the next one
    /// (20 ms once the schedule is done, then `sh.schedule_done` is set).
    fn send_due(&mut self, sh: &Shared) -> u64 {
        loop {
            let due = sh.t0 + (self.m as f64 * self.per_msg) as u64;
            let now = now_ns(sh.origin);
            if due >= sh.end {
                let mut left = false;
                for r in 0..self.senders.len() {
                    self.push(r);
                    left |= !self.unsent[r].is_empty();
                }
                if left {
                    return 100_000;
                }
                sh.schedule_done.store(true, Relaxed);
                return 20_000_000;
            }
            if due > now {
                return due - now;
            }
            let room = self.m as usize % self.senders.len();
            self.msg[..8].copy_from_slice(&due.to_le_bytes());
            self.unsent[room].extend_from_slice(&self.msg);
            sh.expected.fetch_add(self.fanout[room], Relaxed);
            self.push(room);
            self.m += 1;
        }
    }
}

/// The reader: every client socket in one edge-triggered epoll set.
fn reader(args: &Args, sh: &Shared, fds: Vec<RawFd>) -> (Histogram<u64>, Vec<u64>, u64, u64, u64) {
    if args.reader_batch {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is this thread; param is a valid sched_param.
        let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        assert_eq!(r, 0, "sched_setscheduler(SCHED_BATCH): {}", std::io::Error::last_os_error());
    }
    let mut inject = args.inject.then(|| Injector::new(args, &fds));
    // Per message of the schedule: its latest delivery's latency (µs), 0
    // for one not measured. Message m was due at t0 + m / rate.
    let per_msg = 1e9 / args.rate;
    let mut completion = vec![0u64; ((sh.end - sh.t0) as f64 / per_msg) as usize + 2];
    let ep = epoll_of(fds.iter().enumerate().map(|(i, &fd)| (fd, i as u64)));
    let fb = args.frame_bytes;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut tails: Vec<Vec<u8>> = vec![Vec::new(); fds.len()];
    let mut buf = vec![0u8; 256 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut received = 0u64;
    let cpu0 = thread_cpu_ns();
    while !sh.stop.load(Relaxed) {
        let n = match inject.as_mut() {
            // Sub-millisecond wake-ups for the schedule (Linux 5.11+).
            Some(i) => {
                let ns = i.send_due(sh);
                let ts = libc::timespec { tv_sec: (ns / 1_000_000_000) as _, tv_nsec: (ns % 1_000_000_000) as _ };
                unsafe { libc::epoll_pwait2(ep, events.as_mut_ptr(), events.len() as i32, &ts, std::ptr::null()) }
            }
            None => unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 20) },
        };
        for e in events.iter().take(n.max(0) as usize) {
            let i = e.u64 as usize;
            read_records(fds[i], &mut tails[i], &mut buf, fb, |frames| {
                let now = now_ns(sh.origin);
                for f in frames.chunks_exact(fb) {
                    let due = u64::from_le_bytes(f[..8].try_into().expect("8 bytes"));
                    if due >= sh.measure_from {
                        let us = now.saturating_sub(due) / 1000;
                        hist.saturating_record(us);
                        let m = (((due - sh.t0) as f64) / per_msg).round() as usize;
                        if let Some(c) = completion.get_mut(m) {
                            *c = (*c).max(us.max(1));
                        }
                    }
                    received += 1;
                }
                sh.received.store(received, Relaxed);
                sh.last_rx.store(now, Relaxed);
            });
        }
    }
    (hist, completion, received, thread_cpu_ns() - cpu0, inject.map_or(0, |i| i.send_errors))
}

fn main() {
    let args = Arc::new(Args::parse());
    assert!(args.frame_bytes >= 8, "frames carry an 8-byte due time");
    assert!(args.msg_bytes >= 8, "injected messages carry an 8-byte due time");
    raise_nofile();
    // Sleeps of a few microseconds must not be stretched by the default
    // 50 us timer slack (threads inherit it), or writers would spin instead.
    // SAFETY: prctl with PR_SET_TIMERSLACK takes one integer argument.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let mut clients = Vec::with_capacity(args.clients);
    let mut servers = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let c = TcpStream::connect(addr).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        c.set_nodelay(true).expect("nodelay");
        s.set_nodelay(true).expect("nodelay");
        clients.push(c);
        servers.push(s);
    }
    let origin = Instant::now();
    let t0 = now_ns(origin)
        + match args.start_at_ms {
            Some(at) => {
                let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
                (at as u128 * 1_000_000).saturating_sub(wall.as_nanos()).max(1) as u64
            }
            None => 200_000_000,
        };
    let warm = 1_000_000_000;
    let sh = Arc::new(Shared {
        origin,
        t0,
        measure_from: t0 + warm,
        end: t0 + warm + (args.duration * 1e9) as u64,
        stop: AtomicBool::new(false),
        writes: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        expected: AtomicU64::new(0),
        schedule_done: AtomicBool::new(false),
        last_rx: AtomicU64::new(0),
    });
    let rfds: Vec<RawFd> = clients.iter().map(|c| c.as_raw_fd()).collect();
    let reader_h = {
        let (args, sh) = (args.clone(), sh.clone());
        std::thread::spawn(move || reader(&args, &sh, rfds))
    };
    // Whole rooms per writer when messages are injected: the writer that
    // reads a message writes all of its room.
    let owner = |i: usize| if args.inject { i / args.room_size } else { i } % args.writers;
    let writer_hs: Vec<_> = (0..args.writers)
        .map(|w| {
            let fds: Vec<(usize, RawFd)> =
                servers.iter().enumerate().filter(|(i, _)| owner(*i) == w).map(|(i, s)| (i, s.as_raw_fd())).collect();
            let (args, sh) = (args.clone(), sh.clone());
            std::thread::spawn(
                move || if args.inject { inject_writer(&args, &sh, fds) } else { writer(&args, &sh, fds) },
            )
        })
        .collect();
    let expected = |sh: &Shared| if args.inject { sh.expected.load(Relaxed) } else { sh.sent.load(Relaxed) };
    let mut writer_hs = writer_hs;
    let mut reports: Vec<WriterReport> = Vec::new();
    if args.inject {
        // Injecting writers run until stopped: wait out the schedule and
        // until the reader has sent all of it (up to 5 s more).
        std::thread::sleep(Duration::from_nanos(sh.end.saturating_sub(now_ns(origin))));
        let until = Instant::now() + Duration::from_secs(5);
        while !sh.schedule_done.load(Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
    } else {
        reports = writer_hs.drain(..).map(|h| h.join().expect("writer")).collect();
    }
    // Drain: up to 5 s for the reader to get everything written.
    let drain_until = Instant::now() + Duration::from_secs(5);
    while sh.received.load(Relaxed) < expected(&sh) && Instant::now() < drain_until {
        std::thread::sleep(Duration::from_millis(20));
    }
    sh.stop.store(true, Relaxed);
    reports.extend(writer_hs.drain(..).map(|h| h.join().expect("writer")));
    let writer_cpu: u64 = reports.iter().map(|r| r.cpu_ns).sum();
    let late_ms = reports.iter().map(|r| r.done_ns).max().unwrap_or(0).saturating_sub(sh.end) as f64 / 1e6;
    let (hist, completion, received, reader_cpu, inject_errors) = reader_h.join().expect("reader");
    let send_errors: u64 = reports.iter().map(|r| r.send_errors).sum::<u64>() + inject_errors;
    let sent = expected(&sh);
    // Deliveries per second over the time they actually took: from the first
    // due time to the last frame read (a writer that falls behind shows here).
    let secs = (sh.last_rx.load(Relaxed).max(sh.end) - sh.t0) as f64 / 1e9;
    let writes = sh.writes.load(Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "raw-floor mode={} writers={} clients={} room_size={} rate={} msg/s frame={} B",
        if args.inject { "inject (batch)".to_string() } else { format!("{:?}", args.mode) },
        args.writers,
        args.clients,
        args.room_size,
        args.rate,
        args.frame_bytes
    );
    println!(
        "deliveries {received} of {sent} ({:.0}/s), lost {}, send errors {send_errors}, writes {writes} ({:.2} frames/write)",
        received as f64 / secs,
        sent.saturating_sub(received),
        sent as f64 / writes.max(1) as f64
    );
    println!("writers done {late_ms:.1} ms after the schedule ended");
    println!(
        "latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
    let mut done: Vec<u64> = completion.iter().copied().filter(|&us| us > 0).collect();
    done.sort_unstable();
    if let Some(&last) = done.last() {
        let at = |q: f64| done[((done.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        println!(
            "completion ms p50 {:.3} p99 {:.3} max {:.3} ({} messages)",
            at(0.5),
            at(0.99),
            last as f64 / 1000.0,
            done.len()
        );
    }
    if let Some(path) = &args.completion_out {
        let lines: String =
            completion.iter().enumerate().filter(|(_, us)| **us > 0).map(|(m, us)| format!("{m} {us}\n")).collect();
        std::fs::write(path, lines).expect("write --completion-out");
    }
    println!(
        "cpu ns/delivery writers {:.0} reader {:.0}{}",
        writer_cpu as f64 / received.max(1) as f64,
        reader_cpu as f64 / received.max(1) as f64,
        if args.inject { " (with its sends)" } else { "" }
    );
    if sent != received || send_errors > 0 {
        std::process::exit(1);
    }
}
