//! Browser tests: a real headless Chromium (driven through chromedriver's W3C
//! WebDriver HTTP API) against a real `cchat` process, using the page served
//! at `GET /`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`; override with `CHROMIUM` and
//! `CHROMEDRIVER`). The tests fail, not skip, when they are missing.
//! Screenshots go to `$TMPDIR/cchat-browser-<test>/`.
//!
//! Every scenario runs twice: `plain::NAME` over http:// and ws:// with
//! open logins, and `over_https::NAME` with the server on TLS (a self-signed
//! certificate) and `--token-secret`: the page is loaded over https, chats on
//! wss://, and each login carries a token in the page's address
//! (`#token=…`); the test's own WebSocket clients use wss and signed logins.
#![allow(missing_docs, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::webdriver::{Browser, Driver, ELEMENT_KEY, KEY_ENTER, KEY_TAB, WAIT};
use crate::common::{Client, Server};

/// The secret of the signed logins in the https runs.
const SECRET: &str = "browser-secret";

thread_local! {
    /// The certificate of this thread's https run (None: a plain run).
    static SECURE: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
    static HTTPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this test runs over https with signed logins.
fn https() -> bool {
    HTTPS.with(|h| h.get())
}

/// Runs a scenario over https with signed logins.
fn over_https(scenario: fn()) {
    HTTPS.with(|h| h.set(true));
    scenario();
}

/// The server's flags for this run: with https, its certificate (made in
/// `dir` once) and the token secret.
fn server_args(dir: &Path, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    if https() {
        let certs = dir.join("certs");
        if !certs.join("cert.pem").exists() {
            crate::tls::make_cert(&certs, "localhost");
        }
        SECURE.with(|c| *c.borrow_mut() = Some(certs.join("cert.pem")));
        let (c, k) = (certs.join("cert.pem"), certs.join("key.pem"));
        v.extend(["--tls-cert".into(), c.display().to_string(), "--tls-key".into(), k.display().to_string()]);
        v.extend(["--token-secret".into(), SECRET.into()]);
    }
    v
}

/// A test's own WebSocket client: ws://, or wss:// with signed logins.
fn client(server: &Server) -> Client {
    match SECURE.with(|c| c.borrow().clone()).filter(|_| https()) {
        Some(ca) => Client::connect_tls(server.addr, &ca, Some(SECRET)),
        None => server.client(),
    }
}
impl Driver {
    /// A 1200×900 session with the chat page of `server` loaded.
    fn page(&self, server: SocketAddr) -> Browser {
        let b = self.session(1200, 900);
        b.open(server);
        b
    }

    /// A phone (390×844) in dark mode with the chat page of `server` loaded.
    fn dark_phone(&self, server: SocketAddr) -> Browser {
        let b = self.session(390, 844);
        b.cmd("POST", "/window/rect", Some(json!({"width": 390, "height": 844})));
        b.dark();
        b.open(server);
        b
    }
}

impl Browser {
    // ---- page-level helpers ------------------------------------------------

    /// The system asks for dark mode from now on.
    fn dark(&self) {
        self.cdp(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
        );
    }

    fn open(&self, server: SocketAddr) {
        if https() {
            self.navigate(&format!("https://localhost:{}/", server.port()));
        } else {
            self.navigate(&format!("http://{server}/"));
        }
        self.wait_js("the login form", "return !!document.querySelector('[data-testid=login-name]')", json!([]));
        // Record any alert() the page (or injected markup) would show.
        self.exec("window.__alerts = []; window.alert = function (m) { window.__alerts.push(String(m)); };", json!([]));
    }

    /// In an https run: a token for `uid` (or a fresh user) in the page's
    /// address, as a site that signs its users in would hand it over.
    fn sign_address(&self, uid: Option<&str>) {
        if https() {
            let sub = uid.map(str::to_owned).unwrap_or_else(crate::common::fresh_uid);
            let token = crate::common::sign_token(SECRET, &sub);
            self.exec("location.hash = 'token=' + arguments[0]", json!([token]));
        }
    }

    fn login(&self, name: &str, room: &str, uid: Option<&str>) {
        self.submit_login(name, room, uid);
        self.wait_connected();
    }

    /// Fills the login form and sends it, not waiting for the outcome.
    fn submit_login(&self, name: &str, room: &str, uid: Option<&str>) {
        let n = self.by_id("login-name");
        self.clear(&n);
        self.send_keys(&n, name);
        let r = self.by_id("login-room");
        self.clear(&r);
        self.send_keys(&r, room);
        if let Some(uid) = uid {
            let u = self.by_id("login-uid");
            self.clear(&u);
            self.send_keys(&u, uid);
        }
        self.sign_address(uid);
        self.click(&self.by_id("login-submit"));
    }

    fn status(&self) -> String {
        self.exec("return document.querySelector('[data-testid=connection-status]').dataset.state", json!([]))
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Reloads the page and waits until the new page runs (the old one's
    /// state would otherwise pass the next wait).
    fn reload(&self) {
        self.exec("window.__beforeReload = true; location.reload(); return true;", json!([]));
        self.wait_js(
            "the reloaded page",
            "return !window.__beforeReload && document.readyState === 'complete'",
            json!([]),
        );
    }

    fn wait_connected(&self) {
        self.wait_js(
            "connection-status = connected",
            "return document.querySelector('[data-testid=connection-status]').dataset.state === 'connected'",
            json!([]),
        );
    }

    /// Types a message into the input and presses Enter.
    fn say(&self, text: &str) {
        let input = self.by_id("message-input");
        self.send_keys(&input, text);
        self.send_keys(&input, KEY_ENTER);
    }

    /// The messages shown: [{seq, uid, name, text, private, type}].
    fn messages(&self) -> Vec<Value> {
        let v = self.exec(
            r#"return Array.from(document.querySelectorAll('[data-testid=message-list] [data-testid=message]')).map(function (m) {
                var n = m.querySelector('.name'), b = m.querySelector('.body');
                return {seq: m.dataset.seq, epoch: m.dataset.epoch, uid: m.dataset.uid, name: n ? n.textContent : null,
                        text: b ? b.textContent : null, private: m.dataset.private === 'true', type: m.dataset.type,
                        all: m.textContent};
            });"#,
            json!([]),
        );
        v.as_array().cloned().unwrap_or_default()
    }

    /// Waits until a conversation's tab shows `@ peer` with an unread count of 1.
    fn wait_unread_conversation(&self, peer: &str) {
        self.wait_js(
            &format!("the conversation's tab with {peer}, one unread"),
            "var t = Array.from(document.querySelectorAll('[data-testid=room-tab]')).find(function (t) { return t.dataset.rid.indexOf('dm:') === 0; }); return !!t && t.textContent.indexOf('@ ' + arguments[0]) >= 0 && /1/.test(t.textContent)",
            json!([peer]),
        );
    }

    /// Waits until the room directory lists every room of `rids` and no
    /// direct conversation (those are never listed).
    fn wait_directory(&self, rids: &[&str]) {
        self.wait_js(
            &format!("the directory with {rids:?}, no conversation"),
            "var r = Array.from(document.querySelectorAll('[data-testid=directory-room]')).map(function (l) { return l.dataset.rid; }); return arguments[0].every(function (w) { return r.indexOf(w) >= 0; }) && !r.some(function (x) { return x.indexOf('dm:') === 0; })",
            json!([rids]),
        );
    }

    /// Waits until a message with this body text is shown; returns it.
    fn wait_message(&self, text: &str) -> Value {
        self.wait_js(
            &format!("message {text:?}"),
            r#"var want = arguments[0];
               var ms = document.querySelectorAll('[data-testid=message-list] [data-testid=message]');
               for (var i = 0; i < ms.length; i++) {
                 var b = ms[i].querySelector('.body');
                 if (b && b.textContent === want) {
                   var n = ms[i].querySelector('.name');
                   return {seq: ms[i].dataset.seq, uid: ms[i].dataset.uid, name: n ? n.textContent : null,
                           private: ms[i].dataset.private === 'true', all: ms[i].textContent};
                 }
               }
               return null;"#,
            json!([text]),
        )
    }

    fn wait_user(&self, uid: &str) {
        self.wait_js(
            &format!("user {uid} in user-list"),
            "return !!document.querySelector('[data-testid=user-list] [data-testid=user][data-uid=\"' + CSS.escape(arguments[0]) + '\"]')",
            json!([uid]),
        );
    }

    /// The uid the server assigned (shown in the `me` line as "(uid)").
    fn my_uid(&self) -> String {
        let uid = self.exec("return document.querySelector('[data-testid=me]').dataset.uid || ''", json!([]));
        let uid = uid.as_str().unwrap_or("").to_owned();
        assert!(!uid.is_empty(), "no data-uid on the me line");
        // The header shows the name, not the internal uid.
        assert!(!self.text(&self.by_id("me")).contains(&uid), "the uid is in the header");
        uid
    }

    /// What the page's Content-Security-Policy blocked so far.
    fn csp_violations(&self) -> Vec<Value> {
        self.exec("return window.__csp || []", json!([])).as_array().cloned().unwrap_or_default()
    }

    fn alerts(&self) -> Vec<Value> {
        self.exec("return window.__alerts || []", json!([])).as_array().cloned().unwrap_or_default()
    }
}

/// Per-test folder for screenshots, logs and browser profiles.
fn test_dir(test: &str) -> PathBuf {
    let suffix = if https() { "-https" } else { "" };
    let d = std::env::temp_dir().join(format!("cchat-browser-{test}{suffix}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test's folder, a server started with `args`, and chromedriver logging
/// into the folder.
fn setup(test: &str, args: &[&str]) -> (PathBuf, Server, Driver) {
    let dir = test_dir(test);
    let args = server_args(&dir, args);
    let server = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let driver = Driver::start(&dir);
    (dir, server, driver)
}

fn shot(b: &Browser, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.png"));
    b.screenshot(&p);
    let len = std::fs::metadata(&p).unwrap().len();
    assert!(len > 1000, "screenshot {} is suspiciously small ({len} bytes)", p.display());
    p
}

fn count_text(msgs: &[Value], text: &str) -> usize {
    msgs.iter().filter(|m| m["text"] == text).count()
}

/// The relative luminance (0–1) of the first `css` element's text and of
/// the first background behind it that is not transparent.
fn luminance(b: &Browser, css: &str) -> (f64, f64) {
    let v = b.exec(
        "var e = document.querySelector(arguments[0]); var s = getComputedStyle(e); function l(c) { var m = c.match(/[0-9.]+/g).map(Number); return (0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2]) / 255; } var bg = e, c = 'rgba(0, 0, 0, 0)'; while (bg && /rgba\\(0, 0, 0, 0\\)|transparent/.test(c = getComputedStyle(bg).backgroundColor)) bg = bg.parentElement; return [l(s.color), l(c)]",
        json!([css]),
    );
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
}

/// Reads frames until a `message` arrives; returns it.
fn next_message(c: &mut Client) -> Value {
    loop {
        let v = c.recv();
        if v["cmd"] == "message" {
            return v;
        }
        assert_ne!(v["cmd"], "error", "unexpected error {v}");
    }
}

// ---------------------------------------------------------------------------
// Tests

/// (a) Two pages in one room chat both ways and see each other online.
fn two_pages_chat_both_ways() {
    let (dir, server, driver) = setup("two_pages_chat_both_ways", &["--shards", "2"]);
    let a = driver.page(server.addr);
    let b = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    b.login("Bob", "lobby", None);
    let (ua, ub) = (a.my_uid(), b.my_uid());
    assert_ne!(ua, ub);
    // Online lists: A learned of B through newUser, B got both with getOnline.
    a.wait_user(&ub);
    b.wait_user(&ua);
    b.wait_user(&ub);

    a.say("hello from alice");
    let seen_by_b = b.wait_message("hello from alice");
    assert_eq!(seen_by_b["name"], "Alice", "{seen_by_b}");
    assert_eq!(seen_by_b["uid"], ua.as_str());
    assert_eq!(seen_by_b["private"], false);
    // B answers with the Send button instead of Enter.
    let input = b.by_id("message-input");
    b.send_keys(&input, "hi alice, bob here");
    b.click(&b.by_id("message-send"));
    let seen_by_a = a.wait_message("hi alice, bob here");
    assert_eq!(seen_by_a["name"], "Bob", "{seen_by_a}");
    // The sender sees its own message too (echo), in the same order and with the same seq.
    let own = a.wait_message("hello from alice");
    assert_eq!(own["seq"], seen_by_b["seq"]);
    b.wait_message("hi alice, bob here");
    let (ma, mb) = (a.messages(), b.messages());
    let order = |ms: &[Value]| ms.iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    assert_eq!(order(&ma), ["hello from alice", "hi alice, bob here"]);
    assert_eq!(order(&mb), order(&ma));
    // A time is shown with each message.
    assert!(ma.iter().all(|m| m["all"].as_str().unwrap().contains(':')), "{ma:?}");
    let ta = a.text(&a.by_id("message-list"));
    assert!(ta.contains("Bob") && ta.contains("Alice"), "{ta}");
    shot(&a, &dir, "alice");
    shot(&b, &dir, "bob");
}

/// (b) A private message from A to B reaches B only, not a third member.
fn private_message_reaches_only_target() {
    let (dir, server, driver) = setup("private_message_reaches_only_target", &["--shards", "2"]);
    let a = driver.page(server.addr);
    let b = driver.page(server.addr);
    a.login("Alice", "room1", None);
    b.login("Bob", "room1", Some("bob-uid"));
    let mut carol = client(&server);
    carol.login("Carol", "room1", Some("carol"));
    a.wait_user("bob-uid");
    a.wait_user("carol");

    // Click Bob in A's user list: private mode is shown, with a way out.
    a.click(&a.find("[data-testid=user-list] [data-testid=user][data-uid=\"bob-uid\"]"));
    a.wait_js(
        "private-target visible",
        "var t = document.querySelector('[data-testid=private-target]'); return !t.hidden && t.textContent.indexOf('Bob') >= 0",
        json!([]),
    );
    a.say("secret for bob");
    let got = b.wait_message("secret for bob");
    assert_eq!(got["private"], true, "{got}");
    assert_eq!(got["name"], "Alice");
    assert!(got["all"].as_str().unwrap().contains("Private to you"), "{got}");
    // A's own copy is marked private too.
    let mine = a.wait_message("secret for bob");
    assert_eq!(mine["private"], true, "{mine}");
    assert!(mine["all"].as_str().unwrap().contains("Private to Bob"), "{mine}");
    shot(&a, &dir, "alice-private");
    shot(&b, &dir, "bob-received");

    // Cancel private mode and talk to the room: Carol's first message is this one.
    a.click(&a.by_id("private-cancel"));
    a.wait_js(
        "private-target hidden",
        "return document.querySelector('[data-testid=private-target]').hidden",
        json!([]),
    );
    a.say("public after secret");
    let m = next_message(&mut carol);
    assert_eq!(m["msg"], "public after secret", "Carol got {m}");
    assert!(m.get("tid").is_none());
    carol.expect_silence(Duration::from_millis(300));
    let pub_b = b.wait_message("public after secret");
    assert_eq!(pub_b["private"], false);
    assert_eq!(count_text(&b.messages(), "secret for bob"), 1);
}

/// (c) Markup in a message (and in a name, and a non-http picture) is text.
fn markup_is_shown_as_text() {
    let (dir, server, driver) = setup("markup_is_shown_as_text", &["--shards", "2"]);
    let a = driver.page(server.addr);
    let b = driver.page(server.addr);
    a.login("Alice", "xss", None);
    b.login("Bob", "xss", None);
    let evil = "<img src=x onerror=alert(1)>";
    a.say(evil);
    // Another client with a markup name posts a javascript: "picture".
    let mut m = client(&server);
    m.login("<b>Mallory</b>", "xss", Some("mallory"));
    m.send(json!({"cmd": "message", "type": "pic", "msg": "javascript:alert(2)", "rid": "xss"}));
    m.send(json!({"cmd": "message", "type": "audio", "msg": "<script>alert(3)</script>", "rid": "xss"}));
    for page in [&a, &b] {
        let got = page.wait_message(evil);
        assert_eq!(got["name"], "Alice");
        let js = page.wait_message("javascript:alert(2)");
        assert_eq!(js["name"], "<b>Mallory</b>", "{js}");
        page.wait_message("<script>alert(3)</script>");
        page.wait_user("mallory");
        let n = page.exec(
            "var l = document.querySelector('[data-testid=message-list]');
             return {img: l.querySelectorAll('img').length, b: l.querySelectorAll('b').length,
                     script: l.querySelectorAll('script').length, audio: l.querySelectorAll('audio').length,
                     userB: document.querySelector('[data-testid=user-list]').querySelectorAll('b').length,
                     html: l.innerHTML.indexOf('&lt;img src=x onerror=alert(1)&gt;') >= 0}",
            json!([]),
        );
        assert_eq!(n, json!({"img": 0, "b": 0, "script": 0, "audio": 0, "userB": 0, "html": true}));
        let list = page.text(&page.by_id("user-list"));
        assert!(list.contains("<b>Mallory</b>"), "{list}");
        assert_eq!(page.alerts(), Vec::<Value>::new());
        assert_eq!(page.alert_text(), None, "an alert dialog is open");
    }
    shot(&b, &dir, "literal-markup");
}

/// pic/audio messages with an http(s) URL become <img>/<audio>.
fn media_messages_for_http_urls() {
    let (dir, server, driver) = setup("media_messages_for_http_urls", &["--shards", "2"]);
    let a = driver.page(server.addr);
    a.login("Alice", "media", None);
    let mut c = client(&server);
    c.login("Carl", "media", Some("carl"));
    let pic = format!("http://{}/no-such-picture.png", server.addr);
    let audio = format!("http://{}/no-such-sound.ogg", server.addr);
    c.send(json!({"cmd": "message", "type": "audio", "msg": audio, "rid": "media"}));
    c.send(json!({"cmd": "message", "type": "pic", "msg": "ftp://example.invalid/x.png", "rid": "media"}));
    c.send(json!({"cmd": "message", "type": "text", "msg": "done", "rid": "media"}));
    a.wait_message("done");
    a.wait_message("ftp://example.invalid/x.png");
    let n = a.exec(
        "var a = document.querySelectorAll('[data-testid=message-list] audio');
         return a.length === 1 ? {controls: a[0].controls, src: a[0].src} : a.length",
        json!([]),
    );
    assert_eq!(n, json!({"controls": true, "src": audio}));
    // A picture: an <img> with that source (it fails to load and then shows as text).
    let img_seen = a.exec(
        "window.__imgs = []; new MutationObserver(function (rs) { rs.forEach(function (r) { r.addedNodes.forEach(function (n) {
            if (n.querySelectorAll) n.querySelectorAll('img').forEach(function (i) { window.__imgs.push(i.getAttribute('src')); }); }); }); })
         .observe(document.querySelector('[data-testid=message-list]'), {childList: true, subtree: true}); return true",
        json!([]),
    );
    assert_eq!(img_seen, true);
    c.send(json!({"cmd": "message", "type": "pic", "msg": pic, "rid": "media"}));
    let srcs = a.wait_js("an <img> for the picture", "return window.__imgs.length ? window.__imgs : null", json!([]));
    assert_eq!(srcs, json!([pic]));
    shot(&a, &dir, "media");
    assert_eq!(a.csp_violations(), Vec::<Value>::new(), "media links are allowed by the page's policy");
}

