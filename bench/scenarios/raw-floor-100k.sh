#!/usr/bin/env bash
# The raw loopback floor in the shape of 100k-one-room.sh: one room of
# 100,000 members, 2 messages/s, 64-byte messages (frames of ~150 bytes), no
# chat server, no WebSocket, no JSON. One process holds both ends of its
# sockets, and the open-file limit (20,000) caps that at ~9,000 pairs, so
# PROCS processes (default 12) each hold CLIENTS/PROCS pairs and fan the
# same messages out at the same moments (`raw-floor --start-at-ms`, a common
# wall-clock start). A message's completion is the latest of its deliveries
# over all processes; its p50/p99 is what 100k-one-room.sh's "completion"
# column is measured against. Writers: one per process (WRITERS to change).
# READER_BATCH=1 runs the readers under SCHED_BATCH, the floor for
# `loadgen --sched-batch` (100k-one-room.sh's default).
#
#   bench/scenarios/raw-floor-100k.sh           # writes results/DATE-raw-floor-100k/
#   RUNS=3 NAME=scratch bench/scenarios/raw-floor-100k.sh
set -euo pipefail
DIR="$(cd "$(dirname "$0")/.." && pwd)"
DATE="${DATE:-$(date -u +%Y-%m-%d)}"
NAME="${NAME:-raw-floor-100k}"
CLIENTS="${CLIENTS:-100000}"
PROCS="${PROCS:-12}"
WRITERS="${WRITERS:-1}"
READER_BATCH="${READER_BATCH:-1}"
BATCH=()
[ "$READER_BATCH" = 1 ] && BATCH=(--reader-batch)
RUNS="${RUNS:-1}"
DURATION="${DURATION:-15}"
OUTDIR="$DIR/results/$DATE-$NAME"
OUT="$OUTDIR/$DATE-$NAME.md"
mkdir -p "$OUTDIR"
[ -n "${NO_BUILD:-}" ] || cargo build --release --manifest-path "$DIR/hubs/raw-floor/Cargo.toml"
BIN="$DIR/hubs/raw-floor/target/release/raw-floor"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2> /dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
per=$(((CLIENTS + PROCS - 1) / PROCS))
{
    echo "# raw floor: one room of $CLIENTS over $PROCS processes, 2 msg/s ($DATE)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$DIR" rev-parse --short HEAD)"
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r) (shared, noisy)"
    echo "- what: $PROCS \`raw-floor\` processes of $per socket pairs, each one room of its $per members"
    echo "  (its first member receives nothing), $WRITERS writer thread(s) and one epoll reader each, all starting"
    echo "  their schedule at the same wall-clock moment: every 500 ms each writes one 150-byte frame per"
    echo "  member (\`--mode each\`). A message's completion: its latest delivery over all processes."
    echo "- command (per process): \`raw-floor --clients $per --room-size $per --rate 2 --duration $DURATION"
    echo "  --mode each --writers $WRITERS --start-at-ms T --completion-out FILE ${BATCH[*]}\`"
    echo
    echo "| run | deliveries | lost | completion p50 ms | completion p99 ms | completion max ms | latency p99 ms (worst process) | writer ns/delivery (mean) | reader ns/delivery (mean) |"
    echo "|---|---|---|---|---|---|---|---|---|"
} > "$OUT"
for r in $(seq "$RUNS"); do
    # Every process connects its pairs first; the schedule starts 15 s from now.
    at=$(($(date +%s%3N) + 15000))
    PIDS=()
    for p in $(seq "$PROCS"); do
        "$BIN" --clients "$per" --room-size "$per" --rate 2 --duration "$DURATION" --mode each \
            --writers "$WRITERS" "${BATCH[@]}" --start-at-ms "$at" --completion-out "$WORK/c$r-$p" > "$WORK/o$r-$p" 2>&1 &
        PIDS+=($!)
    done
    rc=0
    for pid in "${PIDS[@]}"; do wait "$pid" || rc=1; done
    PIDS=()
    [ "$rc" -eq 0 ] || echo "raw-floor-100k: run $r: a process lost deliveries or failed" >&2
    python3 - "$r" "$WORK" "$PROCS" >> "$OUT" << 'EOF'
import re, sys, glob
r, work, procs = sys.argv[1], sys.argv[2], int(sys.argv[3])
worst = {}
for f in glob.glob(f"{work}/c{r}-*"):
    for line in open(f):
        m, us = map(int, line.split())
        worst[m] = max(worst.get(m, 0), us)
done = sorted(worst.values())
at = lambda q: done[round((len(done) - 1) * q)] / 1000 if done else float("nan")
got = lost = 0
p99s, wr, rd = [], [], []
for p in range(1, procs + 1):
    text = open(f"{work}/o{r}-{p}").read()
    d = re.search(r"deliveries (\d+) of (\d+).*lost (\d+)", text)
    if d:
        got += int(d.group(1)); lost += int(d.group(3))
    l = re.search(r"latency ms p50 \S+ p90 \S+ p99 (\S+)", text)
    if l:
        p99s.append(float(l.group(1)))
    c = re.search(r"cpu ns/delivery writers (\d+) reader (\d+)", text)
    if c:
        wr.append(int(c.group(1))); rd.append(int(c.group(2)))
mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
print(f"| {r} | {got:,} | {lost} | {at(0.5):.0f} | {at(0.99):.0f} | {done[-1] / 1000 if done else float('nan'):.0f} | "
      f"{max(p99s) if p99s else float('nan'):.0f} | {mean(wr):,.0f} | {mean(rd):,.0f} |")
EOF
done
echo "raw-floor-100k: wrote $OUT" >&2
cat "$OUT"
