#!/usr/bin/env bash
# Load A (issue 3's yardstick): 2,000 clients, rooms of 100, 2,000 messages/s,
# 64-byte msg, 15 s: 198,000 deliveries/s. Target: p99 ≤ 8 ms, zero loss.
# The server as it starts by default (SHARDS=N to set --shards).
source "$(dirname "$0")/lib.sh"
bench_init load-a "load A: 2,000 clients, rooms of 100, 2,000 msg/s, 64 B"
bench_runs 3 1 "${SHARDS:-default}" -- --clients 2000 --room-size 100 --rate 2000 --payload 64 --duration 15