/// The page is served with a Content-Security-Policy that allows only its
/// own inline script and style (by hash) and forbids framing; the page
/// runs under it without a single violation, and markup that tries to run
/// a script is blocked twice over (escaped, and refused by the policy).
fn the_page_runs_under_its_own_security_policy() {
    let (dir, server, driver) = setup("the_page_runs_under_its_own_security_policy", &["--shards", "2"]);
    if !https() {
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        std::io::Write::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut head = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut head);
        let head = head.split("\r\n\r\n").next().unwrap_or("").to_owned();
        for h in [
            "Content-Security-Policy: default-src 'none'; script-src 'sha256-",
            "X-Frame-Options: DENY",
            "X-Content-Type-Options: nosniff",
        ] {
            assert!(head.contains(h), "{h} missing in:\n{head}");
        }
    }
    let a = driver.page(server.addr);
    a.login("Alice", "csp", None);
    let mut c = client(&server);
    c.login("Carl", "csp", Some("carl"));
    c.say("csp", "<img src=x onerror=alert(1)>");
    a.wait_message("<img src=x onerror=alert(1)>");
    a.say("hello under the policy");
    next_message(&mut c);
    // An inline script added to the page by someone else is refused.
    let ran = a.exec(
        "window.__injected = false; var s = document.createElement('script'); s.textContent = 'window.__injected = true';
         document.body.appendChild(s); return window.__injected",
        json!([]),
    );
    assert_eq!(ran, false, "an injected inline script ran");
    let v = a.wait_js(
        "the policy's report of the injected script",
        "return window.__csp.length ? window.__csp : null",
        json!([]),
    );
    assert_eq!(v.as_array().map(Vec::len), Some(1), "only the injected script was blocked: {v}");
    assert!(v[0].as_str().unwrap_or("").starts_with("script-src"), "{v}");
    assert_eq!(a.alerts(), Vec::<Value>::new());
    shot(&a, &dir, "csp");
}

