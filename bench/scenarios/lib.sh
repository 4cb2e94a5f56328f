# Shared helpers for the benchmark scenarios (source it; do not run it).
#
# A scenario script calls, in order:
#   bench_init NAME "Title"          build release binaries, set up results paths and the EXIT trap
#   bench_runs RUNS NODES SHARDS -- LOADGEN_ARGS...
#                                    RUNS times: wait for an idle machine, start NODES servers,
#                                    run loadgen against them, stop them; then write
#                                    results/DATE-NAME/DATE-NAME.{md,json,svg} with every run and the medians
# or, for a search, start_servers / run_loadgen / stop_servers itself and then bench_report steps.
#
# Environment: RUNS overrides the number of runs; NO_BUILD=1 skips `cargo build`;
# CCHAT and LOADGEN point at other binaries; NOTE adds a line to the result.
# SPLIT=1 gives server and loadgen a core each: the server runs one shard
#   under `taskset -c $SERVER_CPUS` (default 1), loadgen under
#   `taskset -c $LOADGEN_CPUS` (default 0); results get a `-split` suffix.
# NO_PIN=1 starts cchat with --no-pin (shards not pinned to cores); results
#   get a `-nopin` suffix.
# STRICT_PIN=1 starts cchat with --unpin-above 0 (shards stay pinned even when
#   their core is busy with loadgen); results get a `-strictpin` suffix.
# BENCH_SERVER=tokio-hub measures the comparison hub (bench/hubs/tokio-hub, built
#   here) instead of cchat, one node; results get a `-tokio-hub` suffix.
#   BENCH_SERVER=uws-hub measures the µWebSockets.js hub (bench/hubs/uws-hub,
#   Node; its npm package installed here), likewise with a `-uws-hub` suffix.
# TLS=1 serves the client port over TLS (a certificate made by openssl) and
#   loadgen connects with wss://; results get a `-tls` suffix.
# STORE=redis keeps history and room sequence in a redis-server started here
#   (appendonly yes, appendfsync everysec; flushed before each run) instead of
#   the embedded log (`--store`); results get a `-redis` suffix, and each run's
#   note gives the store's round trips per shard per millisecond.
# Everything started here is stopped by PID on exit, whatever happens.

set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/../.." && pwd)"
RESULTS="$ROOT/bench/results"
CCHAT="${CCHAT:-$ROOT/target/release/cchat}"
LOADGEN="${LOADGEN:-$ROOT/target/release/loadgen}"
DATE="${DATE:-$(date -u +%Y-%m-%d)}"
NOTE="${NOTE:-}"
SERVER_PIDS=()
SERVER_URLS=()
REDIS_PID=""
REDIS_PORT=""
STORE_ARGS=()
SERVER_CMD=""
BENCH_SERVER="${BENCH_SERVER:-cchat}"
TOKIO_HUB="${TOKIO_HUB:-$ROOT/bench/hubs/tokio-hub/target/release/tokio-hub}"
UWS_HUB="$ROOT/bench/hubs/uws-hub"
SERVER_CPUS="${SERVER_CPUS:-1}"
LOADGEN_CPUS="${LOADGEN_CPUS:-0}"
SERVER_PIN=()
LOADGEN_PIN=()
if [ "${SPLIT:-0}" = 1 ]; then
    SERVER_PIN=(taskset -c "$SERVER_CPUS")
    LOADGEN_PIN=(taskset -c "$LOADGEN_CPUS")
fi
WORK="$(mktemp -d -t cchat-bench.XXXXXX)"

