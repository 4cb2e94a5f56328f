//! Signed logins with real tokens (signed here with the jsonwebtoken crate,
//! keys made by openssl), token expiry and refresh, origin checks.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::common::{Client, Server, free_port, temp_data_dir};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn provider() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

fn hs256(secret: &str, claims: Value) -> String {
    provider();
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()).unwrap()).unwrap()
}

fn login(c: &mut Client, rid: &str, uid: &str, token: Option<&str>) -> Value {
    let mut v = json!({"cmd": "login", "name": "Whoever", "rid": rid, "uid": uid});
    if let Some(t) = token {
        v["token"] = json!(t);
    }
    c.send(v);
    c.recv()
}

#[test]
fn hs256_logins_are_checked_and_the_uid_comes_from_sub() {
    let server = Server::start(&["--token-secret", "s3cret"]);
    let mut c = server.client();
    let refused = |v: Value, why: &str| {
        assert_eq!((v["cmd"].as_str(), v["errCode"].as_u64()), (Some("error"), Some(103)), "{why}: {v}");
    };
    refused(login(&mut c, "team-1", "ann", None), "no token");
    refused(login(&mut c, "team-1", "ann", Some("garbage")), "malformed");
    refused(
        login(&mut c, "team-1", "ann", Some(&hs256("wrong", json!({"sub": "ann", "exp": now() + 60})))),
        "bad signature",
    );
    refused(
        login(&mut c, "team-1", "ann", Some(&hs256("s3cret", json!({"sub": "ann", "exp": now() - 10})))),
        "expired",
    );
    let t = hs256("s3cret", json!({"sub": "ann", "name": "Ann", "exp": now() + 60, "rooms": ["team-*"]}));
    refused(login(&mut c, "lobby", "ann", Some(&t)), "room not allowed");
    // The connection stayed usable: now a good login, claiming to be someone else.
    let ack = login(&mut c, "team-1", "mallory", Some(&t));
    assert_eq!(
        (ack["cmd"].as_str(), ack["uid"].as_str(), ack["name"].as_str()),
        (Some("login"), Some("ann"), Some("Ann"))
    );
    assert!(server.metric_values("cchat_errors_total").iter().sum::<f64>() >= 5.0);
}

fn openssl(args: &[&str]) {
    let st = std::process::Command::new("openssl").args(args).status().expect("openssl");
    assert!(st.success(), "openssl {args:?}");
}

