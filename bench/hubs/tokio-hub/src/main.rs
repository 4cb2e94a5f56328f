//! A chat hub as most people write one with tokio: a task per connection
//! reading frames, an unbounded channel and a writer task per connection,
//! rooms in a `Mutex<HashMap>`, and one `send` (write + flush) per frame.
//! Each broadcast is encoded once and shared (`Utf8Bytes` is reference
//! counted), which is already better than many hubs do.
//!
//! Usage: tokio-hub [ADDR]   (default 127.0.0.1:9600; port 0 picks a free one)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Default)]
struct Room {
    seq: u64,
    members: HashMap<u64, UnboundedSender<Message>>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9600".into());
    raise_nofile();
    let listener = TcpListener::bind(&addr).await.expect("bind");
    // The same start-up line as cchat's, which bench/scenarios/lib.sh waits for.
    println!("listening on {}", listener.local_addr().expect("bound address"));
    let rooms: Rooms = Arc::default();
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file handles, say: back off rather than spin.
                eprintln!("tokio-hub: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        tokio::spawn(serve(stream, next_id, rooms.clone()));
    }
}

async fn serve(stream: TcpStream, id: u64, rooms: Rooms) {
    let _ = stream.set_nodelay(true);
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    let mut session: Option<(String, String, String)> = None; // uid, name, rid
    while let Some(Ok(frame)) = source.next().await {
        let Message::Text(text) = frame else { continue };
        let Ok(req) = serde_json::from_str::<Value>(&text) else { continue };
        match req["cmd"].as_str() {
            Some("login") => {
                let field = |k: &str| req[k].as_str().unwrap_or_default().to_string();
                let (uid, name, rid) = (field("uid"), field("name"), field("rid"));
                rooms.lock().unwrap().entry(rid.clone()).or_default().members.insert(id, tx.clone());
                let ack = json!({"cmd": "login", "uid": uid, "name": name, "rid": rid});
                let _ = tx.send(Message::text(ack.to_string()));
                session = Some((uid, name, rid));
            }
            Some("message") => {
                let Some((uid, name, rid)) = &session else { continue };
                let msg = req["msg"].as_str().unwrap_or_default();
                let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                let mut rooms = rooms.lock().unwrap();
                let Some(room) = rooms.get_mut(rid) else { continue };
                room.seq += 1;
                // Field order as cchat documents it (loadgen's scanner relies on it).
                let out = format!(
                    r#"{{"cmd":"message","uid":{},"name":{},"type":"text","rid":{},"msg":{},"seq":{},"epoch":1,"ts":{ts}}}"#,
                    json!(uid),
                    json!(name),
                    json!(rid),
                    json!(msg),
                    room.seq
                );
                let frame = Message::Text(Utf8Bytes::from(out));
                for (&member, member_tx) in &room.members {
                    if member != id {
                        let _ = member_tx.send(frame.clone());
                    }
                }
            }
            _ => {}
        }
    }
    if let Some((_, _, rid)) = session
        && let Some(room) = rooms.lock().unwrap().get_mut(&rid)
    {
        room.members.remove(&id);
    }
    writer.abort();
}

/// Raises the soft open-file limit to the hard one, as cchat does, so that
/// load B's 10,000 connections fit whatever the shell's default.
fn raise_nofile() {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: r is a valid rlimit for both calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
