#!/usr/bin/env bash
# Side by side, in one session: loads A and B against cchat as it starts by
# default (its own shard count: one per core, one on <= 2 cores; pinned,
# released from a core loadgen keeps busy), with
# strict pinning (STRICT_PIN=1: --unpin-above 0), with --no-pin (NO_PIN=1),
# with a core each for it and loadgen (SPLIT=1: one shard on CPU 1, loadgen
# on CPU 0), against the comparison hub bench/hubs/tokio-hub (tokio +
# tokio-tungstenite, "the usual way") and against the peer to beat,
# bench/hubs/uws-hub (µWebSockets.js on Node, pub/sub per room), all driven
# by the same loadgen. Each
# configuration writes its own results/DATE-load-{a,b}[-strictpin|-nopin|-split|
# -tokio-hub|-uws-hub].* files (three runs each); this script then writes
# results/DATE-compare.md, a table of their medians.
# RUNS=N changes the runs per configuration. Takes about 20 minutes.
set -euo pipefail
DIR="$(cd "$(dirname "$0")/.." && pwd)"
DATE="${DATE:-$(date -u +%Y-%m-%d)}"
export DATE
(cd "$DIR/.." && cargo build --release -p cchat -p loadgen)
cargo build --release --manifest-path "$DIR/hubs/tokio-hub/Cargo.toml"
status=0
STARTED=$(date +%s)
export STARTED
for load in a b; do
    NO_BUILD=1 "$DIR/scenarios/load-$load.sh" || status=1
    NO_BUILD=1 STRICT_PIN=1 "$DIR/scenarios/load-$load.sh" || status=1
    NO_BUILD=1 NO_PIN=1 "$DIR/scenarios/load-$load.sh" || status=1
    NO_BUILD=1 SPLIT=1 "$DIR/scenarios/load-$load.sh" || status=1
    NO_BUILD=1 BENCH_SERVER=tokio-hub "$DIR/scenarios/load-$load.sh" || status=1
    NO_BUILD=1 BENCH_SERVER=uws-hub "$DIR/scenarios/load-$load.sh" || status=1
done
mkdir -p "$DIR/results/$DATE-compare"
python3 - "$DIR/results" "$DATE" "$STARTED" > "$DIR/results/$DATE-compare/$DATE-compare.md" <<'PY'
import json, os, sys
results, date, started = sys.argv[1], sys.argv[2], int(sys.argv[3])
configs = [
    ("", "cchat as started by default (shards: its choice, pinned, released from a busy core), loadgen beside it"),
    ("-strictpin", "cchat, default shards pinned whatever happens (--unpin-above 0), loadgen beside it"),
    ("-nopin", "cchat, default shards not pinned (--no-pin), loadgen beside it"),
    ("-split", "cchat, 1 shard on CPU 1, loadgen on CPU 0"),
    ("-tokio-hub", "tokio-hub (tokio + tokio-tungstenite), loadgen beside it"),
    ("-uws-hub", "uws-hub (µWebSockets.js on Node, pub/sub per room), loadgen beside it"),
]
print(f"# cchat beside µWebSockets.js and a tokio + tokio-tungstenite hub, loads A and B ({date})\n")
print("Produced by `bench/scenarios/compare.sh`: every row is the median of three runs of the")
print("same loadgen command; the per-configuration files linked hold every run.")
print("Latencies in ms, CPU per delivery in ns. The comparison hubs are")
print("`bench/hubs/tokio-hub` (a task and an unbounded channel per connection,")
print("one write per frame, rooms behind a mutex) and `bench/hubs/uws-hub`")
print("(µWebSockets.js, one Node thread, a pub/sub topic per room).\n")
print("| load | server | result | deliveries/s | lost | p50 | p90 | p99 | p99.9 | max | loadgen CPU | server CPU | file |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for load in ("a", "b"):
    for suffix, label in configs:
        name = f"{date}-load-{load}{suffix}"
        path = os.path.join(results, name, name + ".json")
        # A file left by an earlier run (this configuration failed before
        # its report) must not pass for this session's.
        if not os.path.exists(path) or os.path.getmtime(path) < started:
            print(f"| {load.upper()} | {label} | not measured in this run | | | | | | | | | | |")
            continue
        m = json.load(open(path))["median"]
        f = lambda k: f"{m[k]:,.1f}" if m[k] < 100 else f"{m[k]:,.0f}"
        print(f"| {load.upper()} | {label} | {m['result']} | {m['deliveries/s']:,.0f} | {m['lost']:,} | "
              f"{f('p50 ms')} | {f('p90 ms')} | {f('p99 ms')} | {f('p99.9 ms')} | {f('max ms')} | "
              f"{m['loadgen ns/delivery']:,.0f} | {m['server ns/delivery']:,.0f} | [{name}](../{name}/{name}.md) |")
PY
echo "bench: wrote $DIR/results/$DATE-compare/$DATE-compare.md" >&2
exit $status
