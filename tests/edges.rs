//! Durability at the edges, with real processes and real files: a full
//! disk, a byte flipped mid-segment, segments deleted, torn tails in each
//! durability mode, an empty newest segment, and a shard count changed
//! between restarts. After each: every acknowledged message is served
//! exactly once, and no (epoch, seq) is ever given to another message.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{Client, Server, temp_data_dir};

/// (epoch, seq, msg) of a stored or acknowledged message.
type Msg = (u64, u64, String);

/// A server on `dir` whose warnings and errors go to a file of its own
/// (outside `dir`: that may be a disk the test fills).
fn start(dir: &Path, name: &str, extra: &[&str]) -> (Server, PathBuf) {
    let log = std::env::temp_dir().join(format!(
        "cchat-edges-{}-{name}-{}.log",
        std::process::id(),
        crate::common::fresh_uid()
    ));
    let mut args = vec!["--data-dir", dir.to_str().unwrap(), "--rate-limit", "0", "--history", "100000"];
    args.extend_from_slice(extra);
    (Server::start_with_fd_limit(&args, 4096, &log), log)
}

fn kill(s: &mut Server) {
    s.signal(9);
    let _ = s.child.wait();
}

/// Sends `msg` on an echo connection: Ok((epoch, seq)) once it comes back,
/// or Err(errMsg) when refused.
fn send(c: &mut Client, rid: &str, msg: &str) -> Result<(u64, u64), String> {
    c.say_acked(rid, msg)
}

fn echo_client(s: &Server, rid: &str, uid: &str) -> Client {
    let mut c = s.client();
    c.login_echo(uid, rid, uid);
    c
}

/// Every stored message of `rid`, paged forward from the start.
fn history(s: &Server, rid: &str) -> (u64, Vec<Msg>) {
    let mut c = s.client();
    c.login("reader", rid, Some(&format!("reader-{}", crate::common::fresh_uid())));
    let (mut since, mut all, mut epoch) = (0u64, Vec::new(), 0);
    loop {
        c.send(json!({"cmd":"getHistory","rid":rid,"since":since,"limit":500}));
        let h = loop {
            let v = c.recv();
            if v["cmd"] == "getHistory" {
                break v;
            }
        };
        epoch = h["epoch"].as_u64().unwrap_or(epoch);
        let page: Vec<Msg> = crate::common::history_msgs(&h);
        let Some(last) = page.last() else { break };
        since = last.1;
        all.extend(page);
    }
    (epoch, all)
}

/// Every acknowledged message is in `stored` exactly once, and no stored
/// (epoch, seq) names two messages.
fn served_once(acked: &[Msg], stored: &[Msg]) {
    let mut by_key: HashMap<(u64, u64), &str> = HashMap::new();
    for (e, s, m) in stored {
        assert!(by_key.insert((*e, *s), m).is_none(), "({e}, {s}) stored twice");
    }
    for (e, s, m) in acked {
        assert_eq!(by_key.get(&(*e, *s)).copied(), Some(m.as_str()), "acknowledged ({e}, {s}) {m} not served as sent");
    }
    let texts: HashSet<&str> = stored.iter().map(|x| x.2.as_str()).collect();
    assert_eq!(texts.len(), stored.len(), "a message stored twice");
}

/// A new message after the restart takes no (epoch, seq) of an acknowledged one.
fn no_reuse(s: &Server, rid: &str, acked: &[Msg]) -> (u64, u64) {
    let mut c = echo_client(s, rid, &format!("after-{}", crate::common::fresh_uid()));
    let (e, q) = send(&mut c, rid, "after the restart").expect("accepted");
    assert!(!acked.iter().any(|(ae, aq, _)| (*ae, *aq) == (e, q)), "({e}, {q}) was acknowledged before");
    (e, q)
}

/// A small filesystem to fill: a tmpfs where this process may mount one
/// (root), else the server's file-size limit lowered under it (RLIMIT_FSIZE:
/// writes past it fail with EFBIG, as a full disk fails them with ENOSPC).
enum Disk {
    Tmpfs(PathBuf),
    Rlimit,
}