/// (d) The server restarts on the same port: the page shows it, reconnects,
/// fetches what it missed and shows new messages, without duplicates.
fn reconnects_after_server_restart() {
    let (dir, mut server, driver) = setup("reconnects_after_server_restart", &["--shards", "2"]);
    let addr = server.addr;
    let a = driver.page(addr);
    a.login("Alice", "durable", None);
    let uid = a.my_uid();
    let mut bob = client(&server);
    bob.login("Bob", "durable", Some("bob"));
    a.wait_user("bob");
    bob.say("durable", "before-1");
    bob.say("durable", "before-2");
    a.wait_message("before-2");
    a.wait_message("before-1");

    drop(bob);
    server.kill();
    a.wait_js(
        "connection-status = disconnected",
        "var s = document.querySelector('[data-testid=connection-status]'); return s.dataset.state === 'disconnected' && /disconnected/i.test(s.textContent)",
        json!([]),
    );
    shot(&a, &dir, "disconnected");
    // Written while away: kept in the outbox, shown as waiting, and the
    // input is free for the next one.
    a.say("while away");
    a.wait_js(
        "the pending message",
        "var p = document.querySelectorAll('[data-testid=outbox] [data-testid=pending-message]'); return p.length === 1 && /while away/.test(p[0].textContent) && /waiting/.test(p[0].textContent)",
        json!([]),
    );
    assert_eq!(a.exec("return document.querySelector('[data-testid=message-input]').value", json!([])), "");
    shot(&a, &dir, "pending");

    let listen = addr.to_string();
    let deadline = Instant::now() + WAIT;
    let server2 = loop {
        let args = server_args(&dir, &["--shards", "2"]);
        if let Some(s) = Server::try_start_on(&listen, &args.iter().map(String::as_str).collect::<Vec<_>>()) {
            break s;
        }
        assert!(Instant::now() < deadline, "could not restart the server on {listen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(server2.addr, addr);
    // Sent right after the restart, most likely before the page is back: the
    // page gets it from getHistory (a new epoch, so seq starts over).
    let mut bob = client(&server2);
    bob.login("Bob", "durable", Some("bob"));
    bob.say("durable", "missed-1");

    // The page's retries back off up to 8 s (±15%): its next try may be
    // that far away, so this one wait is longer than the others.
    a.wait_js_within(
        "connection-status = connected",
        "return document.querySelector('[data-testid=connection-status]').dataset.state === 'connected'",
        json!([]),
        Duration::from_secs(25),
    );
    // ... and the banner goes once the connection is back.
    a.wait_js("the banner cleared", "return document.querySelector('[data-testid=error-banner]').hidden", json!([]));
    shot(&a, &dir, "reconnected");
    // Same identity as before: Bob sees Alice's old uid online.
    bob.send(json!({"cmd": "getOnline", "rid": "durable"}));
    let online = loop {
        let v = bob.recv();
        if v["cmd"] == "getOnline" {
            break v;
        }
    };
    let online_uids: Vec<&str> = online["users"].as_array().unwrap().iter().filter_map(|u| u["uid"].as_str()).collect();
    assert!(online_uids.contains(&uid.as_str()), "{uid} not online after the reconnect: {online}");
    a.wait_message("missed-1");
    bob.say("durable", "after-1");
    bob.say("durable", "after-2");
    a.wait_message("after-2");
    a.wait_message("after-1");
    // Sent once back: shown once, and out of the outbox.
    a.wait_message("while away");
    a.wait_js(
        "the outbox emptied",
        "return document.querySelectorAll('[data-testid=outbox] *').length === 0",
        json!([]),
    );
    let ms = a.messages();
    for t in ["before-1", "before-2", "missed-1", "after-1", "after-2", "while away"] {
        assert_eq!(count_text(&ms, t), 1, "{t} shown {} times: {ms:?}", count_text(&ms, t));
    }
    assert_eq!(ms.len(), 6, "{ms:?}");
    // The page shows the status as connected again.
    assert_eq!(a.status(), "connected");
    assert!(a.text(&a.by_id("connection-status")).to_lowercase().contains("connected"));
    // Still usable: the page can send after the reconnect.
    a.say("alice is back");
    let mut m = next_message(&mut bob);
    if m["msg"] == "while away" {
        m = next_message(&mut bob);
    }
    assert_eq!(m["msg"], "alice is back");
    assert_eq!(m["uid"], uid.as_str());
    a.wait_message("alice is back");
    shot(&a, &dir, "after");
}

/// (e) Phone width: the login form and the composer are visible and usable
/// with the keyboard alone.
fn phone_width_keyboard_only() {
    let (dir, server, driver) = setup("phone_width_keyboard_only", &["--shards", "2"]);
    let a = driver.session(375, 800);
    a.cmd("POST", "/window/rect", Some(json!({"width": 375, "height": 800})));
    a.open(server.addr);
    a.sign_address(None);
    let width = a.exec("return window.innerWidth", json!([])).as_i64().unwrap();
    assert!(width <= 400, "viewport is {width}px wide");
    let fits = "var r = document.querySelector(arguments[0]).getBoundingClientRect();
                return r.width > 0 && r.height > 0 && r.left >= 0 && r.right <= window.innerWidth + 1 && r.top >= 0 && r.bottom <= window.innerHeight + 1";
    for id in ["login-name", "login-room", "login-uid", "login-submit"] {
        assert!(a.displayed(&a.by_id(id)), "{id} not displayed");
        assert_eq!(a.exec(fits, json!([format!("[data-testid={id}]")])), true, "{id} outside the viewport");
    }
    shot(&a, &dir, "login");
    // Keyboard only: the name field has focus; Tab moves through the form; Enter submits.
    let focused = "return document.activeElement && document.activeElement.dataset.testid";
    assert_eq!(a.exec(focused, json!([])), "login-name");
    a.keys("Pat");
    a.keys(KEY_TAB);
    assert_eq!(a.exec(focused, json!([])), "login-room");
    a.exec("document.activeElement.select()", json!([]));
    a.keys("mobile");
    a.keys(KEY_TAB);
    assert_eq!(a.exec(focused, json!([])), "login-uid");
    a.keys(KEY_ENTER);
    a.wait_connected();
    // The message input has focus after login.
    assert_eq!(a.exec(focused, json!([])), "message-input");
    for id in ["message-input", "message-send", "message-list", "connection-status"] {
        assert!(a.displayed(&a.by_id(id)), "{id} not displayed");
        assert_eq!(a.exec(fits, json!([format!("[data-testid={id}]")])), true, "{id} outside the viewport");
    }
    a.keys("typed on a phone");
    a.keys(KEY_ENTER);
    let m = a.wait_message("typed on a phone");
    assert_eq!(m["name"], "Pat");
    let mut c = client(&server);
    c.login("Quinn", "mobile", Some("quinn"));
    c.say(
        "mobile",
        "a reply with a rather long text that has to wrap on a narrow phone screen instead of widening the page",
    );
    a.wait_message(
        "a reply with a rather long text that has to wrap on a narrow phone screen instead of widening the page",
    );
    let overflow =
        a.exec("return document.documentElement.scrollWidth - window.innerWidth", json!([])).as_i64().unwrap();
    assert!(overflow <= 0, "page is {overflow}px wider than the viewport");
    assert_eq!(a.exec(fits, json!(["[data-testid=message-input]"])), true);
    shot(&a, &dir, "chat");
}

/// (f) Server errors are shown: a too-long message, then sending too fast.
fn server_errors_are_shown() {
    let (dir, server, driver) = setup("server_errors_are_shown", &["--shards", "2", "--rate-limit", "1"]);
    let a = driver.page(server.addr);
    a.login("Alice", "errs", None);
    let banner_hidden = "return document.querySelector('[data-testid=error-banner]').hidden";
    assert_eq!(a.exec(banner_hidden, json!([])), true);
    // 2000 bytes: over the 1024-byte limit.
    let input = a.by_id("message-input");
    a.exec("arguments[0].value = 'x'.repeat(2000)", json!([{ELEMENT_KEY: input}]));
    a.click(&a.by_id("message-send"));
    let text = a.wait_js(
        "the error banner",
        "var b = document.querySelector('[data-testid=error-banner]'); return b.hidden ? null : b.textContent",
        json!([]),
    );
    let text = text.as_str().unwrap();
    // In words; the code is kept for scripts.
    assert!(text.contains("too long") && !text.contains("Server error"), "{text}");
    let code = a.exec("return document.querySelector('[data-testid=error-banner]').dataset.errCode", json!([]));
    assert_eq!(code, "50");
    // The rejected text is given back in the input.
    let back = a.wait_js(
        "the refused text back in the input",
        "return arguments[0].value.length === 2000 ? 2000 : null",
        json!([{ELEMENT_KEY: input}]),
    );
    assert_eq!(back, 2000);
    shot(&a, &dir, "too-long");
    a.clear(&input);
    a.click(&a.by_id("error-dismiss"));
    assert_eq!(a.exec(banner_hidden, json!([])), true);
    // Burst 2 at 1 msg/s: several at once are refused with "sending too fast".
    // Sent in one script, as a fast typist would: typed one by one over
    // WebDriver, a slow machine would let the page give a refused text back
    // into the input between two sends (after its 500 ms) and the next text
    // would be typed after it.
    a.exec(
        "var i = document.querySelector('[data-testid=message-input]'), f = document.getElementById('composer'); for (var k = 0; k < 6; k++) { i.value = 'quick ' + k; f.requestSubmit(); } return true",
        json!([]),
    );
    let text = a.wait_js(
        "a 'too fast' error",
        "var b = document.querySelector('[data-testid=error-banner]'); return !b.hidden && /too fast/.test(b.textContent) ? b.textContent : null",
        json!([]),
    );
    assert!(!text.as_str().unwrap().contains("Server error"), "{text}");
    assert!(a.displayed(&a.by_id("error-banner")));
    a.wait_message("quick 0");
    shot(&a, &dir, "too-fast");
    // The refused texts are sent again in one go (a little apart): all six
    // arrive, each once. (One refused again comes back to the input.)
    a.wait_js(
        "a 'send all again' button",
        "var b = document.querySelector('[data-testid=resend-all]'); return !b.hidden && /Send all [2-9] again/.test(b.textContent)",
        json!([]),
    );
    // (Clicked and read in one script: a refusal still on its way may
    // bring a text back right after.)
    assert_eq!(
        a.exec("document.querySelector('[data-testid=resend-all]').click(); return [document.getElementById('composer').dataset.unsent, document.querySelector('[data-testid=message-input]').value, document.querySelector('[data-testid=resend-all]').hidden]", json!([])),
        json!(["0", "", true]),
        "every refused text taken out of the input to be sent"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while (0..6).any(|i| count_text(&a.messages(), &format!("quick {i}")) == 0) {
        assert!(Instant::now() < deadline, "not every refused message came back");
        std::thread::sleep(Duration::from_millis(1200));
        let pending = a.exec("return document.querySelector('[data-testid=message-input]').value", json!([]));
        if pending != "" {
            a.send_keys(&a.by_id("message-input"), KEY_ENTER);
        }
    }
    let msgs = a.messages();
    for i in 0..6 {
        assert_eq!(count_text(&msgs, &format!("quick {i}")), 1, "quick {i}");
    }
}

/// Joining a second room, switching between rooms, unread counts.
fn join_and_switch_rooms() {
    let (dir, server, driver) = setup("join_and_switch_rooms", &["--shards", "2"]);
    let a = driver.page(server.addr);
    let mut c = client(&server);
    c.login("Cy", "second", Some("cy"));
    c.say("second", "history in second");
    a.login("Alice", "first", None);
    a.say("in first");
    a.wait_message("in first");
    let join = a.by_id("join-room-input");
    a.send_keys(&join, "second");
    a.send_keys(&join, KEY_ENTER);
    a.wait_js(
        "second room tab active",
        "var t = document.querySelector('[data-testid=room-tab][data-rid=second]'); return t && t.getAttribute('aria-current') === 'true'",
        json!([]),
    );
    // The new room is ready to write in.
    a.wait_js(
        "focus in the message input after joining",
        "return document.activeElement === document.querySelector('[data-testid=message-input]')",
        json!([]),
    );
    // Joining shows the room's history and who is online.
    a.wait_message("history in second");
    a.wait_user("cy");
    assert_eq!(count_text(&a.messages(), "in first"), 0, "messages of another room shown");
    let _ = c.expect("newUser");
    a.say("hello second");
    assert_eq!(next_message(&mut c)["msg"], "hello second");
    // The page's own copy too, before it leaves the room: arriving later it
    // would count as unread there.
    a.wait_message("hello second");
    // A message in the inactive room raises its unread count.
    a.click(&a.find("[data-testid=room-tab][data-rid=first]"));
    a.wait_message("in first");
    c.say("second", "while away");
    a.wait_js(
        "unread badge on second",
        "var t = document.querySelector('[data-testid=room-tab][data-rid=second]'); return t && /1/.test(t.textContent)",
        json!([]),
    );
    shot(&a, &dir, "unread");
    a.click(&a.find("[data-testid=room-tab][data-rid=second]"));
    a.wait_message("while away");
    let texts: Vec<String> = a.messages().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect();
    assert_eq!(texts, ["history in second", "hello second", "while away"]);
    // Leaving the room: the tab goes and the other room shows.
    a.click(&a.by_id("leave-room"));
    a.wait_js(
        "second tab gone",
        "return !document.querySelector('[data-testid=room-tab][data-rid=second]')",
        json!([]),
    );
    let left = c.expect("userLeave");
    assert_eq!(left["rid"], "second");
    a.wait_message("in first");
    shot(&a, &dir, "rooms");
    // A tab picked while a join is on its way stays picked: the join's answer
    // does not pull the page into the new room.
    a.exec(
        "var i = document.querySelector('[data-testid=join-room-input]'); i.value = 'third'; document.getElementById('join-form').requestSubmit(); document.querySelector('[data-testid=room-tab][data-rid=first]').click(); return true",
        json!([]),
    );
    a.wait_js(
        "third joined",
        "var t = document.querySelector('[data-testid=room-tab][data-rid=third]'); return t && !t.classList.contains('pending')",
        json!([]),
    );
    a.wait_message("in first");
    let current = a.exec("return document.querySelector('[aria-current=true]').dataset.rid", json!([]));
    assert_eq!(current, "first", "the tab the user picked is still the open one");
    // Leaving the last room is not logging out: still signed in and
    // connected, told what to do, and a room joined then works.
    let uid = a.my_uid();
    for _ in 0..2 {
        let n = a.exec("return document.querySelectorAll('[data-testid=room-tab]').length", json!([]));
        a.click(&a.by_id("leave-room"));
        a.wait_js(
            "a tab gone",
            "return document.querySelectorAll('[data-testid=room-tab]').length === arguments[0] - 1",
            json!([n]),
        );
    }
    a.wait_js("the no-room note", "return !!document.querySelector('[data-testid=no-room]')", json!([]));
    assert!(a.exec("return document.getElementById('login-view').hidden", json!([])).as_bool().unwrap(), "logged out");
    assert_eq!(a.status(), "connected");
    shot(&a, &dir, "no-room");
    let join = a.by_id("join-room-input");
    a.send_keys(&join, "fourth");
    a.send_keys(&join, KEY_ENTER);
    a.wait_js(
        "fourth joined",
        "var t = document.querySelector('[data-testid=room-tab][data-rid=fourth]'); return t && !t.classList.contains('pending') && t.getAttribute('aria-current') === 'true'",
        json!([]),
    );
    assert_eq!(a.my_uid(), uid, "the same user");
    a.say("back in a room");
    a.wait_message("back in a room");
}

/// A signed login that runs out (close 4001) stops the page: it says the
/// session expired and does not reconnect in a loop.
#[test]
fn an_expired_session_says_so_and_stops() {
    let (dir, server, driver) = setup("expired_session", &["--token-secret", "browser-secret"]);
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "dana", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(b"browser-secret").unwrap(),
    )
    .unwrap();
    let b = driver.session(1200, 900);
    b.navigate(&format!("http://{}/#token={token}", server.addr));
    b.wait_js("the login form", "return !!document.querySelector('[data-testid=login-name]')", json!([]));
    // Not waiting to be connected: on a loaded machine the token may run
    // out before the login is taken, and the page must say the same then.
    b.submit_login("Dana", "lobby", None);
    b.wait_js_within(
        "the session-expired notice",
        "var e = document.querySelector('[data-testid=login-error]'); return !e.hidden && /session expired/i.test(e.textContent)",
        json!([]),
        Duration::from_secs(15),
    );
    // And it stays put: no reconnect loop.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(b.status(), "idle");
    shot(&b, &dir, "expired");
}

#[test]
fn a_token_in_the_address_signs_the_login() {
    let (dir, server, driver) = setup("a_token_in_the_address_signs_the_login", &["--token-secret", "browser-secret"]);
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let claims = json!({"sub": "carol-from-sso", "name": "Carol", "exp": exp, "rooms": ["lobby"]});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"browser-secret").unwrap(),
    )
    .unwrap();
    let b = driver.session(1200, 900);
    // Token first: its name and rooms, no form to fill.
    b.navigate(&format!("http://{}/#token={token}", server.addr));
    b.wait_connected();
    assert_eq!(b.my_uid(), "carol-from-sso");
    let shown = b.exec(
        "return [document.getElementById('login-view').hidden, document.querySelector('[data-testid=me]').textContent]",
        json!([]),
    );
    assert_eq!(shown[0], true, "no login form: {shown}");
    assert!(shown[1].as_str().unwrap().contains("Carol"), "the token's name: {shown}");
    let mut c = client(&server);
    c.send(json!({"cmd": "login", "name": "x", "rid": "lobby"}));
    c.expect_error(103);
    shot(&b, &dir, "signed-login");
}

