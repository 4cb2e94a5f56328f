//! loadgen against a real cchat server: a clean run passes its checks, and a
//! server that drops a slow reader makes loadgen fail.
//!
//! The server binary is the `cchat` built next to loadgen in the same target
//! directory and profile (`cargo test --workspace` builds it for the server's
//! own tests); if it is missing, the test builds it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

#[path = "../../tests/common/cert.rs"]
mod cert;

/// A cchat process, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cchat_binary() -> PathBuf {
    let loadgen = Path::new(env!("CARGO_BIN_EXE_loadgen"));
    let dir = loadgen.parent().expect("binary directory");
    let cchat = dir.join("cchat");
    if !cchat.exists() {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", "cchat", "--bin", "cchat"]).current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("run cargo build -p cchat");
        assert!(st.success(), "building cchat failed");
    }
    cchat
}

/// The two tests run one after the other: the lossy one loads the machine,
/// and the clean one must not pay for it.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_server(args: &[&str]) -> Server {
    let mut child = Command::new(cchat_binary())
        .args(["--listen", "127.0.0.1:0", "--shards", "2", "--rate-limit", "0", "--durability", "memory"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start cchat");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Server { child, url: format!("ws://{addr}/") }
}

/// A finished loadgen run.
struct Run {
    code: i32,
    /// The `--json` summary, if it wrote one.
    summary: Option<Value>,
    /// Its stdout and stderr, for failure messages.
    output: String,
}

/// A run that must pass: its summary, or the test fails with loadgen's output.
fn passing(server: &Server, name: &str, args: &str) -> Value {
    let run = loadgen(server, name, &args.split(' ').collect::<Vec<_>>());
    let s = run.summary.unwrap_or_else(|| panic!("no summary; exit code {}:\n{}", run.code, run.output));
    assert_eq!(run.code, 0, "loadgen failed:\n{}", run.output);
    s
}

fn loadgen(server: &Server, name: &str, args: &[&str]) -> Run {
    let json = std::env::temp_dir().join(format!("loadgen-e2e-{}-{name}.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &server.url, "--json"])
        .arg(&json)
        .args(args)
        .output()
        .expect("run loadgen");
    let summary = std::fs::read_to_string(&json).ok().map(|t| serde_json::from_str(&t).expect("summary is JSON"));
    let _ = std::fs::remove_file(&json);
    Run {
        code: out.status.code().unwrap_or(-1),
        summary,
        output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    }
}

#[test]
fn a_clean_run_has_no_loss_and_keeps_order() {
    let _serial = serial();
    let server = start_server(&[]);
    let args = "--clients 1000 --room-size 50 --rate 100 --duration 5 --warmup 1 --drain 5";
    let s = passing(&server, "clean", args);
    assert_eq!(s["ok"], true);
    let d = &s["deliveries"];
    // 500 measured messages, each to the 49 other members of its room.
    assert_eq!(d["expected"], 500 * 49);
    assert_eq!(d["received"], d["expected"]);
    assert_eq!(d["lost"], 0);
    let c = &s["checks"];
    for k in ["seq_gaps", "seq_backwards", "error_frames", "closed", "unexpected"] {
        assert_eq!(c[k], 0, "{k}: {s:#}");
    }
    assert_eq!(s["latency_ms"]["count"], 500 * 49);
    assert_eq!(s["completion_ms"]["count"], 500);
    assert!(s["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(s["cpu"]["loadgen_ns_per_delivery"].as_f64().unwrap() > 0.0);
}

/// --edits and --reactions: senders edit their own messages and react to
/// others'; the server takes every change (no error frame: each edit is of
/// the sender's own message) and every member gets every event in order.
#[test]
fn edits_and_reactions_are_taken_and_fanned_out_in_order() {
    let _serial = serial();
    let server = start_server(&[]);
    let args = "--clients 200 --room-size 20 --rate 200 --duration 4 --warmup 1 --drain 3 --edits 0.1 --reactions 0.1";
    let s = passing(&server, "edits", args);
    let e = &s["events"];
    assert!(e["edits"].as_u64().unwrap() > 20, "{s:#}");
    assert!(e["sent"].as_u64().unwrap() > 20, "{s:#}");
    // Each change reaches the room's other 19 members (and its sender's
    // other members see it in the room's sequence).
    assert!(
        e["received"].as_u64().unwrap() >= 19 * (e["edits"].as_u64().unwrap() + e["sent"].as_u64().unwrap()) / 2,
        "{s:#}"
    );
    for k in ["seq_gaps", "seq_backwards", "error_frames"] {
        assert_eq!(s["checks"][k], 0, "{k}: {s:#}");
    }
}

#[test]
fn a_server_that_drops_slow_readers_fails_the_run() {
    let _serial = serial();
    // A 2,000-byte outbound cap and ~1 KB messages: a few frames waiting for
    // one socket are enough for the server to close it with 1008, and a
    // small receive buffer makes frames wait.
    let server = start_server(&["--max-outbound-bytes", "2000"]);
    let args = "--clients 200 --room-size 100 --rate 2000 --payload 1000 --duration 3 --warmup 0.5 --drain 1 \
                --rcvbuf 4096";
    let run = loadgen(&server, "slow", &args.split_whitespace().collect::<Vec<_>>());
    assert_ne!(run.code, 0, "loadgen passed a lossy run:\n{}", run.output);
    // A connection dropped while joining can end the run before the summary
    // (the exit code and message say so); otherwise the summary names it.
    let Some(s) = run.summary else {
        assert!(run.output.contains("1008") || run.output.contains("closed"), "{}", run.output);
        return;
    };
    assert_eq!(s["ok"], false);
    let lost = s["deliveries"]["lost"].as_u64().unwrap();
    let closed = s["checks"]["closed"].as_u64().unwrap();
    assert!(lost > 0 || closed > 0, "no loss or close reported: {s:#}");
    assert!(!s["failures"].as_array().unwrap().is_empty());
}

#[test]
fn worker_processes_split_a_room_and_merge_exactly() {
    let _serial = serial();
    let server = start_server(&[]);
    // One room of 400 split over two worker processes: every message has
    // recipients in both, and the coordinator merges counts and per-message
    // completion times.
    let args = "--clients 400 --room-size 400 --rate 20 --duration 3 --warmup 1 --drain 5 --workers 2";
    let s = passing(&server, "workers", args);
    assert_eq!(s["config"]["workers"], 2);
    assert_eq!(s["deliveries"]["expected"], 60 * 399);
    assert_eq!(s["deliveries"]["received"], 60 * 399);
    assert_eq!(s["latency_ms"]["count"], 60 * 399);
    assert_eq!(s["completion_ms"]["count"], 60);
    assert_eq!(s["messages"]["measured"], 60);
}

#[test]
fn sched_batch_workers_measure_the_same_run() {
    let _serial = serial();
    let server = start_server(&[]);
    // Each worker process puts itself under SCHED_BATCH (it fails the run if
    // it cannot); what it measures must not change.
    let args = "--clients 200 --room-size 100 --rate 20 --duration 2 --warmup 1 --drain 5 --workers 2 --sched-batch";
    let s = passing(&server, "batch", args);
    assert_eq!(s["deliveries"]["expected"], 40 * 99);
    assert_eq!(s["deliveries"]["received"], 40 * 99);
}

#[test]
fn a_run_refused_by_the_rate_limit_says_how_to_lift_it() {
    let _serial = serial();
    // 1 message/s per connection (burst 2) against 50 messages/s from 10 clients.
    let server = start_server(&["--rate-limit", "1"]);
    let args = "--clients 10 --room-size 10 --rate 50 --duration 2 --warmup 0.5 --drain 1";
    let run = loadgen(&server, "refused", &args.split(' ').collect::<Vec<_>>());
    assert_ne!(run.code, 0, "a refused run passed:\n{}", run.output);
    let s = run.summary.unwrap_or_else(|| panic!("no summary:\n{}", run.output));
    assert!(s["checks"]["refused"].as_u64().unwrap() > 0, "{s:#}");
    assert!(run.output.contains("--rate-limit 0"), "{}", run.output);
    // Refused messages are not deliveries that were lost: their deliveries
    // are taken out of the expected ones.
    let d = &s["deliveries"];
    assert!(d["refused"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(d["lost"], 0, "refusals counted as loss: {s:#}");
    assert!(!run.output.contains("expected deliveries lost"), "{}", run.output);
    assert!(run.output.contains("completion: per message"), "the summary says what its rows mean:\n{}", run.output);
}

#[test]
fn on_a_terminal_the_progress_line_is_redrawn_in_place() {
    let _serial = serial();
    let server = start_server(&[]);
    // `script` gives loadgen a terminal (a pseudo-terminal) for stderr.
    let cmd = format!(
        "{} --url {} --clients 20 --room-size 10 --rate 100 --duration 3 --warmup 0.5 --drain 1",
        env!("CARGO_BIN_EXE_loadgen"),
        server.url
    );
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .output()
        .expect("run loadgen under script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let run_lines = text.split(['\n', '\r']).filter(|l| l.contains("] run ")).count();
    let own_lines = text.lines().filter(|l| l.trim_start().starts_with('[') && l.contains("] run ")).count();
    assert!(run_lines >= 3, "a progress line per second: {text}");
    assert!(text.contains("\r["), "redrawn with a carriage return: {text:?}");
    assert!(own_lines <= 1, "the run's progress takes one terminal line, not one per second: {text:?}");
}

#[test]
fn wss_runs_measure_a_tls_server() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("loadgen-e2e-tls-{}", std::process::id()));
    cert::make_cert(&dir, "localhost");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let mut server = start_server(&["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    server.url = server.url.replacen("ws://", "wss://", 1);
    let ca = cert.to_str().unwrap().to_owned();
    let args = [
        "--tls-ca",
        &ca,
        "--clients",
        "200",
        "--room-size",
        "100",
        "--rate",
        "100",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ];
    let run = loadgen(&server, "wss", &args);
    assert_eq!(run.code, 0, "{}", run.output);
    let s = run.summary.unwrap();
    assert_eq!((s["deliveries"]["lost"].as_u64(), s["checks"]["seq_gaps"].as_u64()), (Some(0), Some(0)), "{s:#}");
    assert!(s["deliveries"]["received"].as_u64().unwrap() >= 19_000, "{s:#}");
    // Without the certificate to trust, a wss:// run is refused up front.
    let bare =
        Command::new(env!("CARGO_BIN_EXE_loadgen")).args(["--url", &server.url, "--clients", "1"]).output().unwrap();
    assert!(!bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stderr).contains("--tls-ca"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn under_reconnect_churn_every_member_sees_every_message_once() {
    let _serial = serial();
    let server = start_server(&[]);
    let args = "--clients 400 --room-size 40 --rate 200 --duration 4 --warmup 1 --drain 5 --churn 0.1 --churn-away-ms 300 --workers 2";
    let s = passing(&server, "churn", args);
    let d = &s["deliveries"];
    assert_eq!(d["received"], d["expected"], "{s:#}");
    let c = &s["checks"];
    for k in ["seq_gaps", "seq_backwards", "error_frames", "closed", "unexpected"] {
        assert_eq!(c[k], 0, "{k}: {s:#}");
    }
    let ch = &s["churn"];
    // 10 % of 400 clients a second over ~4 s of sending.
    assert!(ch["drops"].as_u64().unwrap() >= 80, "{ch:#}");
    assert_eq!(ch["resumed"], ch["drops"], "{ch:#}");
    assert_eq!(ch["not_recovered"], 0);
    assert!(ch["resent"].as_u64().unwrap() > 0, "clients send again what they sent before a drop: {ch:#}");
    assert!(ch["queued_while_down"].as_u64().unwrap() > 0, "{ch:#}");
    // Away 300 ms: the resume takes at least that.
    assert!(ch["resume_ms"]["p50"].as_f64().unwrap() >= 300.0, "{ch:#}");
}

#[test]
fn a_server_that_cannot_resume_fails_a_churn_run() {
    let _serial = serial();
    // One message of history: a member away for 300 ms misses more.
    let server = start_server(&["--history", "1", "--history-memory", "1"]);
    let args =
        "--clients 100 --room-size 10 --rate 200 --duration 3 --warmup 1 --drain 2 --churn 0.2 --churn-away-ms 300";
    let run = loadgen(&server, "churn-lossy", &args.split(' ').collect::<Vec<_>>());
    let s = run.summary.unwrap_or_else(|| panic!("no summary; exit code {}:\n{}", run.code, run.output));
    assert_ne!(run.code, 0, "{}", run.output);
    assert!(s["churn"]["not_recovered"].as_u64().unwrap() > 0, "{s:#}");
    assert!(run.output.contains("not recovered"), "{}", run.output);
}

/// A free TCP port on 127.0.0.1 (bound, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` on a free port with no persistence, killed on drop.
struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Redis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start redis-server (apt install redis-server)");
    // Owned by the guard from here on, so a failed start is killed too.
    let redis = Redis(child, port);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return redis;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("redis-server did not start on {port}");
}

/// With --follow-drain, the clients of a node that drains (SIGTERM) come
/// back on the other node after their hint, resume their rooms there and
/// send again what may not have been taken: nothing is lost or repeated,
/// and the report counts them.
#[test]
fn clients_of_a_draining_node_follow_it_to_another_and_lose_nothing() {
    let _serial = serial();
    let redis = start_redis();
    let store = format!("redis://127.0.0.1:{}", redis.1);
    let relay = [free_port(), free_port()];
    let node = |i: usize| {
        let (me, peer) = (format!("127.0.0.1:{}", relay[i]), format!("127.0.0.1:{}", relay[1 - i]));
        let id = format!("n{i}");
        let args =
            ["--node-id", &id, "--relay-listen", &me, "--peer", &peer, "--cluster-secret", "e2e", "--store", &store];
        start_server(&args)
    };
    let (a, b) = (node(0), node(1));
    // Both see each other before the load starts.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let json = std::env::temp_dir().join(format!("loadgen-e2e-{}-follow.json", std::process::id()));
    let _ = std::fs::remove_file(&json);
    let args = "--clients 200 --room-size 20 --rate 100 --payload 32 --duration 8 --warmup 1 --drain 5 --spread-rooms --follow-drain";
    let lg = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &a.url, "--url", &b.url, "--json"])
        .arg(&json)
        .args(args.split(' '))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loadgen");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let st = Command::new("kill").args(["-TERM", &a.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let out = lg.wait_with_output().unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_else(|_| panic!("no summary:\n{output}")))
            .unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(out.status.code(), Some(0), "loadgen failed:\n{output}");
    let d = &s["deliveries"];
    assert_eq!(d["received"], d["expected"], "{s:#}");
    for k in ["seq_gaps", "seq_backwards", "error_frames", "closed"] {
        assert_eq!(s["checks"][k], 0, "{k}: {s:#}");
    }
    let ch = &s["churn"];
    // Half the clients were on the drained node.
    assert_eq!(ch["drain_reconnects"], 100, "{ch:#}");
    assert_eq!(ch["resumed"], 100, "{ch:#}");
    assert_eq!(ch["not_recovered"], 0, "{ch:#}");
    drop(b);
}

/// `--find-max` against a server whose rate limit is known (5 messages/s
/// per connection, 10 connections: 50/s) finds it. The limit is a token
/// bucket with a burst of 2 s worth, so over a step of 3 s (warm-up and
/// measure) up to 1 + 2/3 of it gets through: the answer lies between the
/// limit and that, within the precision asked for.
#[test]
fn find_max_finds_a_known_rate_limit() {
    let _serial = serial();
    let server = start_server(&["--rate-limit", "5"]);
    let args = "--clients 10 --room-size 10 --rate 40 --warmup 1 --duration 2 --drain 1 \
                --find-max --objective lost=0 --step-factor 2 --precision 0.1 --max-steps 10";
    let run = loadgen(&server, "findmax", &args.split_whitespace().collect::<Vec<_>>());
    assert_eq!(run.code, 0, "no step held:\n{}", run.output);
    let s = run.summary.unwrap_or_else(|| panic!("no report:\n{}", run.output));
    let max = s["max_rate"].as_f64().unwrap();
    assert!((45.0..=92.0).contains(&max), "found {max} msg/s for a limit of 50:\n{}", run.output);
    let steps = s["steps"].as_array().unwrap();
    assert!(steps.len() >= 3, "{s:#}");
    // Every step's row is there; the ones that broke say why.
    for st in steps {
        let rate = st["rate"].as_f64().unwrap();
        assert_eq!(st["held"], rate <= max, "{st}");
        if st["held"] == false {
            assert!(st["why"].to_string().contains("rate limit"), "{st}");
        }
    }
    assert_eq!(s["best"]["ok"], true);
    assert!(run.output.contains("highest rate that held"), "{}", run.output);
}

/// `--assert`: a run that meets its objective exits 0; one that breaks a
/// term exits 1 and says which, with what was measured.
#[test]
fn assert_objectives_set_the_exit_code() {
    let _serial = serial();
    let server = start_server(&[]);
    let base = "--clients 20 --room-size 10 --rate 50 --warmup 0.5 --duration 1 --drain 1 --assert";
    let mut args: Vec<&str> = base.split(' ').collect();
    args.push("p99<=60s,lost=0");
    let run = loadgen(&server, "assert-held", &args);
    assert_eq!(run.code, 0, "{}", run.output);
    assert!(run.output.contains("p99<=60s,lost=0: held"), "{}", run.output);
    *args.last_mut().unwrap() = "lost=0,p50<=1us";
    let run = loadgen(&server, "assert-broken", &args);
    assert_eq!(run.code, 1, "{}", run.output);
    assert!(run.output.contains("BROKEN: latency p50 was"), "{}", run.output);
    assert!(run.output.contains("wanted p50<=1us"), "{}", run.output);
    // A term that means nothing is refused before any connection.
    *args.last_mut().unwrap() = "p98<5ms";
    let run = loadgen(&server, "assert-bad", &args);
    assert_eq!(run.code, 2, "{}", run.output);
    assert!(run.output.contains("unknown measure"), "{}", run.output);
}

/// `--json` writes a self-contained HTML report beside the JSON: Chromium
/// opens it and it shows its plots (the latency spectrum, latency over
/// time, and with `--server-metrics` the server's CPU, memory and
/// connections each second), the command and the machine.
#[test]
fn the_html_report_opens_in_chromium_and_shows_its_plots() {
    let _serial = serial();
    let admin = format!("127.0.0.1:{}", free_port());
    let server = start_server(&["--admin-listen", &admin]);
    let metrics = format!("http://{admin}/metrics");
    let args =
        ["--clients", "100", "--room-size", "10", "--rate", "100", "--warmup", "1", "--duration", "3", "--drain", "1"];
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--server-metrics", &metrics]);
    let dir = std::env::temp_dir().join(format!("loadgen-html-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &server.url, "--json"])
        .arg(&json)
        .args(&args)
        .output()
        .expect("run loadgen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let samples = s["server_samples"].as_array().expect("server samples in the summary");
    assert!(samples.iter().any(|x| x["node"] == 0 && x["values"]["cchat_connections"] == 100.0), "{samples:?}");
    assert!(samples.iter().any(|x| x["values"]["process_resident_memory_bytes"].as_f64().unwrap_or(0.0) > 0.0));
    let page = dir.join("run.html");
    let text = std::fs::read_to_string(&page).expect("the HTML report beside the JSON");
    assert!(!text.contains("<script") && !text.contains("src=\"http"), "self-contained, no script");
    // Chromium loads it; its DOM holds the plots with their lines.
    let browser = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .expect("chromium (apt-get install chromium)");
    let dom = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for label in [
        "delivery latency by percentile",
        "completion latency per second",
        "server CPU",
        "server resident memory",
        "connections",
    ] {
        assert!(dom.contains(&format!("aria-label=\"{label}\"")), "no {label:?} plot in:\n{dom:.2000}");
    }
    assert!(dom.matches("<polyline").count() >= 5, "plots without lines");
    assert!(dom.contains("--clients 100") && dom.contains("Machine:"), "command and machine");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `loadgen agent` process, killed on drop.
struct Agent(Child, String);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(secret: &str) -> Agent {
    let addr = format!("127.0.0.1:{}", free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["agent", "--listen", &addr, "--agent-secret", secret])
        .stderr(Stdio::null())
        .spawn()
        .expect("start an agent");
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "the agent never listened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Agent(child, addr)
}

/// Three agents on this machine, each its own process with its own
/// workers and source addresses, against a two-node cluster: the merged
/// run counts exactly what a single-process run of the same shape counts.
/// An agent without the secret is refused; an agent killed mid-run fails
/// the run, saying which.
#[test]
fn three_agents_against_two_nodes_count_what_one_process_counts() {
    let _serial = serial();
    let relay = [free_port(), free_port()];
    let node = |i: usize| {
        let (me, peer) = (format!("127.0.0.1:{}", relay[i]), format!("127.0.0.1:{}", relay[1 - i]));
        let id = format!("n{i}");
        start_server(&["--node-id", &id, "--relay-listen", &me, "--peer", &peer, "--cluster-secret", "e2e"])
    };
    let (a, b) = (node(0), node(1));
    std::thread::sleep(std::time::Duration::from_secs(1));
    let agents: Vec<Agent> = (0..3).map(|_| start_agent("agents-e2e")).collect();
    let list = agents.iter().map(|g| g.1.clone()).collect::<Vec<_>>().join(",");
    let shape = "--clients 300 --room-size 30 --rate 150 --warmup 1 --duration 3 --drain 2 --spread-rooms";
    let run = |name: &str, extra: &[&str]| {
        let json = std::env::temp_dir().join(format!("loadgen-e2e-{}-{name}.json", std::process::id()));
        let _ = std::fs::remove_file(&json);
        let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args(["--url", &a.url, "--url", &b.url, "--json"])
            .arg(&json)
            .args(shape.split(' '))
            .args(extra)
            .output()
            .expect("run loadgen");
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let s: Option<Value> = std::fs::read_to_string(&json).ok().map(|t| serde_json::from_str(&t).unwrap());
        let _ = std::fs::remove_file(&json);
        (out.status.code(), s, output)
    };
    let (code, one, output) = run("one", &["--workers", "1"]);
    assert_eq!(code, Some(0), "{output}");
    let (code, many, output) = run("agents", &["--agents", &list, "--agent-secret", "agents-e2e"]);
    assert_eq!(code, Some(0), "{output}");
    let (one, many) = (one.unwrap(), many.unwrap());
    for k in ["expected", "received", "lost"] {
        assert_eq!(one["deliveries"][k], many["deliveries"][k], "{k}");
    }
    assert_eq!(one["latency_ms"]["count"], many["latency_ms"]["count"]);
    assert_eq!(many["agents"].as_array().unwrap().len(), 3, "{many:#}");
    for g in many["agents"].as_array().unwrap() {
        // Same machine: the clocks agree to well within a millisecond.
        assert!(g["clock_offset_ms"].as_f64().unwrap().abs() < 1.0, "{g}");
    }
    // Latency within noise: the same order of magnitude.
    let (p1, p3) = (one["latency_ms"]["p50"].as_f64().unwrap(), many["latency_ms"]["p50"].as_f64().unwrap());
    assert!(p3 < p1 * 10.0 + 5.0 && p1 < p3 * 10.0 + 5.0, "p50 {p1} vs {p3}");

    // The wrong secret: refused, said so.
    let (code, _, output) = run("wrong", &["--agents", &list, "--agent-secret", "not-the-secret"]);
    assert_ne!(code, Some(0));
    assert!(output.contains("refused the run: wrong --agent-secret"), "{output}");

    // An agent killed mid-run fails the run, naming it.
    let json = std::env::temp_dir().join(format!("loadgen-e2e-{}-killed.json", std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--url", &a.url, "--url", &b.url, "--json"])
        .arg(&json)
        .args(shape.replace("--duration 3", "--duration 6").split(' '))
        .args(["--agents", &list, "--agent-secret", "agents-e2e"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut agents = agents;
    let victim = agents.remove(1);
    let victim_addr = victim.1.clone();
    drop(victim);
    let out = child.wait_with_output().unwrap();
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{output}");
    assert!(output.contains(&format!("agent {victim_addr} went away mid-run")), "{output}");
    assert!(!json.exists(), "no report for an incomplete run");
}

/// A scenario file with each step kind — client classes (half only
/// read), a ramp of stages, typing, reactions, edits, history reads,
/// private messages, reconnects with resume — run over two
/// worker processes (which get the scenario's text, not its path): every
/// kind is sent and answered, the ramp sends what its stages add up to,
/// and a flag on the command line wins over the file.
#[test]
fn a_scenario_file_drives_every_kind_of_step() {
    let _serial = serial();
    let server = start_server(&[]);
    let dir = std::env::temp_dir().join(format!("loadgen-scenario-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("mix.toml");
    std::fs::write(
        &file,
        r#"description = "every step kind"
clients = 500
room_size = 10
rate = 20
warmup = 0.5
drain = 3
stages = [ { seconds = 2, rate = 60 }, { seconds = 1, rate = 60 }, { seconds = 1, rate = 0 } ]
typing = 0.3
reactions = 0.2
edits = 0.1
history_reads = 0.1
private = 0.1
classes = [ { name = "reader", share = 0.5 }, { name = "talker", share = 0.5, think_s = 5 } ]
mids = true
churn = 0.05
churn_away_ms = 200
"#,
    )
    .unwrap();
    let args = ["--scenario", file.to_str().unwrap(), "--clients", "60", "--workers", "2"];
    let run = loadgen(&server, "scenario", &args);
    let s = run.summary.unwrap_or_else(|| panic!("no summary; exit {}:\n{}", run.code, run.output));
    assert_eq!(run.code, 0, "{}", run.output);
    assert_eq!(s["config"]["clients"], 60, "the command line wins");
    assert_eq!(s["config"]["classes"], "reader:0.5:0,talker:0.5:5");
    assert_eq!(s["config"]["room_size"], 10);
    // 10 in the warm-up; then (20+60)/2·2 + 60·1 + (60+0)/2·1 = 170 measured.
    assert_eq!(s["messages"]["measured"], 170, "{s:#}");
    assert_eq!(s["config"]["duration_s"], 4.0);
    let e = &s["events"];
    for k in ["sent", "edits", "typing", "history_reads"] {
        assert!(e[k].as_u64().unwrap() > 0, "{k}: {e}");
    }
    // Under churn a reader dropped before its answer never gets it (the run
    // itself only demands every answer without reconnects).
    let (asked, answered) = (e["history_reads"].as_u64().unwrap(), e["history_answered"].as_u64().unwrap());
    assert!(answered <= asked && answered > asked / 2, "{e}");
    assert!(e["private_received"].as_u64().unwrap() > 0, "{e}");
    // Not stored: under churn one to a target that is away may reach nobody.
    let (sent, got, refused) = (
        e["private_sent"].as_u64().unwrap(),
        e["private_received"].as_u64().unwrap(),
        e["private_refused"].as_u64().unwrap(),
    );
    assert!(got + refused <= sent && got > sent / 2, "{e}");
    assert!(s["churn"]["drops"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["churn"]["not_recovered"], 0);
    assert_eq!(s["deliveries"]["lost"], 0);
    // A preset by name; a scenario that names an unknown key is refused.
    let run = loadgen(
        &server,
        "preset",
        &["--scenario", "fanout-a", "--clients", "100", "--duration", "1", "--warmup", "0.2", "--rate", "50"],
    );
    assert_eq!(run.code, 0, "{}", run.output);
    std::fs::write(&file, "clients = 5\nthink_time = 3\n").unwrap();
    let run = loadgen(&server, "bad-scenario", &["--scenario", file.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{}", run.output);
    assert!(run.output.contains("think_time"), "{}", run.output);
    let _ = std::fs::remove_dir_all(&dir);
}

/// --deflate offers permessage-deflate and reads compressed frames; with
/// --text chat the same run puts fewer bytes on the wire, and still loses
/// nothing and keeps order.
#[test]
fn compressed_runs_read_every_message_with_fewer_bytes() {
    let _serial = serial();
    let server = start_server(&[]);
    let base = "--clients 200 --room-size 20 --rate 100 --duration 3 --warmup 1 --drain 5 --payload 400 --text chat";
    let mut per_delivery = Vec::new();
    for extra in ["", " --deflate"] {
        let args = format!("{base}{extra}");
        let s = passing(&server, "deflate", &args);
        let d = &s["deliveries"];
        assert_eq!(d["received"], d["expected"]);
        assert_eq!(d["lost"], 0);
        for k in ["seq_gaps", "seq_backwards", "error_frames", "closed", "unexpected"] {
            assert_eq!(s["checks"][k], 0, "{k}: {s:#}");
        }
        let compressed = d["deflated_frames"].as_u64().unwrap();
        assert_eq!(compressed > 0, !extra.is_empty(), "{s:#}");
        per_delivery.push(d["bytes_per_delivery"].as_f64().unwrap());
    }
    assert!(per_delivery[1] < per_delivery[0] * 0.8, "bytes per delivery, plain then compressed: {per_delivery:?}");
}
