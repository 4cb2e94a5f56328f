//! The admin listener (`--admin-listen`, on shard 0): `/metrics`,
//! `/healthz`, and the server API for the application's backend, behind
//! `--api-key` (header `X-API-Key`; without a key configured the API is off).
//!
//! | request | body (JSON) | effect |
//! |---|---|---|
//! | `POST /api/publish` | `rid`, `msg`, `type`? (`text`), `uid`? (`server`), `name`? (`server`) | members get a normal `message` with `seq`, stored in history; 202 |
//! | `POST /api/disconnect` | `uid`, `code`? (4000) | every connection of `uid` on this node is closed with `code`; 202 |

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::timer::Timer;
use serde_json::Value;
use tracing::warn;

use crate::http::{self, AdminRequest};
use crate::ids::{Id, Name};
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
                break respond(&shard, &req, &buf[head..head + req.body_len]);
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

/// The response to one admin request.
fn respond(shard: &Shard, req: &AdminRequest, body: &[u8]) -> Vec<u8> {
    let node = &shard.node;
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/healthz") => return http::response(200, "text/plain", b"ok\n"),
        ("GET", "/metrics") => return http::metrics_response(node),
        _ => {}
    }
    if !req.path.starts_with("/api/") {
        return http::response(404, "text/plain", b"not found\n");
    }
    let Some(key) = &node.cfg.api_key else {
        return http::response(404, "text/plain", b"the server API is off: start with --api-key\n");
    };
    if req.api_key.as_deref() != Some(key.as_str()) {
        return json(401, serde_json::json!({ "error": "missing or wrong X-API-Key" }));
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
            if msg.len() > node.cfg.max_message_bytes {
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
            shard.api_publish(rid, uid, name, mtype, msg.to_owned());
            json(202, serde_json::json!({ "ok": true }))
        }
        ("POST", "/api/disconnect") => {
            let Some(uid) = id("uid") else { return bad("uid must be an id") };
            let code = v.get("code").and_then(Value::as_u64).unwrap_or(DEFAULT_DISCONNECT_CODE as u64);
            if !(1000..5000).contains(&code) {
                return bad("code must be a close code (1000-4999)");
            }
            shard.api_disconnect(uid, code as u16);
            json(202, serde_json::json!({ "ok": true }))
        }
        _ => http::response(404, "text/plain", b"not found\n"),
    }
}