fn a_reload_keeps_the_identity_and_rooms_and_announces_nothing() {
    // A departure is announced after the presence grace; 8 s (not 2) so
    // that a slow machine's reload (load, connect, log in) fits inside it.
    let (dir, server, driver) =
        setup("a_reload_keeps_the_identity_and_rooms", &["--shards", "2", "--presence-grace-ms", "8000"]);
    let a = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    // A second room, joined from the page.
    a.send_keys(&a.by_id("join-room-input"), "second");
    a.click(&a.by_id("join-room-submit"));
    a.wait_js(
        "the second room's tab, joined",
        "var t = document.querySelectorAll('[data-testid=room-tab]'); return t.length === 2 && !t[1].classList.contains('pending')",
        json!([]),
    );
    let uid = a.my_uid();
    let mut watcher = client(&server);
    watcher.login("w", "lobby", Some("watcher"));
    let reloaded = Instant::now();
    a.reload();
    a.wait_connected();
    assert_eq!(a.my_uid(), uid, "the same user after a reload");
    a.wait_js(
        "both rooms back",
        "var t = document.querySelectorAll('[data-testid=room-tab]'); return t.length === 2 && !t[1].classList.contains('pending')",
        json!([]),
    );
    // The others saw neither a departure nor an arrival, up to past the
    // grace (a departure the server failed to cancel would come by then).
    let quiet = Duration::from_millis(8500).saturating_sub(reloaded.elapsed()).max(Duration::from_millis(500));
    watcher.expect_silence(quiet);
    shot(&a, &dir, "after-reload");
}

