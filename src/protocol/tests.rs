//! Unit tests of the module that includes this file.

use super::*;
use proptest::prelude::*;

const LIM: ParseLimits = ParseLimits { max_message_bytes: 1024 };

fn p(s: &str) -> Result<Command, ProtoError> {
    let mut b = s.as_bytes().to_vec();
    parse(&mut b, &mut simd_json::Buffers::default(), LIM)
}

fn code(s: &str) -> u16 {
    p(s).unwrap_err().code
}

#[test]
fn out_of_range_numbers_are_invalid_fields_not_bad_json() {
    assert_eq!(code(r#"{"cmd":"getHistory","rid":"r","limit":1e500}"#), ERR_INVALID);
    assert_eq!(code(r#"{"cmd":"getHistory","rid":"a\u00e9\n","limit":-1e999}"#), ERR_INVALID);
    assert_eq!(code(r#"{"cmd":"getHistory","rid":"r","limit":123456789012345678901234567890}"#), ERR_INVALID);
    assert_eq!(code(r#"{"cmd":"getHistory","rid":"r","limit":1e}"#), ERR_NOT_COMMAND);
    assert_eq!(code(r#"{"cmd":"getHistory","rid":"r","limit":01}"#), ERR_NOT_COMMAND);
    assert_eq!(code(r#"{"cmd":"getHistory","rid":"r","limit":1.}"#), ERR_NOT_COMMAND);
}

fn body(frame: &Bytes) -> serde_json::Value {
    let (_, r, _) = crate::ws::parse_server_frame(frame).unwrap().unwrap();
    serde_json::from_slice(&frame[r]).unwrap()
}

#[test]
fn login_forms() {
    let c = p(r#"{"cmd":"login","name":"ann","rid":5,"uid":"u1","echo":true}"#).unwrap();
    assert_eq!(
        c,
        Command::Login {
            name: Name::parse("ann"),
            rid: Id::from_u64(5).unwrap(),
            uid: Id::parse_str("u1"),
            echo: true,
            token: None,
            since: None,
        }
    );
    assert!(matches!(
        p(r#"{"cmd":"login","name":"a","rid":"r"}"#).unwrap(),
        Command::Login { uid: None, echo: false, .. }
    ));
    assert_eq!(code(r#"{"cmd":"login","name":"a","rid":0}"#), 50);
    assert_eq!(code(r#"{"cmd":"login","name":"a","rid":-3}"#), 50);
    assert_eq!(code(r#"{"cmd":"login","name":"a","rid":1.5}"#), 50);
    assert_eq!(code(r#"{"cmd":"login","name":"a","rid":"a b"}"#), 50);
    assert_eq!(code(r#"{"cmd":"login","name":"a"}"#), 50);
    assert_eq!(code(r#"{"cmd":"login","name":7,"rid":"r"}"#), 50);
    assert_eq!(code(r#"{"cmd":"login","name":"a","rid":"r","echo":"yes"}"#), 50);
}

#[test]
fn error_codes() {
    assert_eq!(code("not json"), 101);
    assert_eq!(code("[1,2]"), 101);
    assert_eq!(code(r#""login""#), 101);
    assert_eq!(code(r#"{"cmd":5}"#), 101);
    assert_eq!(code(r#"{"x":1}"#), 101);
    assert_eq!(code(r#"{"cmd":"debug"}"#), 102);
    assert_eq!(code(r#"{"cmd":"proxySet"}"#), 102);
    assert_eq!(code(r#"{"cmd":"message","type":"video","msg":"x","rid":1}"#), 50);
    assert_eq!(code(r#"{"cmd":"message","type":"text","msg":5,"rid":1}"#), 50);
    let long = format!(r#"{{"cmd":"message","type":"text","msg":"{}","rid":1}}"#, "x".repeat(1025));
    assert_eq!(code(&long), 50);
    assert_eq!(code(r#"{"cmd":"getHistory","rid":1,"since":-1}"#), 50);
}

#[test]
fn message_with_escapes() {
    let c = p(r#"{"cmd":"message","type":"text","msg":"a\"\u00e9\n","rid":"r","tid":9}"#).unwrap();
    let Command::Message { msg, tid, .. } = c else { panic!() };
    assert_eq!(msg, "a\"é\n");
    assert_eq!(tid.unwrap().as_str(), "9");
}

#[test]
fn replies_are_valid_json() {
    let m = MessageOut {
        uid: "1",
        name: "Ann \"A\"",
        mtype: MsgType::Pic,
        rid: "r",
        msg: "<img src=x>",
        tid: Some("2"),
        mid: None,
        reply: None,
        seq: 3,
        epoch: 4,
        ts: 5,
    };
    let (f, off) = encode_message(&m);
    let v = body(&f);
    assert_eq!(v["name"], "Ann \"A\"");
    assert_eq!(v["tid"], "2");
    assert_eq!(v["seq"], 3);
    assert_eq!(&f[off..off + 1], b"{");
    let o = body(&encode_online("r", [("1", "a"), ("2", "b")].into_iter(), 5, Some("2")));
    assert_eq!(o["users"][1]["name"], "b");
    assert_eq!((o["count"].as_u64(), o["next"].as_str()), (Some(5), Some("2")));
    let o = body(&encode_online("r", std::iter::empty(), 0, None));
    assert!(o.get("next").is_none());
    let p = body(&encode_presence_batch("r", [("1", "a")].into_iter(), std::iter::empty(), (150, 0), 1200));
    assert_eq!(p["cmd"], "presence");
    assert_eq!(
        (p["joined"][0]["uid"].as_str(), p["joinedTotal"].as_u64(), p["count"].as_u64()),
        (Some("1"), Some(150), Some(1200))
    );
    assert_eq!(p["left"].as_array().map(Vec::len), Some(0));
    let h = body(&encode_history("r", 9, [&f[off..], &f[off..]].into_iter()));
    assert_eq!(h["msgs"][1]["seq"], 3);
    assert_eq!(h["epoch"], 9);
    let e = body(&ProtoError::new(50, "x").encode());
    assert_eq!(e["errCode"], 50);
}

#[test]
fn a_messages_ref_is_read_and_repeated_in_its_errors() {
    let c = p(r#"{"cmd":"message","type":"text","msg":"hi","rid":"r","ref":7}"#).unwrap();
    assert_eq!(c.reference(), Some(7));
    assert_eq!(p(r#"{"cmd":"message","type":"text","msg":"hi","rid":"r"}"#).unwrap().reference(), None);
    let e = p(r#"{"cmd":"message","type":"text","msg":"hi","rid":"no spaces","ref":8}"#).unwrap_err();
    assert_eq!(e.reference, Some(8), "an error after the ref was read names it");
    assert_eq!(body(&e.encode())["ref"], 8);
    let e = p(r#"{"cmd":"message","type":"text","msg":"hi","rid":"r","ref":-1}"#).unwrap_err();
    assert_eq!((e.code, e.reference), (ERR_INVALID, None));
    assert!(body(&ProtoError::new(ERR_INVALID, "x").encode()).get("ref").is_none());
}

proptest! {
    #[test]
    fn any_ref_comes_back_in_the_error(r in any::<u64>()) {
        let frame = serde_json::json!({"cmd":"message","type":"nope","msg":"x","rid":"r","ref":r}).to_string();
        let e = p(&frame).unwrap_err();
        prop_assert_eq!(&body(&e.encode())["ref"], &serde_json::json!(r));
    }

    #[test]
    fn parser_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let r = parse(&mut bytes, &mut simd_json::Buffers::default(), LIM);
        if let Err(e) = r {
            prop_assert!([50, 101, 102].contains(&e.code));
        }
    }

    #[test]
    fn any_message_text_survives(msg in "\\PC{0,100}", rid in "[a-z0-9]{1,10}") {
        let frame = serde_json::json!({"cmd":"message","type":"text","msg":msg,"rid":rid}).to_string();
        let c = p(&frame).unwrap();
        let Command::Message { msg: got, .. } = c else { panic!() };
        prop_assert_eq!(got, msg);
    }
}

#[test]
fn resume_and_message_ids_parse() {
    let c = p(r#"{"cmd":"login","name":"a","rid":"r","since":{"epoch":7,"seq":0}}"#).unwrap();
    assert!(matches!(c, Command::Login { since: Some(Since { epoch: 7, seq: 0 }), .. }));
    for bad in [r#""since":3"#, r#""since":{"seq":1}"#, r#""since":{"epoch":-1,"seq":1}"#, r#""since":null"#] {
        let e = p(&format!(r#"{{"cmd":"login","name":"a","rid":"r",{bad}}}"#)).unwrap_err();
        assert!(e.msg.contains("since"), "{bad}: {}", e.msg);
    }
    let c = p(r#"{"cmd":"message","type":"text","msg":"x","rid":"r","mid":"m-1"}"#).unwrap();
    assert!(matches!(c, Command::Message { mid: Some(ref m), .. } if m.as_str() == "m-1"));
    let e = p(r#"{"cmd":"message","type":"text","msg":"x","rid":"r","mid":"a b","ref":4}"#).unwrap_err();
    assert!(e.msg.contains("mid"), "{}", e.msg);
}

#[test]
fn a_resume_ack_is_followed_by_its_messages_and_a_dup_is_flagged() {
    let ack = encode_login_ack("u", "n", "r", None, Some(true), [&b"{\"a\":1}"[..], b"{}"].into_iter());
    let (op, r, used) = crate::ws::parse_server_frame(&ack).unwrap().unwrap();
    assert_eq!(op, 1);
    assert_eq!(&ack[r], br#"{"cmd":"login","uid":"u","name":"n","rid":"r","recovered":true}"#);
    let (_, r2, used2) = crate::ws::parse_server_frame(&ack[used..]).unwrap().unwrap();
    assert_eq!(&ack[used..][r2], br#"{"a":1}"#);
    let (_, r3, _) = crate::ws::parse_server_frame(&ack[used + used2..]).unwrap().unwrap();
    assert_eq!(&ack[used + used2..][r3], b"{}");
    let plain = encode_login_ack("u", "n", "r", None, None, std::iter::empty());
    assert!(!String::from_utf8_lossy(&plain).contains("recovered"));
    let m = MessageOut {
        uid: "u",
        name: "n",
        mtype: MsgType::Text,
        rid: "r",
        msg: "hi",
        tid: None,
        mid: Some("m"),
        reply: None,
        seq: 3,
        epoch: 4,
        ts: 5,
    };
    let d = encode_dup(&m);
    let v = body(&d);
    assert_eq!((v["dup"].as_bool(), v["seq"].as_u64(), v["mid"].as_str()), (Some(true), Some(3), Some("m")));
}

proptest! {
    /// A shard reads where a broadcast stands in its room from the frame's
    /// tail: right for every message and change event, whatever they carry.
    #[test]
    fn room_point_reads_what_the_encoders_wrote(
        msg in ".{0,40}", name in ".{1,12}", mid in proptest::option::of("[a-z0-9]{1,8}"),
        reply in proptest::option::of(1u64..1000), seq in any::<u64>(), epoch in any::<u64>(), ts in any::<u64>(),
        at in any::<u64>(), emoji in "\\PC{1,2}",
    ) {
        let m = MessageOut {
            uid: "u1", name: &name, mtype: MsgType::Text, rid: "r", msg: &msg, tid: None,
            mid: mid.as_deref(), reply, seq, epoch, ts,
        };
        let (frame, _) = encode_message(&m);
        prop_assert_eq!(room_point(&frame), Some(Since { epoch, seq }));
        for change in [ChangeKind::Edit(msg.clone()), ChangeKind::Delete, ChangeKind::React { emoji: emoji.clone(), on: true }] {
            let (frame, _) = encode_change("r", 3, "u1", &change, ts, epoch, at);
            prop_assert_eq!(room_point(&frame), Some(Since { epoch, seq: at }));
        }
    }

    /// Anything else is not mistaken for a sequenced frame, nor panics.
    #[test]
    fn room_point_takes_nothing_else(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
        let _ = room_point(&bytes);
    }
}

#[test]
fn room_point_of_other_frames_is_none() {
    assert_eq!(room_point(&encode_presence("login", "u", "n", "r")), None);
    assert_eq!(room_point(&encode_login_ack("u", "n", "r", None, Some(true), std::iter::empty())), None);
    assert_eq!(room_point(b"{\"cmd\":\"x\",\"a\":1,\"b\":2,\"c\":3}"), None);
}
