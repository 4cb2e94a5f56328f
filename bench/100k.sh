#!/usr/bin/env bash
# 100k: 100,000 clients over 6 server nodes on this machine (separate
# processes on 127.0.0.1:9501..9506, one shard each), rooms of 100,
# 1,000 messages/s (99,000 deliveries/s), 15 s. One process may open only
# 20,000 files here, so loadgen runs worker processes (~15,000 clients each)
# and binds its sockets to source addresses spread over 127.0.0.0/8; each
# node holds ~16,700 clients. The nodes are not joined by a relay in this
# scenario: loadgen keeps every room on one node.
source "$(dirname "$0")/lib.sh"
NOTE="${NOTE:-the 6 nodes are not joined by a relay (no --relay-listen/--peer): each room lives on one node, rooms spread round-robin over the nodes}"
bench_init 100k "100k: 100,000 clients over 6 local nodes, rooms of 100, 1,000 msg/s"
bench_runs 1 6 1 -- --clients 100000 --room-size 100 --rate 1000 --payload 64 --duration 15 \
    --connect-concurrency 600 --connect-timeout 600
