//! Failover through the shared store: three relay-joined nodes (one shard
//! each) keep history in one local `redis-server`; node 2 owns ROOMS rooms
//! that senders on node 0 post to (each sender gets its own messages back:
//! the echo is the acknowledgement). After WARMUP seconds node 2 is killed
//! with SIGKILL while the load goes on. For every room: how long until it
//! acknowledged a message again, whether that message continued the room's
//! epoch with the next seq, and whether every acknowledged message is in the
//! room's history afterwards.
//!
//! `cargo bench --bench failover` (ROOMS=1000 RATE=4000 WARMUP=3 AFTER=10;
//! needs `redis-server` and the release `cchat` binary).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

const SENDERS: usize = 10;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connect(port: u16) -> WebSocket<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tungstenite::client(format!("ws://127.0.0.1:{port}/"), s).unwrap().0
}

fn recv(ws: &mut WebSocket<TcpStream>) -> Option<Value> {
    match ws.read() {
        Ok(Message::Text(t)) => serde_json::from_str(&t).ok(),
        _ => None,
    }
}

/// One acknowledged message: room index, epoch, seq, text, when.
type Ack = (usize, u64, u64, String, Instant);

fn main() {
    let rooms_n = env("ROOMS", 1000) as usize;
    let rate = env("RATE", 4000);
    let warmup = Duration::from_secs(env("WARMUP", 3));
    let after = Duration::from_secs(env("AFTER", 10));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cchat = root.join("target/release/cchat");
    assert!(cchat.exists(), "build first: cargo build --release");
    let work = std::env::temp_dir().join(format!("cchat-failover-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();

    let rport = free_port();
    let _redis = Proc(
        Command::new("redis-server")
            .args(["--port", &rport.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"])
            .args(["--appendfsync", "everysec", "--daemonize", "no", "--dir"])
            .arg(&work)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let store = format!("redis://127.0.0.1:{rport}");
    let (cports, rports): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
    let mut nodes: Vec<Option<Proc>> = (0..3)
        .map(|i| {
            let mut cmd = Command::new(&cchat);
            cmd.args(["--listen", &format!("127.0.0.1:{}", cports[i]), "--shards", "1", "--rate-limit", "0"]);
            cmd.args(["--store", &store, "--node-id", &format!("node{i}"), "--cluster-secret", "bench"]);
            cmd.args(["--relay-listen", &format!("127.0.0.1:{}", rports[i])]);
            cmd.arg("--data-dir").arg(work.join(format!("data{i}")));
            for j in (0..3).filter(|j| *j != i) {
                cmd.args(["--peer", &format!("127.0.0.1:{}", rports[j])]);
            }
            let mut child = cmd.env("RUST_LOG", "error").stdout(Stdio::piped()).spawn().unwrap();
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
            assert!(line.starts_with("listening on"), "node {i}: {line}");
            Some(Proc(child))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3)); // relay links and views settle

    let names = ["node0", "node1", "node2"];
    let rooms: Arc<Vec<String>> = Arc::new(
        (0..)
            .map(|i| format!("fo-{i}"))
            .filter(|r| cchat::placement::node_for(r, names) == Some("node2"))
            .take(rooms_n)
            .collect(),
    );
    let index: Arc<HashMap<String, usize>> = Arc::new(rooms.iter().enumerate().map(|(i, r)| (r.clone(), i)).collect());
    let t_start = Instant::now();
    let kill_at = t_start + warmup + Duration::from_secs(2);
    let stop_at = kill_at + after;
    let per_sender = rate / SENDERS as u64;
    let threads: Vec<_> = (0..SENDERS)
        .map(|s| {
            let (rooms, index) = (rooms.clone(), index.clone());
            let port = cports[0];
            std::thread::spawn(move || {
                let mine: Vec<usize> = (s..rooms.len()).step_by(SENDERS).collect();
                let mut ws = connect(port);
                let uid = format!("sender{s}");
                ws.send(Message::text(
                    json!({"cmd":"login","rid":rooms[mine[0]],"uid":uid,"name":uid,"echo":true}).to_string(),
                ))
                .unwrap();
                for &r in &mine[1..] {
                    ws.send(Message::text(json!({"cmd":"login","rid":rooms[r]}).to_string())).unwrap();
                }
                let mut joined = 0;
                while joined < mine.len() {
                    if recv(&mut ws).is_some_and(|v| v["cmd"] == "login") {
                        joined += 1;
                    }
                }
                ws.get_mut().set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                let (mut acks, mut refused, mut sent) = (Vec::<Ack>::new(), 0u64, 0u64);
                let gap = Duration::from_secs_f64(1.0 / per_sender as f64);
                let mut next = Instant::now();
                let mut i = 0;
                while Instant::now() < stop_at {
                    while Instant::now() >= next {
                        let r = mine[i % mine.len()];
                        let msg = format!("{s}-{i}");
                        ws.send(Message::text(
                            json!({"cmd":"message","rid":rooms[r],"msg":msg,"type":"text"}).to_string(),
                        ))
                        .unwrap();
                        sent += 1;
                        i += 1;
                        next += gap;
                    }
                    while let Some(v) = recv(&mut ws) {
                        if v["cmd"] == "message" {
                            let r = index[v["rid"].as_str().unwrap()];
                            let (e, q) = (v["epoch"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
                            acks.push((r, e, q, v["msg"].as_str().unwrap().to_owned(), Instant::now()));
                        } else if v["cmd"] == "error" {
                            refused += 1;
                        }
                    }
                }
                ws.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                (ws, acks, refused, sent)
            })
        })
        .collect();
    while Instant::now() < kill_at {
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = Instant::now();
    drop(nodes[2].take()); // SIGKILL
    let mut conns = Vec::new();
    let (mut acks, mut refused, mut sent) = (Vec::new(), 0, 0);
    for t in threads {
        let (ws, a, r, s) = t.join().unwrap();
        conns.push(ws);
        acks.extend(a);
        refused += r;
        sent += s;
    }
    // Per room: the last acknowledgement before the kill, the first after.
    let mut per_room: HashMap<usize, Vec<&Ack>> = HashMap::new();
    for a in &acks {
        per_room.entry(a.0).or_default().push(a);
    }
    let (mut same_epoch_next, mut same_epoch_later, mut other, mut never) = (0, 0, 0, 0);
    let mut waits = Vec::new();
    for r in 0..rooms.len() {
        let list = per_room.get(&r).map(Vec::as_slice).unwrap_or(&[]);
        let before = list.iter().filter(|a| a.4 < killed).max_by_key(|a| a.2);
        let first_after = list.iter().filter(|a| a.4 >= killed).min_by_key(|a| a.4);
        match (before, first_after) {
            (Some(b), Some(f)) => {
                waits.push(f.4 - killed);
                if f.1 == b.1 && f.2 == b.2 + 1 {
                    same_epoch_next += 1;
                } else if f.1 == b.1 && f.2 > b.2 {
                    same_epoch_later += 1;
                } else {
                    other += 1;
                }
            }
            _ => never += 1,
        }
    }
    waits.sort();
    let q = |p: f64| waits.get(((waits.len() as f64 * p) as usize).min(waits.len().saturating_sub(1))).copied();
    // Every acknowledged message is in its room's history.
    let mut missing = 0;
    for (r, list) in &per_room {
        let ws = &mut conns[r % SENDERS];
        ws.send(Message::text(json!({"cmd":"getHistory","rid":rooms[*r],"limit":1000}).to_string())).unwrap();
        let h = loop {
            let v = recv(ws).expect("history reply");
            if v["cmd"] == "getHistory" {
                break v;
            }
        };
        let have: std::collections::HashSet<(u64, u64, String)> = h["msgs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["epoch"].as_u64().unwrap(), m["seq"].as_u64().unwrap(), m["msg"].as_str().unwrap().to_owned()))
            .collect();
        missing += list.iter().filter(|a| !have.contains(&(a.1, a.2, a.3.clone()))).count();
    }
    let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0));
    println!(
        "failover: {} rooms owned by the killed node, {sent} messages sent at {rate}/s, {} acknowledged, {refused} refused",
        rooms.len(),
        acks.len()
    );
    println!(
        "rooms continuing: same epoch + next seq {same_epoch_next}, same epoch + a later seq {same_epoch_later}, other epoch {other}, never {never}"
    );
    println!(
        "time from SIGKILL to a room's first acknowledged message: p50 {}, p99 {}, max {}",
        ms(q(0.5)),
        ms(q(0.99)),
        ms(waits.last().copied())
    );
    println!("acknowledged messages missing from history: {missing}");
    let _ = std::fs::remove_dir_all(&work);
}
