#!/usr/bin/env bash
# The machine's floor: broadcast fan-out over loopback TCP with no chat
# server, no WebSocket and no JSON (bench/hubs/raw-floor), in the shapes of loads A
# and B and stepped up like the ceiling. What cchat (or any server) can at
# best reach here, measured the same day. Writes results/DATE-raw-floor/.
# B's shape is cut to 9,000 clients (rooms of 1,000, 222 msg/s, the same
# ~200,000 deliveries/s): both ends of 10,000 socket pairs in one process
# would pass the 20,000 open-file limit.
set -euo pipefail
DIR="$(cd "$(dirname "$0")/.." && pwd)"
DATE="${DATE:-$(date -u +%Y-%m-%d)}"
mkdir -p "$DIR/results/$DATE-raw-floor"
OUT="$DIR/results/$DATE-raw-floor/$DATE-raw-floor.md"
cargo build --release --manifest-path "$DIR/hubs/raw-floor/Cargo.toml"
BIN="$DIR/hubs/raw-floor/target/release/raw-floor"
run() {
    echo "### \`raw-floor $*\`"
    echo
    echo '```'
    "$BIN" "$@" || echo "(exit $?: deliveries lost)"
    echo '```'
    echo
}
{
    echo "# raw floor: loopback TCP fan-out without a chat server ($DATE)"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$DIR" rev-parse --short HEAD)"
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(uname -r) (shared, noisy)"
    echo "- what: writer thread(s) put 150-byte frames stamped with their due time on loopback TCP sockets on loadgen's"
    echo "  open-loop schedule; one reader thread (epoll, like loadgen) records latency from the due time."
    echo "  \`each\`: one send per delivery; \`batch\`: all of a socket's queued frames in one send;"
    echo "  \`--inject\`: messages sent over TCP by the client side and read by the writer before fan-out."
    echo
    echo "## Load A's shape (2,000 clients, rooms of 100, 2,000 msg/s)"
    echo
    for mode in each batch; do
        for w in 1 2; do run --mode "$mode" --writers "$w" --duration 10; done
    done
    echo "## Load B's shape (9,000 clients, rooms of 1,000, 222 msg/s)"
    echo
    for w in 1 2; do run --mode batch --writers "$w" --duration 10 --clients 9000 --room-size 1000 --rate 222; done
    echo "## Shape A stepped up (batch, 1 writer, 5 s per step)"
    echo
    for rate in 10000 20000 30000 50000 70000; do run --mode batch --duration 5 --rate "$rate"; done
    echo "## Shape A with the messages sent over TCP by the clients (--inject, 1 writer)"
    echo
    echo "What a chat server and its load generator both pay: the writer reads each message before it fans it"
    echo "out, the client side sends it. The fair floor for cchat's ceiling."
    echo
    run --inject --duration 10
    for rate in 10000 30000 40000 50000; do run --inject --duration 5 --rate "$rate"; done
} > "$OUT"
echo "bench: wrote $OUT" >&2
