//! Durable history: an embedded append-only log per shard under `--data-dir`.
//!
//! ```text
//! DATA/LOCK              held (flock) by the one process that uses DATA
//! DATA/state             boot id and durability of the run that last wrote here
//! DATA/shard-N/*.log     shard N's segments: header, then framed records (record.rs)
//! ```
//!
//! The owner shard of a room appends each room message to its [`Journal`]
//! (an in-memory buffer) as it sequences it; the shard's log writer
//! ([`log::writer`]) writes what the journal holds in one write (group commit),
//! and only then are the message's frames released to the members:
//!
//! - `written` (default): broadcast once the write is done (the message is in
//!   the operating system: a killed process loses nothing); `fdatasync` at
//!   most every `--fsync-interval-ms`, one at a time per shard;
//! - `sync`: broadcast once the `fdatasync` that covers it is done;
//! - `memory`: no log (history lives and dies with the process).
//!
//! At start, [`open`] takes the lock and [`log::recovery`] reads every segment:
//! rooms continue their epoch and seq, and each gets an [`log::index`] of where
//! its newest messages are (the owner fills it as the writer writes, and
//! the shard's history reader reads `getHistory` answers back through it). Where the node cannot prove it has
//! every message it broadcast, a room starts a new epoch: a damaged tail in
//! its shard's log, a `written`-mode log whose machine rebooted since (the
//! unsynced tail may be lost), or a clustered node (the room may have lived
//! on another node meanwhile). Segments roll at `--segment-bytes`; the oldest
//! are deleted past `--retention-bytes` per shard or `--retention` hours.

pub mod log;
pub mod redis;

use std::fs::File;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use log::index::{Loc, RoomIndex};
pub use log::recovery::{Recovered, RoomState};

pub use crate::config::Durability;

/// Why the store cannot be used.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another process holds the data directory: stop it or use another
    /// `--data-dir` (one process per directory).
    #[error("data directory {0} is in use by another cchat process{1}")]
    Locked(PathBuf, String),
    /// A file of the log could not be read or written; the path says which.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A segment other than the newest is damaged: nothing was deleted; move
    /// the file away (or restore it) and start again.
    #[error("{0}: damaged at byte {1} ({2}); not a tail that can be cut, so nothing was changed")]
    Corrupt(PathBuf, u64, &'static str),
}

/// The room messages one owner shard has sequenced and not yet handed to
/// its store: framed for the embedded log, or as they are for a shared
/// store ([`redis`]). No I/O.
#[derive(Debug, Default)]
pub struct Journal {
    buf: Vec<u8>,
    /// For a shared store: records are not framed, and the position counts
    /// records rather than bytes.
    unframed: bool,
    /// Message bytes waiting (not counting a write in progress).
    pending: usize,
    /// Bytes (or records) ever appended: the position the writer must reach
    /// to cover the newest record.
    end: u64,
    /// Each record in `buf`: room, epoch, seq and its offset in `buf` (for
    /// the room index, once written).
    marks: Vec<Mark>,
}

/// A record waiting in the journal: its room, epoch, seq, and offset in the
/// batch.
#[derive(Debug, Clone)]
pub struct Mark {
    /// The room.
    pub rid: crate::ids::Id,
    /// Epoch of the message.
    pub epoch: u64,
    /// Its seq.
    pub seq: u64,
    /// Where its record starts in the batch.
    pub off: u64,
    /// The shared store's claim it was sequenced under (0 for the log).
    pub token: u64,
    /// The message (for a shared store; empty for the log).
    pub msg: bytes::Bytes,
}

/// What the journal hands its writer at once.
#[derive(Debug)]
pub struct Batch {
    /// The framed records.
    pub buf: Vec<u8>,
    /// One mark per record.
    pub marks: Vec<Mark>,
    /// The position they reach.
    pub end: u64,
}

impl Journal {
    /// A journal for a shared store: records are kept as they are, not framed.
    pub fn unframed() -> Self {
        Journal { unframed: true, ..Journal::default() }
    }

    /// Journals one record (`token`: the shared store's claim, else 0).
    pub fn append(&mut self, epoch: u64, seq: u64, ts: u64, rid: &crate::ids::Id, msg: &bytes::Bytes, token: u64) {
        self.pending += msg.len();
        if self.unframed {
            let off = self.marks.len() as u64;
            self.end += 1;
            let msg = msg.clone();
            self.marks.push(Mark { rid: rid.clone(), epoch, seq, off, token, msg });
            return;
        }
        let before = self.buf.len();
        log::record::encode(&mut self.buf, epoch, seq, ts, rid, msg);
        // Framed: what waits is the framing too (rids and headers count).
        self.pending += self.buf.len() - before - msg.len();
        self.end += (self.buf.len() - before) as u64;
        self.marks.push(Mark { rid: rid.clone(), epoch, seq, off: before as u64, token, msg: bytes::Bytes::new() });
    }

