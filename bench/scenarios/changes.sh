#!/usr/bin/env bash
# Room events (issue 27): load A plain, and with a reaction after 10 % of the
# messages (events fan out like messages and take their place in the
# sequence), to compare server CPU per delivery in one sitting:
#   for m in plain reactions; do MODE=$m bench/scenarios/changes.sh; done
source "$(dirname "$0")/lib.sh"
MODE=${MODE:-reactions}
LOAD=(--clients 2000 --room-size 100 --rate 2000 --payload 64 --duration 15)
case "$MODE" in
    plain) bench_init changes-plain "load A, messages only (baseline)"
           bench_runs 3 1 2 -- "${LOAD[@]}" ;;
    reactions) bench_init changes-reactions "load A with a reaction after 10 % of the messages"
           bench_runs 3 1 2 -- "${LOAD[@]}" --reactions 0.1 ;;
    *) echo "MODE must be plain or reactions" >&2; exit 1 ;;
esac
