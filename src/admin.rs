//! The admin listener (`--admin-listen`, on shard 0): `/metrics`,
//! `/healthz`, and the server API for the application's backend, behind
//! `--api-key` (header `X-API-Key`; without a key configured the API is off).
//!
//! | request | body (JSON) | effect |
//! |---|---|---|
//! | `POST /api/publish` | `rid`, `msg`, `type`? (`text`), `uid`? (`server`), `name`? (`server`) | members get a normal `message` with `seq`, stored in history; 202 |
//! | `POST /api/disconnect` | `uid`, `code`? (4000) | every connection of `uid` on every node is closed with `code`; 202 |
//! | `GET /api/online?rid=` | | `{"rid","users":[{uid,name}…],"count"}` |
//! | `GET /api/history?rid=&since=&limit=` | | `{"rid","epoch","msgs":[…]}` (oldest first, at most 1,000) |
//! | `GET /api/rooms` | | `{"rooms":[{"rid","count"}…]}`: the cluster's rooms with members |
//!
//! Any node answers for the whole cluster: a publish goes to the room's
//! owner on whichever node, a question about a room goes to its owner
//! through the relay (and comes back within 5 s, else 504), and
//! `/api/rooms` gathers every live node's rooms.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use serde_json::Value;
use tracing::warn;

use crate::http::{self, AdminRequest};
use crate::ids::{Id, Name};
use crate::msg::ApiQuery;
use crate::protocol::MsgType;
use crate::shard::Shard;

/// Close code of `/api/disconnect` when the request names none.
const DEFAULT_DISCONNECT_CODE: u16 = 4000;

/// Accepts admin connections until the task is dropped.
pub(crate) async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(handle(shard.clone(), stream)).detach();
            }
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                Timer::new(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(shard: Rc<Shard>, mut stream: TcpStream) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let reply = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        let _ = stream.set_read_timeout(Some(left));
        let len = buf.len();
        buf.resize(len + 4096, 0);
        let n = match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.truncate(len + n);
        match http::parse_admin(&buf) {
            Ok(None) => continue,
            Err(why) => break http::response(400, "text/plain", why.as_bytes()),
            Ok(Some((req, head))) => {
                if buf.len() < head + req.body_len {
                    continue; // the body is still coming
                }
                break respond(&shard, &req, &buf[head..head + req.body_len]).await;
            }
        }
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.close().await;
}

fn json(status: u16, v: Value) -> Vec<u8> {
    http::response(status, "application/json", v.to_string().as_bytes())
}

fn bad(why: &str) -> Vec<u8> {
    json(400, serde_json::json!({ "error": why }))
}

/// A query parameter (ids and numbers need no percent-decoding).
fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// The answers to the API's GET requests, from whichever node can give them.
async fn query(shard: &Shard, req: &AdminRequest) -> Vec<u8> {
    let (status, body) = answer(shard, &req.path, &req.query, false).await;
    http::response(status, "application/json", &body)
}

/// Answers the questions other nodes ask this one (shard 0, clustered nodes).
pub(crate) async fn answer_peers(shard: Rc<Shard>) {
    loop {
        let (ticket, from, request) = shard.api().next_ask().await;
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let (path, query) = request.split_once('?').unwrap_or((request.as_str(), ""));
            let (status, body) = answer(&shard, path, query, true).await;
            shard.api().answer_node(from, ticket, status, body);
        })
        .detach();
    }
}

fn body(status: u16, v: Value) -> (u16, Vec<u8>) {
    (status, v.to_string().into_bytes())
}

/// Asks node `node` (through the relay) and waits up to 5 s.
async fn ask(shard: &Shard, node: u16, request: String) -> (u16, Vec<u8>) {
    let (ticket, rx) = shard.api().ask_node(node, request);
    match crate::shard::answers(rx, 1).await.and_then(|mut a| a.pop()) {
        Some((status, b)) => (status, b.to_vec()),
        None => {
            shard.api().forget_ask(ticket);
            body(504, serde_json::json!({ "error": "no answer from the node that owns the room" }))
        }
    }
}

