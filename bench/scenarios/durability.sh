#!/usr/bin/env bash
# Load A with the message log in each durability mode (MODE=memory|written|sync),
# to compare p99 and server CPU per delivery side by side in one sitting:
#   for m in memory written sync; do MODE=$m bench/scenarios/durability.sh; done
# 2,000 clients, rooms of 100, 2,000 messages/s, 64-byte msg, 15 s.
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-written}
bench_init "durability-$MODE" "load A with --durability $MODE"
bench_runs 3 1 2 --durability "$MODE" -- --clients 2000 --room-size 100 --rate 2000 --payload 64 --duration 15
