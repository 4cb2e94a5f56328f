#!/usr/bin/env bash
# Room events (issue 27): load A plain, with a reaction after 10 % of the
# messages, and with a reaction after 5 % and an edit of the sender's own
# message after 5 % (events fan out like messages and take their place in
# the sequence), to compare server CPU per delivery in one sitting:
#   for m in plain reactions changes; do MODE=$m bench/scenarios/changes.sh; done
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-reactions}
LOAD=(--clients 2000 --room-size 100 --rate 2000 --payload 64 --duration 15)
case "$MODE" in
    plain) bench_init changes-plain "load A, messages only (baseline)"
           bench_runs 3 1 2 -- "${LOAD[@]}" ;;
    reactions) bench_init changes-reactions "load A with a reaction after 10 % of the messages"
           bench_runs 3 1 2 -- "${LOAD[@]}" --reactions 0.1 ;;
    changes) bench_init changes-edits "load A with a reaction after 5 % and an edit after 5 % of the messages"
           bench_runs 3 1 2 -- "${LOAD[@]}" --reactions 0.05 --edits 0.05 ;;
    *) echo "MODE must be plain, reactions or changes" >&2; exit 1 ;;
esac