    /// Position after the newest record.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Whether records wait for the writer.
    pub fn has_pending(&self) -> bool {
        !self.marks.is_empty()
    }

    /// Message bytes waiting for the writer (not counting a write in progress).
    pub fn pending_bytes(&self) -> usize {
        self.pending
    }

    /// Takes what waits.
    pub fn take(&mut self) -> Batch {
        self.pending = 0;
        let cap = self.buf.capacity().min(1 << 20);
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(cap));
        let cap = self.marks.capacity().min(1 << 14);
        let marks = std::mem::replace(&mut self.marks, Vec::with_capacity(cap));
        Batch { buf, marks, end: self.end }
    }
}

/// The data directory, locked for this process.
#[derive(Debug)]
pub struct DataDir {
    /// Its path.
    pub path: PathBuf,
    /// Held for the life of the process: the lock goes with it.
    _lock: File,
    /// The previous run's durability was `written` and the machine has
    /// rebooted since: its unsynced tail may be lost.
    pub rebooted_unsynced: bool,
}

/// Takes the data directory (creating it) and reads what the previous run left.
pub fn open(path: &Path, durability: Durability, history: usize) -> Result<(DataDir, Recovered), StoreError> {
    let io = |p: &Path, e: std::io::Error| StoreError::Io(p.to_owned(), e);
    std::fs::create_dir_all(path).map_err(|e| io(path, e))?;
    let lock_path = path.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io(&lock_path, e))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder =
            std::fs::read_to_string(&lock_path).ok().map(|p| format!(" (pid {})", p.trim())).unwrap_or_default();
        return Err(StoreError::Locked(path.to_owned(), holder));
    }
    std::fs::write(&lock_path, std::process::id().to_string()).map_err(|e| io(&lock_path, e))?;
    let state_path = path.join("state");
    let boot = boot_id();
    let (rebooted_unsynced, sync_before) = match std::fs::read_to_string(&state_path) {
        Ok(prev) => {
            let field = |k: &str| prev.lines().find_map(|l| l.strip_prefix(k)).map(str::to_owned);
            let mode = field("durability=");
            (
                mode.as_deref() == Some("written") && field("boot=") != Some(boot.clone()),
                mode.as_deref() == Some("sync"),
            )
        }
        Err(_) => (false, false),
    };
    let recovered = log::recovery::recover(path, history, sync_before)?;
    let mode = match durability {
        Durability::Written => "written",
        Durability::Sync => "sync",
        Durability::Memory => "memory",
    };
    // Synced (file, then the rename in its directory) before anything is
    // written under it: after a power cut soon after start, the next start
    // must see this boot's id, or it would not notice the reboot.
    let tmp = path.join("state.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = File::create(&tmp)?;
        f.write_all(format!("boot={boot}\ndurability={mode}\n").as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &state_path).map_err(|e| io(&state_path, e))?;
    log::writer::sync_dir(path).map_err(|e| io(path, e))?;
    Ok((DataDir { path: path.to_owned(), _lock: lock, rebooted_unsynced }, recovered))
}

/// This boot of the machine (changes at every reboot).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_per_directory() {
        let dir = std::env::temp_dir().join(format!("cchat-store-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (held, _) = open(&dir, Durability::Written, 10).unwrap();
        let e = open(&dir, Durability::Written, 10).unwrap_err();
        assert!(matches!(e, StoreError::Locked(..)), "{e}");
        assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        assert!(open(&dir, Durability::Written, 10).is_ok(), "free again once the holder is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_journal_frames_records_and_counts_its_position() {
        let mut j = Journal::default();
        let r = crate::ids::Id::parse_str("r").unwrap();
        assert!(!j.has_pending());
        let m = bytes::Bytes::from_static(b"{}");
        j.append(1, 1, 5, &r, &m, 0);
        j.append(1, 2, 5, &r, &m, 0);
        let b = j.take();
        assert_eq!((b.marks.len(), b.buf.len() as u64), (2, b.end));
        assert_eq!((b.marks[0].off, b.marks[1].off, b.marks[1].seq), (0, b.end / 2, 2));
        assert!(!j.has_pending());
        j.append(1, 3, 5, &r, &m, 0);
        assert_eq!(j.end(), b.end + b.end / 2);
        assert!(b.marks[0].msg.is_empty(), "the log's records are framed, not kept twice");
        let mut u = Journal::unframed();
        u.append(1, 1, 5, &r, &m, 7);
        u.append(1, 2, 5, &r, &m, 7);
        let b = u.take();
        assert_eq!((b.end, b.buf.len(), b.marks[1].token, &b.marks[1].msg[..]), (2, 0, 7, &b"{}"[..]));
    }
}
