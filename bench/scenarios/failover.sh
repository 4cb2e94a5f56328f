#!/usr/bin/env bash
# failover: SIGKILL the owner of ROOMS rooms (default 1,000) under load, with
# history in one local redis-server (--store); see bench/micro/failover.rs. Writes
# results/DATE-failover-redis/. ROOMS, RATE, WARMUP, AFTER pass through.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATE="${DATE:-$(date -u +%Y-%m-%d)}"
mkdir -p "bench/results/$DATE-failover-redis"
out="bench/results/$DATE-failover-redis/$DATE-failover-redis.md"
cargo build --release -p cchat
cargo build --release --bench failover
runs="${RUNS:-3}"
{
    echo "# failover through the shared store: SIGKILL the owner of ${ROOMS:-1000} rooms under load"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
    echo "- machine: $(nproc) cores (nproc), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r) (shared, noisy)"
    echo "- command: \`ROOMS=${ROOMS:-1000} RATE=${RATE:-4000} WARMUP=${WARMUP:-3} AFTER=${AFTER:-10} bench/scenarios/failover.sh\` ($runs runs)"
    echo "- setup: 3 relay-joined nodes (--shards 1 each) with --store redis://127.0.0.1:PORT (redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p'), appendonly yes, appendfsync everysec);"
    echo "  10 senders on node 0 post round-robin to the rooms node 2 owns (each gets its own message back: the acknowledgement); node 2 is killed (SIGKILL) mid-load."
    echo
    for r in $(seq "$runs"); do
        echo "## run $r"
        echo
        echo '```'
        cargo bench --bench failover 2> /dev/null
        echo '```'
        echo
    done
} > "$out.tmp"
mv "$out.tmp" "$out"
cat "$out"
