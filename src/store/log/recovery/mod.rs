//! Reading the log back at start: every segment of every shard directory,
//! each room's epoch, last seq and the places of its newest messages (its
//! [`RoomIndex`]; the messages themselves stay on disk until asked for).
//! Runs on the main thread before any shard starts (plain file reads: no
//! executor waits on them).
//!
//! Every shard directory found is read, whatever `--shards` is now: a
//! room's records may sit in several (the shard count changed between
//! runs), and its index merges them by sequence.
//!
//! Damage is handled by what is known of it:
//! - a **torn tail** (the newest segment ends inside a record) is the write
//!   the last run did not finish, never acknowledged: only it is cut, and no
//!   room changes epoch;
//! - an **empty or header-only newest segment** (a crash during a roll) is
//!   nothing lost: its header is completed;
//! - **damage followed by whole records** is skipped by the framing (every
//!   later record is kept, the file is not changed), and so is damage at
//!   the end of a sealed segment;
//! - a **missing segment** (a hole in the numbering, or a newest segment
//!   below the one the directory's `NEWEST` file names) is reported.
//!
//! Where acknowledged records may be missing, only the rooms whose newest
//! record in that directory comes before the damage start a new epoch: a
//! room with a later record keeps its sequence (what was lost is a gap in
//! its history, not its top). A damaged segment header is an error that
//! names the file; nothing is deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::index::{Loc, RoomIndex};
use super::record::{self, Decoded, HEADER_LEN};
use super::segindex::{self, SegIndex};
use crate::ids::Id;
use crate::store::StoreError;

/// A room as the log left it.
#[derive(Debug, Clone, Default)]
pub struct RoomState {
    /// Epoch of its last stored message.
    pub epoch: u64,
    /// Seq of its last stored message.
    pub seq: u64,
    /// Where its newest stored messages of that epoch are.
    pub index: RoomIndex,
    /// The places of its messages of older epochs still on disk, oldest
    /// epoch first (at most [`OLDER_EPOCHS`]): history reaches back into
    /// them across each epoch change.
    pub older: Vec<RoomIndex>,
    /// Acknowledged records of the room may be missing (damage or a
    /// missing segment after its newest record): it must start a new epoch.
    pub damaged: bool,
    /// Shard directories holding its records (bit per directory, up to 64).
    pub dirs: u64,
}

/// One segment file of a shard's log.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its path.
    pub path: PathBuf,
    /// Its index (the number in its name).
    pub index: u64,
    /// Its length in bytes (after any cut).
    pub len: u64,
    /// Server time of its newest record (0 when empty).
    pub last_ts: u64,
}

/// What was recovered, for the log line and the metrics.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Whole records read.
    pub records: u64,
    /// Bytes of segments recovered (read, or rebuilt from their index).
    pub bytes: u64,
    /// Sealed segments rebuilt from their index file instead of read.
    pub indexed_segments: u64,
    /// Bytes cut off damaged tails.
    pub dropped_bytes: u64,
    /// Each torn tail cut: the file, the offset it was cut at, and why.
    pub cuts: Vec<(PathBuf, u64, &'static str)>,
    /// Each damaged span skipped (the file is left as it is): the file,
    /// where it starts, its length, and why.
    pub skips: Vec<(PathBuf, u64, u64, &'static str)>,
    /// Segments missing: the directory and the missing indexes, described.
    pub missing: Vec<(PathBuf, String)>,
    /// Empty or header-only newest segments completed (a roll cut short).
    pub completed: Vec<PathBuf>,
    /// How long it took.
    pub elapsed: Duration,
}

/// Everything the log holds.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Rooms by id.
    pub rooms: HashMap<Id, RoomState>,
    /// Segments of each shard directory that exists, by shard index, oldest first.
    pub segments: HashMap<usize, Vec<Segment>>,
    /// What was read and cut.
    pub report: Report,
}

/// The directory of shard `i`'s log.
pub fn shard_dir(data: &Path, i: usize) -> PathBuf {
    data.join(format!("shard-{i}"))
}

/// A segment's file name.
pub fn segment_name(index: u64) -> String {
    format!("{index:020}.log")
}

/// The name of a sealed segment's index file ([`super::segindex`]).
pub fn index_name(index: u64) -> String {
    format!("{index:020}.idx")
}