bench_cleanup() {
    stop_servers
    # Servers a scenario started again itself (rolling.sh), by PID.
    if [ -f "$WORK/restarted.pids" ]; then
        local p
        while read -r p; do kill -TERM "$p" 2> /dev/null || true; done < "$WORK/restarted.pids"
        while read -r p; do
            for _ in $(seq 100); do kill -0 "$p" 2> /dev/null || break; sleep 0.05; done
            kill -KILL "$p" 2> /dev/null || true
        done < "$WORK/restarted.pids"
    fi
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2> /dev/null || true
        wait "$REDIS_PID" 2> /dev/null || true
    fi
    if [ -n "${KEEP_WORK:-}" ]; then echo "bench: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# bench_init NAME TITLE: builds (one cargo command) and names the results.
bench_init() {
    NAME="$1"
    TITLE="$2"
    if [ "$BENCH_SERVER" != cchat ]; then
        NAME="$NAME-$BENCH_SERVER"
        TITLE="$TITLE, $BENCH_SERVER (comparison server)"
    fi
    if [ "${NO_PIN:-0}" = 1 ]; then
        NAME="$NAME-nopin"
        TITLE="$TITLE, shards not pinned (--no-pin)"
    fi
    if [ "${STRICT_PIN:-0}" = 1 ]; then
        NAME="$NAME-strictpin"
        TITLE="$TITLE, shards pinned whatever happens (--unpin-above 0)"
    fi
    if [ "${TLS:-0}" = 1 ]; then
        NAME="$NAME-tls"
        TITLE="$TITLE, over TLS (wss://)"
    fi
    if [ "${STORE:-}" = redis ]; then
        NAME="$NAME-redis"
        TITLE="$TITLE, history in Redis (--store)"
        start_redis
    fi
    if [ "${SPLIT:-0}" = 1 ]; then
        NAME="$NAME-split"
        TITLE="$TITLE, split cores (server on CPU $SERVER_CPUS, loadgen on CPU $LOADGEN_CPUS)"
    fi
    # A folder per recorded run: its summary, data, plot and histogram.
    BASE="$RESULTS/$DATE-$NAME/$DATE-$NAME"
    mkdir -p "$RESULTS/$DATE-$NAME"
    if [ -z "${NO_BUILD:-}" ]; then
        (cd "$ROOT" && cargo build --release -p cchat -p loadgen)
        if [ "$BENCH_SERVER" = tokio-hub ]; then
            cargo build --release --manifest-path "$ROOT/bench/hubs/tokio-hub/Cargo.toml"
        fi
    fi
    if [ "$BENCH_SERVER" = uws-hub ] && [ ! -d "$UWS_HUB/node_modules/@trufflesuite" ]; then
        (cd "$UWS_HUB" && npm ci --no-audit --no-fund --ignore-scripts)
    fi
    case "$BENCH_SERVER" in
        cchat) ;;
        tokio-hub) [ -x "$TOKIO_HUB" ] || { echo "bench: no tokio-hub binary at $TOKIO_HUB" >&2; exit 1; } ;;
        uws-hub) command -v node > /dev/null || { echo "bench: uws-hub needs node" >&2; exit 1; } ;;
        *) echo "bench: unknown BENCH_SERVER=$BENCH_SERVER (cchat, tokio-hub or uws-hub)" >&2; exit 1 ;;
    esac
    [ -x "$CCHAT" ] || { echo "bench: no server binary at $CCHAT" >&2; exit 1; }
    [ -x "$LOADGEN" ] || { echo "bench: no loadgen binary at $LOADGEN" >&2; exit 1; }
}

# start_redis: a redis-server for STORE=redis on a free port, its files in $WORK.
start_redis() {
    REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    mkdir -p "$WORK/redis"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync everysec \
        --dir "$WORK/redis" --daemonize no > "$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    local i
    for i in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping 2> /dev/null | grep -q PONG && break
        sleep 0.1
    done
    STORE_ARGS=(--store "redis://127.0.0.1:$REDIS_PORT")
}

