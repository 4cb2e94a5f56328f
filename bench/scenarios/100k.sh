#!/usr/bin/env bash
# 100k: 100,000 clients over 6 server nodes on this machine (separate
# processes on 127.0.0.1:9501..9506, one shard each) joined by the relay,
# rooms of 100 spread over the nodes (client c on node c % 6), 1,000
# messages/s (99,000 deliveries/s), 15 s. One process may open only 20,000
# files here, so loadgen runs worker processes (~15,000 clients each) and
# binds its sockets to source addresses spread over 127.0.0.0/8; each node
# holds ~16,700 clients. SPREAD=0 keeps each room on one node instead.
source "$(dirname "$0")/lib.sh"
export CLUSTER=1
if [ "${SPREAD:-1}" = 1 ]; then
    NOTE="${NOTE:-6 nodes joined by the relay; the members of every room spread over all 6 nodes (loadgen --spread-rooms), so each message crosses 5 links}"
    EXTRA=(--spread-rooms)
else
    NOTE="${NOTE:-6 nodes joined by the relay; the members of each room on one node (rooms round-robin over the nodes)}"
    EXTRA=()
fi
bench_init 100k "100k: 100,000 clients over 6 relay-joined local nodes, rooms of 100, 1,000 msg/s"
bench_runs 1 6 1 -- --clients 100000 --room-size 100 --rate 1000 --payload 64 --duration 15 \
    --connect-concurrency 600 --connect-timeout 600 --drain 5 "${EXTRA[@]}"