/// Reads every shard directory under `data`, indexing `history` messages
/// per room; `sync_before`: the run that wrote it last was in `sync` mode.
pub fn recover(data: &Path, history: usize, sync_before: bool) -> Result<Recovered, StoreError> {
    let t0 = Instant::now();
    let mut out = Recovered::default();
    let io = |path: &Path, e: std::io::Error| StoreError::Io(path.to_owned(), e);
    let entries = match std::fs::read_dir(data) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(data, e)),
    };
    let mut shards = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io(data, e))?;
        let name = entry.file_name();
        let Some(i) = name.to_str().and_then(|n| n.strip_prefix("shard-")).and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        shards.push((i, entry.path()));
    }
    shards.sort();
    for (i, dir) in shards {
        let segs = recover_shard(i, &dir, history, sync_before, &mut out)?;
        out.segments.insert(i, segs);
    }
    out.report.elapsed = t0.elapsed();
    Ok(out)
}

/// Older epochs of a room whose places are kept (the newest of them).
pub const OLDER_EPOCHS: usize = 4;

/// The file in a shard directory naming its newest segment, written at
/// every roll: a newest segment that disappeared is noticed.
pub const NEWEST: &str = "NEWEST";

/// Where in a directory a record lies: (segment, offset).
type Pos = (u64, u64);

fn recover_shard(
    i: usize,
    dir: &Path,
    history: usize,
    sync_before: bool,
    out: &mut Recovered,
) -> Result<Vec<Segment>, StoreError> {
    let io = |path: &Path, e: std::io::Error| StoreError::Io(path.to_owned(), e);
    let mut segs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".log.tmp") {
            // A roll that did not finish: its segment never held a record.
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let Some(index) = name.strip_suffix(".log").and_then(|n| n.parse::<u64>().ok()) else { continue };
        segs.push(Segment { path: entry.path(), index, len: 0, last_ts: 0 });
    }
    segs.sort_by_key(|s| s.index);
    // The newest position after which acknowledged records may be missing.
    let mut lost_after: Option<Pos> = None;
    let mut note_loss = |at: Pos| lost_after = lost_after.max(Some(at));
    let newest_named = std::fs::read_to_string(dir.join(NEWEST)).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(named) = newest_named
        && segs.last().is_none_or(|s| s.index < named)
    {
        let from = segs.last().map_or(1, |s| s.index + 1);
        out.report.missing.push((dir.to_owned(), format!("{from}..={named} (the newest)")));
        note_loss((from, 0));
    }
    let last = segs.len().saturating_sub(1);
    let mut rooms_last: HashMap<Id, Pos> = HashMap::new();
    for (n, seg) in segs.iter_mut().enumerate() {
        // A sealed segment with a sound index file: its records' places
        // without reading them (their checksums are checked when read).
        if n != last
            && let Some(ix) = read_index(dir, seg)
        {
            out.report.indexed_segments += 1;
            replay(i, ix, history, out, &mut rooms_last, seg);
            continue;
        }
        let bytes = std::fs::read(&seg.path).map_err(|e| io(&seg.path, e))?;
        out.report.bytes += bytes.len() as u64;
        if let Err(why) = record::check_header(&bytes) {
            let header_prefix = bytes.len() < HEADER_LEN && record::header().starts_with(&bytes);
            if n == last && header_prefix {
                // A roll cut short before its header was whole: nothing was
                // ever written after it. Complete the header.
                use std::io::Write as _;
                let mut file = std::fs::OpenOptions::new().write(true).open(&seg.path).map_err(|e| io(&seg.path, e))?;
                file.set_len(0).map_err(|e| io(&seg.path, e))?;
                file.write_all(&record::header()).map_err(|e| io(&seg.path, e))?;
                file.sync_all().map_err(|e| io(&seg.path, e))?;
                out.report.completed.push(seg.path.clone());
                seg.len = HEADER_LEN as u64;
                continue;
            }
            return Err(StoreError::Corrupt(seg.path.clone(), 0, why));
        }
        let scanned = scan(i, &bytes, history, out, &mut rooms_last, seg);
        for &(start, end, why) in &scanned.skipped {
            out.report.skips.push((seg.path.clone(), start as u64, (end - start) as u64, why));
            note_loss((seg.index, start as u64));
        }
        seg.len = bytes.len() as u64;
        if let Some((at, why, torn)) = scanned.tail {
            if n == last && torn {
                // In `sync` mode a record is acknowledged once fsynced whole,
                // so a torn one never was: no room loses anything. In
                // `written` mode a write is acknowledged once it returned;
                // the tear may be a cut of one that was: its room (or, if
                // its id was not written, every room whose newest record
                // came before) starts a new epoch.
                if !sync_before {
                    match scanned.torn_room.as_ref().and_then(|rid| out.rooms.get_mut(rid)) {
                        Some(room) => room.damaged = true,
                        None if scanned.torn_room.is_some() => {}
                        None => note_loss((seg.index, at as u64)),
                    }
                }
            }
            if n == last {
                // A torn write is the one the last run did not finish: never
                // acknowledged (a write is acknowledged once it returned, a
                // `sync` one once fsynced). Only it is cut. A whole last
                // record that does not check may have been acknowledged:
                // cut too (appends go after whole records), and counted as
                // a loss.
                if !torn {
                    note_loss((seg.index, at as u64));
                }
                let file = std::fs::OpenOptions::new().write(true).open(&seg.path).map_err(|e| io(&seg.path, e))?;
                file.set_len(at as u64).map_err(|e| io(&seg.path, e))?;
                file.sync_all().map_err(|e| io(&seg.path, e))?;
                out.report.dropped_bytes += (bytes.len() - at) as u64;
                out.report.cuts.push((seg.path.clone(), at as u64, why));
                seg.len = at as u64;
            } else {
                // A sealed segment was fsynced whole before the next began:
                // its end is damage, not a torn write. Left as it is.
                out.report.skips.push((seg.path.clone(), at as u64, (bytes.len() - at) as u64, why));
                note_loss((seg.index, at as u64));
            }
        }
    }
    // Holes in the numbering: retention deletes only the oldest segments,
    // so a segment missing between two others was lost.
    for w in segs.windows(2) {
        if w[1].index > w[0].index + 1 {
            let (a, b) = (w[0].index + 1, w[1].index - 1);
            out.report.missing.push((dir.to_owned(), if a == b { a.to_string() } else { format!("{a}..={b}") }));
            note_loss((a, 0));
        }
    }
    if let Some(at) = lost_after {
        for (rid, pos) in &rooms_last {
            if *pos < at
                && let Some(room) = out.rooms.get_mut(rid)
            {
                room.damaged = true;
            }
        }
    }
    Ok(segs)
}

