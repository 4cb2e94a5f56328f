//! Three real node processes joined by the relay on loopback.

use std::time::{Duration, Instant};

use crate::common::relay::FakePeer;
use crate::common::{Client, Server};
use serde_json::json;

pub(crate) const SECRET: &str = "test-secret";

/// Free loopback ports (see `common::free_port`).
pub(crate) fn free_ports(n: usize) -> Vec<u16> {
    (0..n).map(|_| crate::common::free_port()).collect()
}

pub(crate) struct Cluster {
    pub(crate) nodes: Vec<Option<Server>>,
    client_ports: Vec<u16>,
    relay_ports: Vec<u16>,
    /// Flags for node 0 only (an admin listener).
    first_extra: Vec<String>,
    /// Flags for every node (a shared store).
    all_extra: Vec<String>,
}

impl Cluster {
    /// Ports for `n` nodes, none started.
    fn unstarted(n: usize) -> Cluster {
        let ports = free_ports(2 * n);
        Cluster {
            nodes: Vec::new(),
            client_ports: ports[..n].to_vec(),
            relay_ports: ports[n..].to_vec(),
            first_extra: Vec::new(),
            all_extra: Vec::new(),
        }
    }

    fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[])
    }

    /// `n` nodes, each with these extra flags.
    pub(crate) fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let mut c = Cluster::unstarted(n);
        c.all_extra = extra.iter().map(|s| s.to_string()).collect();
        for i in 0..n {
            let s = c.spawn(i);
            c.nodes.push(Some(s));
        }
        c.wait_links(n - 1);
        c
    }

    pub(crate) fn spawn(&self, i: usize) -> Server {
        let n = self.client_ports.len();
        let listen = format!("127.0.0.1:{}", self.client_ports[i]);
        let relay = format!("127.0.0.1:{}", self.relay_ports[i]);
        let name = format!("node{i}");
        let mut args: Vec<String> = vec![
            "--shards".into(),
            "2".into(),
            "--rate-limit".into(),
            "0".into(),
            "--node-id".into(),
            name,
            "--relay-listen".into(),
            relay,
            "--cluster-secret".into(),
            SECRET.into(),
        ];
        for j in (0..n).filter(|j| *j != i) {
            args.push("--peer".into());
            args.push(format!("127.0.0.1:{}", self.relay_ports[j]));
        }
        if i == 0 {
            args.extend(self.first_extra.iter().cloned());
        }
        args.extend(self.all_extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = Server::try_start_on(&listen, &args) {
                return s;
            }
            assert!(Instant::now() < deadline, "node {i} did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().unwrap()
    }

    /// Waits until every running node has `links` live relay links.
    pub(crate) fn wait_links(&self, links: usize) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for s in self.nodes.iter().flatten() {
            while s.metric("cchat_relay_link_up") as usize != links {
                assert!(Instant::now() < deadline, "relay links did not come up");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Then every shard of every node must route by the full view. No
        // settling pause: these tests failed about half the time without one
        // while a node's late dial could replace a link already carrying
        // traffic (the relay no longer makes such dials).
        for s in self.nodes.iter().flatten() {
            s.wait_view(links + 1);
        }
    }
}

/// The first room of `a_node_dies_and_comes_back`.
fn rooms_first() -> String {
    "room0".into()
}

fn login(c: &mut Client, name: &str, rid: &str, uid: &str) {
    c.login_echo(name, rid, uid);
}

/// Logs `a` in on node `na` and `b` on node `nb`, both into `rid`, and
/// checks that `a` hears of `b` at once.
fn meet(c: &Cluster, (na, a): (usize, &str), (nb, b): (usize, &str), rid: &str) -> (Client, Client) {
    let mut ca = c.node(na).client();
    login(&mut ca, a, rid, a);
    let mut cb = c.node(nb).client();
    login(&mut cb, b, rid, b);
    let v = ca.expect("newUser");
    assert_eq!(v["uid"], b);
    (ca, cb)
}

/// Reads until a message frame arrives, skipping presence frames.
fn next_message(c: &mut Client) -> serde_json::Value {
    loop {
        let v = c.recv();
        if v["cmd"] == "message" {
            return v;
        }
        assert!(["newUser", "userLeave"].contains(&v["cmd"].as_str().unwrap()), "{v}");
    }
}

#[test]
fn one_room_across_three_nodes() {
    let cl = Cluster::start(3);
    // Two members on each node.
    let mut members: Vec<Client> = Vec::new();
    for i in 0..6 {
        let mut c = cl.node(i % 3).client();
        login(&mut c, &format!("n{i}"), "world", &format!("u{i}"));
        members.push(c);
    }
    // newUser reaches members on other nodes.
    for (i, c) in members.iter_mut().enumerate() {
        for j in i + 1..6 {
            let v = c.expect("newUser");
            assert_eq!(v["uid"], format!("u{j}"));
        }
    }
    // getOnline lists the whole cluster's roster.
    members[4].send(json!({"cmd":"getOnline","rid":"world"}));
    let online = members[4].expect("getOnline");
    let mut uids: Vec<String> =
        online["users"].as_array().unwrap().iter().map(|u| u["uid"].as_str().unwrap().to_owned()).collect();
    uids.sort();
    assert_eq!(uids, ["u0", "u1", "u2", "u3", "u4", "u5"]);
    // Concurrent senders on every node: one order, seen by every member.
    let per = 50;
    let senders: Vec<Client> = members.drain(..3).collect();
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(w, mut c)| {
            std::thread::spawn(move || {
                for k in 0..per {
                    c.say("world", &format!("{w}:{k}"));
                }
                c
            })
        })
        .collect();
    let mut senders: Vec<Client> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let total = 3 * per;
    let mut first: Option<Vec<String>> = None;
    for c in senders.iter_mut().chain(members.iter_mut()) {
        let mut order = Vec::new();
        let mut seqs = Vec::new();
        let mut epoch = None;
        for _ in 0..total {
            let m = next_message(c);
            order.push(m["msg"].as_str().unwrap().to_owned());
            seqs.push(m["seq"].as_u64().unwrap());
            let e = m["epoch"].as_u64().unwrap();
            assert_eq!(*epoch.get_or_insert(e), e);
        }
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>());
        match &first {
            None => first = Some(order),
            Some(f) => assert_eq!(f, &order, "members disagree on the order"),
        }
    }
    // Private message from node 0 to a user on node 2 reaches only them.
    let (a, rest) = senders.split_at_mut(1);
    let _ = rest;
    a[0].send(json!({"cmd":"message","type":"text","msg":"psst","rid":"world","tid":"u5"}));
    let m = next_message(&mut members[2]); // u5 lives on node 2
    assert_eq!((m["msg"].as_str(), m["tid"].as_str(), m["uid"].as_str()), (Some("psst"), Some("u5"), Some("u0")));
    let echo = next_message(&mut a[0]);
    assert_eq!(echo["tid"], "u5");
    for c in members[..2].iter_mut() {
        c.expect_silence(Duration::from_millis(300));
    }
    // getHistory from any node.
    members[0].send(json!({"cmd":"getHistory","rid":"world","limit":5}));
    let h = members[0].expect("getHistory");
    assert_eq!(h["msgs"].as_array().unwrap().len(), 5);
    assert_eq!(h["msgs"][4]["seq"], total as u64);
    // userLeave crosses nodes.
    drop(members.remove(2)); // u5 on node 2
    for c in senders.iter_mut() {
        let v = c.expect("userLeave");
        assert_eq!(v["uid"], "u5");
    }
}