/// A key pair in `dir`: (private PEM, public PEM path).
fn keypair(dir: &Path, kind: &str) -> (Vec<u8>, String) {
    let private = dir.join(format!("{kind}.key"));
    let public = dir.join(format!("{kind}.pub"));
    let (p, q) = (private.to_str().unwrap(), public.to_str().unwrap());
    match kind {
        "ec" => openssl(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", p]),
        _ => openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", p]),
    }
    openssl(&["pkey", "-in", p, "-pubout", "-out", q]);
    (std::fs::read(&private).unwrap(), q.to_owned())
}

#[test]
fn rs256_and_es256_tokens_and_the_wrong_algorithms() {
    provider();
    let dir = temp_data_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (kind, alg) in [("ec", Algorithm::ES256), ("rsa", Algorithm::RS256)] {
        let (private, public) = keypair(&dir, kind);
        let server = Server::start(&["--token-public-key", &public]);
        let key = match kind {
            "ec" => EncodingKey::from_ec_pem(&private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&private).unwrap(),
        };
        let claims = json!({"sub": "bob", "exp": now() + 60});
        let good = encode(&Header::new(alg), &claims, &key).unwrap();
        let mut c = server.client();
        // HS256 signed with the public key's bytes as the secret: the classic confusion.
        let confused = hs256(&std::fs::read_to_string(&public).unwrap(), claims.clone());
        assert_eq!(login(&mut c, "r", "bob", Some(&confused))["errCode"], 103, "{kind}: HS256 against a public key");
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims.to_string()));
        assert_eq!(login(&mut c, "r", "bob", Some(&none))["errCode"], 103, "{kind}: alg none");
        let ack = login(&mut c, "r", "x", Some(&good));
        assert_eq!((ack["cmd"].as_str(), ack["uid"].as_str()), (Some("login"), Some("bob")), "{kind}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_expired_token_closes_4001_unless_refreshed() {
    let server = Server::start(&["--token-secret", "k"]);
    // Expires in 2 s: the connection is closed with 4001.
    let mut short = server.client();
    let ack = login(&mut short, "r", "a", Some(&hs256("k", json!({"sub": "a", "exp": now() + 2}))));
    assert_eq!(ack["cmd"], "login");
    let t0 = Instant::now();
    assert_eq!(short.expect_close(), 4001);
    assert!(t0.elapsed() < Duration::from_secs(4));
    // Refreshed before it expires: still there after the first expiry.
    let mut kept = server.client();
    login(&mut kept, "r2", "b", Some(&hs256("k", json!({"sub": "b", "exp": now() + 2}))));
    kept.send(json!({"cmd": "refresh", "token": hs256("k", json!({"sub": "b", "exp": now() + 60}))}));
    let r = kept.expect("refresh");
    assert!(r["exp"].as_u64().unwrap() > now() + 30);
    // A refresh for another user is refused.
    kept.send(json!({"cmd": "refresh", "token": hs256("k", json!({"sub": "c", "exp": now() + 60}))}));
    kept.expect_error(103);
    kept.expect_silence(Duration::from_secs(3));
    kept.send(json!({"cmd": "getOnline", "rid": "r2"}));
    kept.expect("getOnline");
}

/// The status line of a raw upgrade with this Origin.
fn upgrade_status(addr: std::net::SocketAddr, origin: Option<&str>) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    write!(s, "GET / HTTP/1.1\r\nHost: {addr}\r\n{origin}Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
}

#[test]
fn browser_origins_are_checked() {
    let server = Server::start(&[]);
    let addr = server.addr;
    assert!(upgrade_status(addr, Some("https://evil.example")).starts_with("HTTP/1.1 403"));
    assert!(upgrade_status(addr, Some(&format!("http://{addr}"))).starts_with("HTTP/1.1 101"), "same host");
    assert!(upgrade_status(addr, None).starts_with("HTTP/1.1 101"), "no Origin: not a browser");
    let listed = Server::start(&["--allowed-origin", "https://app.example.com"]);
    assert!(upgrade_status(listed.addr, Some("https://app.example.com")).starts_with("HTTP/1.1 101"));
    assert!(upgrade_status(listed.addr, Some("https://evil.example")).starts_with("HTTP/1.1 403"));
    let any = Server::start(&["--allowed-origin", "*"]);
    assert!(upgrade_status(any.addr, Some("https://evil.example")).starts_with("HTTP/1.1 101"));
}

/// One admin request: (status, body).
pub(crate) fn admin(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let key = key.map(|k| format!("X-API-Key: {k}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: admin\r\n{key}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[test]
fn the_admin_listener_serves_metrics_and_the_server_api_behind_its_key() {
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let server = Server::start(&["--admin-listen", &admin_addr, "--api-key", "k3y"]);
    // /metrics leaves the public port; /healthz stays on both.
    assert_eq!(server.get("/metrics").0, 404);
    assert_eq!(server.get("/healthz").0, 200);
    let (st, body) = admin(&admin_addr, "GET", "/metrics", None, "");
    assert_eq!(st, 200);
    assert!(body.contains("cchat_connections"));
    assert_eq!(admin(&admin_addr, "GET", "/healthz", None, "").0, 200);
    // The API needs the key.
    let publish = r#"{"rid":"news","msg":"from the backend","uid":"bot","name":"Bot"}"#;
    assert_eq!(admin(&admin_addr, "POST", "/api/publish", None, publish).0, 401);
    assert_eq!(admin(&admin_addr, "POST", "/api/publish", Some("wrong"), publish).0, 401);
    // Publish reaches the members with a seq and lands in history.
    let mut a = server.client();
    a.login("ann", "news", Some("ann"));
    let mut b = server.client();
    b.login("bob", "news", Some("bob"));
    a.expect("newUser");
    assert_eq!(admin(&admin_addr, "POST", "/api/publish", Some("k3y"), publish).0, 202);
    for c in [&mut a, &mut b] {
        let m = c.expect("message");
        assert_eq!(
            (m["msg"].as_str(), m["uid"].as_str(), m["name"].as_str(), m["seq"].as_u64()),
            (Some("from the backend"), Some("bot"), Some("Bot"), Some(1))
        );
    }
    a.send(json!({"cmd": "getHistory", "rid": "news"}));
    assert_eq!(a.expect("getHistory")["msgs"][0]["msg"], "from the backend");
    assert_eq!(admin(&admin_addr, "POST", "/api/publish", Some("k3y"), r#"{"rid":"news"}"#).0, 400);
    // Disconnect closes every connection of the user.
    let mut b2 = server.client();
    b2.login("bob", "news", Some("bob"));
    assert_eq!(admin(&admin_addr, "POST", "/api/disconnect", Some("k3y"), r#"{"uid":"bob","code":4003}"#).0, 202);
    assert_eq!(b.expect_close(), 4003);
    assert_eq!(b2.expect_close(), 4003);
    a.send(json!({"cmd": "getOnline", "rid": "news"}));
    let v = a.expect("getOnline");
    assert!(v["users"].as_array().unwrap().iter().any(|u| u["uid"] == "ann"));
    // Online, history and rooms for the backend.
    // (bob's connections leave the room once their close handshakes end)
    let deadline = Instant::now() + Duration::from_secs(5);
    let v = loop {
        let (st, body) = admin(&admin_addr, "GET", "/api/online?rid=news", Some("k3y"), "");
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if v["count"] == 1 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((v["count"].as_u64(), v["users"][0]["uid"].as_str()), (Some(1), Some("ann")));
    let (st, body) = admin(&admin_addr, "GET", "/api/history?rid=news&limit=10", Some("k3y"), "");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["msgs"][0]["msg"], "from the backend");
    assert!(v["epoch"].as_u64().unwrap() > 0);
    let mut other = server.client();
    other.login("carl", "other-room", Some("carl"));
    let (st, body) = admin(&admin_addr, "GET", "/api/rooms", Some("k3y"), "");
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["rooms"], json!([{"rid": "news", "count": 1}, {"rid": "other-room", "count": 1}]));
    assert_eq!(admin(&admin_addr, "GET", "/api/rooms", None, "").0, 401);
    assert_eq!(admin(&admin_addr, "GET", "/api/online?rid=a%20b", Some("k3y"), "").0, 400);
}

#[test]
fn without_a_key_the_server_api_is_off() {
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let _server = Server::start(&["--admin-listen", &admin_addr]);
    assert_eq!(admin(&admin_addr, "POST", "/api/publish", Some("x"), r#"{"rid":"r","msg":"m"}"#).0, 404);
    assert_eq!(admin(&admin_addr, "GET", "/metrics", None, "").0, 200);
}

/// A token is not valid before its `nbf` (RFC 7519 §4.1.5), within a few
/// seconds' leeway for clocks a little apart.
#[test]
fn a_token_is_refused_before_its_not_before_time() {
    let server = Server::start(&["--token-secret", "k"]);
    let mut c = server.client();
    let early = hs256("k", json!({"sub": "a", "exp": now() + 600, "nbf": now() + 120}));
    let v = login(&mut c, "r", "a", Some(&early));
    assert_eq!((v["errCode"].as_u64(), v["errMsg"].as_str()), (Some(103), Some("token not valid yet")), "{v}");
    let ok = hs256("k", json!({"sub": "a", "exp": now() + 600, "nbf": now()}));
    assert_eq!(login(&mut c, "r", "a", Some(&ok))["cmd"], "login");
}

/// A refresh carries the same `sub`, an expiry no earlier than the current
/// one, and its `rooms` apply at once: a room it no longer allows is left
/// (with a logout ack) and can no longer be used.
#[test]
fn a_refresh_is_for_the_same_user_never_shorter_and_its_rooms_apply_at_once() {
    let server = Server::start(&["--token-secret", "k"]);
    let mut ann = server.client();
    let first = hs256("k", json!({"sub": "ann", "exp": now() + 300, "rooms": ["a", "b"]}));
    assert_eq!(login(&mut ann, "a", "ann", Some(&first))["cmd"], "login");
    assert_eq!(login(&mut ann, "b", "ann", Some(&first))["cmd"], "login");
    let mut bob = server.client();
    assert_eq!(
        login(&mut bob, "b", "bob", Some(&hs256("k", json!({"sub": "bob", "exp": now() + 300}))))["cmd"],
        "login"
    );
    ann.expect("newUser");
    // Earlier than the current expiry: refused, nothing changes.
    ann.send(
        json!({"cmd": "refresh", "token": hs256("k", json!({"sub": "ann", "exp": now() + 100, "rooms": ["a", "b"]}))}),
    );
    let e = ann.expect_error(103);
    assert_eq!(e["errMsg"], "refresh token expires before the current one");
    // A later token without room b: b is left at once.
    ann.send(json!({"cmd": "refresh", "token": hs256("k", json!({"sub": "ann", "exp": now() + 600, "rooms": ["a"]}))}));
    let mut got = vec![ann.recv(), ann.recv()];
    got.sort_by_key(|v| v["cmd"].as_str().unwrap_or("").to_owned());
    assert_eq!((got[0]["cmd"].as_str(), got[0]["rid"].as_str()), (Some("logout"), Some("b")), "{got:?}");
    assert_eq!(got[1]["cmd"], "refresh");
    assert_eq!(bob.expect("userLeave")["uid"], "ann");
    ann.say("b", "still here?");
    assert_eq!(ann.expect_error(50)["errMsg"], "not a member of rid");
    bob.expect_silence(Duration::from_millis(300));
}

/// Token checks for connections that are not logged in are budgeted per
/// address: bad tokens sent in a loop get "too many login attempts" (50)
/// past the budget instead of buying signature checks; a logged-in user
/// is not affected and a good login works again once the budget refills.
#[test]
fn bad_tokens_in_a_loop_run_out_of_their_addresss_budget() {
    let server = Server::start(&["--token-secret", "k", "--login-attempts-per-ip", "5", "--rate-limit", "0"]);
    let mut user = server.client();
    let good = hs256("k", json!({"sub": "u", "exp": now() + 300}));
    assert_eq!(login(&mut user, "r", "u", Some(&good))["cmd"], "login");
    let mut bad_conns: Vec<Client> = (0..4).map(|_| server.client()).collect();
    let (mut auth, mut budget) = (0, 0);
    for i in 0..40 {
        let c = &mut bad_conns[i % 4];
        let bad = hs256("wrong", json!({"sub": format!("x{i}"), "exp": now() + 300}));
        let v = login(c, "r", "x", Some(&bad));
        match (v["errCode"].as_u64(), v["errMsg"].as_str()) {
            (Some(103), _) => auth += 1,
            (Some(50), Some("too many login attempts")) => budget += 1,
            _ => panic!("{v}"),
        }
    }
    // Burst 10, and 5 a second come back while the loop runs.
    assert!(budget >= 20 && auth >= 10, "{auth} checked, {budget} refused for the budget");
    assert!(server.metric("cchat_login_attempts_refused_total") >= 20.0);
    // The logged-in user is untouched.
    user.send(json!({"cmd": "getOnline", "rid": "r"}));
    user.expect("getOnline");
    // A good login from the same address once the budget refills.
    std::thread::sleep(Duration::from_millis(600));
    let mut late = server.client();
    assert_eq!(
        login(&mut late, "r", "u2", Some(&hs256("k", json!({"sub": "u2", "exp": now() + 300}))))["cmd"],
        "login"
    );
}
