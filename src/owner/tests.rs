//! Unit tests of the module that includes this file.

use super::*;
use crate::protocol::MsgType;

use crate::ids::testing::id;

fn conn(node: u16, shard: u16, key: u32) -> ConnRef {
    ConnRef { node, shard, key, generation: 1 }
}

/// A message from `from` (user `uid`) to room "r", private to `tid` if given.
fn publish(from: ConnRef, uid: &str, msg: &str, tid: Option<&str>) -> Request {
    Request::Publish(Box::new(Publish {
        rid: id("r"),
        from,
        uid: id(uid),
        name: Name::parse(uid).unwrap(),
        mtype: MsgType::Text,
        msg: msg.into(),
        tid: tid.map(id),
        mid: None,
        reply: None,
        echo: false,
    }))
}

fn owner() -> Owner {
    Owner::new(2, 10, 1, Box::new(|| 7))
}

fn join(o: &mut Owner, c: ConnRef, uid: &str) -> Vec<Out> {
    let mut out = Vec::new();
    let req = Request::Join {
        rid: id("r"),
        conn: c,
        uid: id(uid),
        name: Name::parse(uid).unwrap(),
        echo: false,
        rejoin: false,
        since: None,
    };
    o.handle(req, 0, &mut out);
    out
}

/// The payload of a WebSocket text frame the server encoded.
fn text(frame: &Bytes) -> String {
    let (op, r, used) = crate::ws::parse_server_frame(frame).unwrap().unwrap();
    assert_eq!((op, used), (1, frame.len()));
    String::from_utf8(frame[r].to_vec()).unwrap()
}