/// The outbox across a reload: written while the server is down, the
/// messages wait in the tab's storage through a reload, go once the server
/// is back, and each is shown (and delivered) exactly once.
fn the_outbox_survives_a_reload_and_sends_each_message_once() {
    let (dir, mut server, driver) = setup("outbox", &["--shards", "2"]);
    let addr = server.addr;
    let a = driver.page(addr);
    a.login("Alice", "outbox", None);
    a.say("first");
    a.wait_message("first");
    // This page stays offline (its sockets fail) until it is reloaded.
    a.exec("window.WebSocket = function () { throw new Error('offline'); }; return true;", json!([]));
    server.kill();
    a.wait_js(
        "connection-status = disconnected",
        "return document.querySelector('[data-testid=connection-status]').dataset.state === 'disconnected'",
        json!([]),
    );
    a.say("typed while down 1");
    a.say("typed while down 2");
    a.wait_js(
        "two pending",
        "return document.querySelectorAll('[data-testid=outbox] [data-testid=pending-message]').length === 2",
        json!([]),
    );
    shot(&a, &dir, "pending");
    let listen = addr.to_string();
    let deadline = Instant::now() + WAIT;
    let server2 = loop {
        let args = server_args(&dir, &["--shards", "2"]);
        if let Some(s) = Server::try_start_on(&listen, &args.iter().map(String::as_str).collect::<Vec<_>>()) {
            break s;
        }
        assert!(Instant::now() < deadline, "could not restart the server on {listen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The reloaded page finds them in the tab's storage and sends them.
    a.reload();
    a.wait_connected();
    a.wait_message("typed while down 2");
    a.wait_message("typed while down 1");
    a.wait_js(
        "the outbox emptied",
        "return document.querySelectorAll('[data-testid=outbox] *').length === 0",
        json!([]),
    );
    // (The server keeps history in memory here: "first" went with it.)
    let ms = a.messages();
    for t in ["typed while down 1", "typed while down 2"] {
        assert_eq!(count_text(&ms, t), 1, "{t} shown {} times: {ms:?}", count_text(&ms, t));
    }
    // Stored once each, in the order typed.
    let mut c = client(&server2);
    c.login("Check", "outbox", Some("check"));
    c.send(json!({"cmd": "getHistory", "rid": "outbox"}));
    let h = c.expect("getHistory");
    let texts: Vec<&str> = h["msgs"].as_array().unwrap().iter().filter_map(|m| m["msg"].as_str()).collect();
    let typed: Vec<&str> = texts.iter().copied().filter(|t| t.starts_with("typed")).collect();
    assert_eq!(typed, vec!["typed while down 1", "typed while down 2"], "{texts:?}");
    // A reload sends nothing twice: the outbox is empty and stays so.
    a.reload();
    a.wait_connected();
    a.wait_message("typed while down 2");
    assert_eq!(count_text(&a.messages(), "typed while down 1"), 1);
    shot(&a, &dir, "sent");
}

/// A dropped connection resumes each room where the page left it: the
/// login names the last message shown (`since`), the server replays what
/// was missed, and the page asks for no history.
fn a_dropped_connection_resumes_without_asking_for_history() {
    let (dir, server, driver) = setup("resume", &["--shards", "2"]);
    let a = driver.page(server.addr);
    // Record the page's sockets and what it sends.
    a.exec(
        r#"var W = window.WebSocket; window.__sockets = []; window.__sent = [];
           window.WebSocket = function (u) { var s = new W(u); window.__sockets.push(s);
             var send = s.send.bind(s); s.send = function (d) { window.__sent.push(String(d)); return send(d); }; return s; };
           window.WebSocket.OPEN = W.OPEN; return true;"#,
        json!([]),
    );
    a.login("Alice", "resume", None);
    let mut bob = client(&server);
    bob.login("Bob", "resume", Some("bob"));
    bob.say("resume", "seen");
    a.wait_message("seen");
    // The connection drops; the room goes on.
    a.exec("window.__sent = []; window.__sockets[window.__sockets.length - 1].close(); return true;", json!([]));
    for i in 0..5 {
        bob.say("resume", &format!("missed {i}"));
    }
    a.wait_message("missed 4");
    a.wait_connected();
    bob.say("resume", "live");
    a.wait_message("live");
    let ms = a.messages();
    let texts: Vec<&str> = ms.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, vec!["seen", "missed 0", "missed 1", "missed 2", "missed 3", "missed 4", "live"]);
    let sent = a.exec("return window.__sent", json!([]));
    let sent: Vec<Value> =
        sent.as_array().unwrap().iter().map(|s| serde_json::from_str(s.as_str().unwrap()).unwrap()).collect();
    let login = sent.iter().find(|m| m["cmd"] == "login").expect("a login after the drop");
    assert!(login["since"]["seq"].as_u64().is_some(), "the login resumes: {login}");
    assert!(!sent.iter().any(|m| m["cmd"] == "getHistory"), "no history asked for: {sent:?}");
    shot(&a, &dir, "resumed");
}

/// A direct conversation opened from the user list reaches the other
/// person's page, which opens it by itself (unread); the room directory
/// lists the rooms with people in them, never conversations, and joins one.
fn direct_conversations_and_the_room_directory() {
    let (dir, server, driver) = setup("dm_directory", &["--shards", "2"]);
    let a = driver.page(server.addr);
    let b = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    b.login("Bob", "lobby", None);
    let ub = b.my_uid();
    a.wait_user(&ub);
    // Alice opens the conversation with Bob from the user list.
    a.click(&a.find(&format!("[data-testid=dm-button][data-uid='{ub}']")));
    a.wait_js(
        "the conversation's tab, active and joined",
        "var t = document.querySelector('[data-testid=room-tab][aria-current=true]'); return !!t && t.dataset.rid.indexOf('dm:') === 0 && /@ Bob/.test(t.textContent) && !t.classList.contains('pending')",
        json!([]),
    );
    a.say("just for you, bob");
    a.wait_message("just for you, bob");
    // Bob's page learns of it and opens it, unread.
    b.wait_unread_conversation("Alice");
    shot(&b, &dir, "knocked");
    b.click(&b.find("[data-testid=room-tab][data-rid^='dm:']"));
    b.wait_message("just for you, bob");
    // A third user's room, found in the directory and joined from it.
    let mut carol = client(&server);
    carol.login("Carol", "garden", Some("carol"));
    b.click(&b.by_id("browse-rooms"));
    b.wait_directory(&["lobby", "garden"]);
    let listed = b.exec(
        "return Array.from(document.querySelectorAll('[data-testid=directory-room]')).map(function (l) { return l.dataset.rid + ' ' + l.textContent; })",
        json!([]),
    );
    assert!(!listed.to_string().contains("dm:"), "conversations are not listed: {listed}");
    assert!(listed.to_string().contains("lobby") && listed.to_string().contains("2 users"), "{listed}");
    shot(&b, &dir, "directory");
    b.click(&b.find("[data-testid=directory-room][data-rid=garden] button"));
    b.wait_js(
        "garden joined and open",
        "var t = document.querySelector('[data-testid=room-tab][aria-current=true]'); return !!t && t.dataset.rid === 'garden' && !t.classList.contains('pending')",
        json!([]),
    );
    carol.say("garden", "welcome bob");
    b.wait_message("welcome bob");
}

/// Edit (↑ on an empty composer), react, reply and delete, seen on both
/// pages live and after a reload.
fn messages_are_edited_reacted_to_replied_to_and_deleted() {
    let (dir, server, driver) = setup("changes", &["--shards", "2", "--rate-limit", "0"]);
    let a = driver.page(server.addr);
    let b = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    b.login("Bob", "lobby", None);
    a.wait_user(&b.my_uid());
    a.say("teh cat");
    b.wait_message("teh cat");
    // ↑ in the empty composer edits the last message.
    let input = a.by_id("message-input");
    a.send_keys(&input, "\u{E013}");
    a.wait_js("the composer edits", "return !document.querySelector('[data-testid=edit-target]').hidden && document.querySelector('[data-testid=message-input]').value === 'teh cat'", json!([]));
    a.exec("document.querySelector('[data-testid=message-input]').value = ''; return true", json!([]));
    a.say("the cat");
    for p in [&a, &b] {
        p.wait_js(
            "the edited text, marked",
            "var m = Array.from(document.querySelectorAll('[data-testid=message-list] [data-testid=message]')).find(function (m) { return m.querySelector('.body').textContent === 'the cat'; }); return !!m && /\\(edited\\)/.test(m.textContent)",
            json!([]),
        );
    }
    assert_eq!(count_text(&a.messages(), "teh cat"), 0);
    // Bob reacts with the picker; Alice adds hers by clicking the reaction.
    b.exec(
        "document.querySelector('[data-testid=message] [data-testid=react-button]').click(); return true",
        json!([]),
    );
    b.exec("document.querySelector('[data-testid=pick-emoji]').click(); return true", json!([]));
    a.wait_js(
        "👍 1 on Alice's page",
        "var r = document.querySelector('[data-testid=reaction]'); return !!r && r.textContent === '👍 1'",
        json!([]),
    );
    a.exec("document.querySelector('[data-testid=reaction]').click(); return true", json!([]));
    b.wait_js(
        "👍 2 on Bob's page",
        "var r = document.querySelector('[data-testid=reaction]'); return !!r && r.textContent === '👍 2'",
        json!([]),
    );
    // Bob replies to it: the reply quotes it.
    b.exec(
        "document.querySelector('[data-testid=message] [data-testid=reply-button]').click(); return true",
        json!([]),
    );
    b.wait_js("the reply bar", "return !document.querySelector('[data-testid=reply-target]').hidden", json!([]));
    b.say("meow");
    a.wait_js(
        "the reply, quoting",
        "var q = document.querySelector('[data-testid=reply-quote]'); return !!q && /Alice: the cat/.test(q.textContent)",
        json!([]),
    );
    shot(&a, &dir, "changed");
    // Alice deletes hers (confirmed).
    a.exec("window.confirm = function () { return true; }; return true", json!([]));
    a.exec(
        "document.querySelector('[data-testid=message].own [data-testid=delete-button]').click(); return true",
        json!([]),
    );
    b.wait_js(
        "deleted on Bob's page",
        "return !!document.querySelector('[data-testid=message][data-deleted=true]')",
        json!([]),
    );
    // A reload shows the room as it is now.
    b.reload();
    b.wait_connected();
    b.wait_message("meow");
    b.wait_js("deleted after the reload", "var d = document.querySelector('[data-testid=message][data-deleted=true]'); return !!d && /deleted/.test(d.textContent)", json!([]));
    assert_eq!(count_text(&b.messages(), "the cat"), 0);
    shot(&b, &dir, "reloaded");
}

/// Typing shows on the other page and clears when the message comes; a
/// second tab of the same browser is the same user.
fn typing_is_shown_and_a_second_tab_is_the_same_user() {
    let (dir, server, driver) = setup("typing_identity", &["--shards", "2"]);
    let a = driver.page(server.addr);
    let b = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    b.login("Bob", "lobby", None);
    let ua = a.my_uid();
    b.wait_user(&ua);
    a.send_keys(&a.by_id("message-input"), "hel");
    b.wait_js(
        "Alice is typing",
        "return document.querySelector('[data-testid=typing]').textContent === 'Alice is typing…'",
        json!([]),
    );
    shot(&b, &dir, "typing");
    a.send_keys(&a.by_id("message-input"), "lo\u{E007}");
    b.wait_message("hello");
    b.wait_js("typing cleared", "return document.querySelector('[data-testid=typing]').textContent === ''", json!([]));
    // A new tab of Alice's browser (its tab storage empty, its local
    // storage shared): logging in there is Alice again, not a second user.
    if !https() {
        a.exec("sessionStorage.clear(); return true", json!([]));
        a.reload();
        a.login("Alice", "lobby", None);
        assert_eq!(a.my_uid(), ua, "the same user in a new tab");
    }
}

/// `@Name` is highlighted; a mention of you notifies (announced, and a
/// desktop notification when turned on); Tab completes a member's name;
/// Alt+↓ switches rooms; the type selector is back to text after a link.
fn mentions_notify_and_the_keyboard_gets_around() {
    let (dir, server, driver) = setup("mentions", &["--shards", "2"]);
    let a = driver.page(server.addr);
    let b = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    b.login("Bob", "lobby", None);
    b.wait_user(&a.my_uid());
    a.wait_user(&b.my_uid());
    // Bob writes "@Al" + Tab: completed to Alice.
    let input = b.by_id("message-input");
    b.send_keys(&input, "hi @Al\u{E004}");
    assert_eq!(b.exec("return document.querySelector('[data-testid=message-input]').value", json!([])), "hi @Alice ");
    b.send_keys(&input, "look\u{E007}");
    a.wait_js(
        "the mention, highlighted and notified",
        "var m = document.querySelector('[data-testid=message][data-mentions-me=true]'); return !!m && m.querySelector('mark.mention').textContent === '@Alice' && window.__notified === 1 && /Bob in #lobby: hi @Alice look/.test(document.querySelector('#sr-status').textContent)",
        json!([]),
    );
    shot(&a, &dir, "mention");
    // A muted room stays quiet: the mention is shown, not notified.
    a.click(&a.by_id("mute-room"));
    assert_eq!(
        a.exec("return document.querySelector('[data-testid=mute-room]').getAttribute('aria-pressed')", json!([])),
        "true"
    );
    b.send_keys(&input, "@Alice again\u{E007}");
    a.wait_js(
        "the second mention, shown",
        "return document.querySelectorAll('[data-testid=message][data-mentions-me=true]').length === 2",
        json!([]),
    );
    assert_eq!(a.exec("return window.__notified", json!([])), 1, "a muted room notified");
    assert_eq!(
        a.exec("return JSON.parse(localStorage.getItem('cchat.muted'))", json!([])),
        json!(["lobby"]),
        "kept for the next visit"
    );
    a.click(&a.by_id("mute-room"));
    b.send_keys(&input, "@Alice unmuted\u{E007}");
    a.wait_js("notified again", "return window.__notified === 2", json!([]));
    // Notifications can be turned on (asked once) and the choice is kept.
    a.click(&a.by_id("notify"));
    assert_eq!(
        a.exec("return document.querySelector('[data-testid=notify]').getAttribute('aria-pressed')", json!([])),
        "true"
    );
    // A picture link, then the selector is back to text.
    a.exec("document.querySelector('[data-testid=message-type]').value = 'pic'; return true", json!([]));
    a.say("http://example.invalid/cat.png");
    a.wait_js(
        "type back to text",
        "return document.querySelector('[data-testid=message-type]').value === 'text'",
        json!([]),
    );
    // Alt+↓ moves to the next room.
    a.send_keys(&a.by_id("join-room-input"), "second");
    a.click(&a.by_id("join-room-submit"));
    a.wait_js("second joined", "var t = document.querySelector('[data-testid=room-tab][aria-current=true]'); return !!t && t.dataset.rid === 'second' && !t.classList.contains('pending')", json!([]));
    a.send_keys(&a.by_id("message-input"), "\u{E00A}\u{E015}");
    a.wait_js(
        "back to lobby with Alt+↓",
        "return document.querySelector('[data-testid=room-tab][aria-current=true]').dataset.rid === 'lobby'",
        json!([]),
    );
    // A skip link leads to the message box.
    assert_eq!(
        a.exec("return document.querySelector('[data-testid=skip-link]').getAttribute('href')", json!([])),
        "#message-input"
    );
}

/// A draining server (SIGTERM) closes with 1012 and a retry hint: the
/// page comes back after the hinted time (at most 3 s), not its backoff.
fn a_draining_server_is_rejoined_after_its_hint() {
    let (dir, mut server, driver) = setup("drain_hint", &[]);
    let addr = server.addr;
    let a = driver.page(addr);
    a.login("Alice", "lobby", None);
    server.signal(15);
    a.wait_js(
        "a reconnect within the hint",
        "var s = document.querySelector('[data-testid=connection-status]'); var m = /reconnecting in ([0-9.]+) s/.exec(s.textContent); return s.dataset.state === 'disconnected' && !!m && Number(m[1]) <= 3.0",
        json!([]),
    );
    shot(&a, &dir, "draining");
    let t0 = Instant::now();
    while server.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(15), "the drained server did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    let listen = addr.to_string();
    let deadline = Instant::now() + WAIT;
    let _server2 = loop {
        let args = server_args(&dir, &[]);
        if let Some(s) = Server::try_start_on(&listen, &args.iter().map(String::as_str).collect::<Vec<_>>()) {
            break s;
        }
        assert!(Instant::now() < deadline, "could not restart the server on {listen}");
        std::thread::sleep(Duration::from_millis(100));
    };
    a.wait_js_within(
        "connected again",
        "return document.querySelector('[data-testid=connection-status]').dataset.state === 'connected'",
        json!([]),
        Duration::from_secs(15),
    );
}

fn reading_older_messages_keeps_its_place_and_text_is_shown_as_written() {
    let (dir, server, driver) = setup("reading_older_messages_keeps_its_place", &["--rate-limit", "0"]);
    let a = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    let mut bob = client(&server);
    bob.login("Bob", "lobby", Some("bob"));
    for i in 0..60 {
        bob.say("lobby", &format!("filler {i}"));
    }
    a.wait_message("filler 59");
    // Scrolled to the top, a new message does not pull the list down. (At
    // the top the page loads older messages first, keeping the reader's
    // place: wait for the room's beginning, then go to the top again.)
    a.exec("var l = document.querySelector('[data-testid=message-list]'); l.scrollTop = 0; return true;", json!([]));
    a.wait_js_within(
        "the room's beginning",
        "return !!document.querySelector('[data-testid=beginning]')",
        json!([]),
        Duration::from_secs(10),
    );
    a.exec("var l = document.querySelector('[data-testid=message-list]'); l.scrollTop = 0; return true;", json!([]));
    bob.say("lobby", "arrives while reading");
    a.wait_message("arrives while reading");
    let top = a.exec("return document.querySelector('[data-testid=message-list]').scrollTop", json!([]));
    assert!(top.as_f64().unwrap() < 50.0, "the list jumped to {top}");
    // A button offers the way back, counting what came meanwhile.
    let jump = a.by_id("jump-latest");
    assert!(a.displayed(&jump));
    assert!(a.text(&jump).starts_with("1 new message"), "{}", a.text(&jump));
    a.click(&jump);
    a.wait_js(
        "back at the newest message",
        "var l = document.querySelector('[data-testid=message-list]'); return l.scrollHeight - l.scrollTop - l.clientHeight < 60",
        json!([]),
    );
    a.wait_js("the button gone", "return document.querySelector('[data-testid=jump-latest]').hidden", json!([]));
    // Right-to-left text lays itself out right to left.
    bob.say("lobby", "שלום עולם");
    a.wait_message("שלום עולם");
    let dir_of = a.exec(
        "var ms = document.querySelectorAll('[data-testid=message] .body'); return getComputedStyle(ms[ms.length - 1]).direction",
        json!([]),
    );
    assert_eq!(dir_of, "rtl");
    // Addresses are links that open apart; nothing else is.
    bob.say("lobby", "see https://example.com/page. and javascript:alert(1)");
    a.wait_message("see https://example.com/page. and javascript:alert(1)");
    let links = a.exec(
        "return Array.from(document.querySelectorAll('[data-testid=message-link]')).map(function (l) { return [l.href, l.rel, l.target]; })",
        json!([]),
    );
    assert_eq!(links, json!([["https://example.com/page", "noopener noreferrer", "_blank"]]));
    let js = a.exec("return document.querySelectorAll('a[href^=\"javascript:\"]').length", json!([]));
    assert_eq!(js, 0);
    shot(&a, &dir, "reading");
}

/// Direct conversations and the room directory at phone width in dark
/// mode: the conversation opens from the (folded) user list, its tab and
/// its unread count reach the other side, the directory lists and joins a
/// room; the directory and the tabs are legible on the dark page.
#[test]
fn conversations_and_the_directory_work_on_a_phone_in_dark_mode() {
    let (dir, server, driver) = setup("dm_phone_dark", &["--rate-limit", "0"]);
    let a = driver.dark_phone(server.addr);
    a.login("Pat", "lobby", None);
    let b = driver.page(server.addr);
    b.login("Bob", "lobby", None);
    let ub = b.my_uid();
    a.wait_user(&ub);
    // On a phone the user list is folded: unfolded by a tap on its title.
    a.exec(
        "var p = document.getElementById('users-panel'); var d = p.tagName === 'DETAILS' ? p : p.querySelector('details'); if (d && !d.open) d.querySelector('summary').click(); return true",
        json!([]),
    );
    a.click(&a.find(&format!("[data-testid=dm-button][data-uid='{ub}']")));
    a.wait_js(
        "the conversation's tab, active and joined",
        "var t = document.querySelector('[data-testid=room-tab][aria-current=true]'); return !!t && t.dataset.rid.indexOf('dm:') === 0 && /@ Bob/.test(t.textContent) && !t.classList.contains('pending')",
        json!([]),
    );
    a.say("from my phone");
    a.wait_message("from my phone");
    b.wait_unread_conversation("Pat");
    b.click(&b.find("[data-testid=room-tab][data-rid^='dm:']"));
    b.wait_message("from my phone");
    // The directory, on the phone.
    let mut carol = client(&server);
    carol.login("Carol", "garden", Some("carol"));
    a.click(&a.by_id("browse-rooms"));
    a.wait_directory(&["lobby", "garden"]);
    // The directory is light on dark; the open tab, on the accent colour,
    // dark on light: either way far apart.
    for css in ["[data-testid=directory-room]", "[data-testid=room-tab][data-rid^='dm:']"] {
        let (fg, bg) = luminance(&a, css);
        assert!((fg - bg).abs() > 0.4, "{css}: text {fg:.2} on background {bg:.2}");
    }
    let (fg, bg) = luminance(&a, "[data-testid=directory-room]");
    assert!(fg > bg, "the directory is dark: text {fg:.2} on {bg:.2}");
    // Nothing wider than the phone.
    let wide = a.exec("return document.documentElement.scrollWidth <= window.innerWidth + 1", json!([]));
    assert_eq!(wide, true, "the page scrolls sideways on a phone");
    shot(&a, &dir, "directory-phone-dark");
    a.click(&a.find("[data-testid=directory-room][data-rid=garden] button"));
    a.wait_js(
        "garden joined and open",
        "var t = document.querySelector('[data-testid=room-tab][aria-current=true]'); return !!t && t.dataset.rid === 'garden' && !t.classList.contains('pending')",
        json!([]),
    );
    carol.say("garden", "hello phone");
    a.wait_message("hello phone");
}

/// The conversation features at phone width in dark mode, by real clicks
/// and keys (not scripts): edit with ↑, react by tapping a reaction, reply
/// and delete from a message's buttons; all legible on the dark page.
#[test]
fn changes_work_on_a_phone_in_dark_mode() {
    let (dir, server, driver) = setup("changes_phone_dark", &["--rate-limit", "0"]);
    let a = driver.dark_phone(server.addr);
    a.login("Pat", "lobby", None);
    let b = driver.page(server.addr);
    b.login("Bob", "lobby", None);
    a.wait_user(&b.my_uid());
    b.say("a cat");
    a.wait_message("a cat");
    a.say("teh dog");
    b.wait_message("teh dog");
    // ↑ in the empty composer edits the last own message.
    let input = a.by_id("message-input");
    a.send_keys(&input, "\u{E013}");
    a.wait_js("the composer edits", "return !document.querySelector('[data-testid=edit-target]').hidden && document.querySelector('[data-testid=message-input]').value === 'teh dog'", json!([]));
    a.clear(&input);
    a.send_keys(&input, "the dog\u{E007}");
    b.wait_js(
        "the edit on Bob's page",
        "return Array.from(document.querySelectorAll('[data-testid=message] .body')).some(function (b) { return b.textContent === 'the dog'; })",
        json!([]),
    );
    // Bob reacts to his message; Pat taps the reaction to add hers.
    b.exec(
        "document.querySelector('[data-testid=message] [data-testid=react-button]').click(); return true",
        json!([]),
    );
    b.exec("document.querySelector('[data-testid=pick-emoji]').click(); return true", json!([]));
    a.wait_js(
        "👍 1",
        "var r = document.querySelector('[data-testid=reaction]'); return !!r && r.textContent === '👍 1'",
        json!([]),
    );
    a.click(&a.find("[data-testid=reaction]"));
    b.wait_js(
        "👍 2",
        "var r = document.querySelector('[data-testid=reaction]'); return !!r && r.textContent === '👍 2'",
        json!([]),
    );
    // Pat replies to Bob's message from its button.
    a.click(&a.find("[data-testid=message]:not(.own) [data-testid=reply-button]"));
    a.wait_js("the reply bar", "return !document.querySelector('[data-testid=reply-target]').hidden", json!([]));
    a.send_keys(&input, "meow\u{E007}");
    b.wait_js(
        "the reply, quoting",
        "var q = document.querySelector('[data-testid=reply-quote]'); return !!q && /Bob: a cat/.test(q.textContent)",
        json!([]),
    );
    // Legible in the dark: the reaction chip and the quote are light on dark.
    for css in ["[data-testid=reaction]", "[data-testid=message] .body"] {
        let (fg, bg) = luminance(&a, css);
        assert!(fg > bg + 0.4, "{css}: text {fg:.2} on background {bg:.2}");
    }
    shot(&a, &dir, "changes-phone-dark");
    // Pat deletes her message (confirmed) from its button.
    a.exec("window.confirm = function () { return true; }; return true", json!([]));
    a.click(&a.find("[data-testid=message].own [data-testid=delete-button]"));
    b.wait_js(
        "deleted on Bob's page",
        "return !!document.querySelector('[data-testid=message][data-deleted=true]')",
        json!([]),
    );
}

/// Two devices of one user (two browsers, one uid): what one reads is no
/// longer unread on the other. Device B has another room open while bob
/// writes in "second"; its tab counts two unread; device A has "second"
/// open, sees them, and B's count goes. B's reload keeps it read (the
/// marker is the server's, in the login ack).
fn reading_on_one_device_clears_unread_on_the_other() {
    let (dir, server, driver) = setup("read_markers", &["--shards", "2"]);
    let join = |p: &Browser, rid: &str| {
        let input = p.by_id("join-room-input");
        p.send_keys(&input, rid);
        p.send_keys(&input, KEY_ENTER);
        p.wait_js(
            &format!("{rid} joined"),
            "var t = document.querySelector('[data-testid=room-tab][data-rid=\"' + arguments[0] + '\"]'); return t && !t.classList.contains('pending')",
            json!([rid]),
        );
    };
    let badge = |p: &Browser, rid: &str| -> u64 {
        p.exec(
            "var t = document.querySelector('[data-testid=room-tab][data-rid=\"' + arguments[0] + '\"]'); var b = t && t.querySelector('.badge'); return b ? Number(b.textContent) : 0",
            json!([rid]),
        )
        .as_u64()
        .unwrap_or(0)
    };
    let a = driver.page(server.addr);
    a.login("Ann", "first", Some("ann"));
    let b = driver.page(server.addr);
    b.login("Ann", "first", Some("ann"));
    join(&b, "second");
    b.click(&b.find("[data-testid=room-tab][data-rid=first]"));
    let mut bob = client(&server);
    bob.login("Bob", "second", Some("bob"));
    bob.say("second", "one");
    bob.say("second", "two");
    b.wait_js(
        "two unread in second on B",
        "var t = document.querySelector('[data-testid=room-tab][data-rid=second] .badge'); return !!t && t.textContent === '2'",
        json!([]),
    );
    shot(&b, &dir, "unread-before");
    // Device A opens "second" and reads both.
    join(&a, "second");
    a.wait_message("two");
    b.wait_js(
        "B's unread cleared by A's read",
        "return !document.querySelector('[data-testid=room-tab][data-rid=second] .badge')",
        json!([]),
    );
    shot(&b, &dir, "unread-after");
    // One more, read on A as it comes: B ends with nothing unread, and a
    // reload of B (its state from the server's marker) shows none either.
    bob.say("second", "three");
    a.wait_message("three");
    b.wait_js(
        "B: three read on A",
        "return !document.querySelector('[data-testid=room-tab][data-rid=second] .badge')",
        json!([]),
    );
    b.reload();
    b.wait_connected();
    b.wait_js(
        "B's rooms back after the reload",
        "return !!document.querySelector('[data-testid=room-tab][data-rid=second]')",
        json!([]),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let active_second = b
        .exec("var t = document.querySelector('[data-testid=room-tab][data-rid=second]'); return t.getAttribute('aria-current') === 'true'", json!([]))
        .as_bool()
        .unwrap_or(false);
    if !active_second {
        assert_eq!(badge(&b, "second"), 0, "the reloaded page counts what the marker says was read");
    }
}

/// A burst of 2,000 messages into the open room: every one is taken (the
/// page keeps the newest 1,000 and draws the newest of them, in order, the
/// last one at the bottom) while the page keeps drawing frames. The frame figures (longest gap between
/// animation frames, long tasks, time to the last message shown) are
/// measured with the Performance API and printed, and written to the file
/// `CCHAT_PAGE_BURST_OUT` names (`bench/scenarios/page-burst.sh`): a
/// benchmark's figures, not asserted here.
#[test]
fn a_burst_of_2000_messages_is_shown_whole() {
    // CCHAT_PAGE_BURST_N: another burst size (the bench's floor: 20).
    let n: usize = std::env::var("CCHAT_PAGE_BURST_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let (dir, server, driver) = setup("burst", &["--rate-limit", "0"]);
    let a = driver.page(server.addr);
    a.login("Reader", "burst", None);
    let mut bob = client(&server);
    bob.login("Bob", "burst", Some("bob"));
    a.wait_user("bob");
    // Measured in the page, which checks for the end at each frame (a
    // WebDriver poll that queried the list would itself lay it out, and
    // be counted as the page's work): the test only reads a flag.
    a.exec(
        "window.__frames = { last: performance.now(), maxGap: 0, long: 0, longMs: 0, done: null, lastText: arguments[0] };
         var f = window.__frames, l = document.querySelector('[data-testid=message-list]');
         (function tick(t) {
           f.maxGap = Math.max(f.maxGap, t - f.last); f.last = t;
           var last = l.lastElementChild, b = last && last.querySelector('.body');
           if (b && b.textContent === f.lastText && l.scrollHeight - l.scrollTop - l.clientHeight < 60) f.done = t;
           else requestAnimationFrame(tick);
         })(performance.now());
         try { new PerformanceObserver(function (list) { list.getEntries().forEach(function (e) { if (!f.done) { f.long++; f.longMs = Math.max(f.longMs, e.duration); } }); }).observe({ entryTypes: ['longtask'] }); } catch (e) {}
         return true",
        json!([format!("burst {}", n - 1)]),
    );
    // Sent at once (the server's frames are batched per socket).
    let t0 = Instant::now();
    for i in 0..n {
        bob.send(json!({"cmd": "message", "rid": "burst", "type": "text", "msg": format!("burst {i}")}));
    }
    a.wait_js_within(
        "the last message of the burst shown at the bottom",
        "return window.__frames.done !== null",
        json!([]),
        Duration::from_secs(60),
    );
    let shown_s = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let f = a.exec("return window.__frames", json!([]));
    let texts: Vec<String> = a.messages().iter().map(|m| m["text"].as_str().unwrap().to_owned()).collect();
    assert!((n.min(100)..=1000).contains(&texts.len()), "{} drawn", texts.len());
    let want: Vec<String> = (n - texts.len()..n).map(|i| format!("burst {i}")).collect();
    assert_eq!(texts, want, "the newest, each once, in order");
    shot(&a, &dir, "burst");
    let figures = format!(
        "{n} messages in one burst: the last one shown {shown_s:.2} s after the first was sent; longest gap between animation frames {:.0} ms; long tasks {} (longest {:.0} ms)",
        f["maxGap"].as_f64().unwrap_or(-1.0),
        f["long"],
        f["longMs"].as_f64().unwrap_or(0.0)
    );
    eprintln!("{figures}");
    if let Ok(out) = std::env::var("CCHAT_PAGE_BURST_OUT") {
        std::fs::write(out, format!("{figures}\n")).unwrap();
    }
}

fn dark_mode_follows_the_system() {
    let (dir, server, driver) = setup("dark_mode_follows_the_system", &[]);
    let a = driver.page(server.addr);
    let background = || a.exec("return getComputedStyle(document.documentElement).backgroundColor", json!([]));
    let light = background();
    a.dark();
    a.login("Dana", "lobby", None);
    let dark = background();
    assert_ne!(light, dark);
    // A dark background: each of its channels below a quarter.
    let rgb: Vec<f64> = dark
        .as_str()
        .unwrap()
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .map(|c| c.trim().parse().unwrap())
        .collect();
    assert!(rgb.iter().all(|c| *c < 64.0), "{dark}");
    shot(&a, &dir, "dark");
}

fn scrolling_up_loads_older_messages_in_place() {
    let (dir, server, driver) = setup("scrolling_up_loads_older_messages", &["--rate-limit", "0"]);
    let mut bob = client(&server);
    bob.login("Bob", "long", Some("bob"));
    for i in 1..=250 {
        bob.say("long", &format!("old {i}"));
    }
    // Wait until the server has them all (the reply follows the messages).
    bob.send(json!({"cmd": "getHistory", "rid": "long", "limit": 1}));
    while bob.recv()["cmd"] != "getHistory" {}
    let a = driver.page(server.addr);
    a.login("Alice", "long", None);
    a.wait_message("old 250");
    // The page shows the newest 100; the first comes by scrolling up.
    assert_eq!(count_text(&a.messages(), "old 1"), 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_text(&a.messages(), "old 1") == 0 {
        assert!(Instant::now() < deadline, "scrolling up never reached the first message");
        a.exec("document.querySelector('[data-testid=message-list]').scrollTop = 0; return true;", json!([]));
        std::thread::sleep(Duration::from_millis(300));
    }
    // Each message once, in order, and the reader was not thrown to the bottom.
    let texts: Vec<String> = a.messages().iter().filter_map(|m| m["text"].as_str().map(str::to_owned)).collect();
    let olds: Vec<&String> = texts.iter().filter(|t| t.starts_with("old ")).collect();
    assert_eq!(olds.len(), 250, "{olds:?}");
    assert_eq!(olds.first().map(|s| s.as_str()), Some("old 1"));
    assert_eq!(olds.last().map(|s| s.as_str()), Some("old 250"));
    let top = a.exec("return document.querySelector('[data-testid=message-list]').scrollTop", json!([]));
    let height = a.exec("return document.querySelector('[data-testid=message-list]').scrollHeight", json!([]));
    assert!(top.as_f64().unwrap() < height.as_f64().unwrap() / 2.0, "kept near the top: {top} of {height}");
    // Up once more: nothing older, and the page says it is the beginning.
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.exec("return !!document.querySelector('[data-testid=beginning]')", json!([])) != json!(true) {
        assert!(Instant::now() < deadline, "the beginning of the room was never shown");
        a.exec("document.querySelector('[data-testid=message-list]').scrollTop = 0; return true;", json!([]));
        std::thread::sleep(Duration::from_millis(300));
    }
    shot(&a, &dir, "scrolled-back");
}

fn consecutive_messages_of_one_sender_are_grouped() {
    let (dir, server, driver) = setup("consecutive_messages_are_grouped", &["--rate-limit", "0"]);
    let a = driver.page(server.addr);
    a.login("Alice", "g", None);
    let mut bob = client(&server);
    bob.login("Bob", "g", Some("bob"));
    for t in ["b1", "b2", "b3"] {
        bob.say("g", t);
    }
    a.wait_message("b3");
    a.say("a1");
    a.wait_message("a1");
    bob.say("g", "b4");
    a.wait_message("b4");
    let grouped = a.exec(
        "return Array.from(document.querySelectorAll('[data-testid=message-list] [data-testid=message]')).map(function (m) { return [m.querySelector('.body').textContent, m.classList.contains('grouped'), m.querySelector('.meta').getBoundingClientRect().height > 2]; })",
        json!([]),
    );
    assert_eq!(
        grouped,
        json!([
            ["b1", false, true],
            ["b2", true, false],
            ["b3", true, false],
            ["a1", false, true],
            ["b4", false, true]
        ])
    );
    // Hidden from sight, not from screen readers: every message keeps its sender.
    let named = a.exec(
        "return Array.from(document.querySelectorAll('[data-testid=message-list] [data-testid=message]')).every(function (m) { var n = m.querySelector('.name'); return !!n && n.textContent.length > 0 && getComputedStyle(m.querySelector('.meta')).display !== 'none'; })",
        json!([]),
    );
    assert_eq!(named, json!(true));
    shot(&a, &dir, "grouped");
}

fn coming_back_to_a_room_marks_the_first_unread_message() {
    let (dir, server, driver) = setup("first_unread_is_marked", &["--rate-limit", "0"]);
    let a = driver.page(server.addr);
    a.login("Alice", "one", None);
    let mut bob = client(&server);
    bob.login("Bob", "one", Some("bob"));
    bob.say("one", "seen before");
    a.wait_message("seen before");
    // Alice goes to another room; three messages arrive in the first.
    a.send_keys(&a.by_id("join-room-input"), "two");
    a.click(&a.by_id("join-room-submit"));
    a.wait_js(
        "room two active",
        "var t = document.querySelector('[data-testid=room-tab][data-rid=two]'); return t && t.getAttribute('aria-current') === 'true'",
        json!([]),
    );
    for t in ["unread 1", "unread 2", "unread 3"] {
        bob.say("one", t);
    }
    a.wait_js(
        "three unread in room one",
        "var t = document.querySelector('[data-testid=room-tab][data-rid=one]'); return t && /3/.test(t.textContent)",
        json!([]),
    );
    a.click(&a.find("[data-testid=room-tab][data-rid=one]"));
    let marked = a.exec(
        "return Array.from(document.querySelectorAll('[data-testid=message-list] [data-first-unread=true] .body')).map(function (b) { return b.textContent; })",
        json!([]),
    );
    assert_eq!(marked, json!(["unread 1"]));
    shot(&a, &dir, "first-unread");
}

fn a_hidden_page_counts_new_messages_in_its_title() {
    let (dir, server, driver) = setup("hidden_page_title", &["--rate-limit", "0"]);
    let a = driver.page(server.addr);
    a.login("Alice", "t", None);
    let mut bob = client(&server);
    bob.login("Bob", "t", Some("bob"));
    // The page goes to the background (as a hidden tab reports it).
    a.exec(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: function () { return true; }}); document.dispatchEvent(new Event('visibilitychange')); return true",
        json!([]),
    );
    bob.say("t", "one");
    bob.say("t", "two");
    a.wait_message("two");
    assert_eq!(a.exec("return document.title", json!([])), "(2) cchat");
    a.exec(
        "Object.defineProperty(document, 'hidden', {configurable: true, get: function () { return false; }}); document.dispatchEvent(new Event('visibilitychange')); return true",
        json!([]),
    );
    assert_eq!(a.exec("return document.title", json!([])), "cchat");
    shot(&a, &dir, "title");
}

fn on_a_phone_the_messages_get_most_of_the_screen() {
    let (dir, server, driver) = setup("phone_messages_get_the_screen", &["--rate-limit", "0"]);
    let a = driver.session(390, 844);
    a.cmd("POST", "/window/rect", Some(json!({"width": 390, "height": 844})));
    a.open(server.addr);
    a.login("Pat", "lobby", None);
    let mut bob = client(&server);
    bob.login("Bob", "lobby", Some("bob"));
    bob.say("lobby", "hello phone");
    a.wait_message("hello phone");
    let share = a.exec(
        "return document.querySelector('[data-testid=message-list]').getBoundingClientRect().height / window.innerHeight",
        json!([]),
    );
    shot(&a, &dir, "phone");
    assert!(share.as_f64().unwrap() >= 0.5, "the message list has {share} of the height");
    // The input's placeholder is not cut off.
    let fits = a.exec(
        "var i = document.querySelector('[data-testid=message-input]'); var c = document.createElement('canvas').getContext('2d'); var st = getComputedStyle(i); c.font = st.font; var pad = parseFloat(st.paddingLeft) + parseFloat(st.paddingRight); return c.measureText(i.placeholder).width <= i.clientWidth - pad",
        json!([]),
    );
    let why = a.exec(
        "var i = document.querySelector('[data-testid=message-input]'); return [i.placeholder, i.clientWidth]",
        json!([]),
    );
    assert_eq!(fits, true, "{why}");
}

/// Presses Shift+Enter through W3C actions.
fn shift_enter(b: &Browser) {
    let acts = json!([
        {"type": "keyDown", "value": "\u{E008}"},
        {"type": "keyDown", "value": KEY_ENTER},
        {"type": "keyUp", "value": KEY_ENTER},
        {"type": "keyUp", "value": "\u{E008}"}
    ]);
    b.cmd("POST", "/actions", Some(json!({"actions": [{"type": "key", "id": "kb", "actions": acts}]})));
}

fn shift_enter_and_pasted_newlines_make_multi_line_messages() {
    let (dir, server, driver) = setup("multi_line_messages", &[]);
    let a = driver.page(server.addr);
    a.login("Ann", "lobby", None);
    let mut bob = client(&server);
    bob.login("Bob", "lobby", Some("bob"));
    let input = a.by_id("message-input");
    a.click(&input);
    a.keys("line one");
    shift_enter(&a);
    a.keys("line two");
    a.keys(KEY_ENTER);
    assert_eq!(next_message(&mut bob)["msg"], "line one\nline two", "Shift+Enter is a new line, Enter sends");
    let m = a.wait_message("line one\nline two");
    assert_eq!(m["private"], false);
    let lines = a.exec(
        "var ms = document.querySelectorAll('[data-testid=message] .body'); var b = ms[ms.length - 1]; return b.getBoundingClientRect().height / (parseFloat(getComputedStyle(b).fontSize) * 1.2)",
        json!([]),
    );
    assert!(lines.as_f64().unwrap() >= 1.9, "shown on two lines: {lines}");
    // Pasted text keeps its newlines.
    a.exec(
        "var i = document.querySelector('[data-testid=message-input]'); i.value = 'a\\nb\\nc'; i.dispatchEvent(new Event('input')); return true",
        json!([]),
    );
    a.click(&a.by_id("message-send"));
    assert_eq!(next_message(&mut bob)["msg"], "a\nb\nc");
    assert_eq!(a.exec("return document.querySelector('[data-testid=message-input]').value", json!([])), "");
    shot(&a, &dir, "multi-line");
}

fn a_change_of_name_keeps_the_user_and_log_out_ends_the_session() {
    // The page reconnects under the new name within the presence grace: 8 s
    // (not 2) so that a slow machine's reconnect fits inside it.
    let (dir, server, driver) = setup("change_name_and_log_out", &["--presence-grace-ms", "8000"]);
    let a = driver.page(server.addr);
    a.login("Ann", "lobby", Some("ann"));
    let mut w = client(&server);
    w.login("w", "lobby", Some("watcher"));
    a.click(&a.by_id("change-name"));
    let name = a.by_id("name-input");
    a.clear(&name);
    a.send_keys(&name, "Annie");
    a.click(&a.by_id("name-save"));
    let renamed = Instant::now();
    a.wait_js(
        "the header shows the new name",
        "var me = document.querySelector('[data-testid=me]'); return me.textContent.indexOf('Annie') >= 0 && me.dataset.uid === 'ann' && document.querySelector('[data-testid=connection-status]').dataset.state === 'connected'",
        json!([]),
    );
    // The room learns the new name for the same uid; nobody saw a departure.
    let v = w.expect("newUser");
    assert_eq!((v["uid"].as_str(), v["name"].as_str()), (Some("ann"), Some("Annie")));
    w.expect_silence(Duration::from_millis(8500).saturating_sub(renamed.elapsed()).max(Duration::from_millis(500)));
    w.send(json!({"cmd":"getOnline","rid":"lobby"}));
    let online = w.expect("getOnline");
    assert!(online["users"].as_array().unwrap().iter().any(|u| u["uid"] == "ann" && u["name"] == "Annie"), "{online}");
    shot(&a, &dir, "renamed");
    // Log out: announced at once, back to the login form, and a reload does
    // not log back in.
    a.click(&a.by_id("logout"));
    assert_eq!(w.expect("userLeave")["uid"], "ann");
    assert!(a.displayed(&a.by_id("login-submit")));
    a.reload();
    a.wait_js(
        "the login form after a reload",
        "return !!document.querySelector('[data-testid=login-name]') && !document.querySelector('#login-view').hidden",
        json!([]),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(a.status(), "idle", "a logged-out page does not reconnect");
}

fn on_a_phone_unread_messages_in_tabs_out_of_sight_are_shown() {
    let (dir, server, driver) = setup("phone_unread_pill", &["--rate-limit", "0"]);
    let a = driver.session(390, 844);
    a.cmd("POST", "/window/rect", Some(json!({"width": 390, "height": 844})));
    a.open(server.addr);
    a.login("Pat", "lobby", Some("pat"));
    let rooms = ["second-room-with-a-long-name", "third-room-with-a-long-name", "fourth-room-with-a-long-name"];
    for (k, r) in rooms.iter().enumerate() {
        let join = a.by_id("join-room-input");
        a.send_keys(&join, r);
        a.send_keys(&join, KEY_ENTER);
        a.wait_js(
            "the tab, joined",
            "var t = document.querySelectorAll('[data-testid=room-tab]'); return t.length === arguments[0] && !t[t.length - 1].classList.contains('pending')",
            json!([k + 2]),
        );
    }
    // Back to the first room, at the start of the strip.
    a.exec(
        "document.querySelector('[data-testid=room-tab][data-rid=lobby]').click(); document.querySelector('[data-testid=room-tabs]').scrollLeft = 0; return true",
        json!([]),
    );
    let mut bob = client(&server);
    bob.login("Bob", rooms[2], Some("bob"));
    bob.say(rooms[2], "over here");
    let pill = a.wait_js(
        "the unread pill",
        "var p = document.querySelector('[data-testid=tabs-unread]'); if (p.hidden) return null; var r = p.getBoundingClientRect(); var s = document.querySelector('[data-testid=room-tabs]').getBoundingClientRect(); return {text: p.textContent, left: r.left, right: r.right, top: r.top, bottom: r.bottom, strip_right: s.right}",
        json!([]),
    );
    shot(&a, &dir, "pill");
    assert_eq!(pill["text"], "1 unread");
    let (l, r) = (pill["left"].as_f64().unwrap(), pill["right"].as_f64().unwrap());
    assert!(l >= 0.0 && r <= 390.0 && r > l, "on screen: {pill}");
    // Beside the strip, not over it: no tab (the active one included) is covered.
    assert!(l >= pill["strip_right"].as_f64().unwrap() - 1.0, "the pill covers the tabs: {pill}");
    a.click(&a.by_id("tabs-unread"));
    a.wait_js(
        "the tab with the unread message in view",
        "var s = document.querySelector('[data-testid=room-tabs]').getBoundingClientRect(); var t = document.querySelector('[data-testid=room-tab][data-rid=fourth-room-with-a-long-name]').getBoundingClientRect(); return t.left >= s.left - 1 && t.right <= s.right + 1 && document.querySelector('[data-testid=tabs-unread]').hidden",
        json!([]),
    );
}

fn messages_of_other_days_get_date_separators() {
    use cchat::store::log::record;
    use cchat::store::log::recovery::{segment_name, shard_dir};
    // A log left by an earlier run, written as the server writes it: three
    // messages three days ago and yesterday.
    let data = crate::common::temp_data_dir();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let day = 86_400_000;
    let epoch = now - 4 * day;
    let mut seg = record::header().to_vec();
    for (seq, ts, text) in [
        (1, now - 3 * day, "three days ago"),
        (2, now - 3 * day + 60_000, "a minute later"),
        (3, now - day, "yesterday"),
    ] {
        let m = json!({"cmd":"message","uid":"olga","name":"Olga","type":"text","rid":"days","msg":text,"seq":seq,"epoch":epoch,"ts":ts});
        record::encode(&mut seg, epoch, seq, ts, "days", m.to_string().as_bytes());
    }
    let shard = shard_dir(&data, 0);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(segment_name(1)), &seg).unwrap();
    let data_arg = data.to_str().unwrap().to_owned();
    let (dir, server, driver) = setup("date_separators", &["--shards", "1", "--data-dir", &data_arg]);
    let a = driver.page(server.addr);
    a.login("Ann", "days", None);
    a.wait_message("yesterday");
    a.say("today");
    a.wait_message("today");
    let seps = a.exec(
        "return Array.from(document.querySelectorAll('[data-testid=message]')).map(function (m) { var s = m.querySelector('[data-testid=day-separator]'); return [m.querySelector('.body').textContent, s ? s.textContent : null, m.classList.contains('grouped')]; })",
        json!([]),
    );
    shot(&a, &dir, "days");
    let seps = seps.as_array().unwrap();
    assert_eq!(seps.len(), 4, "{seps:?}");
    let label = seps[0][1].as_str().expect("a separator above the first message");
    assert!(!label.is_empty() && label != "Today" && label != "Yesterday", "a date: {label}");
    assert_eq!(seps[1], json!(["a minute later", null, true]), "same day, same sender: grouped, no separator");
    assert_eq!(seps[2][1], "Yesterday");
    assert_eq!(seps[3][1], "Today");
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn over_https_with_a_token_the_page_chats_on_wss() {
    let certs = test_dir("https_with_a_token-certs");
    crate::tls::make_cert(&certs, "localhost");
    let (c, k) = (certs.join("cert.pem"), certs.join("key.pem"));
    let args = ["--tls-cert", c.to_str().unwrap(), "--tls-key", k.to_str().unwrap(), "--token-secret", "https-secret"];
    let (dir, server, driver) = setup("https_with_a_token", &args);
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 300;
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub, "name": sub.to_uppercase(), "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(b"https-secret").unwrap(),
        )
        .unwrap()
    };
    let port = server.addr.port();
    let a = driver.session(1200, 900);
    a.navigate(&format!("https://localhost:{port}/#token={}", token("ann")));
    a.wait_js("the login form over https", "return !!document.querySelector('[data-testid=login-name]')", json!([]));
    a.login("Ann", "lobby", None);
    assert_eq!(a.my_uid(), "ann");
    let b = driver.session(1200, 900);
    b.navigate(&format!("https://localhost:{port}/#token={}", token("bob")));
    b.wait_js("the login form over https", "return !!document.querySelector('[data-testid=login-name]')", json!([]));
    b.login("Bob", "lobby", None);
    a.say("hello over wss");
    assert_eq!(b.wait_message("hello over wss")["uid"], "ann");
    b.say("and back");
    a.wait_message("and back");
    assert_eq!(a.exec("return location.protocol", json!([])), "https:");
    shot(&a, &dir, "https");
}

/// A message the store refuses (a real redis-server at its maxmemory) comes
/// back to the input, and goes once the store takes messages again.
#[test]
fn a_message_the_store_refuses_comes_back_to_the_input() {
    let redis = crate::common::redis::Redis::start();
    let url = redis.url();
    let (_dir, server, driver) = setup("store_refusal_back_in_input", &["--store", &url, "--rate-limit", "0"]);
    let a = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    a.say("stored first");
    a.wait_message("stored first");
    redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]);
    a.say("kept for later");
    a.wait_js(
        "the store's refusal",
        "var b = document.querySelector('[data-testid=error-banner]'); return !b.hidden && /store full/i.test(b.textContent)",
        json!([]),
    );
    a.wait_js(
        "the refused text back in the input",
        "return document.querySelector('[data-testid=message-input]').value === 'kept for later'",
        json!([]),
    );
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]);
    // Refused a second at a time: sent again until taken.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count_text(&a.messages(), "kept for later") == 0 {
        assert!(Instant::now() < deadline, "never taken once the store had room");
        std::thread::sleep(Duration::from_millis(1200));
        let pending = a.exec("return document.querySelector('[data-testid=message-input]').value", json!([]));
        if pending != "" {
            a.send_keys(&a.by_id("message-input"), KEY_ENTER);
        }
    }
    assert_eq!(count_text(&a.messages(), "kept for later"), 1);
}

