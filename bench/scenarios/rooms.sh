#!/usr/bin/env bash
# rooms: 10,000 clients in rooms of 100, 1,000 messages/s in total
# (99,000 deliveries/s), 64-byte messages, 15 s; three runs, medians reported.
# Two loadgen processes: one process reading 10,000 sockets at one frame
# per read saturates its share of a core here and adds tens of ms of its own
# read delay (compare the "at socket" figures); two use both cores.
source "$(dirname "$0")/lib.sh"
bench_init rooms "rooms: 10,000 clients, rooms of 100, 1,000 msg/s"
bench_runs 3 1 2 -- --clients 10000 --room-size 100 --rate 1000 --payload 64 --duration 15 --workers 2
