#!/usr/bin/env bash
# Issue 30: is the default shard count right on a small box? Load A (or B
# with LOAD=b) with --shards N, server and loadgen sharing the cores, to
# compare one shard with one per core in one sitting:
#   for s in 1 2; do NO_BUILD=1 SHARDS=$s bench/scenarios/shards.sh; done
source "$(dirname "$0")/lib.sh"
S=${SHARDS:-1}
case "${LOAD:-a}" in
    a) bench_init "shards-a-$S" "load A (2,000 clients, rooms of 100, 2,000 msg/s) with --shards $S"
       bench_runs 3 1 "$S" -- --clients 2000 --room-size 100 --rate 2000 --payload 64 --duration 15 ;;
    b) bench_init "shards-b-$S" "load B (10,000 clients, rooms of 1,000, 200 msg/s) with --shards $S"
       bench_runs 3 1 "$S" -- --clients 10000 --room-size 1000 --rate 200 --payload 64 --duration 15 ;;
    *) echo "LOAD must be a or b" >&2; exit 1 ;;
esac
