//! Recovery's tests: whole logs, sealed segments from their index, any
//! cut, and a model of what was acknowledged against random damage.

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
    let r = recover(&data, 10, false).unwrap();
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
    let with = recover(&data, 10, false).unwrap();
    assert_eq!((with.report.indexed_segments, with.segments[&0][0].last_ts), (1, 77));
    std::fs::rename(&idx, idx.with_extension("moved")).unwrap();
    let without = recover(&data, 10, false).unwrap();
    assert_eq!(without.report.indexed_segments, 0);
    assert_eq!(state(&with), state(&without));
    // A damaged index, or one for another length, is not used.
    let mut bad = std::fs::read(idx.with_extension("moved")).unwrap();
    bad[20] ^= 1;
    std::fs::write(&idx, &bad).unwrap();
    assert_eq!(recover(&data, 10, false).unwrap().report.indexed_segments, 0);
    let mut b = super::segindex::Builder::new(true);
    b.batch(12, 1);
    b.add(&Id::parse_str("r").unwrap(), 5, 1, 12);
    std::fs::write(&idx, b.finish(13, 0).unwrap()).unwrap();
    let r = recover(&data, 10, false).unwrap();
    assert_eq!((r.report.indexed_segments, state(&r)), (0, state(&without)));
    let _ = std::fs::remove_dir_all(&data);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Cut anywhere (a torn write): recovery keeps exactly the whole
    /// records before the cut and truncates the file to them; in `sync`
    /// mode no room changes epoch (what was cut was never acknowledged).
    #[test]
    fn any_cut_point(cut in 0usize..2000, sync_before: bool) {
        let (data, path, bytes, ends) = log_with(20);
        let cut = cut.min(bytes.len());
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut as u64).unwrap();
        let r = recover(&data, 100, sync_before).unwrap();
        let whole = ends.iter().filter(|&&e| e <= cut).count() as u64;
        let kept = r.rooms.get(&Id::parse_str("r").unwrap()).map_or(0, |room| room.seq);
        prop_assert_eq!(kept, whole);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let want_len = if whole == 0 { record::HEADER_LEN } else { ends[whole as usize - 1] };
        prop_assert_eq!(len, want_len);
        if let Some(room) = r.rooms.get(&Id::parse_str("r").unwrap()) {
            // In sync mode a torn record was never acknowledged; in
            // written mode it may have been: its room starts anew.
            let cut_something = cut != bytes.len() && cut != want_len;
            prop_assert_eq!(room.damaged, !sync_before && cut_something);
        }
        // Recovering again finds a clean log.
        let again = recover(&data, 100, sync_before).unwrap();
        prop_assert_eq!(again.report.dropped_bytes, 0);
        let _ = std::fs::remove_dir_all(&data);
    }

    /// Recovery against a model of what was acknowledged: a log of three
    /// rooms over three segments, then damage — bytes flipped anywhere
    /// after the headers, a torn tail, a segment deleted. Recovery never
    /// returns a record that was not written, keeps every record that
    /// is whole on disk, and a room keeps its epoch only if its newest
    /// acknowledged record is still there (else reusing its seqs could
    /// renumber an acknowledged message).
    #[test]
    fn recovery_keeps_every_whole_record_and_never_renumbers(
        counts in proptest::collection::vec(5u64..25, 3),
        flips in proptest::collection::vec((0usize..3, any::<prop::sample::Index>(), 1u8..=255), 0..3),
        torn in proptest::option::of(1usize..60),
        delete in proptest::option::of(0usize..3),
        sync_before: bool,
    ) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("cchat-recovery-model-{}-{k}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let dir = shard_dir(&data, 0);
        std::fs::create_dir_all(&dir).unwrap();
        // Three segments, the rooms' records interleaved.
        let rooms = ["a", "b", "c"];
        let mut next = [0u64; 3];
        let mut files: Vec<Vec<u8>> = Vec::new();
        // (segment, room, seq, offset, length) of every record written.
        let mut written: Vec<(usize, usize, u64, usize, usize)> = Vec::new();
        for seg in 0..3 {
            let mut bytes = record::header().to_vec();
            for (i, &n) in counts.iter().enumerate() {
                for _ in 0..n / 3 + usize::from(seg == 2) as u64 {
                    let room = (i + seg + written.len()) % 3;
                    next[room] += 1;
                    let at = bytes.len();
                    let msg = format!("{{\"r\":\"{}\",\"seq\":{}}}", rooms[room], next[room]);
                    record::encode(&mut bytes, 9, next[room], 1, rooms[room], msg.as_bytes());
                    written.push((seg, room, next[room], at, bytes.len() - at));
                }
            }
            files.push(bytes);
        }
        // Damage.
        let mut damaged_recs = std::collections::HashSet::new();
        for (seg, at, x) in &flips {
            let f = &mut files[*seg];
            let i = HEADER_LEN + at.index(f.len() - HEADER_LEN);
            f[i] ^= x;
            for (n, w) in written.iter().enumerate() {
                if w.0 == *seg && (w.3..w.3 + w.4).contains(&i) {
                    damaged_recs.insert(n);
                }
            }
        }
        // A torn tail: the newest segment's last record half written (unacknowledged).
        let mut unacked = std::collections::HashSet::new();
        if let Some(t) = torn {
            let (n, w) = written.iter().enumerate().rev().find(|(_, w)| w.0 == 2).unwrap();
            let keep = w.3 + t.min(w.4 - 1);
            files[2].truncate(keep);
            unacked.insert(n);
        }
        for (seg, f) in files.iter().enumerate() {
            std::fs::write(dir.join(segment_name(seg as u64 + 1)), f).unwrap();
        }
        std::fs::write(dir.join(NEWEST), "3\n").unwrap();
        let mut lost_seg = None;
        if let Some(d) = delete {
            std::fs::remove_file(dir.join(segment_name(d as u64 + 1))).unwrap();
            lost_seg = Some(d);
        }
        let r = recover(&data, 1000, sync_before).unwrap();
        for (room_i, name) in rooms.iter().enumerate() {
            let rid = Id::parse_str(name).unwrap();
            let Some(room) = r.rooms.get(&rid) else { continue };
            // Every indexed place holds the record written for its seq.
            for seq in room.index.first()..room.index.end() {
                let Some(loc) = room.index.get(seq) else { continue };
                let bytes = std::fs::read(dir.join(segment_name(loc.seg()))).unwrap();
                let Decoded::Record(rec, _) = record::decode(&bytes[loc.off() as usize..]) else {
                    return Err(TestCaseError::fail(format!("no record at {loc:?}")));
                };
                prop_assert_eq!((rec.rid.as_str(), rec.seq), (*name, seq));
                let want = format!("{{\"r\":\"{name}\",\"seq\":{seq}}}");
                prop_assert_eq!(&rec.msg[..], want.as_bytes());
            }
            // Every record whole on disk is found.
            for (n, w) in written.iter().enumerate() {
                let on_disk = Some(w.0) != lost_seg && !damaged_recs.contains(&n) && !unacked.contains(&n);
                if w.1 == room_i && on_disk {
                    prop_assert!(room.index.get(w.2).is_some(), "record {} of {} lost", w.2, name);
                }
            }
            // Keeping the epoch is safe only with the newest acknowledged record there.
            let newest_acked = written.iter().enumerate()
                .filter(|(n, w)| w.1 == room_i && !unacked.contains(n)).map(|(_, w)| w.2).max().unwrap_or(0);
            if !room.damaged {
                prop_assert!(room.seq >= newest_acked, "{} continues at {} below acknowledged {}", name, room.seq, newest_acked);
            }
        }
        let _ = std::fs::remove_dir_all(&data);
    }
}
