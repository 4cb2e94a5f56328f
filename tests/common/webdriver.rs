//! A minimal W3C WebDriver client: a chromedriver process and browser
//! sessions driven through its HTTP API (`tests/browser.rs` adds the chat
//! page's own helpers to [`Browser`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::free_port;

/// How long a wait for the page lasts by default.
pub const WAIT: Duration = Duration::from_secs(10);

pub const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
pub const KEY_ENTER: &str = "\u{E007}";
pub const KEY_TAB: &str = "\u{E004}";

// ---------------------------------------------------------------------------
// A minimal W3C WebDriver client.

pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_global(Some(Duration::from_secs(60)))
            .build(),
    )
}

/// One WebDriver request; returns the `value` of the reply, or the W3C error.
pub fn wd(agent: &ureq::Agent, method: &str, url: &str, body: Option<Value>) -> Result<Value, (String, String)> {
    let resp = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, body) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .send(body.unwrap_or_else(|| json!({})).to_string()),
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {url}: HTTP {status}: {text}"));
    let value = v.get("value").cloned().unwrap_or(Value::Null);
    if status >= 400 || value.get("error").is_some_and(Value::is_string) {
        return Err((
            value["error"].as_str().unwrap_or("?").to_owned(),
            value["message"].as_str().unwrap_or("").to_owned(),
        ));
    }
    Ok(value)
}

pub fn chromedriver_bin() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into())
}

pub fn chromium_bin() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A chromedriver process on a free 127.0.0.1 port; killed on drop.
pub struct Driver {
    child: Child,
    base: String,
    agent: ureq::Agent,
    dir: PathBuf,
}

impl Driver {
    pub fn start(dir: &Path) -> Driver {
        for bin in [chromedriver_bin(), chromium_bin()] {
            assert!(
                Path::new(&bin).exists(),
                "{bin} not found: install Debian's `chromium` and `chromium-driver` (apt-get install chromium chromium-driver)"
            );
        }
        let agent = agent();
        for _ in 0..5 {
            let port = free_port();
            // Its own process group: Chromium's processes go with it.
            let mut cmd = Command::new(chromedriver_bin());
            cmd.arg(format!("--port={port}"))
                .arg(format!("--log-path={}", dir.join("chromedriver.log").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = crate::common::procs::spawn(&mut cmd).expect("start chromedriver");
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken in the meantime: try another
                }
                if let Ok(v) = agent.get(format!("{base}/status")).call().map(|mut r| {
                    serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap_or_default())
                        .unwrap_or(Value::Null)
                }) && v["value"]["ready"] == true
                {
                    return Driver { child, base, agent, dir: dir.to_owned() };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            crate::common::procs::reap(&mut child);
        }
        panic!("chromedriver did not become ready");
    }

    /// A new browser session with its own empty profile directory.
    pub fn session(&self, width: u32, height: u32) -> Browser {
        static N: AtomicUsize = AtomicUsize::new(0);
        let profile = self.dir.join(format!("profile-{}", N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The TLS test's certificate is self-signed.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium_bin(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ]
            }
        }}});
        let v = wd(&self.agent, "POST", &format!("{}/session", self.base), Some(caps))
            .unwrap_or_else(|e| panic!("new session: {e:?}"));
        let id = v["sessionId"].as_str().expect("sessionId").to_owned();
        let b = Browser { agent: self.agent.clone(), base: format!("{}/session/{id}", self.base), profile };
        // Every page of the session records what its Content-Security-Policy
        // blocks (a script injected this way is not subject to it).
        b.cdp(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({"source": "window.__csp = []; document.addEventListener('securitypolicyviolation', function (e) {
                window.__csp.push(e.violatedDirective + ' ' + e.blockedURI); });"}),
        );
        b
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        crate::common::procs::reap(&mut self.child);
    }
}

/// One browser session (a window with one page); deleted on drop.
pub struct Browser {
    agent: ureq::Agent,
    base: String,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = wd(&self.agent, "DELETE", &self.base, None);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Browser {
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        wd(&self.agent, method, &format!("{}{path}", self.base), body)
            .unwrap_or_else(|(e, m)| panic!("{method} {path}: {e}: {m}"))
    }

    pub fn navigate(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})));
    }

    pub fn find(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        v[ELEMENT_KEY].as_str().expect("element id").to_owned()
    }

    pub fn by_id(&self, testid: &str) -> String {
        self.find(&format!("[data-testid=\"{testid}\"]"))
    }

    pub fn send_keys(&self, el: &str, text: &str) {
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({"text": text})));
    }

    pub fn clear(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/clear"), None);
    }

    pub fn click(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/click"), None);
    }

    pub fn text(&self, el: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/text"), None).as_str().unwrap_or("").to_owned()
    }

    pub fn displayed(&self, el: &str) -> bool {
        self.cmd("GET", &format!("/element/{el}/displayed"), None) == true
    }

    /// Types on the keyboard into whatever has focus (W3C actions).
    pub fn keys(&self, text: &str) {
        let mut acts = Vec::new();
        for c in text.chars() {
            acts.push(json!({"type": "keyDown", "value": c.to_string()}));
            acts.push(json!({"type": "keyUp", "value": c.to_string()}));
        }
        self.cmd("POST", "/actions", Some(json!({"actions": [{"type": "key", "id": "kb", "actions": acts}]})));
    }

    /// A Chrome DevTools command (through chromedriver).
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd("POST", "/goog/cdp/execute", Some(json!({"cmd": cmd, "params": params})))
    }

    pub fn exec(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    pub fn alert_text(&self) -> Option<String> {
        wd(&self.agent, "GET", &format!("{}/alert/text", self.base), None)
            .ok()
            .map(|v| v.as_str().unwrap_or("").to_owned())
    }

    pub fn screenshot(&self, path: &Path) {
        let v = self.cmd("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(v.as_str().expect("base64 screenshot")).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Polls a JS expression (the body of a function) until it returns a
    /// truthy value; returns that value. On timeout: panics with `what`.
    pub fn wait_js(&self, what: &str, script: &str, args: Value) -> Value {
        self.wait_js_within(what, script, args, WAIT)
    }

    /// [`Browser::wait_js`] for up to `wait`.
    pub fn wait_js_within(&self, what: &str, script: &str, args: Value, wait: Duration) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let v = self.exec(script, args.clone());
            let truthy = !matches!(&v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let dump = self.exec("return document.body.innerText.slice(0, 3000)", json!([]));
                panic!("timed out waiting for {what}; page text:\n{}", dump.as_str().unwrap_or(""));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
