//! Distributed runs: `loadgen agent --listen ADDR --agent-secret S` on each
//! client machine, and a coordinator (`loadgen --agents A,B … --agent-secret S`)
//! that gives each agent a share of the worker processes, starts every
//! schedule at one instant (each agent's clock offset measured and
//! reported) and merges what they measured exactly, as for local workers.
//!
//! # The protocol
//!
//! JSON lines over TCP. Both sides prove they hold the secret before
//! anything else: the agent sends a random nonce, the coordinator answers
//! with its own and HMAC-SHA256(secret, "coordinator" ‖ agent's ‖ its
//! nonce), the agent checks it and answers HMAC(secret, "agent" ‖ its ‖
//! the coordinator's nonce). Every later line is `MAC JSON`, the MAC an
//! HMAC under a key derived from both nonces over a per-direction counter
//! and the JSON, so a line altered, dropped, repeated or replayed from
//! another session is refused and the run stops.
//!
//! Coordinator → agent: `job` (the flags, the worker indices and count),
//! `ping` (clock sync), `go` (the instant, in the agent's clock).
//! Agent → coordinator: `pong`, every worker's line (`line`), a worker's
//! end (`exit`). A lost agent fails the run (its workers' reports are
//! missing); an agent whose coordinator goes away kills its workers.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::sys;

/// What a coordinator sends an agent.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ToAgent {
    /// Run workers `indices` of `count` with `args` (the user's flags).
    Job { args: Vec<String>, indices: Vec<u32>, count: u32 },
    /// Clock sync: the coordinator's CLOCK_MONOTONIC when sent.
    Ping { t: u64 },
    /// Start every worker's schedule at `t0` (this agent's clock).
    Go { t0: u64 },
}

/// What an agent sends its coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FromAgent {
    /// The ping's `t`, and the agent's clock when it answered.
    Pong { t: u64, at: u64 },
    /// A line worker `w` wrote (progress, ready, report).
    Line { w: u32, line: String },
    /// Worker `w` ended with `code` (None: killed by a signal).
    Exit { w: u32, code: Option<i32> },
}

/// One side of an authenticated session: MACs lines both ways.
struct Session {
    key: hmac::Key,
    sent: u64,
    received: u64,
    /// "c" for the coordinator's direction, "a" for the agent's.
    me: &'static str,
    them: &'static str,
}

impl Session {
    fn new(secret: &str, agent_nonce: &str, coord_nonce: &str, me: &'static str) -> Session {
        let k = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        let derived = hmac::sign(&k, format!("session\n{agent_nonce}\n{coord_nonce}").as_bytes());
        let them = if me == "c" { "a" } else { "c" };
        Session { key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()), sent: 0, received: 0, me, them }
    }

    fn seal(&mut self, json: &str) -> String {
        let tag = hmac::sign(&self.key, format!("{}\n{}\n{json}", self.me, self.sent).as_bytes());
        self.sent += 1;
        format!("{} {json}\n", hex(tag.as_ref()))
    }

    fn open<'a>(&mut self, line: &'a str) -> anyhow::Result<&'a str> {
        let (mac, json) = line.split_once(' ').context("a line without its MAC")?;
        let mac = unhex(mac).context("a malformed MAC")?;
        hmac::verify(&self.key, format!("{}\n{}\n{json}", self.them, self.received).as_bytes(), &mac)
            .map_err(|_| anyhow::anyhow!("a line whose MAC is wrong (altered, repeated or out of order)"))?;
        self.received += 1;
        Ok(json)
    }
}

fn proof(secret: &str, who: &str, a: &str, b: &str) -> String {
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex(hmac::sign(&k, format!("{who}\n{a}\n{b}").as_bytes()).as_ref())
}

fn check_proof(secret: &str, who: &str, a: &str, b: &str, got: &str) -> bool {
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    unhex(got).is_some_and(|m| hmac::verify(&k, format!("{who}\n{a}\n{b}").as_bytes(), &m).is_ok())
}

