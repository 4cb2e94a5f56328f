#!/usr/bin/env bash
# Load B (issue 3's yardstick): 10,000 clients, rooms of 1,000, 200 messages/s,
# 64-byte msg, 15 s: 199,800 deliveries/s. Target: p99 ≤ 27 ms, zero loss.
# The server as it starts by default (SHARDS=N to set --shards).
source "$(dirname "$0")/lib.sh"
bench_init load-b "load B: 10,000 clients, rooms of 1,000, 200 msg/s, 64 B"
bench_runs 3 1 "${SHARDS:-default}" -- --clients 10000 --room-size 1000 --rate 200 --payload 64 --duration 15
