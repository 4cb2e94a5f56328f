//! One worker: a slice of the clients driven by one thread and one epoll set.
//!
//! Phases: connect (at bounded concurrency, with retries) → wait for `go`
//! (reading all the while, so join announcements never pile up in the
//! server) → traffic (the schedule's sends; every delivery checked and
//! timed) → drain (until every expected delivery arrived or `--drain`
//! passed). All reads land in one shared buffer; each frame in it is scanned
//! in place ([`crate::scan`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::ops::Range;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::cli::Config;
use crate::conn::{self, Conn, SeqVerdict, State, Upgrade};
use crate::plan::{self, Plan};
use crate::scan::{self, Kind, Scanner};
use crate::schedule::{self, Schedule};
use crate::stats::{Stats, WireStats};
use crate::sys::{self, Epoll};

/// Where a worker is, for progress lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening connections and logging in.
    #[default]
    Connect,
    /// All logged in; waiting for the other workers.
    Ready,
    /// Sending and receiving.
    Run,
    /// Past the last send, waiting for stragglers.
    Drain,
}

/// A worker's running counts, reported about once a second.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Phase.
    pub phase: Phase,
    /// Clients owned.
    pub clients: u64,
    /// Clients logged in.
    pub connected: u64,
    /// Failed connect attempts retried.
    pub retries: u64,
    /// Messages sent.
    pub sent: u64,
    /// Deliveries received.
    pub received: u64,
    /// Losses, disorder, errors and closes seen so far.
    pub problems: u64,
}

impl Progress {
    /// Sums workers' progress (the phase is the least advanced).
    pub fn add(&mut self, o: &Progress) {
        self.phase = self.phase.min(o.phase);
        self.clients += o.clients;
        self.connected += o.connected;
        self.retries += o.retries;
        self.sent += o.sent;
        self.received += o.received;
        self.problems += o.problems;
    }
}

/// A line a worker process writes to the coordinator (JSON, one per line).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToCoordinator {
    /// Running counts.
    Progress(Progress),
    /// Every client of the worker is logged in.
    Ready,
    /// The final measurements.
    Report(Box<WireStats>),
}

/// How a worker talks to whoever runs it.
pub trait Link {
    /// Running counts, about once a second.
    fn progress(&mut self, p: &Progress);
    /// All of this worker's clients are logged in. Returns the start time of
    /// the schedule (ns, CLOCK_MONOTONIC) if it is known now; otherwise the
    /// worker waits for a `go NS` line on its standard input.
    fn ready(&mut self) -> Option<u64>;
}

/// The link of a worker process: JSON lines on stdout, `go` on stdin.
#[derive(Debug, Default)]
pub struct ChildLink;

impl ChildLink {
    /// Writes one line to the coordinator.
    pub fn send(msg: &ToCoordinator) {
        let mut out = io::stdout().lock();
        // The coordinator reads stdout until the report; if it is gone there
        // is no one to tell, and the worker notices on stdin.
        let _ = serde_json::to_writer(&mut out, msg);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}

impl Link for ChildLink {
    fn progress(&mut self, p: &Progress) {
        Self::send(&ToCoordinator::Progress(*p));
    }
    fn ready(&mut self) -> Option<u64> {
        Self::send(&ToCoordinator::Ready);
        None
    }
}

/// Retry budget per client for failed connects.
const MAX_ATTEMPTS: u32 = 5;
/// The shared read buffer.
const READ_BUF: usize = 1 << 20;
/// Events handled between two looks at the send schedule.
const SEND_CHECK_EVERY: usize = 16;
/// Epoll token of standard input (worker processes read `go` there).
const STDIN_TOKEN: u64 = u64::MAX;
/// `--churn`: after a reconnect, a client sends again what it sent this
/// long before its drop (the server answers `dup` to what it has).
const RESEND_WINDOW_NS: u64 = 3_000_000_000;
/// `--churn`: how often drops are made (the fraction spread over the second).
const CHURN_STEP_NS: u64 = 100_000_000;

/// Runs worker `index` of `count` to the end and returns what it measured.
pub fn run(cfg: &Config, index: u32, count: u32, link: &mut dyn Link) -> anyhow::Result<Stats> {
    let plan = Plan {
        clients: cfg.clients,
        room_size: cfg.room_size,
        nodes: cfg.targets.len() as u32,
        spread: cfg.args.spread_rooms,
        classes: cfg.classes,
    };
    let slice = plan.worker_slices(count)[index as usize].clone();
    if cfg.args.sched_batch {
        sys::sched_batch().context("--sched-batch: sched_setscheduler(SCHED_BATCH)")?;
    }
    let limit = sys::raise_nofile();
    if slice.len() as u64 + 64 > limit {
        bail!(
            "worker {index} would hold {} clients but the open-file limit is {limit}: use more --workers",
            slice.len()
        );
    }
    let mut w = Worker::new(cfg, plan, slice, count)?;
    w.connect(link)?;
    let t0 = match link.ready() {
        Some(t0) => t0,
        None => w.wait_for_go()?,
    };
    w.traffic(t0, link)?;
    Ok(w.stats)
}

/// The state of a running worker.
struct Worker<'a> {
    cfg: &'a Config,
    plan: Plan,
    slice: Range<u32>,
    conns: Vec<Conn>,
    epoll: Epoll,
    buf: Vec<u8>,
    scanner: Scanner,
    /// Opens compressed frames (`--deflate`).
    opener: crate::scan::Opener,
    accept: String,
    requests: Vec<Vec<u8>>,
    stats: Stats,
    sched: Option<Schedule>,
    /// Next message of the schedule to consider sending.
    next_msg: u32,
    /// Reused epoll event list.
    events: Vec<(u64, u32)>,
    phase: Phase,
    started_ns: u64,
    connected: u64,
    in_flight: u32,
    concurrency: u32,
    next_start: u32,
    retry: VecDeque<(u64, u32)>,
    /// Scratch for building frames.
    json: Vec<u8>,
    frame: Vec<u8>,
    rng: u64,
    /// Stdin bytes (worker processes).
    stdin: Vec<u8>,
    go: Option<u64>,
    last_progress_ns: u64,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC, to read receive timestamps.
    rt_offset: u64,
    /// wss://: what a read got before decryption, and sealed records to send.
    tls_in: Vec<u8>,
    tls_out: Vec<u8>,
    /// Names this run in message ids (`mid`): random per worker.
    run_id: u64,
    /// `--churn`: the next drop step, and the drops owed (fractional).
    next_churn_ns: u64,
    churn_owed: f64,
    /// `--follow-drain`: this worker's clients sent to each node (index
    /// into --url), so that a drained node's clients go to the others
    /// evenly and no node takes more than its share.
    on_node: Vec<u32>,
}

