use super::encoder::put_str;
use super::*;
use crate::ids::{Id, Name};
use crate::msg::{Audience, Change, ConnRef, Delivery, Publish, Request};
use crate::protocol::{MsgType, Since};
use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

fn conn(k: u32) -> ConnRef {
    ConnRef { node: 0, shard: 1, key: k, generation: 7 }
}

#[test]
fn a_disconnect_crosses_the_link() {
    let uid = Id::parse_str("dave").unwrap();
    let NodeMsg::Disconnect { uid: u, code } = round_trip(NodeMsg::Disconnect { uid: uid.clone(), code: 4000 }) else {
        panic!()
    };
    assert_eq!((u, code), (uid, 4000));
    // Cut short: an error, not a panic.
    let enc = encode(&NodeMsg::Disconnect { uid: Id::parse_str("d").unwrap(), code: 4000 });
    let mut short = BytesMut::from(&enc[..enc.len() - 1]);
    short[3] -= 1; // the length says one byte less
    assert!(decode(&mut short, 1).is_err());
}

#[test]
fn changes_cross_the_link() {
    use crate::protocol::ChangeKind;
    for change in [
        ChangeKind::Edit("néw".into()),
        ChangeKind::Delete,
        ChangeKind::React { emoji: "👍".into(), on: true },
        ChangeKind::React { emoji: "🎉".into(), on: false },
    ] {
        let c = Change {
            rid: Id::parse_str("r").unwrap(),
            from: conn(4),
            uid: Id::parse_str("u").unwrap(),
            seq: 9,
            change,
        };
        let m = round_trip(NodeMsg::ToOwner(Request::Change(Box::new(c.clone()))));
        let NodeMsg::ToOwner(Request::Change(d)) = m else { panic!() };
        assert_eq!((d.rid, d.uid, d.seq, d.change, d.from.node, d.from.key), (c.rid, c.uid, 9, c.change, 3, 4));
    }
}

#[test]
fn a_link_at_version_6_carries_what_v6_reads() {
    let round_trip_6 = |m: &NodeMsg| {
        let enc = encode_for(m, 6)?;
        let mut buf = BytesMut::from(&enc[..]);
        match decode_for(&mut buf, 3, 6).unwrap().unwrap() {
            Frame::Msg(m) => Some(m),
            other => panic!("{other:?}"),
        }
    };
    let join = NodeMsg::ToOwner(Request::Join {
        rid: Id::parse_str("r").unwrap(),
        conn: conn(5),
        uid: Id::parse_str("u").unwrap(),
        name: Name::parse("n").unwrap(),
        echo: true,
        rejoin: false,
        since: Some(Since { epoch: 1, seq: 2 }),
    });
    let Some(NodeMsg::ToOwner(Request::Join { since, echo, .. })) = round_trip_6(&join) else { panic!() };
    assert_eq!((since, echo), (None, true), "v6 has no resume");
    let publish = NodeMsg::ToOwner(Request::Publish(Box::new(Publish {
        rid: Id::parse_str("r").unwrap(),
        from: conn(1),
        uid: Id::parse_str("u").unwrap(),
        name: Name::parse("n").unwrap(),
        mtype: MsgType::Text,
        msg: "héllo".into(),
        tid: None,
        mid: Id::parse_str("m-1"),
        reply: Some(4),
        echo: true,
    })));
    let Some(NodeMsg::ToOwner(Request::Publish(p))) = round_trip_6(&publish) else { panic!() };
    assert_eq!((p.msg.as_str(), p.mid, p.reply), ("héllo", None, None));
    let typing = NodeMsg::ToOwner(Request::Typing {
        rid: Id::parse_str("r").unwrap(),
        conn: conn(1),
        uid: Id::parse_str("u").unwrap(),
        name: Name::parse("n").unwrap(),
    });
    assert!(encode_for(&typing, 6).is_none(), "v6 cannot read TYPING: not sent");
    let knock = NodeMsg::Knock { uid: Id::parse_str("u").unwrap(), frame: Bytes::from_static(b"x") };
    assert!(encode_for(&knock, 6).is_none());
    // And a v6 link refuses the frame types v6 does not have.
    let mut buf = BytesMut::from(&encode(&knock)[..]);
    assert!(decode_for(&mut buf, 3, 6).is_err());
    // At version 7 nothing changes.
    assert_eq!(encode_for(&publish, 7).unwrap(), encode(&publish));
}