fn nonce() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(hex(&b))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn read_line<R: BufRead>(r: &mut R) -> anyhow::Result<String> {
    let mut line = String::new();
    // A peer that sends no newline cannot grow this without bound.
    let n = <&mut R as std::io::Read>::take(r, 16 << 20).read_line(&mut line)?;
    if n == 0 {
        bail!("the connection closed");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

// ---------------------------------------------------------------------------
// The agent

/// `loadgen agent`: serves coordinators one at a time, forever.
pub fn serve(listen: &str, secret: &str) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    eprintln!("loadgen agent: listening on {}", l.local_addr()?);
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        match serve_one(s, secret) {
            Ok(()) => eprintln!("loadgen agent: run for {peer} done"),
            Err(e) => eprintln!("loadgen agent: run for {peer} ended: {e:#}"),
        }
    }
    Ok(())
}

/// The agent's workers (by index), killed on drop.
struct Workers(Arc<Mutex<Vec<(u32, Child)>>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, c) in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn serve_one(s: TcpStream, secret: &str) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    // Until the coordinator has proved itself: a short leash.
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut w = s.try_clone()?;
    let mine = nonce()?;
    writeln!(w, "{}", serde_json::json!({ "hello": mine }))?;
    let v: serde_json::Value = serde_json::from_str(&read_line(&mut r)?).context("the coordinator's answer")?;
    let (theirs, their_proof) = (v["nonce"].as_str().unwrap_or(""), v["proof"].as_str().unwrap_or(""));
    if theirs.len() != 32 || !check_proof(secret, "coordinator", &mine, theirs, their_proof) {
        writeln!(w, "{}", serde_json::json!({ "error": "wrong --agent-secret" }))?;
        bail!("a coordinator without the secret");
    }
    writeln!(w, "{}", serde_json::json!({ "proof": proof(secret, "agent", &mine, theirs) }))?;
    s.set_read_timeout(None)?;
    let mut sess = Session::new(secret, &mine, theirs, "a");
    let out = Arc::new(Mutex::new((w, Session::new(secret, &mine, theirs, "a"))));
    let send = move |m: &FromAgent| -> bool {
        let json = serde_json::to_string(m).expect("serializable");
        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
        let line = o.1.seal(&json);
        o.0.write_all(line.as_bytes()).is_ok()
    };
    let children = Workers(Arc::new(Mutex::new(Vec::new())));
    let mut stdins = Vec::new();
    loop {
        let line = match read_line(&mut r) {
            Ok(l) => l,
            // The coordinator is done (or gone): its workers go with it.
            Err(_) if !stdins.is_empty() => return Ok(()),
            Err(e) => return Err(e),
        };
        let msg: ToAgent = serde_json::from_str(sess.open(&line)?).context("a coordinator line")?;
        match msg {
            ToAgent::Ping { t } => {
                send(&FromAgent::Pong { t, at: sys::now_ns() });
            }
            ToAgent::Job { args, indices, count } => {
                let exe = std::env::current_exe().context("finding loadgen's own binary")?;
                for i in indices {
                    let mut cmd = Command::new(&exe);
                    // SAFETY: prctl is async-signal-safe; nothing else runs
                    // between fork and exec here. A worker dies with its
                    // agent (killed or crashed) rather than run on alone.
                    unsafe {
                        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let mut child = cmd
                        .args(&args)
                        .args(["--worker-index", &i.to_string(), "--worker-count", &count.to_string()])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::inherit())
                        .spawn()
                        .with_context(|| format!("starting worker {i}"))?;
                    let stdout = child.stdout.take().expect("piped");
                    stdins.push(child.stdin.take().expect("piped"));
                    children.0.lock().unwrap_or_else(|e| e.into_inner()).push((i, child));
                    let send = send.clone();
                    let kids = children.0.clone();
                    std::thread::spawn(move || {
                        for line in BufReader::new(stdout).lines() {
                            let Ok(line) = line else { break };
                            if !send(&FromAgent::Line { w: i, line }) {
                                return;
                            }
                        }
                        // Its end, once it exited.
                        let code = loop {
                            let mut k = kids.lock().unwrap_or_else(|e| e.into_inner());
                            match k.iter_mut().find(|(w, _)| *w == i).map(|(_, c)| c.try_wait()) {
                                Some(Ok(None)) => {}
                                Some(Ok(Some(st))) => break st.code(),
                                _ => break None,
                            }
                            drop(k);
                            std::thread::sleep(Duration::from_millis(20));
                        };
                        send(&FromAgent::Exit { w: i, code });
                    });
                }
            }
            ToAgent::Go { t0 } => {
                for stdin in &mut stdins {
                    writeln!(stdin, "go {t0}").and_then(|_| stdin.flush()).context("telling a worker to go")?;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The coordinator's side

/// An agent as the coordinator sees it.
pub struct AgentLink {
    /// `host:port` as given.
    pub addr: String,
    w: TcpStream,
    sess: Session,
    /// The agent's clock minus the coordinator's (ns), and the round trip
    /// of the ping it was measured with.
    pub offset_ns: i64,
    /// Round trip of that ping (ns).
    pub rtt_ns: u64,
}

impl std::fmt::Debug for AgentLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentLink({}, offset {} ns, rtt {} ns)", self.addr, self.offset_ns, self.rtt_ns)
    }
}

/// What the coordinator hears from its agents: (worker, line) or a
/// worker's end (None), or an agent's failure.
#[derive(Debug)]
pub enum Heard {
    /// A worker's line.
    Line(usize, String),
    /// A worker exited.
    Exit(usize),
    /// An agent failed (lost, or a line that did not verify).
    Failed(String),
}

impl AgentLink {
    /// Connects, proves both sides hold the secret, measures the clock
    /// offset, and starts the workers `indices` of `count`; its lines go to
    /// `tx` from a thread of its own.
    pub fn start(
        addr: &str,
        secret: &str,
        args: Vec<String>,
        indices: Vec<u32>,
        count: u32,
        tx: mpsc::Sender<Heard>,
    ) -> anyhow::Result<AgentLink> {
        let s = TcpStream::connect(addr).with_context(|| format!("agent {addr}: cannot connect"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s.try_clone()?;
        let v: serde_json::Value =
            serde_json::from_str(&read_line(&mut r).with_context(|| format!("agent {addr}: no hello"))?)
                .with_context(|| format!("agent {addr}: not a loadgen agent"))?;
        let theirs = v["hello"]
            .as_str()
            .filter(|n| n.len() == 32)
            .with_context(|| format!("agent {addr}: not a loadgen agent"))?
            .to_string();
        let mine = nonce()?;
        writeln!(w, "{}", serde_json::json!({ "nonce": mine, "proof": proof(secret, "coordinator", &theirs, &mine) }))?;
        let v: serde_json::Value =
            serde_json::from_str(&read_line(&mut r).with_context(|| format!("agent {addr}: refused us"))?)
                .with_context(|| format!("agent {addr}: a garbled answer"))?;
        if let Some(e) = v["error"].as_str() {
            bail!("agent {addr} refused the run: {e}");
        }
        if !check_proof(secret, "agent", &theirs, &mine, v["proof"].as_str().unwrap_or("")) {
            bail!("agent {addr} does not hold --agent-secret (its proof is wrong)");
        }
        let mut link = AgentLink {
            addr: addr.to_string(),
            w,
            sess: Session::new(secret, &theirs, &mine, "c"),
            offset_ns: 0,
            rtt_ns: u64::MAX,
        };
        let mut rsess = Session::new(secret, &theirs, &mine, "c");
        // Clock offset: the ping with the shortest round trip of a few.
        for _ in 0..8 {
            let t1 = sys::now_ns();
            link.send(&ToAgent::Ping { t: t1 })?;
            let line = read_line(&mut r).with_context(|| format!("agent {addr}: no answer to a ping"))?;
            let FromAgent::Pong { t, at } = serde_json::from_str(rsess.open(&line)?)? else {
                bail!("agent {addr}: a line out of turn");
            };
            let t2 = sys::now_ns();
            if t == t1 && t2 - t1 < link.rtt_ns {
                link.rtt_ns = t2 - t1;
                link.offset_ns = at as i64 - (t1 + (t2 - t1) / 2) as i64;
            }
        }
        link.send(&ToAgent::Job { args, indices, count })?;
        s.set_read_timeout(None)?;
        let a = addr.to_string();
        std::thread::spawn(move || {
            loop {
                let heard = read_line(&mut r)
                    .map_err(|e| format!("agent {a} went away mid-run ({e})"))
                    .and_then(|line| rsess.open(&line).map(str::to_owned).map_err(|e| format!("agent {a}: {e}")))
                    .and_then(|json| serde_json::from_str::<FromAgent>(&json).map_err(|e| format!("agent {a}: {e}")));
                let h = match heard {
                    Ok(FromAgent::Line { w, line }) => Heard::Line(w as usize, line),
                    Ok(FromAgent::Exit { w, .. }) => Heard::Exit(w as usize),
                    Ok(FromAgent::Pong { .. }) => continue,
                    Err(e) => {
                        let _ = tx.send(Heard::Failed(e));
                        return;
                    }
                };
                if tx.send(h).is_err() {
                    return;
                }
            }
        });
        Ok(link)
    }

    fn send(&mut self, m: &ToAgent) -> anyhow::Result<()> {
        let line = self.sess.seal(&serde_json::to_string(m)?);
        self.w.write_all(line.as_bytes()).with_context(|| format!("agent {}: lost", self.addr))
    }

    /// Starts the workers' schedules at the coordinator's instant `t0`.
    pub fn go(&mut self, t0: u64) -> anyhow::Result<()> {
        let t = (t0 as i64 + self.offset_ns).max(0) as u64;
        self.send(&ToAgent::Go { t0: t })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_verify_once_in_order_and_only_unaltered() {
        let mut c = Session::new("s3cret", "aa", "bb", "c");
        let mut a = Session::new("s3cret", "aa", "bb", "a");
        let l1 = c.seal("{\"x\":1}");
        let l2 = c.seal("{\"x\":2}");
        assert!(a.open(l2.trim_end()).is_err(), "out of order");
        let mut a = Session::new("s3cret", "aa", "bb", "a");
        assert_eq!(a.open(l1.trim_end()).unwrap(), "{\"x\":1}");
        assert!(a.open(l1.trim_end()).is_err(), "repeated");
        let forged = l2.replace("\"x\":2", "\"x\":3");
        assert!(a.open(forged.trim_end()).is_err(), "altered");
        assert_eq!(a.open(l2.trim_end()).unwrap(), "{\"x\":2}");
        // Another session's key, or the other direction's, does not verify.
        let mut other = Session::new("s3cret", "aa", "cc", "a");
        assert!(other.open(c.seal("{}").trim_end()).is_err());
        let mut back = Session::new("s3cret", "aa", "bb", "c");
        assert!(back.open(c.seal("{}").trim_end()).is_err());
    }

    #[test]
    fn proofs_need_the_secret() {
        let p = proof("s", "agent", "n1", "n2");
        assert!(check_proof("s", "agent", "n1", "n2", &p));
        assert!(!check_proof("t", "agent", "n1", "n2", &p));
        assert!(!check_proof("s", "coordinator", "n1", "n2", &p));
        assert!(!check_proof("s", "agent", "n1", "n2", "zz"));
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
    }
}
