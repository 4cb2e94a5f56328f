#!/usr/bin/env bash
# bigroom: 10,000 clients in one room, 10 messages/s (99,990 deliveries/s),
# 64-byte messages, 15 s. Joining alone sends ~50 million newUser frames
# (every member hears of every later one), so the connect phase is long.
# Two loadgen processes: one process reading 10,000 sockets at one frame
# per read saturates its share of a core here and adds tens of ms of its own
# read delay (compare the "at socket" figures); two use both cores.
source "$(dirname "$0")/lib.sh"
bench_init bigroom "big room: 10,000 clients in one room, 10 msg/s"
bench_runs 3 1 2 -- --clients 10000 --room-size 10000 --rate 10 --payload 64 --duration 15 --workers 2
