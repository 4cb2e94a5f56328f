//! The room directory (`getRooms`): the rooms with members, cluster-wide,
//! a page at a time, in room-id order. This node's rooms are asked of its
//! shards for each question (their owners know); the other nodes' are kept
//! by shard 0, gathered every [`REMOTE_EVERY`] through the relay, so their
//! counts are at most that old. Direct conversations (`dm:…`) are never
//! listed. One question is answered at a time per shard, at most
//! [`MAX_QUEUED`] wait, so a flood of them costs the shard a bounded queue.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::timer::Timer;

use super::Shard;
use crate::ids::Id;
use crate::msg::ApiQuery;
use crate::protocol::{self, ERR_INVALID, MAX_PAGE, ProtoError};

/// Questions allowed to wait per shard; past it one is refused (try again).
const MAX_QUEUED: usize = 256;
/// Rooms in a page when the question names no `limit`.
const DEFAULT_PAGE: usize = 100;
/// How often shard 0 gathers the other nodes' rooms.
pub(super) const REMOTE_EVERY: Duration = Duration::from_secs(2);

/// One `getRooms` question.
#[derive(Debug)]
struct Question {
    key: u32,
    generation: u32,
    after: Option<Id>,
    limit: usize,
}

/// The questions waiting, and the answering task's waker.
#[derive(Debug, Default)]
pub(super) struct Directory {
    queue: RefCell<VecDeque<Question>>,
    waker: RefCell<Option<Waker>>,
}

impl Directory {
    /// Connection `key` asks for a page of rooms after `after`.
    pub(super) fn ask(&self, sh: &Shard, key: u32, after: Option<Id>, limit: Option<usize>) {
        let Some(generation) = sh.conns.borrow().get(key).map(|e| e.generation) else { return };
        if self.queue.borrow().len() >= MAX_QUEUED {
            let e = ProtoError::new(ERR_INVALID, "the room directory is busy, try again shortly");
            return sh.send_frame(key, e.encode());
        }
        let limit = limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        self.queue.borrow_mut().push_back(Question { key, generation, after, limit });
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// The answering task: one question at a time.
    pub(super) async fn run(sh: Rc<Shard>) {
        let me = &sh.directory;
        loop {
            let q = std::future::poll_fn(|cx| match me.queue.borrow_mut().pop_front() {
                Some(q) => Poll::Ready(q),
                None => {
                    *me.waker.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            let rx = sh.api().ask_all(|reply| ApiQuery::Rooms { reply });
            let Some(local) = super::answers(rx, sh.nshards).await else {
                let e = ProtoError::new(ERR_INVALID, "the room directory did not answer, try again");
                sh.send_frame(q.key, e.encode());
                continue;
            };
            let mut rooms: Vec<(String, usize)> = local.into_iter().flatten().collect();
            rooms.extend(sh.node.remote_rooms.lock().expect("remote rooms").iter().cloned());
            let frame = page(rooms, q.after.as_deref(), q.limit);
            // The connection may have gone (and its slot been reused) meanwhile.
            if sh.conns.borrow().get(q.key).is_some_and(|e| e.generation == q.generation) {
                sh.send_frame(q.key, frame);
            }
        }
    }
}

/// The page of `rooms` after `after`, at most `limit`, DMs left out, as a
/// `getRooms` frame.
fn page(mut rooms: Vec<(String, usize)>, after: Option<&str>, limit: usize) -> bytes::Bytes {
    rooms.retain(|(rid, _)| !rid.starts_with("dm:") && after.is_none_or(|a| rid.as_str() > a));
    rooms.sort_unstable();
    rooms.dedup_by(|a, b| a.0 == b.0);
    let more = rooms.len() > limit;
    rooms.truncate(limit);
    let next = if more { rooms.last().map(|(r, _)| r.as_str()) } else { None };
    protocol::encode_rooms(rooms.iter().map(|(r, c)| (r.as_str(), *c)), next)
}

/// Shard 0 of a clustered node: gathers the other nodes' rooms every
/// [`REMOTE_EVERY`] (a node that does not answer has none listed).
pub(super) async fn run_remote(sh: Rc<Shard>) {
    loop {
        Timer::new(REMOTE_EVERY).await;
        let asked: Vec<_> =
            sh.api().other_nodes().into_iter().map(|n| sh.api().ask_node(n, "/api/rooms".into())).collect();
        let mut rooms = Vec::new();
        for (ticket, rx) in asked {
            let Some((200, body)) = super::answers(rx, 1).await.and_then(|mut a| a.pop()) else {
                sh.api().forget_ask(ticket);
                continue;
            };
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            for r in v["rooms"].as_array().into_iter().flatten() {
                if let (Some(rid), Some(n)) = (r["rid"].as_str(), r["count"].as_u64()) {
                    rooms.push((rid.to_owned(), n as usize));
                }
            }
        }
        *sh.node.remote_rooms.lock().expect("remote rooms") = rooms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids(frame: &bytes::Bytes) -> (Vec<String>, Option<String>) {
        let (_, r, _) = crate::ws::parse_server_frame(frame).unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&frame[r]).unwrap();
        let rooms = v["rooms"].as_array().unwrap().iter().map(|r| r["rid"].as_str().unwrap().to_owned()).collect();
        (rooms, v["next"].as_str().map(str::to_owned))
    }

    #[test]
    fn pages_are_in_order_without_dms_and_say_what_comes_next() {
        let rooms: Vec<(String, usize)> =
            ["b", "dm:a:b", "a", "c", "d", "a"].iter().map(|r| (r.to_string(), 1)).collect();
        let (p1, next) = rids(&page(rooms.clone(), None, 2));
        assert_eq!((p1, next.as_deref()), (vec!["a".to_owned(), "b".to_owned()], Some("b")));
        let (p2, next) = rids(&page(rooms, Some("b"), 2));
        assert_eq!((p2, next), (vec!["c".to_owned(), "d".to_owned()], None));
    }
}
