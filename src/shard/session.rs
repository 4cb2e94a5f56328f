//! A connection's session: its identity, its rooms and its rate limits.
//! Turns a client [`Command`] into [`Request`]s for room owners, or into the
//! error the client gets. No I/O.

use crate::ids::{Id, Name};
use crate::msg::{ConnRef, Publish, Request};
use crate::protocol::{Command, ERR_INVALID, ProtoError};
use crate::ratelimit::TokenBucket;

use super::roomset::RoomSet;

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
        }
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

    /// Applies a command: the requests it makes go to `emit`, in order; an
    /// error is what the client gets instead (nothing was emitted then).
    /// `new_uid` assigns a uid to a first login without one.
    pub(crate) fn command(
        &mut self,
        cmd: Command,
        me: ConnRef,
        rate: f64,
        now_ms: u32,
        new_uid: impl FnOnce() -> Id,
        emit: &mut impl FnMut(Request),
    ) -> Result<(), ProtoError> {
        match cmd {
            Command::Login { name, rid, uid, echo } => {
                let (uid, name) = match (&self.uid, &self.name) {
                    (Some(u), Some(n)) => (u.clone(), n.clone()),
                    _ => {
                        let name = name.ok_or(invalid("name is required"))?;
                        let uid = uid.unwrap_or_else(new_uid);
                        self.uid = Some(uid.clone());
                        self.name = Some(name.clone());
                        self.echo = echo;
                        (uid, name)
                    }
                };
                self.rooms.insert(rid.clone());
                emit(Request::Join { rid, conn: me, uid, name, echo: self.echo, rejoin: false });
            }
            Command::Message { mtype, msg, rid, tid } => {
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
                emit(Request::Publish(Box::new(Publish { rid, from: me, uid, name, mtype, msg, tid })));
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
                    emit(Request::Leave { rid, conn: me, ack: true });
                }
            }
            Command::GetOnline { rid, after, limit } => {
                self.member_check(&rid)?;
                emit(Request::GetOnline { rid, conn: me, after, limit });
            }
            Command::GetHistory { rid, since, before, limit } => {
                self.member_check(&rid)?;
                emit(Request::GetHistory { rid, conn: me, since, before, limit });
            }
        }
        Ok(())
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

    fn id(s: &str) -> Id {
        Id::parse_str(s).unwrap()
    }

    fn run(s: &mut Session, cmd: Command) -> Result<Vec<Request>, ProtoError> {
        let mut out = Vec::new();
        s.command(cmd, ME, 1.0, 0, || id("assigned"), &mut |r| out.push(r))?;
        Ok(out)
    }

    fn login(rid: &str, name: Option<&str>, uid: Option<&str>) -> Command {
        Command::Login { name: name.and_then(Name::parse), rid: id(rid), uid: uid.map(id), echo: false }
    }

    fn say(rid: &str) -> Command {
        Command::Message { mtype: MsgType::Text, msg: "hi".into(), rid: id(rid), tid: None }
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