/// A message Redis stored whose answer was lost (a proxy drops Redis's
/// replies): the page neither hands it back to the input nor sends it as a
/// new message; it stays in the outbox and goes again under its `mid`, and
/// is shown once, stored once, when Redis is heard again.
#[test]
fn a_message_the_store_may_have_taken_is_sent_again_under_its_id() {
    let redis = crate::common::redis::Redis::start();
    let proxy = crate::common::proxy::Proxy::start(format!("127.0.0.1:{}", redis.port));
    let url = format!("redis://{}", proxy.addr);
    let (_dir, server, driver) = setup("store_in_doubt", &["--store", &url, "--rate-limit", "0"]);
    let a = driver.page(server.addr);
    a.login("Alice", "lobby", None);
    a.say("stored first");
    a.wait_message("stored first");
    proxy.drop_replies.store(true, std::sync::atomic::Ordering::SeqCst);
    a.say("in doubt");
    a.wait_js(
        "the page says it is sending again",
        "var b = document.querySelector('[data-testid=error-banner]'); return !b.hidden && /could not confirm/i.test(b.textContent)",
        json!([]),
    );
    let input = a.exec("return document.querySelector('[data-testid=message-input]').value", json!([]));
    assert_eq!(input, "", "a message the store may have was handed back to the input");
    assert_eq!(
        a.exec(
            "return document.querySelectorAll('[data-testid=outbox] [data-testid=pending-message]').length",
            json!([])
        ),
        1
    );
    proxy.drop_replies.store(false, std::sync::atomic::Ordering::SeqCst);
    a.wait_message("in doubt");
    a.wait_js(
        "the outbox emptied",
        "return document.querySelectorAll('[data-testid=outbox] *').length === 0",
        json!([]),
    );
    assert_eq!(count_text(&a.messages(), "in doubt"), 1);
    let mut c = client(&server);
    c.login("Check", "lobby", Some("check"));
    c.send(json!({"cmd": "getHistory", "rid": "lobby"}));
    let h = c.expect("getHistory");
    let texts: Vec<String> = crate::common::history_msgs(&h).into_iter().map(|m| m.2).collect();
    assert_eq!(texts, ["stored first", "in doubt"], "stored once");
}

