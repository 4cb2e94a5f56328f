#!/usr/bin/env bash
# ceiling: shape A (2,000 clients, rooms of 100, 64-byte msg) with the rate
# stepped up, 5 s per step on a fresh server. Reports the ceiling: the
# highest deliveries/s held with zero loss, no error and p99 ≤ 50 ms; and,
# beside it, the highest deliveries/s with zero loss at any latency. The
# search goes on past the latency limit (p99 hovers near it over a range of
# rates on this noisy machine) and stops at the first step with a loss or an
# error, or with p99 over 1 s. DURABILITY=memory|written|sync picks the
# log's mode (default: the server's, written), for the modes side by side:
#   for d in memory written; do DURABILITY=$d bench/scenarios/ceiling.sh; done
# STORE=redis measures history in Redis instead (see lib.sh). The server
# starts with its default shard count (SHARDS=N to set --shards).
source "$(dirname "$0")/lib.sh"
MODE_ARGS=()
if [ -n "${DURABILITY:-}" ]; then MODE_ARGS=(--durability "$DURABILITY"); fi
bench_init "ceiling${DURABILITY:+-$DURABILITY}" "ceiling: shape A (rooms of 100, 64 B) stepped up until p99 > ${P99_LIMIT_MS:-50} ms or a loss${DURABILITY:+, --durability $DURABILITY}"
RATES="${RATES:-1000 2000 3000 5000 7500 10000 15000 20000 30000 40000 50000 60000 80000 100000}"
export P99_LIMIT_MS="${P99_LIMIT_MS:-50}"
steps=()
for rate in $RATES; do
    wait_quiet
    if [ -n "$REDIS_PORT" ]; then redis-cli -p "$REDIS_PORT" flushall > /dev/null; fi
    # A fresh server: without the last step's log, whose rooms a restart
    # would read back while this step's flood begins.
    rm -rf "$WORK"/data-*
    start_servers 1 "${SHARDS:-default}" "${MODE_ARGS[@]}"
    rc=0
    t0=$SECONDS
    run_loadgen "$WORK/step-$rate" --clients 2000 --room-size 100 --rate "$rate" --payload 64 \
        --duration 5 --warmup 1 --drain 2 || rc=$?
    if [ -n "$REDIS_PORT" ]; then NOTE="${NOTE:+$NOTE; }$rate msg/s: $(store_note $((SECONDS - t0)))"; fi
    stop_servers
    [ -f "$WORK/step-$rate.json" ] || { echo "bench: step $rate produced no summary (exit $rc)" >&2; break; }
    steps+=("$rate msg/s=$WORK/step-$rate.json")
    p99=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["latency_ms"]["p99"])' "$WORK/step-$rate.json")
    if [ "$rc" -ne 0 ] || python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 1000 else 1)' "$p99"; then
        echo "bench: step $rate msg/s: exit $rc, p99 $p99 ms: stopping" >&2
        break
    fi
done
LOADGEN_CMD="${LOADGEN_PIN[*]}${LOADGEN_PIN[*]:+ }loadgen --url URL --clients 2000 --room-size 100 --rate RATE --payload 64 --duration 5 --warmup 1 --drain 2"
bench_report steps "${steps[@]}"