/// One GET of the API: the room's owner answers (asked through the relay
/// when it is another node; `forwarded`: this node was asked by another,
/// and answers only for itself), and `/api/rooms` gathers every node's rooms.
async fn answer(shard: &Shard, path: &str, query: &str, forwarded: bool) -> (u16, Vec<u8>) {
    let rid = param(query, "rid").and_then(Id::parse_str);
    let timeout = || body(500, serde_json::json!({ "error": "no answer from the owner shard" }));
    let bad = |why: &str| body(400, serde_json::json!({ "error": why }));
    // Views differ for a moment while a node comes or goes.
    let not_owner = || body(409, serde_json::json!({ "error": "this node does not own the room" }));
    if let Some(rid) = &rid
        && matches!(path, "/api/online" | "/api/history")
    {
        match shard.api().owner_node(rid) {
            0 => {}
            _ if forwarded => return not_owner(),
            node => return ask(shard, node, format!("{path}?{query}")).await,
        }
    }
    match path {
        "/api/online" => {
            let Some(rid) = rid else { return bad("rid must be an id") };
            let Some(rx) = shard.api().ask(&rid, |reply| ApiQuery::Online { rid: rid.clone(), reply }) else {
                return not_owner();
            };
            let Some(mut a) = crate::shard::answers(rx, 1).await else { return timeout() };
            let users: Vec<Value> = a
                .pop()
                .flatten()
                .unwrap_or_default()
                .into_iter()
                .map(|(u, n)| serde_json::json!({"uid": u, "name": n}))
                .collect();
            body(200, serde_json::json!({"rid": rid.as_str(), "count": users.len(), "users": users}))
        }
        "/api/history" => {
            let Some(rid) = rid else { return bad("rid must be an id") };
            let num = |k: &str| param(query, k).map(|v| v.parse::<u64>());
            let (since, limit) = match (num("since").transpose(), num("limit").transpose()) {
                (Ok(s), Ok(l)) => (s, l.map(|l| l.min(usize::MAX as u64) as usize)),
                _ => return bad("since and limit must be numbers"),
            };
            let Some(rx) = shard.api().ask(&rid, |reply| ApiQuery::History { rid: rid.clone(), since, limit, reply })
            else {
                return not_owner();
            };
            let Some((epoch, msgs)) = crate::shard::answers(rx, 1).await.and_then(|mut a| a.pop().flatten()) else {
                return timeout();
            };
            let mut out = format!(r#"{{"rid":{},"epoch":{epoch},"msgs":["#, Value::from(rid.as_str()));
            for (i, m) in msgs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(std::str::from_utf8(m).unwrap_or("null"));
            }
            out.push_str("]}");
            (200, out.into_bytes())
        }
        "/api/rooms" => {
            let rx = shard.api().ask_all(|reply| ApiQuery::Rooms { reply });
            let Some(all) = crate::shard::answers(rx, shard.nshards).await else { return timeout() };
            let mut rooms: Vec<(String, usize)> = all.into_iter().flatten().collect();
            if !forwarded {
                // Every other live node's rooms (a room has one owner), asked at once.
                let asked: Vec<_> = shard
                    .api()
                    .other_nodes()
                    .into_iter()
                    .map(|n| shard.api().ask_node(n, "/api/rooms".into()))
                    .collect();
                let tickets: Vec<u64> = asked.iter().map(|(t, _)| *t).collect();
                let give_up = |tickets: &[u64]| tickets.iter().for_each(|t| shard.api().forget_ask(*t));
                for (_, rx) in asked {
                    let Some((status, b)) = crate::shard::answers(rx, 1).await.and_then(|mut a| a.pop()) else {
                        give_up(&tickets);
                        return body(504, serde_json::json!({ "error": "a node did not answer" }));
                    };
                    if status != 200 {
                        give_up(&tickets);
                        return (status, b.to_vec());
                    }
                    let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                    for r in v["rooms"].as_array().into_iter().flatten() {
                        if let (Some(rid), Some(n)) = (r["rid"].as_str(), r["count"].as_u64()) {
                            rooms.push((rid.to_owned(), n as usize));
                        }
                    }
                }
            }
            rooms.sort();
            let rooms: Vec<Value> = rooms.into_iter().map(|(r, c)| serde_json::json!({"rid": r, "count": c})).collect();
            body(200, serde_json::json!({ "rooms": rooms }))
        }
        _ => body(404, serde_json::json!({ "error": "not found" })),
    }
}

/// Whether the request's key is the configured one, in time that does not
/// depend on where they differ (or on their lengths: their digests are
/// compared), so the key cannot be guessed a byte at a time by timing.
fn key_matches(given: Option<&str>, key: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Some(given) = given else { return false };
    Sha256::digest(given.as_bytes()).ct_eq(&Sha256::digest(key.as_bytes())).into()
}

