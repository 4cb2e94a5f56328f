//! CPU and ratio of permessage-deflate on broadcast frames (issue 30): what
//! compressing one frame costs, at each zlib level, for message frames of
//! everyday chat text of the sizes chat carries. The frame is compressed
//! once per broadcast and shard, so its cost is shared by the room's
//! members there; the ratio is what every one of them saves on the wire.
//!
//! `cargo bench --bench deflate`

use std::time::Instant;

use cchat::ws::deflate::{Deflater, Inflater};

const WORDS: &str = "I you the to a it and is that in of for me on so have we be just my do this not are lol \
    with but what was can at if get know like ok yeah no your all it's I'm go about up think will one out now how \
    there see when time good they going don't back today tomorrow meeting thanks sure later need want call did had \
    right here home work night still tonight haha let's maybe really then can't got sorry please coffee lunch deploy \
    build ship fixed review PR ticket prod Alice Bob Carol Dave Erin Frank 3pm 10 Friday Monday weekend soon done";

/// A `message` frame as the server sends it, `n` bytes of `msg`.
fn frame(n: usize, seed: u64) -> bytes::Bytes {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut msg = format!("{:016x}{:08x}", x, seed as u32);
    while msg.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        msg.push(' ');
        msg.push_str(words[(x % words.len() as u64) as usize]);
    }
    msg.truncate(n);
    let json = format!(
        r#"{{"cmd":"message","epoch":1796664851734,"msg":"{msg}","name":"n{seed}","rid":"r42","seq":{},"ts":1796664851735,"type":"text","uid":"u{seed}"}}"#,
        seed * 7
    );
    cchat::ws::text_frame(json.as_bytes())
}

fn main() {
    println!("| msg bytes | frame bytes | level | compress ns/frame | inflate ns/frame | bytes after / before |");
    println!("|---|---|---|---|---|---|");
    for n in [64usize, 256, 1000] {
        let frames: Vec<_> = (0..512).map(|i| frame(n, 1000 + i)).collect();
        for level in [1u32, 2, 6] {
            let mut d = Deflater::with_level(level);
            let rounds = 40;
            let (mut before, mut after) = (0usize, 0usize);
            let mut out = Vec::with_capacity(frames.len());
            let t0 = Instant::now();
            for r in 0..rounds {
                for f in &frames {
                    let z = d.frame(std::hint::black_box(f));
                    if r == 0 {
                        before += f.len();
                        after += z.as_ref().map_or(f.len(), |z| z.len());
                        out.push(z);
                    }
                }
            }
            let ns = t0.elapsed().as_nanos() as f64 / (rounds * frames.len()) as f64;
            let mut inf = Inflater::default();
            let t1 = Instant::now();
            for z in out.iter().flatten() {
                let (_, body, _) = cchat::ws::parse_server_frame(z).unwrap().unwrap();
                std::hint::black_box(inf.text(&z[body], 1 << 20).unwrap());
            }
            let ins = t1.elapsed().as_nanos() as f64 / out.len() as f64;
            let flen = frames[0].len();
            let ratio = after as f64 / before as f64;
            println!("| {n} | {flen} | {level} | {ns:.0} | {ins:.0} | {ratio:.3} |");
        }
    }
}
