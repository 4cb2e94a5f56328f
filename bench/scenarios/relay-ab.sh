#!/usr/bin/env bash
# Relay cost before and after a change, interleaved in one sitting: the
# 3-node shape of relay.sh (3,000 clients, rooms of 100 spread over the
# nodes: every message crosses two links) at RATE msg/s (default 500), with
# two server binaries in turn, ROUNDS times (default 2), the same loadgen:
#   BEFORE=/path/to/old/cchat AFTER=/path/to/new/cchat LOADGEN=... bench/scenarios/relay-ab.sh
# Writes DATE-relay-ab-RATE-{before,after}-rN.* (one run each).
set -euo pipefail
: "${BEFORE:?the old server binary}" "${AFTER:?the new server binary}"
export NO_BUILD=1 CLUSTER=1 RATE="${RATE:-500}"
for round in $(seq 1 "${ROUNDS:-2}"); do
    for side in before after; do
        bin=$BEFORE
        [ "$side" = after ] && bin=$AFTER
        export CCHAT="$bin" SIDE="$side" ROUND="$round"
        export NOTE="round $round of ${ROUNDS:-2}, $side; 3 nodes joined by the relay, one shard each"
        bash -c 'source "$(dirname "$0")/lib.sh"
            bench_init "relay-ab-$RATE-$SIDE-r$ROUND" "relay A/B ($SIDE), 3 nodes: 3,000 clients, rooms of 100 spread, $RATE msg/s"
            bench_runs 1 3 1 -- --clients 3000 --room-size 100 --rate "$RATE" --payload 64 --duration 15 --spread-rooms' \
            "$0"
    done
done