#[test]
fn a_node_dies_and_comes_back() {
    let mut cl = Cluster::start(3);
    // Many rooms so that some are owned by each node; one member per node in each.
    let rooms: Vec<String> = (0..12).map(|i| format!("room{i}")).collect();
    let mut clients: Vec<Vec<Client>> = (0..3).map(|_| Vec::new()).collect();
    for (n, list) in clients.iter_mut().enumerate() {
        let mut c = cl.node(n).client();
        login(&mut c, &format!("user{n}"), &rooms[0], &format!("u{n}"));
        for r in &rooms[1..] {
            c.send(json!({"cmd":"login","rid":r}));
            c.expect("login");
        }
        list.push(c);
    }
    let drain = |c: &mut Client| c.expect_silence(Duration::from_millis(400));
    for list in clients.iter_mut() {
        // Skip the presence announcements.
        loop {
            list[0].ws.get_mut().set_read_timeout(Some(Duration::from_millis(400))).unwrap();
            match list[0].ws.read() {
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        list[0].ws.get_mut().set_read_timeout(Some(crate::common::TIMEOUT)).unwrap();
    }
    // Kill node 2 in the middle of traffic.
    let mut survivors: Vec<Client> = clients.drain(..2).map(|mut l| l.remove(0)).collect();
    for r in &rooms {
        survivors[0].say(r, "before");
    }
    // Traffic keeps flowing while node 2 dies: a member on node 1 posts
    // every 5 ms throughout.
    let mut noisy = cl.node(1).client();
    login(&mut noisy, "noisy", &rooms[0], "noisy");
    let traffic = std::thread::spawn(move || {
        for i in 0..300 {
            noisy.say(&rooms_first(), &format!("noise {i}"));
            std::thread::sleep(Duration::from_millis(5));
        }
        noisy
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut dead = cl.nodes[2].take().unwrap();
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let _noisy = traffic.join().unwrap();
    drop(clients);
    // Survivors keep serving: after re-homing, every room works between them
    // again, and nothing is delivered twice.
    let deadline = Instant::now() + Duration::from_secs(15);
    cl.wait_links(1);
    let mut seen = std::collections::HashSet::new();
    for r in &rooms {
        loop {
            assert!(Instant::now() < deadline, "room {r} never recovered");
            survivors[0].say(r, &format!("after:{r}"));
            // The sender (echo) and the other survivor both get it once.
            let mut got = None;
            while let Ok(tungstenite::Message::Text(t)) = {
                survivors[1].ws.get_mut().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                survivors[1].ws.read()
            } {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["cmd"] == "message" {
                    let key = (
                        v["rid"].as_str().unwrap().to_owned(),
                        v["epoch"].as_u64().unwrap(),
                        v["seq"].as_u64().unwrap(),
                    );
                    assert!(seen.insert(key.clone()), "delivered twice: {key:?}");
                    if v["msg"] == format!("after:{r}") {
                        got = Some(v);
                        break;
                    }
                }
            }
            survivors[1].ws.get_mut().set_read_timeout(Some(crate::common::TIMEOUT)).unwrap();
            if got.is_some() {
                break;
            }
        }
    }
    // Roster no longer lists the dead node's user.
    survivors[1].send(json!({"cmd":"getOnline","rid":rooms[0]}));
    let online = loop {
        let v = survivors[1].recv();
        if v["cmd"] == "getOnline" {
            break v;
        }
    };
    let uids: Vec<&str> = online["users"].as_array().unwrap().iter().map(|u| u["uid"].as_str().unwrap()).collect();
    assert!(!uids.contains(&"u2"), "{online}");
    // Restart node 2: it rejoins by itself and takes part again.
    cl.nodes[2] = Some(cl.spawn(2));
    cl.wait_links(2);
    let mut back = cl.node(2).client();
    login(&mut back, "back", &rooms[0], "u2b");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        assert!(Instant::now() < deadline, "restarted node never got room traffic");
        survivors[0].say(&rooms[0], "welcome back");
        back.ws.get_mut().set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut ok = false;
        while let Ok(tungstenite::Message::Text(t)) = back.ws.read() {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            if v["cmd"] == "message" && v["msg"] == "welcome back" {
                ok = true;
                break;
            }
        }
        if ok {
            break;
        }
    }
    let _ = drain;
}

#[test]
fn strangers_and_wrong_secrets_are_refused() {
    let (s, relay) = relay_node("a", &[]);
    // Garbage on the relay port.
    {
        use std::io::{Read, Write};
        let mut st = std::net::TcpStream::connect(&relay).unwrap();
        st.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        st.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = st.read_to_end(&mut buf); // the node hangs up
    }
    // A node with the wrong secret.
    let other_port = free_ports(1)[0];
    let _intruder = Server::try_start_on(
        &format!("127.0.0.1:{other_port}"),
        &["--node-id", "b", "--peer", &relay, "--cluster-secret", "wrong"],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("cchat_relay_refused_total") < 2.0 {
        assert!(Instant::now() < deadline, "refusals not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.metric("cchat_relay_link_up"), 0.0);
    // The node still serves its own clients.
    let mut c = s.client();
    c.login("x", "r", None);
}

/// A peer that completes the relay handshake, joins a member into a room
/// this node owns, then never reads: the node's queue for it passes its cap,
/// the link is closed and counted, and the node keeps serving its clients.
#[test]
fn a_slow_peer_link_is_closed_at_its_queue_cap() {
    use cchat::relay::codec;

    let (s, relay) = relay_node("real", &["--relay-queue-bytes", "65536", "--rate-limit", "0"]);
    // A room that the real node owns when "fake" is live too.
    let rid = room_owned_by("slow", "real", "fake");

    // The fake peer: small receive buffer, handshake by the book. It has
    // the smaller name, so it picks the link: ACTIVATE.
    let mut peer = FakePeer::connect(&relay, "fake", SECRET, Some(4096));
    peer.send(&codec::activate()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("cchat_relay_link_up") < 1.0 {
        assert!(Instant::now() < deadline, "fake link never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.wait_view(2);
    // A member on the fake node, so every message in the room goes its way.
    peer.send(&remote_join(&rid, 1)).unwrap();

    let mut a = s.client();
    a.login("ann", &rid, Some("a"));
    let mut b = s.client();
    b.login("bob", &rid, Some("b"));
    let body = "x".repeat(1000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.metric("cchat_relay_overflows_total") < 1.0 {
        assert!(Instant::now() < deadline, "the link never overflowed");
        // Alive, never reading: a silent peer would be dropped after 2 s
        // for that instead of for its full queue.
        let _ = peer.send(&codec::heartbeat());
        for _ in 0..50 {
            a.say(&rid, &body);
        }
        // The local member keeps up and gets every message.
        let mut got = 0;
        while got < 50 {
            let v = b.recv();
            if v["cmd"] == "message" {
                got += 1;
            }
        }
    }
    // The node treats the peer as failed, and its own clients carry on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("cchat_relay_link_up") > 0.0 {
        assert!(Instant::now() < deadline, "overflowed link still up");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.say(&rid, "still here");
    loop {
        let v = b.recv();
        if v["cmd"] == "message" && v["msg"] == "still here" {
            break;
        }
    }
}

const T_HEARTBEAT: u8 = 1;
const T_ACTIVATE: u8 = 2;

/// One node named `name` with a relay listener (and `extra` flags); returns
/// it and its relay address.
pub(crate) fn relay_node(name: &str, extra: &[&str]) -> (Server, String) {
    let ports = free_ports(2);
    let relay = format!("127.0.0.1:{}", ports[1]);
    let mut args = vec!["--node-id", name, "--relay-listen", &relay, "--cluster-secret", SECRET];
    args.extend_from_slice(extra);
    let s = Server::try_start_on(&format!("127.0.0.1:{}", ports[0]), &args).unwrap();
    (s, relay)
}

/// A room id starting with `prefix` that node `owner` owns while `other` is
/// live too.
pub(crate) fn room_owned_by(prefix: &str, owner: &str, other: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|r| cchat::placement::node_for(r, [owner, other]) == Some(owner))
        .unwrap()
}

/// The relay frame of a fake peer's member (uid "remote", connection `key`)
/// joining `rid`.
pub(crate) fn remote_join(rid: &str, key: u32) -> bytes::Bytes {
    use cchat::ids::{Id, Name};
    let join = cchat::msg::NodeMsg::ToOwner(cchat::msg::Request::Join {
        rid: Id::parse_str(rid).unwrap(),
        conn: cchat::msg::ConnRef { node: 0, shard: 0, key, generation: 1 },
        uid: Id::parse_str("remote").unwrap(),
        name: Name::parse("Remote").unwrap(),
        echo: false,
        rejoin: false,
        since: None,
    });
    cchat::relay::codec::encode(&join)
}

/// Of a pair, the node with the smaller name picks the link that carries
/// traffic; the other sends nothing but heartbeats on a link until told.
#[test]
fn the_smaller_name_picks_the_link() {
    use cchat::relay::codec;

    // The real node ("m") decides for a peer named "z": its first frame on
    // the link is ACTIVATE, and the peer is up.
    let (s, relay) = relay_node("m", &[]);
    let mut z1 = FakePeer::connect(&relay, "z", SECRET, None);
    let (types, eof) = z1.frame_types(Instant::now() + Duration::from_millis(600));
    assert!(!eof);
    assert_eq!(types.first(), Some(&T_ACTIVATE), "ACTIVATE comes first: {types:?}");
    // Then heartbeats, and the peers this node knows (PEERS, 34).
    assert!(types[1..].iter().all(|&t| t == T_HEARTBEAT || t == 34), "{types:?}");
    // z1 speaks (a heartbeat) so it is not dropped as silent meanwhile.
    z1.send(&codec::heartbeat()).unwrap();
    s.wait_view(2);
    assert_eq!(s.metric("cchat_relay_link_up"), 1.0);
    z1.send(&codec::heartbeat()).unwrap();
    // A second link from "z" while the first works: closed unused, with not
    // a single frame on it, and the first link stays up.
    let mut z2 = FakePeer::connect(&relay, "z", SECRET, None);
    let (types, eof) = z2.frame_types(Instant::now() + Duration::from_secs(5));
    assert!(eof, "the unused link is closed");
    assert!(types.is_empty(), "nothing is sent on an unused link: {types:?}");
    z1.send(&codec::heartbeat()).unwrap();
    let (types, eof) = z1.frame_types(Instant::now() + Duration::from_millis(600));
    assert!(!eof && !types.is_empty(), "the first link still carries heartbeats");
    assert_eq!(s.metric("cchat_relay_link_up"), 1.0);
    s.wait_view(2);
    drop((s, z1, z2));

    // A peer named "a" decides for the real node ("m"): until "a" sends
    // ACTIVATE, the link is not up and carries only heartbeats.
    let (s, relay) = relay_node("m", &[]);
    let mut a = FakePeer::connect(&relay, "a", SECRET, None);
    let (types, eof) = a.frame_types(Instant::now() + Duration::from_millis(800));
    assert!(!eof);
    assert!(types.iter().all(|&t| t == T_HEARTBEAT), "only heartbeats before ACTIVATE: {types:?}");
    a.send(&codec::heartbeat()).unwrap();
    assert_eq!(s.metric("cchat_relay_link_up"), 0.0);
    assert_eq!(s.metric_values("cchat_shard_cluster_nodes").iter().fold(0.0f64, |m, &v| m.max(v)), 1.0);
    a.send(&codec::activate()).unwrap();
    s.wait_view(2);
    assert_eq!(s.metric("cchat_relay_link_up"), 1.0);
    drop((s, a));

    // Traffic on a link that was never activated is a protocol violation:
    // that link is closed, and nothing else.
    let (s, relay) = relay_node("m", &[]);
    let mut a = FakePeer::connect(&relay, "a", SECRET, None);
    a.send(&remote_join("r", 1)).unwrap();
    let (_, eof) = a.frame_types(Instant::now() + Duration::from_secs(5));
    assert!(eof, "a link carrying traffic before ACTIVATE is closed");
    assert_eq!(s.metric("cchat_relay_link_up"), 0.0);
    let mut c = s.client();
    c.login("x", "r", None);
}

/// When the deciding peer activates a new link while the old one is still
/// open, it has given up on the old one and forgotten this node's members:
/// the node closes the old link, forgets the peer's members (its local
/// clients see them leave) and keeps the peer in its view, on the new link.
#[test]
fn a_new_activation_replaces_the_old_link_as_a_down_and_up() {
    use cchat::relay::codec;

    let (s, relay) = relay_node("m", &[]);
    // A room the real node owns while "a" is live too.
    let rid = room_owned_by("swap", "m", "a");
    let mut l1 = FakePeer::connect(&relay, "a", SECRET, None);
    l1.send(&codec::activate()).unwrap();
    s.wait_view(2);
    let mut local = s.client();
    local.login("loc", &rid, Some("loc"));
    // A member on "a", announced to the local client.
    l1.send(&remote_join(&rid, 7)).unwrap();
    let v = local.expect("newUser");
    assert_eq!(v["uid"], "remote");

    // "a" activates a second link with the first still open.
    let mut l2 = FakePeer::connect(&relay, "a", SECRET, None);
    l2.send(&codec::activate()).unwrap();
    // The old link is closed by the node...
    let (_, eof) = l1.frame_types(Instant::now() + Duration::from_secs(5));
    assert!(eof, "the replaced link is closed");
    // ...the peer's members are forgotten, as for a peer that went down...
    let v = local.expect("userLeave");
    assert_eq!(v["uid"], "remote");
    // ...and the peer stays in the view, on the new link, which carries traffic.
    s.wait_view(2);
    assert_eq!(s.metric("cchat_relay_link_up"), 1.0);
    assert_eq!(s.metric("cchat_relay_reconnects_total"), 1.0);
    l2.send(&remote_join(&rid, 7)).unwrap();
    let v = local.expect("newUser");
    assert_eq!(v["uid"], "remote");
    let (types, eof) = l2.frame_types(Instant::now() + Duration::from_millis(300));
    assert!(!eof, "the new link stays open: {types:?}");
}

/// A clustered node waits (up to a second) for its `--peer`s to link before
/// it says it is listening, so a cluster started node after node is meshed
/// as soon as its last node is up: no waiting on metrics before using it.
#[test]
fn a_cluster_is_meshed_when_its_last_node_is_listening() {
    let mut c = Cluster::unstarted(3);
    for i in 0..3 {
        let s = c.spawn(i);
        c.nodes.push(Some(s));
    }
    assert_eq!(c.node(2).metric("cchat_relay_link_up"), 2.0, "the last node is linked to both others");
    // Members on the first and the last node meet and talk at once.
    let rid = "meshed";
    let (mut ann, mut cat) = meet(&c, (0, "ann"), (2, "cat"), rid);
    cat.send(json!({"cmd":"message","type":"text","rid":rid,"msg":"hi"}));
    let v = next_message(&mut ann);
    assert_eq!((v["uid"].as_str(), v["msg"].as_str()), (Some("cat"), Some("hi")));
}

/// The same for nodes started all at once: every link comes up on both
/// ends in the first round. (Each node waits for its peers for at most the
/// first second of its life, and three debug-built processes starting at
/// once on a loaded machine may take longer than that to listen: so the
/// links are awaited here, a few seconds at most, not read once.)
#[test]
fn a_cluster_started_at_once_is_meshed_when_its_nodes_are_listening() {
    let mut c = Cluster::unstarted(3);
    let cluster = &c;
    let started: Vec<Server> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..3).map(|i| sc.spawn(move || cluster.spawn(i))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    c.nodes = started.into_iter().map(Some).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    for i in 0..3 {
        while c.node(i).metric("cchat_relay_link_up") < 2.0 {
            assert!(Instant::now() < deadline, "node {i} is not linked to both others");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    meet(&c, (1, "bob"), (2, "cat"), "together");
}

/// The server API of one node reaches the whole cluster: a publish to a room
/// another node owns arrives with its seq, and a disconnect closes the
/// user's connections on every node.
#[test]
fn the_server_api_reaches_rooms_and_users_on_other_nodes() {
    let admin = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut c = Cluster::unstarted(2);
    c.first_extra = vec!["--admin-listen".into(), admin.clone(), "--api-key".into(), "k".into()];
    for i in 0..2 {
        let s = c.spawn(i);
        c.nodes.push(Some(s));
    }
    // Node 0's metrics are on its admin listener: wait through it.
    let t0 = Instant::now();
    loop {
        let (_, body) = crate::security::admin(&admin, "GET", "/metrics", None, "");
        let views: Vec<&str> = body.lines().filter(|l| l.starts_with("cchat_shard_cluster_nodes")).collect();
        if !views.is_empty() && views.iter().all(|l| l.ends_with(" 2")) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "node 0 did not see node 1: {views:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.node(1).wait_view(2);
    let rid = room_owned_by("api", "node1", "node0");
    let mut m = c.node(1).client();
    login(&mut m, "m", &rid, "m");
    let mut dave = c.node(1).client();
    login(&mut dave, "d", "elsewhere", "dave");
    let publish = json!({"rid": rid, "msg": "from the api", "uid": "bot", "name": "Bot"}).to_string();
    let (st, body) = crate::security::admin(&admin, "POST", "/api/publish", Some("k"), &publish);
    assert_eq!(st, 202, "{body}");
    let v = next_message(&mut m);
    assert_eq!((v["msg"].as_str(), v["uid"].as_str(), v["seq"].as_u64()), (Some("from the api"), Some("bot"), Some(1)));
    let (st, body) =
        crate::security::admin(&admin, "POST", "/api/disconnect", Some("k"), r#"{"uid":"dave","code":4005}"#);
    assert_eq!(st, 202, "{body}");
    assert_eq!(dave.expect_close(), 4005, "closed on the other node too");
    // Questions about a room node 1 owns, asked of node 0, answered by node 1.
    let (st, body) = crate::security::admin(&admin, "GET", &format!("/api/online?rid={rid}"), Some("k"), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["count"].as_u64(), v["users"][0]["uid"].as_str()), (Some(1), Some("m")), "{v}");
    let (st, body) = crate::security::admin(&admin, "GET", &format!("/api/history?rid={rid}"), Some("k"), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["msgs"][0]["msg"], "from the api", "{v}");
    // Every node's rooms, each once.
    let mut w = c.node(0).client();
    login(&mut w, "w", "on-node0-side", "w");
    let (st, body) = crate::security::admin(&admin, "GET", "/api/rooms", Some("k"), "");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rooms: Vec<&str> = v["rooms"].as_array().unwrap().iter().map(|r| r["rid"].as_str().unwrap()).collect();
    for r in [rid.as_str(), "on-node0-side"] {
        assert_eq!(rooms.iter().filter(|x| **x == r).count(), 1, "{r} once: {v}");
    }
}

/// A node not upgraded yet (relay v6, here a wire-compatible fake) links
/// with this one: the link runs at v6, its members get the room's
/// messages, and what v6 cannot read (typing) is left off the link rather
/// than breaking it — so a cluster is upgraded one node at a time.
#[test]
fn a_node_of_the_previous_relay_version_is_linked_at_its_version() {
    use cchat::relay::codec;

    let (s, relay) = relay_node("real", &["--rate-limit", "0"]);
    let rid = room_owned_by("mixed", "real", "fake");
    let mut peer = FakePeer::connect_at(&relay, "fake", SECRET, None, 6);
    peer.send(&codec::activate()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("cchat_relay_link_up") < 1.0 {
        assert!(Instant::now() < deadline, "the v6 link never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.wait_view(2);
    // A member on the old node, joined with v6 bytes.
    let join = cchat::msg::NodeMsg::ToOwner(cchat::msg::Request::Join {
        rid: cchat::ids::Id::parse_str(&rid).unwrap(),
        conn: cchat::msg::ConnRef { node: 0, shard: 0, key: 1, generation: 1 },
        uid: cchat::ids::Id::parse_str("old").unwrap(),
        name: cchat::ids::Name::parse("Old").unwrap(),
        echo: false,
        rejoin: false,
        since: None,
    });
    peer.send(&codec::encode_for(&join, 6).unwrap()).unwrap();
    let mut a = s.client();
    a.login("ann", &rid, Some("a"));
    // The old node's member posts (a v6 PUBLISH: no ext byte) and the local one gets it.
    let publish = cchat::msg::NodeMsg::ToOwner(cchat::msg::Request::Publish(Box::new(cchat::msg::Publish {
        rid: cchat::ids::Id::parse_str(&rid).unwrap(),
        from: cchat::msg::ConnRef { node: 0, shard: 0, key: 1, generation: 1 },
        uid: cchat::ids::Id::parse_str("old").unwrap(),
        name: cchat::ids::Name::parse("Old").unwrap(),
        mtype: cchat::protocol::MsgType::Text,
        msg: "from the old node".into(),
        tid: None,
        mid: None,
        reply: None,
        echo: false,
    })));
    peer.send(&codec::encode_for(&publish, 6).unwrap()).unwrap();
    loop {
        let v = a.recv();
        if v["cmd"] == "message" {
            assert_eq!(v["msg"], "from the old node");
            break;
        }
    }
    // Typing (v7) is not sent to it; a message still is, and the link stays.
    a.send(serde_json::json!({"cmd": "typing", "rid": rid}));
    a.say(&rid, "to the old node");
    let (types, eof) = peer.frame_types(Instant::now() + Duration::from_secs(2));
    assert!(!eof, "the link stayed up");
    assert!(types.contains(&21), "a DELIVER came: {types:?}");
    assert!(!types.contains(&16) && !types.contains(&33), "nothing v6 cannot read: {types:?}");
    assert_eq!(s.metric("cchat_relay_link_up"), 1.0);
}

/// A rolling upgrade under traffic: three nodes sharing a Redis store start
/// at relay version 6 (as the previous release), then each is restarted
/// speaking 7, one at a time, while messages keep coming. Every message
/// acknowledged is in its room's history exactly once, and no room is
/// renumbered (one epoch, seqs 1..n with no gap). (A message sent again
/// after a failover may be stored twice while v6 links remain: v6 carries
/// no `mid`.)
/// Three nodes sharing a Redis store, each drained and restarted in turn
/// while messages keep coming (sent again under the same mid until
/// acknowledged): `pinned` starts them at relay v6 and restarts them at 7.
fn rolling_restart_under_traffic(pinned: bool) {
    let redis = crate::common::redis::Redis::start();
    let url = redis.url();
    let first: Vec<&str> =
        if pinned { vec!["--store", &url, "--relay-max-version", "6"] } else { vec!["--store", &url] };
    let mut cl = Cluster::start_with(3, &first);
    let names = ["node0", "node1", "node2"];
    let rooms: Vec<String> = (0..3)
        .map(|k| {
            (0..200).map(|i| format!("up{i}")).find(|r| cchat::placement::node_for(r, names) == Some(names[k])).unwrap()
        })
        .collect();
    let mut acked: Vec<Vec<(u64, u64)>> = vec![Vec::new(); rooms.len()];
    let mut n = 0;
    // Sends `count` messages to each room from a client on node `via`,
    // each until it is acknowledged (the same mid when sent again).
    let mut traffic = |cl: &Cluster, via: usize, count: usize, acked: &mut Vec<Vec<(u64, u64)>>| {
        let mut c = cl.node(via).client();
        c.login_echo("sender", &rooms[0], "sender");
        for r in &rooms[1..] {
            c.send(json!({"cmd": "login", "rid": r}));
            while c.recv()["cmd"] != "login" {}
        }
        for _ in 0..count {
            for (k, r) in rooms.iter().enumerate() {
                n += 1;
                let (mid, text) = (format!("m{n}"), format!("msg {n}"));
                let deadline = Instant::now() + Duration::from_secs(20);
                let got = loop {
                    assert!(Instant::now() < deadline, "{text} in {r} never acknowledged");
                    c.send(json!({"cmd": "message", "type": "text", "rid": r, "msg": text, "mid": mid}));
                    c.ws.get_mut().set_read_timeout(Some(Duration::from_millis(700))).unwrap();
                    let mut got = None;
                    while let Ok(tungstenite::Message::Text(t)) = c.ws.read() {
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                        // By text: over a v6 link a message carries no mid.
                        if v["cmd"] == "message" && v["msg"] == text.as_str() {
                            got = Some((v["epoch"].as_u64().unwrap(), v["seq"].as_u64().unwrap()));
                            break;
                        }
                    }
                    if let Some(g) = got {
                        break g;
                    }
                };
                acked[k].push(got);
            }
        }
    };
    traffic(&cl, 0, 3, &mut acked);
    // Upgrade node 2, then 1, then 0: each restarted without the pin.
    cl.all_extra = vec!["--store".into(), url.clone()];
    for k in [2, 1, 0] {
        let mut old = cl.nodes[k].take().unwrap();
        old.signal(15);
        let _ = old.child.wait();
        cl.wait_links(1);
        traffic(&cl, (k + 1) % 3, 2, &mut acked);
        cl.nodes[k] = Some(cl.spawn(k));
        cl.wait_links(2);
        traffic(&cl, k, 2, &mut acked);
    }
    // Every acknowledged message once, in one epoch per room, seqs 1..n.
    let mut reader = cl.node(1).client();
    reader.login("reader", &rooms[0], Some("reader"));
    for (k, r) in rooms.iter().enumerate() {
        reader.send(json!({"cmd": "login", "rid": r}));
        while reader.recv()["cmd"] != "login" {}
        reader.send(json!({"cmd": "getHistory", "rid": r, "limit": 1000}));
        let h = loop {
            let v = reader.recv();
            if v["cmd"] == "getHistory" {
                break v;
            }
        };
        let got = crate::common::history_msgs(&h);
        let epochs: std::collections::BTreeSet<u64> = got.iter().map(|m| m.0).collect();
        assert_eq!(epochs.len(), 1, "room {r} renumbered: {epochs:?}");
        let seqs: Vec<u64> = got.iter().map(|m| m.1).collect();
        assert_eq!(seqs, (1..=got.len() as u64).collect::<Vec<_>>(), "room {r}: a gap or a repeat");
        for a in &acked[k] {
            assert_eq!(got.iter().filter(|m| (m.0, m.1) == *a).count(), 1, "room {r}: acknowledged {a:?} not once");
        }
        if !pinned {
            // With v7 links every message carries its mid: no copy either.
            assert_eq!(got.len(), acked[k].len(), "room {r}: a message stored twice");
        }
    }
}

#[test]
fn a_cluster_is_upgraded_one_node_at_a_time_under_traffic() {
    rolling_restart_under_traffic(true);
}

/// A rolling restart (every node drained and restarted in turn) under
/// traffic: no acknowledged message lost, none stored twice, no room
/// renumbered.
#[test]
fn a_rolling_restart_loses_and_repeats_nothing() {
    rolling_restart_under_traffic(false);
}

/// A drained node's clients are told to come back at spread-out times:
/// no 100 ms holds more than a quarter of them.
#[test]
fn a_drained_nodes_clients_come_back_at_jittered_times() {
    let s = Server::start(&["--rate-limit", "0"]);
    let mut clients: Vec<_> = (0..40)
        .map(|i| {
            let mut c = s.client();
            c.login("x", "jit", Some(&format!("j{i}")));
            c
        })
        .collect();
    s.signal(15);
    let mut hints = Vec::new();
    for c in clients.iter_mut() {
        c.ws.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reason = loop {
            match c.ws.read() {
                Ok(tungstenite::Message::Close(Some(f))) => break f.reason.to_string(),
                Ok(_) => {}
                Err(e) => panic!("no close frame: {e}"),
            }
        };
        let ms: u64 =
            reason.split("retry in ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
        hints.push(ms);
    }
    for start in (500..3000).step_by(50) {
        let n = hints.iter().filter(|h| (start..start + 100).contains(*h)).count();
        assert!(n * 4 <= hints.len(), "{n} of {} within {start}..{} ms: {hints:?}", hints.len(), start + 100);
    }
}

/// A cluster that grows without restarts: a node started with one peer (a
/// host name) meets every other node through what its peer tells it.
#[test]
fn a_node_that_knows_one_peer_meets_them_all() {
    let ports = free_ports(6);
    let (relays, clients) = (&ports[..3], &ports[3..]);
    let start = |i: usize, peer: Option<String>| {
        let mut args = vec![
            "--node-id".to_owned(),
            format!("grow{i}"),
            "--relay-listen".into(),
            format!("127.0.0.1:{}", relays[i]),
            "--cluster-secret".into(),
            SECRET.into(),
        ];
        if let Some(p) = peer {
            args.push("--peer".into());
            args.push(p);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::try_start_on(&format!("127.0.0.1:{}", clients[i]), &args).expect("node starts")
    };
    // grow0 knows no one; grow1 knows grow0; grow2 knows grow1 by name only.
    let n0 = start(0, None);
    let n1 = start(1, Some(format!("127.0.0.1:{}", relays[0])));
    let n2 = start(2, Some(format!("localhost:{}", relays[1])));
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in [&n0, &n1, &n2] {
        while n.metric("cchat_relay_link_up") < 2.0 {
            assert!(Instant::now() < deadline, "the cluster did not mesh through gossip");
            std::thread::sleep(Duration::from_millis(100));
        }
        n.wait_view(3);
    }
    // And it carries traffic between the two that never named each other.
    let names = ["grow0", "grow1", "grow2"];
    let rid =
        (0..200).map(|i| format!("g{i}")).find(|r| cchat::placement::node_for(r, names) == Some("grow0")).unwrap();
    let mut a = n2.client();
    a.login("a", &rid, Some("a"));
    let mut b = n0.client();
    b.login("b", &rid, Some("b"));
    a.say(&rid, "across the grown cluster");
    loop {
        let v = b.recv();
        if v["cmd"] == "message" {
            assert_eq!(v["msg"], "across the grown cluster");
            break;
        }
    }
}

/// Draining hands the rooms over first: while a node drains, its rooms'
/// messages from the other nodes' clients keep being taken, in one epoch,
/// with no seq skipped.
#[test]
fn a_draining_node_hands_its_rooms_over_before_it_goes() {
    let redis = crate::common::redis::Redis::start();
    let url = redis.url();
    let mut cl = Cluster::start_with(3, &["--store", &url]);
    let names = ["node0", "node1", "node2"];
    let rid =
        (0..200).map(|i| format!("dr{i}")).find(|r| cchat::placement::node_for(r, names) == Some("node2")).unwrap();
    let mut a = cl.node(0).client();
    a.login_echo("a", &rid, "a");
    let (epoch, first) = a.say_acked(&rid, "before").unwrap();
    let mut gone = cl.nodes[2].take().unwrap();
    // A client of the draining node: it is told to leave (1012) only once
    // the room has been handed over (the order is the point, not the time).
    let mut client = gone.client();
    client.login("c", "elsewhere", Some("c"));
    std::thread::sleep(Duration::from_millis(100));
    let rooms = |cl: &Cluster| cl.node(0).metric("cchat_rooms") + cl.node(1).metric("cchat_rooms");
    assert_eq!(rooms(&cl), 0.0, "node2 owns the room");
    gone.signal(15);
    let code = client.expect_close();
    assert_eq!(code, 1012);
    assert!(rooms(&cl) >= 1.0, "the room was handed over before node2's clients were told to leave");
    let mut last = first;
    for i in 0..20 {
        let (e, s) =
            a.say_acked(&rid, &format!("during {i}")).unwrap_or_else(|why| panic!("message {i} refused: {why}"));
        assert_eq!((e, s), (epoch, last + 1), "the same epoch, the next seq");
        last = s;
        std::thread::sleep(Duration::from_millis(30));
    }
    let t1 = Instant::now();
    while gone.child.try_wait().unwrap().is_none() {
        assert!(t1.elapsed() < Duration::from_secs(15), "the drained node did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (e, s) = a.say_acked(&rid, "after").unwrap();
    assert_eq!((e, s), (epoch, last + 1));
}

/// A drain under traffic, seen by everyone in a room the draining node
/// owned (history in Redis): a member on another node gets every message,
/// in order, with no seq skipped (its re-join at the new owner catches up
/// what was sent before it came, and messages that went by the old owner
/// are passed on); the drained node's member, back on another node with
/// `since`, is recovered and continues where it stopped.
#[test]
fn a_drain_under_traffic_skips_nothing_for_any_member() {
    let redis = crate::common::redis::Redis::start();
    let url = redis.url();
    let mut cl = Cluster::start_with(3, &["--store", &url, "--rate-limit", "0"]);
    let names = ["node0", "node1", "node2"];
    let rid =
        (0..200).map(|i| format!("dt{i}")).find(|r| cchat::placement::node_for(r, names) == Some("node2")).unwrap();
    let mut watcher = cl.node(0).client();
    watcher.login("w", &rid, Some("w"));
    let mut gone = cl.nodes[2].take().unwrap();
    let mut drained = gone.client();
    drained.login("d", &rid, Some("d"));
    let mut sender = cl.node(1).client();
    sender.login_echo("s", &rid, "s");
    let (epoch, first) = sender.say_acked(&rid, "first").unwrap();
    // Messages keep coming, each sent once (no wait for its ack), through
    // the whole drain.
    let r = rid.clone();
    let traffic = std::thread::spawn(move || {
        for i in 0..150 {
            sender.send(
                json!({"cmd": "message", "type": "text", "rid": r, "msg": format!("t{i}"), "mid": format!("t{i}")}),
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        sender
    });
    std::thread::sleep(Duration::from_millis(300));
    gone.signal(15);
    // The drained member reads until it is told to go, then comes back on
    // node0 with where it stopped.
    let mut seen = Vec::new();
    drained.ws.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    loop {
        match drained.ws.read().expect("a close frame") {
            tungstenite::Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["cmd"] == "message" {
                    assert_eq!(v["epoch"], epoch);
                    seen.push(v["seq"].as_u64().unwrap());
                }
            }
            tungstenite::Message::Close(f) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1012));
                break;
            }
            _ => {}
        }
    }
    let mut back = cl.node(0).client();
    let since = json!({"epoch": epoch, "seq": seen.last().unwrap()});
    back.send(json!({"cmd": "login", "name": "d", "rid": rid, "uid": "d", "since": since}));
    let ack = loop {
        let v = back.recv();
        if v["cmd"] == "login" && v["uid"] == "d" {
            break v;
        }
    };
    assert_eq!(ack["recovered"], true, "{ack}");
    let mut sender = traffic.join().unwrap();
    sender.send(json!({"cmd": "message", "type": "text", "rid": rid, "msg": "last", "mid": "last"}));
    sender.ws.get_mut().set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut frames = Vec::new();
    let last = loop {
        match sender.ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["msg"] == "last" {
                    break v["seq"].as_u64().unwrap();
                }
                frames.push(v);
            }
            Ok(_) => {}
            Err(e) => panic!("no echo of the last message ({e}); the sender had: {frames:?}"),
        }
    };
    // Everyone has every seq from the first message to the last, once, in order.
    let read_to_last = |c: &mut crate::common::Client, mut got: Vec<u64>| {
        while got.last() != Some(&last) {
            let v = c.recv();
            if v["cmd"] == "message" {
                assert_eq!(v["epoch"], epoch, "renumbered");
                got.push(v["seq"].as_u64().unwrap());
            }
        }
        got
    };
    let expected: Vec<u64> = (first..=last).collect();
    let w = read_to_last(&mut watcher, Vec::new());
    assert_eq!(w, expected, "the member on node0 missed or repeated a message");
    let d = read_to_last(&mut back, seen);
    assert_eq!(d, expected, "the drained member missed or repeated a message");
    let _ = gone.child.wait();
}

/// A read marker set on one node reaches the user's device on the other,
/// whichever node owns the room, and the next login on either node
/// carries it.
#[test]
fn read_markers_cross_nodes() {
    let c = Cluster::start(2);
    for owner in ["node0", "node1"] {
        let other = if owner == "node0" { "node1" } else { "node0" };
        let rid = room_owned_by("reads", owner, other);
        let mut bob = c.node(1).client();
        login(&mut bob, "Bob", &rid, "bob");
        for i in 1..=3 {
            bob.say_acked(&rid, &format!("m{i}")).unwrap();
        }
        let mut here = c.node(0).client();
        here.login("Ann", &rid, Some("ann"));
        let mut there = c.node(1).client();
        there.login("Ann", &rid, Some("ann"));
        here.send(serde_json::json!({"cmd": "read", "rid": rid, "seq": 2}));
        loop {
            let v = there.recv();
            if v["cmd"] == "read" {
                assert_eq!((v["rid"].as_str(), v["seq"].as_u64()), (Some(rid.as_str()), Some(2)), "{v}");
                break;
            }
        }
        for n in [0, 1] {
            let mut d = c.node(n).client();
            let ack = d.login("Ann", &rid, Some("ann"));
            assert_eq!((ack["read"].as_u64(), ack["unread"].as_u64()), (Some(2), Some(1)), "{owner}, node{n}: {ack}");
        }
    }
}
