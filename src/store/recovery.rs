//! Reading the log back at start: every segment of every shard directory,
//! each room's epoch, last seq and the places of its newest messages (its
//! [`RoomIndex`]; the messages themselves stay on disk until asked for).
//! Runs on the main thread before any shard starts (plain file reads: no
//! executor waits on them).
//!
//! A damaged tail (a record cut short, a bad checksum, garbage) in the last
//! segment of a shard's directory is cut off at the last whole record, and
//! the rooms of that directory start a new epoch: the node cannot prove it
//! still has every message it broadcast in them. Damage anywhere else is an
//! error that names the file; nothing is deleted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::StoreError;
use super::index::{Loc, RoomIndex};
use super::record::{self, Decoded, HEADER_LEN};
use super::segindex::{self, SegIndex};
use crate::ids::Id;

/// A room as the log left it.
#[derive(Debug, Clone, Default)]
pub struct RoomState {
    /// Epoch of its last stored message.
    pub epoch: u64,
    /// Seq of its last stored message.
    pub seq: u64,
    /// Where its newest stored messages of that epoch are.
    pub index: RoomIndex,
    /// The log of the shard directory this state came from was damaged:
    /// the room must start a new epoch.
    pub damaged: bool,
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
    /// Each cut: the file, the offset it was cut at, and why.
    pub cuts: Vec<(PathBuf, u64, &'static str)>,
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

/// Reads every shard directory under `data`, indexing `history` messages per room.
pub fn recover(data: &Path, history: usize) -> Result<Recovered, StoreError> {
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
        let segs = recover_shard(i, &dir, history, &mut out)?;
        out.segments.insert(i, segs);
    }
    out.report.elapsed = t0.elapsed();
    Ok(out)
}

fn recover_shard(i: usize, dir: &Path, history: usize, out: &mut Recovered) -> Result<Vec<Segment>, StoreError> {
    let io = |path: &Path, e: std::io::Error| StoreError::Io(path.to_owned(), e);
    let mut segs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(index) = name.to_str().and_then(|n| n.strip_suffix(".log")).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        segs.push(Segment { path: entry.path(), index, len: 0, last_ts: 0 });
    }
    segs.sort_by_key(|s| s.index);
    let last = segs.len().saturating_sub(1);
    let mut damaged = false;
    let mut seen: Vec<Id> = Vec::new();
    for (n, seg) in segs.iter_mut().enumerate() {
        // A sealed segment with a sound index file: its records' places
        // without reading them (their checksums are checked when read).
        if n != last
            && let Some(ix) = read_index(dir, seg)
        {
            out.report.indexed_segments += 1;
            replay(i, ix, history, out, &mut seen, seg);
            continue;
        }
        let bytes = std::fs::read(&seg.path).map_err(|e| io(&seg.path, e))?;
        out.report.bytes += bytes.len() as u64;
        let (good, why) = match record::check_header(&bytes) {
            // A segment created just before a crash may not have its whole header yet.
            Err(_)
                if n == last && bytes.len() < HEADER_LEN && record::MAGIC.starts_with(&bytes[..bytes.len().min(8)]) =>
            {
                (0, Some("segment header cut short"))
            }
            Err(why) => return Err(StoreError::Corrupt(seg.path.clone(), 0, why)),
            Ok(()) => scan(i, &bytes, history, out, &mut seen, seg),
        };
        match why {
            None => seg.len = bytes.len() as u64,
            Some(why) if n == last => {
                // The tail the last run was writing: cut it at the last whole record.
                let cut_at = good.max(HEADER_LEN) as u64;
                let file = std::fs::OpenOptions::new().write(true).open(&seg.path).map_err(|e| io(&seg.path, e))?;
                if good < HEADER_LEN {
                    use std::io::Write as _;
                    file.set_len(0).map_err(|e| io(&seg.path, e))?;
                    (&file).write_all(&record::header()).map_err(|e| io(&seg.path, e))?;
                } else {
                    file.set_len(cut_at).map_err(|e| io(&seg.path, e))?;
                }
                file.sync_all().map_err(|e| io(&seg.path, e))?;
                out.report.dropped_bytes += bytes.len() as u64 - good.min(bytes.len()) as u64;
                out.report.cuts.push((seg.path.clone(), good as u64, why));
                seg.len = cut_at;
                damaged = true;
            }
            Some(why) => return Err(StoreError::Corrupt(seg.path.clone(), good as u64, why)),
        }
    }
    if damaged {
        for rid in seen {
            if let Some(room) = out.rooms.get_mut(&rid) {
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
fn replay(dir: usize, ix: SegIndex, history: usize, out: &mut Recovered, seen: &mut Vec<Id>, seg: &mut Segment) {
    out.report.records += ix.entries.len() as u64;
    out.report.bytes += ix.seg_len;
    seg.len = ix.seg_len;
    seg.last_ts = ix.last_ts;
    for e in ix.entries {
        let rid = &ix.rooms[e.room as usize];
        let room = out.rooms.entry(rid.clone()).or_insert_with(|| {
            seen.push(rid.clone());
            RoomState::default()
        });
        if (e.epoch, e.seq) > (room.epoch, room.seq) {
            room.epoch = e.epoch;
            room.seq = e.seq;
        }
        room.index.push(e.epoch, e.seq, Loc::new(dir, seg.index, e.off as u64), history);
    }
}

/// Reads the records of one segment (of shard directory `dir`) into the
/// room states. Returns how far the records were whole, and why they stopped
/// before the end, if they did.
fn scan(
    dir: usize,
    bytes: &[u8],
    history: usize,
    out: &mut Recovered,
    seen: &mut Vec<Id>,
    seg: &mut Segment,
) -> (usize, Option<&'static str>) {
    let mut off = HEADER_LEN;
    while off < bytes.len() {
        match record::decode(&bytes[off..]) {
            Decoded::Record(r, used) => {
                let at = Loc::new(dir, seg.index, off as u64);
                off += used;
                out.report.records += 1;
                seg.last_ts = seg.last_ts.max(r.ts);
                let room = out.rooms.entry(r.rid.clone()).or_insert_with(|| {
                    seen.push(r.rid.clone());
                    RoomState::default()
                });
                if (r.epoch, r.seq) > (room.epoch, room.seq) {
                    room.epoch = r.epoch;
                    room.seq = r.seq;
                }
                room.index.push(r.epoch, r.seq, at, history);
            }
            Decoded::Incomplete => return (off, Some("record cut short")),
            Decoded::Corrupt(why) => return (off, Some(why)),
        }
    }
    (off, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A shard directory with one segment of `n` records of room "r".
    fn log_with(n: u64) -> (PathBuf, PathBuf, Vec<u8>, Vec<usize>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("cchat-recovery-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let dir = shard_dir(&data, 0);
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = record::header().to_vec();
        let mut ends = Vec::new();
        for seq in 1..=n {
            record::encode(&mut bytes, 5, seq, 1000 + seq, "r", format!("{{\"seq\":{seq}}}").as_bytes());
            ends.push(bytes.len());
        }
        let path = dir.join(segment_name(1));
        std::fs::write(&path, &bytes).unwrap();
        (data, path, bytes, ends)
    }

    #[test]
    fn a_whole_log_comes_back() {
        let (data, _, _, _) = log_with(30);
        let r = recover(&data, 10).unwrap();
        let room = &r.rooms[&Id::parse_str("r").unwrap()];
        assert_eq!((room.epoch, room.seq, room.damaged), (5, 30, false));
        assert_eq!((room.index.first(), room.index.end(), room.index.epoch), (21, 31, 5));
        assert_eq!(r.report.records, 30);
        let _ = std::fs::remove_dir_all(&data);
    }

    /// A sealed segment with an index file recovers exactly as it does by
    /// reading it; a damaged or mismatched index is ignored.
    #[test]
    fn a_sealed_segment_recovers_the_same_from_its_index() {
        let (data, path, bytes, ends) = log_with(30);
        // Seal it: its index, then a second (newest) segment.
        let mut b = super::segindex::Builder::new(true);
        b.batch(HEADER_LEN as u64, bytes.len() as u64 - HEADER_LEN as u64);
        let mut off = HEADER_LEN as u64;
        for (k, end) in ends.iter().enumerate() {
            b.add(&Id::parse_str("r").unwrap(), 5, k as u64 + 1, off);
            off = *end as u64;
        }
        let idx = path.with_file_name(index_name(1));
        std::fs::write(&idx, b.finish(bytes.len() as u64, 77).unwrap()).unwrap();
        let mut next = record::header().to_vec();
        record::encode(&mut next, 5, 31, 1, "r", b"{}");
        std::fs::write(path.with_file_name(segment_name(2)), &next).unwrap();
        let state = |r: &Recovered| {
            let room = &r.rooms[&Id::parse_str("r").unwrap()];
            (room.epoch, room.seq, room.index.clone(), r.report.records)
        };
        let with = recover(&data, 10).unwrap();
        assert_eq!((with.report.indexed_segments, with.segments[&0][0].last_ts), (1, 77));
        std::fs::rename(&idx, idx.with_extension("moved")).unwrap();
        let without = recover(&data, 10).unwrap();
        assert_eq!(without.report.indexed_segments, 0);
        assert_eq!(state(&with), state(&without));
        // A damaged index, or one for another length, is not used.
        let mut bad = std::fs::read(idx.with_extension("moved")).unwrap();
        bad[20] ^= 1;
        std::fs::write(&idx, &bad).unwrap();
        assert_eq!(recover(&data, 10).unwrap().report.indexed_segments, 0);
        let mut b = super::segindex::Builder::new(true);
        b.batch(12, 1);
        b.add(&Id::parse_str("r").unwrap(), 5, 1, 12);
        std::fs::write(&idx, b.finish(13, 0).unwrap()).unwrap();
        let r = recover(&data, 10).unwrap();
        assert_eq!((r.report.indexed_segments, state(&r)), (0, state(&without)));
        let _ = std::fs::remove_dir_all(&data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Cut anywhere: recovery keeps exactly the whole records before the
        /// cut, truncates the file to them, and marks the room damaged when
        /// anything was cut.
        #[test]
        fn any_cut_point(cut in 0usize..2000) {
            let (data, path, bytes, ends) = log_with(20);
            let cut = cut.min(bytes.len());
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut as u64).unwrap();
            let r = recover(&data, 100).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
            let kept = r.rooms.get(&Id::parse_str("r").unwrap()).map_or(0, |room| room.seq);
            prop_assert_eq!(kept, whole);
            let len = std::fs::metadata(&path).unwrap().len() as usize;
            let want_len = if whole == 0 { record::HEADER_LEN } else { ends[whole as usize - 1] };
            prop_assert_eq!(len, want_len);
            let cut_something = cut != bytes.len() && cut != want_len;
            if let Some(room) = r.rooms.get(&Id::parse_str("r").unwrap()) {
                prop_assert_eq!(room.damaged, cut_something);
            }
            // Recovering again finds a clean log.
            let again = recover(&data, 100).unwrap();
            prop_assert_eq!(again.report.dropped_bytes, 0);
            let _ = std::fs::remove_dir_all(&data);
        }

        /// Flip any byte: recovery never returns a record that was not
        /// written; it keeps a prefix of them (or refuses a damaged header).
        #[test]
        fn any_byte_flipped(at in any::<prop::sample::Index>(), x in 1u8..=255) {
            let (data, path, mut bytes, _) = log_with(10);
            let i = at.index(bytes.len());
            bytes[i] ^= x;
            std::fs::write(&path, &bytes).unwrap();
            match recover(&data, 100) {
                Err(StoreError::Corrupt(..)) => prop_assert!(i < record::HEADER_LEN, "only a bad header stops the start"),
                Err(e) => prop_assert!(false, "{}", e),
                Ok(r) => {
                    if let Some(room) = r.rooms.get(&Id::parse_str("r").unwrap()) {
                        // Every indexed place holds the record of its seq, as written.
                        let now = std::fs::read(&path).unwrap();
                        prop_assert_eq!(room.index.first(), 1);
                        for seq in room.index.first()..room.index.end() {
                            let at = room.index.get(seq).unwrap().off() as usize;
                            let Decoded::Record(r, _) = record::decode(&now[at..]) else {
                                return Err(TestCaseError::fail(format!("no record at {at}")));
                            };
                            prop_assert_eq!((r.epoch, r.seq), (5, seq));
                            let want = format!("{{\"seq\":{seq}}}");
                            prop_assert_eq!(&r.msg[..], want.as_bytes());
                        }
                        prop_assert!(room.damaged, "a flipped byte is damage");
                    }
                }
            }
            let _ = std::fs::remove_dir_all(&data);
        }
    }
}
