//! A client's input, as its connection's task hands it over: each text
//! frame is admitted by the connection's rate limit, parsed, and given to
//! its [`Session`](crate::session::Session), which answers it or turns it
//! into requests for rooms' owners; a compressed frame is inflated first,
//! and a binary one refused. Replies and errors go straight back on the
//! connection's queue.

use std::sync::atomic::Ordering::Relaxed;

use super::{Shard, admission};
use crate::msg::Request;
use crate::protocol::{self, ERR_NOT_COMMAND, ProtoError};
use crate::session;
use crate::ws;

/// A shard's input side, borrowed for one frame (`shard.input().text(…)`).
pub(crate) struct Input<'a> {
    pub(super) sh: &'a Shard,
}

impl Input<'_> {
    /// Handles one complete text message from a client.
    pub(crate) fn text(&self, key: u32, data: &mut [u8]) {
        let sh = self.sh;
        let (rate, now) = (sh.node.cfg.limits.rate_limit, sh.now_ms());
        let admitted = sh.conns.borrow_mut().get_mut(key).is_some_and(|e| e.session.admit_frame(rate, now));
        if !admitted {
            return sh.send_error(key, &ProtoError::new(protocol::ERR_INVALID, "sending too fast"));
        }
        let limits = protocol::ParseLimits { max_message_bytes: sh.node.cfg.limits.max_message_bytes };
        let cmd = match protocol::parse(data, &mut sh.json_buffers.borrow_mut(), limits) {
            Ok(cmd) => cmd,
            Err(e) => return sh.send_error(key, &e),
        };
        let reference = cmd.reference();
        let rooms_page = match &cmd {
            protocol::Command::GetRooms { after, limit } => Some((after.clone(), *limit)),
            _ => None,
        };
        // A token check for a connection not logged in yet comes out of
        // its address's budget (an ES256 check costs ~50 us: bad tokens
        // sent in a loop must not buy the server's CPU).
        let charged = match admission::login_attempt(sh, key, &cmd) {
            Ok(charged) => charged,
            Err(e) => return sh.send_error(key, &e.about(reference)),
        };
        let mut requests = std::mem::take(&mut *sh.requests.borrow_mut());
        let result = {
            let mut conns = sh.conns.borrow_mut();
            let Some(e) = conns.get_mut(key) else { return };
            let me = sh.conn_ref(key, e.generation);
            let policy = session::Policy {
                rate,
                max_rooms: sh.node.cfg.limits.max_rooms_per_connection,
                verifier: sh.node.verifier.as_ref(),
            };
            e.session.command(cmd, me, policy, now, || sh.assign_uid(), &mut |r| requests.push(r))
        };
        if let (Some(ip), Ok(_)) = (charged, &result) {
            sh.node.login_attempts.give_back(ip);
        }
        match result {
            Err(e) => sh.send_error(key, &e.about(reference)),
            Ok(Some(reply)) => sh.send_frame(key, reply),
            Ok(None) => {
                if let Some((after, limit)) = rooms_page {
                    sh.directory.ask(sh, key, after, limit);
                }
            }
        }
        for r in requests.drain(..) {
            match &r {
                Request::Leave { rid, .. } => sh.unindex(rid, key),
                Request::Publish(_) => {
                    sh.stats().messages_in.fetch_add(1, Relaxed);
                }
                _ => {}
            }
            sh.to_owner(r);
        }
        *sh.requests.borrow_mut() = requests;
    }

    /// A compressed text message: inflated with the shard's inflater, then
    /// handled as any other.
    pub(crate) fn deflated(&self, key: u32, data: &[u8], max: usize) -> Result<(), ws::WsError> {
        self.sh.zip.inflate(data, max, self.sh.stats(), |text| self.text(key, text))
    }

    /// A binary frame: the protocol has none.
    pub(crate) fn binary(&self, key: u32) {
        self.sh.send_error(key, &ProtoError::new(ERR_NOT_COMMAND, "binary frames are not supported"));
    }
}