#[test]
fn a_join_acks_the_joiner_and_announces_to_every_other_shard_and_node() {
    let mut o = owner();
    join(&mut o, conn(0, 0, 1), "a");
    join(&mut o, conn(3, 5, 9), "b");
    let out = join(&mut o, conn(0, 1, 2), "c");
    assert_eq!(o.live_rooms(), 1);
    let [ack, to_shard0, to_shard1, to_node3] = &out[..] else { panic!("{out:?}") };
    let Out { dest: Dest::Shard(1), msg: Delivery::Joined { ack, .. } } = ack else { panic!("{ack:?}") };
    assert_eq!(text(ack), r#"{"cmd":"login","uid":"c","name":"c","rid":"r"}"#);
    for (o, dest) in [(to_shard0, Dest::Shard(0)), (to_shard1, Dest::Shard(1)), (to_node3, Dest::Node(3))] {
        assert_eq!(o.dest, dest);
        let Delivery::Deliver { frame, audience: Audience::AllExcept(except), .. } = &o.msg else { panic!() };
        assert_eq!(text(frame), r#"{"cmd":"newUser","uid":"c","name":"c","rid":"r"}"#);
        // The joiner is left out on this node's shards (only its own
        // has it), never on another node.
        let want = if dest == Dest::Node(3) { None } else { Some(conn(0, 1, 2)) };
        assert_eq!(*except, want);
    }
}

#[test]
fn a_message_is_numbered_stored_and_sent_once_per_destination() {
    let mut o = owner();
    join(&mut o, conn(0, 0, 1), "a");
    join(&mut o, conn(0, 0, 2), "b");
    join(&mut o, conn(2, 0, 3), "c");
    let mut out = Vec::new();
    let p = publish(conn(0, 0, 1), "a", "hi", None);
    assert_eq!(o.handle(p, 1_700_000_000_000, &mut out), None);
    let want = r#"{"cmd":"message","uid":"a","name":"a","type":"text","rid":"r","msg":"hi","seq":1,"epoch":7,"ts":1700000000000}"#;
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].dest, Dest::Shard(0));
    assert_eq!(out[1].dest, Dest::Node(2));
    let (Delivery::Deliver { frame: f0, audience: a0, .. }, Delivery::Deliver { frame: f1, audience: a1, .. }) =
        (&out[0].msg, &out[1].msg)
    else {
        panic!()
    };
    assert_eq!(text(f0), want);
    assert_eq!(f0.as_ptr(), f1.as_ptr(), "one encoding, shared");
    assert!(matches!(a0, Audience::AllExcept(Some(c)) if *c == conn(0, 0, 1)));
    assert!(matches!(a1, Audience::AllExcept(None)));
    // History holds the message as members received it.
    out.clear();
    o.handle(
        Request::GetHistory { rid: id("r"), conn: conn(0, 1, 4), since: None, before: None, epoch: None, limit: None },
        0,
        &mut out,
    );
    let [Out { dest: Dest::Shard(1), msg: Delivery::Direct { frame, .. } }] = &out[..] else { panic!("{out:?}") };
    assert_eq!(text(frame), format!(r#"{{"cmd":"getHistory","rid":"r","epoch":7,"msgs":[{want}]}}"#));
}

#[test]
fn private_messages_reach_the_target_only_and_errors_go_back() {
    let mut o = owner();
    join(&mut o, conn(0, 0, 1), "a");
    join(&mut o, conn(0, 1, 2), "b");
    let mut out = Vec::new();
    let whisper = |tid: &str, from| publish(from, "a", "psst", Some(tid));
    o.handle(whisper("b", conn(0, 0, 1)), 0, &mut out);
    let [Out { dest: Dest::Shard(1), msg: Delivery::Deliver { audience: Audience::Only(to), frame, .. } }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(to, &vec![conn(0, 1, 2)]);
    assert!(text(frame).contains(r#""tid":"b","seq":0"#), "carries the current seq: {}", text(frame));
    out.clear();
    assert_eq!(o.handle(whisper("nobody", conn(0, 0, 1)), 0, &mut out), Some(ERR_INVALID));
    let [Out { dest: Dest::Shard(0), msg: Delivery::Direct { frame, .. } }] = &out[..] else { panic!("{out:?}") };
    assert_eq!(text(frame), r#"{"cmd":"error","errCode":50,"errMsg":"tid is not in the room"}"#);
    out.clear();
    assert_eq!(o.handle(whisper("b", conn(0, 0, 9)), 0, &mut out), Some(ERR_INVALID));
}

#[test]
fn rooms_that_never_had_a_message_are_forgotten_when_they_empty() {
    let mut o = owner();
    let mut out = Vec::new();
    for i in 0..1000 {
        let rid = id(&format!("r{i}"));
        let join = Request::Join {
            rid: rid.clone(),
            conn: conn(0, 0, 1),
            uid: id("a"),
            name: Name::parse("a").unwrap(),
            echo: false,
            rejoin: false,
            since: None,
        };
        o.handle(join, 0, &mut out);
        o.handle(Request::Leave { rid, conn: conn(0, 0, 1), ack: false }, 0, &mut out);
    }
    assert_eq!(o.rooms_held(), 0);
    // A room with a message keeps its sequence when it empties.
    join(&mut o, conn(0, 0, 1), "a");
    let p = publish(conn(0, 0, 1), "a", "m", None);
    o.handle(p, 0, &mut out);
    o.handle(Request::Leave { rid: id("r"), conn: conn(0, 0, 1), ack: false }, 0, &mut out);
    assert_eq!(o.rooms_held(), 1);
    out.clear();
    join(&mut o, conn(0, 0, 2), "b");
    o.handle(
        Request::GetHistory { rid: id("r"), conn: conn(0, 0, 2), since: None, before: None, epoch: None, limit: None },
        0,
        &mut out,
    );
    let Some(Out { msg: Delivery::Direct { frame, .. }, .. }) = out.last() else { panic!("{out:?}") };
    assert!(text(frame).contains(r#""seq":1"#));
}

#[test]
fn leaving_and_a_dead_node_announce_users_gone() {
    let mut o = owner();
    join(&mut o, conn(0, 0, 1), "a");
    join(&mut o, conn(4, 0, 2), "b");
    let mut out = Vec::new();
    o.node_down(4, 0, &mut out);
    let [Out { dest: Dest::Shard(0), msg: Delivery::Deliver { frame, .. } }] = &out[..] else { panic!("{out:?}") };
    assert_eq!(text(frame), r#"{"cmd":"userLeave","uid":"b","name":"b","rid":"r"}"#);
    out.clear();
    o.handle(Request::Leave { rid: id("r"), conn: conn(0, 0, 1), ack: true }, 0, &mut out);
    let [Out { msg: Delivery::Direct { frame, .. }, .. }] = &out[..] else { panic!("{out:?}") };
    assert_eq!(text(frame), r#"{"cmd":"logout","rid":"r"}"#);
    assert_eq!(o.live_rooms(), 0);
}

/// With a log: an emptied room is evicted after the delay, only its index
/// stays; a join brings it back with the same epoch and the next seq, and a
/// history request beyond what memory holds is planned as a disk read of
/// exactly the missing seqs, followed by memory's.
#[test]
fn an_empty_room_is_evicted_and_comes_back_from_its_index() {
    let mut o = Owner::new(2, 2, 1, Box::new(|| 7)); // 2 messages in memory
    o.enable_journal();
    o.set_storage(100, 50, 1000);
    let mut out = Vec::new();
    join(&mut o, conn(0, 0, 1), "a");
    for k in 0..5 {
        o.handle(publish(conn(0, 0, 1), "a", &format!("m{k}"), None), 0, &mut out);
    }
    // The log writer wrote them: seq 1..=5 at offsets 100, 200, ...
    let batch = o.journal().unwrap().take();
    assert_eq!(batch.marks.len(), 5);
    o.on_written(&batch.marks, 0, 1, 100);
    o.handle(Request::Leave { rid: id("r"), conn: conn(0, 0, 1), ack: false }, 1000, &mut out);
    assert_eq!((o.rooms_held(), o.evict_idle(1049)), (1, 0), "not before the delay");
    assert_eq!(o.evict_idle(1050), 1);
    assert_eq!((o.rooms_held(), o.evicted_rooms()), (0, 1));

    // Evicted: history comes from disk alone.
    assert!(o.plan_history(&id("r"), None, None, None, 3, ReadReply::Conn(conn(0, 0, 9))).is_none());
    let r = o.take_reads().pop().unwrap();
    assert_eq!(r.locs.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert!(r.tail.is_empty());
    assert_eq!((r.epoch, r.locs[0].2.off()), (7, 100 + batch.marks[2].off));

    // Back: same epoch, next seq; memory holds the new message, the disk the rest.
    out.clear();
    join(&mut o, conn(0, 0, 2), "b");
    // Coming back, the room reads its newest records back (ids, authors,
    // changes) before it takes a message.
    let back = o.take_reads().pop().expect("the room's records are read back");
    assert!(matches!(back.reply, ReadReply::Mids(_)));
    assert_eq!(back.locs.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    for req in o.mids_loaded(&id("r"), Some(Vec::new()), 2000) {
        o.handle(req, 2000, &mut out);
    }
    o.handle(publish(conn(0, 0, 2), "b", "m5", None), 2000, &mut out);
    let Some(Out { msg: Delivery::Deliver { frame, .. }, .. }) = out.last() else { panic!("{out:?}") };
    assert!(text(frame).contains(r#""seq":6,"epoch":7"#), "{}", text(frame));
    assert!(o.plan_history(&id("r"), Some(2), None, None, 10, ReadReply::Conn(conn(0, 0, 9))).is_none());
    let r = o.take_reads().pop().unwrap();
    assert_eq!(r.locs.iter().map(|(_, s, _)| *s).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(r.tail.len(), 1, "seq 6 from memory");
    // Within memory: answered at once.
    assert!(o.plan_history(&id("r"), Some(5), None, None, 10, ReadReply::Conn(conn(0, 0, 9))).is_some());

    // Retention deletes the segment: an evicted room with nothing left on
    // disk is forgotten (used again, it starts a new epoch).
    o.handle(Request::Leave { rid: id("r"), conn: conn(0, 0, 2), ack: false }, 3000, &mut out);
    o.evict_idle(4000);
    o.on_segments_deleted(0, 1);
    assert_eq!(o.evicted_rooms(), 0);
}

/// Past `--max-evicted-rooms` the rooms evicted longest ago are forgotten
/// (a join then starts a new epoch), and the eviction order stays bounded
/// however often rooms are evicted and used again.
#[test]
fn evicted_rooms_are_capped_oldest_first() {
    let epochs = std::cell::Cell::new(100);
    let mut o = Owner::new(
        2,
        2,
        1,
        Box::new(move || {
            epochs.set(epochs.get() + 1);
            epochs.get()
        }),
    );
    o.enable_journal();
    o.set_storage(100, 0, 3);
    let mut out = Vec::new();
    let room = |i: usize| id(&format!("r{i}"));
    let visit = |o: &mut Owner, i: usize, now: u64, out: &mut Vec<Out>| {
        let c = conn(0, 0, 1);
        let join = Request::Join {
            rid: room(i),
            conn: c,
            uid: id("a"),
            name: Name::parse("a").unwrap(),
            echo: true,
            rejoin: false,
            since: None,
        };
        o.handle(join, now, out);
        let p = Publish {
            rid: room(i),
            from: c,
            uid: id("a"),
            name: Name::parse("a").unwrap(),
            mtype: MsgType::Text,
            msg: "m".into(),
            tid: None,
            mid: None,
            reply: None,
            echo: false,
        };
        o.handle(Request::Publish(Box::new(p)), now, out);
        o.handle(Request::Leave { rid: room(i), conn: c, ack: false }, now, out);
        o.evict_idle(now);
    };
    for i in 0..5 {
        visit(&mut o, i, i as u64, &mut out);
    }
    assert_eq!(o.evicted_rooms(), 3, "capped");
    // r0 and r1 were forgotten: a new epoch and seq 1; r4 continues at seq 2.
    out.clear();
    visit(&mut o, 0, 10, &mut out);
    visit(&mut o, 4, 11, &mut out);
    let seqs: Vec<String> = out
        .iter()
        .filter_map(|o| match &o.msg {
            Delivery::Deliver { frame, .. } => Some(text(frame)),
            _ => None,
        })
        .filter(|t| t.contains(r#""cmd":"message""#))
        .collect();
    assert!(seqs[0].contains(r#""seq":1"#) && seqs[1].contains(r#""seq":2"#), "{seqs:?}");
    // Rooms evicted and used again many times: the order list stays small.
    for k in 0..5000 {
        visit(&mut o, k % 3, 100 + k as u64, &mut out);
        out.clear();
    }
    assert!(o.evicted_order_len() <= 2 * o.evicted_rooms() + 1024);
}

/// A history answer larger than the reply budget keeps the newest messages
/// (scrolling back) or the oldest (paging forward), never fewer than one.
#[test]
fn history_answers_fit_the_reply_budget() {
    let ten: Vec<Bytes> = (0..10).map(|k| Bytes::from(format!("{k:09}"))).collect(); // 10 bytes each with the comma
    let mut back = ten.clone();
    fit(&mut back, false, 35);
    assert_eq!(back, ten[7..].to_vec());
    let mut fwd = ten.clone();
    fit(&mut fwd, true, 35);
    assert_eq!(fwd, ten[..3].to_vec());
    let mut one = ten.clone();
    fit(&mut one, true, 1);
    assert_eq!(one.len(), 1);
    let mut o = owner();
    o.reply_budget = 25;
    let mut out = Vec::new();
    join(&mut o, conn(0, 0, 1), "a");
    for k in 0..5 {
        o.handle(publish(conn(0, 0, 1), "a", &format!("m{k}"), None), 0, &mut out);
    }
    let (_, _, msgs) = o.plan_history(&id("r"), None, None, None, 100, ReadReply::Conn(conn(0, 0, 1))).unwrap();
    assert_eq!(msgs.len(), 1, "each stored message is longer than 12 bytes");
    assert!(std::str::from_utf8(&msgs[0]).unwrap().contains("m4"), "the newest");
}

/// Without a log (`--durability memory`) an evicted room is forgotten with
/// its history: memory stays bounded, and the room starts a new epoch.
#[test]
fn without_a_log_evicted_rooms_are_forgotten() {
    let epochs = std::cell::Cell::new(10);
    let mut o = Owner::new(
        2,
        10,
        1,
        Box::new(move || {
            epochs.set(epochs.get() + 1);
            epochs.get()
        }),
    );
    o.set_storage(100, 0, 1000);
    let mut out = Vec::new();
    join(&mut o, conn(0, 0, 1), "a");
    o.handle(publish(conn(0, 0, 1), "a", "m", None), 0, &mut out);
    o.handle(Request::Leave { rid: id("r"), conn: conn(0, 0, 1), ack: false }, 0, &mut out);
    assert_eq!((o.evict_idle(0), o.rooms_held(), o.evicted_rooms()), (0, 0, 0));
    out.clear();
    join(&mut o, conn(0, 0, 1), "a");
    o.handle(publish(conn(0, 0, 1), "a", "m", None), 0, &mut out);
    let Some(Out { msg: Delivery::Deliver { frame, .. }, .. }) = out.last() else { panic!("{out:?}") };
    assert!(text(frame).contains(r#""seq":1,"epoch":12"#), "{}", text(frame));
}

/// While the log writer is stuck, the journal stops growing: past its cap
/// messages are refused (error 50), not queued without bound.
#[test]
fn a_stuck_log_writer_bounds_the_journal() {
    let mut o = owner();
    o.enable_journal();
    let mut out = Vec::new();
    join(&mut o, conn(0, 0, 1), "a");
    let big = "x".repeat(64 << 10);
    let mut refused = None;
    for k in 0..1000 {
        out.clear();
        if o.handle(publish(conn(0, 0, 1), "a", &big, None), 0, &mut out).is_some() {
            refused = Some(k);
            break;
        }
    }
    let k = refused.expect("refused once the journal is full");
    assert!(k >= 200 && o.journal().unwrap().pending_bytes() <= JOURNAL_MAX + (70 << 10), "refused after {k}");
    o.journal().unwrap().take();
    out.clear();
    assert_eq!(o.handle(publish(conn(0, 0, 1), "a", "small", None), 0, &mut out), None, "accepted once written");
}

#[test]
fn a_change_of_name_is_announced_whichever_connection_the_owner_hears_first() {
    // The page's new connection (new name) logs in before its old one is
    // seen to leave: the room still learns the new name, and the old
    // connection's departure announces nothing (the user is still here).
    let mut o = owner();
    join(&mut o, conn(0, 0, 1), "ann");
    join(&mut o, conn(0, 1, 2), "bob");
    let mut out = Vec::new();
    let (rid, uid, name) = (id("r"), id("ann"), Name::parse("Annie").unwrap());
    o.handle(
        Request::Join { rid, conn: conn(0, 1, 3), uid, name, echo: false, rejoin: false, since: None },
        0,
        &mut out,
    );
    let announced: Vec<String> = out
        .iter()
        .filter_map(|o| match &o.msg {
            Delivery::Deliver { frame, .. } => Some(text(frame)),
            _ => None,
        })
        .collect();
    assert!(
        !announced.is_empty() && announced.iter().all(|t| t.contains("newUser") && t.contains("Annie")),
        "{announced:?}"
    );
    let mut out = Vec::new();
    o.handle(Request::Leave { rid: id("r"), conn: conn(0, 0, 1), ack: false }, 0, &mut out);
    assert!(out.iter().all(|o| !matches!(o.msg, Delivery::Deliver { .. })), "no userLeave: {out:?}");
}

#[test]
fn a_resume_made_twice_for_one_connection_is_answered_once() {
    let mut o = owner();
    join(&mut o, conn(0, 0, 1), "a");
    let mut out = Vec::new();
    for i in 0..3 {
        o.handle(publish(conn(0, 0, 1), "a", &format!("m{i}"), None), 0, &mut out);
    }
    let resume = || Request::Join {
        rid: id("r"),
        conn: conn(1, 0, 9),
        uid: id("b"),
        name: Name::parse("b").unwrap(),
        echo: false,
        rejoin: false,
        since: Some(crate::protocol::Since { epoch: 7, seq: 1 }),
    };
    out.clear();
    o.handle(resume(), 0, &mut out);
    let acks = |out: &[Out]| out.iter().filter(|o| matches!(o.msg, Delivery::Joined { .. })).count();
    assert_eq!(acks(&out), 1, "{out:?}");
    let Some(Delivery::Joined { ack, .. }) = out.iter().map(|o| &o.msg).find(|m| matches!(m, Delivery::Joined { .. }))
    else {
        unreachable!()
    };
    assert!(String::from_utf8_lossy(ack).contains(r#""msg":"m2""#), "the missed messages follow the ack");
    // The same login again (handed on by a drained node, and made again
    // by the member's node for the room's move): no second replay.
    out.clear();
    o.handle(resume(), 0, &mut out);
    assert_eq!(acks(&out), 0, "{out:?}");
}

/// A read marker moves forward only, never past the room's newest seq;
/// the user's other connections (here on another shard and another node)
/// are told, the reader and other users are not; a later login of the
/// user gets it in its ack with the count of seqs after it (a user with
/// no marker gets CChat's ack as it was).
#[test]
fn a_read_marker_reaches_the_users_other_connections_and_its_next_ack() {
    let mut o = owner();
    let (a1, a2, a3, b) = (conn(0, 0, 1), conn(0, 1, 2), conn(4, 0, 3), conn(0, 0, 4));
    for (c, u) in [(a1, "ann"), (a2, "ann"), (a3, "ann"), (b, "bob")] {
        join(&mut o, c, u);
    }
    let mut out = Vec::new();
    for i in 0..5 {
        o.handle(publish(b, "bob", &format!("m{i}"), None), 0, &mut out);
    }
    let read = |o: &mut Owner, seq: u64| {
        let mut out = Vec::new();
        o.handle(Request::Read { rid: id("r"), conn: a1, uid: id("ann"), seq }, 0, &mut out);
        out
    };
    let out = read(&mut o, 3);
    let told: Vec<(Dest, ConnRef, String)> = out
        .iter()
        .map(|o| match &o.msg {
            Delivery::Direct { conn, frame } => (o.dest, *conn, text(frame)),
            other => panic!("{other:?}"),
        })
        .collect();
    let frame = r#"{"cmd":"read","rid":"r","seq":3}"#.to_string();
    assert_eq!(told, vec![(Dest::Shard(1), a2, frame.clone()), (Dest::Node(4), a3, frame)]);
    assert!(read(&mut o, 2).is_empty(), "back: nothing moves, nobody is told");
    assert!(read(&mut o, 3).is_empty(), "the same: likewise");
    let out = read(&mut o, 99);
    assert!(
        out.iter().all(|o| matches!(&o.msg, Delivery::Direct { frame, .. } if text(frame).ends_with(r#""seq":5}"#)))
    );
    assert_eq!(o.read_state(&id("r"), &id("ann")), Some((5, 0)), "never past the newest");
    let mut out = Vec::new();
    o.handle(publish(b, "bob", "m5", None), 0, &mut out);
    o.handle(publish(b, "bob", "m6", None), 0, &mut out);
    let out = join(&mut o, conn(0, 1, 9), "ann");
    let Some(Out { msg: Delivery::Joined { ack, .. }, .. }) = out.first() else { panic!("{out:?}") };
    assert_eq!(text(ack), r#"{"cmd":"login","uid":"ann","name":"ann","rid":"r","read":5,"unread":2}"#);
    let out = join(&mut o, conn(0, 1, 10), "bob");
    let Some(Out { msg: Delivery::Joined { ack, .. }, .. }) = out.first() else { panic!("{out:?}") };
    assert_eq!(text(ack), r#"{"cmd":"login","uid":"bob","name":"bob","rid":"r"}"#, "no marker: CChat's ack");
    // Another user's connection cannot move ann's marker.
    let mut out = Vec::new();
    o.handle(Request::Read { rid: id("r"), conn: b, uid: id("ann"), seq: 7 }, 0, &mut out);
    assert!(out.is_empty());
    assert_eq!(o.read_state(&id("r"), &id("ann")), Some((5, 2)));
}
