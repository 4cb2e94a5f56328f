//! Unit tests of the owner's claims under a shared store (no store: the
//! tests answer for it).

use super::super::{Dest, Owner};
use super::*;
use crate::ids::Name;
use crate::msg::{ConnRef, Delivery, Publish};
use crate::protocol::MsgType;

use crate::ids::testing::id;

fn conn(key: u32) -> ConnRef {
    ConnRef { node: 0, shard: 0, key, generation: 1 }
}

fn publish(from: ConnRef, msg: &str) -> Request {
    let name = Name::parse("a").unwrap();
    let (rid, uid, mtype, msg, tid) = (id("r"), id("a"), MsgType::Text, msg.into(), None);
    Request::Publish(Box::new(Publish { rid, from, uid, name, mtype, msg, tid, mid: None, reply: None, echo: false }))
}

/// An owner under a shared store with member `a` (conn 1) in room "r".
fn owner() -> Owner {
    let epochs = std::cell::Cell::new(100);
    let mut o = Owner::new(
        1,
        10,
        1,
        Box::new(move || {
            epochs.set(epochs.get() + 1);
            epochs.get()
        }),
    );
    o.enable_remote(1000);
    let (rid, conn, uid, name) = (id("r"), conn(1), id("a"), Name::parse("a").unwrap());
    o.handle(Request::Join { rid, conn, uid, name, echo: true, rejoin: false, since: None }, 0, &mut Vec::new());
    // A room coming into memory reads its newest records back from the
    // store (its ids, authors and changes): here there are none.
    let (_, reads, marks) = o.take_store_jobs().unwrap_or_default();
    assert!(reads.iter().any(|r| matches!(r.reply, ReadReply::Mids(_))), "the room's records are read back");
    assert!(matches!(&marks[..], [MarkJob::Load(r)] if r.as_str() == "r"), "and its read markers: {marks:?}");
    assert!(o.mids_loaded(&id("r"), Some(Vec::new()), 0).is_empty());
    o
}

fn claims(o: &mut Owner) -> Vec<ClaimJob> {
    o.take_store_jobs().map(|(c, _, _)| c).unwrap_or_default()
}

/// (epoch, seq) of the messages the outs broadcast.
fn sent(out: &[Out]) -> Vec<(u64, u64)> {
    out.iter()
        .filter_map(|o| match &o.msg {
            Delivery::Deliver { frame, .. } => {
                let (_, r, _) = crate::ws::parse_server_frame(frame).unwrap().unwrap();
                let v: serde_json::Value = serde_json::from_slice(&frame[r]).unwrap();
                Some((v["epoch"].as_u64()?, v["seq"].as_u64()?))
            }
            _ => None,
        })
        .collect()
}

/// Handles `req` and whatever it releases; returns what went out.
fn run(o: &mut Owner, req: Request, now: u64) -> Vec<Out> {
    let mut out = Vec::new();
    o.handle(req, now, &mut out);
    out
}

/// Answers the pending claim with (epoch, top) and handles what waited.
fn answer(o: &mut Owner, job: &ClaimJob, state: Result<(u64, u64), Refusal>) -> Vec<Out> {
    let mut out = Vec::new();
    let waiting = o.on_claimed(&job.rid, job.token, state, 0, &mut out);
    for req in waiting {
        o.handle(req, 0, &mut out);
    }
    out
}

/// Sends "x" and answers the room's claim with epoch 55, top 0: the room
/// is held under the returned claim (and "x" went out as 55/1).
fn claimed(o: &mut Owner) -> ClaimJob {
    run(o, publish(conn(1), "x"), 0);
    let c = claims(o).pop().expect("a claim");
    assert_eq!(sent(&answer(o, &c, Ok((55, 0)))), vec![(55, 1)]);
    c
}

fn errors(out: &[Out]) -> usize {
    out.iter().filter(|o| matches!(o.msg, Delivery::Direct { .. }) && o.dest == Dest::Shard(0)).count()
}