/// Each scenario over http with open logins, and over https with signed ones.
macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod plain {
            $(#[test]
            fn $name() {
                super::$name()
            })*
        }
        mod over_https {
            $(#[test]
            fn $name() {
                super::over_https(super::$name)
            })*
        }
    };
}

both_ways!(
    two_pages_chat_both_ways,
    reading_on_one_device_clears_unread_on_the_other,
    private_message_reaches_only_target,
    markup_is_shown_as_text,
    media_messages_for_http_urls,
    the_page_runs_under_its_own_security_policy,
    reconnects_after_server_restart,
    phone_width_keyboard_only,
    server_errors_are_shown,
    join_and_switch_rooms,
    a_reload_keeps_the_identity_and_rooms_and_announces_nothing,
    the_outbox_survives_a_reload_and_sends_each_message_once,
    a_dropped_connection_resumes_without_asking_for_history,
    direct_conversations_and_the_room_directory,
    messages_are_edited_reacted_to_replied_to_and_deleted,
    typing_is_shown_and_a_second_tab_is_the_same_user,
    mentions_notify_and_the_keyboard_gets_around,
    a_draining_server_is_rejoined_after_its_hint,
    reading_older_messages_keeps_its_place_and_text_is_shown_as_written,
    dark_mode_follows_the_system,
    scrolling_up_loads_older_messages_in_place,
    consecutive_messages_of_one_sender_are_grouped,
    coming_back_to_a_room_marks_the_first_unread_message,
    a_hidden_page_counts_new_messages_in_its_title,
    on_a_phone_the_messages_get_most_of_the_screen,
    shift_enter_and_pasted_newlines_make_multi_line_messages,
    a_change_of_name_keeps_the_user_and_log_out_ends_the_session,
    on_a_phone_unread_messages_in_tabs_out_of_sight_are_shown,
    messages_of_other_days_get_date_separators,
);