/// A request passed on names its origin; the receiver decodes the
/// request as it was (its node is set from the origin, not the link).
#[test]
fn a_forwarded_request_crosses_the_link_with_its_origin() {
    let publish = Request::Publish(Box::new(Publish {
        rid: Id::parse_str("r").unwrap(),
        from: conn(5),
        uid: Id::parse_str("u").unwrap(),
        name: Name::parse("n").unwrap(),
        mtype: MsgType::Text,
        msg: "hi".into(),
        tid: None,
        mid: Some(Id::parse_str("m1").unwrap()),
        reply: None,
        echo: false,
    }));
    let join = Request::Join {
        rid: Id::parse_str("r").unwrap(),
        conn: conn(6),
        uid: Id::parse_str("u").unwrap(),
        name: Name::parse("n").unwrap(),
        echo: true,
        rejoin: true,
        since: Some(Since { epoch: 9, seq: 4 }),
    };
    for req in [publish, join] {
        let want = format!("{:?}", NodeMsg::ToOwner(req.clone()));
        let m = round_trip(NodeMsg::Forwarded { origin: "node1".into(), hops: 2, req });
        let NodeMsg::Forwarded { origin, hops, req } = m else { panic!("{m:?}") };
        assert_eq!((&*origin, hops), ("node1", 2));
        // Decoded with node 0: the relay sets it from `origin`.
        assert_eq!(format!("{:?}", NodeMsg::ToOwner(req)), want);
    }
    // A v7 link neither sends nor takes one (v7 would take the
    // connection for the sending node's).
    let fwd = NodeMsg::Forwarded {
        origin: "a".into(),
        hops: 0,
        req: Request::Leave { rid: Id::parse_str("r").unwrap(), conn: conn(1), ack: false },
    };
    assert!(encode_for(&fwd, 7).is_none());
    let mut buf = BytesMut::from(&encode(&fwd)[..]);
    assert!(decode_for(&mut buf, 3, 7).is_err());
    // Only a request may be inside.
    let mut bad = BytesMut::new();
    let inner = encode(&NodeMsg::Leaving);
    bad.put_u32((1 + 3 + 1 + inner.len() - 4) as u32);
    bad.put_u8(T_FORWARD);
    put_str(&mut bad, "a");
    bad.put_u8(0);
    bad.extend_from_slice(&inner[4..]);
    assert_eq!(decode(&mut bad, 3).unwrap_err(), CodecError::Invalid("forwarded frame type"));
}

#[test]
fn a_knock_crosses_the_link() {
    let frame = Bytes::from_static(b"\x81\x02{}");
    let m = round_trip(NodeMsg::Knock { uid: Id::parse_str("lee").unwrap(), frame: frame.clone() });
    let NodeMsg::Knock { uid, frame: f } = m else { panic!() };
    assert_eq!((uid.as_str(), f), ("lee", frame));
}

