//! A connection's session: its identity, its rooms and its rate limits.
//! Turns a client [`Command`] into [`Request`]s for room owners, or into the
//! error the client gets. No I/O.

use bytes::Bytes;

use crate::auth::{AuthError, Grant, Verifier};
use crate::ids::{Id, Name};
use crate::msg::{ConnRef, Publish, Request};
use crate::protocol::{self, Command, ERR_AUTH, ERR_INVALID, ProtoError};
use crate::ratelimit::TokenBucket;

pub(crate) mod outbound;
pub(crate) mod roomset;

use roomset::RoomSet;

/// Identity, rooms and rate limits of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    uid: Option<Id>,
    name: Option<Name>,
    echo: bool,
    /// Rooms joined or being joined (the owners' rosters follow in FIFO order).
    rooms: RoomSet,
    msg_bucket: TokenBucket,
    frame_bucket: TokenBucket,
    /// With signed logins: when the token expires (Unix seconds) and the
    /// rooms it allows.
    grant: Option<Box<Grant>>,
    /// Rooms being resumed (`since`), until their owner's ack: should the
    /// room move to another node meanwhile, it is resumed there (boxed:
    /// empty on almost every connection, and idle memory counts).
    #[allow(clippy::box_collection)] // 8 bytes on an idle connection, not 24
    resuming: Option<Box<Vec<(Id, protocol::Since)>>>,
}

/// What a session is allowed and how: the server's settings it applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy<'a> {
    /// Messages per second (0: no limit).
    pub(crate) rate: f64,
    /// Rooms one connection may be in.
    pub(crate) max_rooms: usize,
    /// Verifies login tokens, when logins are signed.
    pub(crate) verifier: Option<&'a Verifier>,
}

fn auth(e: AuthError) -> ProtoError {
    ProtoError::invalid(e.to_string()).with_code(ERR_AUTH)
}

/// Burst of the per-connection frame bucket (all commands), which stops a
/// flood of cheap commands; messages have their own, stricter bucket.
fn frame_burst(rate: f64) -> f64 {
    (rate * 20.0).max(100.0)
}

fn invalid(why: &'static str) -> ProtoError {
    ProtoError::new(ERR_INVALID, why)
}

impl Session {
    /// A session before login, with full buckets for `rate` messages/s.
    pub(crate) fn new(rate: f64, now_ms: u32) -> Self {
        Session {
            uid: None,
            name: None,
            echo: false,
            rooms: RoomSet::default(),
            msg_bucket: TokenBucket::new(rate * 2.0, now_ms),
            frame_bucket: TokenBucket::new(frame_burst(rate), now_ms),
            grant: None,
            resuming: None,
        }
    }

    /// Where a resume of `rid` started, while its ack is still to come.
    pub(crate) fn resuming(&self, rid: &Id) -> Option<protocol::Since> {
        self.resuming.as_ref()?.iter().find(|(r, _)| r == rid).map(|(_, s)| *s)
    }

    /// The owner's ack for `rid` came (or the room was left): no resume
    /// of it is under way any more.
    pub(crate) fn joined(&mut self, rid: &Id) {
        if let Some(v) = &mut self.resuming {
            v.retain(|(r, _)| r != rid);
            if v.is_empty() {
                self.resuming = None;
            }
        }
    }

    /// When the session's token expires (Unix seconds), with signed logins.
    pub(crate) fn expires(&self) -> Option<u64> {
        self.grant.as_ref().map(|g| g.exp)
    }

    /// Logged in (the first login fixed uid and name).
    pub(crate) fn logged_in(&self) -> bool {
        self.uid.is_some()
    }

    /// uid, name and echo flag, once logged in.
    pub(crate) fn identity(&self) -> Option<(&Id, &Name, bool)> {
        Some((self.uid.as_ref()?, self.name.as_ref()?, self.echo))
    }

    /// The rooms joined.
    pub(crate) fn rooms(&self) -> &RoomSet {
        &self.rooms
    }

