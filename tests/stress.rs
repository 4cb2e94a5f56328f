//! Randomized stress of the cross-shard paths, seeded and bounded: actors on
//! both shards join, leave, post, whisper, ask for rosters and history,
//! burst-join, and reconnect, all at once, with the cross-shard queues forced
//! tiny so that back-pressure is the normal case. After every round: every
//! open connection was served, every command got its reply or an error, no
//! member saw a gap or a duplicate in a room's `seq`, and the server counts
//! exactly the connections that are open.
//!
//! `STRESS_SEED=n cargo test --test integration stress` replays a run.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Client, Server};
use serde_json::{Value, json};

const ACTORS: usize = 12;
const ROUNDS: usize = 6;
const OPS_PER_ROUND: usize = 60;
/// Rooms the actors share (spread over both shards by their ids).
const ROOMS: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];

/// splitmix64: a small, well-mixed generator, so a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What one member knows of a room it is in.
#[derive(Default)]
struct Seen {
    /// (epoch, seq) of the last room message it received.
    last: Option<(u64, u64)>,
}

struct Actor {
    id: usize,
    addr: std::net::SocketAddr,
    c: Client,
    uid: String,
    rooms: HashMap<String, Seen>,
    rng: Rng,
    sent: u64,
    burst: u64,
}

impl Actor {
    fn new(id: usize, addr: std::net::SocketAddr, seed: u64) -> Actor {
        let mut a = Actor {
            id,
            addr,
            c: Client::connect(addr),
            uid: format!("actor{id}"),
            rooms: HashMap::new(),
            rng: Rng(seed ^ (id as u64).wrapping_mul(0x1000_0000_01b3)),
            sent: 0,
            burst: 0,
        };
        a.join(ROOMS[id % ROOMS.len()]);
        a
    }

    /// Reads frames until `done` accepts one, checking every room message
    /// on the way. A read that times out fails the test: the connection
    /// was not served.
    fn until(&mut self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        loop {
            let v = self.c.recv();
            if v["cmd"] == "message" {
                self.check_message(&v);
            }
            if done(&v) {
                return v;
            }
            assert!(v["cmd"] != "error" || what.contains("or error"), "actor {}: {what}: got {v}", self.id);
        }
    }