/// The response to one admin request.
async fn respond(shard: &Shard, req: &AdminRequest, body: &[u8]) -> Vec<u8> {
    let node = &shard.node;
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => return http::response(200, "text/plain", b"ok\n"),
        ("GET", "/metrics") => return http::metrics_response(node),
        _ => {}
    }
    if !req.path.starts_with("/api/") {
        return http::response(404, "text/plain", b"not found\n");
    }
    let Some(key) = &node.cfg.security.api_key else {
        return http::response(404, "text/plain", b"the server API is off: start with --api-key\n");
    };
    if !key_matches(req.api_key.as_deref(), key) {
        return json(401, serde_json::json!({ "error": "missing or wrong X-API-Key" }));
    }
    if req.method == "GET" {
        return query(shard, req).await;
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return bad("body is not JSON") };
    let id = |k: &str| match v.get(k) {
        Some(Value::String(s)) => Id::parse_str(s),
        Some(Value::Number(n)) => n.as_u64().and_then(Id::from_u64),
        _ => None,
    };
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/api/publish") => {
            let Some(rid) = id("rid") else { return bad("rid must be an id") };
            let Some(msg) = v.get("msg").and_then(Value::as_str) else { return bad("msg must be a string") };
            if msg.len() > node.cfg.limits.max_message_bytes {
                return bad("msg is too long");
            }
            let mtype = match v.get("type").and_then(Value::as_str).unwrap_or("text") {
                "text" => MsgType::Text,
                "audio" => MsgType::Audio,
                "pic" => MsgType::Pic,
                _ => return bad("type must be text, audio or pic"),
            };
            let uid = if v.get("uid").is_some() { id("uid") } else { Id::parse_str("server") };
            let Some(uid) = uid else { return bad("uid must be an id") };
            let name = v.get("name").and_then(Value::as_str).unwrap_or("server");
            let Some(name) = Name::parse(name) else {
                return bad("name must be 1-64 bytes without control characters");
            };
            shard.api().publish(rid, uid, name, mtype, msg.to_owned());
            json(202, serde_json::json!({ "ok": true }))
        }
        ("POST", path @ ("/api/edit" | "/api/delete")) => {
            // Moderation: any message of the room, in the name of `uid`.
            let Some(rid) = id("rid") else { return bad("rid must be an id") };
            let Some(seq) = v.get("seq").and_then(Value::as_u64).filter(|s| *s > 0) else {
                return bad("seq must name a message (a positive integer)");
            };
            let change = if path == "/api/edit" {
                let Some(msg) = v.get("msg").and_then(Value::as_str) else { return bad("msg must be a string") };
                if msg.len() > node.cfg.limits.max_message_bytes {
                    return bad("msg is too long");
                }
                crate::protocol::ChangeKind::Edit(msg.to_owned())
            } else {
                crate::protocol::ChangeKind::Delete
            };
            let uid = if v.get("uid").is_some() { id("uid") } else { Id::parse_str("server") };
            let Some(uid) = uid else { return bad("uid must be an id") };
            shard.api().change(rid, uid, seq, change);
            json(202, serde_json::json!({ "ok": true }))
        }
        ("POST", "/api/drain") => {
            // As SIGTERM: clients are told to reconnect later (1012), the
            // node exits once they are gone (see `--drain-timeout`).
            tracing::info!("POST /api/drain: draining");
            node.shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
            json(202, serde_json::json!({ "ok": true, "draining": true }))
        }
        ("POST", "/api/disconnect") => {
            let Some(uid) = id("uid") else { return bad("uid must be an id") };
            let code = v.get("code").and_then(Value::as_u64).unwrap_or(DEFAULT_DISCONNECT_CODE as u64);
            // Codes a close frame may carry (RFC 6455 7.4): not 1004-1006 or 1015.
            if !(1000..5000).contains(&code) || matches!(code, 1004..=1006 | 1015) || (1016..3000).contains(&code) {
                return bad("code must be a close code a frame may carry (1000-1003, 1007-1014, 3000-4999)");
            }
            shard.api().disconnect(uid, code as u16);
            json(202, serde_json::json!({ "ok": true }))
        }
        _ => http::response(404, "text/plain", b"not found\n"),
    }
}

/// `cchat --drain ADDR`: asks the node whose admin listener is at `admin`
/// to drain (`POST /api/drain` with the key). Blocking: it runs before any
/// executor, in the command's own process.
pub fn drain(admin: std::net::SocketAddr, key: Option<&str>) -> Result<(), String> {
    use std::io::{Read, Write};
    let Some(key) = key else { return Err("--drain needs --api-key (or CCHAT_API_KEY)".into()) };
    let mut s = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(5))
        .map_err(|e| format!("cannot reach the admin listener at {admin}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!(
        "POST /api/drain HTTP/1.1\r\nHost: {admin}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).unwrap_or("");
    match status {
        "202" => Ok(()),
        "" => Err(format!("no answer from {admin}")),
        s => Err(format!("the node answered {s}: {}", out.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim())),
    }
}