/// After a room's sequence restarts (here: a written-mode log after a
/// reboot), the page still shows what is on disk of the older epoch: in
/// order before the new messages, and scrolling up pages back into it.
#[test]
fn the_page_reaches_back_into_an_older_epoch() {
    let (dir, mut server, driver) = setup("older_epoch", &["--rate-limit", "0", "--shards", "1"]);
    let mut bob = client(&server);
    bob.login("Bob", "ep", Some("bob"));
    for i in 1..=120 {
        bob.say("ep", &format!("before {i}"));
    }
    bob.send(json!({"cmd": "getHistory", "rid": "ep", "limit": 1}));
    while bob.recv()["cmd"] != "getHistory" {}
    drop(bob);
    server.signal(9);
    let _ = server.child.wait();
    let data = server.own_data.take().expect("the server's own data directory");
    drop(server);
    // As if the machine had rebooted: the room starts a new epoch.
    crate::common::pretend_reboot(&data);
    let server = Server::start(&["--rate-limit", "0", "--shards", "1", "--data-dir", data.to_str().unwrap()]);
    let mut carl = client(&server);
    carl.login("Carl", "ep", Some("carl"));
    for i in 1..=3 {
        carl.say("ep", &format!("after {i}"));
    }
    carl.send(json!({"cmd": "getHistory", "rid": "ep", "limit": 1}));
    while carl.recv()["cmd"] != "getHistory" {}
    let a = driver.page(server.addr);
    a.login("Alice", "ep", None);
    a.wait_message("after 3");
    a.wait_message("before 120");
    let deadline = Instant::now() + Duration::from_secs(20);
    while count_text(&a.messages(), "before 1") == 0 {
        assert!(Instant::now() < deadline, "scrolling up never reached the older epoch's first message");
        a.exec("document.querySelector('[data-testid=message-list]').scrollTop = 0; return true;", json!([]));
        std::thread::sleep(Duration::from_millis(300));
    }
    let texts: Vec<String> = a.messages().iter().filter_map(|m| m["text"].as_str().map(str::to_owned)).collect();
    let want: Vec<String> =
        (1..=120).map(|i| format!("before {i}")).chain((1..=3).map(|i| format!("after {i}"))).collect();
    let shown: Vec<String> =
        texts.into_iter().filter(|t| t.starts_with("before ") || t.starts_with("after ")).collect();
    assert_eq!(shown, want, "every message once, older epoch first");
    shot(&a, &dir, "older-epoch");
    drop(server);
    let _ = std::fs::remove_dir_all(&data);
}

/// permessage-deflate with a real browser: Chromium offers it, the server
/// accepts it, long messages reach the page compressed (one compression per
/// broadcast) and open to the same text, and what the page sends compressed
/// reaches the others.
#[test]
fn chromium_negotiates_compression_and_long_messages_pass_both_ways() {
    let (dir, server, driver) = setup("chromium_negotiates_compression", &["--shards", "1"]);
    let b = driver.page(server.addr);
    // A socket of the page's own origin says what was negotiated.
    b.exec("window.__z = new WebSocket(location.origin.replace(/^http/, 'ws') + '/');", json!([]));
    let ext =
        b.wait_js("the test socket opens", "return window.__z.readyState === 1 && window.__z.extensions", json!([]));
    assert_eq!(ext, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
    b.exec("window.__z.close()", json!([]));

    b.login("Alice", "lobby", None);
    let mut c = client(&server);
    c.login("Carol", "lobby", Some("carol"));
    let long = "the deploy went out at 3pm and the dashboards look fine, but Bob saw a spike in \
                login errors for about two minutes right after; I think it was the cache warming up, \
                can someone double check before we call it done?";
    let before = server.metric("cchat_deflated_frames_total");
    c.say("lobby", long);
    let seen = b.wait_message(long);
    assert_eq!(seen["name"], "Carol");
    assert!(server.metric("cchat_deflated_frames_total") > before, "the page's copy went compressed");

    let inflated = server.metric("cchat_inflated_messages_total");
    let answer = "sounds right to me: the cache warms up for about two minutes after every deploy, and \
                  the errors stop once it is warm; let us add a readiness check so that it warms up first";
    b.say(answer);
    let got = next_message(&mut c);
    assert_eq!(got["msg"], answer);
    assert!(server.metric("cchat_inflated_messages_total") > inflated, "Chromium sent it compressed");
    shot(&b, &dir, "compressed");
}