    fn check_message(&mut self, v: &Value) {
        let rid = v["rid"].as_str().unwrap().to_owned();
        if v.get("tid").is_some() {
            return; // private: carries the room's current seq, advances nothing
        }
        let seen = self
            .rooms
            .get_mut(&rid)
            .unwrap_or_else(|| panic!("actor {}: message for {rid}, not a member: {v}", self.id));
        let now = (v["epoch"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
        if let Some((epoch, seq)) = seen.last {
            assert_eq!(now.0, epoch, "actor {}: {rid}: epoch changed on a single node", self.id);
            assert_eq!(now.1, seq + 1, "actor {}: {rid}: seq {seq} then {}: gap or duplicate", self.id, now.1);
        }
        seen.last = Some(now);
    }

    fn join(&mut self, rid: &str) {
        self.c
            .send(json!({"cmd": "login", "name": format!("n{}", self.id), "uid": self.uid, "rid": rid, "echo": true}));
        self.rooms.entry(rid.to_owned()).or_default();
        self.until("login ack", |v| v["cmd"] == "login" && v["rid"] == rid);
    }

    fn leave(&mut self, rid: &str) {
        self.c.send(json!({"cmd": "logout", "rid": rid}));
        // Messages sequenced before the owner saw the logout may still come.
        self.until("logout ack", |v| v["cmd"] == "logout" && v["rid"] == rid);
        self.rooms.remove(rid);
    }

    fn some_room(&mut self) -> Option<String> {
        let mut rooms: Vec<&String> = self.rooms.keys().collect();
        rooms.sort();
        (!rooms.is_empty()).then(|| rooms[self.rng.below(rooms.len())].clone())
    }

    fn step(&mut self) {
        let pool = ROOMS[self.rng.below(ROOMS.len())];
        match self.rng.below(10) {
            0 | 1 => self.join(pool),
            2 => {
                if let Some(rid) = self.some_room().filter(|_| self.rooms.len() > 1) {
                    self.leave(&rid);
                }
            }
            3..=5 => {
                // A few messages at once; echo brings each back in order.
                let Some(rid) = self.some_room() else { return self.join(pool) };
                let n = 1 + self.rng.below(5);
                let first = self.sent;
                for _ in 0..n {
                    self.sent += 1;
                    self.c.say(&rid, &format!("{}-{}", self.id, self.sent));
                }
                for k in first + 1..=self.sent {
                    let text = format!("{}-{k}", self.id);
                    self.until("own message", |v| v["cmd"] == "message" && v["msg"] == text.as_str());
                }
            }
            6 => {
                // A private message to another actor, who may not be there.
                let Some(rid) = self.some_room() else { return self.join(pool) };
                self.sent += 1;
                let text = format!("{}-{}", self.id, self.sent);
                let tid = format!("actor{}", self.rng.below(ACTORS));
                self.c.send(json!({"cmd": "message", "type": "text", "rid": rid, "msg": text, "tid": tid}));
                self.until("private copy or error", |v| {
                    (v["cmd"] == "message" && v["msg"] == text.as_str()) || v["cmd"] == "error"
                });
            }
            7 => {
                let Some(rid) = self.some_room() else { return self.join(pool) };
                self.c.send(json!({"cmd": "getOnline", "rid": rid}));
                let v = self.until("roster", |v| v["cmd"] == "getOnline" && v["rid"] == rid.as_str());
                let users = v["users"].as_array().unwrap();
                assert!(
                    users.iter().any(|u| u["uid"] == self.uid.as_str()),
                    "actor {}: not on {rid}'s roster",
                    self.id
                );
                self.c.send(json!({"cmd": "getHistory", "rid": rid, "limit": 20}));
                let v = self.until("history", |v| v["cmd"] == "getHistory" && v["rid"] == rid.as_str());
                let seqs: Vec<u64> = v["msgs"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
                assert!(
                    seqs.windows(2).all(|w| w[1] == w[0] + 1),
                    "actor {}: history of {rid} not contiguous: {seqs:?}",
                    self.id
                );
            }
            8 => {
                // A burst of joins to fresh rooms, then leave them all.
                self.burst += 1;
                let n = 50 + self.rng.below(150);
                let rooms: Vec<String> = (0..n).map(|i| format!("b{}-{}-{i}", self.id, self.burst)).collect();
                for rid in &rooms {
                    self.c.send(json!({"cmd": "login", "rid": rid}));
                    self.rooms.entry(rid.clone()).or_default();
                }
                let mut acked = BTreeSet::new();
                while acked.len() < n {
                    let v = self.until("burst acks", |v| v["cmd"] == "login");
                    acked.insert(v["rid"].as_str().unwrap().to_owned());
                }
                for rid in &rooms {
                    self.c.send(json!({"cmd": "logout", "rid": rid}));
                }
                let mut left = BTreeSet::new();
                while left.len() < n {
                    let v = self.until("burst logout acks", |v| v["cmd"] == "logout");
                    left.insert(v["rid"].as_str().unwrap().to_owned());
                }
                for rid in &rooms {
                    self.rooms.remove(rid);
                }
            }
            _ => {
                // Hang up and come back.
                self.c = Client::connect(self.addr);
                self.rooms.clear();
                self.join(pool);
            }
        }
    }

    /// Proof of service at the end of a round: a roster request answered.
    fn ping_service(&mut self) {
        let rid = self.some_room().expect("every actor is in a room");
        self.c.send(json!({"cmd": "getOnline", "rid": rid}));
        self.until("end-of-round roster", |v| v["cmd"] == "getOnline" && v["rid"] == rid.as_str());
    }
}

/// A barrier whose wait gives up (fails the test) after a minute, so that
/// a failed actor fails the run instead of hanging it.
struct Gate {
    n: usize,
    state: Mutex<(usize, u64)>,
    cv: Condvar,
}

impl Gate {
    fn new(n: usize) -> Gate {
        Gate { n, state: Mutex::new((0, 0)), cv: Condvar::new() }
    }

    fn wait(&self) {
        let mut st = self.state.lock().unwrap();
        let generation = st.1;
        st.0 += 1;
        if st.0 == self.n {
            *st = (0, generation + 1);
            self.cv.notify_all();
            return;
        }
        let (st, timeout) = self.cv.wait_timeout_while(st, Duration::from_secs(60), |st| st.1 == generation).unwrap();
        assert!(
            !timeout.timed_out() || st.1 != generation,
            "a participant did not reach the barrier (an actor failed?)"
        );
    }
}

fn wait_connections(server: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = server.metric("cchat_connections");
        if now == n as f64 {
            return;
        }
        assert!(Instant::now() < deadline, "cchat_connections is {now}, {n} sockets are open");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cross_shard_paths_under_random_bursts_with_tiny_queues() {
    let seed: u64 = std::env::var("STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261204);
    eprintln!("STRESS_SEED={seed}");
    let server = Server::start(&[
        "--shards",
        "2",
        "--rate-limit",
        "0",
        "--shard-queue",
        "8",
        "--max-rooms-per-connection",
        "1000",
    ]);
    let addr = server.addr;
    let barrier = Arc::new(Gate::new(ACTORS + 1));
    let actors: Vec<_> = (0..ACTORS)
        .map(|id| {
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut a = Actor::new(id, addr, seed);
                barrier.wait();
                for _ in 0..ROUNDS {
                    for _ in 0..OPS_PER_ROUND {
                        a.step();
                    }
                    a.ping_service();
                    barrier.wait(); // round over
                    barrier.wait(); // checked
                }
                a
            })
        })
        .collect();
    barrier.wait();
    for round in 0..ROUNDS {
        barrier.wait();
        eprintln!("round {round} done");
        wait_connections(&server, ACTORS);
        barrier.wait();
    }
    let actors: Vec<Actor> = actors.into_iter().map(|t| t.join().expect("an actor failed")).collect();
    drop(actors);
    wait_connections(&server, 0);
}