/// The index file of a sealed segment, if it is there, checks, and
/// describes the segment as it is on disk.
fn read_index(dir: &Path, seg: &Segment) -> Option<SegIndex> {
    let path = dir.join(index_name(seg.index));
    let bytes = std::fs::read(&path).ok()?;
    let len = std::fs::metadata(&seg.path).ok()?.len();
    match segindex::decode(&bytes) {
        Ok(ix) if ix.seg_len == len => Some(ix),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "segment index of another length: reading the segment instead");
            None
        }
        Err(why) => {
            tracing::warn!(path = %path.display(), why, "segment index unusable: reading the segment instead");
            None
        }
    }
}

/// What [`scan`] does for a segment, from its index file.
fn replay(
    dir: usize,
    ix: SegIndex,
    history: usize,
    out: &mut Recovered,
    rooms_last: &mut HashMap<Id, Pos>,
    seg: &mut Segment,
) {
    out.report.records += ix.entries.len() as u64;
    out.report.bytes += ix.seg_len;
    seg.len = ix.seg_len;
    seg.last_ts = ix.last_ts;
    for e in ix.entries {
        let rid = &ix.rooms[e.room as usize];
        note_record(out, rooms_last, dir, rid, e.epoch, e.seq, (seg.index, e.off as u64), history);
    }
}

/// Adds an older epoch's index, keeping them in epoch order and at most
/// [`OLDER_EPOCHS`] (the newest).
pub fn keep_older(older: &mut Vec<RoomIndex>, ix: RoomIndex) {
    if ix.is_empty() {
        return;
    }
    let at = older.partition_point(|o| o.epoch < ix.epoch);
    older.insert(at, ix);
    if older.len() > OLDER_EPOCHS {
        older.remove(0);
    }
}

