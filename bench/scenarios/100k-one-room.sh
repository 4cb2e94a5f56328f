#!/usr/bin/env bash
# 100,000 clients in ONE room over 6 relay-joined nodes on this machine (one
# shard each, client c on node c % 6), 2 messages/s: each broadcast reaches
# 99,999 members across 6 nodes. Targets (issue 14): all connected and joined
# in <= 15 s; broadcast completion (last member) p99 <= 250 ms; zero loss.
# Presence is batched (the room is far above --presence-limit), so joins cost
# the owner O(1) and send no per-join frame to 100,000 members.
# loadgen's workers run under SCHED_BATCH (`--sched-batch`; SCHED_BATCH=0 for
# the default policy): 7 load generator processes share the 2 cores with the
# 6 servers, and each wake-up of theirs would otherwise preempt a server
# mid-fan-out. raw-floor-100k.sh is the floor for this shape (its readers
# batch likewise); run the two in one sitting to compare completion.
source "$(dirname "$0")/lib.sh"
export CLUSTER=1
NOTE="${NOTE:-6 nodes joined by the relay; one room of 100,000 members spread over all 6 nodes}"
BATCH=()
if [ "${SCHED_BATCH:-1}" = 1 ]; then
    BATCH=(--sched-batch)
    NOTE="$NOTE; loadgen workers under SCHED_BATCH"
fi
bench_init 100k-one-room "100,000 clients in one room over 6 relay-joined local nodes, 2 msg/s"
bench_runs 1 6 1 -- --clients 100000 --room-size 100000 --rate 2 --payload 64 --duration 15 \
    --connect-concurrency 600 --connect-timeout 600 --drain 5 --spread-rooms "${BATCH[@]}"