#[test]
fn messages_wait_for_the_claim_and_continue_the_stores_sequence() {
    let mut o = owner();
    assert!(run(&mut o, publish(conn(1), "x"), 0).is_empty(), "nothing before the store answers");
    assert!(run(&mut o, publish(conn(1), "y"), 0).is_empty());
    let c = claims(&mut o);
    assert_eq!(c.len(), 1, "one claim however many messages wait");
    assert!(!c[0].fresh);
    let out = answer(&mut o, &c[0], Ok((55, 9)));
    assert_eq!(sent(&out), vec![(55, 10), (55, 11)], "the store's epoch, its next seqs, in order");
    let marks = o.journal().unwrap().take().marks;
    assert!(marks.iter().all(|m| m.token == c[0].token && m.epoch == 55));
    assert_eq!(sent(&run(&mut o, publish(conn(1), "z"), 0)), vec![(55, 12)], "claimed: at once");
    assert!(claims(&mut o).is_empty());
}

fn refuse(o: &mut Owner, token: u64, why: Refusal, now: u64) {
    o.on_refused(&mut Refused { rid: id("r"), token, first: 1, last: 1, why, store_top: None }, now);
}

#[test]
fn a_store_that_lost_the_room_gives_a_fresh_epoch() {
    let mut o = owner();
    let c = claimed(&mut o);
    refuse(&mut o, c.token, Refusal::Lost, 0);
    run(&mut o, publish(conn(1), "y"), 0);
    let c2 = claims(&mut o);
    assert!(c2[0].fresh && c2[0].token != c.token && c2[0].epoch != 55, "{c2:?}");
    let out = answer(&mut o, &c2[0], Ok((c2[0].epoch, 0)));
    assert_eq!(sent(&out), vec![(c2[0].epoch, 1)]);
    // A refusal of the older claim's messages changes nothing now.
    refuse(&mut o, c.token, Refusal::Fenced, 0);
    assert_eq!(sent(&run(&mut o, publish(conn(1), "z"), 0)).len(), 1);
}

#[test]
fn a_fenced_owner_gives_the_room_up_until_the_view_changes() {
    let mut o = owner();
    let c = claimed(&mut o);
    refuse(&mut o, c.token, Refusal::Fenced, 0);
    let out = run(&mut o, publish(conn(1), "y"), 0);
    assert_eq!((errors(&out), sent(&out).len()), (1, 0), "refused, not claimed again");
    assert!(claims(&mut o).is_empty());
    o.keep_own(&crate::cluster::View::solo("n"));
    run(&mut o, publish(conn(1), "z"), 0);
    assert_eq!(claims(&mut o).len(), 1, "claimed again after a change of view");
}

#[test]
fn an_unreachable_store_refuses_for_a_second_then_claims_again() {
    let mut o = owner();
    run(&mut o, publish(conn(1), "x"), 0);
    let c = claims(&mut o);
    let out = answer(&mut o, &c[0], Err(Refusal::Unavailable));
    assert_eq!(errors(&out), 1, "the waiting sender is told");
    assert_eq!(errors(&run(&mut o, publish(conn(1), "y"), 500)), 1, "refused meanwhile");
    assert!(claims(&mut o).is_empty());
    run(&mut o, publish(conn(1), "z"), 1500);
    let c2 = claims(&mut o);
    assert!(!c2[0].fresh, "the same epoch, from the store's top");
    let out = answer(&mut o, &c2[0], Ok((55, 4)));
    assert_eq!(sent(&out), vec![(55, 5)]);
    // Refused as unavailable while claimed: a second of refusals again.
    refuse(&mut o, c2[0].token, Refusal::Unavailable, 2000);
    assert_eq!(errors(&run(&mut o, publish(conn(1), "w"), 2100)), 1);
}