impl<'a> Worker<'a> {
    fn new(cfg: &'a Config, plan: Plan, slice: Range<u32>, workers: u32) -> anyhow::Result<Self> {
        let conns: Vec<Conn> = slice.clone().map(|c| Conn::new(c, plan.room_of(c))).collect();
        let mut on_node = vec![0; cfg.targets.len()];
        for c in &conns {
            on_node[node_of(&plan, c, cfg.targets.len())] += 1;
        }
        let requests = cfg.targets.iter().map(|t| conn::upgrade_request(&t.host, &t.path, cfg.args.deflate)).collect();
        let concurrency = (cfg.args.connect_concurrency / workers).max(1);
        let now = sys::now_ns();
        Ok(Worker {
            cfg,
            plan,
            conns,
            epoll: Epoll::new(1024).context("epoll_create")?,
            buf: vec![0; READ_BUF],
            scanner: Scanner::default(),
            opener: Default::default(),
            accept: tungstenite::handshake::derive_accept_key(conn::WS_KEY.as_bytes()),
            requests,
            stats: Stats::new(0),
            sched: None,
            next_msg: 0,
            events: Vec::with_capacity(1024),
            phase: Phase::Connect,
            started_ns: now,
            connected: 0,
            in_flight: 0,
            concurrency,
            next_start: 0,
            retry: VecDeque::new(),
            json: Vec::with_capacity(256),
            frame: Vec::with_capacity(256),
            rng: now | 1,
            stdin: Vec::new(),
            go: None,
            last_progress_ns: now,
            rt_offset: sys::rt_offset_ns(),
            tls_in: Vec::new(),
            tls_out: Vec::new(),
            run_id: now ^ u64::from(std::process::id()) << 40,
            next_churn_ns: 0,
            churn_owed: 0.0,
            slice,
            on_node,
        })
    }

    fn n(&self) -> u32 {
        self.slice.len() as u32
    }

    // ---- phases --------------------------------------------------------

    fn connect(&mut self, link: &mut dyn Link) -> anyhow::Result<()> {
        self.stats.counters.clients = self.n() as u64;
        let deadline = self.started_ns + secs(self.cfg.args.connect_timeout);
        while self.connected < self.n() as u64 {
            self.start_connects()?;
            self.poll(10_000_000)?;
            let now = sys::now_ns();
            self.tick(now, link);
            if now > deadline {
                bail!(
                    "connect phase timed out after {:.0} s: {} of {} clients logged in",
                    self.cfg.args.connect_timeout,
                    self.connected,
                    self.n()
                );
            }
        }
        self.stats.counters.connected = self.connected;
        self.stats.counters.connect_ns = sys::now_ns() - self.started_ns;
        self.phase = Phase::Ready;
        Ok(())
    }