    /// Every room joined, leaving none (the connection is going away).
    pub(crate) fn take_rooms(&mut self) -> Vec<Id> {
        self.rooms.take_all()
    }

    /// Whether one more frame of any kind fits the connection's budget
    /// (10R/s, burst max(20R, 100)); a rate of 0 means no limit.
    pub(crate) fn admit_frame(&mut self, rate: f64, now_ms: u32) -> bool {
        self.frame_bucket.take(rate * 10.0, frame_burst(rate), now_ms)
    }

    /// Applies a command: the requests it makes go to `emit`, in order, and
    /// a direct reply, if it has one, is returned; an error is what the
    /// client gets instead (nothing was emitted then). `new_uid` assigns a
    /// uid to a first login without one.
    pub(crate) fn command(
        &mut self,
        cmd: Command,
        me: ConnRef,
        policy: Policy<'_>,
        now_ms: u32,
        new_uid: impl FnOnce() -> Id,
        emit: &mut impl FnMut(Request),
    ) -> Result<Option<Bytes>, ProtoError> {
        let rate = policy.rate;
        match cmd {
            Command::Login { name, rid, uid, echo, token, since } => {
                // With signed logins, the token decides who this is and
                // where they may go; a later login may carry a newer one.
                let grant = match (policy.verifier, token) {
                    (None, _) => None,
                    (Some(v), Some(t)) => Some(v.verify(&t).map_err(auth)?),
                    (Some(_), None) if self.grant.is_some() => None,
                    (Some(_), None) => return Err(auth(AuthError::Missing)),
                };
                if let (Some(g), Some(u)) = (&grant, &self.uid)
                    && g.uid != *u
                {
                    return Err(auth(AuthError::OtherUser));
                }
                let allowed = grant.as_ref().or(self.grant.as_deref()).is_none_or(|g| g.allows(&rid));
                if !allowed {
                    return Err(auth(AuthError::Room(rid.to_string())));
                }
                if !self.rooms.contains(&rid) && self.rooms.len() >= policy.max_rooms {
                    return Err(ProtoError::invalid(format!(
                        "too many rooms on this connection (at most {})",
                        policy.max_rooms
                    )));
                }
                // A direct conversation is its two users' only (checked
                // before this login changes anything).
                if let Some(parties) = crate::ids::dm_parties(&rid) {
                    let (a, b) = parties.map_err(invalid)?;
                    let who = self.uid.as_ref().or(grant.as_ref().map(|g| &g.uid)).or(uid.as_ref());
                    if !who.is_some_and(|u| u.as_str() == a || u.as_str() == b) {
                        return Err(invalid("not a member of this conversation"));
                    }
                }
                let (uid, name) = match (&self.uid, &self.name) {
                    (Some(u), Some(n)) => (u.clone(), n.clone()),
                    _ => {
                        let name = grant.as_ref().and_then(|g| g.name.clone()).or(name);
                        let name = name.ok_or(invalid("name is required"))?;
                        let uid = match &grant {
                            Some(g) => g.uid.clone(),
                            None => uid.unwrap_or_else(new_uid),
                        };
                        self.uid = Some(uid.clone());
                        self.name = Some(name.clone());
                        self.echo = echo;
                        (uid, name)
                    }
                };
                if let Some(g) = grant {
                    self.grant = Some(Box::new(g));
                }
                // Resuming a room this connection is already in would
                // repeat what it has had live: only a new member resumes.
                let since = since.filter(|_| !self.rooms.contains(&rid));
                self.rooms.insert(rid.clone());
                if let Some(since) = since {
                    self.joined(&rid);
                    self.resuming.get_or_insert_default().push((rid.clone(), since));
                }
                emit(Request::Join { rid, conn: me, uid, name, echo: self.echo, rejoin: false, since });
            }
            Command::Refresh { token } => {
                let v = policy.verifier.ok_or_else(|| auth(AuthError::Unconfigured))?;
                let Some(uid) = &self.uid else { return Err(invalid("not logged in")) };
                let g = v.verify(&token).map_err(auth)?;
                if g.uid != *uid {
                    return Err(auth(AuthError::OtherUser));
                }
                if self.grant.as_ref().is_some_and(|cur| g.exp < cur.exp) {
                    return Err(auth(AuthError::EarlierExpiry));
                }
                // The new token's rooms apply at once: the rooms it no
                // longer allows are left (each acknowledged by a logout).
                let gone: Vec<Id> = self.rooms.iter().filter(|r| !g.allows(r)).cloned().collect();
                for rid in gone {
                    self.rooms.remove(&rid);
                    emit(Request::Leave { rid, conn: me, ack: true });
                }
                let exp = g.exp;
                self.grant = Some(Box::new(g));
                return Ok(Some(protocol::encode_refreshed(exp)));
            }
            Command::Change { rid, seq, change } => {
                let Some(uid) = &self.uid else { return Err(invalid("not logged in")) };
                if !self.rooms.contains(&rid) {
                    return Err(invalid("not a member of rid"));
                }
                // Changes are rate-limited like messages.
                if !self.msg_bucket.take(rate, rate * 2.0, now_ms) {
                    return Err(invalid("sending too fast"));
                }
                emit(Request::Change(Box::new(crate::msg::Change { rid, from: me, uid: uid.clone(), seq, change })));
            }
            Command::Message { mtype, msg, rid, tid, mid, reply, .. } => {
                let (Some(uid), Some(name)) = (&self.uid, &self.name) else {
                    return Err(invalid("not logged in"));
                };
                if !self.rooms.contains(&rid) {
                    return Err(invalid("not a member of rid"));
                }
                if !self.msg_bucket.take(rate, rate * 2.0, now_ms) {
                    return Err(invalid("sending too fast"));
                }
                let (uid, name) = (uid.clone(), name.clone());
                emit(Request::Publish(Box::new(Publish {
                    rid,
                    from: me,
                    uid,
                    name,
                    mtype,
                    msg,
                    tid,
                    mid,
                    reply,
                    echo: self.echo,
                })));
            }
            Command::Logout { rid } => {
                if self.uid.is_none() {
                    return Err(invalid("not logged in"));
                }
                let leaving = match rid {
                    Some(rid) if self.rooms.remove(&rid) => vec![rid],
                    Some(_) => return Err(invalid("not a member of rid")),
                    None if self.rooms.is_empty() => return Err(invalid("not in any room")),
                    None => self.rooms.take_all(),
                };
                for rid in leaving {
                    self.joined(&rid);
                    emit(Request::Leave { rid, conn: me, ack: true });
                }
            }
            Command::GetOnline { rid, after, limit } => {
                self.member_check(&rid)?;
                emit(Request::GetOnline { rid, conn: me, after, limit });
            }
            Command::Typing { rid } => {
                let (Some(uid), Some(name)) = (&self.uid, &self.name) else { return Err(invalid("not logged in")) };
                if !self.rooms.contains(&rid) {
                    return Err(invalid("not a member of rid"));
                }
                emit(Request::Typing { rid, conn: me, uid: uid.clone(), name: name.clone() });
            }
            Command::Read { rid, seq } => {
                self.member_check(&rid)?;
                let uid = self.uid.clone().expect("member_check: logged in");
                emit(Request::Read { rid, conn: me, uid, seq });
            }
            Command::GetRooms { .. } => {
                // Answered by the shard's directory (see `shard/directory`).
                if self.uid.is_none() {
                    return Err(invalid("not logged in"));
                }
            }
            Command::GetHistory { rid, since, before, epoch, limit } => {
                self.member_check(&rid)?;
                emit(Request::GetHistory { rid, conn: me, since, before, epoch, limit });
            }
        }
        Ok(None)
    }

