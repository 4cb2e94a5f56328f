//! CPU of the relay's sealed records (issue 23): what sealing and opening
//! adds per relay frame, for the frame sizes the relay carries.
//!
//! `cargo bench --bench relay_seal`. A write batches up to 256 KiB of
//! frames into one record; at low rates a record holds one frame. Both are
//! measured: ns per frame when a record carries one frame of the size, and
//! when it carries a full write of such frames.

use std::time::Instant;

use bytes::BytesMut;
use cchat::relay::secure::{KEY_LEN, Opener, Sealer};

fn main() {
    let key = [9u8; KEY_LEN];
    println!("| frame bytes | frames per record | seal + open, ns per frame | ns per KiB |");
    println!("|---|---|---|---|");
    for size in [64usize, 300, 1200] {
        for per_record in [1usize, (256 * 1024) / size] {
            let (mut s, mut o) = (Sealer::new(&key), Opener::new(&key));
            let plain = vec![0x5au8; size * per_record];
            let records = (4_000_000 / plain.len()).clamp(50, 200_000);
            let mut wire = Vec::with_capacity(plain.len() + 64);
            let mut input = BytesMut::new();
            let mut out = BytesMut::with_capacity(plain.len() + 64);
            let t0 = Instant::now();
            for _ in 0..records {
                wire.clear();
                s.seal(std::hint::black_box(&plain), &mut wire);
                input.extend_from_slice(&wire);
                out.clear();
                o.open(&mut input, &mut out).unwrap();
                std::hint::black_box(&out);
            }
            let ns = t0.elapsed().as_nanos() as f64;
            let per_frame = ns / (records * per_record) as f64;
            let per_kib = ns / (records as f64 * plain.len() as f64 / 1024.0);
            println!("| {size} | {per_record} | {per_frame:.0} | {per_kib:.0} |");
        }
    }
}