    fn wait_for_go(&mut self) -> anyhow::Result<u64> {
        // Stdin is a pipe from the coordinator; non-blocking so the loop
        // keeps reading sockets while it waits.
        // SAFETY: fcntl on fd 0 with valid flags.
        unsafe {
            let fl = libc::fcntl(0, libc::F_GETFL);
            libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        self.epoll.add(0, sys::IN, STDIN_TOKEN).context("watching stdin")?;
        loop {
            self.poll(100_000_000)?;
            if let Some(t0) = self.go {
                return Ok(t0);
            }
        }
    }

    fn traffic(&mut self, t0: u64, link: &mut dyn Link) -> anyhow::Result<()> {
        let a = &self.cfg.args;
        let sched = self.cfg.schedule(t0);
        self.stats.last_arrival = vec![0; sched.measured() as usize];
        self.stats.counters.expected_measured = schedule::expected_deliveries(&self.plan, &sched, &self.slice);
        self.sched = Some(sched);
        self.phase = Phase::Run;
        let cpu0 = sys::cpu_ns();
        let drain_end = sched.last_due() + secs(a.drain);
        self.next_churn_ns = t0 + CHURN_STEP_NS;
        loop {
            let now = self.send_due();
            if a.churn > 0.0 {
                self.churn(now, &sched)?;
            }
            if a.churn > 0.0 || a.follow_drain {
                self.start_connects()?;
            }
            if self.next_msg == sched.end {
                self.phase = Phase::Drain;
                let c = &self.stats.counters;
                if now >= drain_end || c.recv_measured >= c.expected_measured {
                    break;
                }
            }
            // Sleep until the next send is due (nanosecond timeout), but wake
            // at least every 50 ms for progress and the drain check.
            let timeout =
                if self.next_msg < sched.end { sched.due(self.next_msg).saturating_sub(now) } else { 10_000_000 };
            self.poll(timeout.min(50_000_000))?;
            self.tick(sys::now_ns(), link);
        }
        let c = &mut self.stats.counters;
        c.cpu_run_ns = sys::cpu_ns() - cpu0;
        c.cpu_total_ns = sys::cpu_ns();
        c.run_ns = sys::now_ns().saturating_sub(t0);
        Ok(())
    }

    /// Progress about once a second.
    fn tick(&mut self, now: u64, link: &mut dyn Link) {
        if now - self.last_progress_ns < 1_000_000_000 {
            return;
        }
        self.last_progress_ns = now;
        self.rt_offset = sys::rt_offset_ns();
        let c = &self.stats.counters;
        link.progress(&Progress {
            phase: self.phase,
            clients: self.n() as u64,
            connected: self.connected,
            retries: c.connect_retries,
            sent: c.sent,
            received: c.recv_total,
            problems: c.seq_gaps + c.seq_backwards + c.error_frames + c.closed + c.unexpected + c.send_failures,
        });
    }

    // ---- connecting ----------------------------------------------------

    fn start_connects(&mut self) -> anyhow::Result<()> {
        let now = sys::now_ns();
        while self.in_flight < self.concurrency {
            let idx = match self.retry.front() {
                Some(&(due, idx)) if due <= now => {
                    self.retry.pop_front();
                    idx
                }
                _ if self.next_start < self.n() => {
                    self.next_start += 1;
                    self.next_start - 1
                }
                _ => break,
            };
            self.in_flight += 1;
            self.start_one(idx)?;
        }
        Ok(())
    }

    fn start_one(&mut self, idx: u32) -> anyhow::Result<()> {
        let c = &mut self.conns[idx as usize];
        c.attempts += 1;
        let target = &self.cfg.targets[node_of(&self.plan, c, self.cfg.targets.len())];
        let from = self.cfg.source_spread.then(|| SocketAddrV4::new(plan::source_addr(c.client), 0));
        match conn::start_connect(target.addr, from, self.cfg.args.rcvbuf) {
            Ok(sock) => {
                let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
                c.sock = Some(sock);
                c.state = State::Connecting;
                self.epoll.add(fd, sys::OUT | sys::IN, idx as u64).context("epoll add")?;
                Ok(())
            }
            Err(e) => self.attempt_failed(idx, format!("connect: {e}"), false),
        }
    }

    /// `--follow-drain`: the client's node drained (or is down): it goes to
    /// the other node with the fewest of this worker's clients. (Each node
    /// of a rolling restart thus ends with about its share: clients spread
    /// by a fixed rule piled up on one node, past a process's descriptors.)
    fn move_client(&mut self, idx: u32) {
        let nodes = self.cfg.targets.len();
        let c = &mut self.conns[idx as usize];
        let from = node_of(&self.plan, c, nodes);
        if nodes < 2 {
            return;
        }
        let to = (0..nodes).filter(|&n| n != from).min_by_key(|&n| self.on_node[n]).unwrap_or(from);
        self.on_node[from] = self.on_node[from].saturating_sub(1);
        self.on_node[to] += 1;
        c.moved_to = Some(to as u16);
    }

    /// A connect, upgrade or login failed: retry with backoff, or give up.
    fn attempt_failed(&mut self, idx: u32, why: String, fatal: bool) -> anyhow::Result<()> {
        let c = &mut self.conns[idx as usize];
        c.reset(State::Idle);
        self.in_flight -= 1;
        let target = &self.cfg.targets[node_of(&self.plan, c, self.cfg.targets.len())];
        if fatal || c.attempts >= MAX_ATTEMPTS {
            bail!(
                "client {} could not join room r{} on {} after {} attempt(s): {why}",
                c.client,
                c.room,
                target.addr,
                c.attempts
            );
        }
        self.stats.counters.connect_retries += 1;
        let attempts = c.attempts as u64;
        if self.cfg.args.follow_drain && c.dropped_ns.is_some() {
            // The node it was sent to is down too: try another.
            self.move_client(idx);
        }
        let due = sys::now_ns() + 100_000_000 * attempts;
        self.retry.push_back((due, idx));
        Ok(())
    }

    // ---- events --------------------------------------------------------

    fn poll(&mut self, timeout_ns: u64) -> anyhow::Result<()> {
        // Take the events out so handlers can borrow self.
        let mut events = std::mem::take(&mut self.events);
        events.clear();
        events.extend(self.epoll.wait(timeout_ns).context("epoll_wait")?);
        for (i, &(token, ev)) in events.iter().enumerate() {
            // A long batch of reads must not hold back the schedule: sends
            // that fall due meanwhile go out between reads.
            if i % SEND_CHECK_EVERY == SEND_CHECK_EVERY - 1 {
                self.send_due();
            }
            if token == STDIN_TOKEN {
                self.read_stdin()?;
                continue;
            }
            self.on_event(token as u32, ev)?;
        }
        self.events = events;
        Ok(())
    }

    /// Sends every message that is due now; returns the time it checked.
    fn send_due(&mut self) -> u64 {
        let now = sys::now_ns();
        let Some(sched) = self.sched else {
            return now;
        };
        while self.next_msg < sched.end {
            let due = sched.due(self.next_msg);
            if due > now {
                break;
            }
            self.send_message(&sched, self.next_msg, due, now);
            self.next_msg += 1;
        }
        now
    }

    fn read_stdin(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 256];
        loop {
            match io::stdin().lock().read(&mut chunk) {
                Ok(0) => bail!("the coordinator went away"),
                Ok(n) => self.stdin.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading stdin"),
            }
        }
        while let Some(nl) = self.stdin.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.stdin.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(t) = line.trim().strip_prefix("go ") {
                self.go = Some(t.parse().context("bad go line")?);
            }
        }
        Ok(())
    }

    fn on_event(&mut self, idx: u32, ev: u32) -> anyhow::Result<()> {
        let state = self.conns[idx as usize].state;
        match state {
            State::Connecting => {
                let fd = self.conns[idx as usize].fd();
                if let Err(e) = sys::socket_error(fd) {
                    return self.attempt_failed(idx, format!("connect: {e}"), false);
                }
                if ev & (sys::OUT | sys::IN) == 0 {
                    return Ok(());
                }
                self.conns[idx as usize].state = State::Upgrading;
                self.epoll.modify(fd, sys::IN, idx as u64).context("epoll mod")?;
                let c = &self.conns[idx as usize];
                let node = node_of(&self.plan, c, self.cfg.targets.len());
                let req = self.requests[node].clone();
                if let (true, Some(cfg)) = (self.cfg.targets[node].tls, &self.cfg.tls) {
                    // The upgrade request waits in rustls until the handshake is done.
                    let host =
                        self.cfg.targets[node].host.rsplit_once(':').map_or(&*self.cfg.targets[node].host, |(h, _)| h);
                    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                        .context("wss:// host name")?;
                    let tls = rustls::ClientConnection::new(cfg.clone(), name).context("TLS client")?;
                    self.conns[idx as usize].tls = Some(Box::new(tls));
                }
                self.write(idx, &req);
                Ok(())
            }
            State::Upgrading | State::LoggingIn | State::Ready => {
                if ev & sys::OUT != 0 {
                    self.flush(idx);
                }
                if ev & !sys::OUT != 0 {
                    self.read(idx)?;
                }
                Ok(())
            }
            State::Idle | State::Closed => Ok(()),
        }
    }

    /// Reads what is there, then scans every whole frame in it.
    fn read(&mut self, idx: u32) -> anyhow::Result<()> {
        loop {
            let c = &mut self.conns[idx as usize];
            if c.sock.is_none() {
                return Ok(());
            }
            let upgrading = c.state == State::Upgrading;
            let start = if upgrading {
                0
            } else {
                match c.inbox.restore(&mut self.buf) {
                    Ok(n) => n,
                    Err(e) => return self.gone(idx, None, e.to_string()),
                }
            };
            let (mut n, stamp) = match sys::recv_stamped(c.fd(), &mut self.buf[start..]) {
                Ok((0, _)) => return self.gone(idx, None, "connection closed without a close frame".into()),
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.gone(idx, None, format!("read: {e}")),
            };
            // A full read means more may wait (see below), whatever it decrypts to.
            let raw_full = start + n == self.buf.len();
            if c.tls.is_some() {
                match self.decrypt(idx, start, n) {
                    Ok(p) => n = p,
                    Err(e) => return self.gone(idx, None, format!("TLS: {e}")),
                }
            }
            let c = &mut self.conns[idx as usize];
            if self.phase >= Phase::Run {
                self.stats.counters.recv_bytes += n as u64;
            }
            let filled = start + n;
            if upgrading {
                c.head.extend_from_slice(&self.buf[..n]);
                match conn::parse_upgrade(&c.head, &self.accept) {
                    Upgrade::Incomplete => continue,
                    Upgrade::Refused(why) => {
                        // A node at its cap; with --follow-drain another node is tried.
                        let fatal = why.contains(" 503") && !self.cfg.args.follow_drain;
                        return self.attempt_failed(idx, format!("upgrade refused: {why}"), fatal);
                    }
                    Upgrade::Done(off) => {
                        let rest = c.head.split_off(off);
                        c.head = Vec::new();
                        c.state = State::LoggingIn;
                        let since = c.dropped_ns.and_then(|_| c.seq.since());
                        let login = scan::login_json(c.client, c.room, since);
                        self.send_text(idx, login.as_bytes());
                        if rest.is_empty() {
                            continue;
                        }
                        self.buf[..rest.len()].copy_from_slice(&rest);
                        self.scan_frames(idx, rest.len(), stamp)?;
                        continue;
                    }
                }
            }
            self.scan_frames(idx, filled, stamp)?;
            if !raw_full {
                // Short read: TCP gave all it had, so the socket is drained;
                // new data raises a new edge.
                return Ok(());
            }
        }
    }

    /// Scans the frames in `buf[..filled]` for connection `idx`.
    /// `stamp` is the kernel's receive timestamp of the read (CLOCK_REALTIME
    /// ns, 0 if none).
    fn scan_frames(&mut self, idx: u32, filled: usize, stamp: u64) -> anyhow::Result<()> {
        let now = sys::now_ns();
        let arrival = if stamp > 0 { stamp.saturating_sub(self.rt_offset).min(now) } else { now };
        let churning = self.cfg.args.churn > 0.0 || self.cfg.args.follow_drain;
        let editing = self.cfg.args.edits > 0.0;
        let Worker { conns, buf, scanner, opener, stats, sched, plan, .. } = self;
        let c = &mut conns[idx as usize];
        let mut ev = FrameEvents::default();
        let r = c.inbox.take(buf, filled, opener, |op, p| match op {
            1 => match scanner.classify(p) {
                Kind::Message(d) => {
                    // A resume replays the member's own messages too (live,
                    // it gets none: no echo): in its room's sequence, but
                    // not deliveries to it.
                    let own = churning && schedule::route(plan, d.id).1 == c.client;
                    let verdict = if own { c.seq.observe_own(d.seq, d.epoch) } else { c.seq.observe(d.seq, d.epoch) };
                    match verdict {
                        SeqVerdict::InOrder => {}
                        verdict => seq_problem(stats, c.client, c.room, verdict),
                    }
                    if !own {
                        record(stats, sched.as_ref(), now, arrival, d);
                    }
                    c.last_message = Some(d.seq);
                    if editing {
                        ev.own.push((schedule::route(plan, d.id).1, d.seq));
                    }
                }
                Kind::Login => ev.login = true,
                Kind::NotRecovered => {
                    ev.login = true;
                    stats.counters.not_recovered += 1;
                    let client = c.client;
                    stats.problem(|| format!("client {client}: its resume was not recovered"));
                }
                Kind::Dup => stats.counters.dup_answers += 1,
                Kind::History => stats.counters.history_answered += 1,
                Kind::Private => stats.counters.private_received += 1,
                Kind::Typing => {
                    stats.counters.events_received += 1;
                    stats.counters.recv_total += 1;
                }
                Kind::Event { at, epoch } => {
                    // In the room's sequence like a message; fanned out like
                    // one too (counted with the deliveries for CPU figures).
                    match c.seq.observe(at, epoch) {
                        SeqVerdict::InOrder => {}
                        verdict => seq_problem(stats, c.client, c.room, verdict),
                    }
                    stats.counters.events_received += 1;
                    stats.counters.recv_total += 1;
                }
                Kind::Other => {}
                Kind::Error if memchr::memmem::find(p, b"tid is not in the room").is_some() => {
                    // --private to a member away (--churn): refused, not lost.
                    stats.counters.private_refused += 1;
                }
                Kind::Error => {
                    stats.counters.error_frames += 1;
                    if p.windows(8).any(|w| w == b"too fast") {
                        stats.counters.refused += 1;
                        // Its deliveries, to every other member of the room
                        // (in any worker), will not come: not expected.
                        if let (Some(s), Some(m)) = (sched.as_ref(), c.last_sent)
                            && s.is_measured(m)
                        {
                            stats.counters.refused_deliveries += plan.members(c.room).len() as u64 - 1;
                        }
                    }
                    let client = c.client;
                    stats.problem(|| format!("client {client}: error frame {}", String::from_utf8_lossy(p)));
                    ev.error = true;
                }
                Kind::Malformed => {
                    stats.counters.unexpected += 1;
                    let client = c.client;
                    stats.problem(|| {
                        format!("client {client}: unexpected frame {}", String::from_utf8_lossy(&p[..p.len().min(200)]))
                    });
                }
            },
            8 => {
                ev.close = Some(if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 });
                ev.close_reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
            }
            9 => ev.pings.push(p.to_vec()),
            10 => {}
            _ => {
                stats.counters.unexpected += 1;
                stats.problem(|| format!("unexpected opcode {op}"));
            }
        });
        stats.counters.deflated_frames += std::mem::take(&mut opener.deflated);
        if let Err(e) = r {
            self.stats.counters.unexpected += 1;
            return self.gone(idx, None, e.to_string());
        }
        for &(sender, seq) in &ev.own {
            if self.slice.contains(&sender) {
                let own = &mut self.conns[(sender - self.slice.start) as usize].own_last;
                *own = Some(own.map_or(seq, |s| s.max(seq)));
            }
        }
        for p in ev.pings {
            let mask = self.mask();
            self.frame.clear();
            cchat::ws::client_frame(&mut self.frame, 10, &p, mask);
            let f = std::mem::take(&mut self.frame);
            self.write(idx, &f);
            self.frame = f;
        }
        let state = self.conns[idx as usize].state;
        if state == State::LoggingIn {
            if ev.error {
                return self.attempt_failed(idx, "login refused".into(), true);
            }
            if ev.login {
                self.conns[idx as usize].state = State::Ready;
                self.in_flight -= 1;
                self.connected += 1;
                if let Some(dropped) = self.conns[idx as usize].dropped_ns.take() {
                    self.resumed(idx, dropped, now);
                }
            }
        }
        if let Some(code) = ev.close {
            let why = format!("closed by the server with {code} {}", ev.close_reason);
            return self.gone(idx, Some(code), why);
        }
        Ok(())
    }

    /// The connection ended (EOF, reset, close frame, unreadable stream).
    fn gone(&mut self, idx: u32, code: Option<u16>, why: String) -> anyhow::Result<()> {
        let c = &mut self.conns[idx as usize];
        match c.state {
            State::Connecting | State::Upgrading | State::LoggingIn => self.attempt_failed(idx, why, false),
            State::Ready if code == Some(1012) && self.cfg.args.follow_drain => {
                // A node drains: back after its hint, on the next node.
                let hint = why.split("retry in ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok());
                let now = sys::now_ns();
                c.reset(State::Idle);
                c.dropped_ns = Some(now);
                c.attempts = 0;
                self.connected -= 1;
                self.stats.counters.drain_reconnects += 1;
                self.retry.push_back((now + hint.unwrap_or(1000u64) * 1_000_000, idx));
                self.move_client(idx);
                Ok(())
            }
            State::Ready => {
                let (client, room) = (c.client, c.room);
                c.reset(State::Closed);
                self.stats.counters.closed += 1;
                *self.stats.close_codes.entry(code.unwrap_or(0)).or_default() += 1;
                self.stats.problem(|| format!("client {client} (room r{room}): {why}"));
                Ok(())
            }
            State::Idle | State::Closed => Ok(()),
        }
    }

    // ---- writing -------------------------------------------------------

    fn mask(&mut self) -> [u8; 4] {
        // xorshift64: masks only need to vary, not to be secret, here.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng as u32).to_ne_bytes()
    }

    fn send_text(&mut self, idx: u32, payload: &[u8]) {
        let mask = self.mask();
        let mut f = std::mem::take(&mut self.frame);
        f.clear();
        conn::text_frame(&mut f, payload, mask);
        self.write(idx, &f);
        self.frame = f;
    }

    fn send_message(&mut self, sched: &Schedule, m: u32, due: u64, now: u64) {
        let (room, sender) = schedule::route(&self.plan, m);
        if !self.slice.contains(&sender) {
            return;
        }
        let idx = sender - self.slice.start;
        let c = &mut self.conns[idx as usize];
        if c.dropped_ns.is_some() {
            // Reconnecting (--churn): sent once it is back.
            c.waiting.push((m, due));
            c.seq.sent_own();
            self.stats.counters.queued_while_down += 1;
            return;
        }
        if self.conns[idx as usize].state != State::Ready {
            self.stats.counters.send_failures += 1;
            self.stats.problem(|| format!("message {m}: sender {sender} (room r{room}) is not connected"));
            return;
        }
        self.send_frame(idx, room, m, due);
        self.conns[idx as usize].seq.sent_own();
        self.sent(sched, m, due, now);
        // --reactions: this fraction of messages is followed by a reaction.
        let a = &self.cfg.args;
        if a.reactions > 0.0 && (m as u64 * 2_654_435_761 % 1_000_000) < (a.reactions * 1e6) as u64 {
            self.send_reaction(idx);
        }
        // --edits: this fraction by an edit of the sender's own last message.
        let a = &self.cfg.args;
        if a.edits > 0.0 && (m as u64 * 2_246_822_519 % 1_000_003) < (a.edits * 1_000_003.0) as u64 {
            self.send_edit(idx);
        }
        // --private: this fraction by a private message to the next member.
        let a = &self.cfg.args;
        if a.private > 0.0 && (m as u64 * 1_103_515_245 % 1_000_037) < (a.private * 1_000_037.0) as u64 {
            let members = self.plan.members(room);
            if members.len() > 1 {
                let to = members.start + (sender - members.start + 1) % members.len() as u32;
                let j = format!(
                    r#"{{"cmd":"message","type":"text","rid":"r{room}","tid":"u{to}","msg":"private from u{sender}"}}"#
                );
                self.send_text(idx, j.as_bytes());
                self.stats.counters.private_sent += 1;
            }
        }
        // --history-reads: this fraction by a page of the room's history.
        let a = &self.cfg.args;
        if a.history_reads > 0.0 && (m as u64 * 3_266_489_917 % 1_000_033) < (a.history_reads * 1_000_033.0) as u64 {
            let j = format!(r#"{{"cmd":"getHistory","rid":"r{room}","limit":50}}"#);
            self.send_text(idx, j.as_bytes());
            self.stats.counters.history_sent += 1;
        }
    }

    /// An edit from connection `idx` of its own last message whose seq it
    /// learnt (none yet: nothing sent).
    fn send_edit(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        let Some(seq) = c.own_last else { return };
        let j = format!(r#"{{"cmd":"edit","rid":"r{}","seq":{seq},"msg":"edited by loadgen"}}"#, c.room);
        self.send_text(idx, j.as_bytes());
        self.stats.counters.edits_sent += 1;
    }

    /// A reaction from connection `idx` to the last room message it saw,
    /// on and off in turn (so no message passes the reaction cap).
    fn send_reaction(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        let Some(seq) = c.last_message else { return };
        c.reacted = !c.reacted;
        let j = format!(r#"{{"cmd":"react","rid":"r{}","seq":{seq},"emoji":"+1","on":{}}}"#, c.room, c.reacted);
        self.send_text(idx, j.as_bytes());
        self.stats.counters.reactions_sent += 1;
    }

    /// Writes message `m` of `room` (due at `due`) on connection `idx`.
    fn send_frame(&mut self, idx: u32, room: u32, m: u32, due: u64) {
        let a = &self.cfg.args;
        let mids = (a.mids || a.churn > 0.0 || a.follow_drain).then_some(self.run_id);
        // --typing: this fraction of messages is preceded by a typing.
        let typing = self.cfg.args.typing;
        if typing > 0.0 && (m as u64 * 40_503 % 1_000_000) < (typing * 1e6) as u64 {
            let t = format!(r#"{{"cmd":"typing","rid":"r{room}"}}"#);
            self.send_text(idx, t.as_bytes());
            self.stats.counters.typing_sent += 1;
        }
        let mut j = std::mem::take(&mut self.json);
        j.clear();
        scan::message_json(&mut j, room, due, m, self.cfg.payload, mids, self.cfg.args.text);
        self.send_text(idx, &j);
        self.json = j;
        let c = &mut self.conns[idx as usize];
        c.last_sent = Some(m);
        if self.cfg.args.churn > 0.0 || self.cfg.args.follow_drain {
            let now = sys::now_ns();
            while c.recent.front().is_some_and(|r| r.2 + RESEND_WINDOW_NS < now) {
                c.recent.pop_front();
            }
            c.recent.push_back((m, due, now));
        }
    }

    /// Counts message `m` as sent now.
    fn sent(&mut self, sched: &Schedule, m: u32, due: u64, now: u64) {
        let c = &mut self.stats.counters;
        c.sent += 1;
        if sched.is_measured(m) {
            c.sent_measured += 1;
            self.stats.send_lag.saturating_record(now.saturating_sub(due) / 1000);
        }
    }

    // ---- churn ---------------------------------------------------------

    /// `--churn`: drops the connections owed by now (random ready ones),
    /// each to log in again at once, resuming its room.
    fn churn(&mut self, now: u64, sched: &Schedule) -> anyhow::Result<()> {
        // Only while sending: the drain lets every member catch up.
        if now < self.next_churn_ns || self.next_msg >= sched.end {
            return Ok(());
        }
        self.next_churn_ns += CHURN_STEP_NS;
        self.churn_owed += self.cfg.args.churn * self.n() as f64 * (CHURN_STEP_NS as f64 / 1e9);
        let mut tries = 0;
        while self.churn_owed >= 1.0 && tries < 4 * self.n() {
            tries += 1;
            let idx = (self.next_rand() % self.n() as u64) as u32;
            let c = &mut self.conns[idx as usize];
            if c.state != State::Ready || c.dropped_ns.is_some() {
                continue;
            }
            self.churn_owed -= 1.0;
            // As a network drop: the socket goes, no close frame.
            c.reset(State::Idle);
            c.dropped_ns = Some(now);
            c.attempts = 0;
            self.connected -= 1;
            self.stats.counters.drops += 1;
            self.retry.push_back((now + self.cfg.args.churn_away_ms * 1_000_000, idx));
        }
        Ok(())
    }

    /// A dropped client is back (its resumed login acknowledged; what it
    /// missed follows): sends what fell due meanwhile, and again what it
    /// sent just before the drop, under the same ids.
    fn resumed(&mut self, idx: u32, dropped: u64, now: u64) {
        self.stats.resume.saturating_record(now.saturating_sub(dropped) / 1000);
        self.stats.counters.resumed += 1;
        let sched = self.sched.expect("resumes happen during traffic");
        let c = &mut self.conns[idx as usize];
        let room = c.room;
        let again: Vec<(u32, u64)> =
            c.recent.iter().filter(|r| r.2 + RESEND_WINDOW_NS >= dropped).map(|r| (r.0, r.1)).collect();
        let waiting = std::mem::take(&mut c.waiting);
        self.stats.counters.resent += again.len() as u64;
        for (m, due) in again {
            self.send_frame(idx, room, m, due);
        }
        for (m, due) in waiting {
            self.send_frame(idx, room, m, due);
            self.sent(&sched, m, due, now);
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// wss://: decrypts the `n` bytes read at `buf[start..]` in place, sends
    /// what the TLS state answers (the handshake), and returns how many
    /// plaintext bytes now follow `start`.
    fn decrypt(&mut self, idx: u32, start: usize, n: usize) -> io::Result<usize> {
        use std::io::Read as _;
        self.tls_in.clear();
        self.tls_in.extend_from_slice(&self.buf[start..start + n]);
        let tls = self.conns[idx as usize].tls.as_deref_mut().expect("a TLS connection");
        let mut rd = &self.tls_in[..];
        let mut got = 0;
        while !rd.is_empty() {
            if tls.read_tls(&mut rd)? == 0 {
                break;
            }
            tls.process_new_packets().map_err(io::Error::other)?;
            loop {
                match tls.reader().read(&mut self.buf[start + got..]) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        self.send_sealed(idx);
        Ok(got)
    }

    /// wss://: sends the records the connection's TLS state holds.
    fn send_sealed(&mut self, idx: u32) {
        let Some(tls) = self.conns[idx as usize].tls.as_deref_mut() else { return };
        let mut out = std::mem::take(&mut self.tls_out);
        out.clear();
        while tls.wants_write() {
            if tls.write_tls(&mut out).is_err() {
                break;
            }
        }
        if !out.is_empty() {
            self.write_raw(idx, &out);
        }
        self.tls_out = out;
    }

    /// Sends now what the socket takes (sealed into TLS records first on
    /// wss://); queues the rest for writability.
    fn write(&mut self, idx: u32, bytes: &[u8]) {
        if let Some(tls) = self.conns[idx as usize].tls.as_deref_mut() {
            if std::io::Write::write_all(&mut tls.writer(), bytes).is_ok() {
                self.send_sealed(idx);
            }
            return;
        }
        self.write_raw(idx, bytes);
    }

    fn write_raw(&mut self, idx: u32, bytes: &[u8]) {
        let c = &mut self.conns[idx as usize];
        if c.sock.is_none() {
            return;
        }
        if !c.out.is_empty() {
            c.out.extend_from_slice(bytes);
            return;
        }
        match sys::send(c.fd(), bytes) {
            Ok(n) if n == bytes.len() => {}
            Ok(n) => self.queue_out(idx, &bytes[n..]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.queue_out(idx, bytes),
            Err(_) => {
                // The read side reports the reset; drop the output.
            }
        }
    }

    fn queue_out(&mut self, idx: u32, rest: &[u8]) {
        let c = &mut self.conns[idx as usize];
        c.out.extend_from_slice(rest);
        let _ = self.epoll.modify(c.fd(), sys::IN | sys::OUT, idx as u64);
    }

    fn flush(&mut self, idx: u32) {
        let c = &mut self.conns[idx as usize];
        if c.sock.is_none() || c.out.is_empty() {
            return;
        }
        match sys::send(c.fd(), &c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => c.out.clear(),
        }
        if c.out.is_empty() {
            c.out = Vec::new();
            let _ = self.epoll.modify(c.fd(), sys::IN, idx as u64);
        }
    }
}

/// What the frames of one read asked for besides deliveries.
#[derive(Default)]
struct FrameEvents {
    /// `--edits`: (client, seq) of messages whose sender is a client of
    /// this worker (it learns its message's seq from them).
    own: Vec<(u32, u64)>,
    login: bool,
    error: bool,
    close: Option<u16>,
    close_reason: String,
    pings: Vec<Vec<u8>>,
}

/// Counts a sequence problem.
#[cold]
fn seq_problem(stats: &mut Stats, client: u32, room: u32, verdict: SeqVerdict) {
    let c = &mut stats.counters;
    match verdict {
        SeqVerdict::InOrder => {}
        SeqVerdict::NewEpoch => c.epoch_changes += 1,
        SeqVerdict::Gap { from, to, missing } => {
            c.seq_gaps += 1;
            c.seq_skipped += missing;
            stats.problem(|| {
                format!("client {client} (room r{room}): seq jumped from {from} to {to} ({missing} missing)")
            });
        }
        SeqVerdict::Backwards { from, to } => {
            c.seq_backwards += 1;
            stats.problem(|| format!("client {client} (room r{room}): seq went from {from} to {to}"));
        }
    }
}

/// Times one delivery read at `now` that reached the socket at `arrival`.
/// The hot path of loadgen.
#[inline]
fn record(stats: &mut Stats, sched: Option<&Schedule>, now: u64, arrival: u64, d: scan::Delivery) {
    let Some(s) = sched else {
        stats.counters.stray += 1;
        return;
    };
    stats.counters.recv_total += 1;
    if s.is_measured(d.id) {
        let us = now.saturating_sub(d.due_ns) / 1000;
        stats.counters.recv_measured += 1;
        stats.latency.saturating_record(us);
        stats.socket_latency.saturating_record(arrival.saturating_sub(d.due_ns) / 1000);
        let slot = &mut stats.last_arrival[(d.id - s.first_measured) as usize];
        let v = (us.min(u32::MAX as u64 - 1) + 1) as u32;
        if v > *slot {
            *slot = v;
        }
    } else if d.id >= s.end {
        stats.counters.stray += 1;
    }
}

fn secs(s: f64) -> u64 {
    (s * 1e9) as u64
}

/// The node (index into --url) a client connects to: its room's, or after a
/// drain (`--follow-drain`) the one it was moved to.
fn node_of(plan: &Plan, c: &Conn, nodes: usize) -> usize {
    match c.moved_to {
        Some(n) => n as usize,
        None => plan.node_of(c.client, c.room) % nodes.max(1),
    }
}
