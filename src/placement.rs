//! Where a room lives: pure functions of its id, tested on their own.
//!
//! Within a node, the owner shard is `shard_for(rid, shards)`. Across nodes,
//! the owner node is chosen by rendezvous (highest-random-weight) hashing over
//! the live nodes, so when a node leaves only its own rooms move.

/// FNV-1a, 64 bit: stable across builds and platforms (unlike std's hasher),
/// which placement needs because every shard and node must agree.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (from splitmix64) so that low bits are well mixed.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The shard that owns room `rid` on a node with `shards` shards.
pub fn shard_for(rid: &str, shards: usize) -> usize {
    (fnv1a(&[rid.as_bytes()]) % shards as u64) as usize
}

/// The node that owns room `rid` among `nodes` (by rendezvous hashing).
/// Returns None only when `nodes` is empty.
pub fn node_for<'a>(rid: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes.into_iter().max_by_key(|n| (fnv1a(&[n.as_bytes(), rid.as_bytes()]), *n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shards_are_spread() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("room{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }

    proptest! {
        #[test]
        fn shard_in_range_and_stable(rid in "[a-z0-9]{1,20}", n in 1usize..64) {
            let s = shard_for(&rid, n);
            prop_assert!(s < n);
            prop_assert_eq!(s, shard_for(&rid, n));
        }

        #[test]
        fn rendezvous_moves_only_the_dead_nodes_rooms(rid in "[a-z0-9]{1,20}", dead in 0usize..4) {
            let nodes = ["a", "b", "c", "d"];
            let owner = node_for(&rid, nodes).unwrap();
            let alive: Vec<&str> = nodes.iter().enumerate().filter(|(i, _)| *i != dead).map(|(_, n)| *n).collect();
            let new_owner = node_for(&rid, alive.iter().copied()).unwrap();
            if owner != nodes[dead] {
                prop_assert_eq!(owner, new_owner);
            } else {
                prop_assert!(new_owner != owner);
            }
        }
    }
}
