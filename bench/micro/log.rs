//! The embedded log alone: appends per second of 200-byte records in
//! `written` mode on one shard, then the recovery of what was written.
//!
//! `cargo bench --bench log` (writes bench/results/DATE-log/;
//! `RECORDS=n` changes the count, 5,000,000 by default: a log of ~1.2 GiB).
//! One glommio executor frames records into the journal as an owner shard
//! does (CRC included) and writes each 256 KiB batch with one io_uring write,
//! with an fdatasync every 100 ms as `--fsync-interval-ms` does; then the
//! log is read back as at start.

#[path = "support.rs"]
mod support;

use std::time::{Duration, Instant};

use cchat::store::Journal;
use cchat::store::log::writer::{Log, LogConfig};

fn main() {
    let records: u64 = std::env::var("RECORDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000_000);
    let data = std::env::temp_dir().join(format!("cchat-bench-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let cfg =
        LogConfig { data: data.clone(), shard: 0, segment_bytes: 64 << 20, retention_bytes: u64::MAX, retention_ms: 0 };
    let (elapsed, syncs, bytes) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let log = Log::open(cfg, Vec::new()).await.expect("open the log");
            let mut journal = Journal::default();
            let msg = bytes::Bytes::from(vec![b'x'; 200]);
            let rooms: Vec<cchat::ids::Id> =
                (0..1000).map(|i| cchat::ids::Id::parse_str(&format!("room-{i}")).unwrap()).collect();
            // What the owner does after each write: index every record's place.
            let mut index: std::collections::HashMap<cchat::ids::Id, cchat::store::RoomIndex> =
                rooms.iter().map(|r| (r.clone(), cchat::store::RoomIndex::new(1, 0))).collect();
            let t0 = Instant::now();
            let mut last_sync = Instant::now();
            let mut syncs = 0;
            let mut bytes = 0u64;
            for i in 0..records {
                journal.append(1, i / 1000 + 1, 1_700_000_000_000 + i, &rooms[(i % 1000) as usize], &msg, 0);
                if journal.end() - bytes >= 256 << 10 || i + 1 == records {
                    let batch = journal.take();
                    let len = batch.buf.len() as u64;
                    let (seg, base) = log.append(batch.buf).await.expect("append");
                    log.note_written(&batch.marks, base, len);
                    for m in &batch.marks {
                        let loc = cchat::store::Loc::new(0, seg, base + m.off);
                        index.get_mut(&m.rid).expect("room").push(m.epoch, m.seq, loc, 1000);
                    }
                    bytes = batch.end;
                    log.roll_if_full().await.expect("roll");
                    if last_sync.elapsed() >= Duration::from_millis(100) {
                        log.sync().await.expect("sync");
                        syncs += 1;
                        last_sync = Instant::now();
                    }
                }
            }
            log.sync().await.expect("sync");
            (t0.elapsed(), syncs + 1, bytes)
        })
        .expect("executor")
        .join()
        .expect("bench");
    let rate = records as f64 / elapsed.as_secs_f64();
    let t0 = Instant::now();
    let rec = cchat::store::log::recovery::recover(&data, 100, false).expect("recover");
    let recovery = t0.elapsed();
    assert_eq!(rec.report.records, records);
    let gib = rec.report.bytes as f64 / (1u64 << 30) as f64;
    let _ = std::fs::remove_dir_all(&data);
    let body = format!(
        "| records (200-byte messages) | log bytes | append time | appends/s | fdatasyncs | recovery | recovery per GiB |\n|---|---|---|---|---|---|---|\n| {records} | {:.2} GiB | {:.2} s | {:.0} | {syncs} | {:.2} s | {:.2} s |\n\nTargets (issue 12): >= 1,000,000 appends/s per shard in `written` mode; recovery of a 1 GiB log in <= 5 s.\nAppends include indexing each record's place per room (what the owner does after a write). Recovery rebuilds sealed segments from their index files (`NNN.idx`, written at sealing) and reads only the newest segment; it indexes the places of 100 messages per room of 1,000 rooms (no message bodies kept).",
        bytes as f64 / (1u64 << 30) as f64,
        elapsed.as_secs_f64(),
        rate,
        recovery.as_secs_f64(),
        recovery.as_secs_f64() / gib,
    );
    println!("{body}");
    support::write_result("log", "cargo bench --bench log", &body);
}