#[test]
fn api_questions_and_answers_cross_the_link() {
    let ask = NodeMsg::ApiAsk { ticket: 7, from: 0, request: "/api/online?rid=r".into() };
    let NodeMsg::ApiAsk { ticket, from, request } = round_trip(ask) else { panic!() };
    assert_eq!((ticket, from, request.as_str()), (7, 3, "/api/online?rid=r"), "from: the link's peer");
    let body = Bytes::from_static(br#"{"rid":"r","users":[]}"#);
    let answer = NodeMsg::ApiAnswer { ticket: 7, status: 200, body: body.clone() };
    let NodeMsg::ApiAnswer { ticket, status, body: b } = round_trip(answer) else { panic!() };
    assert_eq!((ticket, status, b), (7, 200, body));
}

fn round_trip(m: NodeMsg) -> NodeMsg {
    let enc = encode(&m);
    let mut buf = BytesMut::from(&enc[..]);
    match decode(&mut buf, 3).unwrap().unwrap() {
        Frame::Msg(m) => {
            assert!(buf.is_empty());
            m
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn requests_take_the_links_node() {
    let m = round_trip(NodeMsg::ToOwner(Request::Join {
        rid: Id::parse_str("r").unwrap(),
        conn: conn(5),
        uid: Id::parse_str("u").unwrap(),
        name: Name::parse("Zoë").unwrap(),
        echo: true,
        rejoin: false,
        since: Some(Since { epoch: 9, seq: 41 }),
    }));
    let NodeMsg::ToOwner(Request::Join { conn: c, name, echo, rejoin, since, .. }) = m else { panic!() };
    assert_eq!((c.node, c.key, c.generation), (3, 5, 7));
    assert_eq!((name.as_str(), echo, rejoin), ("Zoë", true, false));
    assert_eq!(since, Some(Since { epoch: 9, seq: 41 }));
    let m = round_trip(NodeMsg::ToOwner(Request::Publish(Box::new(Publish {
        rid: Id::parse_str("r").unwrap(),
        from: conn(1),
        uid: Id::parse_str("u").unwrap(),
        name: Name::parse("n").unwrap(),
        mtype: MsgType::Pic,
        msg: "héllo".into(),
        tid: Id::parse_str("t"),
        mid: Id::parse_str("m-1"),
        reply: Some(7),
        echo: true,
    }))));
    let NodeMsg::ToOwner(Request::Publish(p)) = m else { panic!() };
    assert_eq!((p.msg.as_str(), p.tid.unwrap().as_str(), p.from.node), ("héllo", "t", 3));
    assert_eq!(p.mid.as_deref(), Some("m-1"));
    assert!(p.echo, "the sender's echo flag crosses (ext bit 2)");
}

#[test]
fn owner_messages_keep_local_conns_and_bytes() {
    let frame = Bytes::from_static(b"\x81\x02{}");
    let m = round_trip(NodeMsg::ToMembers(Delivery::Deliver {
        rid: Id::parse_str("r").unwrap(),
        frame: frame.clone(),
        audience: Audience::Only(vec![conn(1), conn(2)]),
        t0: std::time::Instant::now(),
    }));
    let NodeMsg::ToMembers(Delivery::Deliver { frame: f, audience: Audience::Only(l), .. }) = m else { panic!() };
    assert_eq!(f, frame);
    assert_eq!(l.len(), 2);
    assert_eq!(l[1].node, 0);
}

#[test]
fn incomplete_and_bad_frames() {
    let enc = encode(&NodeMsg::ToOwner(Request::GetOnline {
        rid: Id::parse_str("r").unwrap(),
        conn: conn(1),
        after: Id::parse_str("u7"),
        limit: Some(5),
    }));
    for cut in 0..enc.len() {
        let mut b = BytesMut::from(&enc[..cut]);
        assert!(decode(&mut b, 1).unwrap().is_none());
        assert_eq!(b.len(), cut, "nothing consumed");
    }
    let mut huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
    assert!(matches!(decode(&mut huge, 1), Err(CodecError::Length(_))));
    let mut bad_type = BytesMut::from(&[0, 0, 0, 1, 99][..]);
    assert!(decode(&mut bad_type, 1).is_err());
    let mut hb = BytesMut::from(&heartbeat()[..]);
    assert!(matches!(decode(&mut hb, 1), Ok(Some(Frame::Heartbeat))));
    let mut act = BytesMut::from(&activate()[..]);
    assert!(matches!(decode(&mut act, 1), Ok(Some(Frame::Activate))));
    assert!(act.is_empty());
}

proptest! {
    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = BytesMut::from(&bytes[..]);
        let _ = decode(&mut b, 1);
    }

    #[test]
    fn truncated_bodies_are_errors(cut in 1usize..40, msg in "\\PC{0,30}") {
        let enc = encode(&NodeMsg::ToOwner(Request::Publish(Box::new(Publish {
            rid: Id::parse_str("room").unwrap(),
            from: conn(1),
            uid: Id::parse_str("u").unwrap(),
            name: Name::parse("n").unwrap(),
            mtype: MsgType::Text,
            msg,
            tid: None,
            mid: None,
            reply: None,
            echo: false,
        }))));
        let body_len = enc.len() - 4;
        let cut = cut.min(body_len - 1);
        // A length prefix that claims fewer bytes than the fields need.
        let mut b = BytesMut::new();
        b.put_u32((body_len - cut) as u32);
        b.put_slice(&enc[4..enc.len() - cut]);
        prop_assert!(decode(&mut b, 1).is_err());
    }
}

/// READ (v9) crosses a v9 link, alone or forwarded; a link of version 8
/// or older is not sent it (the marker stays with the sender's node) and
/// refuses it.
#[test]
fn a_read_marker_crosses_a_v9_link_only() {
    let read =
        Request::Read { rid: Id::parse_str("r").unwrap(), conn: conn(6), uid: Id::parse_str("ann").unwrap(), seq: 41 };
    let NodeMsg::ToOwner(Request::Read { rid, conn: c, uid, seq }) = round_trip(NodeMsg::ToOwner(read.clone())) else {
        panic!()
    };
    assert_eq!((rid.as_str(), c.node, c.key, uid.as_str(), seq), ("r", 3, 6, "ann", 41));
    let fwd = NodeMsg::Forwarded { origin: "n2".into(), hops: 1, req: read.clone() };
    let mut buf = BytesMut::from(&encode(&fwd)[..]);
    let Ok(Some(Frame::Msg(NodeMsg::Forwarded { req: Request::Read { seq: 41, .. }, .. }))) = decode(&mut buf, 3)
    else {
        panic!()
    };
    for wire in [6, 7, 8] {
        assert!(encode_for(&NodeMsg::ToOwner(read.clone()), wire).is_none(), "v{wire}");
        assert!(encode_for(&fwd, wire).is_none(), "v{wire}");
        let mut buf = BytesMut::from(&encode(&NodeMsg::ToOwner(read.clone()))[..]);
        assert!(decode_for(&mut buf, 3, wire).is_err(), "v{wire}");
    }
    assert_eq!(encode_for(&NodeMsg::ToOwner(read.clone()), 9).unwrap(), encode(&NodeMsg::ToOwner(read)));
}