/// One record of room `rid` found at `pos` of directory `dir`.
#[allow(clippy::too_many_arguments)]
fn note_record(
    out: &mut Recovered,
    rooms_last: &mut HashMap<Id, Pos>,
    dir: usize,
    rid: &Id,
    epoch: u64,
    seq: u64,
    pos: Pos,
    history: usize,
) {
    let room = match out.rooms.get_mut(rid) {
        Some(r) => r,
        None => out.rooms.entry(rid.clone()).or_default(),
    };
    if (epoch, seq) > (room.epoch, room.seq) {
        room.epoch = epoch;
        room.seq = seq;
    }
    room.dirs |= 1u64 << dir.min(63);
    let loc = Loc::new(dir, pos.0, pos.1);
    if epoch >= room.index.epoch {
        if epoch > room.index.epoch && !room.index.is_empty() {
            // A newer epoch: the one indexed so far becomes an older one.
            let prev = std::mem::replace(&mut room.index, RoomIndex::new(epoch, 0));
            keep_older(&mut room.older, prev);
        }
        room.index.push(epoch, seq, loc, history);
    } else {
        // A record of an older epoch, found after a newer one (directories
        // merged in any order).
        match room.older.iter_mut().find(|ix| ix.epoch == epoch) {
            Some(ix) => ix.push(epoch, seq, loc, history),
            None => {
                let mut ix = RoomIndex::new(epoch, 0);
                ix.push(epoch, seq, loc, history);
                keep_older(&mut room.older, ix);
            }
        }
    }
    match rooms_last.get_mut(rid) {
        Some(p) => *p = (*p).max(pos),
        None => {
            rooms_last.insert(rid.clone(), pos);
        }
    }
}

/// What [`scan`] found in a segment besides its whole records.
struct Scanned {
    /// Damaged spans followed by whole records: (start, end, why).
    skipped: Vec<(usize, usize, &'static str)>,
    /// Where the whole records end before the segment does, why, and
    /// whether it is a torn write (the file ends inside the record, or only
    /// zeros follow): no whole record follows.
    tail: Option<(usize, &'static str, bool)>,
    /// The room of a torn record, when enough of it was written to say.
    torn_room: Option<Id>,
}

/// The room id of a record cut short, if enough of it is there.
fn room_of_partial(rest: &[u8]) -> Option<Id> {
    let body = rest.get(record::FRAME_LEN..)?;
    let n = u16::from_le_bytes(body.get(24..26)?.try_into().ok()?) as usize;
    std::str::from_utf8(body.get(26..26 + n)?).ok().and_then(Id::parse_str)
}

/// Whether `rest` (a record whose length runs past the end of the file)
/// is in fact a whole record whose length field was damaged: its checksum
/// matches its body at some shorter length. Then it is no torn write but a
/// damaged, perhaps acknowledged, record.
fn whole_but_for_its_length(rest: &[u8]) -> bool {
    if rest.len() < record::FRAME_LEN {
        return false;
    }
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    let body = &rest[record::FRAME_LEN..];
    let mut h = crc32fast::Hasher::new();
    for (i, b) in body.iter().enumerate() {
        h.update(std::slice::from_ref(b));
        if i + 1 >= 26 && h.clone().finalize() == crc {
            return true;
        }
    }
    false
}

/// Reads the records of one segment (of shard directory `dir`) into the
/// room states. A record that does not check is skipped to the next offset
/// where a whole record starts (its length, checksum and fields all check);
/// with none after it, the rest is the tail.
fn scan(
    dir: usize,
    bytes: &[u8],
    history: usize,
    out: &mut Recovered,
    rooms_last: &mut HashMap<Id, Pos>,
    seg: &mut Segment,
) -> Scanned {
    let mut found = Scanned { skipped: Vec::new(), tail: None, torn_room: None };
    let mut off = HEADER_LEN;
    while off < bytes.len() {
        match record::decode(&bytes[off..]) {
            Decoded::Record(r, used) => {
                out.report.records += 1;
                seg.last_ts = seg.last_ts.max(r.ts);
                note_record(out, rooms_last, dir, &r.rid, r.epoch, r.seq, (seg.index, off as u64), history);
                off += used;
            }
            bad => {
                let (why, incomplete) = match bad {
                    Decoded::Corrupt(why) => (why, false),
                    _ => ("record cut short", true),
                };
                match (off + 1..bytes.len()).find(|&o| matches!(record::decode(&bytes[o..]), Decoded::Record(..))) {
                    Some(next) => {
                        found.skipped.push((off, next, why));
                        off = next;
                    }
                    None => {
                        let rest = &bytes[off..];
                        let torn = (incomplete && !whole_but_for_its_length(rest)) || rest.iter().all(|b| *b == 0);
                        found.tail = Some((off, why, torn));
                        found.torn_room = torn.then(|| room_of_partial(rest)).flatten();
                        break;
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests;
