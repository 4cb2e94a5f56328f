#!/usr/bin/env bash
# Exactly-once delivery (issue 25), one mode per call, to compare in one sitting:
#   for m in plain mids churn; do MODE=$m bench/scenarios/delivery.sh; done
# plain: load A (2,000 clients, rooms of 100, 2,000 msg/s, 64 B, 15 s);
# mids:  the same with a client id (`mid`) on every message: what
#        de-duplication costs (server CPU per delivery beside plain's);
# churn: the same with 10 % of the clients dropping each second, away
#        500 ms, resuming with `since` and resending under their mid: zero
#        loss and zero duplicates, and the resume time.
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-mids}
LOAD=(--clients 2000 --room-size 100 --rate 2000 --payload 64 --duration 15)
case "$MODE" in
    plain) bench_init delivery-plain "load A, messages without mid (baseline)"
           bench_runs 3 1 2 -- "${LOAD[@]}" ;;
    mids)  bench_init delivery-mids "load A, every message with a mid"
           bench_runs 3 1 2 -- "${LOAD[@]}" --mids ;;
    churn) bench_init delivery-churn "load A under reconnect churn: 10 % of clients a second drop for 500 ms and resume"
           bench_runs 3 1 2 -- "${LOAD[@]}" --churn 0.1 --churn-away-ms 500 --drain 10 ;;
    *) echo "MODE must be plain, mids or churn" >&2; exit 1 ;;
esac
