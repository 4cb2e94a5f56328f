#!/usr/bin/env bash
# Relay cost: the same room load on one node and on three nodes joined by the
# relay, with every room's members spread over the three (each message
# crosses two links). 3,000 clients, rooms of 100, 500 msg/s (49,500
# deliveries/s), 15 s. Writes DATE-relay-1node.* and DATE-relay-3nodes.*.
source "$(dirname "$0")/lib.sh"
LOAD=(--clients 3000 --room-size 100 --rate 500 --payload 64 --duration 15)
bench_init relay-1node "relay cost, 1 node (2 shards): 3,000 clients, rooms of 100, 500 msg/s"
bench_runs 3 1 2 -- "${LOAD[@]}"
NOTE="3 nodes joined by the relay, one shard each (2 cores in all); loadgen --spread-rooms puts client c on node c % 3, so every room spans the nodes"
CLUSTER=1 bench_init relay-3nodes "relay cost, 3 nodes (1 shard each): same load, rooms spread over the nodes"
CLUSTER=1 bench_runs 3 3 1 -- "${LOAD[@]}" --spread-rooms