impl Disk {
    fn new(dir: &Path) -> Disk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok { Disk::Tmpfs(dir.to_owned()) } else { Disk::Rlimit }
    }

    /// Fills it: nothing more can be written.
    fn fill(&self, server: &Server) {
        match self {
            Disk::Tmpfs(dir) => {
                use std::io::Write as _;
                let mut f = std::fs::File::create(dir.join("filler")).unwrap();
                let chunk = vec![7u8; 64 * 1024];
                while f.write_all(&chunk).is_ok() {}
                let _ = f.write_all(&[1]);
                while f.write_all(&[1]).is_ok() {}
            }
            Disk::Rlimit => set_fsize(server, 1),
        }
    }

    /// Frees it again.
    fn free(&self, server: Option<&Server>) {
        match self {
            Disk::Tmpfs(dir) => {
                let _ = std::fs::remove_file(dir.join("filler"));
            }
            Disk::Rlimit => {
                if let Some(s) = server {
                    set_fsize(s, libc::RLIM_INFINITY);
                }
            }
        }
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if let Disk::Tmpfs(dir) = self {
            let _ = std::process::Command::new("umount").arg(dir).status();
        }
    }
}

/// Sets the server's file-size limit: `1` means "at most what its files hold now".
fn set_fsize(s: &Server, limit: u64) {
    let limit = if limit == 1 { 0 } else { limit };
    let lim = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: prlimit on a child of this process, with a valid struct.
    let r = unsafe { libc::prlimit(s.child.id() as i32, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// A full disk: the messages whose write fails are refused (error 50,
/// delivered to no one), the log tries again once space is back, and after
/// a SIGKILL while full every acknowledged message is served once and no
/// (epoch, seq) of one is given to another message.
#[test]
fn a_full_disk_refuses_what_it_cannot_write_and_never_renumbers_what_was_acknowledged() {
    let mnt = temp_data_dir();
    let disk = Disk::new(&mnt);
    let dir = mnt.join("data");
    let (mut s, log) = start(&dir, "full", &["--shards", "1"]);
    let mut ann = echo_client(&s, "full", "ann");
    let mut bob = s.client();
    bob.login("bob", "full", Some("bob"));
    ann.expect("newUser");
    let mut acked: Vec<Msg> = Vec::new();
    let mut n = 0;
    let mut say = |c: &mut Client, acked: &mut Vec<Msg>| {
        n += 1;
        let m = format!("m{n}-{}", "x".repeat(200));
        match send(c, "full", &m) {
            Ok((e, q)) => {
                acked.push((e, q, m));
                Ok(())
            }
            Err(why) => Err(why),
        }
    };
    for _ in 0..30 {
        say(&mut ann, &mut acked).unwrap();
    }
    disk.fill(&s);
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused < 5 {
        assert!(Instant::now() < deadline, "a full disk refused nothing");
        match say(&mut ann, &mut acked) {
            Ok(()) => {}
            Err(why) => {
                assert!(why.contains("cannot write its message log"), "{why}");
                refused += 1;
            }
        }
    }
    assert_eq!(s.metric("cchat_log_disk_full"), 1.0);
    assert!(s.metric("cchat_log_refused_total") >= 1.0);
    // Bob got exactly the acknowledged messages: nothing refused reached him.
    let got = bob.drain_texts(Duration::from_millis(500));
    assert_eq!(got, acked.iter().map(|a| a.2.clone()).collect::<Vec<_>>(), "bob got what was acknowledged, only that");
    // Space comes back: the log writes again.
    disk.free(Some(&s));
    let deadline = Instant::now() + Duration::from_secs(10);
    while say(&mut ann, &mut acked).is_err() {
        assert!(Instant::now() < deadline, "the log did not write again once space came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Full again, and killed while full.
    disk.fill(&s);
    let deadline = Instant::now() + Duration::from_secs(20);
    while say(&mut ann, &mut acked).is_ok() {
        assert!(Instant::now() < deadline, "a full disk refused nothing");
    }
    kill(&mut s);
    disk.free(None);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("cannot write the message log"), "the log says so: {text}");
    let (s, _) = start(&dir, "full-after", &["--shards", "1"]);
    let (_, stored) = history(&s, "full");
    served_once(&acked, &stored);
    no_reuse(&s, "full", &acked);
    drop(s);
    drop(disk);
    let _ = std::fs::remove_dir_all(&mnt);
}

/// Messages of two rooms, interleaved; returns what was acknowledged, per room.
fn traffic(s: &Server, rooms: &[&str], per_room: usize, tag: &str) -> HashMap<String, Vec<Msg>> {
    let mut clients: Vec<Client> = rooms.iter().map(|r| echo_client(s, r, &format!("w-{r}-{tag}"))).collect();
    let mut acked: HashMap<String, Vec<Msg>> = HashMap::new();
    for i in 0..per_room {
        for (k, r) in rooms.iter().enumerate() {
            let m = format!("{r}-{tag}-{i}-payload");
            let (e, q) = send(&mut clients[k], r, &m).unwrap();
            acked.entry(r.to_string()).or_default().push((e, q, m));
        }
    }
    acked
}

/// The segment files of shard directory `shard`, oldest first.
fn segments(dir: &Path, shard: usize) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(format!("shard-{shard}")))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// A byte flipped in the middle of the newest segment, whole records after
/// it: only the damaged record is lost; every other record is kept (the
/// file is not changed), and rooms with later records keep their epoch.
#[test]
fn a_byte_flipped_mid_segment_loses_only_its_record() {
    let dir = temp_data_dir();
    let (mut s, _) = start(&dir, "flip", &["--shards", "1"]);
    let acked = traffic(&s, &["x", "y"], 20, "a");
    kill(&mut s);
    let seg = segments(&dir, 0).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(14).position(|w| w == b"x-a-5-payload\"").unwrap();
    bytes[at + 2] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    let (s, log) = start(&dir, "flip-after", &["--shards", "1"]);
    assert_eq!(s.metric("cchat_log_recovery_new_epochs"), 0.0, "both rooms have records after the damage");
    let (ex, x) = history(&s, "x");
    let (ey, y) = history(&s, "y");
    let lost: Vec<Msg> = acked["x"].iter().filter(|m| m.2 == "x-a-5-payload").cloned().collect();
    let kept: Vec<Msg> = acked["x"].iter().filter(|m| m.2 != "x-a-5-payload").cloned().collect();
    served_once(&kept, &x);
    assert!(!x.contains(&lost[0]), "the damaged record is not served");
    served_once(&acked["y"], &y);
    assert_eq!((ex, ey), (acked["x"][0].0, acked["y"][0].0), "same epochs");
    assert_eq!(no_reuse(&s, "x", &acked["x"]).1, 21, "x continues after its top");
    let now = std::fs::read(&seg).unwrap();
    assert!(now.starts_with(&bytes), "the file is left as it is (only appended to)");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("damaged log records skipped") && text.contains(&seg.display().to_string()), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A torn tail (the newest record half written): in `sync` mode it was never
/// acknowledged, so no room changes epoch; in `written` mode its room starts
/// a new epoch (the write may have returned), and only it.
#[test]
fn a_torn_tail_is_cut_alone_and_changes_an_epoch_only_where_it_may_have_been_acknowledged() {
    for mode in ["sync", "written"] {
        let dir = temp_data_dir();
        let (mut s, _) = start(&dir, "torn", &["--shards", "1", "--durability", mode]);
        let mut acked = traffic(&s, &["x", "y"], 10, "a");
        let mut c = echo_client(&s, "x", "last");
        let (e, q) = send(&mut c, "x", "the torn one").unwrap();
        kill(&mut s);
        let seg = segments(&dir, 0).pop().unwrap();
        let len = std::fs::metadata(&seg).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(len - 5).unwrap();
        let (s, _) = start(&dir, "torn-after", &["--shards", "1", "--durability", mode]);
        assert!(s.metric("cchat_log_recovery_dropped_bytes") > 0.0, "{mode}: the torn record was cut");
        let (ex, x) = history(&s, "x");
        let (ey, y) = history(&s, "y");
        served_once(&acked["y"], &y);
        assert_eq!(ey, acked["y"][0].0, "{mode}: y keeps its epoch");
        if mode == "sync" {
            assert_eq!(s.metric("cchat_log_recovery_new_epochs"), 0.0, "{mode}");
            assert_eq!(ex, e, "{mode}: x keeps its epoch");
            served_once(&acked["x"], &x);
        } else {
            assert_eq!(s.metric("cchat_log_recovery_new_epochs"), 1.0, "{mode}: only x");
            acked.get_mut("x").unwrap().push((e, q, "the torn one".into()));
            let (ne, nq) = no_reuse(&s, "x", &acked["x"]);
            assert!(ne > e && nq == 1, "{mode}: x starts a new epoch");
        }
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The newest segment deleted (its directory's NEWEST names it), or an
/// older one: the start says which are missing, and every room whose newest
/// record may have been in them starts a new epoch; a room with records
/// after an older missing segment keeps its epoch, with a gap.
#[test]
fn a_deleted_segment_is_noticed_and_no_seq_is_reused() {
    // The newest.
    let dir = temp_data_dir();
    let seg_bytes = ["--shards", "1", "--segment-bytes", "4096"];
    let (mut s, _) = start(&dir, "del", &seg_bytes);
    let acked = traffic(&s, &["x", "y"], 60, "a");
    kill(&mut s);
    let segs = segments(&dir, 0);
    assert!(segs.len() >= 4, "{segs:?}");
    std::fs::remove_file(segs.last().unwrap()).unwrap();
    let (s, log) = start(&dir, "del-after", &seg_bytes);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("log segments missing") && text.contains("the newest"), "{text}");
    for r in ["x", "y"] {
        let (ne, _) = no_reuse(&s, r, &acked[r]);
        assert!(ne > acked[r][0].0, "{r} starts a new epoch");
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);

    // An older one: x and y have records after it.
    let dir = temp_data_dir();
    let (mut s, _) = start(&dir, "del2", &seg_bytes);
    let acked = traffic(&s, &["x", "y"], 60, "a");
    kill(&mut s);
    let segs = segments(&dir, 0);
    std::fs::remove_file(&segs[1]).unwrap();
    let (s, log) = start(&dir, "del2-after", &seg_bytes);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("log segments missing") && text.contains("segments=2"), "{text}");
    for r in ["x", "y"] {
        let (e, h) = history(&s, r);
        assert_eq!(e, acked[r][0].0, "{r} keeps its epoch");
        assert!(h.len() < acked[r].len() && h.iter().all(|m| acked[r].contains(m)), "{r}: a gap, nothing else");
        assert_eq!(h.last(), acked[r].last(), "{r}: served up to its newest");
        no_reuse(&s, r, &acked[r]);
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A newest segment left empty or with part of its header (a crash during
/// a roll by an older build): nothing was lost, every room keeps its epoch
/// and history.
#[test]
fn an_empty_or_header_only_newest_segment_loses_nothing() {
    for junk in [&b""[..], &b"CCHAT"[..]] {
        let dir = temp_data_dir();
        let (mut s, _) = start(&dir, "empty", &["--shards", "1"]);
        let acked = traffic(&s, &["x", "y"], 5, "a");
        s.signal(15);
        let _ = s.child.wait();
        let newest = segments(&dir, 0).pop().unwrap();
        let n: u64 = newest.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        std::fs::write(newest.with_file_name(format!("{:020}.log", n + 1)), junk).unwrap();
        let (s, _) = start(&dir, "empty-after", &["--shards", "1"]);
        assert_eq!(s.metric("cchat_log_recovery_new_epochs"), 0.0, "{} bytes", junk.len());
        for r in ["x", "y"] {
            let (e, h) = history(&s, r);
            assert_eq!(e, acked[r][0].0);
            served_once(&acked[r], &h);
        }
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// `--shards` changed between restarts (2, 1, 2, 3; SIGTERM and SIGKILL in
/// turn), traffic in every run: each room's history is whole, in one epoch.
#[test]
fn a_changed_shard_count_keeps_every_rooms_whole_history() {
    let dir = temp_data_dir();
    let rooms: Vec<String> = (0..8).map(|i| format!("room{i}")).collect();
    let refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
    let mut acked: HashMap<String, Vec<Msg>> = HashMap::new();
    for (run, shards) in ["2", "1", "2", "3"].iter().enumerate() {
        let (mut s, log) = start(&dir, &format!("shards{run}"), &["--shards", shards]);
        if run > 0 {
            for r in &refs {
                let (_, h) = history(&s, r);
                served_once(&acked[*r], &h);
            }
            let text = std::fs::read_to_string(&log).unwrap();
            let _ = text;
        }
        for (r, v) in traffic(&s, &refs, 5, &format!("run{run}")) {
            acked.entry(r).or_default().extend(v);
        }
        if run % 2 == 0 {
            kill(&mut s);
        } else {
            s.signal(15);
            let _ = s.child.wait();
        }
    }
    let (s, _) = start(&dir, "shards-last", &["--shards", "2"]);
    for r in &refs {
        let (e, h) = history(&s, r);
        served_once(&acked[*r], &h);
        assert_eq!(h.len(), 20, "{r}: every run's messages");
        assert!(acked[*r].iter().all(|m| m.0 == e), "{r}: one epoch throughout");
    }
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}

/// An ext4 filesystem in a file on a small tmpfs, loop-mounted: once the
/// tmpfs is full, ext4's writes still land in the page cache but its
/// writeback fails, so `fdatasync` fails with EIO (as on a failing disk).
struct FailingDisk {
    tmpfs: PathBuf,
    mnt: PathBuf,
}

impl FailingDisk {
    fn new(base: &Path) -> FailingDisk {
        let (tmpfs, mnt) = (base.join("backing"), base.join("ext4"));
        std::fs::create_dir_all(&tmpfs).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        let run = |cmd: &[&str]| {
            let st = std::process::Command::new(cmd[0]).args(&cmd[1..]).status().unwrap();
            assert!(st.success(), "{cmd:?} failed (this test needs root and loop devices, as CI has)");
        };
        run(&["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", tmpfs.to_str().unwrap()]);
        let img = tmpfs.join("img");
        run(&["truncate", "-s", "128M", img.to_str().unwrap()]);
        run(&["mkfs.ext4", "-q", "-F", img.to_str().unwrap()]);
        run(&["mount", "-o", "loop", img.to_str().unwrap(), mnt.to_str().unwrap()]);
        FailingDisk { tmpfs, mnt }
    }

    /// The backing tmpfs full: ext4's next writeback fails.
    fn break_it(&self) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.tmpfs.join("filler")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }

    /// Space back, the filesystem checked and mounted again.
    fn mend(&self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_file(self.tmpfs.join("filler"));
        let _ = std::process::Command::new("e2fsck")
            .args(["-f", "-y"])
            .arg(self.tmpfs.join("img"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let st = std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(self.tmpfs.join("img"))
            .arg(&self.mnt)
            .status()
            .unwrap();
        assert!(st.success(), "mount again");
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = std::process::Command::new("umount").arg(&self.tmpfs).status();
    }
}

/// A failed fdatasync in `sync` mode: the messages it was to cover are
/// refused (never acknowledged, delivered to no one), and after a restart
/// every acknowledged message is served once and nothing refused is.
#[test]
fn a_failed_fsync_in_sync_mode_acknowledges_nothing_it_did_not_sync() {
    let base = temp_data_dir();
    let disk = FailingDisk::new(&base);
    let dir = disk.mnt.join("data");
    let (mut s, log) = start(&dir, "fsync", &["--shards", "1", "--durability", "sync"]);
    let mut ann = echo_client(&s, "f", "ann");
    let mut bob = s.client();
    bob.login("bob", "f", Some("bob"));
    ann.expect("newUser");
    let mut acked: Vec<Msg> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    for i in 0..20 {
        let m = format!("before-{i}");
        let (e, q) = send(&mut ann, "f", &m).unwrap();
        acked.push((e, q, m));
    }
    disk.break_it();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while refused.len() < 3 {
        assert!(Instant::now() < deadline, "no fsync failed");
        i += 1;
        // Big enough to need new blocks on every write.
        let m = format!("after-{i}-{}", "y".repeat(900));
        match send(&mut ann, "f", &m) {
            Ok((e, q)) => acked.push((e, q, m)),
            Err(why) => {
                assert!(why.contains("cannot write its message log"), "{why}");
                refused.push(m);
            }
        }
    }
    assert!(s.metric("cchat_log_refused_total") >= 1.0);
    let got = bob.drain_texts(Duration::from_millis(500));
    assert_eq!(got, acked.iter().map(|a| a.2.clone()).collect::<Vec<_>>(), "bob got what was acknowledged, only that");
    kill(&mut s);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("cannot write the message log"), "{text}");
    assert!(text.contains("Input/output error"), "the first failure is the fdatasync's EIO: {text}");
    disk.mend();
    let (s, _) = start(&dir, "fsync-after", &["--shards", "1", "--durability", "sync"]);
    let (_, stored) = history(&s, "f");
    served_once(&acked, &stored);
    for m in &refused {
        assert!(!stored.iter().any(|x| &x.2 == m), "refused yet stored");
    }
    no_reuse(&s, "f", &acked);
    drop(s);
    drop(disk);
    let _ = std::fs::remove_dir_all(&base);
}

/// A room that starts a new epoch (here: a written-mode log after a reboot)
/// keeps its older epochs reachable: `getHistory` pages back across the
/// boundary (`before` may name a message as `{"epoch", "seq"}`), and every
/// message carries its epoch.
#[test]
fn history_pages_back_across_an_epoch_change() {
    let dir = temp_data_dir();
    let (mut s, _) = start(&dir, "epochs", &["--shards", "1"]);
    let old = traffic(&s, &["x"], 10, "old")["x"].clone();
    kill(&mut s);
    // As if the machine had rebooted: every room starts a new epoch.
    crate::common::pretend_reboot(&dir);
    let (s, _) = start(&dir, "epochs-after", &["--shards", "1"]);
    let new = traffic(&s, &["x"], 3, "new")["x"].clone();
    let (e1, e2) = (old[0].0, new[0].0);
    assert!(e2 > e1, "a new epoch");
    let mut c = s.client();
    c.login("pager", "x", Some("pager"));
    let mut page = |req: Value| -> Vec<Msg> {
        c.send(req);
        let h = loop {
            let v = c.recv();
            if v["cmd"] == "getHistory" {
                break v;
            }
        };
        assert_eq!(h["epoch"].as_u64(), Some(e2), "the reply names the room's current epoch");
        crate::common::history_msgs(&h)
    };
    // The newest page reaches back into the old epoch, oldest first.
    let all = page(json!({"cmd":"getHistory","rid":"x","limit":100}));
    let want: Vec<Msg> = old.iter().chain(new.iter()).cloned().collect();
    assert_eq!(all, want);
    // Paging back from the new epoch's first message: the old epoch's newest.
    let back = page(json!({"cmd":"getHistory","rid":"x","before":{"epoch":e2,"seq":1},"limit":5}));
    assert_eq!(back, old[5..].to_vec());
    let back = page(json!({"cmd":"getHistory","rid":"x","before":{"epoch":e1,"seq":6},"limit":100}));
    assert_eq!(back, old[..5].to_vec());
    // A plain `before` in the current epoch crosses over too.
    let back = page(json!({"cmd":"getHistory","rid":"x","before":2,"limit":4}));
    assert_eq!(back, [old[7..].to_vec(), new[..1].to_vec()].concat());
    // A malformed one is refused.
    c.send(json!({"cmd":"getHistory","rid":"x","before":{"epoch":"x","seq":1}}));
    assert_eq!(c.expect_error(50)["errCode"], 50);
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
}