    fn member_check(&self, rid: &Id) -> Result<(), ProtoError> {
        if self.uid.is_none() {
            return Err(invalid("not logged in"));
        }
        if !self.rooms.contains(rid) {
            return Err(invalid("not a member of rid"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MsgType;

    const ME: ConnRef = ConnRef { node: 0, shard: 0, key: 1, generation: 1 };

    use crate::ids::testing::id;

    const OPEN: Policy<'static> = Policy { rate: 1.0, max_rooms: 100, verifier: None };

    fn run_with(s: &mut Session, cmd: Command, policy: Policy<'_>) -> Result<Vec<Request>, ProtoError> {
        let mut out = Vec::new();
        s.command(cmd, ME, policy, 0, || id("assigned"), &mut |r| out.push(r))?;
        Ok(out)
    }

    fn run(s: &mut Session, cmd: Command) -> Result<Vec<Request>, ProtoError> {
        run_with(s, cmd, OPEN)
    }

    fn login(rid: &str, name: Option<&str>, uid: Option<&str>) -> Command {
        Command::Login {
            name: name.and_then(Name::parse),
            rid: id(rid),
            uid: uid.map(id),
            echo: false,
            token: None,
            since: None,
        }
    }

    #[test]
    fn rooms_per_connection_are_capped() {
        let mut s = Session::new(1.0, 0);
        let policy = Policy { max_rooms: 3, ..OPEN };
        for r in ["a", "b", "c"] {
            run_with(&mut s, login(r, Some("Ann"), None), policy).unwrap();
        }
        let e = run_with(&mut s, login("d", None, None), policy).unwrap_err();
        assert_eq!(e.code, ERR_INVALID);
        assert!(run_with(&mut s, login("a", None, None), policy).is_ok(), "a room already joined is fine");
    }

    #[test]
    fn signed_logins_take_identity_and_rooms_from_the_token() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let v = Verifier::from_secret("k").unwrap();
        let policy = Policy { verifier: Some(&v), ..OPEN };
        let exp = crate::node::unix_ms() / 1000 + 60;
        let token = |sub: &str| {
            let claims = serde_json::json!({"sub": sub, "exp": exp, "rooms": ["team-*"]});
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k").unwrap()).unwrap()
        };
        let mut s = Session::new(1.0, 0);
        let with = |rid: &str, uid: Option<&str>, t: Option<String>| Command::Login {
            name: Name::parse("Claimed"),
            rid: id(rid),
            uid: uid.map(id),
            echo: false,
            token: t,
            since: None,
        };
        assert_eq!(run_with(&mut s, with("team-1", None, None), policy).unwrap_err().code, ERR_AUTH, "token required");
        assert_eq!(
            run_with(&mut s, with("lobby", None, Some(token("ann"))), policy).unwrap_err().code,
            ERR_AUTH,
            "room not allowed"
        );
        let r = run_with(&mut s, with("team-1", Some("mallory"), Some(token("ann"))), policy).unwrap();
        let [Request::Join { uid, .. }] = &r[..] else { panic!("{r:?}") };
        assert_eq!(uid.as_str(), "ann", "the uid comes from sub, not the login");
        assert_eq!(s.expires(), Some(exp));
        assert!(
            run_with(&mut s, with("team-2", None, None), policy).is_ok(),
            "later logins ride on the session's token"
        );
        assert_eq!(run_with(&mut s, with("team-3", None, Some(token("bob"))), policy).unwrap_err().code, ERR_AUTH);
        assert_eq!(run_with(&mut s, Command::Refresh { token: token("bob") }, policy).unwrap_err().code, ERR_AUTH);
        let mut out = Vec::new();
        let reply = s
            .command(Command::Refresh { token: token("ann") }, ME, policy, 0, || id("x"), &mut |r| out.push(r))
            .unwrap();
        assert!(reply.is_some() && out.is_empty());
    }

    /// A refresh keeps the user, never shortens the session, and its rooms
    /// apply at once: a room the new token does not allow is left.
    #[test]
    fn a_refresh_is_for_the_same_user_no_shorter_and_its_rooms_apply() {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        let v = Verifier::from_secret("k").unwrap();
        let policy = Policy { verifier: Some(&v), ..OPEN };
        let now = crate::node::unix_ms() / 1000;
        let token = |exp: u64, rooms: serde_json::Value| {
            let claims = serde_json::json!({"sub": "ann", "exp": exp, "rooms": rooms});
            encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(b"k").unwrap()).unwrap()
        };
        let mut s = Session::new(1.0, 0);
        let first = token(now + 100, serde_json::json!(["a", "b"]));
        for rid in ["a", "b"] {
            let login = Command::Login {
                name: Name::parse("Ann"),
                rid: id(rid),
                uid: None,
                echo: false,
                token: Some(first.clone()),
                since: None,
            };
            run_with(&mut s, login, policy).unwrap();
        }
        let e = run_with(&mut s, Command::Refresh { token: token(now + 50, serde_json::json!(["a", "b"])) }, policy);
        assert_eq!(e.unwrap_err().msg, "refresh token expires before the current one");
        assert_eq!(s.expires(), Some(now + 100));
        let out =
            run_with(&mut s, Command::Refresh { token: token(now + 200, serde_json::json!(["a"])) }, policy).unwrap();
        let [Request::Leave { rid, ack: true, .. }] = &out[..] else { panic!("{out:?}") };
        assert_eq!(rid.as_str(), "b");
        assert!(s.rooms().contains(&id("a")) && !s.rooms().contains(&id("b")));
        assert_eq!(run_with(&mut s, say("b"), policy).unwrap_err().msg, "not a member of rid");
        assert_eq!(s.expires(), Some(now + 200));
    }

    fn say(rid: &str) -> Command {
        Command::Message {
            mtype: MsgType::Text,
            msg: "hi".into(),
            rid: id(rid),
            tid: None,
            reference: None,
            mid: None,
            reply: None,
        }
    }

    #[test]
    fn the_first_login_fixes_the_identity() {
        let mut s = Session::new(1.0, 0);
        assert_eq!(run(&mut s, login("r", None, None)).unwrap_err().code, ERR_INVALID, "name is required");
        let r = run(&mut s, login("r", Some("Ann"), None)).unwrap();
        let [Request::Join { uid, name, rejoin: false, .. }] = &r[..] else { panic!("{r:?}") };
        assert_eq!((uid.as_str(), name.as_str()), ("assigned", "Ann"));
        let r = run(&mut s, login("q", Some("Bob"), Some("bob"))).unwrap();
        let [Request::Join { uid, name, rid, .. }] = &r[..] else { panic!("{r:?}") };
        assert_eq!((uid.as_str(), name.as_str(), rid.as_str()), ("assigned", "Ann", "q"));
        assert_eq!(s.rooms().len(), 2);
    }

    #[test]
    fn messages_need_a_login_membership_and_tokens() {
        let mut s = Session::new(1.0, 0);
        assert_eq!(run(&mut s, say("r")).unwrap_err().code, ERR_INVALID);
        run(&mut s, login("r", Some("Ann"), None)).unwrap();
        assert!(run(&mut s, say("other")).is_err());
        // Burst 2R = 2 at 1 message/s, no time passing.
        assert!(matches!(&run(&mut s, say("r")).unwrap()[..], [Request::Publish(_)]));
        assert!(run(&mut s, say("r")).is_ok());
        assert_eq!(run(&mut s, say("r")).unwrap_err().msg, "sending too fast");
    }

    #[test]
    fn logout_leaves_one_room_or_all() {
        let mut s = Session::new(1.0, 0);
        assert!(run(&mut s, Command::Logout { rid: None }).is_err());
        for r in ["a", "b", "c"] {
            run(&mut s, login(r, Some("Ann"), None)).unwrap();
        }
        assert!(run(&mut s, Command::Logout { rid: Some(id("zz")) }).is_err());
        let r = run(&mut s, Command::Logout { rid: Some(id("a")) }).unwrap();
        assert!(matches!(&r[..], [Request::Leave { ack: true, .. }]));
        assert_eq!(run(&mut s, Command::Logout { rid: None }).unwrap().len(), 2);
        assert!(s.rooms().is_empty());
        assert!(
            run(&mut s, Command::GetOnline { rid: id("b"), after: None, limit: None }).is_err(),
            "not a member any more"
        );
    }
}