/// The text of the error frames in `out`.
fn error_texts(out: &[Out]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match &o.msg {
            Delivery::Direct { frame, .. } => Some(String::from_utf8_lossy(frame).into_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_full_store_says_so_to_the_senders_it_refuses() {
    let mut o = owner();
    run(&mut o, publish(conn(1), "x"), 0);
    let c = claims(&mut o);
    let out = answer(&mut o, &c[0], Err(Refusal::Full));
    assert!(error_texts(&out)[0].contains("message store full"), "{:?}", error_texts(&out));
    let out = run(&mut o, publish(conn(1), "y"), 500);
    assert!(error_texts(&out)[0].contains("message store full"), "refused meanwhile: {:?}", error_texts(&out));
    // Claimed under way, then refused as full by an append: the same.
    run(&mut o, publish(conn(1), "z"), 1500);
    let c2 = claims(&mut o);
    assert_eq!(sent(&answer(&mut o, &c2[0], Ok((55, 4)))), vec![(55, 5)]);
    refuse(&mut o, c2[0].token, Refusal::Full, 2000);
    let out = run(&mut o, publish(conn(1), "w"), 2100);
    assert!(error_texts(&out)[0].contains("message store full"), "{:?}", error_texts(&out));
}

#[test]
fn a_store_that_lost_acknowledged_messages_gives_a_fresh_epoch() {
    let mut o = owner();
    let c = claimed(&mut o);
    o.on_stored(&id("r"), c.token, 1); // acknowledged, so broadcast
    refuse(&mut o, c.token, Refusal::Unavailable, 0);
    run(&mut o, publish(conn(1), "y"), 2000);
    let c2 = claims(&mut o);
    assert!(!c2[0].fresh);
    // The store came back without seq 1 (a failover lost it): continuing
    // would number the next message 55/1 again.
    assert!(answer(&mut o, &c2[0], Ok((55, 0))).is_empty(), "nothing sent on a store that lost messages");
    let c3 = claims(&mut o);
    assert_eq!(c3.len(), 1);
    assert!(c3[0].fresh && c3[0].epoch != 55, "{c3:?}");
    assert_eq!(sent(&answer(&mut o, &c3[0], Ok((c3[0].epoch, 0)))), vec![(c3[0].epoch, 1)], "y, in the new epoch");
}

#[test]
fn requests_wait_in_order_while_a_claim_is_under_way() {
    let mut o = owner();
    run(&mut o, publish(conn(1), "x"), 0);
    // The member leaves right after its message: the leave must not
    // overtake it (nor empty the room under it).
    let (rid, conn) = (id("r"), conn(1));
    assert!(run(&mut o, Request::Leave { rid, conn, ack: true }, 0).is_empty(), "held behind the message");
    let c = claims(&mut o);
    let out = answer(&mut o, &c[0], Ok((55, 0)));
    assert_eq!(sent(&out), vec![(55, 1)], "the message went out first");
    assert!(out.iter().any(|o| matches!(o.msg, Delivery::Direct { .. })), "then the logout ack");
    assert_eq!(o.live_rooms(), 0);
}

#[test]
fn what_waits_for_a_claim_that_fails_is_refused_or_handled_never_dropped() {
    let mut o = owner();
    run(&mut o, publish(conn(1), "x"), 0);
    // A newcomer's join and the member's leave wait behind the message.
    let (rid, uid, name) = (id("r"), id("b"), Name::parse("b").unwrap());
    let join = Request::Join { rid: rid.clone(), conn: conn(2), uid, name, echo: false, rejoin: false, since: None };
    assert!(run(&mut o, join, 0).is_empty());
    assert!(run(&mut o, Request::Leave { rid, conn: conn(1), ack: true }, 0).is_empty());
    let c = claims(&mut o);
    let out = answer(&mut o, &c[0], Err(Refusal::Unavailable));
    assert_eq!(errors(&out), 2, "the message is refused, the leave acknowledged: {out:?}");
    assert!(
        out.iter().any(|x| matches!(&x.msg, Delivery::Joined { conn: c, .. } if *c == conn(2))),
        "the join is acknowledged: {out:?}"
    );
    assert_eq!(o.live_rooms(), 1, "b is in, a is out");
}

#[test]
fn a_fenced_owner_claims_again_after_a_while() {
    let mut o = owner();
    let c = claimed(&mut o);
    refuse(&mut o, c.token, Refusal::Fenced, 1000);
    assert_eq!(errors(&run(&mut o, publish(conn(1), "y"), 3000)), 1);
    run(&mut o, publish(conn(1), "z"), 7000);
    assert_eq!(claims(&mut o).len(), 1, "the other owner may have let go: claimed again");
}

#[test]
fn history_from_memory_holds_only_what_the_store_acknowledged() {
    let mut o = owner();
    let c = claimed(&mut o);
    let ask = |o: &mut Owner| {
        o.plan_history(&id("r"), None, None, None, 10, ReadReply::Conn(conn(1))).map(|(_, e, m)| (e, m.len()))
    };
    assert_eq!(ask(&mut o), Some((55, 0)), "seq 1 is not stored yet");
    o.on_stored(&id("r"), c.token, 1);
    assert_eq!(ask(&mut o), Some((55, 1)));
}

#[test]
fn what_waits_for_a_claim_goes_to_the_rooms_new_owner_when_it_moves() {
    let mut o = owner();
    run(&mut o, publish(conn(1), "x"), 0);
    assert_eq!(claims(&mut o).len(), 1);
    // A view in which another node owns "r".
    let view = (0..)
        .map(|i| crate::cluster::View { live: vec![("a".into(), 0), (format!("b{i}").into(), 1)], number: i })
        .find(|v| v.owner("r") == 1)
        .unwrap();
    let moved = o.keep_own(&view);
    assert_eq!(moved.len(), 1, "the message is handed on, not dropped");
    assert!(matches!(&moved[0], Request::Publish(p) if p.msg == "x"));
    assert_eq!(o.live_rooms(), 0);
}

/// A room's read markers come back from the store when it comes into
/// memory; its epoch and top are known only at its claim, so the claim is
/// made then (not at its first message), and the users present are told
/// their markers when it answers. A marker that moves is written back.
#[test]
fn read_markers_read_back_claim_the_room_and_are_told_after() {
    let mut o = owner();
    let mut out = Vec::new();
    o.on_reads(&id("r"), vec![(id("a"), 7, 3), (id("gone"), 7, 1)], 0, &mut out);
    assert!(out.is_empty(), "not told before the room's sequence is known");
    assert_eq!(o.read_state(&id("r"), &id("a")), None, "nor in an ack");
    let c = claims(&mut o);
    assert_eq!(c.len(), 1, "claimed at once");
    let out = answer(&mut o, &c[0], Ok((7, 5)));
    let told: Vec<(ConnRef, String)> = out
        .iter()
        .filter_map(|o| match &o.msg {
            Delivery::Direct { conn, frame } => {
                let (_, r, _) = crate::ws::parse_server_frame(frame).unwrap().unwrap();
                Some((*conn, String::from_utf8(frame[r].to_vec()).unwrap()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![(conn(1), r#"{"cmd":"read","rid":"r","seq":3}"#.to_string())]);
    assert_eq!(o.read_state(&id("r"), &id("a")), Some((3, 2)));
    run(&mut o, Request::Read { rid: id("r"), conn: conn(1), uid: id("a"), seq: 5 }, 0);
    let (_, _, marks) = o.take_store_jobs().unwrap_or_default();
    assert!(
        matches!(&marks[..], [MarkJob::Set(r, u, m)] if r.as_str() == "r" && u.as_str() == "a" && (m.epoch, m.seq) == (7, 5)),
        "{marks:?}"
    );
}