# store_note SECS: the store's round trips during the last run (STORE=redis),
# per shard: each server's shards are counted from its metrics, so a server
# left to choose its shard count is counted as it chose.
store_note() {
    local secs="$1" url addr trips=0 us=0 shards=0 m
    for url in "${SERVER_URLS[@]}"; do
        addr=${url#*://}
        addr=${addr%/}
        m=$(curl -sk "http://$addr/metrics")
        trips=$((trips + $(awk '/^cchat_store_round_trips_total/ {print $2}' <<< "$m" | grep . || echo 0)))
        us=$(python3 -c "print(int($us + $(awk '/^cchat_store_round_trip_seconds_total/ {print $2}' <<< "$m" | grep . || echo 0) * 1e6))")
        shards=$((shards + $(grep -c '^cchat_shard_pinned{' <<< "$m" || true)))
    done
    python3 -c "t, us, s, n = $trips, $us, $secs, max($shards, 1); print(f'store: {t} round trips, {t / s / n / 1000:.3f} per shard per ms over {s} s, mean {us / max(t, 1):.0f} µs each')"
}

# cpu_busy: percent of all CPU time used in the last second, machine-wide.
cpu_busy() {
    local a b
    read -r -a a < /proc/stat
    sleep 1
    read -r -a b < /proc/stat
    local t1=0 t2=0 i
    for i in 1 2 3 4 5 6 7 8; do t1=$((t1 + a[i])); t2=$((t2 + b[i])); done
    local idle=$(((b[4] + b[5]) - (a[4] + a[5])))
    local total=$((t2 - t1))
    echo $((100 * (total - idle) / (total > 0 ? total : 1)))
}

# wait_quiet: waits (up to 5 minutes) until the machine is idle, so that a
# build or another benchmark does not share the two cores with this one.
wait_quiet() {
    local busy i
    for i in $(seq 300); do
        busy=$(cpu_busy)
        if [ "$busy" -lt 10 ]; then
            return 0
        fi
        [ $((i % 10)) -eq 1 ] && echo "bench: machine busy (${busy}% CPU), waiting for it to settle" >&2
    done
    echo "bench: machine still busy (${busy}% CPU); measuring anyway" >&2
    NOTE="${NOTE:+$NOTE; }the machine was busy (${busy}% CPU) when a run started"
}

# start_servers NODES SHARDS [ARGS...]: one node listens on an ephemeral
# port; several listen on 127.0.0.1:9501, 9502, … With CLUSTER=1 the nodes
# are joined by the relay (127.0.0.1:9601, 9602, …) and this waits until
# every node has a link to every other.
start_servers() {
    local nodes="$1" shards="$2"
    shift 2
    local n listen log pid addr i relay m cmd
    if [ "${SPLIT:-0}" = 1 ]; then
        # One shard per CPU the server may use.
        shards=$(taskset -c "$SERVER_CPUS" nproc)
    fi
    if [ "$BENCH_SERVER" != cchat ] && [ "$nodes" -ne 1 ]; then
        echo "bench: $BENCH_SERVER runs as one node only" >&2
        exit 1
    fi
    # SHARDS "default": the server chooses (one per core, one on <= 2 cores).
    local shards_arg=(--shards "$shards")
    if [ "$shards" = default ]; then shards_arg=(); fi
    for n in $(seq "$nodes"); do
        if [ "$nodes" -eq 1 ]; then listen=127.0.0.1:0; else listen="127.0.0.1:$((9500 + n))"; fi
        relay=()
        if [ "${CLUSTER:-0}" = 1 ] && [ "$nodes" -gt 1 ]; then
            relay=(--node-id "node$n" --relay-listen "127.0.0.1:$((9600 + n))" --cluster-secret bench)
            for m in $(seq "$nodes"); do
                [ "$m" -eq "$n" ] || relay+=(--peer "127.0.0.1:$((9600 + m))")
            done
        fi
        log="$WORK/server-$n.out"
        : > "$log"
        if [ "$BENCH_SERVER" = tokio-hub ]; then
            cmd=("$TOKIO_HUB" "$listen")
        elif [ "$BENCH_SERVER" = uws-hub ]; then
            cmd=(node "$UWS_HUB/hub.js" "$listen")
        else
            cmd=("$CCHAT" --listen "$listen" ${shards_arg[@]+"${shards_arg[@]}"} --rate-limit 0 --data-dir "$WORK/data-$n" "${relay[@]}" "${STORE_ARGS[@]}" "$@")
            if [ "${TLS:-0}" = 1 ]; then
                make_tls_cert
                cmd+=(--tls-cert "$WORK/tls/cert.pem" --tls-key "$WORK/tls/key.pem")
            fi
            if [ "${NO_PIN:-0}" = 1 ]; then cmd+=(--no-pin); fi
            if [ "${STRICT_PIN:-0}" = 1 ]; then cmd+=(--unpin-above 0); fi
        fi
        RUST_LOG=warn "${SERVER_PIN[@]}" "${cmd[@]}" > "$log" 2> "$log.err" &
        pid=$!
        SERVER_PIDS+=("$pid")
        for i in $(seq 100); do
            grep -q '^listening on ' "$log" && break
            if ! kill -0 "$pid" 2> /dev/null; then
                echo "bench: server $n did not start:" >&2
                cat "$log.err" >&2
                exit 1
            fi
            sleep 0.1
        done
        addr=$(sed -n 's/^listening on //p' "$log" | head -1)
        [ -n "$addr" ] || { echo "bench: server $n printed no address" >&2; exit 1; }
        if [ "${TLS:-0}" = 1 ]; then SERVER_URLS+=("wss://$addr/"); else SERVER_URLS+=("ws://$addr/"); fi
    done
    if [ "${CLUSTER:-0}" = 1 ] && [ "$nodes" -gt 1 ]; then
        local url up
        for url in "${SERVER_URLS[@]}"; do
            addr=${url#*://}
            addr=${addr%/}
            for i in $(seq 200); do
                up=$(curl -s "http://$addr/metrics" | awk '/^cchat_relay_link_up/ {s += $2} END {print s + 0}')
                [ "$up" -ge $((nodes - 1)) ] && break
                sleep 0.1
            done
            [ "$up" -ge $((nodes - 1)) ] || { echo "bench: relay links of $addr did not come up" >&2; exit 1; }
        done
        sleep 0.5
    fi
    SERVER_CMD="cchat --listen $( [ "$nodes" -eq 1 ] && echo 127.0.0.1:0 || echo "127.0.0.1:950X (X = 1..$nodes, $nodes processes)")${shards_arg[*]:+ ${shards_arg[*]}} --rate-limit 0${*:+ $*}"
    if [ "${CLUSTER:-0}" = 1 ] && [ "$nodes" -gt 1 ]; then
        SERVER_CMD="$SERVER_CMD --node-id nodeX --relay-listen 127.0.0.1:960X --peer 127.0.0.1:960Y (each other node) --cluster-secret …"
    fi
    if [ "${NO_PIN:-0}" = 1 ]; then
        SERVER_CMD="$SERVER_CMD --no-pin"
    fi
    if [ ${#STORE_ARGS[@]} -gt 0 ]; then
        SERVER_CMD="$SERVER_CMD --store redis://127.0.0.1:PORT (redis-server 7, appendonly yes, appendfsync everysec)"
    fi
    if [ "${STRICT_PIN:-0}" = 1 ]; then
        SERVER_CMD="$SERVER_CMD --unpin-above 0"
    fi
    if [ "$BENCH_SERVER" = tokio-hub ]; then
        SERVER_CMD="tokio-hub 127.0.0.1:0 (bench/hubs/tokio-hub: tokio multi-thread runtime, a worker thread per core)"
    fi
    if [ "$BENCH_SERVER" = uws-hub ]; then
        SERVER_CMD="node bench/hubs/uws-hub/hub.js 127.0.0.1:0 (µWebSockets.js $(node -p "require('$UWS_HUB/node_modules/@trufflesuite/uws-js-unofficial/package.json').version" 2>/dev/null), Node $(node --version): one thread, pub/sub per room)"
    fi
    if [ "${SPLIT:-0}" = 1 ]; then
        SERVER_CMD="taskset -c $SERVER_CPUS $SERVER_CMD"
    fi
}

# stop_servers: SIGTERM, then SIGKILL after 5 s, each server by its PID.
stop_servers() {
    local pid i
    for pid in "${SERVER_PIDS[@]}"; do
        kill "$pid" 2> /dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for i in $(seq 50); do
            kill -0 "$pid" 2> /dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2> /dev/null || true
        wait "$pid" 2> /dev/null || true
    done
    SERVER_PIDS=()
    SERVER_URLS=()
}

# make_tls_cert: a self-signed certificate for 127.0.0.1 in $WORK/tls (once).
make_tls_cert() {
    [ -f "$WORK/tls/cert.pem" ] && return
    mkdir -p "$WORK/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
        -keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2> /dev/null
}

# run_loadgen OUT ARGS...: runs loadgen against the running servers, writing
# OUT.json, OUT.svg and OUT.hgrm; returns loadgen's exit code.
run_loadgen() {
    local out="$1"
    shift
    local args=() u p
    for u in "${SERVER_URLS[@]}"; do args+=(--url "$u"); done
    if [ "${TLS:-0}" = 1 ]; then args+=(--tls-ca "$WORK/tls/cert.pem"); fi
    for p in "${SERVER_PIDS[@]}"; do args+=(--server-pid "$p"); done
    LOADGEN_CMD="${LOADGEN_PIN[*]}${LOADGEN_PIN[*]:+ }loadgen $(printf -- '--url %s ' "${SERVER_URLS[@]}")$*"
    echo "bench: $LOADGEN_CMD" >&2
    local rc=0
    "${LOADGEN_PIN[@]}" "$LOADGEN" "${args[@]}" "$@" --json "$out.json" --svg "$out.svg" --hgrm "$out.hgrm" || rc=$?
    return $rc
}

# bench_runs RUNS NODES SHARDS [SERVER_ARGS...] -- LOADGEN_ARGS...
bench_runs() {
    local runs="${RUNS:-$1}" nodes="$2" shards="$3"
    shift 3
    local server_args=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do server_args+=("$1"); shift; done
    shift
    local files=() r rc=0 status=0
    for r in $(seq "$runs"); do
        wait_quiet
        if [ -n "$REDIS_PORT" ]; then redis-cli -p "$REDIS_PORT" flushall > /dev/null; fi
        start_servers "$nodes" "$shards" "${server_args[@]}"
        rc=0
        local t0=$SECONDS
        run_loadgen "$WORK/run$r" "$@" || rc=$?
        if [ -n "$REDIS_PORT" ]; then
            NOTE="${NOTE:+$NOTE; }run $r: $(store_note $((SECONDS - t0)))"
        fi
        local rss=() pid
        for pid in "${SERVER_PIDS[@]}"; do
            rss+=("$(awk '/^VmRSS/ {printf "%.0f MiB", $2 / 1024}' "/proc/$pid/status" 2> /dev/null)")
        done
        NOTE="${NOTE:+$NOTE; }run $r: server resident memory at the end: $(IFS=,; echo "${rss[*]}" | sed 's/,/, /g')"
        stop_servers
        if [ ! -f "$WORK/run$r.json" ]; then
            echo "bench: run $r produced no summary (loadgen exit $rc)" >&2
            exit 1
        fi
        [ "$rc" -eq 0 ] || status=$rc
        files+=("$WORK/run$r.json")
    done
    bench_report runs "${files[@]}"
    return $status
}

# bench_report MODE FILES...: writes BASE.{md,json,svg} (see report.py).
bench_report() {
    local mode="$1"
    shift
    python3 "$BENCH_DIR/report.py" "$mode" "$BASE" "$TITLE" "$NOTE" "$SERVER_CMD" "$LOADGEN_CMD" "$@"
    echo "bench: wrote $BASE.md, $BASE.json, $BASE.svg, $BASE.hgrm" >&2
    "$RESULTS/index.sh"
}
