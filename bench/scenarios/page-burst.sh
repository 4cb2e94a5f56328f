#!/usr/bin/env bash
# The page under a burst (issue 28): 2,000 messages sent at once into the
# room a headless Chromium page has open. Measured in the page with the
# Performance API (browser::a_burst_of_2000_messages_is_shown_whole): the
# time until the last message is shown at the bottom, the longest gap
# between animation frames (the longest the page could not draw) and the
# long tasks. Each round runs a burst of 20 first, the floor: what the
# same harness shows on this machine when the page has almost nothing to
# do. RUNS rounds (default 3) in one sitting; LABEL names the result.
#   bench/scenarios/page-burst.sh            (needs chromium, chromium-driver)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-3}
LABEL=${LABEL:-}
NAME="$(date -u +%F)-page-burst${LABEL:+-$LABEL}"
OUT="bench/results/$NAME"
mkdir -p "$OUT"
cargo build -q --tests 2>/dev/null || cargo build --tests
run() { # N → the figures line
    local f
    f=$(mktemp)
    CCHAT_PAGE_BURST_N="$1" CCHAT_PAGE_BURST_OUT="$f" cargo test -q --test integration \
        browser::a_burst_of_2000_messages_is_shown_whole > /dev/null 2>&1 || { echo "a burst of $1 failed" >&2; exit 1; }
    cat "$f"
    rm -f "$f"
}
lines=()
for r in $(seq "$RUNS"); do
    lines+=("| $r | floor | $(run 20) |")
    lines+=("| $r | burst | $(run 2000) |")
done
{
    echo "# The page under a burst of 2,000 messages${LABEL:+ ($LABEL)}"
    echo
    echo "- date: $(date -u '+%F %H:%M') UTC, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- static || echo ' (with uncommitted changes to the page)')"
    echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), headless Chromium $(chromium --version 2>/dev/null | awk '{print $2}') beside the server (shared, noisy)"
    echo "- command: \`bench/scenarios/page-burst.sh\` (the test \`browser::a_burst_of_2000_messages_is_shown_whole\` with \`CCHAT_PAGE_BURST_N\` and \`CCHAT_PAGE_BURST_OUT\`)"
    echo "- target (issue 28): longest frame ≤ 50 ms, all shown within 2 s"
    echo
    echo "| round | case | figures |"
    echo "|---|---|---|"
    printf '%s\n' "${lines[@]}"
} > "$OUT/$NAME.md"
bash bench/results/index.sh
cat "$OUT/$NAME.md"
