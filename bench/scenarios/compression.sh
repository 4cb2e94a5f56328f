#!/usr/bin/env bash
# permessage-deflate (issue 30): load A with everyday chat text in `msg`,
# plain and with every client negotiating compression, to compare server CPU
# per delivery and bytes on the wire per delivery in one sitting. PAYLOAD sets
# the bytes of `msg` (64 at load A; chat messages run 20–300).
#   for m in plain deflate; do MODE=$m bench/scenarios/compression.sh; done
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-deflate}
PAYLOAD=${PAYLOAD:-64}
LOAD=(--clients 2000 --room-size 100 --rate 2000 --payload "$PAYLOAD" --text chat --duration 15)
case "$MODE" in
    plain) bench_init "compression-plain-$PAYLOAD" "load A, $PAYLOAD B of chat text, no compression offered"
           bench_runs 3 1 1 -- "${LOAD[@]}" ;;
    deflate) bench_init "compression-deflate-$PAYLOAD" "load A, $PAYLOAD B of chat text, every client negotiates permessage-deflate"
           bench_runs 3 1 1 -- "${LOAD[@]}" --deflate ;;
    *) echo "MODE must be plain or deflate" >&2; exit 1 ;;
esac
